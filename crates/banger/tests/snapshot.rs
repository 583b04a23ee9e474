//! Tier 3: pause, resume and the snapshot records (issue 15) on QEMU/TCG
//! guests driven through the CLI inside a network namespace the test
//! makes; nothing here sends a packet outside it.
//! Snapshots, restores and forks themselves are `snapshot_fork.rs`.

mod common;

use std::time::Duration;

use common::{Lab, lab, wait_gone};

fn sh(lab: &Lab, vm: &str, script: &str) -> String {
    lab.ok(&["vm", "exec", vm, "--", "sh", "-c", script])
}

fn stderr_of(lab: &Lab, args: &[&str]) -> String {
    let out = lab.banger(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pause_and_resume_survive_a_daemon_restart_and_unknown_snapshots_are_refused_clearly() {
    let Some(lab) = lab() else { return };
    lab.ok(&["vm", "create", "--name", "p1", "--memory", "512"]);
    assert_eq!(
        lab.json(&["vm", "start", "p1", "--json"])["state"],
        "running"
    );
    sh(&lab, "p1", "echo kept > /root/file");

    lab.ok(&["vm", "pause", "p1"]);
    assert_eq!(lab.json(&["vm", "show", "p1", "--json"])["state"], "paused");
    let why = stderr_of(&lab, &["vm", "exec", "p1", "--", "true"]);
    assert!(why.contains("vm resume"), "{why}");
    assert!(stderr_of(&lab, &["vm", "pause", "p1"]).contains("already paused"));
    // A restarted daemon finds it paused, and keeps it so.
    let pid = lab.daemon_pid();
    lab.ok(&["daemon", "stop"]);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    assert_eq!(lab.json(&["vm", "show", "p1", "--json"])["state"], "paused");
    lab.ok(&["vm", "resume", "p1"]);
    assert_eq!(
        lab.json(&["vm", "show", "p1", "--json"])["state"],
        "running"
    );
    assert_eq!(sh(&lab, "p1", "cat /root/file").trim(), "kept");
    assert!(stderr_of(&lab, &["vm", "resume", "p1"]).contains("not paused"));

    // Unknown snapshots: clear errors that say where to look.
    assert!(stderr_of(&lab, &["snapshot", "show", "nope"]).contains("banger snapshot list"));
    assert!(stderr_of(&lab, &["snapshot", "rm", "nope"]).contains("banger snapshot list"));
    assert!(
        stderr_of(&lab, &["vm", "create", "--snapshot", "nope"]).contains("banger snapshot list")
    );
    assert_eq!(
        lab.json(&["vm", "list", "--json"]).as_array().map(Vec::len),
        Some(1)
    );

    // A paused VM stops cleanly: it is resumed first.
    lab.ok(&["vm", "pause", "p1"]);
    lab.ok(&["vm", "stop", "p1"]);
    assert_eq!(
        lab.json(&["vm", "show", "p1", "--json"])["state"],
        "stopped"
    );
    lab.ok(&["vm", "delete", "p1"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}
