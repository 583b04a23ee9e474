use std::os::unix::fs::MetadataExt;

use banger_api::doctor::Accel;

use super::*;
use crate::NetSpec;
use crate::firecracker::models::DriveConfig;

fn spec(net: bool) -> LaunchSpec {
    LaunchSpec {
        vm_id: "89abcdef01234567".into(),
        vcpus: 1,
        memory_mib: 128,
        kernel: "/k/vmlinux".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        disks: vec!["/v/b/root.ext4".into(), "/v/b/work.ext4".into()],
        net: net.then(|| NetSpec {
            tap: "bg-89abcdef0123".into(),
            mac: crate::mac_for("89abcdef01234567"),
            fd: None,
        }),
        console_log: "/v/b/console.log".into(),
        control_socket: "/run/banger/vms/89abcdef01234567.sock".into(),
        pid_file: "/v/b/fc.pid".into(),
        accel: Accel::Kvm,
        vsock: Some("/run/banger/vms/89abcdef01234567.vsock".into()),
        agent_serial: None,
    }
}

fn unjailed_paths(spec: &LaunchSpec) -> FcPaths {
    FirecrackerVmm {
        bin: "/bin/firecracker".into(),
        jail: None,
    }
    .paths(spec)
}

#[test]
fn a_restore_overrides_the_tap_and_the_vsock_with_the_new_vms() {
    let s = spec(true);
    let body = load_body(&s, &unjailed_paths(&s), Files::in_dir(Path::new("/snap")));
    assert_eq!(
        serde_json::to_value(&body).expect("encode"),
        serde_json::json!({
            "snapshot_path": "/snap/vmstate",
            "mem_backend": { "backend_type": "File", "backend_path": "/snap/memory" },
            "resume_vm": true,
            "network_overrides": [{ "iface_id": "eth0", "host_dev_name": "bg-89abcdef0123" }],
            "vsock_override": { "uds_path": "/run/banger/vms/89abcdef01234567.vsock" },
        })
    );
}

#[test]
fn a_jailed_restore_loads_from_its_chroot_and_names_the_jails_vsock() {
    let s = spec(false);
    let p = FcPaths {
        vsock: Some(crate::jail::VSOCK.into()),
        ..unjailed_paths(&s)
    };
    let body = load_body(&s, &p, JAIL_RESTORE.paths());
    assert_eq!(
        serde_json::to_value(&body).expect("encode"),
        serde_json::json!({
            "snapshot_path": "/run/restored.vmstate",
            "mem_backend": { "backend_type": "File", "backend_path": "/run/restored.memory" },
            "resume_vm": true,
            "vsock_override": { "uds_path": "/v.sock" },
        })
    );
    assert_ne!(
        JAIL_RESTORE.paths(),
        JAIL_SAVE.paths(),
        "a save never writes into the file a restored VM maps"
    );
}

#[test]
fn unjailed_drives_are_relative_names_so_a_snapshot_is_not_pinned_to_its_vm() {
    let s = spec(false);
    let p = unjailed_paths(&s);
    assert_eq!(p.drives, vec![PathBuf::from("drive0"), "drive1".into()]);
    let config = |paths: &[Option<&str>]| VmConfig {
        drives: paths
            .iter()
            .enumerate()
            .map(|(i, p)| DriveConfig {
                drive_id: format!("d{i}"),
                path_on_host: p.map(PathBuf::from),
            })
            .collect(),
    };
    assert_eq!(
        pinned_drive(&config(&[Some("drive0"), Some("drive1")])),
        None
    );
    assert_eq!(pinned_drive(&config(&[None])), None, "vhost-user: no path");
    assert_eq!(
        pinned_drive(&config(&[Some("drive0"), Some("/v/a/work.ext4")])),
        Some(("d1", Path::new("/v/a/work.ext4")))
    );
}

#[test]
fn a_jailed_vm_is_named_by_its_control_sockets_stem() {
    assert_eq!(
        jailed_vm_id(Path::new("/run/banger/vms/89abcdef01234567.sock")).expect("id"),
        "89abcdef01234567"
    );
    assert!(matches!(
        jailed_vm_id(Path::new("/")),
        Err(VmmError::Snapshot { .. })
    ));
}

#[test]
fn files_the_jail_wrote_arrive_only_as_regular_files() {
    let jail = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let written = jail.path().join("snapshot.vmstate");
    std::fs::write(&written, b"state").expect("write");
    let to = out.path().join(STATE_FILE);
    move_out(&written, &to).expect("moved");
    assert_eq!(std::fs::read(&to).expect("read"), b"state");
    assert!(!written.exists(), "moved, not copied");

    let secret = out.path().join("secret");
    std::fs::write(&secret, b"host file").expect("write");
    let planted = jail.path().join("snapshot.memory");
    std::os::unix::fs::symlink(&secret, &planted).expect("symlink");
    let to = out.path().join(MEMORY_FILE);
    move_out(&planted, &to).expect_err("a symlink is refused");
    assert!(!to.exists(), "nothing left where the snapshot goes");
    copy_regular(&planted, &to).expect_err("the copy does not follow it either");
    assert!(!to.exists());

    let regular = jail.path().join("mem");
    std::fs::write(&regular, b"pages").expect("write");
    copy_regular(&regular, &to).expect("copied");
    assert_eq!(std::fs::read(&to).expect("read"), b"pages");
    assert!(!regular.exists());
}

#[test]
fn a_restore_links_the_saved_files_into_the_chroot() {
    let saved = tempfile::tempdir().expect("tempdir");
    let chroot = tempfile::tempdir().expect("tempdir");
    let from = saved.path().join(MEMORY_FILE);
    std::fs::write(&from, b"pages").expect("write");
    let to = chroot.path().join("restored.memory");
    std::fs::write(&to, b"stale").expect("write");
    link_in(&from, &to).expect("linked");
    assert_eq!(
        std::fs::metadata(&to).expect("linked").ino(),
        std::fs::metadata(&from).expect("saved").ino(),
        "the same inode: no copy of the memory"
    );
}
