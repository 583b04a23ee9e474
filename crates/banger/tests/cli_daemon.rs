//! `banger` ↔ `bangerd` over a real unix socket in a temp dir.

mod common;

use std::time::Duration;

use common::{BANGER, BANGERD, Env, is_bangerd, kill, path_mode, wait_gone};
use nix::sys::signal::Signal;

#[test]
fn vm_list_starts_the_daemon_and_prints_an_empty_table() {
    let env = Env::new();
    assert!(!env.socket().exists());
    let out = env.ok(&["vm", "list"]);
    let lines: Vec<_> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "only the header: {out}");
    for col in ["NAME", "STATE", "VMM", "IP"] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
    assert_eq!(path_mode(&env.socket()), 0o600, "socket must be owner-only");
    assert_eq!(path_mode(&env.state_dir()), 0o700);
    let log = std::fs::read_to_string(env.state_dir().join("bangerd.log")).expect("log");
    assert!(log.contains("bangerd starting"), "{log}");
}

#[test]
fn daemon_comes_back_after_kill_9_without_user_action() {
    let env = Env::new();
    env.seed_assets();
    env.ok(&["vm", "create", "--name", "survivor"]);
    let first = env.daemon_pid();
    kill(first, Signal::SIGKILL);
    assert!(
        wait_gone(first, Duration::from_secs(5)),
        "daemon did not die"
    );
    // The dead daemon's socket file is still there; the CLI must cope.
    let vms = env.json(&["vm", "list", "--json"]);
    assert_eq!(
        vms[0]["name"], "survivor",
        "state survived the crash: {vms}"
    );
    let second = env.daemon_pid();
    assert_ne!(first, second);
}

