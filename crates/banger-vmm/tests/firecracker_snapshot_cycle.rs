//! Snapshots of running VMs against the real Firecracker
//! (`BANGER_FIRECRACKER_BIN`, and `BANGER_JAILER_BIN` jailed) where
//! `/dev/kvm` opens: a VM whose "kernel" is a `hlt` loop is paused, saved
//! and restored into a second VM with its own disks and vsock socket.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use banger_vmm::firecracker::{FcApi, FirecrackerVmm, MEMORY_FILE, STATE_FILE};
use banger_vmm::jail::{CgroupVersion, Jail, JailConfig, LocalJail};
use banger_vmm::{LaunchSpec, Vmm, process};
use common::{VmDir, firecracker, refusal, skip_or_fail};

/// An x86-64 ELF whose code is `hlt; jmp .-1` at 16 MiB: Firecracker
/// boots it in long mode, and the vCPU idles in it until paused.
fn hlt_kernel(path: &Path) {
    const BASE: u64 = 0x100_0000;
    const CODE: u64 = 64 + 56;
    let code = [0xf4, 0xeb, 0xfd];
    let size = CODE + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + CODE).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    assert_eq!(elf.len() as u64, CODE);
    elf.extend_from_slice(&code);
    std::fs::write(path, elf).expect("kernel");
}

/// The files `pid` has open, as (device, inode): the same for a disk and
/// its hard link in a jail.
fn open_files(pid: u32) -> Vec<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn file_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).expect("metadata");
    (m.dev(), m.ino())
}

/// `b` runs on its own disks, none of `a`'s.
fn runs_on_its_own_disks(pid: u32, a: &LaunchSpec, b: &LaunchSpec) {
    let open = open_files(pid);
    for disk in &b.disks {
        assert!(open.contains(&file_id(disk)), "{} open", disk.display());
    }
    for disk in &a.disks {
        assert!(
            !open.contains(&file_id(disk)),
            "{} not open",
            disk.display()
        );
    }
}

/// A VM the test started, killed if the test ends before it does (a
/// failed assertion); disarmed once the test has killed it itself, so a
/// recycled pid is never signalled.
struct Started(Option<u32>);

impl Started {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether `/dev/kvm` opens, else says why not.
fn kvm(what: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip_or_fail(what, &format!("/dev/kvm: {e}"));
            false
        }
    }
}

#[tokio::test]
async fn a_running_vm_is_paused_saved_and_restored_into_another_vm() {
    let Some(bin) = firecracker("firecracker snapshot cycle") else {
        return;
    };
    if !kvm("firecracker snapshot cycle") {
        return;
    }
    let vmm = FirecrackerVmm { bin, jail: None };
    let kernels = tempfile::tempdir().expect("tempdir");
    let kernel = kernels.path().join("vmlinux");
    hlt_kernel(&kernel);

    let a = VmDir::new("00000000000000a1");
    let spec_a = a.spec(&kernel);
    let pid_a = vmm.launch(&spec_a).await.expect("launch a");
    let started_a = Started(Some(pid_a));
    let socket_a = &spec_a.control_socket;
    assert!(!vmm.is_paused(socket_a).await.expect("state"));
    let running = tempfile::tempdir().expect("tempdir");
    let err = vmm
        .save(socket_a, running.path())
        .await
        .expect_err("a running VM is not saved");
    assert!(
        refusal(&err).2.contains("unavailable while running"),
        "{err}"
    );
    vmm.pause(socket_a).await.expect("pause");
    assert!(vmm.is_paused(socket_a).await.expect("state"));
    let snap = tempfile::tempdir().expect("tempdir");
    vmm.save(socket_a, snap.path()).await.expect("save");
    assert!(
        vmm.is_paused(socket_a).await.expect("state"),
        "stays paused"
    );
    let memory = std::fs::metadata(snap.path().join(MEMORY_FILE)).expect("memory file");
    assert_eq!(memory.len(), 128 << 20, "the whole guest memory");
    assert!(snap.path().join(STATE_FILE).is_file(), "state file");
    vmm.resume(socket_a).await.expect("resume");
    assert!(!vmm.is_paused(socket_a).await.expect("state"));
    vmm.kill(pid_a, socket_a).await.expect("kill a");
    started_a.done();

    let b = VmDir::new("00000000000000b2");
    let spec_b = b.spec(Path::new("/nonexistent/vmlinux"));
    let pid_b = vmm.restore(&spec_b, snap.path()).await.expect("restore");
    let started_b = Started(Some(pid_b));
    let socket_b = &spec_b.control_socket;
    assert!(vmm.alive(pid_b, socket_b), "identified like a booted VM");
    let info = FcApi::new(socket_b).instance_info().await.expect("info");
    assert_eq!(info["state"], "Running", "resumed on load: {info}");
    runs_on_its_own_disks(pid_b, &spec_a, &spec_b);
    let vsock =
        std::fs::symlink_metadata(spec_b.vsock.as_ref().expect("vsock")).expect("b's vsock");
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&vsock.file_type()),
        "served on b's own socket"
    );
    assert_eq!(
        std::fs::read_to_string(&spec_b.pid_file).expect("pid file"),
        format!("{pid_b}\n")
    );
    vmm.kill(pid_b, socket_b).await.expect("kill b");
    started_b.done();
    assert!(process::all_by_socket(socket_b).is_empty());
}

