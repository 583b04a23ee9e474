//! Daemon start: what banger owns by name and no record claims. A crash
//! between making a host object and recording it (or between removing a
//! record and its objects) leaves these; banger names every object it
//! makes after the VM's id, so an id no record has marks an orphan.
//!
//! Only what carries banger's names in banger's places goes: taps named
//! `bg-<12 hex>` on this daemon's bridge (or on none), NAT rules in banger's own table for such taps, VM dirs
//! and per-VM sockets under banger's state and runtime dirs, jails under
//! banger's chroot base (their cgroups with them), the VMM processes
//! serving those sockets and any process still working in those dirs,
//! build dirs under `<state>/tmp` and the tools still running in them,
//! and `*.partial` disks in VM dirs (with the copy writing one). An orphan
//! id is one that a VM dir, a runtime file, a jail or a process names and
//! no record has. A link named otherwise, another table, a process that
//! names none of banger's dirs is never touched. Each removal is logged.
//!
//! Runs once, before the API serves: no build, start or disk copy of
//! this daemon can be in flight, so every build dir and partial disk is
//! left over by an earlier one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::vm::VmmKind;
use banger_host::layout::{TapName, check_vm_id};
use banger_store::Store;

use crate::core::Core;
use crate::error::{CoreError, HostError, InternalError};

/// What a sweep removed, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub taps: Vec<String>,
    /// Taps whose NAT or guard rules went.
    pub rule_taps: Vec<String>,
    pub vmm_processes: Vec<u32>,
    /// Tools a dead daemon left working in banger's dirs (a debootstrap
    /// in a build dir, a copy into a VM dir).
    pub tool_processes: Vec<u32>,
    pub vm_dirs: Vec<PathBuf>,
    pub sockets: Vec<PathBuf>,
    pub build_dirs: Vec<PathBuf>,
    pub partial_disks: Vec<PathBuf>,
    pub asset_dirs: Vec<PathBuf>,
}

impl Swept {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The VM ids a command line names under `dir` (`<dir>/<id>/…` or
/// `<dir>/<id>.sock`).
fn ids_named(cmdline: &str, dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    cmdline
        .match_indices(&prefix)
        .filter_map(|(at, _)| {
            let rest = &cmdline[at + prefix.len()..];
            let id = rest.split(['/', '.', '_', ' ']).next()?;
            check_vm_id(id).ok().map(|()| id.to_owned())
        })
        .collect()
}

/// Whether a command line names `file` as an argument of its own or as
/// an option's value (`of=FILE`, `file=FILE,format=raw`).
fn names_file(cmdline: &str, file: &str) -> bool {
    cmdline.split([' ', ',', '=']).any(|a| a == file)
}

/// The VM id a per-VM runtime file is named after (`<id>.sock`,
/// `<id>.vsock_1052`, …), if it is one.
fn id_of_runtime_file(name: &str) -> Option<&str> {
    let id = name.split(['.', '_']).next()?;
    check_vm_id(id).ok().map(|()| id)
}

async fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, CoreError> {
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(InternalError::io("listing", dir)(e).into()),
    };
    while let Some(e) = rd
        .next_entry()
        .await
        .map_err(InternalError::io("listing", dir))?
    {
        let is_dir = e.file_type().await.is_ok_and(|t| t.is_dir());
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            e.path(),
            is_dir,
        ));
    }
    out.sort();
    Ok(out)
}

impl Core {
    /// Removes banger's orphans (see the module); errors of one step are
    /// logged and the others still run.
    pub async fn sweep_orphans(&self) -> Result<Swept, CoreError> {
        let known: BTreeSet<String> = self
            .db(Store::list_vms)
            .await?
            .into_iter()
            .map(|v| v.id.to_string())
            .collect();
        let mut swept = Swept::default();
        let steps = [
            (
                "vm dirs and their processes",
                self.sweep_vms(&known, &mut swept).await,
            ),
            ("taps", self.sweep_taps(&known, &mut swept).await),
            ("nat rules", self.sweep_nat(&known, &mut swept).await),
            ("build dirs", self.sweep_build_dirs(&mut swept).await),
            ("asset content", self.sweep_asset_dirs(&mut swept).await),
        ];
        for (what, r) in steps {
            if let Err(e) = r {
                tracing::warn!(error = %e, "start-up sweep of {what}");
            }
        }
        if !swept.is_empty() {
            tracing::info!(?swept, "start-up sweep removed orphans");
        }
        Ok(swept)
    }

