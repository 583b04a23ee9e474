//! Finding the start of an epoch in a byte stream that may begin with
//! anything: leftovers of an earlier host connection, half a frame.
//!
//! A SYNC is an ordinary frame whose header and magic are fixed (17
//! bytes no other frame starts with), followed by a 16-byte random
//! nonce; the SYNC_ACK echoes the nonce behind its own magic. The guest
//! scans for the SYNC byte by byte while it has no sync; the host scans
//! for the SYNC_ACK carrying its own nonce, so a stale answer to an
//! earlier host can never be taken for its own.

use super::frame::{FrameKind, HEADER, Out, SYNC_PAYLOAD, put_header};

pub(super) const MAGIC_LEN: usize = 8;
pub(super) const NONCE_LEN: usize = 16;
pub(super) type Nonce = [u8; NONCE_LEN];

/// "BMUX1" and bytes text rarely has; the version is part of it.
pub(super) const SYNC_MAGIC: [u8; MAGIC_LEN] = [0xb0, b'B', b'M', b'U', b'X', b'1', 0x5e, 0xc7];
pub(super) const ACK_MAGIC: [u8; MAGIC_LEN] = [0xb0, b'B', b'M', b'U', b'X', b'1', 0xac, 0x4b];

const PREFIX: usize = HEADER + MAGIC_LEN;
/// A whole SYNC or SYNC_ACK frame.
pub(super) const SYNC_FRAME: usize = HEADER + SYNC_PAYLOAD;

/// The fixed start of a SYNC (`FrameKind::Sync`) or SYNC_ACK.
fn prefix(kind: FrameKind) -> [u8; PREFIX] {
    let magic = match kind {
        FrameKind::SyncAck => &ACK_MAGIC,
        _ => &SYNC_MAGIC,
    };
    let mut v = Vec::with_capacity(PREFIX);
    put_header(&mut v, kind, 0, SYNC_PAYLOAD);
    v.extend_from_slice(magic);
    let mut out = [0u8; PREFIX];
    out.copy_from_slice(&v);
    out
}

/// The host's SYNC.
pub(super) fn sync_frame(nonce: Nonce) -> Vec<u8> {
    let mut v = Vec::with_capacity(SYNC_FRAME);
    Out {
        payload: super::frame::Payload::Sync(&SYNC_MAGIC, nonce),
        ..Out::control(FrameKind::Sync, 0)
    }
    .encode(&mut v);
    v
}

/// What a scan found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// A whole frame with this nonce, ending at `end`.
    Found { nonce: Nonce, end: usize },
    /// None yet: bytes before `keep_from` can never be part of one.
    Partial { keep_from: usize },
}

/// The first whole SYNC (`kind` Sync) or SYNC_ACK in `buf`.
pub(super) fn find(buf: &[u8], kind: FrameKind) -> Scan {
    let prefix = prefix(kind);
    let mut at = 0;
    while let Some(off) = buf[at..].iter().position(|&b| b == prefix[0]) {
        let i = at + off;
        let rest = &buf[i..];
        let n = rest.len().min(PREFIX);
        if rest[..n] == prefix[..n] {
            if rest.len() < SYNC_FRAME {
                return Scan::Partial { keep_from: i };
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&rest[PREFIX..SYNC_FRAME]);
            return Scan::Found {
                nonce,
                end: i + SYNC_FRAME,
            };
        }
        at = i + 1;
    }
    Scan::Partial {
        keep_from: buf.len(),
    }
}
