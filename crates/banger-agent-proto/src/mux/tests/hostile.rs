//! A guest that breaks the protocol: the client ends with a typed
//! error, its streams are aborted, nothing panics.

use std::io::ErrorKind;

use rand::{Rng, SeedableRng};

use super::*;

/// A client synced with a hand-written guest, with `opened` streams.
async fn client_and_raw_guest(opened: usize) -> (MuxClient, Vec<MuxStream>, DuplexStream) {
    let (h, mut g) = duplex(1 << 20);
    let (client, _) = tokio::join!(
        async { MuxClient::connect(h, WITHIN).await.expect("sync") },
        fake_guest_sync(&mut g)
    );
    let mut streams = Vec::new();
    for i in 1..=opened {
        streams.push(client.open().await.expect("open"));
        assert_eq!(
            read_header(&mut g).await,
            (FrameKind::Open as u8, i as u32, 0)
        );
    }
    (client, streams, g)
}

async fn violation_after(opened: usize, bytes: Vec<u8>) -> (Violation, Vec<MuxStream>) {
    let (client, streams, mut g) = client_and_raw_guest(opened).await;
    g.write_all(&bytes).await.expect("hostile bytes");
    tokio::time::timeout(WITHIN, client.closed())
        .await
        .expect("the client closes");
    let cause = client.close_reason().expect("a reason");
    let MuxError::Protocol { violation } = &*cause else {
        panic!("not a protocol error: {cause}");
    };
    assert!(
        matches!(
            client.open().await,
            Err(MuxError::Closed { cause: Some(_) })
        ),
        "no new streams"
    );
    (violation.clone(), streams)
}

fn header(kind: u8, stream: u32, len: u32) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test]
async fn a_huge_length_ends_the_client_from_the_header() {
    // No payload follows: the header alone is enough to refuse it.
    let (v, mut streams) = violation_after(1, header(FrameKind::Data as u8, 1, u32::MAX)).await;
    assert_eq!(
        v,
        Violation::BadLength {
            kind: FrameKind::Data,
            len: u32::MAX
        }
    );
    let err = streams[0].read(&mut [0u8; 1]).await.expect_err("aborted");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted);
}

#[tokio::test]
async fn frames_for_streams_never_opened_end_the_client() {
    let (v, _) = violation_after(1, data(7, b"x")).await;
    assert_eq!(
        v,
        Violation::UnknownStream {
            kind: FrameKind::Data,
            stream: 7
        }
    );
    let (v, _) = violation_after(0, frame(FrameKind::Window, 1, Payload::Credit(1))).await;
    assert!(
        matches!(v, Violation::UnknownStream { stream: 1, .. }),
        "{v}"
    );
}

#[tokio::test]
async fn data_past_the_window_ends_the_client() {
    let mut bytes = Vec::new();
    for _ in 0..WINDOW as usize / MAX_DATA {
        bytes.extend(data(1, &[0; MAX_DATA]));
    }
    bytes.extend(data(1, b"!"));
    let (v, mut streams) = violation_after(1, bytes).await;
    assert_eq!(v, Violation::WindowExceeded(1));
    // What was within the window had been taken; the stream then fails.
    let mut got = Vec::new();
    let err = streams[0].read_to_end(&mut got).await.expect_err("aborted");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted);
    assert_eq!(got.len(), WINDOW as usize);
}

#[tokio::test]
async fn other_breaches_end_the_client_each_with_its_reason() {
    let cases: Vec<(usize, Vec<u8>, Violation)> = vec![
        (1, header(0x00, 1, 0), Violation::UnknownKind(0)),
        (
            1,
            frame(FrameKind::Window, 1, Payload::Credit(1)),
            Violation::CreditOverflow(1),
        ),
        (
            0,
            frame(FrameKind::Open, 1, Payload::Empty),
            Violation::WrongDirection(FrameKind::Open),
        ),
        (
            0,
            frame(FrameKind::Reset, 0, Payload::Empty),
            Violation::PeerLostSync,
        ),
        (
            1,
            [
                frame(FrameKind::Eof, 1, Payload::Empty),
                data(1, b"after the end"),
            ]
            .concat(),
            Violation::AfterEof(1),
        ),
        (
            0,
            {
                let mut v = Vec::new();
                Out::ack([0xee; NONCE_LEN]).encode(&mut v);
                v
            },
            Violation::ForeignNonce,
        ),
    ];
    for (opened, bytes, want) in cases {
        let (v, _) = violation_after(opened, bytes).await;
        assert_eq!(v, want);
    }
}

#[tokio::test(start_paused = true)]
async fn random_garbage_never_panics_the_client() {
    for seed in 0..200u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (client, _streams, mut g) = client_and_raw_guest(2).await;
        let len = rng.random_range(1..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Plausible headers now and then, so checks past the first run.
        if seed % 2 == 0 {
            bytes[0] = FrameKind::Data as u8;
            bytes[1..5].copy_from_slice(&rng.random_range(0u32..4).to_be_bytes());
        }
        let _ = g.write_all(&bytes).await;
        drop(g);
        tokio::time::timeout(WITHIN, client.closed())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the driver died without closing"));
    }
}

#[tokio::test]
async fn the_number_of_streams_is_bounded() {
    let (h, mut g) = duplex(1 << 20);
    let (client, _) = tokio::join!(
        async { MuxClient::connect(h, WITHIN).await.expect("sync") },
        fake_guest_sync(&mut g)
    );
    // The guest reads and discards the OPENs.
    tokio::spawn(async move { tokio::io::copy(&mut g, &mut tokio::io::sink()).await });
    let mut streams = Vec::new();
    for _ in 0..MAX_STREAMS {
        streams.push(client.open().await.expect("open"));
    }
    assert!(matches!(client.open().await, Err(MuxError::TooManyStreams)));
    streams.pop();
    client.open().await.expect("room again");
}
