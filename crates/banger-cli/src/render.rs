//! Human tables and JSON output.

use anyhow::Result;
use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::{Accel, CheckStatus, DiskArea, DiskReport, DoctorReport, StorageStrategy};
use banger_api::size::format_size;
use banger_api::vm::VmRecord;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, Color, Table};
use serde::Serialize;

pub fn json<T: Serialize>(v: &T) -> Result<()> {
    crate::outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn table(headers: &[&str]) -> Table {
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
            vm.runtime
                .guest_ip
                .map_or_else(|| "-".into(), |ip| ip.to_string()),
            vm.created_at.format("%Y-%m-%d %H:%M").to_string(),
        ]);
    }
    crate::outln!("{t}");
}

pub fn vm_detail(vm: &VmRecord) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let rows: Vec<(&str, String)> = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.to_string()),
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
            vm.runtime
                .guest_ip
                .map_or_else(|| "-".into(), |ip| ip.to_string()),
        ),
        ("created", vm.created_at.to_rfc3339()),
        ("updated", vm.updated_at.to_rfc3339()),
    ];
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    if let Some(err) = &vm.runtime.last_error {
        t.add_row(vec![
            "last error:".to_owned(),
            crate::printable::printable(err).into_owned(),
        ]);
    }
    crate::outln!("{t}");
}

pub fn daemon_status(st: &DaemonStatus) {
    crate::outln!("bangerd {} running", st.version);
    crate::outln!("  pid:        {}", st.pid);
    crate::outln!("  since:      {}", st.started_at.to_rfc3339());
    crate::outln!("  socket:     {}", st.socket);
    crate::outln!("  state dir:  {}", st.state_dir);
    crate::outln!("  log:        {}", st.log_file);
    crate::outln!("  vms:        {}", st.vm_count);
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
    crate::outln!("{t}");
    match report.default_vmm {
        Some(c) => crate::outln!(
            "default vmm: {} ({})",
            c.vmm,
            match c.accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg, software emulation",
            }
        ),
        None => crate::outln!("default vmm: none usable: install QEMU or Firecracker"),
    }
    crate::outln!(
        "storage:     {}",
        match report.storage {
            StorageStrategy::DmSnapshot => "dm-snapshot",
            StorageStrategy::Reflink => "reflink clones",
            StorageStrategy::SparseCopy => "sparse copies",
        }
    );
    // Daemons from before the disk report send none.
    if let Some(d) = &report.disk {
        crate::outln!("{}", disk(d).trim_end_matches('\n'));
    }
}

/// The disk section: the filesystem, then each area with, under the
/// snapshots, every recorded snapshot, then what could not be measured.
fn disk(d: &DiskReport) -> String {
    let fs = d.fs.map_or_else(
        || "filesystem size unknown".to_owned(),
        |fs| {
            format!(
                "{} available of {}",
                format_size(fs.available_bytes),
                format_size(fs.total_bytes)
            )
        },
    );
    let mut out = format!("disk:        {} ({fs})\n", d.state_dir.display());
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let snapshot_rows = |t: &mut Table| {
        for s in &d.snapshots {
            t.add_row(vec![
                format!("  {}", s.name),
                format_size(s.bytes),
                format!("{} snapshot of {}", s.kind.as_str(), s.source_vm),
            ]);
        }
    };
    for a in &d.areas {
        t.add_row(vec![
            a.area.as_str().to_owned(),
            format_size(a.bytes),
            a.dir.display().to_string(),
        ]);
        if a.area == DiskArea::Snapshots {
            snapshot_rows(&mut t);
        }
    }
    if !d.areas.iter().any(|a| a.area == DiskArea::Snapshots) {
        snapshot_rows(&mut t);
    }
    if let Some(c) = t.column_mut(1) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    // Indented two under `disk:`, one of them the table's own padding.
    for line in t.to_string().lines() {
        out.push(' ');
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for e in &d.errors {
        out.push_str("  not measured: ");
        out.push_str(e);
        out.push('\n');
    }
    out
}

fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

pub fn kernel_table(ks: &[KernelRecord]) {
    let mut t = table(&["NAME", "VERSION", "SOURCE", "VMLINUX", "INITRD", "CREATED"]);
    for k in ks {
        t.add_row(vec![
            k.name.clone(),
            k.version.clone().unwrap_or_else(|| "-".into()),
            k.source.clone(),
            format_size(k.vmlinux.size),
            k.initrd
                .as_ref()
                .map_or_else(|| "-".into(), |i| format_size(i.size)),
            when(&k.created_at),
        ]);
    }
    crate::outln!("{t}");
}

fn detail(rows: Vec<(&str, String)>) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    crate::outln!("{t}");
}

fn file_line(f: &banger_api::asset::AssetFile) -> String {
    format!(
        "{} ({}, sha256 {})",
        f.path,
        format_size(f.size),
        &f.sha256[..f.sha256.len().min(16)]
    )
}

