//! One multiplexed byte stream: what a session reads and writes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::state::Shared;

/// A byte stream over the carrier. `shutdown` half-closes it (the peer
/// reads the end, and can still write back); dropping it before both
/// sides finished resets it: the peer reads what was sent, then the end,
/// and its writes fail with `BrokenPipe`. Flushing waits until what was
/// written reached the carrier. When the carrier ends, reads return what
/// had arrived, then fail.
pub struct MuxStream {
    shared: Arc<Shared>,
    serial: u64,
    id: u32,
}

impl MuxStream {
    pub(super) fn new(shared: Arc<Shared>, serial: u64, id: u32) -> Self {
        Self { shared, serial, id }
    }

    /// The stream's id on the wire (for logs).
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.lock().poll_read(self.serial, cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.lock().poll_write(self.serial, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().poll_flush(self.serial, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().poll_shutdown(self.serial, cx)
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.shared.lock().release(self.serial);
    }
}
