use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::*;
use crate::firewall::{FakeFirewall, Firewall, FirewallError, NatRule};
use crate::jail::JailStage;
use crate::jail::{FakeJail, JailCall};
use crate::layout::VmLayout;
use crate::net::FakeNet;
use crate::net::NetOps;

const VM: &str = "0123456789abcdef";
const TAP: &str = "bg-0123456789ab";

fn server(dir: &Path) -> (Arc<HelperServer>, Arc<FakeNet>, Arc<FakeFirewall>) {
    let (s, net, fw, _) = server_with_jail(dir);
    (s, net, fw)
}

fn server_with_jail(
    dir: &Path,
) -> (
    Arc<HelperServer>,
    Arc<FakeNet>,
    Arc<FakeFirewall>,
    Arc<FakeJail>,
) {
    std::fs::create_dir_all(dir.join("vms").join(VM)).expect("vm dir");
    let net = Arc::new(FakeNet::default());
    let fw = Arc::new(FakeFirewall::with_uplink("eth0"));
    let jail = Arc::new(FakeJail::with_pid(4242));
    let s = HelperServer {
        policy: Policy {
            bridge: "banger0".into(),
            bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            layout: VmLayout::new(dir, dir.join("run")),
            daemon_uid: 1000,
            daemon_gid: 1000,
            uplink: Some("eth0".into()),
        },
        net: net.clone(),
        firewall: fw.clone(),
        jail: Some(jail.clone()),
    };
    (Arc::new(s), net, fw, jail)
}

