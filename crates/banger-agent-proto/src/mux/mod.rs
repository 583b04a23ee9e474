//! Many byte streams over one carrier: the agent channel of QEMU guests,
//! a single virtio-serial port (`virtserialport` named
//! [`SERIAL_PORT_NAME`](crate::SERIAL_PORT_NAME); a unix socket QEMU
//! serves on the host, one connection at a time). Each stream carries a
//! session exactly as a vsock connection does.
//!
//! Written here rather than taken from yamux because the carrier is not
//! a connection: it outlives host connections, so either direction may
//! start with leftovers of an earlier one (half a frame, frames the old
//! host never read), and the guest must find its way back in.
//!
//! # Wire format
//!
//! Every frame: kind (1 byte), stream id (u32 BE), payload length (u32
//! BE), payload. Kinds ([`FrameKind`]) and payloads:
//!
//! | kind | dir | stream | payload |
//! |---|---|---|---|
//! | SYNC `b1` | host -> guest | 0 | magic `b0 'BMUX1' 5e c7`, 16-byte nonce |
//! | SYNC_ACK `b2` | guest -> host | 0 | magic `b0 'BMUX1' ac 4b`, the nonce |
//! | OPEN `b3` | host -> guest | new id (ascending from 1 per epoch) | none |
//! | DATA `b4` | both | id | 1..=32 KiB ([`MAX_DATA`]) |
//! | EOF `b5` | both | id | none: the sender is done sending |
//! | RESET `b6` | both | id, or 0 | none: the sender dropped the stream; id 0 from the guest: it lost the sync |
//! | WINDOW `b7` | both | id | u32 BE: this many more bytes may be sent |
//!
//! An epoch starts with the host's SYNC (repeated until answered); the
//! host drops every byte before the SYNC_ACK carrying its nonce, the
//! guest scans byte-wise for a SYNC while it has none. Each side may have
//! [`WINDOW`] bytes of a stream unread at the other; WINDOW frames give
//! credit back as the application reads, so a stalled stream stalls only
//! itself. Frames are checked from the header on (fixed lengths per kind,
//! DATA within the window, ids the host gave out): the host ends the
//! client on a violation, the guest treats one as a lost sync.

mod client;
mod driver;
mod frame;
mod guest;
mod state;
mod stream;
mod sync;

use std::sync::Arc;

pub use client::{MuxClient, SYNC_RESEND, WeakMuxClient};
pub use frame::{FrameKind, MAX_DATA, Violation};
pub use guest::serve;
pub use state::{MAX_STREAMS, WINDOW};
pub use stream::MuxStream;

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("agent channel i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest did not answer the agent channel's sync within {secs}s")]
    SyncTimeout { secs: u64 },
    /// The carrier ended; `cause` says why unless it was a plain EOF.
    #[error("the agent channel is closed")]
    Closed {
        #[source]
        cause: Option<Arc<MuxError>>,
    },
    #[error("agent channel protocol violation: {violation}")]
    Protocol {
        #[from]
        violation: Violation,
    },
    /// The host's keepalive got no answer: the channel was given up.
    #[error("the guest agent did not answer on its channel for {secs}s")]
    Unresponsive { secs: u64 },
    #[error("{MAX_STREAMS} streams are open on the agent channel already")]
    TooManyStreams,
    #[error("the agent channel ran out of stream ids")]
    IdsExhausted,
}

#[cfg(test)]
mod tests;
