//! Boot assets through the CLI and daemon: imports, `kernel add` from a
//! Debian package (served by a stand-in `apt-get`), bad input, locks and
//! cancellation.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::asset::KernelAddRequest;
use common::stream::{Outcome, Stream};
use common::{Env, dir_entries, fake_elf, wait};

/// Builds `<dir>/<pkg>.deb` with `dpkg-deb` from `files` and `depends`.
fn build_deb(dir: &Path, pkg: &str, depends: &str, files: &[(&str, Vec<u8>)]) {
    let root = dir.join(format!("{pkg}-root"));
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir");
    let mut control = format!(
        "Package: {pkg}\nVersion: 6.1.99-1\nArchitecture: amd64\nMaintainer: test <t@example.invalid>\nDescription: test kernel\n"
    );
    if !depends.is_empty() {
        control.push_str(&format!("Depends: {depends}\n"));
    }
    std::fs::write(root.join("DEBIAN/control"), control).expect("control");
    for (path, data) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("file");
    }
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(dir.join(format!("{pkg}.deb")))
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stand-in `apt-get` that "downloads" from `repo`, after sleeping for
/// the seconds in `<dir>/apt-delay` (0 when absent). Its first line says
/// its pid: the daemon streams it as a `download` stage, so a test knows
/// the download runs and which process runs it.
fn fake_apt(env: &Env, repo: &Path) -> PathBuf {
    let script = env.dir.path().join("fake-apt-get");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# args: -q download PKG\necho \"Get:0 $3 pid $$\"\nsleep \"$(cat {dir}/apt-delay 2>/dev/null || echo 0)\"\nif [ -f \"{repo}/$3.deb\" ]; then cp \"{repo}/$3.deb\" .; echo \"Get:1 $3\"; else echo \"E: Unable to locate package $3\" >&2; exit 100; fi\n",
            repo = repo.display(),
            dir = env.dir.path().display(),
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

fn kernel_repo(env: &Env) -> PathBuf {
    let repo = env.dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    let ver = "6.1.99-test";
    let m = format!("lib/modules/{ver}");
    build_deb(
        &repo,
        "linux-image-real",
        "",
        &[
            (&format!("boot/vmlinuz-{ver}"), fake_elf(64 * 1024)),
            (
                &format!("{m}/modules.dep"),
                b"kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n".to_vec(),
            ),
            (
                &format!("{m}/modules.builtin"),
                b"kernel/drivers/net/virtio_net.ko\nkernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko\nkernel/drivers/char/virtio_console.ko\n".to_vec(),
            ),
            (&format!("{m}/kernel/drivers/virtio/virtio.ko"), b"ko virtio".to_vec()),
            (&format!("{m}/kernel/drivers/virtio/virtio_mmio.ko"), b"ko mmio".to_vec()),
            (&format!("{m}/kernel/drivers/block/virtio_blk.ko"), b"ko blk".to_vec()),
        ],
    );
    build_deb(
        &repo,
        "linux-image-meta",
        "linux-image-real (= 6.1.99-1)",
        &[],
    );
    repo
}

fn with_apt<'a>(env: &'a Env, apt: &Path) -> impl Fn(&[&str]) -> std::process::Output + 'a {
    let apt = apt.to_owned();
    move |args: &[&str]| {
        env.command(common::BANGER)
            .env("BANGER_APT_GET_BIN", &apt)
            .args(args)
            .output()
            .expect("banger")
    }
}

fn write_init(env: &Env) {
    std::fs::write(env.dir.path().join("fake-init"), fake_elf(4096)).expect("init");
}

