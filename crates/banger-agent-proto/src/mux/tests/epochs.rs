//! Syncing: stale bytes before it, a repeated or new SYNC, a host that
//! reconnects behind a carrier the guest never saw end, no answer.

use std::io::ErrorKind;

use tokio::io::{ReadHalf, SimplexStream, WriteHalf, simplex};

use super::super::sync::sync_frame;
use super::*;

fn ack(nonce: Nonce) -> Vec<u8> {
    let mut v = Vec::new();
    Out::ack(nonce).encode(&mut v);
    v
}

#[tokio::test(start_paused = true)]
async fn garbage_and_half_frames_before_the_sync_are_skipped() {
    let (mut h, mut g) = duplex(64 << 10);
    // Host -> guest: text, a SYNC of an earlier host, half a DATA frame
    // (its header promises 100 bytes), half a SYNC.
    let mut stale = b"login: \x00\xff\xb1\xb4".to_vec();
    stale.extend(sync_frame([9; NONCE_LEN]));
    stale.extend(&data(1, &[7; 100])[..HEADER + 10]);
    stale.extend(&sync_frame([8; NONCE_LEN])[..20]);
    h.write_all(&stale).await.expect("stale to guest");
    // Guest -> host: an answer to another host, half a frame, half an
    // answer.
    let mut stale = ack([9; NONCE_LEN]);
    stale.extend(&data(4, b"unread output")[..12]);
    stale.extend(&ack([9; NONCE_LEN])[..30]);
    g.write_all(&stale).await.expect("stale to host");

    let (mut accepted, _guest) = guest(g);
    let client = MuxClient::connect(h, WITHIN).await.expect("sync");
    let mut s = client.open().await.expect("open");
    tokio::spawn(echo(accepted.recv().await.expect("accepted")));
    s.write_all(b"through").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"through");
    assert!(!client.is_closed());
}

/// A guest agent restarted under a host still synced with the one before
/// (the carrier never ended: virtio-serial keeps the host connected) says
/// so at once, and the host's streams end instead of waiting forever.
#[tokio::test]
async fn a_guest_restarted_under_a_synced_host_ends_the_hosts_streams() {
    let (h, g) = duplex(64 << 10);
    // The port: one carrier end, served by one agent process after another.
    let (swap, mut swaps) = tokio::sync::mpsc::unbounded_channel::<DuplexStream>();
    // A process that dies is no EOF to the host: the port stays connected.
    tokio::spawn(async move {
        let mut g = g;
        let Some(mut agent) = swaps.recv().await else {
            return;
        };
        let (mut up, mut down) = (vec![0u8; 4096], vec![0u8; 4096]);
        loop {
            tokio::select! {
                n = agent.read(&mut up) => match n {
                    Ok(n) if n > 0 => {
                        if g.write_all(&up[..n]).await.is_err() {
                            return;
                        }
                    }
                    _ => match swaps.recv().await {
                        Some(next) => agent = next,
                        None => return,
                    },
                },
                n = g.read(&mut down) => match n {
                    Ok(n) if n > 0 => {
                        let _ = agent.write_all(&down[..n]).await;
                    }
                    _ => return,
                },
            }
        }
    });
    let (port, agent) = duplex(64 << 10);
    swap.send(port).expect("first agent");
    let (mut accepted, first) = guest(agent);
    let client = MuxClient::connect(h, WITHIN).await.expect("sync");
    let mut s = client.open().await.expect("open");
    let _held = accepted.recv().await.expect("accepted");
    // The agent dies; a new one serves the same carrier.
    first.abort();
    let (port, agent) = duplex(64 << 10);
    swap.send(port).expect("second agent");
    let (_accepted, _second) = guest(agent);
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut [0u8; 1])).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the stream ended at once: {read:?}"
    );
    client.closed().await;
    let why = client.close_reason();
    assert!(
        matches!(
            why.as_deref(),
            Some(MuxError::Protocol {
                violation: Violation::PeerLostSync
            })
        ),
        "{why:?}"
    );
}

