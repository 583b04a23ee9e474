//! Tier 2: the start-up sweep on real taps, nftables rules, files and
//! processes, inside a network namespace the test makes (root only).
//! Orphans of every kind banger can leave are seeded, beside a foreign
//! tap, a foreign nft table and a foreign file: the daemon's start must
//! remove exactly banger's. No packet is sent anywhere.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BANGER, Env, Netns, skip_or_fail, wait::exited};

const ORPHAN_ID: &str = "0123456789abcdef";
const ORPHAN_TAP: &str = "bg-0123456789ab";

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &Netns, args: &[&str]) -> String {
    ok(Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args))
}

fn nft_load(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (scripts/setup.sh installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("nft").success(), "nft -f: {script}");
}

#[test]
fn the_daemon_start_removes_exactly_the_orphans_banger_left() {
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail(
            "sweep test",
            "needs root (network namespaces, taps, nftables)",
        );
        return;
    }
    let env = Env::new();
    let ns = Netns::new();
    // Taps: an orphan of banger's shape, and names that are not banger's.
    for tap in [ORPHAN_TAP, "bg-weird", "fg-tap0"] {
        in_ns(&ns, &["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
    }
    // Rules in banger's tables for the orphan tap (NAT and guard), and a foreign table
    // whose rule even carries banger's tag.
    nft_load(
        &ns,
        &format!(
            r#"table ip banger {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
  chain forward {{ type filter hook forward priority filter; policy accept; }}
}}
add rule ip banger postrouting ip saddr 10.99.0.9 oifname "lo" masquerade comment "banger {ORPHAN_TAP}"
add rule ip banger forward iifname "{ORPHAN_TAP}" accept comment "banger {ORPHAN_TAP}"
table bridge banger {{
  chain prerouting {{ type filter hook prerouting priority -200; policy accept; }}
}}
add rule bridge banger prerouting iifname "{ORPHAN_TAP}" ether saddr 02:b6:01:23:45:67 accept comment "banger {ORPHAN_TAP}"
table ip foreign {{
  chain c {{ type filter hook forward priority 0; policy accept; }}
}}
add rule ip foreign c iifname "{ORPHAN_TAP}" accept comment "banger {ORPHAN_TAP}"
"#
        ),
    );
    // Files: a VM dir and a socket of an id no record has, a build dir.
    let state = env.state_dir();
    let run = env.dir.path().join("run");
    let vm_dir = state.join("vms").join(ORPHAN_ID);
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    std::fs::write(vm_dir.join("root.ext4"), b"disk").expect("disk");
    std::fs::create_dir_all(run.join("vms")).expect("run dir");
    let socket = run.join("vms").join(format!("{ORPHAN_ID}.sock"));
    std::fs::write(&socket, b"").expect("socket");
    let foreign_file = run.join("vms").join("notes.txt");
    std::fs::write(&foreign_file, b"mine").expect("foreign file");
    let build = state.join("tmp").join("kernel-add-x");
    std::fs::create_dir_all(&build).expect("build dir");
    // A VMM left serving the orphan's socket (a stand-in naming it).
    let mut vmm = Command::new("tail")
        .arg("-f")
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("stand-in vmm");
    let vmm_pid = i32::try_from(vmm.id()).expect("pid");
    // A tool a dead daemon's build left running in its build dir, and a
    // process of someone else's working in the state dir (not a build).
    let mut tool = Command::new("sleep")
        .arg("600")
        .current_dir(&build)
        .spawn()
        .expect("stand-in tool");
    let tool_pid = i32::try_from(tool.id()).expect("pid");
    let mut stranger = Command::new("sleep")
        .arg("600")
        .current_dir(&state)
        .spawn()
        .expect("stranger");

    ok(env.command_in(&ns.name, BANGER).args(["daemon", "start"]));

    let links = ns.links();
    assert!(!links.contains(&ORPHAN_TAP.to_owned()), "{links:?}");
    for foreign in ["bg-weird", "fg-tap0"] {
        assert!(links.contains(&foreign.to_owned()), "{foreign}: {links:?}");
    }
    // banger's rules for the tap are gone (its table with them, once
    // empty); the foreign table's are all still there.
    let ruleset = in_ns(&ns, &["nft", "list", "ruleset"]);
    let foreign = in_ns(&ns, &["nft", "list", "table", "ip", "foreign"]);
    assert_eq!(foreign.matches(ORPHAN_TAP).count(), 2, "{foreign}");
    assert_eq!(
        ruleset.matches(ORPHAN_TAP).count(),
        foreign.matches(ORPHAN_TAP).count(),
        "{ruleset}"
    );
    assert!(!ruleset.contains("table bridge banger"), "{ruleset}");
    assert!(!vm_dir.exists() && !socket.exists() && !build.exists());
    assert!(foreign_file.exists());
    assert!(
        exited(vmm_pid, Duration::from_secs(20)),
        "the orphan's vmm was killed"
    );
    let _ = vmm.wait();
    assert!(
        exited(tool_pid, Duration::from_secs(20)),
        "the build's tool was killed"
    );
    let _ = tool.wait();
    assert!(
        stranger.try_wait().expect("try_wait").is_none(),
        "a process banger did not start was killed"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    let log = std::fs::read_to_string(state.join("bangerd.log")).expect("log");
    assert!(log.contains("start-up sweep removed orphans"), "{log}");
    assert!(
        log.contains(&format!(
            "removing the nat and guard rules of a tap no vm record has tap={ORPHAN_TAP}"
        )),
        "{log}"
    );
    ok(env.command_in(&ns.name, BANGER).args(["daemon", "stop"]));
}
