use super::*;

#[test]
fn prepare_rootfs_strips_identity_and_moves_root_home() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc/ssh")).expect("mkdir");
    std::fs::create_dir_all(root.join("root/.config")).expect("mkdir");
    std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "k").expect("w");
    std::fs::write(root.join("etc/ssh/sshd_config"), "c").expect("w");
    std::fs::write(root.join("etc/machine-id"), "abc\n").expect("w");
    std::fs::write(root.join("root/.bashrc"), "rc").expect("w");
    let seed = dir.path().join("seed");
    prepare_rootfs(&root, &seed).expect("prepare");
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(root.join("etc/ssh/sshd_config").exists());
    assert_eq!(std::fs::read(root.join("etc/machine-id")).expect("r"), b"");
    assert!(root.join("root").is_dir());
    assert_eq!(std::fs::read_dir(root.join("root")).expect("r").count(), 0);
    assert_eq!(std::fs::read(seed.join(".bashrc")).expect("r"), b"rc");
    assert!(seed.join(".config").is_dir());
}

mod import {
    use std::sync::Arc;

    use banger_api::asset::{ImageImportRequest, ImageInit, ImageRecord};
    use banger_config::Config;
    use banger_host::disk::{DiskCall, FakeDisks, GuestNode};
    use banger_store::Store;

    use crate::core::Core;
    use crate::{Command, ProgressSink, Reply};

    struct Env {
        core: Core,
        disks: Arc<FakeDisks>,
        dir: tempfile::TempDir,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, run) = (dir.path().join("state"), dir.path().join("run"));
        let agent = dir.path().join("banger-agent");
        std::fs::write(&agent, b"\x7fELF agent").expect("agent");
        let cfg = Config::load_with(|k| match k {
            "BANGER_GUEST_AGENT" => Some(agent.display().to_string()),
            "BANGER_CONFIG" => Some("/dev/null".into()),
            "BANGER_STATE_DIR" => Some(state.display().to_string()),
            "BANGER_RUNTIME_DIR" => Some(run.display().to_string()),
            "BANGER_AUTO_PROVISION" => Some("false".into()),
            _ => None,
        })
        .expect("config");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        let fakes = crate::testing::fake_deps();
        let disks = fakes.disks.clone();
        Env {
            core: Core::new(cfg, store, fakes.deps),
            disks,
            dir,
        }
    }

    async fn import(core: &Core, req: ImageImportRequest) -> ImageRecord {
        match core
            .execute(Command::ImageImport(req), &ProgressSink::discard())
            .await
            .expect("import")
        {
            Reply::Image(i) => i,
            other => panic!("{other:?}"),
        }
    }

    /// Enough of an ext4 file for the import's check: the superblock magic.
    fn ext4_file(env: &Env) -> String {
        let mut sb = vec![0u8; 2048];
        sb[1080..1082].copy_from_slice(&[0x53, 0xef]);
        let p = env.dir.path().join("src.ext4");
        std::fs::write(&p, sb).expect("ext4");
        p.display().to_string()
    }

    #[tokio::test]
    async fn an_ext4_import_reads_its_init_from_the_copy() {
        let env = env();
        for (p, n) in [
            ("/sbin", GuestNode::Symlink("usr/sbin".into())),
            ("/usr", GuestNode::Dir),
            ("/usr/sbin", GuestNode::Dir),
            (
                "/usr/sbin/init",
                GuestNode::Symlink("../lib/systemd/systemd".into()),
            ),
            ("/usr/lib", GuestNode::Dir),
            ("/usr/lib/systemd", GuestNode::Dir),
            ("/usr/lib/systemd/systemd", GuestNode::File),
        ] {
            env.disks.set_node(p, n);
        }
        let src = ext4_file(&env);
        let req = |name: &str| ImageImportRequest {
            name: name.into(),
            rootfs: Some(src.clone()),
            dir: None,
        };
        let rec = import(&env.core, req("sd")).await;
        assert_eq!(rec.init, ImageInit::Systemd);
        let images: Vec<_> = env
            .disks
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                DiskCall::Node { image, .. } => Some(image),
                _ => None,
            })
            .collect();
        assert!(!images.is_empty());
        assert!(
            images
                .iter()
                .all(|i| i.ends_with("out/rootfs.ext4") && i.as_os_str() != src.as_str()),
            "{images:?}"
        );
        env.disks
            .set_node("/usr/sbin/init", GuestNode::Symlink("/bin/busybox".into()));
        env.disks.set_node("/bin", GuestNode::Dir);
        env.disks.set_node("/bin/busybox", GuestNode::File);
        assert_eq!(import(&env.core, req("bb")).await.init, ImageInit::Banger);
        let shown: ImageRecord = env.core.find_asset("bb").await.expect("stored");
        assert_eq!(shown.init, ImageInit::Banger);
    }

    #[tokio::test]
    async fn a_tree_import_reads_its_init_from_the_tree() {
        let env = env();
        let tree = env.dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).expect("tree");
        std::fs::create_dir_all(tree.join("sbin")).expect("tree");
        std::fs::write(tree.join("bin/busybox"), b"elf").expect("tree");
        std::os::unix::fs::symlink("../bin/busybox", tree.join("sbin/init")).expect("link");
        let req = ImageImportRequest {
            name: "bb".into(),
            rootfs: None,
            dir: Some(tree.display().to_string()),
        };
        let rec = match env
            .core
            .execute(Command::ImageImport(req), &ProgressSink::discard())
            .await
        {
            Ok(Reply::Image(i)) => i,
            Err(crate::CoreError::Unavailable(why)) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(rec.init, ImageInit::Banger);
        assert!(
            !env.disks
                .calls()
                .iter()
                .any(|c| matches!(c, DiskCall::Node { .. })),
            "a tree is read as a tree"
        );
    }
}