/// The guest against a host written by hand.
#[tokio::test]
async fn the_same_nonce_again_only_reacks_a_new_one_resets() {
    let (mut h, g) = duplex(64 << 10);
    let (mut accepted, _guest) = guest(g);
    assert_eq!(
        read_header(&mut h).await,
        (FrameKind::Reset as u8, 0, 0),
        "a guest starts by saying it has no sync"
    );
    let first = [1; NONCE_LEN];
    h.write_all(&sync_frame(first)).await.expect("sync");
    let mut got = vec![0u8; SYNC_FRAME];
    h.read_exact(&mut got).await.expect("ack");
    assert_eq!(got, ack(first));

    let mut bytes = frame(FrameKind::Open, 1, Payload::Empty);
    bytes.extend(data(1, b"x"));
    bytes.extend(sync_frame(first));
    bytes.extend(data(1, b"y"));
    h.write_all(&bytes).await.expect("frames");
    h.read_exact(&mut got).await.expect("second ack");
    assert_eq!(got, ack(first), "the repeat is answered again");
    let mut old = accepted.recv().await.expect("stream 1");
    let mut xy = [0u8; 2];
    old.read_exact(&mut xy)
        .await
        .expect("data on both sides of the repeat");
    assert_eq!(&xy, b"xy");

    // A new host: the old stream is reset, ids start over.
    let second = [2; NONCE_LEN];
    let mut bytes = sync_frame(second);
    bytes.extend(frame(FrameKind::Open, 1, Payload::Empty));
    bytes.extend(data(1, b"new"));
    h.write_all(&bytes).await.expect("new epoch");
    h.read_exact(&mut got).await.expect("ack");
    assert_eq!(got, ack(second), "nothing of the old stream before the ack");
    let err = old.read(&mut [0u8; 1]).await.expect_err("old stream reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(old.write_all(b"late").await.is_err());
    let mut new = accepted.recv().await.expect("stream 1 again");
    let mut buf = [0u8; 3];
    new.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"new");
}

/// A frame that breaks the protocol loses the guest's sync: streams are
/// reset, the host is told, the next SYNC is found again.
#[tokio::test]
async fn a_violation_makes_the_guest_scan_again() {
    let (mut h, g) = duplex(64 << 10);
    let (mut accepted, _guest) = guest(g);
    assert_eq!(read_header(&mut h).await, (FrameKind::Reset as u8, 0, 0));
    let nonce = [3; NONCE_LEN];
    let mut bytes = sync_frame(nonce);
    bytes.extend(frame(FrameKind::Open, 1, Payload::Empty));
    // DATA for a stream never opened.
    bytes.extend(data(5, b"?"));
    h.write_all(&bytes).await.expect("write");
    let mut got = vec![0u8; SYNC_FRAME];
    h.read_exact(&mut got).await.expect("ack");
    assert_eq!(got, ack(nonce));
    let (kind, stream, len) = read_header(&mut h).await;
    assert_eq!(
        (kind, stream, len),
        (FrameKind::Reset as u8, 0, 0),
        "lost sync"
    );
    let mut s = accepted.recv().await.expect("stream 1");
    assert_eq!(
        s.read(&mut [0u8; 1]).await.expect_err("reset").kind(),
        ErrorKind::ConnectionReset
    );
    // Frames while unsynced are skipped; the SYNC is found again.
    let mut bytes = frame(FrameKind::Open, 1, Payload::Empty);
    bytes.extend(sync_frame(nonce));
    h.write_all(&bytes).await.expect("write");
    h.read_exact(&mut got).await.expect("ack");
    assert_eq!(got, ack(nonce));
    assert!(
        accepted.try_recv().is_err(),
        "the OPEN before the SYNC was skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn no_answer_is_a_sync_timeout() {
    let (h, _g) = duplex(1 << 10);
    let err = MuxClient::connect(h, Duration::from_secs(7))
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, MuxError::SyncTimeout { secs: 7 }), "{err}");

    let (h, g) = duplex(1 << 10);
    drop(g);
    let err = MuxClient::connect(h, WITHIN).await.expect_err("gone");
    assert!(
        matches!(err, MuxError::Closed { .. } | MuxError::Io(_)),
        "{err}"
    );
}

/// The host side of the guest's port, as QEMU holds it across host
/// connections.
struct Port {
    to_guest: WriteHalf<SimplexStream>,
    from_guest: ReadHalf<SimplexStream>,
}

