//! The multiplexer over in-memory carriers: `tokio::io::duplex` between a
//! `MuxClient` and `serve`, raw bytes where a side must misbehave.

mod codec;
mod epochs;
mod hostile;
mod streams;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::frame::{FrameKind, HEADER, Out, Payload};
use super::sync::{NONCE_LEN, Nonce, SYNC_FRAME};
use super::*;

/// Generous: the tests that wait run on paused time or finish at once.
const WITHIN: Duration = Duration::from_secs(30);

/// A guest serving `carrier`; its streams arrive on the receiver.
fn guest<C>(
    carrier: C,
) -> (
    mpsc::UnboundedReceiver<MuxStream>,
    JoinHandle<Result<(), MuxError>>,
)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(serve(carrier, move |s| {
        let _ = tx.send(s);
    }));
    (rx, task)
}

struct Pair {
    client: MuxClient,
    accepted: mpsc::UnboundedReceiver<MuxStream>,
    guest: JoinHandle<Result<(), MuxError>>,
}

impl Pair {
    async fn new() -> Self {
        let (h, g) = duplex(64 << 10);
        let (accepted, guest) = guest(g);
        let client = MuxClient::connect(h, WITHIN).await.expect("sync");
        Self {
            client,
            accepted,
            guest,
        }
    }

    /// A stream, with its guest end.
    async fn open(&mut self) -> (MuxStream, MuxStream) {
        let h = self.client.open().await.expect("open");
        let g = self.accepted.recv().await.expect("accepted");
        assert_eq!(g.id(), h.id());
        (h, g)
    }
}

/// Echoes to the end, then half-closes.
async fn echo(mut s: MuxStream) {
    let mut buf = vec![0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown().await;
}

/// Encodes one frame as the other side would write it.
fn frame(kind: FrameKind, stream: u32, payload: Payload) -> Vec<u8> {
    let mut v = Vec::new();
    Out {
        payload,
        ..Out::control(kind, stream)
    }
    .encode(&mut v);
    v
}

fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
    frame(FrameKind::Data, stream, Payload::Bytes(bytes.to_vec()))
}

/// The guest's part of the sync, by hand: reads the host's SYNC, answers.
async fn fake_guest_sync(s: &mut DuplexStream) -> Nonce {
    let mut sync = [0u8; SYNC_FRAME];
    s.read_exact(&mut sync).await.expect("sync");
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sync[SYNC_FRAME - NONCE_LEN..]);
    let mut ack = Vec::new();
    Out::ack(nonce).encode(&mut ack);
    s.write_all(&ack).await.expect("ack");
    nonce
}

/// Reads one frame header from a raw carrier: (kind byte, stream, len).
async fn read_header(s: &mut DuplexStream) -> (u8, u32, u32) {
    let mut h = [0u8; HEADER];
    s.read_exact(&mut h).await.expect("header");
    (
        h[0],
        u32::from_be_bytes([h[1], h[2], h[3], h[4]]),
        u32::from_be_bytes([h[5], h[6], h[7], h[8]]),
    )
}
