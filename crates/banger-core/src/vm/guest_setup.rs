//! What a cold boot gives its guest before the VMM starts: an address,
//! the files written into its root disk, its kernel command line, and a
//! slot in the boot queue.

use std::net::Ipv4Addr;

use banger_api::asset::{ImageInit, KernelRecord};
use banger_api::doctor::{Accel, DoctorReport};
use banger_api::vm::VmRecord;
use banger_host::layout::VmFiles;
use banger_store::Store;

use crate::admission::{Admission, default_boot_limit};
use crate::core::Core;
use crate::error::{CoreError, HostError};
use crate::guest::{self, GuestConfig};
use crate::ipam;
use crate::progress::ProgressSink;

impl Core {
    /// Hostname, network, ssh and the agent written into a cold boot's
    /// root disk.
    pub(super) async fn write_guest_config(
        &self,
        vm: &VmRecord,
        ip: Ipv4Addr,
        paths: &VmFiles,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        progress.stage(
            "guest-config",
            "writing hostname, network, ssh config and the agent into the root disk",
        );
        let agent_bin = &self.config().guest.agent;
        let agent = tokio::fs::read(agent_bin).await.map_err(|e| {
            CoreError::Unavailable(format!(
                "guest agent binary {}: {e}; build it with scripts/build-guest.sh (scripts/setup.sh installs it) or set guest.agent",
                agent_bin.display()
            ))
        })?;
        let (_, authorized_key) = self.ssh_keys().ensure().await?;
        let net = &self.config().network;
        let entries = guest::entries(GuestConfig {
            hostname: &vm.name,
            ip,
            prefix_len: net.prefix_len,
            gateway: net.bridge_ip,
            agent,
            authorized_key: &authorized_key,
        });
        self.deps()
            .disks
            .write_entries(&paths.root_disk, &entries)
            .await
            .map_err(HostError::from)?;
        Ok(())
    }
    /// The boot queue, sized on first use: `limits.concurrent_boots`, or
    /// one per CPU under software emulation (more with hardware KVM).
    pub(crate) fn boot_admission(&self, host: &DoctorReport) -> &Admission {
        self.boots().get_or_init(|| {
            let limit = match self.config().limits.concurrent_boots {
                Some(n) => n as usize,
                None => {
                    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                    let kvm = host.default_vmm.is_some_and(|c| c.accel == Accel::Kvm);
                    default_boot_limit(cpus, kvm)
                }
            };
            tracing::info!(
                limit = limit,
                "guest boots admitted {}",
                if limit == 0 {
                    "without a limit".to_owned()
                } else {
                    format!("{limit} at a time")
                }
            );
            Admission::new("boot", Some(limit))
        })
    }
    pub(super) async fn allocate_ip(&self, vm: &mut VmRecord) -> Result<Ipv4Addr, CoreError> {
        if let Some(ip) = vm.runtime.guest_ip {
            return Ok(ip);
        }
        let _g = self.net_lock().lock().await;
        let used: Vec<Ipv4Addr> = self
            .db(Store::list_vms)
            .await?
            .iter()
            .filter_map(|v| v.runtime.guest_ip)
            .collect();
        let net = &self.config().network;
        let ip = ipam::subnet(net.bridge_ip, net.prefix_len)
            .and_then(|subnet| ipam::first_free(subnet, net.bridge_ip, &used))
            .ok_or_else(|| {
                CoreError::Unavailable(format!(
                    "no free address left in {}/{}; delete unused vms or widen network.bridge_cidr",
                    net.bridge_ip, net.prefix_len
                ))
            })?;
        vm.runtime.guest_ip = Some(ip);
        // Persisted under the lock: never handed out twice.
        self.save(vm).await?;
        Ok(ip)
    }
}

/// The guest kernel's command line: the console and root, then what
/// banger-init needs to ready the guest before any distro init (the init
/// mode, address, gateway, hostname), then the kernel record's own.
pub(super) fn kernel_cmdline(
    kernel: &KernelRecord,
    init: ImageInit,
    hostname: &str,
    ip: Ipv4Addr,
    net: &banger_config::NetworkConfig,
) -> String {
    let mut cmdline = format!(
        "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 quiet banger.init={init} banger.addr={ip}/{prefix} banger.gw={gw} banger.hostname={hostname}",
        prefix = net.prefix_len,
        gw = net.bridge_ip,
    );
    if !kernel.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&kernel.cmdline);
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use banger_api::asset::AssetFile;

    use super::*;

    #[test]
    fn the_kernel_is_told_the_init_mode_address_gateway_and_hostname() {
        let file = AssetFile {
            path: "/k".into(),
            sha256: "00".into(),
            size: 1,
        };
        let mut kernel = KernelRecord {
            id: "k".into(),
            name: "default".into(),
            version: None,
            source: "test".into(),
            vmlinux: file,
            initrd: None,
            modules: vec![],
            cmdline: String::new(),
            booted_on: vec![],
            digest: "00".into(),
            created_at: chrono::Utc::now(),
        };
        let net = banger_config::NetworkConfig {
            bridge: "banger0".into(),
            bridge_ip: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 28,
            uplink: None,
            vm_to_vm: false,
            guest_ipv6: false,
        };
        let line = kernel_cmdline(
            &kernel,
            ImageInit::Banger,
            "web",
            Ipv4Addr::new(10, 99, 0, 2),
            &net,
        );
        assert_eq!(
            line,
            "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 quiet banger.init=banger banger.addr=10.99.0.2/28 banger.gw=10.99.0.1 banger.hostname=web"
        );
        kernel.cmdline = "mitigations=off".into();
        let line = kernel_cmdline(
            &kernel,
            ImageInit::Systemd,
            "db",
            Ipv4Addr::new(10, 99, 0, 3),
            &net,
        );
        assert!(line.contains("banger.init=systemd"), "{line}");
        assert!(line.ends_with(" mitigations=off"), "{line}");
    }
}
