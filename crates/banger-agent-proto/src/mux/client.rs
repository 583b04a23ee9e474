//! The host's side: sync with the guest, then open streams to it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::MuxError;
use super::driver::{fill, write_loop};
use super::frame::{self, Frame, FrameKind, Violation};
use super::state::{Role, Shared};
use super::stream::MuxStream;
use super::sync::{self, Nonce, Scan};

/// How often the SYNC is repeated while the guest has not answered: a
/// guest still booting reads them late, one swallowed by stale bytes is
/// followed by another.
pub const SYNC_RESEND: Duration = Duration::from_millis(500);

/// The host's handle on one carrier; clones share it. When the last clone
/// and the last stream are gone, the carrier's write side is shut down
/// and the carrier dropped.
#[derive(Clone)]
pub struct MuxClient {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().release_client();
    }
}

impl std::fmt::Debug for MuxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl MuxClient {
    /// Syncs with the guest over `carrier`: sends SYNC(nonce), re-sent
    /// every [`SYNC_RESEND`] until answered, and discards every byte
    /// until the SYNC_ACK with that nonce; gives up after `within`. Then
    /// spawns the driver on the current runtime.
    pub async fn connect<C>(carrier: C, within: Duration) -> Result<MuxClient, MuxError>
    where
        C: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::connect_with(carrier, within, SYNC_RESEND).await
    }

    /// [`connect`](Self::connect) with the SYNC repeated every `resend`.
    pub async fn connect_with<C>(
        carrier: C,
        within: Duration,
        resend: Duration,
    ) -> Result<MuxClient, MuxError>
    where
        C: AsyncRead + AsyncWrite + Send + 'static,
    {
        let nonce: Nonce = rand::random();
        let (mut rd, wr) = tokio::io::split(carrier);
        let deadline = tokio::time::Instant::now() + within;
        let timeout = || MuxError::SyncTimeout {
            secs: within.as_secs(),
        };
        let (stop, stopped) = oneshot::channel();
        let resender = resend_sync(wr, sync::sync_frame(nonce), resend, stopped);
        tokio::pin!(resender);
        let leftover = tokio::select! {
            found = await_ack(&mut rd, nonce) => found?,
            r = &mut resender => return Err(r.err().unwrap_or(MuxError::Closed { cause: None })),
            () = tokio::time::sleep_until(deadline) => return Err(timeout()),
        };
        // The SYNC being written is finished first: half of one would
        // garble the frames that follow.
        let _ = stop.send(());
        let wr = tokio::select! {
            r = &mut resender => r?,
            () = tokio::time::sleep_until(deadline) => return Err(timeout()),
        };
        let shared = Shared::new(Role::Host);
        let driver = shared.clone();
        tokio::spawn(async move {
            let mut aborted = driver.closed.subscribe();
            let read = read_loop(&driver, rd, leftover, nonce);
            let write = write_loop(&driver, wr);
            tokio::pin!(read, write);
            // Set once the write side is shut (nothing left to send for):
            // the peer is given until then to close its end, so `close`
            // resolves once it has seen the host leave.
            let mut linger: Option<tokio::time::Instant> = None;
            let res = loop {
                tokio::select! {
                    r = &mut read => break r,
                    w = &mut write, if linger.is_none() => match w {
                        Ok(()) => linger = Some(tokio::time::Instant::now() + LINGER),
                        Err(e) => break Err(e),
                    },
                    () = sleep_until_some(linger) => break Ok(()),
                    // `abort`: the carrier is dropped with the loops,
                    // which tells the VMM the host left.
                    _ = aborted.wait_for(|c| *c) => return,
                }
            };
            driver.finish(res.err());
        });
        Ok(MuxClient {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Opens a new stream to the guest (accepted there without a round
    /// trip: data may follow at once).
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (id, serial) = self.shared().lock().open()?;
        Ok(MuxStream::new(self.shared().clone(), serial, id))
    }

    /// A handle that does not keep the carrier open.
    pub fn downgrade(&self) -> WeakMuxClient {
        WeakMuxClient(Arc::downgrade(&self.handle))
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared().lock().live_streams()
    }

    /// How long since the guest's bytes last arrived.
    pub fn idle_for(&self) -> Duration {
        self.shared().lock().last_rx.elapsed()
    }

    /// Ends the carrier now, for `cause` (kept as the close reason):
    /// every stream fails and the carrier itself is dropped.
    pub fn abort(&self, cause: MuxError) {
        self.shared().finish(Some(cause));
    }

    pub fn is_closed(&self) -> bool {
        *self.shared().closed.borrow()
    }

    /// Resolves once the carrier ended (EOF, an error, a protocol
    /// violation by the guest).
    pub async fn closed(&self) {
        let mut rx = self.shared().closed.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Gives up this handle and resolves once the carrier ended: at
    /// once if this was the last handle and no stream is open (the
    /// write side is shut, and the peer closes its end in answer).
    pub async fn close(self) {
        let mut rx = self.shared().closed.subscribe();
        drop(self);
        // A dropped sender means the carrier's state is gone: ended.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Why the carrier ended; `None` while it runs or after a clean EOF.
    pub fn close_reason(&self) -> Option<Arc<MuxError>> {
        self.shared().lock().ended().cloned().flatten()
    }
}

/// How long a carrier whose write side was shut waits for the peer to
/// close its end before it is dropped anyway.
const LINGER: Duration = Duration::from_secs(10);

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A [`MuxClient`] that does not keep its carrier open.
#[derive(Clone, Debug)]
pub struct WeakMuxClient(Weak<Handle>);

impl WeakMuxClient {
    /// The client, while any strong handle is left.
    pub fn upgrade(&self) -> Option<MuxClient> {
        self.0.upgrade().map(|handle| MuxClient { handle })
    }
}

/// Writes the SYNC every `every` until `stop`, always finishing a frame
/// it started; hands the writer back.
async fn resend_sync<W: AsyncWrite + Unpin>(
    mut w: W,
    frame: Vec<u8>,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Result<W, MuxError> {
    loop {
        w.write_all(&frame).await?;
        w.flush().await?;
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(w),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Discards the carrier's bytes up to the SYNC_ACK carrying `nonce`;
/// returns what followed it in the last read.
async fn await_ack<R: AsyncRead + Unpin>(r: &mut R, nonce: Nonce) -> Result<Vec<u8>, MuxError> {
    let mut buf = Vec::new();
    loop {
        loop {
            match sync::find(&buf, FrameKind::SyncAck) {
                Scan::Found { nonce: n, end } if n == nonce => return Ok(buf.split_off(end)),
                // An answer to an earlier host.
                Scan::Found { end, .. } => drop(buf.drain(..end)),
                Scan::Partial { keep_from } => {
                    buf.drain(..keep_from);
                    break;
                }
            }
        }
        if !fill(r, &mut buf).await? {
            return Err(MuxError::Closed { cause: None });
        }
    }
}

/// Applies the guest's frames; any violation ends the client.
async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut r: R,
    mut buf: Vec<u8>,
    nonce: Nonce,
) -> Result<(), MuxError> {
    loop {
        let mut pos = 0;
        {
            let mut g = shared.lock();
            while let Some((f, used)) = frame::parse(&buf[pos..])? {
                match f {
                    // Answers to SYNCs that were still on their way.
                    Frame::SyncAck(n) if n == nonce => {}
                    Frame::SyncAck(_) => return Err(Violation::ForeignNonce.into()),
                    Frame::Reset(0) => return Err(Violation::PeerLostSync.into()),
                    other => g.on_stream_frame(&other)?,
                }
                pos += used;
            }
        }
        buf.drain(..pos);
        if !fill(&mut r, &mut buf).await? {
            return Ok(());
        }
        shared.lock().last_rx = tokio::time::Instant::now();
    }
}
