use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

const VM: &str = "0123456789abcdef";

fn cfg(base: &Path) -> JailConfig {
    JailConfig {
        jailer: "jailer".into(),
        chroot_base: base.into(),
        uid: 64123,
        gid: 64123,
        cgroup_version: CgroupVersion::V1,
        cgroups: vec!["pids.max=512".into()],
        cgroup_root: "/sys/fs/cgroup".into(),
    }
}

#[test]
fn jailer_arguments_name_the_vm_uid_and_cgroups_and_no_pid_namespace() {
    let c = cfg(Path::new("/var/lib/banger/jail"));
    let args: Vec<String> = c
        .args(Path::new("/usr/local/bin/firecracker"), VM)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let joined = args.join(" ");
    assert_eq!(
        joined,
        "--id 0123456789abcdef --exec-file /usr/local/bin/firecracker --uid 64123 --gid 64123 \
         --chroot-base-dir /var/lib/banger/jail --cgroup-version 1 --cgroup pids.max=512 \
         -- --api-sock /run/api.sock"
    );
    assert!(!joined.contains("--new-pid-ns") && !joined.contains("--daemonize"));
    assert_eq!(
        c.host_path(VM, VSOCK),
        Path::new("/var/lib/banger/jail/firecracker/0123456789abcdef/root/v.sock")
    );
}

#[test]
fn cgroup_v2_is_detected_by_its_controllers() {
    let d = tempfile::tempdir().expect("tmp");
    assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V1);
    std::fs::write(
        d.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V2);
}

fn me() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// A state dir with one VM's disks and a kernel, and a jail config
/// for our own uid (unprivileged runs cannot chown to another).
fn fixture(d: &Path) -> (LocalJail, JailStage) {
    let vm = d.join("state/vms").join(VM);
    std::fs::create_dir_all(&vm).expect("vm dir");
    std::fs::create_dir_all(d.join("state/kernels")).expect("kernels");
    let kernel = d.join("state/kernels/vmlinux");
    std::fs::write(&kernel, b"k").expect("k");
    std::fs::write(vm.join("root.ext4"), b"d").expect("d");
    let mut c = cfg(&d.join("jail"));
    (c.uid, c.gid) = me();
    let jail = LocalJail {
        config: c,
        firecracker: "firecracker".into(),
        confine: None,
    };
    let stage = JailStage {
        vm_id: VM.into(),
        kernel,
        initrd: None,
        disks: vec![vm.join("root.ext4")],
    };
    (jail, stage)
}

#[test]
fn staging_links_files_in_and_removal_takes_the_whole_jail() {
    let d = tempfile::tempdir().expect("tmp");
    let (jail, stage) = fixture(d.path());
    let dir = jail.stage_now(&stage).expect("stage");
    let c = &jail.config;
    assert_eq!(dir, d.path().join("jail/firecracker").join(VM));
    let root = c.root(VM);
    let inner = root.join("drive0");
    assert_eq!(
        std::fs::metadata(&inner).expect("drive").ino(),
        std::fs::metadata(&stage.disks[0]).expect("disk").ino(),
        "hard link, not a copy"
    );
    assert!(root.join("vmlinux").is_file() && root.join("firecracker.log").is_file());
    // A symlink out of the jail is removed, never followed.
    let outside = d.path().join("precious");
    std::fs::write(&outside, b"keep").expect("precious");
    std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
    remove_tree(&dir).expect("remove");
    assert!(!dir.exists());
    assert_eq!(std::fs::read(&outside).expect("kept"), b"keep");
    assert_eq!(std::fs::read(&stage.disks[0]).expect("disk kept"), b"d");
    remove_tree(&dir).expect("idempotent");
}

fn refused(r: Result<PathBuf, JailError>, needle: &str) {
    match r {
        Err(e) => assert!(e.to_string().contains(needle), "{e}"),
        Ok(p) => panic!(
            "expected a refusal mentioning {needle:?}, got {}",
            p.display()
        ),
    }
}

#[test]
fn confined_staging_refuses_paths_outside_the_state_dir_symlinks_and_other_owners() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut jail, stage) = fixture(d.path());
    let state = d.path().join("state");
    jail.confine = Some(Confinement {
        state_dir: state.clone(),
        owner: me().0,
    });
    // The tempdir is ours; our own uid is trusted like root is.
    let ok = jail.stage_now(&stage).expect("inside the state dir");
    assert!(ok.join("root/drive0").is_file());

    let with = |f: &dyn Fn(&mut JailStage)| {
        let mut s = stage.clone();
        f(&mut s);
        jail.stage_now(&s)
    };
    refused(
        with(&|s| s.kernel = PathBuf::from("/etc/shadow")),
        "outside the state dir",
    );
    refused(
        with(&|s| s.kernel = state.join("kernels/../../../etc/shadow")),
        "outside the state dir",
    );
    refused(
        with(&|s| s.kernel = PathBuf::from("kernels/vmlinux")),
        "outside the state dir",
    );
    // A disk of another VM, or the image, is not this VM's.
    refused(
        with(&|s| s.disks = vec![state.join("kernels/vmlinux")]),
        "outside the state dir",
    );
    refused(
        with(&|s| s.vm_id = "../../etc".into()),
        "not a banger vm id",
    );
    // A symlink inside the state dir that points out of it.
    let link = state.join("vms").join(VM).join("evil.ext4");
    std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
    refused(with(&|s| s.disks = vec![link.clone()]), "symlinks refused");
    // A symlinked directory on the way.
    std::os::unix::fs::symlink("/etc", state.join("kernels/etc")).expect("dir link");
    refused(
        with(&|s| s.kernel = state.join("kernels/etc/passwd")),
        "symlinks refused",
    );
    // Not a regular file.
    refused(
        with(&|s| s.kernel = state.join("kernels")),
        "not a regular file",
    );
    // Refused requests changed nothing: the staged jail is intact.
    assert_eq!(
        std::fs::metadata(ok.join("root/drive0"))
            .expect("drive")
            .ino(),
        std::fs::metadata(&stage.disks[0]).expect("disk").ino()
    );
}

