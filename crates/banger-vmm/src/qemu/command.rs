//! QEMU `microvm`: the command line.

use std::ffi::OsString;
use std::path::PathBuf;

use banger_api::doctor::Accel;

use crate::LaunchSpec;

/// Builds the `qemu-system-x86_64` argument list for a spec.
#[derive(Debug, Clone)]
pub struct QemuCommand {
    pub bin: PathBuf,
    /// Host TSC in kHz: passed to the guest so TCG boots never hang in
    /// TSC calibration.
    pub tsc_khz: Option<u64>,
}

impl QemuCommand {
    pub fn args(&self, spec: &LaunchSpec) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        let accel = match spec.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        push("-name");
        push(&format!("banger-{}", spec.vm_id));
        // vhost-user devices need the guest's memory in a shareable fd.
        let memory_backend = if spec.vsock.is_some() {
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ));
            ",memory-backend=mem"
        } else {
            ""
        };
        // No 8259 PIC: with it, 2 % of TCG boots died of a "divide error"
        // in start_kernel (an interrupt the PIC passed on before the kernel
        // had set it up arrived as vector 0); none in 300 without it.
        push("-M");
        push(&format!(
            "microvm,accel={accel},acpi=on,pit=on,pic=off,rtc=on{memory_backend}"
        ));
        push("-cpu");
        push(if spec.accel == Accel::Kvm {
            "host"
        } else {
            "max"
        });
        push("-m");
        push(&spec.memory_mib.to_string());
        push("-smp");
        push(&spec.vcpus.to_string());
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            push(flag);
        }
        push("-display");
        push("none");
        push("-kernel");
        a.push(spec.kernel.clone().into());
        if let Some(initrd) = &spec.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into());
        }
        let mut cmdline = spec.cmdline.clone();
        if spec.accel == Accel::Tcg {
            if let Some(khz) = self.tsc_khz {
                // tsc=reliable: TCG's TSC follows the host's, but with two
                // vCPUs the kernel finds them "unsynchronized" and falls
                // back to jiffies, which lose ticks whenever the host is
                // busy (measured: a fork's clock 14 s behind after 20 s of
                // four guests on two cores). The TSC keeps wall time.
                cmdline.push_str(&format!(" tsc_early_khz={khz} lpj={khz} tsc=reliable"));
            }
        }
        a.push("-append".into());
        a.push(cmdline.into());
        for (i, disk) in spec.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(
                format!(
                    "id=d{i},file={},format=raw,if=none,cache=writeback",
                    disk.display()
                )
                .into(),
            );
            a.push("-device".into());
            a.push(format!("virtio-blk-device,drive=d{i}").into());
        }
        if let Some(net) = &spec.net {
            a.push("-netdev".into());
            a.push(match net.fd {
                Some(_) => format!("tap,id=n0,fd={}", crate::TAP_FD).into(),
                None => format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap).into(),
            });
            a.push("-device".into());
            a.push(format!("virtio-net-device,netdev=n0,mac={}", net.mac).into());
        }
        if spec.vsock.is_some() {
            let vhu = crate::vhost_user_socket(&spec.control_socket);
            a.push("-chardev".into());
            a.push(format!("socket,id=vsock,path={}", vhu.display()).into());
            a.push("-device".into());
            a.push("vhost-user-vsock-device,chardev=vsock".into());
        }
        // Fresh host entropy for the guest's kernel: a restored VM must not
        // keep the random state of the snapshot it came from.
        a.push("-object".into());
        a.push("rng-random,id=rng,filename=/dev/urandom".into());
        a.push("-device".into());
        a.push("virtio-rng-device,rng=rng".into());
        if let Some(serial) = &spec.agent_serial {
            a.push("-device".into());
            a.push("virtio-serial-device,max_ports=2".into());
            a.push("-chardev".into());
            a.push(
                format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    serial.display()
                )
                .into(),
            );
            a.push("-device".into());
            a.push(
                format!(
                    "virtserialport,chardev=agent,name={}",
                    crate::AGENT_PORT_NAME
                )
                .into(),
            );
        }
        a.push("-chardev".into());
        // Appending, so a rotation's truncation starts the file again.
        a.push(format!("file,id=con,path={},append=on", spec.console_log.display()).into());
        a.push("-serial".into());
        a.push("chardev:con".into());
        a.push("-qmp".into());
        a.push(format!("unix:{},server=on,wait=off", spec.control_socket.display()).into());
        // QEMU's seccomp filter: a guest that escapes into the VMM finds
        // obsolete and resource-control syscalls refused. (Its
        // `elevateprivileges=deny` and `spawn=deny` refuse the fork and
        // setsid of -daemonize itself, so they wait for a QEMU banger
        // starts detached on its own.)
        a.push("-sandbox".into());
        a.push(SANDBOX.into());
        a.push("-daemonize".into());
        a.push("-pidfile".into());
        a.push(spec.pid_file.clone().into());
        a
    }
}

