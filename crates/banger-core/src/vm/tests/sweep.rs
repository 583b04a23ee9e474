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
    // A tap of banger's shape on another bridge: another daemon's, with
    // its NAT rule in the shared table.
    const ELSEWHERE: &str = "bg-fedcba987654";
    f.net.links.lock().expect("lock").insert(ELSEWHERE.into());
    f.net
        .masters
        .lock()
        .expect("lock")
        .insert(ELSEWHERE.into(), "banger1".into());
    f.firewall.rules.lock().expect("lock").extend([
        rule(ORPHAN_TAP),
        rule(&kept_tap),
        rule(ELSEWHERE),
    ]);
    // A guard whose VM is gone (a daemon killed mid-cleanup); the kept
    // VM's guard stays.
    let guard = |tap: &str| banger_host::firewall::Guard {
        tap: tap.into(),
        mac: "02:b6:00:00:00:01".into(),
        guest_ip: std::net::Ipv4Addr::new(10, 99, 0, 9),
        bridge: "banger0".into(),
        bridge_ip: std::net::Ipv4Addr::new(10, 99, 0, 1),
    };
    f.firewall
        .guards
        .lock()
        .expect("lock")
        .extend([guard("bg-00000000cafe"), guard(&kept_tap)]);
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
    assert_eq!(swept.rule_taps, ["bg-00000000cafe", ORPHAN_TAP]);
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
    for link in [
        kept_tap.as_str(),
        "bg-weird",
        "eth9",
        "fg-0123456789ab",
        ELSEWHERE,
    ] {
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
    assert_eq!(rules, [kept_tap.clone(), ELSEWHERE.to_owned()]);
    assert!(
        !f.firewall.guarded("bg-00000000cafe"),
        "an orphan's guard goes"
    );
    assert!(f.firewall.guarded(&kept_tap), "a recorded vm's guard stays");
    assert!(foreign.exists());
    assert!(kept_dir.join("root.ext4").exists() || kept_dir.exists());
    assert!(f.core.vm_alive(&kept), "the recorded vm runs on");

    // A second sweep finds nothing left.
    let again = f.core.sweep_orphans().await.expect("sweep");
    assert_eq!(again, crate::sweep::Swept::default());
}

#[tokio::test]
async fn jails_and_processes_that_name_unknown_ids_or_build_dirs_are_swept_and_the_rest_stay() {
    let f = fixture();
    let kept = create_and_start(&f, "kept").await;
    let state = f.core.config().state_dir.clone();
    let run = f.core.config().runtime_dir.clone();
    // A jail base with an orphan's jail and the kept VM's.
    let jails = f._dir.path().join("jails");
    for id in [ORPHAN_ID, kept.id.as_str()] {
        std::fs::create_dir_all(jails.join(id)).expect("jail");
    }
    *f.vmm.jail_base.lock().expect("lock") = Some(jails.clone());
    // A VMM whose files are gone but which still names the orphan's id,
    // a copy writing a partial disk of the kept VM, a debootstrap in a
    // build dir, the kept VM's own VMM, and strangers.
    let other_id = "fedcba9876543210";
    let kept_dir = kept.runtime.vm_dir.clone().expect("dir");
    let partial = kept_dir.join("root.ext4.partial");
    std::fs::write(&partial, b"half").expect("partial");
    let build = state.join("tmp").join("image-build-x");
    std::fs::create_dir_all(&build).expect("build");
    let p = |path: &Path| path.display().to_string();
    f.procs.add(
        101,
        &format!(
            "qemu-system-x86_64 -qmp unix:{}/vms/{other_id}.sock",
            p(&run)
        ),
        None,
    );
    f.procs.add(
        102,
        &format!("cp --sparse=always base {}", p(&partial)),
        None,
    );
    f.procs
        .add(103, "debootstrap bookworm root", Some(&build.join("root")));
    f.procs.add(
        104,
        &format!("qemu-system-x86_64 -drive file={}/root.ext4", p(&kept_dir)),
        None,
    );
    f.procs
        .add(105, &format!("vim {}/notes", p(&state)), Some(&state));
    f.procs.add(106, "sleep 600", Some(Path::new("/tmp")));
    // Someone reading an orphan's console log: not a process of banger's.
    f.procs.add(
        107,
        &format!("less {}/vms/{ORPHAN_ID}/console.log", p(&state)),
        None,
    );

    let swept = f.core.sweep_orphans().await.expect("sweep");

    let mut killed = f.procs.killed();
    killed.sort_unstable();
    assert_eq!(killed, [101, 102, 103], "{swept:?}");
    let mut alive = f.procs.alive();
    alive.sort_unstable();
    assert_eq!(alive, [104, 105, 106, 107]);
    assert!(!partial.exists() && !build.exists());
    let released: Vec<String> = f
        .vmm
        .recorded()
        .into_iter()
        .filter(|c| c.starts_with("release "))
        .collect();
    for id in [ORPHAN_ID, other_id] {
        assert!(
            released.iter().any(|c| c.contains(id)),
            "{id}: {released:?}"
        );
    }
    assert!(
        !released.iter().any(|c| c.contains(kept.id.as_str())),
        "the kept vm's jail was released: {released:?}"
    );
    assert!(f.core.vm_alive(&kept));
}
