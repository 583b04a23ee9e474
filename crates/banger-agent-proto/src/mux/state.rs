//! The state one carrier's streams share: per-stream buffers and credit,
//! and the queue of frames for the carrier's one writer. One lock guards
//! it all and is never held across an await; the reader applies frames
//! under it, streams read and write under it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::ReadBuf;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::MuxError;
use super::frame::{Frame, FrameKind, MAX_DATA, Out, Payload, Violation};

/// Bytes each side may send on a stream before the reader credits them
/// back: the most a stream ever buffers on the receiving side.
pub const WINDOW: u32 = 256 << 10;
/// Credit goes back once this much was read, not per read.
const CREDIT_BATCH: u32 = WINDOW / 4;
/// Streams open at once on one carrier (the host refuses more, the guest
/// resets them): with [`WINDOW`], bounds what a carrier can buffer.
pub const MAX_STREAMS: usize = 1024;
/// Largest write to the carrier in one go.
const BATCH: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Host,
    Guest,
}

/// Why a stream ended before both sides finished it.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The peer dropped it: reads drain what came, then end; writes fail.
    PeerReset,
    /// The carrier ended or a new epoch began: reads drain what came,
    /// then fail with this (unless the peer had finished sending).
    Aborted(io::ErrorKind, &'static str),
}

#[derive(Debug)]
pub(super) struct Stream {
    id: u32,
    /// `id` still names this stream on the wire.
    live: bool,
    rx: VecDeque<u8>,
    /// Received and not yet credited back (buffered + read).
    outstanding: u32,
    peer_eof: bool,
    credit: u32,
    sent_eof: bool,
    /// Frames of this stream in the queue or being written.
    queued: usize,
    end: Option<End>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    flush_waker: Option<Waker>,
}

impl Stream {
    fn new(id: u32) -> Self {
        Self {
            id,
            live: true,
            rx: VecDeque::new(),
            outstanding: 0,
            peer_eof: false,
            credit: WINDOW,
            sent_eof: false,
            queued: 0,
            end: None,
            read_waker: None,
            write_waker: None,
            flush_waker: None,
        }
    }

    fn wake_all(&mut self) {
        for w in [
            &mut self.read_waker,
            &mut self.write_waker,
            &mut self.flush_waker,
        ] {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    fn write_error(&self) -> Option<io::Error> {
        match self.end {
            Some(End::Aborted(kind, why)) => Some(io::Error::new(kind, why)),
            Some(End::PeerReset) => Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer closed the stream",
            )),
            None if self.sent_eof => Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was shut down for writing",
            )),
            None => None,
        }
    }
}

/// What the writer is to do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Batch {
    Write,
    Idle,
    /// Host side: no client and no stream left.
    Stop,
}

#[derive(Debug)]
pub(super) struct Inner {
    role: Role,
    streams: HashMap<u64, Stream>,
    /// Wire id -> serial of the live streams.
    ids: HashMap<u32, u64>,
    next_serial: u64,
    /// Host: the last id it gave out; guest: the last it accepted.
    pub(super) last_id: u32,
    queue: VecDeque<Out>,
    /// The writer has something new to look at.
    kick: bool,
    ended: Option<Option<Arc<MuxError>>>,
    client_gone: bool,
    ack_queued: bool,
    /// When the peer's bytes last arrived (the host's keepalive asks).
    pub(super) last_rx: Instant,
}

#[derive(Debug)]
pub(super) struct Shared {
    inner: Mutex<Inner>,
    writer: Notify,
    pub(super) closed: watch::Sender<bool>,
}

/// The lock; tells the writer when it is released after a change.
pub(super) struct Guard<'a> {
    inner: MutexGuard<'a, Inner>,
    writer: &'a Notify,
}

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.inner.kick) {
            self.writer.notify_one();
        }
    }
}

impl Shared {
    pub(super) fn new(role: Role) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                role,
                streams: HashMap::new(),
                ids: HashMap::new(),
                next_serial: 0,
                last_id: 0,
                queue: VecDeque::new(),
                kick: false,
                ended: None,
                client_gone: false,
                ack_queued: false,
                last_rx: Instant::now(),
            }),
            writer: Notify::new(),
            closed: watch::channel(false).0,
        })
    }

    pub(super) fn lock(&self) -> Guard<'_> {
        Guard {
            // A panic under the lock leaves consistent-enough state for
            // the rest to wind down; never turn it into more panics.
            inner: self.inner.lock().unwrap_or_else(|p| p.into_inner()),
            writer: &self.writer,
        }
    }

    /// Waits for [`Guard`] to report a change.
    pub(super) async fn writer_wait(&self) {
        self.writer.notified().await;
    }

    /// The carrier is gone: every stream is aborted, and `cause` is kept
    /// for the client's `close_reason`.
    pub(super) fn finish(&self, cause: Option<MuxError>) {
        {
            let mut g = self.lock();
            g.abort_all(io::ErrorKind::ConnectionAborted, "the agent channel closed");
            g.queue.clear();
            // The first reason stands (an abort's, over the read loop's
            // end that follows it).
            if g.ended.is_none() {
                g.ended = Some(cause.map(Arc::new));
            }
        }
        self.closed.send_replace(true);
    }
}