/// The `-sandbox` options every QEMU runs with.
pub const SANDBOX: &str = "on,obsolete=deny,resourcecontrol=deny";

/// The host TSC frequency in kHz, from `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetSpec;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            vm_id: "0123456789abcdef".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            disks: vec!["/v/root.ext4".into(), "/v/work.ext4".into()],
            net: Some(NetSpec {
                tap: "bg-01234567".into(),
                mac: "02:b6:01:23:45:67".into(),
                fd: None,
            }),
            console_log: "/v/console.log".into(),
            control_socket: "/run/banger/0123.qmp".into(),
            pid_file: "/v/vmm.pid".into(),
            accel: Accel::Tcg,
            vsock: None,
            agent_serial: None,
        }
    }

    #[test]
    fn the_agent_serial_port_is_a_named_virtserialport_on_a_served_socket() {
        let mut s = spec();
        s.agent_serial = Some("/run/banger/0123.agent".into());
        let q = QemuCommand {
            bin: "qemu-system-x86_64".into(),
            tsc_khz: None,
        };
        let joined = q
            .args(&s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-device virtio-serial-device,max_ports=2 -chardev socket,id=agent,path=/run/banger/0123.agent,server=on,wait=off -device virtserialport,chardev=agent,name=org.banger.agent"), "{joined}");
        assert!(!joined.contains("memory-backend-memfd"), "{joined}");
    }

    #[test]
    fn vsock_adds_a_shared_memory_backend_and_the_vhost_user_device() {
        let q = QemuCommand {
            bin: "qemu-system-x86_64".into(),
            tsc_khz: None,
        };
        let mut s = spec();
        s.vsock = Some("/run/banger/0123.vsock".into());
        let joined = q
            .args(&s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-object memory-backend-memfd,id=mem,size=512M,share=on -M microvm,accel=tcg,acpi=on,pit=on,pic=off,rtc=on,memory-backend=mem"), "{joined}");
        assert!(joined.contains("-chardev socket,id=vsock,path=/run/banger/0123.vhu -device vhost-user-vsock-device,chardev=vsock"), "{joined}");
    }

    #[test]
    fn tcg_command_line() {
        let q = QemuCommand {
            bin: "qemu-system-x86_64".into(),
            tsc_khz: Some(2_445_406),
        };
        let args: Vec<String> = q
            .args(&spec())
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains(
                "-M microvm,accel=tcg,acpi=on,pit=on,pic=off,rtc=on -cpu max -m 512 -smp 2"
            ),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-append console=ttyS0 root=/dev/vda tsc_early_khz=2445406 lpj=2445406 tsc=reliable"
            ),
            "{joined}"
        );
        assert!(joined.contains("-drive id=d0,file=/v/root.ext4,format=raw,if=none,cache=writeback -device virtio-blk-device,drive=d0"));
        assert!(joined.contains("-drive id=d1,file=/v/work.ext4"));
        assert!(joined.contains("-netdev tap,id=n0,ifname=bg-01234567,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=02:b6:01:23:45:67"));
        assert!(joined.contains(
            "-object rng-random,id=rng,filename=/dev/urandom -device virtio-rng-device,rng=rng"
        ));
        assert!(joined.contains("-qmp unix:/run/banger/0123.qmp,server=on,wait=off"));
        assert!(joined.ends_with(
            "-sandbox on,obsolete=deny,resourcecontrol=deny -daemonize -pidfile /v/vmm.pid"
        ));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_tsc_hint() {
        let q = QemuCommand {
            bin: "qemu-system-x86_64".into(),
            tsc_khz: Some(1),
        };
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.initrd = None;
        s.net = None;
        let joined: Vec<String> = q
            .args(&s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        assert!(joined.contains("accel=kvm") && joined.contains("-cpu host"));
        assert!(
            !joined.contains("tsc_early_khz")
                && !joined.contains("-initrd")
                && !joined.contains("-netdev")
        );
    }
}
