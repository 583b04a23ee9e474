//! Fixtures for tests of the core and the layers above it.

use banger_api::asset::{AssetFile, ImageRecord, KernelRecord};
use std::sync::Arc;

use banger_host::FakeProbe;
use banger_host::disk::FakeDisks;
use banger_host::dns::FakeDns;
use banger_host::firewall::FakeFirewall;
use banger_host::net::FakeNet;
use banger_store::Store;
use banger_vmm::FakeVmm;

use crate::agent::FakeAgent;
use crate::core::HostDeps;
use chrono::Utc;

use crate::assets::DEFAULT_ASSET;

fn file(p: &str) -> AssetFile {
    AssetFile {
        path: p.into(),
        sha256: "00".into(),
        size: 1,
    }
}

/// Inserts records named `default` for a kernel and an image, so VM tests
/// never trigger provisioning. The files they name do not exist.
pub fn seed_default_assets(store: &Store) {
    let now = Utc::now();
    store
        .insert_asset(&KernelRecord {
            id: "k0".into(),
            name: DEFAULT_ASSET.into(),
            version: None,
            source: "test".into(),
            vmlinux: file("/nonexistent/vmlinux"),
            initrd: None,
            modules: vec![],
            cmdline: String::new(),
            booted_on: vec![],
            digest: "00".into(),
            created_at: now,
        })
        .expect("seed kernel");
    store
        .insert_asset(&ImageRecord {
            id: "i0".into(),
            name: DEFAULT_ASSET.into(),
            source: "test".into(),
            rootfs: file("/nonexistent/rootfs.ext4"),
            work_seed: None,
            packages: vec![],
            init: banger_api::asset::ImageInit::Systemd,
            digest: "00".into(),
            created_at: now,
        })
        .expect("seed image");
}

/// Recording fakes for every host dependency, and handles on them.
#[derive(Debug)]
pub struct Fakes {
    pub deps: HostDeps,
    pub net: Arc<FakeNet>,
    pub disks: Arc<FakeDisks>,
    pub vmm: Arc<FakeVmm>,
    pub dns: Arc<FakeDns>,
    pub agent: Arc<FakeAgent>,
    pub firewall: Arc<FakeFirewall>,
    pub procs: Arc<banger_host::procs::FakeProcesses>,
}

pub fn fake_deps() -> Fakes {
    fake_deps_with(FakeProbe::new())
}

pub fn fake_deps_with(probe: FakeProbe) -> Fakes {
    let net = Arc::new(FakeNet::default());
    let disks = Arc::new(FakeDisks::default());
    let vmm = Arc::new(FakeVmm::default());
    let dns = Arc::new(FakeDns::default());
    let agent = Arc::new(FakeAgent::default());
    let firewall = Arc::new(FakeFirewall::with_uplink("eth0"));
    let procs = Arc::new(banger_host::procs::FakeProcesses::default());
    agent.set_ready(true);
    // A guest that powers off ends its (fake) VMM, found by the vsock
    // path beside the control socket.
    let running = Arc::clone(&vmm);
    *agent.on_power_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(move |vsock| {
        running
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, sock| sock.with_extension("vsock") != vsock);
    }));
    let deps = HostDeps {
        probe: Arc::new(probe),
        net: net.clone(),
        disks: disks.clone(),
        dns: dns.clone(),
        qemu: vmm.clone(),
        firecracker: None,
        agent: agent.clone(),
        firewall: firewall.clone(),
        procs: procs.clone(),
    };
    Fakes {
        deps,
        net,
        disks,
        vmm,
        dns,
        agent,
        firewall,
        procs,
    }
}

/// Writes small stand-in kernel and image files under `dir` and records
/// them as `default` with their real digests, for tests that start VMs
/// against fake host dependencies.
pub fn seed_real_default_assets(store: &Store, dir: &std::path::Path) {
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("asset file");
        let (sha256, size) = banger_assets::files::hash_file(&p).expect("hash");
        AssetFile {
            path: p.display().to_string(),
            sha256,
            size,
        }
    };
    let now = Utc::now();
    store
        .insert_asset(&KernelRecord {
            id: "k1".into(),
            name: DEFAULT_ASSET.into(),
            version: None,
            source: "test".into(),
            vmlinux: write("vmlinux", b"\x7fELF fake"),
            initrd: None,
            modules: vec![],
            cmdline: String::new(),
            booted_on: vec![],
            digest: "k".into(),
            created_at: now,
        })
        .expect("kernel");
    store
        .insert_asset(&ImageRecord {
            id: "i1".into(),
            name: DEFAULT_ASSET.into(),
            source: "test".into(),
            rootfs: write("rootfs.ext4", b"rootfs"),
            work_seed: Some(write("seed.ext4", b"seed")),
            packages: vec![],
            init: banger_api::asset::ImageInit::Systemd,
            digest: "i".into(),
            created_at: now,
        })
        .expect("image");
}
