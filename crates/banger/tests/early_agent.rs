//! Tier 3: the agent answers before the distribution's init is done, and
//! images without systemd boot with banger-init as PID 1 (issue 14).
//! QEMU/TCG guests driven through the CLI inside a network namespace the
//! test makes; nothing here sends a packet outside it.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Lab, busybox, lab, skip_or_fail};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `vm exec VM -- CMD...`, insisting on success; its stdout.
fn guest(lab: &Lab, vm: &str, cmd: &[&str]) -> String {
    let mut args = vec!["vm", "exec", vm, "--"];
    args.extend_from_slice(cmd);
    lab.ok(&args)
}

/// `vm exec VM -- CMD...` whatever its exit code.
fn guest_output(lab: &Lab, vm: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["vm", "exec", vm, "--"];
    args.extend_from_slice(cmd);
    lab.banger(&args)
}

/// `vm run --rm --image IMAGE -- CMD...` from cold, insisting on exit 0
/// and on the VM being gone after; its stdout.
fn run_rm(lab: &Lab, image: &str, cmd: &[&str]) -> String {
    let mut args = vec![
        "vm", "run", "--rm", "--image", image, "--memory", "512", "--",
    ];
    args.extend_from_slice(cmd);
    let t = Instant::now();
    let out = lab.banger(&args);
    println!(
        "figure: cold vm run --rm on image {image} (QEMU/TCG) took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "vm run {cmd:?}: stderr: {}\n{}",
        text(&out.stderr),
        lab.diagnostics()
    );
    assert_eq!(
        lab.ok(&["vm", "list", "--json"]).trim(),
        "[]",
        "--rm deleted it"
    );
    text(&out.stdout)
}

