//! Tier 3: the crash matrix on real processes. A bangerd built with its
//! failpoints (`--features failpoints`, scripts/test.sh builds it into
//! `target/failpoints` and names it in BANGER_FAILPOINT_DAEMON) aborts at
//! the step BANGER_FAILPOINT names, as a crash would; the next, ordinary
//! bangerd (the CLI starts it) must leave a VM a user can act on, and
//! once it is deleted nothing may be left: tap, VMM, VM dir, socket, NAT
//! rule, build dir, snapshot, asset content. Every point: create, start,
//! stop, kill, delete, the NAT toggle, snapshot, restore, image import.
//! QEMU/TCG guests in a network namespace the test makes, a fake uplink
//! for NAT in another; nothing here sends a packet outside them. The in-process matrix over every
//! point, with recording fakes, is banger-core's `vm/tests/failpoints.rs`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Lab, dir_entries, lab, skip_or_fail, wait_gone};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    Nothing,
    Created,
    CreatedWithNat,
    Running,
    RunningWithNat,
    Stopped,
    /// VM `c` snapshotted (and stopped) as `s`, VM `r` made from it.
    RestoreReady,
}

const SMALL: [&str; 6] = [
    "--memory",
    "256",
    "--root-disk",
    "1G",
    "--work-disk",
    "128M",
];

/// The image file the asset cases import (`image import imp --rootfs`).
const IMPORT: &str = "IMPORT";