    /// VM dirs and runtime files of ids no record has, the VMMs serving
    /// those files first; and partial disks in the dirs of known VMs.
    async fn sweep_vms(
        &self,
        known: &BTreeSet<String>,
        swept: &mut Swept,
    ) -> Result<(), CoreError> {
        let layout = self.layout();
        let mut orphans = BTreeSet::new();
        for (name, path, is_dir) in entries(&layout.vms_dir()).await? {
            if !is_dir || check_vm_id(&name).is_err() {
                continue;
            }
            if known.contains(&name) {
                for disk in ["root.ext4.partial", "work.ext4.partial"] {
                    let p = path.join(disk);
                    if !tokio::fs::try_exists(&p).await.unwrap_or(false) {
                        continue;
                    }
                    // The copy a dead daemon started may still be writing.
                    self.kill_users(&p, "writing a partial disk", swept).await;
                    if tokio::fs::remove_file(&p).await.is_ok() {
                        tracing::info!(file = %p.display(), "removed a partial disk (a copy cut short)");
                        swept.partial_disks.push(p);
                    }
                }
            } else {
                orphans.insert(name);
            }
        }
        let sockets = layout.runtime_dir().join("vms");
        let runtime_files = entries(&sockets).await?;
        for (name, _, _) in &runtime_files {
            if let Some(id) = id_of_runtime_file(name).filter(|id| !known.contains(*id)) {
                orphans.insert(id.to_owned());
            }
        }
        // Jails (their dirs under banger's chroot base) and processes
        // naming a VM's files outlive both when a daemon died mid-delete.
        for kind in [VmmKind::Qemu, VmmKind::Firecracker] {
            if let Ok(vmm) = self.vmm_for(kind) {
                orphans.extend(
                    vmm.jailed_ids()
                        .into_iter()
                        .filter(|id| !known.contains(id)),
                );
            }
        }
        for dir in [layout.vms_dir(), sockets.clone()] {
            for p in self.deps().procs.using(&dir).await {
                orphans.extend(
                    ids_named(&p.cmdline, &dir)
                        .into_iter()
                        .filter(|id| !known.contains(id)),
                );
            }
        }
        for id in &orphans {
            // One orphan that cannot be removed does not keep the others.
            if let Err(e) = self.sweep_orphan_vm(id, swept).await {
                tracing::warn!(vm_id = %id, error = %e, "removing what a vm no record has left");
            }
        }
        for (name, path, is_dir) in runtime_files {
            if is_dir || !id_of_runtime_file(&name).is_some_and(|id| orphans.contains(id)) {
                continue;
            }
            tracing::info!(file = %path.display(), "removing a socket of a vm no record has");
            match tokio::fs::remove_file(&path).await {
                Ok(()) => swept.sockets.push(path),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "removing a socket"),
            }
        }
        Ok(())
    }

    /// The VMM serving the orphan's socket, its jail and cgroup, its dir.
    async fn sweep_orphan_vm(&self, id: &str, swept: &mut Swept) -> Result<(), CoreError> {
        let layout = self.layout();
        let socket = layout.files(id).socket;
        for kind in [VmmKind::Qemu, VmmKind::Firecracker] {
            let Ok(vmm) = self.vmm_for(kind) else {
                continue;
            };
            if let Some(pid) = vmm.find(&socket) {
                tracing::info!(vm_id = %id, pid, vmm = %kind, "killing the vmm of a vm no record has");
                vmm.kill(pid, &socket).await.map_err(HostError::from)?;
                swept.vmm_processes.push(pid);
            }
            vmm.release(id, vmm.jail_root(id).as_deref())
                .await
                .map_err(HostError::from)?;
        }
        // A VMM whose socket file is gone still names it.
        let sockets = layout.runtime_dir().join("vms");
        for p in self.deps().procs.using(&sockets).await {
            if ids_named(&p.cmdline, &sockets)
                .iter()
                .any(|named| named == id)
            {
                tracing::info!(vm_id = %id, pid = p.pid, cmdline = %p.cmdline, "killing a process serving a vm no record has");
                match self.deps().procs.kill(&p).await {
                    Ok(()) => swept.vmm_processes.push(p.pid),
                    Err(e) => {
                        tracing::warn!(vm_id = %id, error = %e, "killing a process serving a vm no record has")
                    }
                }
            }
        }
        // Only what writes its disks (a copy, a mkfs): a reader of its
        // console log is someone's, not banger's.
        let dir = layout.vm_dir(id);
        for disk in [
            "root.ext4",
            "work.ext4",
            "root.ext4.partial",
            "work.ext4.partial",
        ] {
            self.kill_users(
                &dir.join(disk),
                "writing a disk of a vm no record has",
                swept,
            )
            .await;
        }
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            tracing::info!(vm_id = %id, dir = %dir.display(), "removing the dir of a vm no record has");
            self.remove_vm_dir(dir.clone()).await?;
            swept.vm_dirs.push(dir);
        }
        Ok(())
    }

    async fn sweep_taps(
        &self,
        known: &BTreeSet<String>,
        swept: &mut Swept,
    ) -> Result<(), CoreError> {
        let links = self
            .deps()
            .net
            .list_links()
            .await
            .map_err(HostError::from)?;
        // A tap on another bridge is another daemon's (another state dir,
        // another bridge); one on none is ours cut short before its enslaving.
        let bridge = &self.config().network.bridge;
        let ours = links
            .into_iter()
            .filter(|l| l.master.as_ref().is_none_or(|m| m == bridge))
            .map(|l| l.name)
            .collect();
        for tap in orphan_taps(ours, known) {
            tracing::info!(tap = %tap, "deleting a tap no vm record has");
            self.deps()
                .net
                .delete_link(tap.as_str())
                .await
                .map_err(HostError::from)?;
            swept.taps.push(tap.to_string());
        }
        Ok(())
    }

    async fn sweep_nat(
        &self,
        known: &BTreeSet<String>,
        swept: &mut Swept,
    ) -> Result<(), CoreError> {
        let firewall = &self.deps().firewall;
        let nat_err = |what: String| move |source| HostError::Nat { vm: what, source };
        let taps = firewall
            .tagged_taps()
            .await
            .map_err(nat_err("(start-up sweep)".into()))?;
        // The rules of a tap that lives on another bridge are that
        // bridge's daemon's.
        let bridge = &self.config().network.bridge;
        let elsewhere: BTreeSet<String> = self
            .deps()
            .net
            .list_links()
            .await
            .map_err(HostError::from)?
            .into_iter()
            .filter(|l| l.master.as_ref().is_some_and(|m| m != bridge))
            .map(|l| l.name)
            .collect();
        let taps = taps
            .into_iter()
            .filter(|t| !elsewhere.contains(t))
            .collect();
        for tap in orphan_taps(taps, known) {
            tracing::info!(tap = %tap, "removing the nat and guard rules of a tap no vm record has");
            let what = || format!("(none: orphan tap {tap})");
            firewall
                .remove_nat(tap.as_str())
                .await
                .map_err(nat_err(what()))?;
            firewall
                .remove_guard(tap.as_str())
                .await
                .map_err(|source| HostError::Guard { vm: what(), source })?;
            swept.rule_taps.push(tap.to_string());
        }
        Ok(())
    }

    /// Every entry of `<state>/tmp`: builds and imports stage there, and
    /// none of this daemon's has begun.
    async fn sweep_build_dirs(&self, swept: &mut Swept) -> Result<(), CoreError> {
        let tmp = self.config().tmp_dir();
        // A dead daemon's tools (debootstrap, apt-get, mkfs) run on in
        // their own process groups: stopped before their dirs go.
        self.kill_users(&tmp, "left running by an interrupted build", swept)
            .await;
        for (_, path, is_dir) in entries(&tmp).await? {
            tracing::info!(path = %path.display(), "removing what an interrupted build left");
            let removed = if is_dir {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            removed.map_err(InternalError::io("removing", &path))?;
            swept.build_dirs.push(path);
        }
        Ok(())
    }
}

