//! Figures for the foundation: daemon cold start through the CLI, idle
//! RSS, and `banger vm list` latency with 0 and 1,000 VM rows.
//!
//! `cargo bench -p banger --bench list_latency`. Prints numbers; asserts
//! nothing about them (speed is measured, not tested).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use banger_api::vm::{VmRecord, VmRuntime, VmSpec, VmState, VmmKind};
use banger_store::Store;
use common::Env;

const RUNS: usize = 50;

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn populate(env: &Env, n: usize) {
    std::fs::create_dir_all(env.state_dir()).expect("state dir");
    let store = Store::open(&env.state_dir().join("banger.db")).expect("db");
    let now = chrono::Utc::now();
    for i in 0..n {
        store
            .insert_vm(&VmRecord {
                id: format!("{i:016x}").into(),
                name: format!("vm-{i:04}"),
                state: if i % 3 == 0 {
                    VmState::Stopped
                } else {
                    VmState::Created
                },
                spec: VmSpec {
                    vcpus: 2,
                    memory_mib: 1024,
                    root_disk_bytes: 8 << 30,
                    work_disk_bytes: 8 << 30,
                    image: "default".into(),
                    kernel: "default".into(),
                    nat: i % 2 == 0,
                    vmm: VmmKind::Qemu,
                },
                runtime: VmRuntime {
                    guest_ip: Some(std::net::Ipv4Addr::new(
                        172,
                        16,
                        (i / 250) as u8,
                        (i % 250 + 2) as u8,
                    )),
                    vm_dir: Some(format!("/var/lib/banger/vms/{i:016x}").into()),
                    ..VmRuntime::default()
                },
                created_at: now,
                updated_at: now,
            })
            .expect("insert");
    }
}

fn time_runs(env: &Env, args: &[&str]) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let out = env.banger(args);
            let d = t.elapsed();
            assert!(out.status.success(), "banger {args:?} failed");
            d
        })
        .collect();
    v.sort();
    v
}

fn report(label: &str, v: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<34} min {:>6.2} ms  median {:>6.2} ms  p95 {:>6.2} ms  max {:>6.2} ms  (n={})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 95 / 100]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("list_latency: run with `cargo bench` for figures");
        return;
    }
    println!("== banger foundation benchmark ==");

    let empty = Env::new();
    let t = Instant::now();
    empty.ok(&["vm", "list"]);
    println!(
        "{:<34} {:>6.1} ms",
        "cold `vm list` (starts bangerd)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let pid = empty.daemon_pid();
    std::thread::sleep(Duration::from_secs(1));
    println!("{:<34} {:>6} KiB", "bangerd idle RSS (0 vms)", rss_kib(pid));
    report("vm list, 0 vms", &time_runs(&empty, &["vm", "list"]));

    let full = Env::new();
    populate(&full, 1000);
    full.ok(&["daemon", "start"]);
    let pid = full.daemon_pid();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "{:<34} {:>6} KiB",
        "bangerd idle RSS (1000 vms)",
        rss_kib(pid)
    );
    let out = full.ok(&["vm", "list"]);
    assert_eq!(out.lines().count(), 1001, "header + 1000 rows");
    report(
        "vm list, 1000 vms (table)",
        &time_runs(&full, &["vm", "list"]),
    );
    report(
        "vm list, 1000 vms (--json)",
        &time_runs(&full, &["vm", "list", "--json"]),
    );
    println!(
        "{:<34} {:>6} KiB",
        "bangerd RSS after 100 lists",
        rss_kib(pid)
    );
}