fn refused(r: &HelperResponse, needle: &str) {
    match r {
        HelperResponse::Error(e) => assert!(e.message.contains(needle), "{e}"),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_inputs_are_refused_before_anything_happens() {
    let dir = tempfile::tempdir().expect("tmp");
    let (s, net, fw) = server(dir.path());
    let tap = |name: &str| HelperRequest::CreateTap {
        name: name.into(),
        bridge: "banger0".into(),
        owner: None,
    };
    // Names with / or .., other shapes, foreign vm ids.
    refused(&s.handle(tap("bg-../../etc")).await, "not a banger tap");
    refused(&s.handle(tap("bg-0123/56789a")).await, "not a banger tap");
    refused(&s.handle(tap("eth0")).await, "not a banger tap");
    refused(&s.handle(tap("bg-ffffffffffff")).await, "foreign id");
    refused(
        &s.handle(HelperRequest::DeleteLink {
            name: "eth0".into(),
        })
        .await,
        "not a banger tap",
    );
    refused(
        &s.handle(HelperRequest::DeleteLink { name: "..".into() })
            .await,
        "not an interface name",
    );
    // The configured bridge and address only.
    refused(
        &s.handle(HelperRequest::EnsureBridge {
            name: "docker0".into(),
            ip: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
        })
        .await,
        "not banger's",
    );
    refused(
        &s.handle(HelperRequest::EnsureBridge {
            name: "banger0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 8,
        })
        .await,
        "not the configured",
    );
    // A tap for someone else's uid.
    refused(
        &s.handle(HelperRequest::CreateTap {
            name: TAP.into(),
            bridge: "banger0".into(),
            owner: Some((0, 0)),
        })
        .await,
        "daemon's uid 1000 only",
    );
    // The daemon's uid with someone else's group.
    refused(
        &s.handle(HelperRequest::CreateTap {
            name: TAP.into(),
            bridge: "banger0".into(),
            owner: Some((1000, 0)),
        })
        .await,
        "daemon's group 1000 only",
    );
    // NAT outside the subnet, or through a path-like uplink.
    let nat = |ip: [u8; 4], uplink: &str| HelperRequest::AddNat {
        tap: TAP.into(),
        guest_ip: Ipv4Addr::from(ip),
        bridge: "banger0".into(),
        uplink: uplink.into(),
    };
    refused(
        &s.handle(nat([8, 8, 8, 8], "eth0")).await,
        "not a guest address",
    );
    refused(
        &s.handle(nat([172, 16, 0, 1], "eth0")).await,
        "not a guest address",
    );
    refused(
        &s.handle(nat([172, 16, 0, 2], "../eth0")).await,
        "not an interface name",
    );
    // A well-formed name that is not the configured uplink.
    refused(
        &s.handle(nat([172, 16, 0, 2], "wg0")).await,
        "not the configured or default-route interface",
    );
    // A guard for a multicast or malformed MAC, another bridge address,
    // a foreign tap.
    let guard = |mac: &str, bridge_ip: [u8; 4], tap: &str| {
        HelperRequest::AddGuard(crate::firewall::Guard {
            tap: tap.into(),
            mac: mac.into(),
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            bridge: "banger0".into(),
            bridge_ip: Ipv4Addr::from(bridge_ip),
        })
    };
    refused(
        &s.handle(guard("03:b6:01:23:45:67", [172, 16, 0, 1], TAP))
            .await,
        "not a unicast",
    );
    refused(
        &s.handle(guard("02:b6:01:23:45", [172, 16, 0, 1], TAP))
            .await,
        "not a MAC address",
    );
    refused(
        &s.handle(guard("02:b6:01:23:45:zz", [172, 16, 0, 1], TAP))
            .await,
        "not a MAC address",
    );
    refused(
        &s.handle(guard("02:b6:01:23:45:67", [10, 0, 0, 1], TAP))
            .await,
        "not the configured",
    );
    refused(
        &s.handle(guard(
            "02:b6:01:23:45:67",
            [172, 16, 0, 1],
            "bg-ffffffffffff",
        ))
        .await,
        "foreign id",
    );
    assert!(net.recorded().is_empty(), "{:?}", net.recorded());
    assert!(fw.recorded().is_empty(), "{:?}", fw.recorded());

    // And what is inside the policy goes through.
    assert_eq!(
        s.handle(guard("02:b6:01:23:45:67", [172, 16, 0, 1], TAP))
            .await,
        HelperResponse::Ok(Reply::Done)
    );
    assert!(fw.guarded(TAP));
    assert_eq!(s.handle(tap(TAP)).await, HelperResponse::Ok(Reply::Done));
    assert_eq!(
        s.handle(nat([172, 16, 0, 2], "eth0")).await,
        HelperResponse::Ok(Reply::Done)
    );
    assert!(net.has(TAP) && fw.has(TAP));
}

#[tokio::test]
async fn the_client_drives_the_server_over_a_socket_and_malformed_lines_are_answered() {
    let dir = tempfile::tempdir().expect("tmp");
    let (sock, c, net, fw) = serving(dir.path());
    c.ensure_bridge("banger0", Ipv4Addr::new(172, 16, 0, 1), 24)
        .await
        .expect("bridge");
    c.create_tap(TAP, "banger0", None).await.expect("tap");
    assert!(net.has(TAP));
    c.add_nat(&NatRule {
        tap: TAP.into(),
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        bridge: "banger0".into(),
        uplink: "eth0".into(),
    })
    .await
    .expect("nat");
    assert_eq!(c.tagged_taps().await.expect("taps"), [TAP]);
    assert_eq!(
        c.default_uplink().await.expect("uplink").as_deref(),
        Some("eth0")
    );
    let err = c
        .create_tap("bg-ffffffffffff", "banger0", None)
        .await
        .expect_err("foreign");
    assert!(err.to_string().contains("foreign id"), "{err}");
    c.remove_nat(TAP).await.expect("remove");
    c.delete_link(TAP).await.expect("delete");
    assert!(!net.has(TAP) && !fw.has(TAP));

    // A line that is not a request gets an answer, not a hang.
    let mut raw = UnixStream::connect(&sock).await.expect("connect");
    raw.write_all(b"{\"op\":\"format_disk\",\"path\":\"/dev/sda\"}\n")
        .await
        .expect("write");
    let mut reply = String::new();
    BufReader::new(raw)
        .read_line(&mut reply)
        .await
        .expect("read");
    assert!(reply.contains("malformed request"), "{reply}");
}

#[tokio::test]
async fn jail_requests_outside_the_state_dir_or_for_foreign_ids_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (s, _, _, jail) = server_with_jail(dir.path());
    let state = dir.path();
    let vm = state.join("vms").join(VM);
    let good = JailStage {
        vm_id: VM.into(),
        kernel: state.join("kernels/k1/vmlinux"),
        initrd: Some(state.join("kernels/k1/initrd.img")),
        disks: vec![vm.join("root.ext4"), vm.join("work.ext4")],
    };
    let stage = |f: &dyn Fn(&mut JailStage)| {
        let mut j = good.clone();
        f(&mut j);
        HelperRequest::StageJail(j)
    };
    for (req, needle) in [
        (stage(&|j| j.kernel = "/boot/vmlinuz".into()), "outside"),
        (
            stage(&|j| j.kernel = state.join("../../etc/shadow")),
            "outside",
        ),
        (stage(&|j| j.initrd = Some("/etc/shadow".into())), "outside"),
        (stage(&|j| j.initrd = Some("initrd.img".into())), "outside"),
        // Another VM's disk, or the shared image, is not this VM's.
        (
            stage(&|j| j.disks = vec![state.join("vms/ffffffffffffffff/root.ext4")]),
            "outside",
        ),
        (
            stage(&|j| j.disks = vec![state.join("images/default/rootfs.ext4")]),
            "outside",
        ),
        (
            stage(&|j| j.disks = vec![vm.join("../ffffffffffffffff/root.ext4")]),
            "outside",
        ),
        (stage(&|j| j.disks = vec![]), "at least a root disk"),
        (
            stage(&|j| j.vm_id = "../../etc".into()),
            "not a banger vm id",
        ),
        (
            stage(&|j| j.vm_id = "0123/56789abcdef".into()),
            "not a banger vm id",
        ),
        (
            stage(&|j| j.vm_id = "ffffffffffffffff".into()),
            "foreign id",
        ),
        (
            HelperRequest::SpawnJail {
                vm_id: "ffffffffffffffff".into(),
                console: state.join("vms/ffffffffffffffff/console.log"),
            },
            "foreign id",
        ),
        (
            HelperRequest::SpawnJail {
                vm_id: VM.into(),
                console: "/etc/motd".into(),
            },
            "is not",
        ),
        (
            HelperRequest::ReleaseJail {
                vm_id: "..".into(),
                jail_dir: None,
            },
            "not a banger vm id",
        ),
    ] {
        refused(&s.handle(req).await, needle);
    }
    assert!(jail.recorded().is_empty(), "{:?}", jail.recorded());

    // Inside the policy: forwarded as asked.
    assert!(matches!(
        s.handle(HelperRequest::StageJail(good.clone())).await,
        HelperResponse::Ok(_)
    ));
    assert_eq!(
        s.handle(HelperRequest::SpawnJail {
            vm_id: VM.into(),
            console: vm.join("console.log"),
        })
        .await,
        HelperResponse::Ok(Reply::Pid(4242))
    );
    assert_eq!(
        jail.recorded(),
        [
            JailCall::Stage(good),
            JailCall::Spawn {
                vm_id: VM.into(),
                console: vm.join("console.log")
            }
        ]
    );
}

#[tokio::test]
async fn a_helper_without_a_jail_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let (s, net, fw) = server(dir.path());
    let s = HelperServer {
        policy: s.policy.clone(),
        net,
        firewall: fw,
        jail: None,
    };
    refused(
        &s.handle(HelperRequest::ReleaseJail {
            vm_id: VM.into(),
            jail_dir: None,
        })
        .await,
        "does not jail",
    );
}

