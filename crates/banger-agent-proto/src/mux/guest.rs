//! The guest's side: find the host's SYNC, answer it, accept streams.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::MuxError;
use super::driver::{fill, write_loop};
use super::frame::{self, Frame, FrameKind, Out, Violation};
use super::state::{Inner, MAX_STREAMS, Role, Shared};
use super::stream::MuxStream;
use super::sync::{self, Nonce, Scan};

/// Serves one carrier epoch: scans for the SYNC, acks it, accepts the
/// host's streams (`on_stream` gets each). Returns `Ok` at the carrier's
/// end, `Err` on an I/O error; every stream of the epoch is reset then.
///
/// It begins by telling the host it has no sync (RESET on stream 0).
/// A SYNC with a new nonce (a new host behind the same carrier) resets
/// every stream and is acked; the same nonce again is only acked. A
/// frame that breaks the protocol means the sync is lost: every stream
/// is reset, the host is told, and the scan for a SYNC starts over.
pub async fn serve<C, F>(carrier: C, mut on_stream: F) -> Result<(), MuxError>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut(MuxStream) + Send,
{
    let shared = Shared::new(Role::Guest);
    // First, "no sync here": a host still synced with an earlier agent
    // (this one was restarted under it) learns its streams are gone and
    // ends them, instead of waiting on them forever; a host that is
    // syncing drops it with everything before its SYNC_ACK.
    shared.lock().push(Out::control(FrameKind::Reset, 0));
    let (rd, wr) = tokio::io::split(carrier);
    let res = tokio::select! {
        r = read_loop(&shared, rd, &mut on_stream) => r,
        w = write_loop(&shared, wr) => w,
    };
    shared.finish(None);
    res
}

async fn read_loop<R, F>(shared: &Arc<Shared>, mut r: R, on_stream: &mut F) -> Result<(), MuxError>
where
    R: AsyncRead + Unpin,
    F: FnMut(MuxStream),
{
    let mut buf = Vec::new();
    let mut synced = None;
    let mut opened = Vec::new();
    loop {
        let done = apply(&mut shared.lock(), &buf, &mut synced, &mut opened);
        buf.drain(..done);
        // Outside the lock: a handler may drop its stream at once.
        for (id, serial) in opened.drain(..) {
            on_stream(MuxStream::new(shared.clone(), serial, id));
        }
        if !fill(&mut r, &mut buf).await? {
            return Ok(());
        }
    }
}

/// Applies what `buf` holds; returns how many of its bytes are done with.
fn apply(
    g: &mut Inner,
    buf: &[u8],
    synced: &mut Option<Nonce>,
    opened: &mut Vec<(u32, u64)>,
) -> usize {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(current) = *synced else {
            match sync::find(rest, FrameKind::Sync) {
                Scan::Found { nonce, end } => {
                    g.queue_ack(nonce);
                    *synced = Some(nonce);
                    pos += end;
                    continue;
                }
                Scan::Partial { keep_from } => return pos + keep_from,
            }
        };
        let step = frame::parse(rest).and_then(|f| match f {
            Some((f, used)) => on_frame(g, &f, current, opened).map(|n| Some((n, used))),
            None => Ok(None),
        });
        match step {
            Ok(None) => return pos,
            Ok(Some((nonce, used))) => {
                *synced = Some(nonce);
                pos += used;
            }
            Err(_) => {
                // The scan resumes right after where the bad frame began.
                g.reset_epoch(true);
                *synced = None;
                pos += 1;
            }
        }
    }
}

/// One frame while synced on `current`; returns the nonce synced on next.
fn on_frame(
    g: &mut Inner,
    f: &Frame<'_>,
    current: Nonce,
    opened: &mut Vec<(u32, u64)>,
) -> Result<Nonce, Violation> {
    match *f {
        // The host repeats its SYNC until it hears the answer.
        Frame::Sync(n) if n == current => g.queue_ack(n),
        Frame::Sync(n) => {
            g.reset_epoch(false);
            g.queue_ack(n);
            return Ok(n);
        }
        Frame::Open(id) => {
            if id <= g.last_id {
                return Err(Violation::OpenOutOfOrder(id));
            }
            g.last_id = id;
            if g.live_streams() >= MAX_STREAMS {
                g.push(Out::control(FrameKind::Reset, id));
            } else {
                opened.push((id, g.add_stream(id)));
            }
        }
        Frame::Reset(0) => {
            return Err(Violation::BadStream {
                kind: FrameKind::Reset,
                stream: 0,
            });
        }
        Frame::SyncAck(_) => return Err(Violation::WrongDirection(FrameKind::SyncAck)),
        _ => g.on_stream_frame(f)?,
    }
    Ok(current)
}