impl Inner {
    pub(super) fn ended(&self) -> Option<&Option<Arc<MuxError>>> {
        self.ended.as_ref()
    }

    /// Host: the last client handle is gone; the writer stops once the
    /// streams are gone too.
    pub(super) fn release_client(&mut self) {
        self.client_gone = true;
        self.kick = true;
    }

    pub(super) fn live_streams(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn push(&mut self, out: Out) {
        if let Some(s) = out.owner.and_then(|o| self.streams.get_mut(&o)) {
            s.queued += 1;
        }
        self.queue.push_back(out);
        self.kick = true;
    }

    /// A new stream under wire id `id`; returns its serial.
    pub(super) fn add_stream(&mut self, id: u32) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.streams.insert(serial, Stream::new(id));
        self.ids.insert(id, serial);
        serial
    }

    /// Host: opens a stream (the OPEN frame is queued).
    pub(super) fn open(&mut self) -> Result<(u32, u64), MuxError> {
        if let Some(cause) = &self.ended {
            return Err(MuxError::Closed {
                cause: cause.clone(),
            });
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(MuxError::TooManyStreams);
        }
        let id = self.last_id.checked_add(1).ok_or(MuxError::IdsExhausted)?;
        self.last_id = id;
        let serial = self.add_stream(id);
        self.push(Out::control(FrameKind::Open, id));
        Ok((id, serial))
    }

    /// Guest: the SYNC_ACK for `nonce`, once however often it is asked.
    pub(super) fn queue_ack(&mut self, nonce: [u8; 16]) {
        if !self.ack_queued {
            self.ack_queued = true;
            self.push(Out::ack(nonce));
        }
    }

    /// Ends every stream with `kind`; nothing of theirs is queued after
    /// this.
    fn abort_all(&mut self, kind: io::ErrorKind, why: &'static str) {
        for s in self.streams.values_mut() {
            if s.end.is_none() {
                s.end = Some(End::Aborted(kind, why));
            }
            s.live = false;
            s.wake_all();
        }
        self.ids.clear();
    }

    /// Guest: a new epoch. On a SYNC with a new nonce, whatever is still
    /// queued is for the old host and goes (had it been written, the new
    /// host would skip it anyway: it comes before the new SYNC_ACK). On a
    /// lost sync (`lost`) the queue stays, so an ACK already queued still
    /// goes out, and the host is told after it.
    pub(super) fn reset_epoch(&mut self, lost: bool) {
        self.abort_all(
            io::ErrorKind::ConnectionReset,
            "the agent channel was reset",
        );
        self.last_id = 0;
        if lost {
            self.push(Out::control(FrameKind::Reset, 0));
        } else {
            self.queue.clear();
            self.ack_queued = false;
        }
    }

    /// The stream a peer's frame is about; `None` for one that is closed
    /// here (frames in flight for it are dropped).
    fn target(&mut self, kind: FrameKind, id: u32) -> Result<Option<&mut Stream>, Violation> {
        if id == 0 || id > self.last_id {
            return Err(Violation::UnknownStream { kind, stream: id });
        }
        Ok(self.ids.get(&id).and_then(|s| self.streams.get_mut(s)))
    }

    /// DATA, EOF, RESET and WINDOW, alike on both sides.
    pub(super) fn on_stream_frame(&mut self, frame: &Frame<'_>) -> Result<(), Violation> {
        let kind = frame.kind();
        match *frame {
            Frame::Data(id, bytes) => {
                let Some(s) = self.target(kind, id)? else {
                    return Ok(());
                };
                if s.peer_eof {
                    return Err(Violation::AfterEof(id));
                }
                let n = bytes.len() as u32;
                if s.outstanding + n > WINDOW {
                    return Err(Violation::WindowExceeded(id));
                }
                s.outstanding += n;
                s.rx.extend(bytes);
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
            }
            Frame::Eof(id) => {
                let Some(s) = self.target(kind, id)? else {
                    return Ok(());
                };
                if s.peer_eof {
                    return Err(Violation::AfterEof(id));
                }
                s.peer_eof = true;
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
            }
            Frame::Window(id, n) => {
                let Some(s) = self.target(kind, id)? else {
                    return Ok(());
                };
                s.credit = s
                    .credit
                    .checked_add(n)
                    .filter(|c| *c <= WINDOW)
                    .ok_or(Violation::CreditOverflow(id))?;
                if let Some(w) = s.write_waker.take() {
                    w.wake();
                }
            }
            Frame::Reset(id) => {
                let Some(s) = self.target(kind, id)? else {
                    return Ok(());
                };
                s.end.get_or_insert(End::PeerReset);
                s.live = false;
                s.wake_all();
                // The peer reads none of what is still queued.
                if let Some(serial) = self.ids.remove(&id) {
                    self.queue.retain(|o| o.owner != Some(serial));
                }
            }
            Frame::Sync(_) | Frame::SyncAck(_) | Frame::Open(_) => {
                return Err(Violation::WrongDirection(kind));
            }
        }
        Ok(())
    }

