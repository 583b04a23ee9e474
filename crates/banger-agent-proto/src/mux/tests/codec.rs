//! Frames and the sync scanner on their own.

use super::super::frame::{Frame, MAX_DATA, Violation, parse};
use super::super::sync::{Scan, find, sync_frame};
use super::*;

#[test]
fn every_frame_round_trips() {
    let nonce = [7u8; NONCE_LEN];
    let mut ack = Vec::new();
    Out::ack(nonce).encode(&mut ack);
    let cases: Vec<(Vec<u8>, Frame<'_>)> = vec![
        (sync_frame(nonce), Frame::Sync(nonce)),
        (ack, Frame::SyncAck(nonce)),
        (frame(FrameKind::Open, 3, Payload::Empty), Frame::Open(3)),
        (data(3, b"hello"), Frame::Data(3, b"hello")),
        (frame(FrameKind::Eof, 3, Payload::Empty), Frame::Eof(3)),
        (frame(FrameKind::Reset, 0, Payload::Empty), Frame::Reset(0)),
        (
            frame(FrameKind::Window, 3, Payload::Credit(9)),
            Frame::Window(3, 9),
        ),
    ];
    for (bytes, want) in cases {
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "{want:?} cut at {cut}");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"next");
        assert_eq!(parse(&more), Ok(Some((want, bytes.len()))));
    }
}

#[test]
fn a_bad_header_is_refused_before_its_payload() {
    let header = |kind: u8, stream: u32, len: u32| {
        let mut h = vec![kind];
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    let data = FrameKind::Data as u8;
    assert_eq!(
        parse(&header(data, 1, u32::MAX)),
        Err(Violation::BadLength {
            kind: FrameKind::Data,
            len: u32::MAX
        })
    );
    assert!(parse(&header(data, 1, MAX_DATA as u32 + 1)).is_err());
    assert!(parse(&header(data, 1, 0)).is_err(), "empty DATA");
    assert!(parse(&header(data, 0, 1)).is_err(), "DATA on stream 0");
    assert_eq!(parse(&header(0, 1, 0)), Err(Violation::UnknownKind(0)));
    assert!(parse(&header(FrameKind::Open as u8, 1, 4)).is_err());
    assert!(parse(&header(FrameKind::Sync as u8, 1, 24)).is_err());
    // A SYNC-shaped frame with the wrong magic.
    let mut bad = sync_frame([1; NONCE_LEN]);
    bad[HEADER] ^= 1;
    assert_eq!(parse(&bad), Err(Violation::BadMagic(FrameKind::Sync)));
    // A zero credit is no credit.
    let mut zero = header(FrameKind::Window as u8, 1, 4);
    zero.extend_from_slice(&[0; 4]);
    assert!(parse(&zero).is_err());
}

#[test]
fn the_scanner_finds_a_sync_anywhere_and_keeps_only_what_may_start_one() {
    let nonce = [0x42; NONCE_LEN];
    let sync = sync_frame(nonce);
    let mut buf = b"stale text \xb1\xb1 and half a frame".to_vec();
    let garbage = buf.len();
    buf.extend_from_slice(&sync);
    buf.extend_from_slice(b"after");
    assert_eq!(
        find(&buf, FrameKind::Sync),
        Scan::Found {
            nonce,
            end: garbage + SYNC_FRAME
        }
    );
    // Cut anywhere inside the SYNC: keep from its start, nothing before.
    for cut in garbage..garbage + SYNC_FRAME {
        assert_eq!(
            find(&buf[..cut], FrameKind::Sync),
            Scan::Partial { keep_from: garbage },
            "cut at {cut}"
        );
    }
    assert_eq!(
        find(b"no sync here", FrameKind::Sync),
        Scan::Partial { keep_from: 12 }
    );
    assert_eq!(
        find(&buf, FrameKind::SyncAck),
        Scan::Partial {
            keep_from: buf.len()
        },
        "a SYNC is no SYNC_ACK"
    );
}