/// Creates and starts `name`; its guest address.
fn start_named(lab: &Lab, name: &str, image: &str) -> String {
    lab.ok(&[
        "vm", "create", "--name", name, "--image", image, "--memory", "512",
    ]);
    let t = Instant::now();
    let started = lab.json(&["vm", "start", name, "--json"]);
    println!(
        "figure: vm start of {name} (image {image}, to agent ready) took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(started["state"], "running");
    started["runtime"]["guest_ip"]
        .as_str()
        .expect("guest ip")
        .to_owned()
}

/// The guest has `ip` on eth0 and no other IPv4 address there, from
/// `ip addr` (iproute2's and busybox's print the same `inet A/P` words).
fn assert_one_address(lab: &Lab, vm: &str, ip: &str) {
    let addrs: Vec<String> = guest(lab, vm, &["ip", "-4", "addr", "show", "dev", "eth0"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("inet "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert_eq!(addrs.len(), 1, "one IPv4 address on eth0: {addrs:?}");
    assert!(addrs[0].starts_with(&format!("{ip}/")), "{addrs:?}");
}

/// What busybox's `nslookup NAME` (`nslookup`: how the guest runs it)
/// answers through the guest's resolv.conf: a real DNS query (`getent`
/// would also find the name in /etc/hosts).
fn nslookup_addresses(lab: &Lab, vm: &str, nslookup: &[&str], name: &str) -> Vec<String> {
    // A records only: no AAAA query whose empty answer could fail it.
    let mut cmd = nslookup.to_vec();
    cmd.extend(["-type=a", name]);
    let out = guest(lab, vm, &cmd);
    // The server's own address comes first, before the name's section.
    out.split_once(&format!("Name:\t{name}"))
        .or_else(|| out.split_once(&format!("Name: {name}")))
        .map(|(_, answer)| answer)
        .unwrap_or_else(|| panic!("nslookup {name} found no answer:\n{out}"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
        .collect()
}

/// `vm stop` and proof it was the guest that powered off: neither
/// fallback in the daemon log (a failed agent power off, a failed
/// power-button press), the kernel's own "Power down" on the console
/// (a VM killed at the deadline never prints it), and the VM stopped.
fn assert_graceful_stop(lab: &Lab, vm: &str) {
    let log = lab.env.state_dir().join("bangerd.log");
    let before = std::fs::read_to_string(&log).expect("daemon log").len();
    let t = Instant::now();
    lab.ok(&["vm", "stop", vm]);
    println!(
        "figure: graceful vm stop of {vm} took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let after = std::fs::read_to_string(&log).expect("daemon log");
    let during = &after[before..];
    for fallback in ["agent power off failed", "graceful shutdown request failed"] {
        assert!(
            !during.contains(fallback),
            "vm stop {vm} fell back ({fallback}):\n{during}"
        );
    }
    assert_eq!(lab.json(&["vm", "show", vm, "--json"])["state"], "stopped");
    let tail = lab.ok(&["vm", "logs", vm, "-n", "5"]);
    assert!(
        tail.contains("reboot: Power down"),
        "the guest shut itself down (not killed):\n{tail}"
    );
}

/// `systemctl is-system-running --wait`, once systemd can answer it. The
/// agent may answer before systemd has set itself up: systemctl then says
/// `offline` (or finds no bus: `unknown`), and `--wait` does not wait.
/// Nothing tells a command in the guest that systemd is up, so the guest
/// looks again every 50 ms, for at most 60 s; the last answer is printed.
const SYSTEMD_DONE: &str = "for t in $(seq 1200); do \
    s=$(systemctl is-system-running --wait 2>/dev/null); \
    case \"$s\" in offline|unknown|'') sleep 0.05 ;; *) break ;; esac; \
  done; echo \"$s\"";

/// Lines on the console that systemd writes once it is PID 1.
const SYSTEMD_MARKS: &[&str] = &["systemd[1]", "Welcome to", "[  OK  ]", "Reached target"];

#[test]
fn the_default_image_answers_before_systemd_is_done_and_systemd_still_boots_behind_it() {
    let Some(lab) = lab() else { return };
    // Copied into the guest for a real DNS query.
    let busybox = match busybox::binary() {
        Ok(b) => b.to_str().expect("utf8"),
        Err(reason) => return skip_or_fail("early agent test", &reason),
    };
    run_rm(&lab, "default", &["true"]);

    let ip = start_named(&lab, "e1", "default");
    // Where systemd is when the agent first answers: a figure, not a
    // check (on a fast host it may be done already).
    let early = guest_output(&lab, "e1", &["systemctl", "is-system-running"]);
    println!(
        "figure: at agent ready, systemctl is-system-running said {:?}",
        text(&early.stdout).trim()
    );
    let t = Instant::now();
    let state = guest(&lab, "e1", &["sh", "-c", SYSTEMD_DONE]);
    println!(
        "figure: systemd finished booting {:.2}s after the agent was ready",
        t.elapsed().as_secs_f64()
    );
    let state = state.trim().to_owned();
    if state == "degraded" {
        let failed = guest_output(&lab, "e1", &["systemctl", "--failed", "--no-legend"]);
        println!("degraded; failed units:\n{}", text(&failed.stdout));
    }
    assert!(
        state == "running" || state == "degraded",
        "systemd ended {state:?}\n{}",
        lab.diagnostics()
    );

    assert_eq!(
        guest(&lab, "e1", &["findmnt", "-n", "-o", "SOURCE", "/root"]).trim(),
        "/dev/vdb",
        "/root is the work disk"
    );
    let hosts = guest(&lab, "e1", &["getent", "hosts", "e1.vm"]);
    assert_eq!(
        hosts.split_whitespace().next(),
        Some(ip.as_str()),
        "{hosts}"
    );
    lab.ok(&["vm", "cp", busybox, "e1:/root/busybox"]);
    assert_eq!(
        nslookup_addresses(&lab, "e1", &["/root/busybox", "nslookup"], "e1.vm"),
        [ip.as_str()],
        "banger's DNS answers the guest"
    );

    // The early agent and the early address are the only ones: banger's
    // units stood aside when systemd came up behind them.
    assert_eq!(
        guest(&lab, "e1", &["pgrep", "-c", "-x", "banger-agent"]).trim(),
        "1",
        "exactly one agent"
    );
    assert_one_address(&lab, "e1", &ip);

    // The boot stays on the console, the agent's start before systemd's.
    let console = lab.ok(&["vm", "logs", "e1"]);
    let started = console
        .find("banger-init: agent started")
        .unwrap_or_else(|| panic!("no agent start on the console:\n{console}"));
    if let Some((mark, at)) = SYSTEMD_MARKS
        .iter()
        .filter_map(|m| console.find(m).map(|at| (m, at)))
        .min_by_key(|(_, at)| *at)
    {
        assert!(
            started < at,
            "systemd ({mark:?}) on the console before the agent started:\n{console}"
        );
    }
    // The kernel's log keeps what `quiet` leaves off the console: there
    // the agent starts before systemd says its first word too.
    let dmesg = guest(&lab, "e1", &["dmesg"]);
    let started = dmesg
        .find("banger-init: agent started")
        .unwrap_or_else(|| panic!("no agent start in the kernel log:\n{dmesg}"));
    let systemd = dmesg
        .find("systemd[1]")
        .unwrap_or_else(|| panic!("systemd never logged to the kernel:\n{dmesg}"));
    assert!(started < systemd, "{dmesg}");

    assert_graceful_stop(&lab, "e1");
    lab.ok(&["vm", "delete", "e1"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

/// Zombies in the guest, from /proc (busybox's ps prints no state).
const COUNT_ZOMBIES: &str = "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true";

#[test]
fn a_busybox_image_without_systemd_boots_with_banger_init_as_pid_1() {
    let Some(lab) = lab() else { return };
    let tree = match busybox::tree(lab.env.dir.path()) {
        Ok(t) => t,
        Err(reason) => return skip_or_fail("busybox image test", &reason),
    };
    lab.ok(&[
        "image",
        "import",
        "bb",
        "--dir",
        tree.to_str().expect("utf8"),
    ]);
    assert_eq!(
        lab.json(&["image", "show", "bb", "--json"])["init"],
        "banger"
    );

    // The issue's own check: a hundred children, none left a zombie.
    let zombies = run_rm(
        &lab,
        "bb",
        &[
            "sh",
            "-c",
            &format!("for i in $(seq 100); do sleep 0 & done; wait; {COUNT_ZOMBIES}"),
        ],
    );
    assert_eq!(zombies, "0\n");

    let ip = start_named(&lab, "bb1", "bb");
    let console = lab.ok(&["vm", "logs", "bb1"]);
    for line in ["banger-init: agent started", "banger-init: staying PID 1"] {
        assert!(
            console.contains(line),
            "{line:?} not on the console:\n{console}"
        );
    }
    // What a command needs, set up by banger-init alone.
    let mounts = guest(&lab, "bb1", &["cat", "/proc/mounts"]);
    let mounted = |dir: &str| {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&dir))
            .map(|f| (f[0].to_owned(), f[2].to_owned()))
            .unwrap_or_else(|| panic!("nothing on {dir}:\n{mounts}"))
    };
    assert_eq!(mounted("/root").0, "/dev/vdb", "/root is the work disk");
    assert_eq!(mounted("/dev/pts").1, "devpts");
    assert_eq!(mounted("/run").1, "tmpfs");
    assert_eq!(mounted("/tmp").1, "tmpfs");
    assert_eq!(guest(&lab, "bb1", &["hostname"]).trim(), "bb1");
    assert_one_address(&lab, "bb1", &ip);
    lab.wait_ping(&ip, Duration::from_secs(30));
    assert_eq!(
        nslookup_addresses(&lab, "bb1", &["nslookup"], "bb1.vm"),
        [ip.as_str()],
        "banger's DNS answers the guest"
    );

    // Orphans are PID 1's to reap (the agent is no subreaper): the
    // subshells exit at once, leaving their sleeps to banger-init. Only
    // PID 1 knows when it has reaped, so the guest looks again every
    // 100 ms, for at most 10 s.
    let reaped = guest(
        &lab,
        "bb1",
        &[
            "sh",
            "-c",
            &format!(
                "for i in $(seq 100); do (sleep 0 &); done; \
                 for t in $(seq 100); do n=$({COUNT_ZOMBIES}); [ \"$n\" = 0 ] && break; usleep 100000; done; echo $n"
            ),
        ],
    );
    assert_eq!(reaped, "0\n", "banger-init reaped the orphans");

    // An agent that dies is started again. Its death ends the exec that
    // killed it, so that one's outcome says nothing; the agent's return
    // reaches the host only as a connection that works again.
    let first = guest(&lab, "bb1", &["pidof", "banger-agent"]);
    let _killed = guest_output(&lab, "bb1", &["sh", "-c", "kill -9 $(pidof banger-agent)"]);
    let back = common::wait::until(Duration::from_secs(60), || {
        guest_output(&lab, "bb1", &["true"]).status.success()
    });
    assert!(back, "the agent never came back\n{}", lab.diagnostics());
    let second = guest(&lab, "bb1", &["pidof", "banger-agent"]);
    assert_eq!(second.split_whitespace().count(), 1, "one agent: {second}");
    assert_ne!(first, second, "a new agent");

    assert_graceful_stop(&lab, "bb1");

    // The power button (the VMM's part of a graceful stop, used when the
    // agent does not answer) reaches banger-init too: pressed here over
    // QMP directly, it ends in a clean power off of its own.
    lab.ok(&["vm", "start", "bb1"]);
    let shown = lab.json(&["vm", "show", "bb1", "--json"]);
    let qmp = shown["runtime"]["api_socket"]
        .as_str()
        .expect("qmp socket")
        .to_owned();
    let pid = qemu_pid(&qmp);
    press_power_button(&qmp);
    assert!(
        common::wait::exited(pid, Duration::from_secs(60)),
        "the guest did not power off on the button\n{}",
        lab.diagnostics()
    );
    let tail = lab.ok(&["vm", "logs", "bb1", "-n", "30"]);
    for line in ["banger-init: power button pressed", "reboot: Power down"] {
        assert!(tail.contains(line), "{line:?} not on the console:\n{tail}");
    }
    // The record catches up with the VM that went away by itself.
    lab.ok(&["vm", "stop", "bb1"]);
    lab.ok(&["vm", "delete", "bb1"]);

    // A kernel with no initramfs never runs banger-init: such an image
    // cannot boot on it, and the start says so before launching anything.
    let kernel = lab.json(&["kernel", "show", "default", "--json"]);
    let vmlinux = kernel["vmlinux"]["path"].as_str().expect("vmlinux");
    lab.ok(&["kernel", "import", "bare", "--vmlinux", vmlinux]);
    lab.ok(&[
        "vm", "create", "--name", "bare", "--image", "bb", "--kernel", "bare", "--memory", "256",
    ]);
    let out = lab.banger(&["vm", "start", "bare"]);
    assert!(
        !out.status.success(),
        "a banger-init image started without an initramfs"
    );
    let err = text(&out.stderr);
    assert!(err.contains("initramfs"), "the refusal says why: {err}");
    assert_ne!(
        lab.json(&["vm", "show", "bare", "--json"])["state"],
        "running"
    );
    lab.ok(&["vm", "delete", "bare"]);
    lab.assert_no_leaks();
    lab.ok(&["daemon", "stop"]);
}

/// QEMU's pid, found by the QMP socket in its command line.
fn qemu_pid(qmp: &str) -> i32 {
    let needle = format!("unix:{qmp},");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no QEMU with {needle}");
}

/// `system_powerdown` over QMP: what the daemon's stop sends when the
/// agent does not take the power off.
fn press_power_button(qmp: &str) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(qmp).expect("qmp connect");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("qmp greeting");
    assert!(line.contains("QMP"), "{line}");
    for cmd in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").expect("qmp write");
        // Events may come first; the answer is the line with "return".
        loop {
            line.clear();
            reader.read_line(&mut line).expect("qmp answer");
            assert!(!line.contains("\"error\""), "{cmd}: {line}");
            if line.contains("\"return\"") {
                break;
            }
        }
    }
}
