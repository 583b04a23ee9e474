//! Tier 3: the crash matrix on real processes. A bangerd built with its
//! failpoints (`--features failpoints`, scripts/test.sh builds it into
//! `target/failpoints` and names it in BANGER_FAILPOINT_DAEMON) aborts at
//! the step BANGER_FAILPOINT names, as a crash would; the next, ordinary
//! bangerd (the CLI starts it) must leave a VM a user can act on, and
//! once it is deleted nothing may be left: tap, VMM, VM dir, socket, NAT
//! rule. QEMU/TCG guests in a network namespace the test makes; nothing
//! here sends a packet outside it. The in-process matrix over every
//! point, with recording fakes, is banger-core's `vm/tests/failpoints.rs`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Lab, lab, skip_or_fail, wait_gone};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    Nothing,
    Created,
    Running,
    Stopped,
}

const SMALL: [&str; 6] = [
    "--memory",
    "256",
    "--root-disk",
    "1G",
    "--work-disk",
    "128M",
];

fn cases() -> Vec<(&'static str, Prep, &'static [&'static str])> {
    const CREATE: &[&str] = &["vm", "create", "--name", "c"];
    const START: &[&str] = &["vm", "start", "c"];
    const STOP: &[&str] = &["vm", "stop", "c"];
    const KILL: &[&str] = &["vm", "kill", "c"];
    const DELETE: &[&str] = &["vm", "delete", "c"];
    let mut all = vec![("create.recorded", Prep::Nothing, CREATE)];
    for p in [
        "start.recorded_starting",
        "start.address_allocated",
        "start.disks_made",
        "start.guest_config_written",
        "start.tap_recorded",
        "start.tap_created",
        "start.vmm_launched",
        "start.agent_answered",
        "start.recorded_running",
    ] {
        all.push((p, Prep::Created, START));
    }
    for p in [
        "stop.recorded_stopping",
        "stop.guest_asked",
        "stop.vmm_gone",
        "stop.cleaned_up",
    ] {
        all.push((p, Prep::Running, STOP));
    }
    for p in ["cleanup.vmm_killed", "cleanup.tap_deleted"] {
        all.push((p, Prep::Running, KILL));
    }
    for p in ["delete.cleaned_up", "delete.record_removed"] {
        all.push((p, Prep::Stopped, DELETE));
    }
    all
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

fn prepare(lab: &Lab, prep: Prep) {
    if prep == Prep::Nothing {
        return;
    }
    let mut create = vec!["vm", "create", "--name", "c"];
    create.extend(SMALL);
    lab.ok(&create);
    if prep != Prep::Created {
        lab.ok(&["vm", "start", "c"]);
    }
    if prep == Prep::Stopped {
        lab.ok(&["vm", "kill", "c"]);
    }
}

/// After the crash: the VM (if the crash left one) settles where a user
/// can act on it, then starts, stops and goes.
fn act_on(lab: &Lab) -> Result<(), String> {
    let Some(mut state) = state_of(lab, "c") else {
        return Ok(());
    };
    if state == "starting" {
        // The new daemon took the start over: watch it end.
        let _ = lab.banger(&["vm", "start", "c"]);
        state = state_of(lab, "c").unwrap_or_default();
    }
    match state.as_str() {
        "running" | "paused" => must(lab, &["vm", "kill", "c"])?,
        "created" | "stopped" | "error" => {}
        other => return Err(format!("vm c stuck {other}")),
    }
    must(lab, &["vm", "start", "c"])?;
    must(lab, &["vm", "kill", "c"])?;
    must(lab, &["vm", "delete", "c"])
}

#[test]
fn a_daemon_that_dies_at_a_step_leaves_a_vm_a_user_can_act_on_and_nothing_behind() {
    let Some(lab) = lab() else { return };
    let Some(fp) = failpoint_daemon() else { return };
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
        let mut args = op.to_vec();
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
            let _ = lab.banger(&["vm", "kill", "c"]);
            let _ = lab.banger(&["vm", "delete", "c"]);
        }
        lab.assert_no_leaks();
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