impl Core {
    /// Kills every process that names a path under `path` (or `path`
    /// itself) or runs beneath it; each is logged, a failure too.
    async fn kill_users(&self, path: &Path, why: &str, swept: &mut Swept) {
        let procs = &self.deps().procs;
        let mut users = procs.using(path).await;
        // A file is named whole, not as a dir prefix.
        if let Some(parent) = path.parent() {
            let whole = path.display().to_string();
            users.extend(
                procs
                    .using(parent)
                    .await
                    .into_iter()
                    .filter(|p| names_file(&p.cmdline, &whole)),
            );
        }
        users.sort_by_key(|p| p.pid);
        users.dedup();
        for p in users {
            tracing::info!(pid = p.pid, cmdline = %p.cmdline, path = %path.display(), "killing a process {why}");
            match procs.kill(&p).await {
                Ok(()) => swept.tool_processes.push(p.pid),
                Err(e) => tracing::warn!(pid = p.pid, error = %e, "killing a process {why}"),
            }
        }
    }

    /// Content dirs (`<kernels|images>/<digest>`) no record points at: a
    /// publish whose record was never written.
    async fn sweep_asset_dirs(&self, swept: &mut Swept) -> Result<(), CoreError> {
        let kernels: Vec<String> = self
            .db(Store::list_assets::<KernelRecord>)
            .await?
            .into_iter()
            .map(|k| k.digest)
            .collect();
        let images: Vec<String> = self
            .db(Store::list_assets::<ImageRecord>)
            .await?
            .into_iter()
            .map(|i| i.digest)
            .collect();
        for (root, known) in [
            (self.config().kernels_dir(), kernels),
            (self.config().images_dir(), images),
        ] {
            for (name, path, is_dir) in entries(&root).await? {
                // Content dirs are named by their sha256; anything else
                // there is not one of them.
                let digest_shaped = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                if !is_dir || !digest_shaped || known.contains(&name) {
                    continue;
                }
                tracing::info!(dir = %path.display(), "removing asset content no record points at");
                tokio::fs::remove_dir_all(&path)
                    .await
                    .map_err(InternalError::io("removing", &path))?;
                swept.asset_dirs.push(path);
            }
        }
        Ok(())
    }
}

