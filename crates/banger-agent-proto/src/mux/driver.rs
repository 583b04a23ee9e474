//! The carrier's two loops: one writer drains the frame queue, one
//! reader fills a buffer that holds at most one unfinished frame.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MuxError;
use super::state::{Batch, Shared};

/// Room made in the read buffer before each read.
pub(super) const READ_CHUNK: usize = 64 << 10;

/// Writes queued frames until the carrier fails or, on the host, nothing
/// is left to write for (then the write side is shut down).
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut w: W,
) -> Result<(), MuxError> {
    let mut buf = Vec::with_capacity(2 * READ_CHUNK);
    let mut owners = Vec::new();
    loop {
        buf.clear();
        owners.clear();
        let next = shared.lock().take_batch(&mut buf, &mut owners);
        match next {
            Batch::Write => {
                w.write_all(&buf).await?;
                w.flush().await?;
                shared.lock().written(&owners);
            }
            // A change made after take_batch left a permit: no lost wake.
            Batch::Idle => shared.writer_wait().await,
            Batch::Stop => {
                w.shutdown().await?;
                return Ok(());
            }
        }
    }
}

/// Reads more of the carrier into `buf`; `false` at its end.
pub(super) async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, MuxError> {
    buf.reserve(READ_CHUNK);
    Ok(r.read_buf(buf).await? > 0)
}