#[test]
fn a_second_daemon_for_the_same_state_dir_exits_with_a_clear_message() {
    let env = Env::new();
    env.ok(&["daemon", "start"]);
    let pid = env.daemon_pid();
    let out = env.command(BANGERD).output().expect("run second bangerd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(is_bangerd(pid), "the first daemon must be unaffected");
    assert!(env.ok(&["daemon", "start"]).contains("already running"));
}

#[test]
fn sigterm_and_daemon_stop_shut_down_gracefully() {
    let env = Env::new();
    env.ok(&["daemon", "start"]);
    let pid = env.daemon_pid();
    kill(pid, Signal::SIGTERM);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "SIGTERM did not stop bangerd"
    );
    assert!(!env.socket().exists(), "socket removed on graceful exit");

    env.ok(&["daemon", "start"]);
    let pid = env.daemon_pid();
    assert!(env.ok(&["daemon", "stop"]).contains("stopped"));
    assert!(wait_gone(pid, Duration::from_secs(10)));
    let out = env.banger(&["daemon", "status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status of a stopped daemon exits 3"
    );
    let out = env.banger(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v, serde_json::json!({"running": false}));
}

#[test]
fn vm_records_round_trip_with_clear_errors_for_bad_input() {
    let env = Env::new();
    env.seed_assets();
    let name = env.ok(&[
        "vm", "create", "--name", "web", "--cpus", "3", "--memory", "512",
    ]);
    assert_eq!(name.trim(), "web");
    let vm = env.json(&["vm", "show", "web", "--json"]);
    assert_eq!(vm["state"], "created");
    assert_eq!(vm["spec"]["vcpus"], 3);
    assert_eq!(vm["spec"]["memory_mib"], 512);
    assert_eq!(vm["spec"]["vmm"], "qemu", "picked from host capabilities");

    // Bad input: each refused with a message saying what to do, no state lost.
    let err = env.fails(&["vm", "create", "--name", "web"]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(&["vm", "create", "--name", "Web_1"]);
    assert!(err.contains("lowercase letters"), "{err}");
    let err = env.fails(&["vm", "create", "--root-disk", "3X"]);
    assert!(err.contains("unit"), "{err}");
    let err = env.fails(&["vm", "create", "--cpus", "0"]);
    assert!(err.contains("vcpus must be between"), "{err}");
    let err = env.fails(&["vm", "create", "--vmm", "firecracker"]);
    assert!(err.contains("banger doctor"), "{err}");
    let err = env.fails(&["vm", "create", "--image", "nope"]);
    assert!(err.contains("banger image build nope"), "{err}");
    let err = env.fails(&["vm", "show", "nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = env.fails(&["vm", "show", "../../etc"]);
    assert!(err.contains("vm reference"), "{err}");
    assert_eq!(
        env.json(&["vm", "list", "--json"]).as_array().map(Vec::len),
        Some(1)
    );

    // Generated names.
    let generated = env.ok(&["vm", "create"]);
    let generated = generated.trim();
    assert!(
        generated.contains('-') && generated.len() <= 63,
        "{generated}"
    );

    let set = env.json(&["vm", "set", "web", "--cpus", "1", "--nat", "on", "--json"]);
    assert_eq!(set["spec"]["vcpus"], 1);
    assert_eq!(set["spec"]["nat"], true);

    let err = env.fails(&["vm", "delete", "web", "ghost"]);
    assert!(err.contains("ghost"), "{err}");
    env.ok(&["vm", "rm", generated]);
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn config_errors_name_the_key_and_stop_before_starting_anything() {
    let env = Env::new();
    std::fs::write(env.config_path(), "[network]\nbrige = \"br0\"\n").expect("write");
    let err = env.fails(&["vm", "list"]);
    assert!(err.contains("brige"), "{err}");
    assert!(env.live_daemon_pid().is_none());
}

#[test]
fn doctor_reports_every_capability_the_choices_and_the_disk_usage() {
    let env = Env::new();
    let report = env.json(&["doctor", "--json"]);
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 18);
    for id in ["vsock_backend", "guest_agent", "privileges"] {
        assert!(checks.iter().any(|c| c["id"] == id), "{id} reported");
    }
    let qemu = checks
        .iter()
        .find(|c| c["id"] == "qemu")
        .expect("qemu check");
    assert_eq!(qemu["status"], "ok");
    assert!(qemu["detail"].as_str().unwrap_or("").contains("7.2.0"));
    let snapshots = checks
        .iter()
        .find(|c| c["id"] == "qemu_snapshots")
        .expect("qemu snapshots check");
    assert_eq!(snapshots["status"], "warn", "7.2 has no mapped-ram");
    assert!(
        snapshots["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("QEMU 7.2.0: snapshots without mapped-ram")
    );
    let fc = checks
        .iter()
        .find(|c| c["id"] == "firecracker")
        .expect("fc check");
    assert_eq!(fc["status"], "warn");
    assert!(report["storage"].is_string());
    let human = env.ok(&["doctor"]);
    assert!(
        human.contains("hardware_kvm") && human.contains("default vmm"),
        "{human}"
    );

    // What the state dir takes, with a kernel and an image in it.
    env.seed_assets();
    let state = env.state_dir();
    let report = env.json(&["doctor", "--json"]);
    let disk = &report["disk"];
    assert_eq!(disk["state_dir"], state.to_str().expect("utf8"), "{disk}");
    let total = disk["fs"]["total_bytes"].as_u64().expect("fs total");
    let available = disk["fs"]["available_bytes"].as_u64().expect("fs free");
    assert!(total > 0 && available <= total, "{disk}");
    let areas = disk["areas"].as_array().expect("areas");
    let names: Vec<&str> = areas.iter().filter_map(|a| a["area"].as_str()).collect();
    assert_eq!(names, ["kernels", "images", "vms", "snapshots"], "{disk}");
    for a in areas {
        let dir = a["dir"].as_str().expect("dir");
        assert_eq!(
            std::path::Path::new(dir).parent(),
            Some(state.as_path()),
            "{a}"
        );
    }
    // The imported kernel and image are measured where they were put.
    for a in &areas[..2] {
        assert!(a["bytes"].as_u64() > Some(0), "{a}");
    }
    assert_eq!(disk["snapshots"], serde_json::json!([]), "{disk}");
    assert!(disk.get("errors").is_none(), "{disk}");
    let human = env.ok(&["doctor"]);
    let line = human
        .lines()
        .find(|l| l.starts_with("disk:"))
        .unwrap_or_else(|| panic!("no disk section: {human}"));
    assert!(line.contains(state.to_str().expect("utf8")), "{line}");
    assert!(line.contains("available of"), "{line}");
    for area in ["kernels", "images", "vms", "snapshots"] {
        assert!(
            human
                .lines()
                .any(|l| l.split_whitespace().next() == Some(area)),
            "{area}: {human}"
        );
    }
}

#[test]
fn daemon_logs_and_completions() {
    let env = Env::new();
    env.ok(&["daemon", "start"]);
    let logs = env.ok(&["daemon", "logs", "-n", "50"]);
    assert!(logs.contains("bangerd starting"), "{logs}");
    let script = env.ok(&["completions", "bash"]);
    assert!(script.contains("banger"), "{script}");
}

#[test]
fn requests_from_another_user_are_refused_even_through_an_open_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED peer check test: needs root to act as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.ok(&["vm", "list"]);
    let socket = env.socket();
    assert_eq!(path_mode(&socket) & 0o777, 0o600, "owner-only socket");
    // Open every door on the way: the daemon's own check must still hold.
    for p in [env.dir.path().to_path_buf(), env.dir.path().join("run")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = env
        .command(BANGER)
        .env("BANGER_DAEMON_BIN", "/bin/false")
        .args(["vm", "list"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("banger as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("serves uid 0 only") && err.contains("65534"),
        "{err}"
    );
    // Nothing changed for the daemon's own user.
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly_as_sigpipe_ends_other_tools() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    env.ok(&["daemon", "start"]);
    // `banger vm list --json | head -0`: the reader is gone before the
    // first write.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    for args in [
        &["vm", "list", "--json"][..],
        &["vm", "list"],
        &["daemon", "status"],
    ] {
        let out = env
            .command(BANGER)
            .args(args)
            .stdout(std::process::Stdio::from(
                write_end.try_clone().expect("dup"),
            ))
            .output()
            .expect("run banger");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(141),
            "{args:?}: {:?} {stderr}",
            out.status.signal()
        );
        assert!(stderr.is_empty(), "{args:?}: said something: {stderr}");
    }
}

/// `POST /v1/leases` by hand: the connection, and the lease it holds.
fn hold_lease(env: &Env) -> (std::os::unix::net::UnixStream, String) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(env.socket()).expect("connect");
    s.write_all(b"POST /v1/leases HTTP/1.0\r\nHost: bangerd\r\n\r\n")
        .expect("request");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("status");
    assert!(line.contains(" 200 "), "{line}");
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).expect("header");
    }
    line.clear();
    r.read_line(&mut line).expect("the lease line");
    let ev: serde_json::Value = serde_json::from_str(&line).expect("json");
    let id = ev["held"]["lease"].as_str().expect("lease id").to_owned();
    (s, id)
}

#[test]
fn vms_created_under_a_lease_go_when_its_connection_closes() {
    let env = Env::new();
    env.seed_assets();
    env.ok(&["daemon", "start"]);
    let (conn, lease) = hold_lease(&env);
    let created = common::stream::Stream::post(
        &env.socket(),
        "/v1/vms",
        Some(&serde_json::json!({"name": "tmp", "lease": lease})),
    )
    .outcome(Duration::from_secs(60));
    assert!(
        matches!(&created, common::stream::Outcome::Result(v) if v["runtime"]["leased"] == true),
        "{created:?}"
    );
    env.ok(&["vm", "create", "--name", "kept"]);
    // The client goes (as a killed `vm run --rm` does): its socket closes.
    drop(conn);
    // Nothing announces a removal to another client: the list is asked.
    let names = || {
        env.json(&["vm", "list", "--json"])
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        common::wait::until(Duration::from_secs(20), || names() == ["kept"]),
        "the leased vm is still listed: {:?}",
        names()
    );
    // A create under a lease no longer held is a 400 and makes nothing.
    let refused = common::stream::Stream::post(
        &env.socket(),
        "/v1/vms",
        Some(&serde_json::json!({"name": "late", "lease": lease})),
    )
    .outcome(Duration::from_secs(10));
    assert!(
        matches!(&refused, common::stream::Outcome::Error(e) if e.contains("not held")),
        "{refused:?}"
    );
    assert_eq!(names(), ["kept"]);
    // A held lease never ends by itself: the daemon still stops, and
    // closes it on the way out.
    let (mut held, _) = hold_lease(&env);
    env.ok(&["daemon", "stop"]);
    held.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut rest).expect("closed by the stopping daemon");
}

/// One HTTP/1.0 request on a connection of its own: (status, body).
fn raw_request(env: &Env, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(env.socket()).expect("connect");
    s.write_all(head.as_bytes()).expect("head");
    // A daemon that refuses early may close before the body is all sent.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        // The daemon answered and closed with some of the body unread:
        // the kernel hands over the answer, then reports the reset.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty() => {}
        Err(e) => panic!("answer: {e}"),
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn half_sent_requests_time_out_excess_connections_get_503_and_big_bodies_413() {
    use std::io::{Read, Write};
    let env = Env::new();
    env.command(BANGER)
        .env("BANGER_API_CONNECTIONS", "3")
        .env("BANGER_API_HEADER_TIMEOUT_SECS", "3")
        .args(["daemon", "start"])
        .output()
        .expect("daemon start");
    // Three clients that never finish their headers hold every slot...
    let mut slow: Vec<_> = (0..3)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(env.socket()).expect("connect");
            s.write_all(b"POST /v1/vms HTTP/1.1\r\nHost: bangerd\r\n")
                .expect("half a request");
            s
        })
        .collect();
    // ...so one more is told so, in banger's error body.
    let (status, body) = raw_request(&env, "GET /v1/vms HTTP/1.0\r\nHost: bangerd\r\n\r\n", b"");
    assert_eq!(status, 503, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("json error");
    assert_eq!(err["code"], "unavailable", "{body}");
    // The daemon closes them once their time for headers is up.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("closed by the daemon, not by the read timeout");
    }
    // Their slots are free again.
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
    // A body over the limit: 413, in banger's error body too.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let (status, body) = raw_request(
        &env,
        &format!(
            "POST /v1/vms HTTP/1.0\r\nHost: bangerd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            big.len()
        ),
        big.as_bytes(),
    );
    assert_eq!(status, 413, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("json error");
    assert_eq!(err["code"], "too_large", "{body}");
}

