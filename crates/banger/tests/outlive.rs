//! Tier 3: operations outlive their client (issue 16). QEMU/TCG guests
//! driven through the CLI and the daemon's socket inside a network
//! namespace the test makes; nothing here sends a packet outside it.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::stream::{Outcome, Stream};
use common::wait::{Lines, until};
use common::{Lab, kill, lab, vmm_pids};
use nix::sys::signal::Signal;

const BOOT: Duration = Duration::from_secs(180);

fn vm_names(lab: &Lab) -> Vec<String> {
    lab.json(&["vm", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The daemon removes a VM some time after its client went, and tells no
/// other client: the list and `/proc` are asked until it is gone.
fn assert_removed(lab: &Lab, name: &str, what: &str) {
    let gone = until(BOOT, || {
        !vm_names(lab).iter().any(|n| n == name)
            && vmm_pids(&lab.env.dir.path().display().to_string()).is_empty()
    });
    if !gone {
        eprintln!("{}", lab.diagnostics());
    }
    assert!(
        gone,
        "{what}: vm {name} is still there: {:?}",
        vm_names(lab)
    );
    lab.assert_no_leaks();
}

fn spawn(lab: &Lab, args: &[&str]) -> (Child, Lines) {
    let mut child = lab
        .command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("banger");
    let out = Lines::new(child.stdout.take().expect("stdout"));
    (child, out)
}

#[test]
fn a_start_whose_client_goes_runs_to_its_end_and_a_second_start_watches_it() {
    let Some(lab) = lab() else { return };
    lab.ok(&["vm", "create", "--name", "orphaned", "--memory", "512"]);
    let mut first = Stream::post(&lab.env.socket(), "/v1/vms/orphaned/start", None);
    first.wait_progress(BOOT, |p| p.stage == "agent");
    // The client goes in the middle of the start (a Ctrl-C, a closed
    // terminal): its connection closes, as a kill -9 closes it.
    drop(first);
    // A second start is not refused: it watches the one in flight, from
    // its first stage, to its end.
    let second = Stream::post(&lab.env.socket(), "/v1/vms/orphaned/start", None);
    let stages_seen = second.stages.len();
    match second.outcome(BOOT) {
        Outcome::Result(v) => assert_eq!(v["state"], "running", "{v}"),
        other => {
            eprintln!("{}", lab.diagnostics());
            panic!("the watched start: {other:?} (stages before: {stages_seen})")
        }
    }
    assert_eq!(
        lab.json(&["vm", "show", "orphaned", "--json"])["state"],
        "running"
    );
    lab.ok(&["vm", "exec", "orphaned", "--", "true"]);
    lab.ok(&["vm", "kill", "orphaned"]);
    lab.ok(&["vm", "delete", "orphaned"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn a_kill_cuts_a_start_short_and_the_vm_starts_again() {
    let Some(lab) = lab() else { return };
    lab.ok(&["vm", "create", "--name", "cut", "--memory", "512", "--cold"]);
    let mut start = Stream::post(&lab.env.socket(), "/v1/vms/cut/start", None);
    // The guest boots: without the kill the start would wait for its
    // agent, which answers seconds later.
    start.wait_progress(BOOT, |p| p.stage == "agent");
    let t = std::time::Instant::now();
    lab.ok(&["vm", "kill", "cut"]);
    let killed_in = t.elapsed();
    match start.outcome(BOOT) {
        Outcome::Error(e) => assert!(e.contains("Cancelled") && e.contains("vm kill"), "{e}"),
        other => {
            eprintln!("{}", lab.diagnostics());
            panic!("the killed start: {other:?}")
        }
    }
    let shown = lab.json(&["vm", "show", "cut", "--json"]);
    assert_eq!(shown["state"], "stopped", "{shown}");
    assert!(
        vmm_pids(&lab.env.dir.path().display().to_string()).is_empty(),
        "the cut start left its VMM"
    );
    eprintln!("kill during the agent wait returned in {killed_in:?}");
    // Stopped as after any kill: it starts and runs commands again.
    lab.ok(&["vm", "start", "cut"]);
    lab.ok(&["vm", "exec", "cut", "--", "true"]);
    lab.ok(&["vm", "kill", "cut"]);
    lab.ok(&["vm", "delete", "cut"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn vm_run_rm_whose_client_dies_during_the_boot_or_the_command_leaves_nothing() {
    let Some(lab) = lab() else { return };
    lab.ok(&["daemon", "start"]);
    for (signal, during) in [
        (Signal::SIGKILL, "boot"),
        (Signal::SIGHUP, "boot"),
        (Signal::SIGKILL, "command"),
        (Signal::SIGHUP, "command"),
    ] {
        let name = format!(
            "rm-{}-{during}",
            if signal == Signal::SIGKILL {
                "kill"
            } else {
                "hup"
            }
        );
        let what = format!("{signal} during the {during}");
        let (mut child, mut out) = spawn(
            &lab,
            &[
                "vm",
                "run",
                "--rm",
                "--name",
                &name,
                "--memory",
                "512",
                "--",
                "sh",
                "-c",
                "echo started; sleep 600",
            ],
        );
        let pid = i32::try_from(child.id()).expect("pid");
        match during {
            // The VMM runs: the guest boots (a /proc scan: the CLI
            // draws no stages off a terminal).
            "boot" => assert!(
                until(BOOT, || !vmm_pids(
                    &lab.env.dir.path().display().to_string()
                )
                .is_empty()),
                "{what}: the boot did not begin"
            ),
            // The command runs and printed.
            _ => assert!(
                out.wait_for(BOOT, |l| l.contains("started")).is_some(),
                "{what}: the command did not start: {}",
                out.seen
            ),
        }
        kill(pid, signal);
        let _ = child.wait();
        assert_removed(&lab, &name, &what);
    }
    lab.ok(&["daemon", "stop"]);
}
