//! Human tables and JSON output.

use anyhow::Result;
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::{Accel, CheckStatus, DoctorReport, StorageStrategy};
use banger_api::size::format_size;
use banger_api::vm::VmRecord;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Color, Table};
use serde::Serialize;

pub fn json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers.to_vec());
    t
}

pub fn vm_table(vms: &[VmRecord]) {
    let mut t = table(&["NAME", "STATE", "VMM", "CPUS", "MEMORY", "IP", "CREATED"]);
    for vm in vms {
        t.add_row(vec![
            vm.name.clone(),
            vm.state.to_string(),
            vm.spec.vmm.to_string(),
            vm.spec.vcpus.to_string(),
            format_size(u64::from(vm.spec.memory_mib) << 20),
            vm.runtime.guest_ip.clone().unwrap_or_else(|| "-".into()),
            vm.created_at.format("%Y-%m-%d %H:%M").to_string(),
        ]);
    }
    println!("{t}");
}

pub fn vm_detail(vm: &VmRecord) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let rows: Vec<(&str, String)> = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.clone()),
        ("state", vm.state.to_string()),
        ("vmm", vm.spec.vmm.to_string()),
        ("cpus", vm.spec.vcpus.to_string()),
        ("memory", format_size(u64::from(vm.spec.memory_mib) << 20)),
        ("root disk", format_size(vm.spec.root_disk_bytes)),
        ("work disk", format_size(vm.spec.work_disk_bytes)),
        ("image", vm.spec.image.clone()),
        ("kernel", vm.spec.kernel.clone()),
        ("nat", if vm.spec.nat { "on" } else { "off" }.into()),
        (
            "ip",
            vm.runtime.guest_ip.clone().unwrap_or_else(|| "-".into()),
        ),
        ("created", vm.created_at.to_rfc3339()),
        ("updated", vm.updated_at.to_rfc3339()),
    ];
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    if let Some(err) = &vm.runtime.last_error {
        t.add_row(vec!["last error:".to_owned(), err.clone()]);
    }
    println!("{t}");
}

pub fn daemon_status(st: &DaemonStatus) {
    println!("bangerd {} running", st.version);
    println!("  pid:        {}", st.pid);
    println!("  since:      {}", st.started_at.to_rfc3339());
    println!("  socket:     {}", st.socket);
    println!("  state dir:  {}", st.state_dir);
    println!("  log:        {}", st.log_file);
    println!("  vms:        {}", st.vm_count);
}

pub fn doctor(report: &DoctorReport) {
    let mut t = table(&["", "CHECK", "DETAIL"]);
    for c in &report.checks {
        let (label, color) = match c.status {
            CheckStatus::Ok => ("ok", Color::Green),
            CheckStatus::Warn => ("warn", Color::Yellow),
            CheckStatus::Fail => ("fail", Color::Red),
        };
        let id = serde_json::to_value(c.id)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut detail = c.detail.clone();
        if let Some(h) = &c.hint {
            detail.push_str("\n→ ");
            detail.push_str(h);
        }
        t.add_row(vec![
            Cell::new(label).fg(color),
            Cell::new(id),
            Cell::new(detail),
        ]);
    }
    println!("{t}");
    match report.default_vmm {
        Some(c) => println!(
            "default vmm: {} ({})",
            c.vmm,
            match c.accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg, software emulation",
            }
        ),
        None => println!("default vmm: none usable: install QEMU or Firecracker"),
    }
    println!(
        "storage:     {}",
        match report.storage {
            StorageStrategy::DmSnapshot => "dm-snapshot",
            StorageStrategy::Reflink => "reflink clones",
            StorageStrategy::SparseCopy => "sparse copies",
        }
    );
}