#[test]
fn operations_are_listed_and_bad_or_stale_ids_get_clear_errors() {
    let env = Env::new();
    let out = env.ok(&["operation", "list"]);
    for col in ["ID", "COMMAND", "TARGET", "STAGE", "CANCEL"] {
        assert!(out.contains(col), "{out}");
    }
    assert_eq!(env.json(&["op", "ls", "--json"]), serde_json::json!([]));
    let err = env.fails(&["operation", "cancel", "web"]);
    assert!(
        err.contains("not an operation id") && err.contains("banger operation list"),
        "{err}"
    );
    let err = env.fails(&["operation", "cancel", "op-00000000000000ab"]);
    assert!(err.contains("not in flight"), "{err}");
    let err = env.fails(&["operation", "watch", "op-00000000000000ab"]);
    assert!(err.contains("not in flight"), "{err}");
}

/// A guest writes its console: what it wrote reaches the user's terminal
/// as text, escape sequences shown escaped, unless `--raw` asks for the
/// bytes.
#[test]
fn guest_console_text_reaches_the_terminal_escaped_unless_raw() {
    let env = Env::new();
    env.seed_assets();
    env.ok(&["vm", "create", "--name", "noisy"]);
    let id = env.json(&["vm", "show", "noisy", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let dir = env.state_dir().join("vms").join(&id);
    std::fs::create_dir_all(&dir).expect("vm dir");
    let hostile = "booting\n\x1b]0;owned\x07\x1b[2J\x1b[1;1Hall is well\r\nlast \u{9b}31mline\n";
    std::fs::write(dir.join("console.log"), hostile).expect("console");

    let shown = env.ok(&["vm", "logs", "noisy"]);
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\u{9b}'),
        "{shown:?}"
    );
    assert!(shown.contains("\\x1b]0;owned\\x07\\x1b[2J"), "{shown:?}");
    assert!(
        shown.contains("booting") && shown.contains("\\u{9b}31mline"),
        "{shown:?}"
    );
    let last = env.ok(&["vm", "logs", "noisy", "-n", "1"]);
    assert_eq!(last.trim_end(), "last \\u{9b}31mline");
    let raw = env.ok(&["vm", "logs", "noisy", "--raw"]);
    assert!(raw.contains("\x1b]0;owned\x07"), "{raw:?}");
    // The tail's size is the API's to check, before any reading.
    for (query, why) in [("lines=abc", "lines"), ("lines=2000000", "ask for fewer")] {
        let (status, body) = raw_request(
            &env,
            &format!(
                "GET /v1/vms/noisy/logs?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
            b"",
        );
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
    }
}
