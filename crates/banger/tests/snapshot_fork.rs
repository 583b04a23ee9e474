//! Tier 3: snapshots, restores and forks (issue 15). QEMU/TCG guests
//! driven through the CLI inside a network namespace the test makes;
//! nothing here sends a packet outside it.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::stream::Stream;
use common::{Lab, dir_entries, kill, lab, vmm_pids, wait_gone};
use nix::sys::signal::Signal;

/// `vm exec VM -- sh -c SCRIPT`, insisting on success; its stdout.
fn sh(lab: &Lab, vm: &str, script: &str) -> String {
    lab.ok(&["vm", "exec", vm, "--", "sh", "-c", script])
}

fn start(lab: &Lab, name: &str) -> serde_json::Value {
    lab.ok(&["vm", "create", "--name", name, "--memory", "512"]);
    let vm = lab.json(&["vm", "start", name, "--json"]);
    assert_eq!(vm["state"], "running");
    vm
}

fn ip_of(vm: &serde_json::Value) -> String {
    vm["runtime"]["guest_ip"]
        .as_str()
        .expect("guest ip")
        .to_owned()
}

fn snapshot_names(lab: &Lab) -> Vec<String> {
    lab.json(&["snapshot", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Nothing of banger's left, snapshots included.
fn assert_clean(lab: &Lab) {
    lab.assert_no_leaks();
    let snaps = dir_entries(&lab.env.state_dir().join("snapshots"));
    assert!(snaps.is_empty(), "leaked snapshot dirs: {snaps:?}");
}

/// The guest's wall clock against the host's, allowing for the time the
/// exec itself took.
fn assert_clock_close(lab: &Lab, vm: &str) {
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("now");
    let out = sh(lab, vm, "date +%s.%N");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("now");
    let guest: f64 = out.trim().parse().expect("guest time");
    let slack = 2.0;
    assert!(
        guest >= before.as_secs_f64() - slack && guest <= after.as_secs_f64() + slack,
        "{vm}'s clock {guest} is not within {slack}s of the host's [{}, {}]",
        before.as_secs_f64(),
        after.as_secs_f64()
    );
}

#[test]
fn a_fork_into_three_gives_three_machines_of_their_own() {
    let Some(lab) = lab() else { return };
    let src = start(&lab, "src");
    sh(&lab, "src", "echo before-fork > /root/shared && sync");

    let t = Instant::now();
    let forks = lab.json(&["vm", "fork", "src", "--name", "f", "--count", "3", "--json"]);
    println!(
        "figure: fork of 1 into 3 (QEMU/TCG) took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let forks = forks.as_array().expect("array").clone();
    let names: Vec<String> = forks
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["f-1", "f-2", "f-3"]);
    // The fork's own snapshot is spent once the copies run.
    assert!(
        snapshot_names(&lab).is_empty(),
        "{:?}",
        snapshot_names(&lab)
    );

    let mut ips = HashSet::from([ip_of(&src)]);
    let mut randoms = HashSet::new();
    let mut host_keys = HashSet::new();
    let mut macs = HashSet::new();
    for vm in &forks {
        let name = vm["name"].as_str().expect("name");
        assert_eq!(vm["state"], "running");
        assert_eq!(sh(&lab, name, "hostname").trim(), name, "its own hostname");
        let ip = ip_of(vm);
        assert!(ips.insert(ip.clone()), "{name} shares address {ip}");
        let addr = sh(&lab, name, "ip -4 -o addr show dev eth0");
        assert!(addr.contains(&format!(" {ip}/")), "{name} has {ip}: {addr}");
        assert_eq!(addr.matches(" inet ").count(), 1, "one address: {addr}");
        let hosts = sh(&lab, name, "cat /etc/hosts");
        assert!(
            hosts.contains(&format!("{ip} {name}.vm {name}")) && !hosts.contains(" src"),
            "{name}'s /etc/hosts names it: {hosts}"
        );
        let mac = sh(&lab, name, "cat /sys/class/net/eth0/address");
        assert!(
            macs.insert(mac.trim().to_owned()),
            "{name} shares MAC {mac}"
        );
        lab.wait_ping(&ip, Duration::from_secs(30));
        assert_eq!(lab.resolve(&format!("{name}.vm")), ip, "{name}.vm");
        assert_eq!(sh(&lab, name, "cat /root/shared").trim(), "before-fork");
        let random = sh(&lab, name, "head -c 32 /dev/urandom | sha256sum");
        assert!(
            randoms.insert(random.clone()),
            "{name} repeats a random stream: {random}"
        );
        assert_clock_close(&lab, name);
        let machine_id = sh(&lab, name, "cat /etc/machine-id");
        assert_eq!(machine_id.trim().len(), 32, "{machine_id}");

        // ssh with the host key pinned at the restore: a guest offering
        // another key would be refused.
        let t = Instant::now();
        let over_ssh = lab.ok(&["vm", "ssh", name, "--", "hostname"]);
        println!(
            "figure: vm ssh to restored {name} answered after {:.2}s",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(over_ssh.trim(), name);
        let key = lab.json(&["vm", "show", name, "--json"])["runtime"]["ssh_host_key"]
            .as_str()
            .expect("pinned host key")
            .to_owned();
        let offered = sh(&lab, name, "cat /etc/ssh/ssh_host_ed25519_key.pub");
        assert!(
            offered.starts_with(&key),
            "guest key {offered} vs pinned {key}"
        );
        assert!(
            host_keys.insert(key.clone()),
            "{name} shares host key {key}"
        );
    }
    let machine_ids: HashSet<String> = names
        .iter()
        .map(|n| sh(&lab, n, "cat /etc/machine-id"))
        .collect();
    assert_eq!(machine_ids.len(), 3, "{machine_ids:?}");

    // Written after the fork in one: in no other.
    sh(&lab, "f-1", "echo mine > /root/after && sync");
    for other in ["f-2", "f-3", "src"] {
        assert_eq!(
            sh(&lab, other, "cat /root/after 2>/dev/null || echo absent").trim(),
            "absent",
            "{other} sees f-1's file"
        );
    }

    for vm in ["src", "f-1", "f-2", "f-3"] {
        lab.ok(&["vm", "kill", vm]);
        lab.ok(&["vm", "delete", vm]);
    }
    assert_clean(&lab);
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn snapshots_outlive_their_vm_pause_resume_stop_and_refuse_damage() {
    let Some(lab) = lab() else { return };
    start(&lab, "s1");
    sh(&lab, "s1", "echo kept > /root/file && sync");

    let snap = lab.json(&["vm", "snapshot", "s1", "--name", "snap1", "--json"]);
    println!(
        "figure: vm snapshot of a 512 MiB guest: {} bytes on disk, saved in {} ms",
        snap["size_bytes"], snap["save_ms"]
    );
    assert!(snap["size_bytes"].as_u64().expect("size") > 0);
    assert_eq!(snap["machine"]["memory_mib"], 512);
    assert_eq!(snapshot_names(&lab), ["snap1"]);
    assert_eq!(
        lab.json(&["vm", "show", "s1", "--json"])["state"],
        "running",
        "resumed after the snapshot"
    );
    assert_eq!(sh(&lab, "s1", "cat /root/file").trim(), "kept");

    // Pause and resume; a paused guest takes no commands.
    let paused = lab.json(&["vm", "show", "s1", "--json"]);
    lab.ok(&["vm", "pause", "s1"]);
    assert_eq!(lab.json(&["vm", "show", "s1", "--json"])["state"], "paused");
    let refused = lab.banger(&["vm", "exec", "s1", "--", "true"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("vm resume"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A restarted daemon keeps it paused.
    let pid = lab.daemon_pid();
    lab.ok(&["daemon", "stop"]);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    assert_eq!(lab.json(&["vm", "show", "s1", "--json"])["state"], "paused");
    lab.ok(&["vm", "resume", "s1"]);
    assert_eq!(sh(&lab, "s1", "echo up").trim(), "up");
    drop(paused);

    // The snapshot outlives its VM.
    lab.ok(&["vm", "kill", "s1"]);
    lab.ok(&["vm", "delete", "s1"]);
    lab.ok(&["vm", "create", "--snapshot", "snap1", "--name", "r1"]);
    let in_use = lab.banger(&["snapshot", "rm", "snap1"]);
    assert!(!in_use.status.success());
    assert!(
        String::from_utf8_lossy(&in_use.stderr).contains("r1"),
        "says who uses it: {}",
        String::from_utf8_lossy(&in_use.stderr)
    );
    let mut starting = Stream::post(&lab.env.socket(), "/v1/vms/r1/start", None);
    starting.wait_progress(Duration::from_secs(120), |p| p.stage == "restore");
    let t = Instant::now();
    let outcome = starting.outcome(Duration::from_secs(180));
    println!(
        "figure: restore of r1 from its restore stage to running took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        matches!(outcome, common::stream::Outcome::Result(_)),
        "{outcome:?}\n{}",
        lab.diagnostics()
    );
    assert_eq!(sh(&lab, "r1", "cat /root/file").trim(), "kept");
    assert_eq!(sh(&lab, "r1", "hostname").trim(), "r1");

    // --stop: the VM goes down, and its next start restores the snapshot.
    sh(&lab, "r1", "echo at-snap2 > /root/file2 && sync");
    lab.ok(&["vm", "snapshot", "r1", "--name", "snap2", "--stop"]);
    assert_eq!(
        lab.json(&["vm", "show", "r1", "--json"])["state"],
        "stopped"
    );
    lab.ok(&["vm", "start", "r1"]);
    assert_eq!(sh(&lab, "r1", "cat /root/file2").trim(), "at-snap2");
    // The uptime goes on from the snapshot's: a restore, not a boot.
    lab.ok(&["vm", "kill", "r1"]);

    // A damaged snapshot: a clear refusal, nothing left running.
    let snap2 = lab.json(&["snapshot", "show", "snap2", "--json"]);
    let state = std::path::Path::new(snap2["dir"].as_str().expect("dir")).join("vmm/vmstate");
    std::fs::write(&state, b"not a migration stream").expect("corrupt");
    lab.ok(&["vm", "create", "--snapshot", "snap2", "--name", "bad"]);
    let failed = lab.banger(&["vm", "start", "bad"]);
    assert!(!failed.status.success(), "a corrupt snapshot restored");
    let why = String::from_utf8_lossy(&failed.stderr);
    assert!(why.contains("snapshot") || why.contains("vmstate"), "{why}");
    let bad = lab.json(&["vm", "show", "bad", "--json"]);
    assert_eq!(bad["state"], "error");
    assert!(
        vmm_pids(bad["id"].as_str().expect("id")).is_empty(),
        "no VMM left"
    );
    lab.ok(&["vm", "delete", "bad"]);

    lab.ok(&["vm", "delete", "r1"]);
    lab.ok(&["snapshot", "rm", "snap1", "snap2"]);
    assert!(snapshot_names(&lab).is_empty());
    assert_clean(&lab);
    lab.ok(&["daemon", "stop"]);
}

#[test]
fn a_daemon_killed_during_a_snapshot_or_a_restore_leaves_nothing_half_made() {
    let Some(lab) = lab() else { return };
    start(&lab, "k1");

    // kill -9 while the memory is being written.
    let pid = lab.daemon_pid();
    let body = serde_json::json!({ "name": "partial" });
    let mut saving = Stream::post(&lab.env.socket(), "/v1/vms/k1/snapshot", Some(&body));
    saving.wait_progress(Duration::from_secs(60), |p| p.stage == "save");
    kill(pid, Signal::SIGKILL);
    let _ = saving.outcome(Duration::from_secs(10));
    assert!(wait_gone(pid, Duration::from_secs(5)));
    // The next call starts the daemon, which sweeps and resumes.
    assert!(
        snapshot_names(&lab).is_empty(),
        "a partial snapshot is listed"
    );
    assert!(dir_entries(&lab.env.state_dir().join("snapshots")).is_empty());
    assert_eq!(
        lab.json(&["vm", "show", "k1", "--json"])["state"],
        "running"
    );
    assert_eq!(sh(&lab, "k1", "echo alive").trim(), "alive", "resumed");

    // kill -9 while a VM restores.
    lab.ok(&["vm", "snapshot", "k1", "--name", "whole"]);
    lab.ok(&["vm", "create", "--snapshot", "whole", "--name", "k2"]);
    let pid = lab.daemon_pid();
    let mut restoring = Stream::post(&lab.env.socket(), "/v1/vms/k2/start", None);
    restoring.wait_progress(Duration::from_secs(120), |p| p.stage == "restore");
    kill(pid, Signal::SIGKILL);
    let _ = restoring.outcome(Duration::from_secs(10));
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let k2 = lab.json(&["vm", "show", "k2", "--json"]);
    assert_eq!(k2["state"], "stopped", "not stuck: {k2}");
    assert!(
        vmm_pids(k2["id"].as_str().expect("id")).is_empty(),
        "its VMM is gone"
    );
    // It still restores, at its next start.
    lab.ok(&["vm", "start", "k2"]);
    assert_eq!(sh(&lab, "k2", "hostname").trim(), "k2");

    for vm in ["k1", "k2"] {
        lab.ok(&["vm", "kill", vm]);
        lab.ok(&["vm", "delete", vm]);
    }
    lab.ok(&["snapshot", "rm", "whole"]);
    assert_clean(&lab);
    lab.ok(&["daemon", "stop"]);
}