pub fn kernel_detail(k: &KernelRecord, verified: bool) {
    let mut rows = vec![
        ("name", k.name.clone()),
        ("version", k.version.clone().unwrap_or_else(|| "-".into())),
        ("source", k.source.clone()),
        ("vmlinux", file_line(&k.vmlinux)),
        (
            "initrd",
            k.initrd.as_ref().map_or_else(|| "-".into(), file_line),
        ),
        (
            "modules",
            if k.modules.is_empty() {
                "-".into()
            } else {
                k.modules.join(" ")
            },
        ),
        (
            "booted on",
            if k.booted_on.is_empty() {
                "-".into()
            } else {
                k.booted_on
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("created", k.created_at.to_rfc3339()),
    ];
    if verified {
        rows.push(("verified", "sha256 of every file matches".into()));
    }
    detail(rows);
}

pub fn image_table(is: &[ImageRecord]) {
    crate::outln!("{}", image_list(is));
}

fn image_list(is: &[ImageRecord]) -> Table {
    let mut t = table(&["NAME", "SOURCE", "INIT", "ROOTFS", "WORK SEED", "CREATED"]);
    for i in is {
        t.add_row(vec![
            i.name.clone(),
            i.source.clone(),
            i.init.to_string(),
            format_size(i.rootfs.size),
            i.work_seed
                .as_ref()
                .map_or_else(|| "-".into(), |s| format_size(s.size)),
            when(&i.created_at),
        ]);
    }
    t
}

pub fn image_detail(i: &ImageRecord, verified: bool) {
    detail(image_rows(i, verified));
}

fn image_rows(i: &ImageRecord, verified: bool) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("name", i.name.clone()),
        ("source", i.source.clone()),
        ("init", i.init.to_string()),
        ("rootfs", file_line(&i.rootfs)),
        (
            "work seed",
            i.work_seed.as_ref().map_or_else(|| "-".into(), file_line),
        ),
        (
            "packages",
            if i.packages.is_empty() {
                "-".into()
            } else {
                i.packages.join(" ")
            },
        ),
        ("created", i.created_at.to_rfc3339()),
    ];
    if verified {
        rows.push(("verified", "sha256 of every file matches".into()));
    }
    rows
}

#[cfg(test)]
mod tests {
    use banger_api::asset::{AssetFile, ImageInit};
    use banger_api::doctor::{AreaUsage, FsSpace, SnapshotUsage};
    use banger_api::snapshot::SnapshotKind;

    use super::*;

    fn image(init: ImageInit) -> ImageRecord {
        let file = |p: &str| AssetFile {
            path: p.into(),
            sha256: "ab".repeat(32),
            size: 64 << 20,
        };
        ImageRecord {
            id: "i1".into(),
            name: "tiny".into(),
            source: "import:/srv/tree".into(),
            rootfs: file("/s/rootfs.ext4"),
            work_seed: None,
            packages: vec![],
            init,
            digest: "d".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn image_show_and_list_say_the_init() {
        let rows = image_rows(&image(ImageInit::Banger), false);
        assert!(rows.contains(&("init", "banger".into())), "{rows:?}");
        let rows = image_rows(&image(ImageInit::Systemd), false);
        assert!(rows.contains(&("init", "systemd".into())), "{rows:?}");
        let list = image_list(&[image(ImageInit::Banger)]).to_string();
        let mut lines = list.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(header[..3], ["NAME", "SOURCE", "INIT"]);
        assert_eq!(row[..3], ["tiny", "import:/srv/tree", "banger"]);
        // `--json` prints the record itself.
        let v = serde_json::to_value(image(ImageInit::Banger)).expect("json");
        assert_eq!(v["init"], "banger");
    }

    fn disk_report() -> DiskReport {
        let area = |area: DiskArea, bytes| AreaUsage {
            area,
            dir: format!("/var/lib/banger/{}", area.as_str()).into(),
            bytes,
        };
        DiskReport {
            state_dir: "/var/lib/banger".into(),
            fs: Some(FsSpace {
                total_bytes: 250 << 30,
                available_bytes: 155 << 29,
            }),
            areas: vec![
                area(DiskArea::Kernels, 12 << 20),
                area(DiskArea::Images, 3 << 29),
                area(DiskArea::Vms, 0),
                area(DiskArea::Snapshots, 5 << 29),
            ],
            snapshots: vec![SnapshotUsage {
                name: "web-saved".into(),
                id: "s1".into(),
                kind: SnapshotKind::User,
                source_vm: "web".into(),
                bytes: 3 << 29,
            }],
            errors: vec!["reading /var/lib/banger/vms/x: Permission denied".into()],
        }
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn doctor_says_what_each_area_and_each_snapshot_takes() {
        let text = disk(&disk_report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "disk:        /var/lib/banger (77.5 GiB available of 250 GiB)"
        );
        assert_eq!(
            words(lines[1]),
            ["kernels", "12", "MiB", "/var/lib/banger/kernels"]
        );
        assert_eq!(words(lines[3]), ["vms", "0", "B", "/var/lib/banger/vms"]);
        assert_eq!(
            words(lines[4]),
            ["snapshots", "2.5", "GiB", "/var/lib/banger/snapshots"]
        );
        // Each snapshot under its area, by name and size.
        assert!(lines[5].starts_with("    web-saved"), "{text}");
        assert_eq!(
            words(lines[5]),
            ["web-saved", "1.5", "GiB", "user", "snapshot", "of", "web"]
        );
        assert_eq!(
            lines[6],
            "  not measured: reading /var/lib/banger/vms/x: Permission denied"
        );
        assert_eq!(lines.len(), 7, "{text}");
        // Sizes line up on the right.
        let end = |l: &str, unit: &str| l.find(unit).map(|i| i + unit.len());
        assert_eq!(end(lines[1], "MiB"), end(lines[4], "GiB"), "{text}");
    }

    #[test]
    fn a_disk_report_without_the_filesystem_or_snapshots_still_renders() {
        let mut d = disk_report();
        d.fs = None;
        d.snapshots.clear();
        d.errors.clear();
        let text = disk(&d);
        assert!(
            text.starts_with("disk:        /var/lib/banger (filesystem size unknown)\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5, "{text}");
        // `--json` prints the whole report.
        let v = serde_json::to_value(disk_report()).expect("json");
        assert_eq!(v["snapshots"][0]["name"], "web-saved");
        assert_eq!(v["snapshots"][0]["bytes"], 3u64 << 29);
        assert_eq!(v["areas"][3]["area"], "snapshots");
        assert_eq!(v["fs"]["available_bytes"], 155u64 << 29);
    }
}
