//! Create, set, delete, shutdown and doctor against fake host
//! dependencies.

use std::path::Path;
use std::sync::Arc;

use banger_api::doctor::{
    Accel, Check, CheckId, CheckStatus, DoctorReport, StorageStrategy, VmmChoice,
};
use banger_api::name::validate_name;
use banger_api::vm::{CreateVmRequest, SetVmRequest, VmRecord, VmState, VmmKind};
use banger_config::Config;
use banger_store::Store;

use crate::core::{Core, GRACEFUL_STOP};
use crate::lifecycle::LifecycleError;
use crate::{Command, CoreError, ProgressSink, Reply};

fn core_with(state_dir: &Path) -> Core {
    let cfg = Config::load_with(|k| match k {
        "BANGER_CONFIG" => Some("/dev/null".into()),
        "BANGER_STATE_DIR" => Some(state_dir.display().to_string()),
        "BANGER_AUTO_PROVISION" => Some("false".into()),
        _ => None,
    })
    .expect("config");
    let store = Arc::new(Store::open_in_memory().expect("store"));
    crate::testing::seed_default_assets(&store);
    let core = Core::new(cfg, Arc::clone(&store), crate::testing::fake_deps().deps);
    // A host with QEMU/TCG and nothing else, without running probes.
    core.for_tests(
        GRACEFUL_STOP,
        DoctorReport {
            checks: vec![Check {
                id: CheckId::Qemu,
                status: CheckStatus::Ok,
                detail: "QEMU emulator version 7.2".into(),
                hint: None,
            }],
            default_vmm: Some(VmmChoice {
                vmm: VmmKind::Qemu,
                accel: Accel::Tcg,
            }),
            storage: StorageStrategy::SparseCopy,
            disk: None,
        },
    )
}

async fn run(core: &Core, cmd: Command) -> Result<Reply, CoreError> {
    core.execute(cmd, &ProgressSink::discard()).await
}

