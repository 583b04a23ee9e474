//! The frame codec: a 9-byte header (kind, stream id, payload length,
//! both numbers big-endian) and a payload whose size each kind fixes or
//! bounds, so a header alone says whether the frame can be valid.

use super::sync::{ACK_MAGIC, MAGIC_LEN, NONCE_LEN, Nonce, SYNC_MAGIC};

/// Bytes before the payload: kind (1), stream (4), length (4).
pub(super) const HEADER: usize = 9;
/// Largest DATA payload: virtio-console moves at most 32 KiB per write.
pub const MAX_DATA: usize = 32 << 10;
/// SYNC and SYNC_ACK payload: magic, then the host's nonce.
pub(super) const SYNC_PAYLOAD: usize = MAGIC_LEN + NONCE_LEN;

/// What a frame is. The values are far from 0 and from ASCII so that
/// stale text or zeroes read as a header fail at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// host -> guest: start of an epoch (magic + nonce).
    Sync = 0xb1,
    /// guest -> host: the answer, echoing the nonce.
    SyncAck = 0xb2,
    /// host -> guest: a new stream.
    Open = 0xb3,
    Data = 0xb4,
    /// The sender will send no more data on the stream (half close).
    Eof = 0xb5,
    /// The sender dropped the stream: it neither sends nor reads any
    /// more. On stream 0, from the guest: it lost the frame sync.
    Reset = 0xb6,
    /// The sender read this many more bytes of the stream (credit).
    Window = 0xb7,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0xb1 => Self::Sync,
            0xb2 => Self::SyncAck,
            0xb3 => Self::Open,
            0xb4 => Self::Data,
            0xb5 => Self::Eof,
            0xb6 => Self::Reset,
            0xb7 => Self::Window,
            _ => return None,
        })
    }
}

/// Frames that break the protocol. Each is a lost sync in the guest and
/// the end of the client on the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame with a {len}-byte payload")]
    BadLength { kind: FrameKind, len: u32 },
    #[error("{kind:?} frame on stream {stream}")]
    BadStream { kind: FrameKind, stream: u32 },
    #[error("{0:?} frame without its magic")]
    BadMagic(FrameKind),
    #[error("{kind:?} frame for stream {stream}, which was never opened")]
    UnknownStream { kind: FrameKind, stream: u32 },
    #[error("{0:?} frame sent the wrong way")]
    WrongDirection(FrameKind),
    #[error("stream {0} opened out of order")]
    OpenOutOfOrder(u32),
    #[error("stream {0} sent data past its window")]
    WindowExceeded(u32),
    #[error("stream {0} was granted credit past its window")]
    CreditOverflow(u32),
    #[error("stream {0} went on after its end")]
    AfterEof(u32),
    #[error("SYNC_ACK for another nonce after the sync")]
    ForeignNonce,
    #[error("the guest lost the frame sync")]
    PeerLostSync,
}

/// One frame as read; DATA borrows the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    Sync(Nonce),
    SyncAck(Nonce),
    Open(u32),
    Data(u32, &'a [u8]),
    Eof(u32),
    Reset(u32),
    Window(u32, u32),
}

impl Frame<'_> {
    pub(super) fn kind(&self) -> FrameKind {
        match self {
            Self::Sync(_) => FrameKind::Sync,
            Self::SyncAck(_) => FrameKind::SyncAck,
            Self::Open(_) => FrameKind::Open,
            Self::Data(..) => FrameKind::Data,
            Self::Eof(_) => FrameKind::Eof,
            Self::Reset(_) => FrameKind::Reset,
            Self::Window(..) => FrameKind::Window,
        }
    }
}

