use std::path::PathBuf;

use banger_api::snapshot::{SnapshotKind, SnapshotRecord};
use banger_api::vm::VmmKind;

use super::*;

fn inputs() -> TemplateInputs {
    TemplateInputs {
        vmm: VmmKind::Qemu,
        vmm_version: "QEMU emulator version 10.0.2".into(),
        accel: "Tcg".into(),
        vcpus: 2,
        memory_mib: 512,
        root_disk_bytes: 4 << 30,
        work_disk_bytes: 1 << 30,
        kernel: "k1 i1 ".into(),
        image: "d1 w1 systemd".into(),
        agent_sha256: "a1".into(),
        network: "172.16.0.1/24".into(),
        authorized_key: "ssh-ed25519 AAAA banger".into(),
    }
}

type Change = Box<dyn Fn(&mut TemplateInputs)>;

#[test]
fn the_key_is_a_name_and_changes_with_every_input() {
    let base = inputs();
    let key = base.key();
    assert!(key.starts_with("tpl-") && key.len() == 20, "{key}");
    banger_api::name::validate_name(&key).expect("a template key is a valid snapshot name");
    assert_eq!(inputs().key(), key, "the same inputs, the same key");
    let changes: Vec<(&str, Change)> = vec![
        ("vmm", Box::new(|i| i.vmm = VmmKind::Firecracker)),
        ("vmm version", Box::new(|i| i.vmm_version.push('1'))),
        ("accel", Box::new(|i| i.accel = "Kvm".into())),
        ("vcpus", Box::new(|i| i.vcpus = 1)),
        ("memory", Box::new(|i| i.memory_mib = 384)),
        ("root disk", Box::new(|i| i.root_disk_bytes += 1)),
        ("work disk", Box::new(|i| i.work_disk_bytes += 1)),
        ("kernel", Box::new(|i| i.kernel = "k2 i1 ".into())),
        ("image", Box::new(|i| i.image = "d2 w1 systemd".into())),
        ("agent", Box::new(|i| i.agent_sha256 = "a2".into())),
        ("network", Box::new(|i| i.network = "10.0.0.1/24".into())),
        ("ssh key", Box::new(|i| i.authorized_key.push('x'))),
    ];
    let mut seen = std::collections::HashSet::from([key.clone()]);
    for (what, change) in changes {
        let mut i = inputs();
        change(&mut i);
        assert!(seen.insert(i.key()), "changing the {what} kept key {key}");
    }
    // Parts do not run into each other.
    let mut a = inputs();
    a.kernel = "ab".into();
    a.image = "c".into();
    let mut b = inputs();
    b.kernel = "a".into();
    b.image = "bc".into();
    assert_ne!(a.key(), b.key());
}

fn record(name: &str, id: &str, kind: SnapshotKind) -> SnapshotRecord {
    let mut r = banger_host::doctor::recorded_snapshot(name, PathBuf::from("/s").join(id));
    r.id = id.into();
    r.kind = kind;
    r
}

#[test]
fn only_templates_whose_key_moved_on_and_that_nothing_restores_are_stale() {
    let keyed = vec![
        // Current: kept.
        (
            record("tpl-aaaa", "1", SnapshotKind::Template),
            Some("tpl-aaaa".to_owned()),
        ),
        // The agent (say) changed: stale.
        (
            record("tpl-bbbb", "2", SnapshotKind::Template),
            Some("tpl-cccc".to_owned()),
        ),
        // Its kernel is gone: stale.
        (record("tpl-dddd", "3", SnapshotKind::Template), None),
        // Stale, but a created VM restores from it: kept for now.
        (
            record("tpl-eeee", "4", SnapshotKind::Template),
            Some("tpl-ffff".to_owned()),
        ),
        // A user's snapshot is never swept, whatever its name.
        (record("tpl-gggg", "5", SnapshotKind::User), None),
    ];
    let gone: Vec<&str> = stale(&keyed, &["4".to_owned()])
        .into_iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(gone, ["tpl-bbbb", "tpl-dddd"]);
}
