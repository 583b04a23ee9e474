//! The helper under a flood of connections that runs it out of file
//! descriptors: its accept fails for a while, and it must go on serving
//! once the flood is gone (it used to return from `serve`, and the helper
//! ended). A test binary of its own: it lowers this process's descriptor
//! limit, which no other test may share.

use std::sync::Arc;
use std::time::Duration;

use banger_host::firewall::{Firewall, GuardPolicy, Nft};
use banger_host::helper::{HelperClient, HelperServer, Policy};
use banger_host::layout::VmLayout;
use banger_host::net::Netlink;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::net::{UnixListener, UnixStream};

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_out_of_descriptors_goes_on_serving_once_they_are_free() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("helper.sock");
    let server = Arc::new(HelperServer {
        policy: Policy {
            bridge: "banger0".into(),
            bridge_ip: std::net::Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            layout: VmLayout::new(dir.path().join("state"), dir.path().join("run")),
            daemon_uid: nix::unistd::geteuid().as_raw(),
            daemon_gid: nix::unistd::getegid().as_raw(),
            uplink: None,
        },
        // Neither is reached: the request below reads /proc/net/route.
        net: Arc::new(Netlink),
        firewall: Arc::new(Nft::new(
            "nft",
            dir.path().join("marker"),
            GuardPolicy::default(),
        )),
        jail: None,
    });
    let served = tokio::spawn(server.serve(UnixListener::bind(&sock).expect("bind")));
    let client = HelperClient {
        socket: sock.clone(),
    };
    client
        .default_uplink()
        .await
        .expect("answered before the flood");

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() + 64, hard).expect("setrlimit");
    let mut flood = Vec::new();
    for _ in 0..500 {
        match tokio::time::timeout(Duration::from_millis(500), UnixStream::connect(&sock)).await {
            Ok(Ok(s)) => flood.push(s),
            _ => break,
        }
    }
    assert!(flood.len() < 500, "the limit was never reached");
    // The helper's accept has met EMFILE by now (its side of each
    // connection counts against the same limit).
    drop(flood);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("setrlimit");
    assert!(!served.is_finished(), "serve returned under the flood");
    let mut answered = false;
    for _ in 0..50 {
        if client.default_uplink().await.is_ok() {
            answered = true;
            break;
        }
        // The helper retries its accept after a pause of its own.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered,
        "the helper answers again once descriptors are free"
    );
}
