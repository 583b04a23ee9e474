//! Streams between a real client and a real guest.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_echo() {
    let mut p = Pair::new().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (mut h, g) = p.open().await;
        tokio::spawn(echo(g));
        tasks.push(tokio::spawn(async move {
            let sent = pattern(i, 20_000 + i * 3_001);
            let (mut r, mut w) = tokio::io::split(&mut h);
            let send = async {
                w.write_all(&sent).await.expect("write");
                w.shutdown().await.expect("shutdown");
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.expect("read");
            assert!(
                got == sent,
                "stream {i} echoed {} of {} bytes",
                got.len(),
                sent.len()
            );
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
}

#[tokio::test]
async fn a_stalled_stream_stalls_only_itself() {
    let mut p = Pair::new().await;
    let (mut big, mut big_g) = p.open().await;
    // Host -> guest, the guest never reads.
    let (mut unread_g_side, _held_g) = p.open().await;
    // Guest -> host, the host never reads.
    let (unread_h_side, mut flood_g) = p.open().await;
    let (mut ping, ping_g) = p.open().await;
    tokio::spawn(echo(ping_g));

    unread_g_side
        .write_all(&vec![1u8; WINDOW as usize])
        .await
        .expect("a window's worth goes");
    let stuck_writer =
        tokio::spawn(async move { unread_g_side.write_all(b"one byte too many").await });
    let flooded = Arc::new(AtomicU64::new(0));
    let counter = flooded.clone();
    let flood = tokio::spawn(async move {
        let block = vec![2u8; 4096];
        loop {
            let n = flood_g.write(&block).await.expect("flood");
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
    });

    const TOTAL: usize = 10 << 20;
    let sink = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match big_g.read(&mut buf).await.expect("sink read") {
                0 => break,
                n => got += n,
            }
        }
        big_g
            .write_all(&(got as u64).to_be_bytes())
            .await
            .expect("count");
        big_g.shutdown().await.expect("shutdown");
    });
    let send = async {
        let block = pattern(1, 1 << 20);
        for _ in 0..TOTAL / block.len() {
            big.write_all(&block).await.expect("big write");
            // The third stream answers while the transfer runs.
            ping.write_all(b"ping").await.expect("ping");
            let mut pong = [0u8; 4];
            ping.read_exact(&mut pong).await.expect("pong");
            assert_eq!(&pong, b"ping");
        }
        big.shutdown().await.expect("shutdown");
        let mut count = [0u8; 8];
        big.read_exact(&mut count).await.expect("count");
        u64::from_be_bytes(count)
    };
    assert_eq!(send.await, TOTAL as u64);
    sink.await.expect("sink");

    assert!(!stuck_writer.is_finished(), "a write past the window waits");
    assert_eq!(
        flooded.load(Ordering::SeqCst),
        u64::from(WINDOW),
        "the guest's writer stops at the window"
    );
    // Reading the stalled stream lets it go on.
    let mut unread_h_side = unread_h_side;
    let mut buf = vec![0u8; 2 * WINDOW as usize];
    unread_h_side.read_exact(&mut buf).await.expect("drain");
    assert!(flooded.load(Ordering::SeqCst) >= u64::from(WINDOW) * 2);
    flood.abort();
}

#[tokio::test]
async fn eof_half_closes_each_way() {
    let mut p = Pair::new().await;
    // Host closes its side first, the guest still answers.
    let (mut h, mut g) = p.open().await;
    h.write_all(b"question").await.expect("write");
    h.shutdown().await.expect("shutdown");
    assert!(
        matches!(h.write(b"x").await, Err(e) if e.kind() == ErrorKind::BrokenPipe),
        "no writes after shutdown"
    );
    let mut q = Vec::new();
    g.read_to_end(&mut q).await.expect("guest reads to the end");
    assert_eq!(q, b"question");
    g.write_all(b"answer")
        .await
        .expect("answer after the host's EOF");
    g.shutdown().await.expect("guest shutdown");
    let mut a = Vec::new();
    h.read_to_end(&mut a).await.expect("host reads");
    assert_eq!(a, b"answer");

    // The guest closes first; the host sends more than a window after.
    let (mut h, mut g) = p.open().await;
    g.write_all(b"hi").await.expect("write");
    g.shutdown().await.expect("shutdown");
    let mut hi = Vec::new();
    h.read_to_end(&mut hi).await.expect("read");
    assert_eq!(hi, b"hi");
    let sent = pattern(3, 3 * WINDOW as usize);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        g.read_to_end(&mut got).await.expect("guest reads on");
        got
    });
    h.write_all(&sent)
        .await
        .expect("write after the guest's EOF");
    h.shutdown().await.expect("shutdown");
    assert!(reader.await.expect("reader") == sent);
}

#[tokio::test]
async fn a_dropped_stream_is_reset_on_the_other_side() {
    let mut p = Pair::new().await;
    // Dropped by the host: the guest reads what came, then the end, and
    // can write no more.
    let (mut h, mut g) = p.open().await;
    h.write_all(b"last words").await.expect("write");
    drop(h);
    let mut got = Vec::new();
    g.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"last words");
    let err = g.write_all(b"x").await.expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);

    // Dropped by the guest while the host waits for credit.
    let (mut h, g) = p.open().await;
    h.write_all(&vec![0u8; WINDOW as usize])
        .await
        .expect("window");
    let blocked = tokio::spawn(async move { h.write_all(b"more").await });
    tokio::task::yield_now().await;
    drop(g);
    let err = blocked
        .await
        .expect("task")
        .expect_err("reset wakes the writer");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);

    // Both finished: no reset, the other side reads a clean end.
    let (mut h, mut g) = p.open().await;
    h.shutdown().await.expect("shutdown");
    g.shutdown().await.expect("shutdown");
    let mut none = Vec::new();
    g.read_to_end(&mut none).await.expect("eof");
    drop(g);
    assert_eq!(h.read(&mut [0u8; 1]).await.expect("eof"), 0);
}

#[tokio::test]
async fn the_end_of_the_carrier_aborts_streams_after_what_arrived() {
    let mut p = Pair::new().await;
    let (mut h, mut g) = p.open().await;
    g.write_all(b"bye").await.expect("write");
    g.flush().await.expect("flush waits for the carrier");
    // The guest's side of the carrier goes away.
    p.guest.abort();
    p.client.closed().await;
    assert!(p.client.is_closed());
    assert!(p.client.close_reason().is_none(), "a plain EOF");
    let mut bye = [0u8; 3];
    h.read_exact(&mut bye)
        .await
        .expect("what arrived is still read");
    assert_eq!(&bye, b"bye");
    let err = h.read(&mut [0u8; 1]).await.expect_err("then the abort");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted);
    assert!(h.write_all(b"x").await.is_err());
    assert!(matches!(
        p.client.open().await,
        Err(MuxError::Closed { cause: None })
    ));
}

#[tokio::test]
async fn the_last_client_handle_and_stream_end_the_carrier() {
    let mut p = Pair::new().await;
    let (h, mut g) = p.open().await;
    let clone = p.client.clone();
    drop(p.client);
    drop(clone);
    // A stream keeps the carrier up.
    assert!(!p.guest.is_finished());
    drop(h);
    let mut rest = Vec::new();
    g.read_to_end(&mut rest)
        .await
        .expect("reset reads as the end");
    p.guest
        .await
        .expect("guest task")
        .expect("the guest sees a clean EOF");
    let err = g.read(&mut [0u8; 1]).await;
    assert!(matches!(err, Ok(0)), "the peer had finished: {err:?}");
}
