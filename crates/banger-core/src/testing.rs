//! Fixtures for tests of the core and the layers above it.

use banger_api::asset::{AssetFile, ImageRecord, KernelRecord};
use banger_store::Store;
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
            digest: "00".into(),
            created_at: now,
        })
        .expect("seed image");
}
