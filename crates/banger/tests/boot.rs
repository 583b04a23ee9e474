//! Tier 3: the default kernel and image, built from Debian's packages by
//! banger itself, boot under QEMU/TCG to the root filesystem's init.
//!
//! The assets come from the shared test cache (`common::cached_default_assets`):
//! slow the first time (debootstrap), cheap after. Needs root, QEMU and
//! `BANGER_GUEST_INIT` (scripts/test.sh); skipped with the reason where
//! they are missing, a failure under `CI=true`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wait::Lines;
use common::{Env, cached_default_assets, guest_prereqs, skip_or_fail};

#[test]
fn default_kernel_and_image_boot_under_qemu_tcg_to_the_root_init() {
    let init = match guest_prereqs() {
        Ok(i) => i,
        Err(reason) => return skip_or_fail("boot test", &reason),
    };
    let assets = cached_default_assets(&init);
    let (k, i) = (&assets.kernel, &assets.image);
    println!(
        "figure: vmlinux {} MiB, initrd {} KiB, rootfs {} MiB, work seed {} KiB",
        k["vmlinux"]["size"].as_u64().unwrap_or(0) >> 20,
        k["initrd"]["size"].as_u64().unwrap_or(0) >> 10,
        i["rootfs"]["size"].as_u64().unwrap_or(0) >> 20,
        i["work_seed"]["size"].as_u64().unwrap_or(0) >> 10,
    );

    // The guest writes to its root disk: boot a copy, never the base.
    let env = Env::new();
    let disk = env.dir.path().join("root.ext4");
    let st = Command::new("cp")
        .args([
            "--sparse=always",
            i["rootfs"]["path"].as_str().expect("rootfs"),
        ])
        .arg(&disk)
        .status()
        .expect("cp");
    assert!(st.success());
    let khz = banger_vmm::qemu::host_tsc_khz().unwrap_or(2_000_000);
    let t = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,accel=tcg,acpi=on,pit=on,pic=off,rtc=on", "-cpu", "max", "-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(k["vmlinux"]["path"].as_str().expect("vmlinux"))
        .arg("-initrd")
        .arg(k["initrd"]["path"].as_str().expect("initrd"))
        .arg("-append")
        .arg(format!("console=ttyS0 root=/dev/vda rw panic=-1 systemd.show_status=1 tsc_early_khz={khz} lpj={khz}"))
        .arg("-drive")
        .arg(format!("id=root,file={},format=raw,if=none", disk.display()))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = qemu.stdout.take().expect("stdout");
    let _qemu = KillOnDrop(qemu);
    let mut console = Lines::new(stdout);
    let within = Duration::from_secs(180);
    let mut switched = None;
    let welcomed = console
        .wait_for(within, |line| {
            if line.contains("banger-init: switching root") {
                switched = Some(t.elapsed());
            }
            line.contains("Welcome to") && line.contains("Debian")
        })
        .map(|_| t.elapsed());
    if welcomed.is_none() {
        if t.elapsed() >= within {
            panic!("no systemd banner within 180s; console:\n{}", console.seen)
        }
        panic!(
            "the guest stopped before systemd started; console:\n{}",
            console.seen
        )
    }
    let switched =
        switched.unwrap_or_else(|| panic!("banger-init never switched root:\n{}", console.seen));
    println!(
        "figure: QEMU/TCG boot: banger-init switched root after {:.2}s, systemd banner after {:.2}s",
        switched.as_secs_f64(),
        welcomed.map_or(0.0, |w| w.as_secs_f64())
    );
    assert!(
        console.seen.contains("banger-init: loaded"),
        "modules loaded"
    );
}