/// Connects a host to the port until `cut` fires; hands the port back.
async fn attach(
    mut port: Port,
    host: DuplexStream,
    cut: tokio::sync::oneshot::Receiver<()>,
) -> Port {
    let (mut hr, mut hw) = tokio::io::split(host);
    let mut cut = cut;
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
    loop {
        tokio::select! {
            _ = &mut cut => break,
            n = hr.read(&mut a) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => port.to_guest.write_all(&a[..n]).await.expect("to guest"),
            },
            n = port.from_guest.read(&mut b) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if hw.write_all(&b[..n]).await.is_err() { break },
            },
        }
    }
    port
}

#[tokio::test(start_paused = true)]
async fn a_new_host_behind_the_same_carrier_resets_the_old_streams() {
    let (guest_in, to_guest) = simplex(64 << 10);
    let (from_guest, guest_out) = simplex(64 << 10);
    let (mut accepted, guest_task) = guest(tokio::io::join(guest_in, guest_out));
    let port = Port {
        to_guest,
        from_guest,
    };

    let (h1, q1) = duplex(64 << 10);
    let (cut1, cut) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(attach(port, q1, cut));
    let old_client = MuxClient::connect(h1, WITHIN).await.expect("first sync");
    let mut old_h = old_client.open().await.expect("open");
    let mut old_g = accepted.recv().await.expect("accepted");
    old_h.write_all(b"before").await.expect("write");
    let mut before = [0u8; 6];
    old_g.read_exact(&mut before).await.expect("read");

    // The first host vanishes; the guest does not notice.
    let _ = cut1.send(());
    let mut port = first.await.expect("port back");
    old_client.closed().await;
    assert!(matches!(
        old_h.read(&mut [0u8; 1]).await,
        Err(e) if e.kind() == ErrorKind::ConnectionAborted
    ));
    // Stale bytes both ways: the guest's answer nobody reads, half a
    // frame the old host was writing.
    old_g
        .write_all(&[5u8; 50_000])
        .await
        .expect("unread output");
    old_g.flush().await.expect("into the port");
    let half = data(old_g.id(), &[6; 100]);
    port.to_guest
        .write_all(&half[..HEADER + 10])
        .await
        .expect("half frame");

    let (h2, q2) = duplex(64 << 10);
    let (_cut2, cut) = tokio::sync::oneshot::channel();
    tokio::spawn(attach(port, q2, cut));
    let client = MuxClient::connect(h2, Duration::from_secs(3600))
        .await
        .expect("second sync");
    let mut s = client.open().await.expect("open");
    tokio::spawn(echo(accepted.recv().await.expect("accepted")));
    s.write_all(b"after").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"after");

    let mut rest = Vec::new();
    let err = old_g
        .read_to_end(&mut rest)
        .await
        .expect_err("old stream reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(!guest_task.is_finished(), "one carrier all along");
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn close_resolves_once_the_peer_closed_its_end_after_the_host_left() {
    let (h, mut g) = duplex(4 << 10);
    let connecting = tokio::spawn(async move { MuxClient::connect(h, WITHIN).await });
    fake_guest_sync(&mut g).await;
    let client = connecting.await.expect("task").expect("sync");
    let closing = tokio::spawn(client.close());
    // The host shuts its write side: the guest reads the end...
    let mut rest = Vec::new();
    g.read_to_end(&mut rest).await.expect("the host's end");
    // ...and the host waits for the guest's, however long.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!closing.is_finished(), "closed before the peer had seen it");
    drop(g);
    tokio::time::timeout(WITHIN, closing)
        .await
        .expect("closes with the peer")
        .expect("task");
}

#[tokio::test(start_paused = true)]
async fn abort_fails_the_streams_with_its_cause_and_drops_the_carrier() {
    let (h, mut g) = duplex(4 << 10);
    let connecting = tokio::spawn(async move { MuxClient::connect(h, WITHIN).await });
    fake_guest_sync(&mut g).await;
    let client = connecting.await.expect("task").expect("sync");
    let mut s = client.open().await.expect("open");
    assert_eq!(client.open_streams(), 1);
    client.abort(MuxError::Unresponsive { secs: 3 });
    let err = s.read(&mut [0u8; 8]).await.expect_err("aborted");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(matches!(
        client.close_reason().as_deref(),
        Some(MuxError::Unresponsive { secs: 3 })
    ));
    // The carrier went with it: the guest reads its end (after the OPEN
    // that was queued, if it got out).
    let mut rest = Vec::new();
    tokio::time::timeout(WITHIN, g.read_to_end(&mut rest))
        .await
        .expect("the carrier is dropped")
        .expect("read");
}
