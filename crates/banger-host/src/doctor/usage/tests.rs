use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use super::*;

const MIB: u64 = 1 << 20;

/// What the filesystem says `path` itself takes (no walk).
fn own(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).expect("lstat").blocks() * 512
}

/// A file with `data` bytes written at `at`, `len` long in all.
fn file(path: &Path, len: u64, at: u64, data: usize) {
    let mut f = File::create(path).expect("create");
    f.set_len(len).expect("set_len");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&vec![0xa5; data]).expect("write");
    // Allocated for certain, not only reserved by delayed allocation.
    f.sync_all().expect("sync");
}

fn inputs(state: &Path, snapshots: Vec<SnapshotRecord>) -> DiskInputs {
    DiskInputs {
        state_dir: state.to_owned(),
        areas: [
            DiskArea::Kernels,
            DiskArea::Images,
            DiskArea::Vms,
            DiskArea::Snapshots,
        ]
        .into_iter()
        .map(|a| (a, state.join(a.as_str())))
        .collect(),
        snapshots,
    }
}

#[test]
fn a_sparse_file_counts_only_its_allocated_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("root.ext4");
    file(&disk, 64 * MIB, MIB, 4096);
    let bytes = allocated_bytes(&disk).expect("measure");
    assert_eq!(bytes, own(&disk));
    assert!(
        (4096..MIB).contains(&bytes),
        "a 64 MiB file with 4 KiB written takes {bytes}"
    );
    let full = dir.path().join("full");
    file(&full, MIB, 0, 1 << 20);
    assert!(allocated_bytes(&full).expect("measure") >= MIB);
    assert_eq!(
        allocated_bytes(dir.path()).expect("measure"),
        own(dir.path()) + own(&disk) + own(&full),
        "a directory is itself and everything below it"
    );
}

#[test]
fn hard_links_count_once_and_symlinks_are_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    file(&outside, 2 * MIB, 0, 2 << 20);
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    let a = tree.join("a");
    file(&a, MIB / 4, 0, 1 << 18);
    std::fs::hard_link(&a, tree.join("b")).expect("link");
    let link = tree.join("to-outside");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    assert_eq!(
        allocated_bytes(&tree).expect("measure"),
        own(&tree) + own(&a) + own(&link),
        "b is a, and the link's target is not in the tree"
    );
}

#[test]
fn the_report_measures_each_area_and_each_recorded_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    // No kernels/ yet: it takes nothing, and that is no error.
    std::fs::create_dir_all(state.join("images/d1")).expect("images");
    file(&state.join("images/d1/rootfs.ext4"), 8 * MIB, 0, 1 << 16);
    std::fs::create_dir_all(state.join("vms/v1")).expect("vms");
    file(&state.join("vms/v1/root.ext4"), 64 * MIB, MIB, 4096);
    let snaps = state.join("snapshots");
    for d in ["s1/vmm", "s2", ".staging-s3"] {
        std::fs::create_dir_all(snaps.join(d)).expect("snapshots");
    }
    file(&snaps.join("s1/vmm/memory"), 16 * MIB, 0, 1 << 17);
    file(&snaps.join("s1/root.ext4"), 64 * MIB, 0, 4096);
    file(&snaps.join("s2/root.ext4"), 64 * MIB, 0, 8192);
    file(&snaps.join(".staging-s3/root.ext4"), MIB, 0, 4096);
    let records = vec![
        recorded_snapshot("one", snaps.join("s1")),
        recorded_snapshot("two", snaps.join("s2")),
        recorded_snapshot("gone", snaps.join("s9")),
    ];

    let r = measure_disk(&inputs(state, records));
    assert_eq!(r.state_dir, state);
    let fs = r.fs.expect("statvfs of the state dir");
    assert!(fs.total_bytes >= fs.available_bytes && fs.total_bytes > 0);
    let sizes: Vec<(DiskArea, u64)> = r.areas.iter().map(|a| (a.area, a.bytes)).collect();
    let measure = |p: &str| allocated_bytes(&state.join(p)).expect("measure");
    assert_eq!(
        sizes,
        vec![
            (DiskArea::Kernels, 0),
            (DiskArea::Images, measure("images")),
            (DiskArea::Vms, measure("vms")),
            (DiskArea::Snapshots, measure("snapshots")),
        ]
    );
    assert_eq!(r.areas[2].dir, state.join("vms"));
    let snapshots: Vec<(&str, u64)> = r
        .snapshots
        .iter()
        .map(|s| (s.name.as_str(), s.bytes))
        .collect();
    assert_eq!(
        snapshots,
        vec![
            ("one", measure("snapshots/s1")),
            ("two", measure("snapshots/s2")),
            ("gone", 0),
        ]
    );
    assert!(r.snapshots[0].bytes >= (1 << 17) + 4096);
    assert_eq!(r.snapshots[0].id, "id-one");
    assert_eq!(
        r.errors,
        vec![format!(
            "snapshot gone: its directory {} is missing",
            snaps.join("s9").display()
        )]
    );
}

/// A directory `depth` levels of long names deep, made relative to each
/// parent: its full path is longer than the kernel takes (PATH_MAX), so a
/// walk by path fails there, even as root.
fn too_deep(root: &Path, depth: usize) {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    let name = "d".repeat(200);
    let mut fd: std::os::fd::OwnedFd = File::open(root).expect("open").into();
    for _ in 0..depth {
        mkdirat(&fd, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
        fd = openat(
            &fd,
            name.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .expect("openat");
    }
}

#[test]
fn what_cannot_be_read_is_an_error_and_the_rest_is_still_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let vm = state.join("vms/v1");
    std::fs::create_dir_all(&vm).expect("vms");
    file(&vm.join("root.ext4"), MIB, 0, 1 << 16);
    too_deep(&state.join("vms"), 24);

    let r = measure_disk(&inputs(state, vec![]));
    let vms = r.areas[2].bytes;
    assert!(
        vms >= own(&vm) + own(&vm.join("root.ext4")),
        "the readable VM is counted: {vms}"
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].starts_with(&format!("reading {}/ddd", state.join("vms").display()))
            && r.errors[0].contains("too long"),
        "{}",
        r.errors[0]
    );
    // A recorded size is all or nothing.
    let err = allocated_bytes(&state.join("vms")).expect_err("a part was unreadable");
    assert!(matches!(err, UsageError::Read { .. }), "{err}");
}

#[test]
fn a_symlinked_area_is_said_and_not_followed_and_errors_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    file(&elsewhere.join("big"), MIB, 0, 1 << 20);
    std::os::unix::fs::symlink(&elsewhere, state.join("images")).expect("symlink");
    let r = measure_disk(&inputs(&state, vec![]));
    assert!(r.areas[1].bytes < MIB, "{:?}", r.areas[1]);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].starts_with("images: "), "{}", r.errors[0]);

    let many: Vec<UsageError> = (0..ERRORS_MAX + 3)
        .map(|i| UsageError::SnapshotMissing {
            name: format!("s{i}"),
            path: PathBuf::from("/x"),
        })
        .collect();
    let lines = error_lines(&many);
    assert_eq!(lines.len(), ERRORS_MAX + 1);
    assert_eq!(lines[ERRORS_MAX], "… and 3 more");
}

#[test]
fn a_missing_state_dir_is_an_error_not_an_empty_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("never-made");
    let r = measure_disk(&inputs(&state, vec![]));
    assert_eq!(r.fs, None);
    assert!(r.areas.iter().all(|a| a.bytes == 0));
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].starts_with("free space of "), "{}", r.errors[0]);
}