/// A FIFO where the console should be: refused at once, where opening
/// it for writing would wait for a reader (and the helper with it).
#[test]
fn a_fifo_for_a_console_is_refused_without_blocking() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut jail, _) = fixture(d.path());
    let state = d.path().join("state");
    jail.confine = Some(Confinement {
        state_dir: state.clone(),
        owner: me().0,
    });
    let console = state.join("vms").join(VM).join("console.log");
    std::fs::create_dir_all(console.parent().expect("dir")).expect("vm dir");
    nix::unistd::mkfifo(&console, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let j = jail.clone();
    let c = console.clone();
    std::thread::spawn(move || {
        let _ = tx.send(j.open_console(VM, &c).map(drop));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("open_console blocked on a fifo");
    let err = got.expect_err("a fifo is no console");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // A regular console still opens, for appending and blocking writes.
    std::fs::remove_file(&console).expect("rm");
    std::fs::write(&console, b"").expect("console");
    let f = jail.open_console(VM, &console).expect("console");
    let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).expect("flags");
    assert_eq!(
        nix::fcntl::OFlag::from_bits_truncate(fl) & nix::fcntl::OFlag::O_NONBLOCK,
        nix::fcntl::OFlag::empty()
    );
}

fn path_mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn a_chroot_base_others_can_change_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let open = d.path().join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = check_trusted_dir(&open.join("jail")).expect_err("world-writable parent");
    assert!(err.to_string().contains("only root can change"), "{err}");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(d.path(), &link).expect("symlink");
    let err = check_trusted_dir(&link).expect_err("symlink");
    assert!(err.to_string().contains("not a directory"), "{err}");
    check_trusted_dir(d.path()).expect("a dir of ours, under sticky /tmp");
    // Never created under an untrusted parent, not even empty.
    let err = ensure_chroot_base(&open.join("jail")).expect_err("untrusted parent");
    assert!(err.to_string().contains("only root can change"), "{err}");
    assert!(!open.join("jail").exists());
    ensure_chroot_base(&d.path().join("jail")).expect("made under a trusted parent");
    assert_eq!(path_mode(&d.path().join("jail")), 0o755);
}

#[test]
fn release_of_another_jail_dir_is_refused_when_confined() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut jail, _) = fixture(d.path());
    jail.confine = Some(Confinement {
        state_dir: d.path().join("state"),
        owner: me().0,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let precious = d.path().join("state");
    let err = rt
        .block_on(jail.release(VM, Some(&precious)))
        .expect_err("someone else's dir");
    assert!(err.to_string().contains("is not vm"), "{err}");
    assert!(precious.exists());
}

#[test]
fn jailed_ids_are_the_vm_shaped_dirs_under_the_chroot_base() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = cfg(d.path());
    assert!(c.jailed_ids().is_empty(), "no base yet");
    let fc = d.path().join("firecracker");
    for dir in ["fedcba9876543210", VM, "not-a-vm", "0123456789ABCDEF"] {
        std::fs::create_dir_all(fc.join(dir)).expect("dir");
    }
    std::fs::write(fc.join("1111111111111111"), b"a file").expect("file");
    assert_eq!(c.jailed_ids(), [VM, "fedcba9876543210"]);
}

/// The removal race: while the tree goes, a thread keeps swapping a
/// directory in it for a symlink to a directory outside (as the jail's
/// uid could, in the `run` dir it owns). Nothing outside is ever removed.
#[test]
fn a_dir_swapped_for_a_symlink_during_removal_never_takes_anything_outside() {
    let d = tempfile::tempdir().expect("tmp");
    let precious = d.path().join("precious");
    std::fs::create_dir(&precious).expect("precious");
    for i in 0..20 {
        // The same names as the jail's files: a removal by path through the
        // swapped link would find them.
        std::fs::write(precious.join(format!("f{i}")), b"keep").expect("keep");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut removed_rounds = 0;
    for round in 0..300 {
        let jail = d.path().join(format!("jail{round}"));
        let run = jail.join("root/run");
        let victim = run.join("d");
        std::fs::create_dir_all(&victim).expect("tree");
        for i in 0..20 {
            std::fs::write(victim.join(format!("f{i}")), b"x").expect("file");
        }
        let swapper = {
            let (stop, run, precious) = (stop.clone(), run.clone(), precious.clone());
            std::thread::spawn(move || {
                let aside = run.join("d.aside");
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if std::fs::rename(run.join("d"), &aside).is_ok() {
                        let _ = std::os::unix::fs::symlink(&precious, run.join("d"));
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(run.join("d"));
                        let _ = std::fs::rename(&aside, run.join("d"));
                    } else {
                        std::thread::yield_now();
                    }
                    if !run.exists() {
                        return;
                    }
                }
            })
        };
        // A removal that meets the swap mid-way may fail (an entry moved
        // under it); it never follows the link.
        for _ in 0..5 {
            if remove_tree(&jail).is_ok() && !jail.exists() {
                removed_rounds += 1;
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        swapper.join().expect("swapper");
        stop.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = remove_tree(&jail);
        let kept = std::fs::read_dir(&precious).expect("precious").count();
        assert_eq!(kept, 20, "round {round}: removal reached outside the jail");
    }
    assert!(removed_rounds > 0, "the tree was never removed");
}
