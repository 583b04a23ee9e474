//! The start-up sweep against recording fakes: exactly banger's orphans
//! go, and what has a record or is someone else's stays.

use std::net::Ipv4Addr;
use std::path::Path;

use banger_host::firewall::NatRule;

use super::lifecycle::{create_and_start, fixture, tap_name};
use banger_vmm::Vmm;

const ORPHAN_ID: &str = "0123456789abcdef";
const ORPHAN_TAP: &str = "bg-0123456789ab";

fn rule(tap: &str) -> NatRule {
    NatRule {
        tap: tap.to_owned(),
        guest_ip: Ipv4Addr::new(10, 99, 0, 9),
        bridge: "banger0".into(),
        uplink: "eth0".into(),
    }
}

#[tokio::test]
async fn the_sweep_removes_exactly_what_banger_made_and_no_record_claims() {
    let f = fixture();
    let kept = create_and_start(&f, "kept").await;
    let kept_tap = tap_name(&kept.id);
    let state = f.core.config().state_dir.clone();
    let run = f.core.config().runtime_dir.clone();

    // Orphans of every kind a crash leaves.
    for link in [ORPHAN_TAP, "bg-weird", "eth9", "fg-0123456789ab"] {
        f.net.links.lock().expect("lock").insert(link.into());
    }
    f.firewall
        .rules
        .lock()
        .expect("lock")
        .extend([rule(ORPHAN_TAP), rule(&kept_tap)]);
    let orphan_dir = state.join("vms").join(ORPHAN_ID);
    std::fs::create_dir_all(&orphan_dir).expect("orphan dir");
    std::fs::write(orphan_dir.join("root.ext4"), b"disk").expect("disk");
    let orphan_sock = run.join("vms").join(format!("{ORPHAN_ID}.sock"));
    std::fs::write(&orphan_sock, b"").expect("socket");
    f.vmm
        .running
        .lock()
        .expect("lock")
        .insert(4242, orphan_sock.clone());
    let build = state.join("tmp").join("image-build-x");
    std::fs::create_dir_all(&build).expect("build dir");
    std::fs::write(build.join("rootfs.ext4"), b"half").expect("half");
    let kept_dir = kept.runtime.vm_dir.clone().expect("dir");
    let partial = kept_dir.join("work.ext4.partial");
    std::fs::write(&partial, b"half a copy").expect("partial");
    let orphan_content = f.core.config().kernels_dir().join("ab".repeat(32));
    std::fs::create_dir_all(&orphan_content).expect("content dir");
    let not_content = f.core.config().kernels_dir().join("notes");
    std::fs::create_dir_all(&not_content).expect("other dir");
    // Someone else's file beside banger's sockets.
    let foreign = run.join("vms").join("notes.txt");
    std::fs::write(&foreign, b"mine").expect("foreign");

    let swept = f.core.sweep_orphans().await.expect("sweep");

    assert_eq!(swept.taps, [ORPHAN_TAP]);
    assert_eq!(swept.nat_rules, [ORPHAN_TAP]);
    assert_eq!(swept.vmm_processes, [4242]);
    assert_eq!(swept.vm_dirs, std::slice::from_ref(&orphan_dir));
    assert_eq!(swept.sockets, std::slice::from_ref(&orphan_sock));
    assert_eq!(swept.build_dirs, std::slice::from_ref(&build));
    assert_eq!(swept.partial_disks, std::slice::from_ref(&partial));
    assert_eq!(swept.asset_dirs, std::slice::from_ref(&orphan_content));
    assert!(
        not_content.exists(),
        "not named like content: not banger's to remove"
    );
    for gone in [&orphan_dir, &orphan_sock, &build, &partial, &orphan_content] {
        assert!(!gone.exists(), "{} is still there", gone.display());
    }
    assert!(
        f.vmm.find(Path::new(&orphan_sock)).is_none(),
        "its vmm was killed"
    );
    // What has a record, or is not banger's, stays.
    for link in [kept_tap.as_str(), "bg-weird", "eth9", "fg-0123456789ab"] {
        assert!(f.net.has(link), "{link} was removed");
    }
    let rules: Vec<String> = f
        .firewall
        .rules
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.tap.clone())
        .collect();
    assert_eq!(rules, std::slice::from_ref(&kept_tap));
    assert!(foreign.exists());
    assert!(kept_dir.join("root.ext4").exists() || kept_dir.exists());
    assert!(f.core.vm_alive(&kept), "the recorded vm runs on");

    // A second sweep finds nothing left.
    let again = f.core.sweep_orphans().await.expect("sweep");
    assert_eq!(again, crate::sweep::Swept::default());
}