/// Every failpoint, the state it needs and the command that reaches it.
fn cases() -> Vec<(&'static str, Prep, &'static [&'static str])> {
    const CREATE: &[&str] = &["vm", "create", "--name", "c"];
    const START: &[&str] = &["vm", "start", "c"];
    const STOP: &[&str] = &["vm", "stop", "c"];
    const KILL: &[&str] = &["vm", "kill", "c"];
    const DELETE: &[&str] = &["vm", "delete", "c"];
    const NAT_ON: &[&str] = &["vm", "set", "c", "--nat", "on"];
    const SNAPSHOT: &[&str] = &["vm", "snapshot", "c", "--name", "s"];
    const RESTORE: &[&str] = &["vm", "start", "r"];
    const IMAGE_IMPORT: &[&str] = &["image", "import", "imp", "--rootfs", IMPORT];
    let groups: [(&[&'static str], Prep, &'static [&'static str]); 11] = [
        (
            &["create.validated", "create.recorded"],
            Prep::Nothing,
            CREATE,
        ),
        (
            &[
                "start.recorded_starting",
                "start.address_allocated",
                "start.disks_made",
                "start.guest_config_written",
                "start.bridge_up",
                "start.tap_recorded",
                "start.tap_created",
                "start.vmm_launched",
                "start.agent_answered",
                "start.recorded_running",
            ],
            Prep::Created,
            START,
        ),
        (&["start.capabilities_on"], Prep::CreatedWithNat, START),
        (
            &[
                "stop.recorded_stopping",
                "stop.guest_asked",
                "stop.vmm_gone",
                "stop.cleaned_up",
            ],
            Prep::Running,
            STOP,
        ),
        (
            &["cleanup.vmm_killed", "cleanup.tap_deleted"],
            Prep::Running,
            KILL,
        ),
        (&["cleanup.nat_removed"], Prep::RunningWithNat, KILL),
        (
            &["delete.cleaned_up", "delete.record_removed"],
            Prep::Stopped,
            DELETE,
        ),
        (&["set.capabilities_changed"], Prep::Running, NAT_ON),
        (
            &[
                "snapshot.paused",
                "snapshot.state_saved",
                "snapshot.published",
                "snapshot.vm_on_again",
            ],
            Prep::Running,
            SNAPSHOT,
        ),
        (
            &["restore.disks_restored", "restore.identity_taken"],
            Prep::RestoreReady,
            RESTORE,
        ),
        (
            &["asset.staged", "asset.published"],
            Prep::Nothing,
            IMAGE_IMPORT,
        ),
    ];
    groups
        .into_iter()
        .flat_map(|(points, prep, op)| points.iter().map(move |p| (*p, prep, op)))
        .collect()
}

fn failpoint_daemon() -> Option<PathBuf> {
    match std::env::var_os("BANGER_FAILPOINT_DAEMON").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            skip_or_fail(
                "crash matrix",
                "BANGER_FAILPOINT_DAEMON is unset (scripts/test.sh builds bangerd --features failpoints)",
            );
            None
        }
    }
}

fn state_of(lab: &Lab, vm: &str) -> Option<String> {
    let out = lab.banger(&["vm", "show", vm, "--json"]);
    out.status.success().then(|| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["state"].as_str().unwrap_or_default().to_owned()
    })
}

fn must(lab: &Lab, args: &[&str]) -> Result<(), String> {
    let out = lab.banger(args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "banger {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn create(lab: &Lab, name: &str, extra: &[&str]) {
    let mut args = vec!["vm", "create", "--name", name];
    args.extend(SMALL);
    args.extend(extra);
    lab.ok(&args);
}

fn prepare(lab: &Lab, prep: Prep) {
    match prep {
        Prep::Nothing => {}
        Prep::Created => create(lab, "c", &[]),
        Prep::CreatedWithNat => create(lab, "c", &["--nat"]),
        Prep::Running | Prep::Stopped | Prep::RestoreReady => {
            create(lab, "c", &[]);
            lab.ok(&["vm", "start", "c"]);
        }
        Prep::RunningWithNat => {
            create(lab, "c", &["--nat"]);
            lab.ok(&["vm", "start", "c"]);
        }
    }
    match prep {
        Prep::Stopped => drop(lab.ok(&["vm", "kill", "c"])),
        Prep::RestoreReady => {
            lab.ok(&["vm", "snapshot", "c", "--name", "s", "--stop"]);
            lab.ok(&["vm", "create", "--snapshot", "s", "--name", "r"]);
        }
        _ => {}
    }
}

/// After the crash: each VM the crash left settles where a user can act
/// on it, then starts, stops and goes.
fn act_on_vm(lab: &Lab, vm: &str) -> Result<(), String> {
    let Some(mut state) = state_of(lab, vm) else {
        return Ok(());
    };
    if state == "starting" {
        // The new daemon took the start over: watch it end.
        let _ = lab.banger(&["vm", "start", vm]);
        state = state_of(lab, vm).unwrap_or_default();
    }
    match state.as_str() {
        "running" | "paused" => must(lab, &["vm", "kill", vm])?,
        "created" | "stopped" | "error" => {}
        other => return Err(format!("vm {vm} stuck {other}")),
    }
    must(lab, &["vm", "start", vm])?;
    must(lab, &["vm", "kill", vm])?;
    must(lab, &["vm", "delete", vm])
}

/// Every VM, then every snapshot and the imported image: each must be
/// usable (a snapshot restores, an image verifies) and removable.
fn act_on(lab: &Lab) -> Result<(), String> {
    let vms = lab.json(&["vm", "list", "--json"]);
    let names: Vec<String> = vms
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    // A restored VM first: its snapshot is in use until it goes.
    for vm in names.iter().rev() {
        act_on_vm(lab, vm)?;
    }
    let snaps = lab.json(&["snapshot", "list", "--json"]);
    for s in snaps.as_array().into_iter().flatten() {
        let name = s["name"].as_str().ok_or("a snapshot without a name")?;
        must(
            lab,
            &["vm", "create", "--snapshot", name, "--name", "again"],
        )?;
        act_on_vm(lab, "again")?;
        must(lab, &["snapshot", "rm", name])?;
    }
    if lab.banger(&["image", "show", "imp"]).status.success() {
        must(lab, &["image", "show", "imp", "--verify"])?;
        must(lab, &["image", "rm", "imp"])?;
    }
    Ok(())
}

/// A small ext4 image with an init, for the asset cases.
fn import_source(lab: &Lab) -> PathBuf {
    let root = lab.env.dir.path().join("import-root");
    std::fs::create_dir_all(root.join("sbin")).expect("mkdir");
    std::fs::write(root.join("sbin/init"), b"#!/bin/sh\n").expect("init");
    let file = lab.env.dir.path().join("import.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&file)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (scripts/setup.sh installs e2fsprogs)");
    assert!(st.success(), "mkfs.ext4");
    file
}

#[test]
fn a_daemon_that_dies_at_a_step_leaves_a_vm_a_user_can_act_on_and_nothing_behind() {
    let Some(lab) = lab() else { return };
    let Some(fp) = failpoint_daemon() else { return };
    // NAT's cases need a way out: a fake one, in a namespace of its own.
    let _up = lab.uplink();
    let import = import_source(&lab);
    let import = import.to_str().expect("utf8 path");
    let assets = |kind: &str| dir_entries(&lab.env.state_dir().join(kind));
    let baseline = (assets("kernels"), assets("images"));
    let t = Instant::now();
    let (mut tried, mut unreached, mut broken) = (0, Vec::new(), Vec::new());
    for (point, prep, op) in cases() {
        let _ = lab.banger(&["daemon", "stop"]);
        prepare(&lab, prep);
        lab.ok(&["daemon", "stop"]);
        let started = lab
            .command()
            .env("BANGER_DAEMON_BIN", &fp)
            .env("BANGER_FAILPOINT", point)
            .args(["daemon", "start"])
            .output()
            .expect("start the failpoint daemon");
        assert!(started.status.success(), "{point}: {started:?}");
        let pid = lab.daemon_pid();
        let mut args: Vec<&str> = op
            .iter()
            .map(|a| if *a == IMPORT { import } else { a })
            .collect();
        if op[1] == "create" {
            args.extend(SMALL);
        }
        // Its answer is a broken connection when the daemon dies.
        let _ = lab.banger(&args);
        if !wait_gone(pid, Duration::from_secs(5)) {
            unreached.push(point);
            let _ = Command::new("kill").arg(pid.to_string()).status();
            wait_gone(pid, Duration::from_secs(20));
        } else {
            tried += 1;
        }
        // The next command starts an ordinary daemon: reconcile, sweep.
        if let Err(e) = act_on(&lab) {
            eprintln!("{}", lab.diagnostics());
            broken.push(format!("{point}: {e}"));
            // What is left is the next case's problem otherwise.
            for vm in ["again", "r", "c"] {
                let _ = lab.banger(&["vm", "kill", vm]);
                let _ = lab.banger(&["vm", "delete", vm]);
            }
            let _ = lab.banger(&["snapshot", "rm", "s"]);
            let _ = lab.banger(&["image", "rm", "imp", "--force"]);
        }
        lab.assert_no_leaks();
        assert_eq!(
            (assets("kernels"), assets("images")),
            baseline,
            "{point}: asset content dirs"
        );
        let snaps = assets("snapshots");
        assert!(snaps.is_empty(), "{point}: leaked snapshot dirs {snaps:?}");
    }
    println!(
        "figure: crash matrix (real bangerd aborts): {tried} points tried, {} unreached, {} left a vm a user could not act on, 0 leaks (checked after each), {:.0}s",
        unreached.len(),
        broken.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(unreached.is_empty(), "points never reached: {unreached:?}");
    assert!(broken.is_empty(), "{broken:#?}");
    lab.ok(&["daemon", "stop"]);
}

/// The failpoints the daemon's sources name (`failpoint!("…")`).
fn points_in_sources() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, found: &mut std::collections::BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, found);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read");
                for (at, _) in text.match_indices("failpoint!(\"") {
                    let rest = &text[at + "failpoint!(\"".len()..];
                    if let Some(end) = rest.find('"') {
                        found.insert(rest[..end].to_owned());
                    }
                }
            }
        }
    }
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = std::collections::BTreeSet::new();
    for krate in std::fs::read_dir(&crates).expect("crates").flatten() {
        let src = krate.path().join("src");
        if src.is_dir() {
            walk(&src, &mut found);
        }
    }
    found
}

/// A point added to the daemon without a case here would go untried.
#[test]
fn the_matrix_has_a_case_for_every_failpoint_in_the_sources() {
    let cases: std::collections::BTreeSet<String> =
        cases().into_iter().map(|(p, _, _)| p.to_owned()).collect();
    let sources = points_in_sources();
    assert!(sources.len() >= 30, "found only {sources:?}");
    assert_eq!(cases, sources);
}