/// The same cycle jailed (`BANGER_JAILER_BIN`, as root): the snapshot is
/// written inside the first VM's chroot and moved out, then linked into
/// the second VM's chroot for the load.
#[tokio::test]
async fn a_jailed_vm_is_saved_out_of_its_chroot_and_restored_into_another_jail() {
    let what = "jailed firecracker snapshot cycle";
    let Some(bin) = firecracker(what) else {
        return;
    };
    let Some(jailer) = std::env::var_os("BANGER_JAILER_BIN").map(PathBuf::from) else {
        return skip_or_fail(
            what,
            "BANGER_JAILER_BIN unset (scripts/test.sh points it at ../shared/bin/jailer)",
        );
    };
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail(what, "the jailer needs root");
    }
    if !kvm(what) {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let cgroup_root = PathBuf::from("/sys/fs/cgroup");
    let config = JailConfig {
        jailer,
        chroot_base: base.path().join("jail"),
        uid: 64123,
        gid: 64123,
        cgroup_version: CgroupVersion::detect(&cgroup_root),
        cgroups: vec!["pids.max=64".into()],
        cgroup_root,
    };
    let vmm = FirecrackerVmm {
        bin: bin.clone(),
        jail: Some(Jail {
            config: config.clone(),
            ops: std::sync::Arc::new(LocalJail {
                config: config.clone(),
                firecracker: bin,
                confine: None,
            }),
        }),
    };
    let kernel = base.path().join("vmlinux");
    hlt_kernel(&kernel);
    // Ids of this run: the jails and cgroups are named by them.
    let id = |n: u32| format!("{:08x}{n:08x}", std::process::id());
    // A jailed VM's sockets are named by its id, as in the runtime dir.
    let jailed_spec = |vm: &VmDir| {
        let mut spec = vm.spec(&kernel);
        spec.control_socket = vm.path(&format!("{}.sock", vm.id));
        spec.vsock = Some(vm.path(&format!("{}.vsock", vm.id)));
        spec
    };

    let (id_a, id_b) = (id(0xa), id(0xb));
    let a = VmDir::new(&id_a);
    let spec_a = jailed_spec(&a);
    let pid_a = vmm.launch(&spec_a).await.expect("jailed launch a");
    let started_a = Started(Some(pid_a));
    let socket_a = &spec_a.control_socket;
    vmm.pause(socket_a).await.expect("pause");
    let snap = tempfile::tempdir().expect("tempdir");
    vmm.save(socket_a, snap.path()).await.expect("save");
    for name in [STATE_FILE, MEMORY_FILE] {
        let file = std::fs::symlink_metadata(snap.path().join(name)).expect("saved file");
        assert!(file.file_type().is_file(), "{name}: a regular file");
    }
    assert_eq!(
        std::fs::metadata(snap.path().join(MEMORY_FILE))
            .expect("memory")
            .len(),
        128 << 20
    );
    let run_a = config.host_path(&id_a, "/run");
    let left: Vec<_> = std::fs::read_dir(&run_a)
        .expect("jail's /run")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("api.sock")],
        "moved out, not copied"
    );
    vmm.kill(pid_a, socket_a).await.expect("kill a");
    started_a.done();
    vmm.release(&id_a, Some(&config.jail_dir(&id_a)))
        .await
        .expect("release a");

    let b = VmDir::new(&id_b);
    let spec_b = jailed_spec(&b);
    let pid_b = vmm
        .restore(&spec_b, snap.path())
        .await
        .expect("jailed restore");
    let started_b = Started(Some(pid_b));
    let socket_b = &spec_b.control_socket;
    assert!(vmm.alive(pid_b, socket_b));
    assert!(
        !vmm.is_paused(socket_b).await.expect("state"),
        "resumed on load"
    );
    runs_on_its_own_disks(pid_b, &spec_a, &spec_b);
    assert_eq!(
        file_id(&config.host_path(&id_b, "/run/restored.memory")),
        file_id(&snap.path().join(MEMORY_FILE)),
        "the saved memory is linked in, not copied"
    );
    assert!(
        spec_b.vsock.as_ref().expect("vsock").exists(),
        "b's vsock symlink reaches the socket in its chroot"
    );
    vmm.kill(pid_b, socket_b).await.expect("kill b");
    started_b.done();
    vmm.release(&id_b, Some(&config.jail_dir(&id_b)))
        .await
        .expect("release b");
    assert!(!config.jail_dir(&id_b).exists(), "jail removed");
    assert!(config.cgroup_dirs(&id_b).is_empty(), "cgroups removed");
    assert!(
        snap.path().join(MEMORY_FILE).is_file(),
        "the snapshot outlives the VM restored from it"
    );
}
