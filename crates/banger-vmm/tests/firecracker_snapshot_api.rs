//! Firecracker's snapshot API against the real binary
//! (`BANGER_FIRECRACKER_BIN`; scripts/test.sh points it at
//! `../shared/bin/firecracker`), on processes nothing was configured in
//! (no guest, no KVM needed): the paths, methods and bodies banger sends
//! are accepted by Firecracker's parser (a wrong field is a different
//! 400), and its refusals arrive as typed errors carrying its fault
//! message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use banger_http::StatusCode;
use banger_vmm::firecracker::models::{
    MemBackend, MemBackendType, NetworkOverride, SnapshotCreate, SnapshotLoad, SnapshotType, Vm,
    VmState, VsockOverride,
};
use banger_vmm::firecracker::{FcApi, FirecrackerVmm, MEMORY_FILE, STATE_FILE};
use banger_vmm::{Vmm, VmmError, process};
use common::{VmDir, firecracker, refusal};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A Firecracker with nothing configured, killed when dropped.
struct Bare {
    child: tokio::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bare {
    async fn start(bin: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("fc.sock");
        let mut child = tokio::process::Command::new(bin)
            .arg("--api-sock")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn firecracker");
        // It logs this line after bind and listen: the socket is up.
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if line.contains("Listening on API socket") {
                    return;
                }
            }
            panic!("firecracker exited before listening");
        };
        tokio::time::timeout(Duration::from_secs(10), listening)
            .await
            .expect("firecracker's API socket within 10s");
        // Drained, so its logging never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn api(&self) -> FcApi {
        FcApi::new(&self.socket)
    }
}

