//! Tier 3: per-VM NAT with nftables, in two namespaces the test makes: the
//! lab (bridge, taps, daemon, guests) and an "uplink" namespace holding a
//! fake outside address (TEST-NET-3, 203.0.113.10) behind a veth. No packet
//! goes to any real outside address, and the uplink has no route back to
//! the guests' subnet: only masquerading lets replies return.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::uplink::OUTSIDE;
use common::{Lab, kill, lab, wait_gone};
use nix::sys::signal::Signal;

fn forwarding(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .expect("cat");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the guest reaches the outside address (a few tries: the first
/// packet of a flow may race the guest's ARP for the gateway).
fn reaches_outside(lab: &Lab, vm: &str) -> bool {
    (0..3).any(|_| {
        lab.banger(&[
            "vm", "exec", vm, "--", "ping", "-c", "1", "-W", "2", OUTSIDE,
        ])
        .status
        .success()
    })
}

/// The NAT rules of `tap` in a listing (the guard's carry its tag too):
/// the masquerade, the way out, the replies back.
fn nat_lines(rules: &str, tap: &str) -> usize {
    let tag = format!("banger {tap}");
    rules
        .lines()
        .filter(|l| {
            l.contains(&tag)
                && (l.contains("masquerade")
                    || l.contains("oifname \"upl0\"")
                    || l.contains("iifname \"upl0\""))
        })
        .count()
}

fn tap_of(lab: &Lab, vm: &str) -> String {
    let id = lab.json(&["vm", "show", vm, "--json"])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    format!("bg-{}", &id[..12])
}

#[test]
fn nat_reaches_the_fake_outside_toggles_live_and_never_leaks_a_rule() {
    let Some(lab) = lab() else { return };
    let _up = lab.uplink();

    // NAT on from creation.
    lab.ok(&["vm", "create", "--name", "n1", "--nat", "--memory", "512"]);
    lab.ok(&["vm", "start", "n1"]);
    let tap = tap_of(&lab, "n1");
    assert!(
        reaches_outside(&lab, "n1"),
        "nat on: the guest reaches {OUTSIDE}"
    );
    let rules = lab.ruleset();
    assert!(rules.contains("table ip banger"), "{rules}");
    assert_eq!(nat_lines(&rules, &tap), 3, "{rules}");
    assert_eq!(forwarding(&lab), "1");

    // Off and on again on the running VM, no restart.
    let t = Instant::now();
    lab.ok(&["vm", "set", "n1", "--nat", "off"]);
    println!(
        "figure: vm set --nat off on a running vm took {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(!reaches_outside(&lab, "n1"), "nat off: no way out");
    assert_eq!(
        nat_lines(&lab.ruleset(), &tap),
        0,
        "nat off: its rules gone"
    );
    assert!(
        lab.ruleset().contains(&format!("banger {tap}")),
        "the guard stays"
    );
    assert_eq!(forwarding(&lab), "0", "nobody needs forwarding");
    lab.ok(&["vm", "set", "n1", "--nat", "on"]);
    assert!(reaches_outside(&lab, "n1"), "nat back on");

    // The daemon dies, the VM's handles.json is corrupt; the next command
    // brings a daemon back that adopts the VM; delete still finds the
    // rules by the tap on the runtime record.
    let vm_dir = lab.json(&["vm", "show", "n1", "--json"])["runtime"]["vm_dir"]
        .as_str()
        .expect("vm dir")
        .to_owned();
    let pid = lab.daemon_pid();
    kill(pid, Signal::SIGKILL);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    std::fs::write(format!("{vm_dir}/handles.json"), b"{corrupt").expect("corrupt");
    assert_eq!(
        lab.json(&["vm", "show", "n1", "--json"])["state"],
        "running",
        "adopted"
    );
    assert!(reaches_outside(&lab, "n1"), "rules survive the daemon");
    lab.ok(&["vm", "kill", "n1"]);
    lab.ok(&["vm", "delete", "n1"]);
    let rules = lab.ruleset();
    assert!(!rules.contains(&format!("banger {tap}")), "{rules}");
    assert!(
        !rules.contains("table ip banger"),
        "no vm uses nat: table gone\n{rules}"
    );
    assert_eq!(forwarding(&lab), "0");

    // A VM without NAT has no way out; one with NAT, deleted after a
    // daemon kill -9 + restart, leaves nothing either.
    lab.ok(&["vm", "create", "--name", "plain", "--memory", "512"]);
    lab.ok(&["vm", "create", "--name", "n2", "--nat", "--memory", "512"]);
    lab.ok(&["vm", "start", "plain"]);
    lab.ok(&["vm", "start", "n2"]);
    assert!(!reaches_outside(&lab, "plain"), "no nat, no way out");
    assert!(reaches_outside(&lab, "n2"));
    let pid = lab.daemon_pid();
    kill(pid, Signal::SIGKILL);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    lab.ok(&["vm", "kill", "n2"]);
    lab.ok(&["vm", "kill", "plain"]);
    lab.ok(&["vm", "delete", "n2", "plain"]);
    let rules = lab.ruleset();
    assert!(!rules.contains("banger"), "{rules}");
    assert_eq!(forwarding(&lab), "0");
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}