#[test]
fn kernel_add_follows_the_metapackage_and_builds_an_initramfs() {
    let env = Env::new();
    write_init(&env);
    let repo = kernel_repo(&env);
    let apt = fake_apt(&env, &repo);
    // The daemon runs the tool: it must be started with the variable.
    let banger = with_apt(&env, &apt);
    let out = banger(&[
        "kernel",
        "add",
        "k1",
        "--from-debian",
        "linux-image-meta",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let k: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(k["version"], "6.1.99-test");
    assert_eq!(k["source"], "debian:linux-image-real=6.1.99-1");
    assert_eq!(
        k["modules"],
        serde_json::json!(["virtio", "virtio_mmio", "virtio_blk"])
    );
    let initrd = k["initrd"]["path"].as_str().expect("initrd path");
    let vmlinux = k["vmlinux"]["path"].as_str().expect("vmlinux path");
    assert!(
        vmlinux.starts_with(env.state_dir().join("kernels").to_str().expect("utf8")),
        "{vmlinux}"
    );
    assert_eq!(
        std::fs::read(vmlinux).expect("vmlinux"),
        fake_elf(64 * 1024)
    );
    let listing = Command::new("cpio")
        .args(["-t", "-F", initrd])
        .output()
        .expect("cpio");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "init",
        "etc/banger/modules.order",
        "lib/modules/6.1.99-test/kernel/drivers/block/virtio_blk.ko",
        "dev/console",
    ] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} not in initramfs:\n{listing}"
        );
    }
    env.ok(&["kernel", "show", "k1", "--verify"]);
    let list = env.ok(&["kernel", "list"]);
    assert!(
        list.contains("k1") && list.contains("6.1.99-test"),
        "{list}"
    );
    assert!(
        dir_entries(&env.state_dir().join("tmp")).is_empty(),
        "work dirs left behind"
    );

    // Same name again: refused, nothing changes.
    let out = banger(&["kernel", "add", "k1", "--from-debian", "linux-image-meta"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // A package that does not exist: the tool's own words come through.
    let out = banger(&["kernel", "add", "k2", "--from-debian", "linux-image-nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unable to locate package"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.json(&["kernel", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    env.ok(&["kernel", "rm", "k1"]);
    assert_eq!(
        env.json(&["kernel", "list", "--json"]),
        serde_json::json!([])
    );
    assert!(
        dir_entries(&env.state_dir().join("kernels")).is_empty(),
        "content dir removed with its last record"
    );
}

#[test]
fn imports_validate_their_input_and_rm_respects_users() {
    let env = Env::new();
    let junk = env.dir.path().join("junk");
    std::fs::write(&junk, b"this is not a kernel").expect("junk");
    let err = env.fails(&[
        "kernel",
        "import",
        "bad",
        "--vmlinux",
        junk.to_str().expect("utf8"),
    ]);
    assert!(err.contains("not a kernel image"), "{err}");
    let err = env.fails(&[
        "kernel",
        "import",
        "bad",
        "--vmlinux",
        "/nonexistent/vmlinux",
    ]);
    assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    let err = env.fails(&[
        "image",
        "import",
        "bad",
        "--rootfs",
        junk.to_str().expect("utf8"),
    ]);
    assert!(err.contains("not an ext4"), "{err}");
    let err = env.fails(&[
        "kernel",
        "import",
        "Bad_Name",
        "--vmlinux",
        junk.to_str().expect("utf8"),
    ]);
    assert!(err.contains("lowercase"), "{err}");
    assert_eq!(
        env.json(&["kernel", "list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        env.json(&["image", "list", "--json"]),
        serde_json::json!([])
    );

    env.seed_assets();
    let img = env.json(&["image", "show", "default", "--verify", "--json"]);
    let rootfs = img["rootfs"]["path"].as_str().expect("path").to_owned();
    // An ext4 file imports as is.
    env.ok(&["image", "import", "copy", "--rootfs", &rootfs]);
    env.ok(&["vm", "create", "--name", "user", "--image", "copy"]);
    let err = env.fails(&["image", "rm", "copy"]);
    assert!(err.contains("user") && err.contains("--force"), "{err}");
    env.ok(&["image", "rm", "copy", "--force"]);
    // The shared content dir stays: `default` still uses the same bytes.
    env.ok(&["image", "show", "default", "--verify"]);

    // Corruption is caught by --verify.
    std::fs::write(&rootfs, b"scribbled").expect("corrupt");
    let err = env.fails(&["image", "show", "default", "--verify"]);
    assert!(err.contains("changed on disk"), "{err}");
}

fn add_request(name: &str) -> serde_json::Value {
    serde_json::to_value(KernelAddRequest {
        name: name.to_owned(),
        package: Some("linux-image-real".to_owned()),
    })
    .expect("request")
}

/// Waits for the stand-in apt-get's first line; returns its pid.
fn apt_started(add: &mut Stream) -> i32 {
    let p = add.wait_progress(Duration::from_secs(30), |p| {
        p.stage == "download" && p.detail.contains(" pid ")
    });
    let (_, pid) = p.detail.rsplit_once(" pid ").expect("pid");
    pid.trim().parse().expect("a pid")
}

/// `kernel add NAME` of `linux-image-real` as a stream, returned once the
/// download runs (and so the build holds the name).
fn add_streamed(env: &Env, name: &str) -> Stream {
    let mut add = Stream::post(&env.socket(), "/v1/kernels/add", Some(&add_request(name)));
    apt_started(&mut add);
    add
}

#[test]
fn a_second_add_of_the_same_name_waits_and_a_cancelled_add_leaves_nothing() {
    let env = Env::new();
    write_init(&env);
    let repo = kernel_repo(&env);
    let slow = fake_apt(&env, &repo);
    let set_delay =
        |s: u32| std::fs::write(env.dir.path().join("apt-delay"), s.to_string()).expect("delay");
    set_delay(3);
    env.command(common::BANGER)
        .env("BANGER_APT_GET_BIN", &slow)
        .args(["daemon", "start"])
        .output()
        .expect("start");

    // Two adds of one name: the second waits for the first, then finds
    // the name taken. The first is a stream, to start the second once the
    // first's download runs.
    let spawn = |name: &str| {
        env.command(common::BANGER)
            .args(["kernel", "add", name, "--from-debian", "linux-image-real"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let first = add_streamed(&env, "same");
    let t = Instant::now();
    let second = spawn("same");
    let first = first.outcome(Duration::from_secs(60));
    let second = second.wait_with_output().expect("second");
    assert!(matches!(first, Outcome::Result(_)), "{first:?}");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "second add did not wait for the first"
    );

    // rm racing a build of the same name waits for it, then removes it;
    // the content dir stays because `same` holds the same bytes.
    let racer = add_streamed(&env, "raced");
    let t = Instant::now();
    env.ok(&["kernel", "rm", "raced"]);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "rm did not wait for the build"
    );
    let raced = racer.outcome(Duration::from_secs(60));
    assert!(matches!(raced, Outcome::Result(_)), "{raced:?}");
    env.ok(&["kernel", "show", "same", "--verify"]);

    // A client that goes away leaves its add running: another client
    // watches it by id to its end.
    set_delay(3);
    let mut left = Stream::post(
        &env.socket(),
        "/v1/kernels/add",
        Some(&add_request("outlived")),
    );
    apt_started(&mut left);
    let id = left
        .operation
        .clone()
        .expect("the stream names its operation");
    drop(left);
    let watched = Stream::get(&env.socket(), &format!("/v1/operations/{id}"))
        .outcome(Duration::from_secs(60));
    assert!(matches!(watched, Outcome::Result(_)), "{watched:?}");
    env.ok(&["kernel", "show", "outlived", "--verify"]);

    // Cancel by id (a download that would take a minute): the daemon
    // kills the tool, removes its work dir, and the add ends `cancelled`.
    set_delay(60);
    let mut victim = Stream::post(
        &env.socket(),
        "/v1/kernels/add",
        Some(&add_request("cancelled")),
    );
    let apt_pid = apt_started(&mut victim);
    let id = victim.operation.clone().expect("operation id");
    let listed = env.json(&["operation", "list", "--json"]);
    let op = listed
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not in {listed}"));
    assert_eq!(op["kind"], "kernel_add");
    assert_eq!(op["target"], "cancelled");
    assert_eq!(op["cancellable"], true);
    env.ok(&["operation", "cancel", &id]);
    let ended = victim.outcome(Duration::from_secs(30));
    assert!(
        matches!(&ended, Outcome::Error(e) if e.contains("Cancelled")),
        "{ended:?}"
    );
    assert!(
        wait::exited(apt_pid, Duration::from_secs(8)),
        "the tool was not killed"
    );
    // The outcome is sent once the work was dropped, its dir with it.
    assert_eq!(
        dir_entries(&env.state_dir().join("tmp")),
        Vec::<String>::new()
    );

    // A Ctrl-C of the CLI cancels too, as `docker build`'s does.
    let mut cli = env
        .command(common::BANGER)
        .args([
            "kernel",
            "add",
            "interrupted",
            "--from-debian",
            "linux-image-real",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Nothing announces the CLI's download to the test: a bounded poll
    // of the operations list.
    let running = wait::until(Duration::from_secs(30), || {
        env.json(&["operation", "list", "--json"])
            .as_array()
            .is_some_and(|ops| {
                ops.iter()
                    .any(|o| o["target"] == "interrupted" && o["stage"]["stage"] == "download")
            })
    });
    assert!(running, "the CLI's add never reached its download");
    common::kill(cli.id() as i32, nix::sys::signal::Signal::SIGINT);
    let status = cli.wait().expect("wait");
    let mut err = String::new();
    std::io::Read::read_to_string(cli.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled operation"), "{err}");
    assert!(
        env.json(&["operation", "list", "--json"])
            .as_array()
            .is_some_and(Vec::is_empty),
        "the CLI exits once its operation is over"
    );
    assert_eq!(
        dir_entries(&env.state_dir().join("tmp")),
        Vec::<String>::new()
    );

    let names: Vec<String> = env
        .json(&["kernel", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, ["outlived", "same"]);
}

/// A stand-in debootstrap: a tiny tree with the parts banger edits.
fn fake_debootstrap(env: &Env) -> PathBuf {
    let script = env.dir.path().join("fake-debootstrap");
    std::fs::write(
        &script,
        "#!/bin/sh\n# args: --variant=minbase --include=... SUITE TARGET MIRROR\nfor a; do :; done\ntarget=$(eval echo \\${$(($#-1))})\necho \"I: Retrieving InRelease\"\nmkdir -p \"$target/etc/ssh\" \"$target/root\" \"$target/sbin\"\necho key > \"$target/etc/ssh/ssh_host_ed25519_key\"\necho id > \"$target/etc/machine-id\"\necho 'alias ll=\"ls -l\"' > \"$target/root/.bashrc\"\necho \"I: Base system installed successfully.\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn first_vm_create_provisions_the_default_kernel_and_image() {
    let env = Env::new();
    write_init(&env);
    let repo = kernel_repo(&env);
    // The default package name resolves in the stand-in archive.
    build_deb(
        &repo,
        "linux-image-cloud-amd64",
        "linux-image-real (= 6.1.99-1)",
        &[],
    );
    let apt = fake_apt(&env, &repo);
    let debootstrap = fake_debootstrap(&env);
    let out = env
        .command(common::BANGER)
        .env("BANGER_AUTO_PROVISION", "true")
        .env("BANGER_APT_GET_BIN", &apt)
        .env("BANGER_DEBOOTSTRAP_BIN", &debootstrap)
        .args(["vm", "create", "--name", "first", "--json"])
        .output()
        .expect("banger");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kernels = env.json(&["kernel", "list", "--json"]);
    assert_eq!(kernels[0]["name"], "default");
    assert_eq!(kernels[0]["source"], "debian:linux-image-real=6.1.99-1");
    let img = env.json(&["image", "show", "default", "--verify", "--json"]);
    assert_eq!(img["source"], "debootstrap:bookworm");
    assert!(img["work_seed"]["size"].as_u64().unwrap_or(0) > 0, "{img}");
    // The identity debootstrap left is gone from the image.
    let rootfs = img["rootfs"]["path"].as_str().expect("path");
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /etc/ssh", rootfs])
        .output()
        .expect("debugfs");
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("ssh_host_"),
        "host keys left in the image"
    );
    let seed = img["work_seed"]["path"].as_str().expect("seed");
    let cat = Command::new("debugfs")
        .args(["-R", "cat /.bashrc", seed])
        .output()
        .expect("debugfs");
    assert!(
        String::from_utf8_lossy(&cat.stdout).contains("alias ll"),
        "work seed holds /root"
    );

    // The second create reuses them: no tool runs (a broken apt proves it).
    let out = env
        .command(common::BANGER)
        .env("BANGER_AUTO_PROVISION", "true")
        .env("BANGER_APT_GET_BIN", "/nonexistent/apt-get")
        .args(["vm", "create", "--name", "second"])
        .output()
        .expect("banger");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Disk full mid-import: a clear error and no partial asset. Needs root to
/// mount a small tmpfs as the state dir.
#[test]
fn disk_full_mid_import_leaves_no_partial_asset() {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("disk-full test needs root in CI");
        }
        eprintln!("SKIPPED disk-full test: needs root to mount a tmpfs");
        return;
    }
    let mut env = Env::new();
    let small = env.dir.path().join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=3m"),
    )
    .expect("mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(small.clone());
    env.state = Some(small.join("state"));
    let big = env.dir.path().join("big-vmlinux");
    std::fs::write(&big, fake_elf(4 << 20)).expect("big kernel");
    let err = env.fails(&[
        "kernel",
        "import",
        "huge",
        "--vmlinux",
        big.to_str().expect("utf8"),
    ]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        env.json(&["kernel", "list", "--json"]),
        serde_json::json!([])
    );
    assert!(
        dir_entries(&env.state_dir().join("tmp")).is_empty(),
        "partial work dir left"
    );
    assert!(
        dir_entries(&env.state_dir().join("kernels")).is_empty(),
        "partial asset left"
    );
    // A small one still fits afterwards: nothing was leaked.
    let small_k = env.dir.path().join("small-vmlinux");
    std::fs::write(&small_k, fake_elf(64 << 10)).expect("small kernel");
    env.ok(&[
        "kernel",
        "import",
        "tiny",
        "--vmlinux",
        small_k.to_str().expect("utf8"),
    ]);
    env.ok(&["daemon", "stop"]);
}

#[test]
fn a_first_use_build_that_cannot_fetch_says_what_to_do_and_records_nothing() {
    let env = Env::new();
    write_init(&env);
    // An apt-get that cannot reach its sources, as on a host offline.
    let apt = env.dir.path().join("offline-apt-get");
    std::fs::write(
        &apt,
        "#!/bin/sh\necho \"E: Failed to fetch: Temporary failure resolving 'deb.debian.org'\" >&2\nexit 100\n",
    )
    .expect("write");
    std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = env
        .command(common::BANGER)
        .env("BANGER_AUTO_PROVISION", "true")
        .env("BANGER_APT_GET_BIN", &apt)
        .args(["vm", "create", "--name", "offline"])
        .output()
        .expect("banger");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("building the default kernel on first use failed")
            && err.contains("Temporary failure resolving")
            && err.contains("banger kernel import default"),
        "{err}"
    );
    assert_eq!(
        env.json(&["kernel", "list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
}