/// Checks a header on its own: the payload length each kind allows and
/// where stream 0 may appear. Returns the payload length.
fn check_header(kind: FrameKind, stream: u32, len: u32) -> Result<usize, Violation> {
    let len_ok = match kind {
        FrameKind::Sync | FrameKind::SyncAck => len as usize == SYNC_PAYLOAD,
        FrameKind::Open | FrameKind::Eof | FrameKind::Reset => len == 0,
        FrameKind::Window => len == 4,
        FrameKind::Data => len >= 1 && len as usize <= MAX_DATA,
    };
    if !len_ok {
        return Err(Violation::BadLength { kind, len });
    }
    let stream_ok = match kind {
        FrameKind::Sync | FrameKind::SyncAck => stream == 0,
        // Stream 0 is the guest's "lost sync"; the reader decides.
        FrameKind::Reset => true,
        _ => stream != 0,
    };
    if !stream_ok {
        return Err(Violation::BadStream { kind, stream });
    }
    Ok(len as usize)
}

/// The first frame of `buf`, with the bytes it took; `None` until it is
/// complete. A bad header is reported as soon as the header is there,
/// never after waiting for a payload it announces.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, Violation> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let kind = FrameKind::from_byte(header[0]).ok_or(Violation::UnknownKind(header[0]))?;
    let stream = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let len = check_header(kind, stream, len)?;
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    let nonce = |magic: &[u8; MAGIC_LEN]| -> Result<Nonce, Violation> {
        let (m, n) = payload.split_at(MAGIC_LEN);
        if m != magic {
            return Err(Violation::BadMagic(kind));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(n);
        Ok(nonce)
    };
    let frame = match kind {
        FrameKind::Sync => Frame::Sync(nonce(&SYNC_MAGIC)?),
        FrameKind::SyncAck => Frame::SyncAck(nonce(&ACK_MAGIC)?),
        FrameKind::Open => Frame::Open(stream),
        FrameKind::Data => Frame::Data(stream, payload),
        FrameKind::Eof => Frame::Eof(stream),
        FrameKind::Reset => Frame::Reset(stream),
        FrameKind::Window => {
            let n = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if n == 0 {
                return Err(Violation::BadLength { kind, len: 0 });
            }
            Frame::Window(stream, n)
        }
    };
    Ok(Some((frame, HEADER + len)))
}

/// Appends a header.
pub(super) fn put_header(out: &mut Vec<u8>, kind: FrameKind, stream: u32, len: usize) {
    out.push(kind as u8);
    out.extend_from_slice(&stream.to_be_bytes());
    // Every payload is bounded far below u32::MAX (MAX_DATA, or fixed).
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// A frame waiting for the writer.
#[derive(Debug)]
pub(super) struct Out {
    pub(super) kind: FrameKind,
    pub(super) stream: u32,
    /// The stream (by serial) that waits on this frame in a flush.
    pub(super) owner: Option<u64>,
    pub(super) payload: Payload,
}

#[derive(Debug)]
pub(super) enum Payload {
    Empty,
    Credit(u32),
    Bytes(Vec<u8>),
    Sync(&'static [u8; MAGIC_LEN], Nonce),
}

impl Out {
    pub(super) fn control(kind: FrameKind, stream: u32) -> Self {
        Self {
            kind,
            stream,
            owner: None,
            payload: Payload::Empty,
        }
    }

    pub(super) fn ack(nonce: Nonce) -> Self {
        Self {
            kind: FrameKind::SyncAck,
            stream: 0,
            owner: None,
            payload: Payload::Sync(&ACK_MAGIC, nonce),
        }
    }

    pub(super) fn window(stream: u32, n: u32) -> Self {
        Self {
            kind: FrameKind::Window,
            stream,
            owner: None,
            payload: Payload::Credit(n),
        }
    }

    pub(super) fn wire_len(&self) -> usize {
        HEADER
            + match &self.payload {
                Payload::Empty => 0,
                Payload::Credit(_) => 4,
                Payload::Bytes(b) => b.len(),
                Payload::Sync(..) => SYNC_PAYLOAD,
            }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        put_header(out, self.kind, self.stream, self.wire_len() - HEADER);
        match &self.payload {
            Payload::Empty => {}
            Payload::Credit(n) => out.extend_from_slice(&n.to_be_bytes()),
            Payload::Bytes(b) => out.extend_from_slice(b),
            Payload::Sync(magic, nonce) => {
                out.extend_from_slice(&magic[..]);
                out.extend_from_slice(nonce);
            }
        }
    }
}