/// Answers every line of one connection with `answer`.
async fn scripted_helper(sock: &Path, answer: &'static str) {
    let listener = UnixListener::bind(sock).expect("bind");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                let _ = w.write_all(answer.as_bytes()).await;
            }
        }
    });
}

#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_an_error_never_an_empty_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let wrong = dir.path().join("wrong.sock");
    scripted_helper(&wrong, "{\"ok\":\"done\"}\n").await;
    let c = HelperClient { socket: wrong };
    let err = c.tagged_taps().await.expect_err("done is no tap list");
    assert!(
        matches!(
            err,
            FirewallError::Helper(HelperError::Unexpected {
                op: "tagged_taps",
                got: "done",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(c.list_links().await.is_err());

    let garbage = dir.path().join("garbage.sock");
    scripted_helper(&garbage, "{\"ok\":{\"tagged_taps\":\"bg-0123456789ab\"}}\n").await;
    let c = HelperClient { socket: garbage };
    let err = c.tagged_taps().await.expect_err("a string is no list");
    assert!(
        matches!(err, FirewallError::Helper(HelperError::Decode { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn failures_travel_with_their_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("h.sock");
    scripted_helper(
        &sock,
        "{\"error\":{\"code\":\"no_uplink\",\"message\":\"no default route\"}}\n",
    )
    .await;
    let c = HelperClient { socket: sock };
    assert!(matches!(
        c.default_uplink().await,
        Err(FirewallError::NoUplink)
    ));
    let err = c.delete_link(TAP).await.expect_err("failed");
    match err {
        crate::net::NetError::Helper { source, .. } => {
            assert_eq!(source.code(), Some(FailureCode::NoUplink));
        }
        other => panic!("{other:?}"),
    }

    let (s, _, _) = server(dir.path());
    match s
        .handle(HelperRequest::DeleteLink {
            name: "eth0".into(),
        })
        .await
    {
        HelperResponse::Error(f) => assert_eq!(f.code, FailureCode::Refused),
        other => panic!("{other:?}"),
    }
}

#[test]
fn answers_have_one_stable_shape_on_the_wire() {
    let line = |r: &HelperResponse| serde_json::to_string(r).expect("json");
    assert_eq!(line(&HelperResponse::Ok(Reply::Done)), r#"{"ok":"done"}"#);
    assert_eq!(
        line(&HelperResponse::Ok(Reply::TaggedTaps(vec![TAP.into()]))),
        r#"{"ok":{"tagged_taps":["bg-0123456789ab"]}}"#
    );
    assert_eq!(
        line(&HelperResponse::Ok(Reply::Uplink(None))),
        r#"{"ok":{"uplink":null}}"#
    );
    assert_eq!(
        line(&HelperResponse::Ok(Reply::Pid(4242))),
        r#"{"ok":{"pid":4242}}"#
    );
    assert_eq!(
        line(&HelperResponse::failed(FailureCode::NotJailing, "no")),
        r#"{"error":{"code":"not_jailing","message":"no"}}"#
    );
    // A code this side does not know is a decoding error, not a default.
    assert!(
        serde_json::from_str::<HelperResponse>(r#"{"error":{"code":"new","message":"x"}}"#)
            .is_err()
    );
}

/// A helper serving our own uid (made the daemon's) over a socket in
/// `dir`, with its fakes.
fn serving(
    dir: &Path,
) -> (
    std::path::PathBuf,
    HelperClient,
    Arc<FakeNet>,
    Arc<FakeFirewall>,
) {
    let (s, net, fw) = server(dir);
    let sock = dir.join("helper.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let mut policy = s.policy.clone();
    policy.daemon_uid = nix::unistd::geteuid().as_raw();
    let s = Arc::new(HelperServer {
        policy,
        net: s.net.clone(),
        firewall: s.firewall.clone(),
        jail: s.jail.clone(),
    });
    tokio::spawn(s.serve(listener));
    let c = HelperClient {
        socket: sock.clone(),
    };
    (sock, c, net, fw)
}

/// Idle connections by the thousand, half-sent lines and a line without
/// end do not keep the helper from answering the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_and_endless_lines_leave_the_helper_answering() {
    // Both ends of every connection live in this process.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    if hard < 4500 {
        eprintln!("SKIPPED idle-connection test: RLIMIT_NOFILE hard limit {hard} < 4500");
        return;
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("setrlimit");
    let dir = tempfile::tempdir().expect("tmp");
    let (sock, c, _, _) = serving(dir.path());
    let mut idle = Vec::new();
    for i in 0..2000 {
        let mut s = UnixStream::connect(&sock).await.expect("connect");
        if i % 2 == 0 {
            // Half a request, never finished.
            s.write_all(b"{\"op\":\"list_li").await.expect("write");
        }
        idle.push(s);
    }
    assert_eq!(
        c.tagged_taps()
            .await
            .expect("answered past 2000 idle connections"),
        Vec::<String>::new()
    );
    // A line longer than any request is cut off with an answer.
    let mut endless = UnixStream::connect(&sock).await.expect("connect");
    let junk = vec![b'x'; 1 << 20];
    // The helper stops reading at its bound: the write may not finish.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), endless.write_all(&junk)).await;
    let mut reply = String::new();
    BufReader::new(endless)
        .read_line(&mut reply)
        .await
        .expect("read");
    assert!(reply.contains("longer than"), "{reply}");
    assert!(c.tagged_taps().await.is_ok(), "still answering");
    drop(idle);
}