/// The fields Firecracker's parser accepts in `body` (or in its object
/// at `inner`): it is sent with one unknown field, and the parser's
/// refusal lists the ones it expected.
async fn accepted_fields(
    api: &FcApi,
    patch: bool,
    path: &str,
    mut body: Value,
    inner: Option<&str>,
) -> Vec<String> {
    let target = match inner {
        Some(key) => &mut body[key],
        None => &mut body,
    };
    target["banger_probe"] = json!(0);
    let sent = if patch {
        api.patch(path, &body).await
    } else {
        api.put(path, &body).await
    };
    let err = sent.expect_err("an unknown field is refused");
    let (status, _, fault) = refusal(&err);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let expected = fault
        .split_once("unknown field `banger_probe`, expected ")
        .unwrap_or_else(|| panic!("not the parser's unknown field: {fault}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every key of `typed`'s JSON (or of its object at `inner`) is one the
/// parser knows.
async fn known_to_the_parser(
    api: &FcApi,
    patch: bool,
    path: &str,
    typed: Value,
    inner: Option<&str>,
) {
    let ours: Vec<String> = match inner {
        Some(key) => &typed[key],
        None => &typed,
    }
    .as_object()
    .expect("an object")
    .keys()
    .cloned()
    .collect();
    let accepted = accepted_fields(api, patch, path, typed, inner).await;
    for key in &ours {
        assert!(
            accepted.contains(key),
            "{path}: `{key}` is not a field Firecracker accepts: {accepted:?}"
        );
    }
}

fn load_body(dir: &Path) -> SnapshotLoad {
    SnapshotLoad {
        snapshot_path: dir.join(STATE_FILE),
        mem_backend: MemBackend {
            backend_type: MemBackendType::File,
            backend_path: dir.join(MEMORY_FILE),
        },
        resume_vm: true,
        network_overrides: vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "bg-000000000000".into(),
        }],
        vsock_override: Some(VsockOverride {
            uds_path: dir.join("v.sock"),
        }),
    }
}

const NOT_STARTED: &str = "The requested operation is not supported before starting the microVM.";

#[tokio::test]
async fn firecrackers_parser_takes_the_snapshot_bodies_and_its_refusals_arrive_typed() {
    let Some(bin) = firecracker("firecracker snapshot API test") else {
        return;
    };
    let mut fc = Bare::start(&bin).await;
    let api = fc.api();
    let vmm = FirecrackerVmm {
        bin: bin.clone(),
        jail: None,
    };
    let snap = tempfile::tempdir().expect("tempdir");

    // The driver's calls parse, and the VMM refuses them: nothing runs.
    assert!(
        !vmm.is_paused(&fc.socket).await.expect("state"),
        "not started is not paused"
    );
    let paused = vmm.pause(&fc.socket).await.expect_err("nothing to pause");
    assert_eq!(
        refusal(&paused),
        (StatusCode::BAD_REQUEST, "/vm", NOT_STARTED),
        "{paused}"
    );
    let resumed = vmm.resume(&fc.socket).await.expect_err("nothing to resume");
    assert_eq!(
        refusal(&resumed),
        (StatusCode::BAD_REQUEST, "/vm", NOT_STARTED)
    );
    let saved = vmm
        .save(&fc.socket, snap.path())
        .await
        .expect_err("nothing to save");
    assert_eq!(
        refusal(&saved),
        (StatusCode::BAD_REQUEST, "/snapshot/create", NOT_STARTED),
        "{saved}"
    );
    assert!(
        std::fs::read_dir(snap.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing written"
    );

    // Every field banger sends is one the parser knows (a probe field it
    // does not know makes it list those it does).
    let vm = serde_json::to_value(Vm {
        state: VmState::Paused,
    })
    .expect("encode");
    known_to_the_parser(&api, true, "/vm", vm, None).await;
    let create = serde_json::to_value(SnapshotCreate {
        snapshot_type: SnapshotType::Full,
        snapshot_path: snap.path().join(STATE_FILE),
        mem_file_path: snap.path().join(MEMORY_FILE),
    })
    .expect("encode");
    known_to_the_parser(&api, false, "/snapshot/create", create, None).await;
    let load = serde_json::to_value(load_body(snap.path())).expect("encode");
    known_to_the_parser(&api, false, "/snapshot/load", load.clone(), None).await;
    known_to_the_parser(
        &api,
        false,
        "/snapshot/load",
        load.clone(),
        Some("mem_backend"),
    )
    .await;
    // A misspelt override is a parser error, not the file error below.
    let mut misspelt = load.clone();
    misspelt["network_overrides"][0] = json!({ "iface_id": "eth0", "host_dev": "bg-0" });
    let err = api
        .put("/snapshot/load", &misspelt)
        .await
        .expect_err("refused");
    assert!(
        refusal(&err).2.contains("missing field `host_dev_name`"),
        "{err}"
    );

    // The whole body parses (overrides included: a missing field inside
    // them is refused as above) and the load reaches the files, which
    // are not there.
    let err = api
        .put("/snapshot/load", load_body(snap.path()))
        .await
        .expect_err("no snapshot");
    let (status, path, fault) = refusal(&err);
    assert_eq!((status, path), (StatusCode::BAD_REQUEST, "/snapshot/load"));
    assert!(
        fault.contains("Failed to open snapshot file: No such file or directory"),
        "{fault}"
    );
    // A failed load ends Firecracker: a restore cannot retry in it.
    let status = tokio::time::timeout(Duration::from_secs(10), fc.child.wait())
        .await
        .expect("firecracker exits after a failed load")
        .expect("wait");
    assert!(!status.success(), "{status}");
}

#[tokio::test]
async fn a_vm_whose_drive_has_an_absolute_path_is_not_saved() {
    let Some(bin) = firecracker("firecracker pinned drive test") else {
        return;
    };
    let fc = Bare::start(&bin).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("root.ext4");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    // How a VM started before drives were named relative was configured.
    let drive = json!({ "drive_id": "d0", "path_on_host": disk, "is_root_device": false, "is_read_only": false });
    fc.api().put("/drives/d0", drive).await.expect("drive");
    let snap = tempfile::tempdir().expect("tempdir");
    let vmm = FirecrackerVmm { bin, jail: None };
    let err = vmm
        .save(&fc.socket, snap.path())
        .await
        .expect_err("a restore would open this VM's disk");
    assert!(
        matches!(&err, VmmError::Snapshot { why, .. } if why.starts_with(&format!("drive d0 is {}", disk.display()))),
        "{err}"
    );
}

#[tokio::test]
async fn a_restore_from_a_missing_snapshot_reports_firecrackers_fault_and_leaves_nothing() {
    let Some(bin) = firecracker("firecracker restore test") else {
        return;
    };
    let vmm = FirecrackerVmm { bin, jail: None };
    let vm = VmDir::new("00000000000000b1");
    let spec = vm.spec(Path::new("/nonexistent/vmlinux"));
    let empty = tempfile::tempdir().expect("tempdir");
    let err = vmm
        .restore(&spec, empty.path())
        .await
        .expect_err("nothing to restore");
    let (status, path, fault) = refusal(&err);
    assert_eq!((status, path), (StatusCode::BAD_REQUEST, "/snapshot/load"));
    assert!(fault.contains("Failed to open snapshot file"), "{fault}");
    assert!(
        process::all_by_socket(&spec.control_socket).is_empty(),
        "no firecracker left"
    );
    assert!(!spec.pid_file.exists(), "no pid recorded");
    // Logged before the load: the process's own log was configured.
    let log = std::fs::read_to_string(vm.path("firecracker.log")).expect("firecracker.log");
    assert!(log.contains("/snapshot/load"), "{log}");
}