async fn create(core: &Core, name: Option<&str>) -> VmRecord {
    let req = CreateVmRequest {
        name: name.map(str::to_owned),
        ..CreateVmRequest::default()
    };
    match run(core, Command::VmCreate(req)).await.expect("create") {
        Reply::Vm(v) => v,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn force_state(core: &Core, name: &str, state: VmState) {
    let mut vm = core.find_vm(name).await.expect("find");
    vm.state = state;
    core.db(move |s| s.update_vm(&vm)).await.expect("update");
}

#[tokio::test]
async fn create_applies_defaults_and_host_vmm_and_streams_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    let (sink, mut rx) = ProgressSink::channel();
    let reply = core
        .execute(Command::VmCreate(CreateVmRequest::default()), &sink)
        .await
        .expect("create");
    let Reply::Vm(vm) = reply else {
        panic!("reply")
    };
    assert_eq!(vm.state, VmState::Created);
    assert_eq!(vm.spec.vmm, VmmKind::Qemu);
    assert_eq!(vm.spec.vcpus, 2);
    assert_eq!(vm.spec.image, "default");
    assert_eq!(validate_name(&vm.name), Ok(()));
    assert_eq!(vm.id.len(), 16);
    let mut stages = Vec::new();
    while let Ok(p) = rx.try_recv() {
        stages.push(p.stage);
    }
    assert_eq!(stages, ["validate", "persist"]);

    // A named asset that does not exist is a clear error, not a build.
    let err = run(
        &core,
        Command::VmCreate(CreateVmRequest {
            image: Some("missing".into()),
            ..Default::default()
        }),
    )
    .await
    .expect_err("no such image");
    assert!(
        err.to_string().contains("banger image build missing"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_rejected_and_loses_no_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    create(&core, Some("keep")).await;
    let bad = [
        CreateVmRequest {
            name: Some("Bad_Name".into()),
            ..Default::default()
        },
        CreateVmRequest {
            vcpus: Some(0),
            ..Default::default()
        },
        CreateVmRequest {
            memory_mib: Some(64),
            ..Default::default()
        },
        CreateVmRequest {
            root_disk_bytes: Some(1),
            ..Default::default()
        },
        CreateVmRequest {
            image: Some("../etc".into()),
            ..Default::default()
        },
    ];
    for req in bad {
        let err = run(&core, Command::VmCreate(req.clone()))
            .await
            .expect_err("invalid");
        assert!(
            matches!(err, CoreError::InvalidArgument(_)),
            "{req:?}: {err}"
        );
    }
    let err = run(
        &core,
        Command::VmCreate(CreateVmRequest {
            vmm: Some(VmmKind::Firecracker),
            ..Default::default()
        }),
    )
    .await
    .expect_err("no firecracker");
    assert!(matches!(err, CoreError::Unavailable(_)), "{err}");
    let err = run(
        &core,
        Command::VmCreate(CreateVmRequest {
            name: Some("keep".into()),
            ..Default::default()
        }),
    )
    .await
    .expect_err("clash");
    assert!(
        matches!(err, CoreError::NameTaken(ref n) if n == "keep"),
        "{err}"
    );
    let Reply::Vms(all) = run(&core, Command::VmList).await.expect("list") else {
        panic!()
    };
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "keep");
}

#[tokio::test]
async fn delete_of_running_vm_is_refused_and_stopped_vm_is_removed_with_its_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    let vm = create(&core, Some("runner")).await;
    force_state(&core, "runner", VmState::Running).await;
    let err = run(
        &core,
        Command::VmDelete {
            vm: "runner".into(),
        },
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(
            err,
            CoreError::Lifecycle(LifecycleError::ActionRefused { .. })
        ),
        "{err}"
    );

    // Give it a directory, stop it, delete it by id.
    let vm_dir = core.layout().vm_dir(&vm.id);
    std::fs::create_dir_all(&vm_dir).expect("mkdir");
    std::fs::write(vm_dir.join("console.log"), b"x").expect("file");
    let mut rec = core.find_vm("runner").await.expect("find");
    rec.state = VmState::Stopped;
    rec.runtime.vm_dir = Some(vm_dir.clone());
    let r = rec.clone();
    core.db(move |s| s.update_vm(&r)).await.expect("update");
    run(
        &core,
        Command::VmDelete {
            vm: vm.id.to_string(),
        },
    )
    .await
    .expect("delete");
    assert!(!vm_dir.exists());
    let err = run(
        &core,
        Command::VmShow {
            vm: "runner".into(),
        },
    )
    .await
    .expect_err("gone");
    assert!(matches!(err, CoreError::VmNotFound(_)));
}

#[tokio::test]
async fn delete_never_removes_a_dir_outside_the_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let core = core_with(dir.path());
    create(&core, Some("evil")).await;
    let mut rec = core.find_vm("evil").await.expect("find");
    rec.runtime.vm_dir = Some(outside.path().to_owned());
    let r = rec.clone();
    core.db(move |s| s.update_vm(&r)).await.expect("update");
    let err = run(&core, Command::VmDelete { vm: "evil".into() })
        .await
        .expect_err("refuse");
    assert!(err.to_string().contains("refusing"), "{err}");
    assert!(outside.path().exists());
    assert!(
        core.find_vm("evil").await.is_ok(),
        "row kept when delete fails"
    );
}