    fn stream(&mut self, serial: u64) -> io::Result<&mut Stream> {
        self.streams
            .get_mut(&serial)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream released"))
    }

    pub(super) fn poll_read(
        &mut self,
        serial: u64,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let s = self.stream(serial)?;
        if !s.rx.is_empty() && buf.remaining() > 0 {
            let n = s.rx.len().min(buf.remaining());
            let (a, b) = s.rx.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            s.rx.drain(..n);
            let read = s.outstanding - s.rx.len() as u32;
            if s.live && !s.peer_eof && read >= CREDIT_BATCH {
                s.outstanding -= read;
                let id = s.id;
                self.push(Out::window(id, read));
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 || s.peer_eof {
            return Poll::Ready(Ok(()));
        }
        match s.end {
            Some(End::PeerReset) => Poll::Ready(Ok(())),
            Some(End::Aborted(kind, why)) => Poll::Ready(Err(io::Error::new(kind, why))),
            None => {
                s.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn poll_write(
        &mut self,
        serial: u64,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = self.stream(serial)?;
        if let Some(e) = s.write_error() {
            return Poll::Ready(Err(e));
        }
        let n = data.len().min(s.credit as usize).min(MAX_DATA);
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if n == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.credit -= n as u32;
        let id = s.id;
        self.push(Out {
            owner: Some(serial),
            payload: Payload::Bytes(data[..n].to_vec()),
            ..Out::control(FrameKind::Data, id)
        });
        Poll::Ready(Ok(n))
    }

    /// Ready once every frame written so far reached the carrier.
    pub(super) fn poll_flush(&mut self, serial: u64, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = self.stream(serial)?;
        match s.end {
            Some(End::Aborted(kind, why)) => Poll::Ready(Err(io::Error::new(kind, why))),
            Some(End::PeerReset) => Poll::Ready(Ok(())),
            None if s.queued == 0 => Poll::Ready(Ok(())),
            None => {
                s.flush_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn poll_shutdown(
        &mut self,
        serial: u64,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let s = self.stream(serial)?;
        if s.end.is_none() && !s.sent_eof {
            s.sent_eof = true;
            let id = s.id;
            self.push(Out {
                owner: Some(serial),
                ..Out::control(FrameKind::Eof, id)
            });
        }
        self.poll_flush(serial, cx)
    }

    /// The stream's handle is gone: an unfinished stream is reset.
    pub(super) fn release(&mut self, serial: u64) {
        let Some(s) = self.streams.remove(&serial) else {
            return;
        };
        if s.live {
            self.ids.remove(&s.id);
            if !(s.sent_eof && s.peer_eof) {
                self.push(Out::control(FrameKind::Reset, s.id));
            }
        }
        // The host's writer may be waiting for the last stream to go.
        self.kick = true;
    }

    /// Moves queued frames into `buf` (up to [`BATCH`] bytes, at least
    /// one frame), noting whose they were in `owners`.
    pub(super) fn take_batch(&mut self, buf: &mut Vec<u8>, owners: &mut Vec<u64>) -> Batch {
        while let Some(out) = self.queue.front() {
            if !buf.is_empty() && buf.len() + out.wire_len() > BATCH {
                break;
            }
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            out.encode(buf);
            if out.kind == FrameKind::SyncAck {
                self.ack_queued = false;
            }
            owners.extend(out.owner);
        }
        if !buf.is_empty() {
            Batch::Write
        } else if self.role == Role::Host && self.client_gone && self.streams.is_empty() {
            Batch::Stop
        } else {
            Batch::Idle
        }
    }

    /// The frames of `owners` reached the carrier.
    pub(super) fn written(&mut self, owners: &[u64]) {
        for o in owners {
            if let Some(s) = self.streams.get_mut(o) {
                s.queued = s.queued.saturating_sub(1);
                if s.queued == 0 {
                    if let Some(w) = s.flush_waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }
}
