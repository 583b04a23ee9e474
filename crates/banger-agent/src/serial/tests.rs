//! The port logic over descriptors with the same shape: a FIFO (reads
//! 0 and polls HUP while no writer is there, a new writer wakes it) and a
//! socket pair (writes that wait for the peer to read).

use std::io::{Read, Write};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn the_port_is_found_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let class = dir.path().join("virtio-ports");
    for (port, name) in [
        ("vport0p1", "org.qemu.guest_agent.0\n"),
        ("vport0p2", "org.banger.agent\n"),
    ] {
        std::fs::create_dir_all(class.join(port)).expect("mkdir");
        std::fs::write(class.join(port).join("name"), name).expect("name");
    }
    std::fs::create_dir_all(class.join("vport0p3")).expect("a port without a name");
    let dev = Path::new("/dev");
    assert_eq!(
        find_port_in(&class, dev, "org.banger.agent"),
        Some(PathBuf::from("/dev/vport0p2"))
    );
    assert_eq!(
        find_port_in(&class, dev, "org.banger"),
        None,
        "whole names only"
    );
    assert_eq!(
        find_port_in(&dir.path().join("none"), dev, "org.banger.agent"),
        None
    );
}

#[tokio::test]
async fn epochs_end_when_the_host_leaves_and_the_next_waits_for_a_wake() {
    let dir = tempfile::tempdir().expect("tmp");
    let fifo = dir.path().join("port");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let rd =
        rustix::fs::open(&fifo, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()).expect("open");
    let port = Port::from_fd(rd).expect("port");
    let mut host = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("writer");

    port.wait_for_host().await.expect("a host is there");
    let mut epoch = port.epoch();
    host.write_all(b"one").expect("write");
    let mut got = [0u8; 3];
    epoch.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"one");
    drop(host);
    assert_eq!(
        epoch.read(&mut [0u8; 8]).await.expect("eof"),
        0,
        "the host left"
    );

    // No host: the wait neither returns nor spins.
    let before = port.edges_seen();
    let waited = tokio::time::timeout(Duration::from_millis(200), port.wait_for_host()).await;
    assert!(waited.is_err(), "returned without a host");
    assert!(
        port.edges_seen() - before <= 2,
        "{} wakes while nothing happened",
        port.edges_seen() - before
    );

    let mut host = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("writer");
    host.write_all(b"two").expect("write");
    port.wait_for_host().await.expect("the next host");
    let mut epoch = port.epoch();
    epoch.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"two");
}

#[tokio::test]
async fn writes_wait_for_room_and_reads_for_data() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let port = Port::from_fd(OwnedFd::from(ours)).expect("port");
    let mut epoch = port.epoch();
    const TOTAL: usize = 4 << 20;
    let peer = tokio::task::spawn_blocking(move || {
        let mut theirs = theirs;
        let mut got = vec![0u8; TOTAL];
        theirs.read_exact(&mut got).expect("peer read");
        theirs.write_all(b"done").expect("peer write");
        got
    });
    let sent: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    epoch
        .write_all(&sent)
        .await
        .expect("write past the socket buffer");
    let mut done = Vec::new();
    epoch
        .read_to_end(&mut done)
        .await
        .expect("read to the peer's close");
    assert_eq!(done, b"done");
    assert!(peer.await.expect("peer") == sent);
}
