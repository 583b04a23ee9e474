//! The restore half of a start: the snapshot's frozen disks become the
//! VM's, and once the restored guest's agent answers, the guest takes on
//! this VM's identity before the VM is reported running.

use std::path::Path;

use banger_agent_proto::{HostKey, Identity, NicIdentity};
use banger_api::snapshot::SnapshotRecord;
use banger_api::vm::VmRecord;
use banger_host::layout::VmFiles;
use banger_vmm::mac_for;
use rand::{Rng, RngCore};

use crate::agent::Session;
use crate::core::Core;
use crate::error::{CoreError, HostError, InternalError};
use crate::progress::ProgressSink;
use crate::snapshot::{ROOT_DISK, VMM_DIR, WORK_DISK};

/// Host randomness handed to each restored guest's kernel.
const ENTROPY_BYTES: usize = 64;

impl Core {
    /// Checks the snapshot is whole, then clones its disks over the
    /// VM's: a restore must run on exactly the disks its memory knows.
    pub(super) async fn restore_disks(
        &self,
        snap: &SnapshotRecord,
        paths: &VmFiles,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        for part in [VMM_DIR, ROOT_DISK, WORK_DISK] {
            let p = snap.dir.join(part);
            if !tokio::fs::try_exists(&p).await.unwrap_or(false) {
                return Err(CoreError::InvalidArgument(format!(
                    "snapshot {:?} is damaged: {} is missing; remove it with `banger snapshot rm {}`",
                    snap.name,
                    p.display(),
                    snap.name
                )));
            }
        }
        tokio::fs::create_dir_all(&paths.dir)
            .await
            .map_err(InternalError::io("creating", &paths.dir))?;
        let strategy = self.host_report().await?.storage;
        progress.stage(
            "storage",
            format!("cloning the disks of snapshot {} ({strategy:?})", snap.name),
        );
        for (name, dst) in [(ROOT_DISK, &paths.root_disk), (WORK_DISK, &paths.work_disk)] {
            let tmp = dst.with_extension("partial");
            let _ = tokio::fs::remove_file(&tmp).await;
            self.deps()
                .disks
                .clone_image(&snap.dir.join(name), &tmp, strategy)
                .await
                .map_err(HostError::from)?;
            tokio::fs::rename(&tmp, dst)
                .await
                .map_err(InternalError::io("publishing", dst))?;
        }
        Ok(())
    }

    /// Hostname, address, MAC, machine id, ssh host key (pinned here),
    /// clock and random pool: until this ran the guest is a copy of the
    /// VM the snapshot was taken of.
    pub(super) async fn take_identity(
        &self,
        vm: &mut VmRecord,
        ip: std::net::Ipv4Addr,
        scratch: &Path,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        progress.stage(
            "identity",
            "giving the restored guest its own name, address, keys, clock and entropy",
        );
        let (private, public) = self.ssh_keys().host_key(scratch).await?;
        let net = &self.config().network;
        let mut entropy = vec![0u8; ENTROPY_BYTES];
        rand::rng().fill_bytes(&mut entropy);
        let now = chrono::Utc::now();
        let id = Identity {
            hostname: vm.name.clone(),
            nic: Some(NicIdentity {
                mac: mac_for(&vm.id),
                ip,
                prefix: net.prefix_len,
                gateway: Some(net.bridge_ip),
            }),
            machine_id: format!("{:032x}", rand::rng().random::<u128>()),
            ssh_host_key: Some(HostKey {
                private,
                public: public.clone(),
            }),
            unix_secs: now.timestamp(),
            unix_nanos: now.timestamp_subsec_nanos(),
            entropy,
        };
        Session::new(self.deps().agent.as_ref(), vm)
            .identify(id)
            .await
            .map_err(|source| CoreError::Agent {
                vm: vm.name.clone(),
                source,
            })?;
        vm.runtime.ssh_host_key = Some(public);
        Ok(())
    }
}

/// Where a restore's VMM state is in a snapshot.
pub(super) fn vmm_state(snap: &SnapshotRecord) -> std::path::PathBuf {
    snap.dir.join(VMM_DIR)
}
