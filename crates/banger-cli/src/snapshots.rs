//! `banger vm pause|resume|snapshot|fork` and `banger snapshot …`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use banger_api::size::format_size;
use banger_api::snapshot::{ForkVmRequest, SnapshotRecord, SnapshotVmRequest};
use banger_client::Client;
use comfy_table::Table;
use comfy_table::presets::NOTHING;

use crate::args::{ForkArgs, SnapshotArgs, SnapshotCmd};
use crate::progress::Stages;
use crate::{render, staged};

pub(crate) async fn pause(client: &Client, vm: &str, pause: bool) -> Result<()> {
    let rec = if pause {
        client.pause_vm(vm).await
    } else {
        client.resume_vm(vm).await
    }
    .with_context(|| format!("vm {vm}"))?;
    crate::outln!("{} {}", rec.name, rec.state);
    Ok(())
}

pub(crate) async fn take(client: &Client, a: SnapshotArgs) -> Result<()> {
    let req = SnapshotVmRequest {
        name: a.name,
        stop: a.stop,
    };
    let snap = staged(a.json, async |b: &mut Stages| {
        client.snapshot_vm(&a.vm, &req, |p| b.update(p)).await
    })
    .await?;
    if a.json {
        render::json(&snap)?;
    } else {
        crate::outln!(
            "{} ({}, saved in {:.1}s)",
            snap.name,
            format_size(snap.size_bytes),
            snap.save_ms as f64 / 1000.0
        );
    }
    Ok(())
}

pub(crate) async fn fork(client: &Client, a: ForkArgs) -> Result<()> {
    let req = ForkVmRequest {
        name: a.name,
        count: Some(a.count),
    };
    let vms = staged(a.json, async |b: &mut Stages| {
        client.fork_vm(&a.vm, &req, |p| b.update(p)).await
    })
    .await?;
    if a.json {
        render::json(&vms)?;
    } else {
        for vm in &vms {
            crate::outln!(
                "{} running at {}",
                vm.name,
                vm.runtime
                    .guest_ip
                    .map_or_else(|| "-".into(), |ip| ip.to_string())
            );
        }
    }
    Ok(())
}

pub(crate) async fn snapshot(client: &Client, cmd: SnapshotCmd) -> Result<ExitCode> {
    match cmd {
        SnapshotCmd::List { json } => {
            let snaps = client.list_snapshots().await?;
            if json {
                render::json(&snaps)?;
            } else {
                table(&snaps);
            }
        }
        SnapshotCmd::Show { name, json } => {
            let snap = client.show_snapshot(&name).await?;
            if json {
                render::json(&snap)?;
            } else {
                detail(&snap);
            }
        }
        SnapshotCmd::Rm { names } => {
            let mut failed = false;
            for name in names {
                match client.remove_snapshot(&name).await {
                    Ok(s) => crate::outln!("removed {} ({})", s.name, format_size(s.size_bytes)),
                    Err(e) => {
                        eprintln!(
                            "error: {name}: {}",
                            crate::printable::printable(&e.to_string())
                        );
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(snaps: &[SnapshotRecord]) {
    let mut t = render::table(&[
        "NAME", "VM", "VMM", "CPUS", "MEMORY", "SIZE", "KIND", "CREATED",
    ]);
    for s in snaps {
        t.add_row(vec![
            s.name.clone(),
            s.source_vm.clone(),
            s.machine.vmm.to_string(),
            s.machine.vcpus.to_string(),
            format_size(u64::from(s.machine.memory_mib) << 20),
            format_size(s.size_bytes),
            s.kind.as_str().to_owned(),
            s.created_at.format("%Y-%m-%d %H:%M").to_string(),
        ]);
    }
    crate::outln!("{t}");
}

fn detail(s: &SnapshotRecord) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let m = &s.machine;
    let rows: Vec<(&str, String)> = vec![
        ("name", s.name.clone()),
        ("id", s.id.clone()),
        ("kind", s.kind.as_str().to_owned()),
        ("of vm", format!("{} ({})", s.source_vm, s.source_vm_id)),
        ("vmm", m.vmm.to_string()),
        ("cpus", m.vcpus.to_string()),
        ("memory", format_size(u64::from(m.memory_mib) << 20)),
        ("root disk", format_size(m.root_disk_bytes)),
        ("work disk", format_size(m.work_disk_bytes)),
        ("kernel", m.kernel.clone()),
        ("image", m.image.clone()),
        ("devices", m.devices.join(", ")),
        ("size", format_size(s.size_bytes)),
        ("saved in", format!("{:.1}s", s.save_ms as f64 / 1000.0)),
        ("dir", s.dir.display().to_string()),
        ("created", s.created_at.to_rfc3339()),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    crate::outln!("{t}");
}
