//! Tier 2/3: VMs under QEMU/TCG driven through the CLI and daemon, with the
//! bridge, taps and guests confined to a network namespace the test makes.
//! Nothing here sends a packet outside that namespace.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::stream::Stream;
use common::{kill, lab, vmm_pids, wait_gone};
use nix::sys::signal::Signal;

fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn vm_boots_answers_ping_stops_restarts_with_its_disks_and_deletes_cleanly() {
    let Some(lab) = lab() else { return };
    lab.ok(&[
        "vm",
        "create",
        "--name",
        "t1",
        "--memory",
        "512",
        "--root-disk",
        "2G",
        "--work-disk",
        "1G",
    ]);
    let t = Instant::now();
    let started = lab.json(&["vm", "start", "t1", "--json"]);
    let start_took = t.elapsed();
    assert_eq!(started["state"], "running");
    let ip = started["runtime"]["guest_ip"]
        .as_str()
        .expect("ip")
        .to_owned();
    let boot = lab.wait_ping(&ip, Duration::from_secs(90));
    println!(
        "figure: vm start returned in {:.2}s; guest answered ping {:.2}s later (QEMU/TCG)",
        start_took.as_secs_f64(),
        boot.as_secs_f64()
    );
    let tap = format!("bg-{}", &started["id"].as_str().expect("id")[..12]);
    assert!(lab.ns.links().contains(&tap), "tap {tap} on the bridge");
    let logs = lab.ok(&["vm", "logs", "t1"]);
    assert!(logs.contains("banger-init: switching root"), "{logs}");
    assert_eq!(lab.resolve("t1.vm"), ip, "banger's DNS names the live VM");

    // Graceful stop (the agent asks the guest to power off); disks stay.
    let t = Instant::now();
    lab.ok(&["vm", "stop", "t1"]);
    println!(
        "figure: graceful vm stop took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let v = lab.json(&["vm", "show", "t1", "--json"]);
    assert_eq!(v["state"], "stopped");
    let logs = lab.ok(&["vm", "logs", "t1", "-n", "5"]);
    assert!(
        logs.contains("reboot: Power down"),
        "the guest shut itself down (not killed):\n{logs}"
    );
    assert!(!lab.ns.links().contains(&tap), "tap removed on stop");
    assert_eq!(lab.resolve("t1.vm"), "", "a stopped VM is not in DNS");
    let work = PathBuf::from(v["runtime"]["work_disk_path"].as_str().expect("work disk"));
    let root = PathBuf::from(v["runtime"]["root_disk_path"].as_str().expect("root disk"));
    assert_eq!(
        debugfs_cat(&root, "/etc/hostname"),
        "t1\n",
        "guest config in the VM's own disk"
    );
    // A file written to the work disk while the VM is down survives start
    // and stop: the disk is the VM's, not recreated.
    let marker = lab.env.dir.path().join("marker");
    std::fs::write(&marker, "kept\n").expect("marker");
    let st = Command::new("debugfs")
        .args(["-w", "-R", &format!("write {} /marker", marker.display())])
        .arg(&work)
        .status()
        .expect("debugfs");
    assert!(st.success());
    lab.ok(&["vm", "start", "t1"]);
    lab.wait_ping(&ip, Duration::from_secs(90));
    lab.ok(&["vm", "stop", "t1"]);
    assert_eq!(debugfs_cat(&work, "/marker"), "kept\n");

    lab.ok(&["vm", "delete", "t1"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn a_killed_daemon_comes_back_adopting_live_vms_and_cleaning_dead_ones() {
    let Some(lab) = lab() else { return };
    lab.ok(&[
        "vm",
        "create",
        "--name",
        "live",
        "--memory",
        "512",
        "--root-disk",
        "2G",
        "--work-disk",
        "256M",
    ]);
    lab.ok(&[
        "vm",
        "create",
        "--name",
        "dies",
        "--memory",
        "512",
        "--root-disk",
        "2G",
        "--work-disk",
        "256M",
    ]);
    let live = lab.json(&["vm", "start", "live", "--json"]);
    let dies = lab.json(&["vm", "start", "dies", "--json"]);
    let ip = live["runtime"]["guest_ip"].as_str().expect("ip").to_owned();
    lab.wait_ping(&ip, Duration::from_secs(90));

    // (b) kill -9 while VMs run; one VMM dies too while the daemon is away,
    // and the other's handles.json is corrupted.
    let pid = lab.daemon_pid();
    kill(pid, Signal::SIGKILL);
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let dies_sock = dies["runtime"]["api_socket"]
        .as_str()
        .expect("sock")
        .to_owned();
    for p in vmm_pids(&dies_sock) {
        kill(p, Signal::SIGKILL);
    }
    let live_dir = PathBuf::from(live["runtime"]["vm_dir"].as_str().expect("dir"));
    std::fs::write(live_dir.join("handles.json"), b"{corrupt").expect("corrupt");

    let vms = lab.json(&["vm", "list", "--json"]);
    let state = |name: &str| {
        vms.as_array()
            .expect("array")
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| {
                (
                    v["state"].as_str().unwrap_or("").to_owned(),
                    v["runtime"]["last_error"].clone(),
                )
            })
            .expect("vm")
    };
    assert_eq!(
        state("live").0,
        "running",
        "adopted by socket search despite the corrupt scratch file"
    );
    assert_eq!(state("dies").0, "stopped");
    assert!(state("dies").1.as_str().unwrap_or("").contains("restarted"));
    let dies_tap = format!("bg-{}", &dies["id"].as_str().expect("id")[..12]);
    assert!(!lab.ns.links().contains(&dies_tap), "dead vm's tap cleaned");
    assert!(
        lab.ns.ping(&ip) || {
            lab.wait_ping(&ip, Duration::from_secs(10));
            true
        },
        "adopted vm still reachable"
    );

    // The adopted VM is fully controllable.
    lab.ok(&["vm", "kill", "live"]);
    assert_eq!(
        lab.json(&["vm", "show", "live", "--json"])["state"],
        "stopped"
    );
    // A killed VM's disks need journal recovery: the next start does it.
    lab.ok(&["vm", "start", "live"]);
    lab.ok(&["vm", "kill", "live"]);

    // (a) kill -9 in the middle of a start: once the VMM is launched and
    // the daemon waits for the guest agent (the `agent` stage).
    let pid = lab.daemon_pid();
    let mut starter = Stream::post(&lab.env.socket(), "/v1/vms/live/start", None);
    starter.wait_progress(Duration::from_secs(120), |p| p.stage == "agent");
    kill(pid, Signal::SIGKILL);
    // Whatever the stream says last, the record must settle below.
    let _ = starter.outcome(Duration::from_secs(10));
    assert!(wait_gone(pid, Duration::from_secs(5)));
    // The next daemon takes the start over: running only once the agent
    // answers, and a `vm start` watches it to its end (or, if it ended
    // already, finds the VM running).
    let again = lab.banger(&["vm", "start", "live", "--json"]);
    let after = lab.json(&["vm", "show", "live", "--json"]);
    assert_eq!(
        after["state"],
        "running",
        "interrupted start settles: {} ({})",
        after["runtime"]["last_error"],
        String::from_utf8_lossy(&again.stderr)
    );
    let log = std::fs::read_to_string(lab.env.state_dir().join("bangerd.log")).expect("log");
    let adopted = log
        .find("adopted a starting vm; waiting for its agent")
        .expect("the restarted daemon adopted the start");
    let answered = log[adopted..]
        .find("guest agent answered")
        .expect("and waited for the agent");
    assert!(
        log[adopted + answered..].contains("its start outlived a daemon restart"),
        "running only after the agent answered"
    );
    lab.ok(&["vm", "kill", "live"]);

    lab.ok(&["vm", "delete", "live", "dies"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn ten_vms_started_and_deleted_concurrently_leave_nothing_behind() {
    let Some(lab) = lab() else { return };
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let lab = &lab;
                s.spawn(move || {
                    lab.ok(&[
                        "vm",
                        "create",
                        "--name",
                        n,
                        "--memory",
                        "256",
                        "--root-disk",
                        "1G",
                        "--work-disk",
                        "128M",
                    ]);
                    let v = lab.json(&["vm", "start", n, "--json"]);
                    v["runtime"]["guest_ip"].as_str().expect("ip").to_owned()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "an address was handed out twice: {ips:?}");
    let taps = lab
        .ns
        .links()
        .into_iter()
        .filter(|l| l.starts_with("bg-"))
        .count();
    assert_eq!(taps, 10);
    std::thread::scope(|s| {
        for n in &names {
            let lab = &lab;
            s.spawn(move || {
                lab.ok(&["vm", "kill", n]);
                lab.ok(&["vm", "delete", n]);
            });
        }
    });
    assert_eq!(lab.json(&["vm", "list", "--json"]), serde_json::json!([]));
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

/// Each VM is created the moment the last one was deleted, so it takes
/// over the freed address (and the slot in every table) at once.
#[test]
fn twenty_vm_runs_back_to_back_each_reusing_the_freed_address() {
    let Some(lab) = lab() else { return };
    let mut took = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let out = lab.banger(&[
            "vm",
            "run",
            "--rm",
            "--memory",
            "256",
            "--",
            "cat",
            "/etc/hostname",
        ]);
        assert!(
            out.status.success(),
            "run {i} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lab.diagnostics()
        );
        took.push(t.elapsed().as_secs_f64());
        assert!(
            !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "run {i}: the command ran in the guest"
        );
        assert_eq!(lab.json(&["vm", "list", "--json"]), serde_json::json!([]));
    }
    took.sort_by(f64::total_cmp);
    println!(
        "figure: 20 back-to-back vm run --rm: median {:.2}s, max {:.2}s",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}