/// Names of banger's shape (`bg-<12 hex>`) whose id no record starts
/// with; any other name is someone else's.
fn orphan_taps(names: Vec<String>, known: &BTreeSet<String>) -> Vec<TapName> {
    names
        .into_iter()
        .filter_map(|n| TapName::parse(&n).ok())
        .filter(|t| !known.iter().any(|id| id.starts_with(t.vm_id_prefix())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_files_name_their_vm_and_others_do_not() {
        for (name, id) in [
            ("0123456789abcdef.sock", Some("0123456789abcdef")),
            ("0123456789abcdef.vsock_1052", Some("0123456789abcdef")),
            ("0123456789abcdef.agent", Some("0123456789abcdef")),
            ("helper.sock", None),
            ("0123456789ABCDEF.sock", None),
            ("nat-forwarding", None),
        ] {
            assert_eq!(id_of_runtime_file(name), id, "{name}");
        }
    }

    #[test]
    fn a_file_is_named_whole_or_as_an_options_value() {
        let f = "/s/vms/0123456789abcdef/root.ext4";
        for yes in [
            "cp --sparse=always /base /s/vms/0123456789abcdef/root.ext4",
            "dd if=/dev/zero of=/s/vms/0123456789abcdef/root.ext4 bs=1M",
            "qemu -drive file=/s/vms/0123456789abcdef/root.ext4,format=raw",
        ] {
            assert!(names_file(yes, f), "{yes}");
        }
        for no in [
            "less /s/vms/0123456789abcdef/console.log",
            "cp /s/vms/0123456789abcdef/root.ext4.bak /x",
        ] {
            assert!(!names_file(no, f), "{no}");
        }
    }

    #[test]
    fn command_lines_name_vm_ids_under_a_dir_only_in_banger_shape() {
        let dir = Path::new("/run/banger/vms");
        assert_eq!(
            ids_named(
                "qemu -qmp unix:/run/banger/vms/0123456789abcdef.sock,server -chardev socket,path=/run/banger/vms/fedcba9876543210.agent",
                dir
            ),
            ["0123456789abcdef", "fedcba9876543210"]
        );
        assert_eq!(
            ids_named("cp x /run/banger/vms/0123456789abcdef/root.ext4", dir),
            ["0123456789abcdef"]
        );
        for other in [
            "cat /run/banger/vms/helper.sock",
            "cat /run/banger/vmsx/0123456789abcdef.sock",
            "cat /run/banger/vms/0123456789ABCDEF.sock",
            "sleep 1",
        ] {
            assert!(ids_named(other, dir).is_empty(), "{other}");
        }
    }

    #[test]
    fn only_taps_of_banger_shape_and_unknown_id_are_orphans() {
        let known: BTreeSet<String> = ["aaaaaaaaaaaa0001".to_owned()].into();
        let names = [
            "bg-aaaaaaaaaaaa",
            "bg-bbbbbbbbbbbb",
            "bg-weird",
            "eth0",
            "banger0",
            "fg-bbbbbbbbbbbb",
        ]
        .map(str::to_owned)
        .to_vec();
        let orphans: Vec<String> = orphan_taps(names, &known)
            .into_iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(orphans, ["bg-bbbbbbbbbbbb"]);
    }
}
