use std::collections::HashMap;
use std::os::unix::fs::symlink;

use super::*;

/// An image given as (path, node) pairs; everything else is missing.
async fn init_of(entries: &[(&str, GuestNode)]) -> (ImageInit, Option<PathBuf>) {
    let map: HashMap<PathBuf, GuestNode> = entries
        .iter()
        .map(|(p, n)| (PathBuf::from(p), n.clone()))
        .collect();
    let (init, target) = detect_init(|p: PathBuf| {
        std::future::ready(Ok::<_, std::convert::Infallible>(
            map.get(&p).cloned().unwrap_or(GuestNode::Missing),
        ))
    })
    .await
    .expect("infallible");
    (init, target)
}

fn link(t: &str) -> GuestNode {
    GuestNode::Symlink(t.into())
}

const DIRS: [(&str, GuestNode); 5] = [
    ("/sbin", GuestNode::Dir),
    ("/bin", GuestNode::Dir),
    ("/lib", GuestNode::Dir),
    ("/lib/systemd", GuestNode::Dir),
    ("/usr", GuestNode::Dir),
];

fn with_dirs(more: &[(&'static str, GuestNode)]) -> Vec<(&'static str, GuestNode)> {
    DIRS.iter().cloned().chain(more.iter().cloned()).collect()
}

#[tokio::test]
async fn systemd_through_an_absolute_link() {
    let img = with_dirs(&[
        ("/sbin/init", link("/lib/systemd/systemd")),
        ("/lib/systemd/systemd", GuestNode::File),
    ]);
    assert_eq!(
        init_of(&img).await,
        (ImageInit::Systemd, Some("/lib/systemd/systemd".into()))
    );
}

#[tokio::test]
async fn systemd_through_a_relative_link() {
    let img = with_dirs(&[
        ("/sbin/init", link("../lib/systemd/systemd")),
        ("/lib/systemd/systemd", GuestNode::File),
    ]);
    assert_eq!(
        init_of(&img).await,
        (ImageInit::Systemd, Some("/lib/systemd/systemd".into()))
    );
}

#[tokio::test]
async fn systemd_on_merged_usr() {
    // Debian's merged /usr: /sbin and /lib are links into /usr.
    let img = [
        ("/sbin", link("usr/sbin")),
        ("/lib", link("usr/lib")),
        ("/usr", GuestNode::Dir),
        ("/usr/sbin", GuestNode::Dir),
        ("/usr/lib", GuestNode::Dir),
        ("/usr/lib/systemd", GuestNode::Dir),
        ("/usr/sbin/init", link("../lib/systemd/systemd")),
        ("/usr/lib/systemd/systemd", GuestNode::File),
    ];
    assert_eq!(
        init_of(&img).await,
        (ImageInit::Systemd, Some("/usr/lib/systemd/systemd".into()))
    );
}

#[tokio::test]
async fn busybox_sysvinit_and_nothing_are_banger_images() {
    let busybox = with_dirs(&[
        ("/sbin/init", link("../bin/busybox")),
        ("/bin/busybox", GuestNode::File),
    ]);
    assert_eq!(
        init_of(&busybox).await,
        (ImageInit::Banger, Some("/bin/busybox".into()))
    );
    let sysvinit = with_dirs(&[("/sbin/init", GuestNode::File)]);
    assert_eq!(
        init_of(&sysvinit).await,
        (ImageInit::Banger, Some("/sbin/init".into()))
    );
    assert_eq!(init_of(&with_dirs(&[])).await, (ImageInit::Banger, None));
    assert_eq!(init_of(&[]).await, (ImageInit::Banger, None));
    let dangling = with_dirs(&[("/sbin/init", link("/lib/systemd/systemd"))]);
    assert_eq!(init_of(&dangling).await, (ImageInit::Banger, None));
    // A directory named systemd runs nothing.
    let dir = with_dirs(&[("/sbin/init", link("/lib/systemd"))]);
    assert_eq!(init_of(&dir).await, (ImageInit::Banger, None));
    let empty = with_dirs(&[("/sbin/init", link(""))]);
    assert_eq!(init_of(&empty).await, (ImageInit::Banger, None));
    let through_a_file = with_dirs(&[
        ("/sbin/init", link("/bin/sh/systemd")),
        ("/bin/sh", GuestNode::File),
    ]);
    assert_eq!(init_of(&through_a_file).await, (ImageInit::Banger, None));
}

#[tokio::test]
async fn a_symlink_loop_ends() {
    let img = with_dirs(&[
        ("/sbin/init", link("/bin/a")),
        ("/bin/a", link("../sbin/init")),
    ]);
    assert_eq!(init_of(&img).await, (ImageInit::Banger, None));
    let self_loop = with_dirs(&[("/sbin/init", link("init"))]);
    assert_eq!(init_of(&self_loop).await, (ImageInit::Banger, None));
}

#[tokio::test]
async fn links_never_lead_out_of_the_image() {
    // `..` stops at the image's root, as it does at the guest's.
    let img = with_dirs(&[
        ("/sbin/init", link("/../../lib/systemd/systemd")),
        ("/lib/systemd/systemd", GuestNode::File),
    ]);
    assert_eq!(
        init_of(&img).await,
        (ImageInit::Systemd, Some("/lib/systemd/systemd".into()))
    );
    let up = with_dirs(&[
        ("/sbin/init", link("../../../../lib/systemd/systemd")),
        ("/lib/systemd/systemd", GuestNode::File),
    ]);
    assert_eq!(init_of(&up).await.0, ImageInit::Systemd);
}

#[tokio::test]
async fn many_links_are_followed_up_to_the_limit() {
    // /sbin/init -> l1 -> l2 ... -> lN -> /lib/systemd/systemd.
    let chain = |n: usize| {
        let mut img: Vec<(String, GuestNode)> = DIRS
            .iter()
            .map(|(p, node)| ((*p).to_owned(), node.clone()))
            .collect();
        img.push(("/sbin/init".into(), link("/bin/l1")));
        for i in 1..n {
            img.push((format!("/bin/l{i}"), link(&format!("l{}", i + 1))));
        }
        img.push((format!("/bin/l{n}"), link("/lib/systemd/systemd")));
        img.push(("/lib/systemd/systemd".into(), GuestNode::File));
        img
    };
    let run = |img: Vec<(String, GuestNode)>| async move {
        let refs: Vec<(&str, GuestNode)> =
            img.iter().map(|(p, n)| (p.as_str(), n.clone())).collect();
        init_of(&refs).await.0
    };
    // /sbin/init plus n links: n + 1 links in all.
    assert_eq!(run(chain(MAX_LINKS - 1)).await, ImageInit::Systemd);
    assert_eq!(run(chain(MAX_LINKS)).await, ImageInit::Banger);
}

/// The tree variant, on real symlinks: an absolute link names a path in
/// the tree even when the host has that path.
#[tokio::test]
async fn a_tree_is_read_from_inside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(tree.join("usr/sbin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("usr/lib/systemd")).expect("mkdir");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("systemd"), "host").expect("write");
    symlink("usr/sbin", tree.join("sbin")).expect("symlink");
    let detect = |tree: PathBuf| async move {
        detect_init(|p: PathBuf| {
            let tree = tree.clone();
            async move { tree_node(&tree, &p) }
        })
        .await
        .expect("detect")
    };
    // Escapes, absolute and relative, find the host's file only if followed.
    let escape = outside.join("systemd");
    symlink(&escape, tree.join("usr/sbin/init")).expect("symlink");
    assert_eq!(detect(tree.clone()).await, (ImageInit::Banger, None));
    std::fs::remove_file(tree.join("usr/sbin/init")).expect("rm");
    symlink("../../../outside/systemd", tree.join("usr/sbin/init")).expect("symlink");
    assert_eq!(detect(tree.clone()).await, (ImageInit::Banger, None));
    std::fs::remove_file(tree.join("usr/sbin/init")).expect("rm");
    symlink("../lib/systemd/systemd", tree.join("usr/sbin/init")).expect("symlink");
    assert_eq!(detect(tree.clone()).await, (ImageInit::Banger, None));
    std::fs::write(tree.join("usr/lib/systemd/systemd"), "elf").expect("write");
    assert_eq!(
        detect(tree.clone()).await,
        (ImageInit::Systemd, Some("/usr/lib/systemd/systemd".into()))
    );
    std::fs::remove_file(tree.join("usr/sbin/init")).expect("rm");
    std::fs::write(tree.join("bin/busybox"), "elf").expect("write");
    symlink("/bin/busybox", tree.join("usr/sbin/init")).expect("symlink");
    assert_eq!(
        detect(tree).await,
        (ImageInit::Banger, Some("/bin/busybox".into()))
    );
}