#[tokio::test]
async fn set_checks_state_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    create(&core, Some("cfg")).await;
    let set = |changes| Command::VmSet {
        vm: "cfg".into(),
        changes,
    };

    let err = run(&core, set(SetVmRequest::default()))
        .await
        .expect_err("empty");
    assert!(matches!(err, CoreError::InvalidArgument(_)));

    let Reply::Vm(v) = run(
        &core,
        set(SetVmRequest {
            vcpus: Some(4),
            nat: Some(true),
            ..Default::default()
        }),
    )
    .await
    .expect("set") else {
        panic!()
    };
    assert_eq!((v.spec.vcpus, v.spec.nat), (4, true));

    let err = run(
        &core,
        set(SetVmRequest {
            work_disk_bytes: Some(1 << 30),
            ..Default::default()
        }),
    )
    .await
    .expect_err("shrink");
    assert!(err.to_string().contains("not shrink"), "{err}");

    force_state(&core, "cfg", VmState::Running).await;
    let err = run(
        &core,
        set(SetVmRequest {
            memory_mib: Some(2048),
            ..Default::default()
        }),
    )
    .await
    .expect_err("running");
    assert!(matches!(err, CoreError::Lifecycle(_)), "{err}");
    // Capabilities may change on a running VM.
    run(
        &core,
        set(SetVmRequest {
            nat: Some(false),
            ..Default::default()
        }),
    )
    .await
    .expect("nat on running vm");
    let v = core.find_vm("cfg").await.expect("find");
    assert_eq!(
        (v.spec.vcpus, v.spec.memory_mib, v.spec.nat),
        (4, 1024, false)
    );
}

#[tokio::test]
async fn shutdown_refuses_further_commands_but_answers_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    let mut rx = core.shutdown_requested();
    run(&core, Command::Shutdown).await.expect("shutdown");
    assert!(*rx.borrow_and_update());
    assert!(matches!(
        run(&core, Command::VmList).await,
        Err(CoreError::ShuttingDown)
    ));
    assert!(matches!(
        run(&core, Command::DaemonStatus).await,
        Ok(Reply::Status(_))
    ));
}

#[tokio::test]
async fn concurrent_generated_creates_get_distinct_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = Arc::new(core_with(dir.path()));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let core = Arc::clone(&core);
        tasks.push(tokio::spawn(async move { create(&core, None).await.name }));
    }
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.expect("task"));
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 20);
}

#[tokio::test]
async fn doctor_measures_the_state_dir_and_every_recorded_snapshot_but_caches_no_disk() {
    use banger_api::doctor::DiskArea;

    let dir = tempfile::tempdir().expect("tempdir");
    let core = core_with(dir.path());
    let snap_dir = core.layout().snapshots_dir().join("s1");
    std::fs::create_dir_all(&snap_dir).expect("snapshot dir");
    std::fs::write(snap_dir.join("root.ext4"), vec![1u8; 64 << 10]).expect("disk");
    let rec = banger_host::doctor::recorded_snapshot("saved", snap_dir.clone());
    core.db(move |s| s.insert_snapshot(&rec))
        .await
        .expect("record");

    let Reply::Doctor(report) = run(&core, Command::Doctor).await.expect("doctor") else {
        panic!("reply")
    };
    let disk = report
        .disk
        .expect("the doctor's answer has the disk section");
    assert_eq!(disk.state_dir, dir.path());
    let areas: Vec<DiskArea> = disk.areas.iter().map(|a| a.area).collect();
    assert_eq!(
        areas,
        [
            DiskArea::Kernels,
            DiskArea::Images,
            DiskArea::Vms,
            DiskArea::Snapshots
        ]
    );
    let measured = banger_host::doctor::allocated_bytes(&snap_dir).expect("measure");
    assert_eq!(disk.snapshots.len(), 1);
    assert_eq!(
        (disk.snapshots[0].name.as_str(), disk.snapshots[0].bytes),
        ("saved", measured),
        "measured now, not the recorded size"
    );
    assert!(measured >= 64 << 10);
    assert_eq!(
        disk.areas[3].bytes,
        banger_host::doctor::allocated_bytes(&core.layout().snapshots_dir()).expect("measure")
    );
    assert!(disk.errors.is_empty(), "{:?}", disk.errors);
    let cached = core.host_report().await.expect("cached report");
    assert_eq!(
        cached.disk, None,
        "VM creation's report has no disk section"
    );
}
