use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::vm::{VmRecord, VmRuntime, VmSpec, VmState, VmmKind};
use chrono::Utc;
use rusqlite::Connection;

use super::*;

fn record(id: &str, name: &str) -> VmRecord {
    let now = Utc::now();
    VmRecord {
        id: id.into(),
        name: name.into(),
        state: VmState::Created,
        spec: VmSpec {
            vcpus: 2,
            memory_mib: 1024,
            root_disk_bytes: 8 << 30,
            work_disk_bytes: 8 << 30,
            image: "default".into(),
            kernel: "default".into(),
            nat: false,
            vmm: VmmKind::Qemu,
        },
        runtime: VmRuntime::default(),
        created_at: now,
        updated_at: now,
    }
}

#[test]
fn migrates_empty_db_and_reopens_without_rerunning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("banger.db");
    {
        let store = Store::open(&path).expect("open fresh");
        assert_eq!(
            store.schema_version().expect("version"),
            MIGRATIONS.len() as i64
        );
        store.insert_vm(&record("a1", "alpha")).expect("insert");
    }
    let store = Store::open(&path).expect("re-open");
    assert_eq!(
        store.schema_version().expect("version"),
        MIGRATIONS.len() as i64
    );
    assert_eq!(
        store.list_vms().expect("list").len(),
        1,
        "data survives re-open"
    );
    let mode: String = store
        .conn()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn a_database_migrated_by_the_old_runner_is_not_migrated_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("banger.db");
    {
        // What the hand-rolled runner left behind: schema 1 and
        // user_version 1. Running schema 1 again would fail on its
        // CREATE TABLEs, so opening proves it is skipped.
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(crate::migrations::V1_INITIAL)
            .expect("old schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO vms (id, name, state, spec_json, created_at, updated_at)
             VALUES ('old1', 'old', 'created', ?1, ?2, ?2)",
            rusqlite::params![
                serde_json::to_string(&record("x", "x").spec).expect("spec"),
                Utc::now().to_rfc3339()
            ],
        )
        .expect("old row");
    }
    let store = Store::open(&path).expect("open old db");
    assert_eq!(
        store.schema_version().expect("version"),
        MIGRATIONS.len() as i64
    );
    let vm = store.find_vm("old").expect("find").expect("old row kept");
    assert_eq!(&*vm.id, "old1");
}

#[test]
fn refuses_a_database_from_the_future() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("banger.db");
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99).expect("bump");
    }
    let err = Store::open(&path).expect_err("too new");
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

/// The shape the core keeps its teardown mirror in (opaque to the store).
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Mirror {
    tap: Option<String>,
    jail_root: Option<String>,
}

#[test]
fn a_v1_row_keeps_its_teardown_mirror_in_its_own_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(crate::migrations::V1_INITIAL)
            .expect("old schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        // The mirror as the old daemon wrote it, dead fields included.
        let runtime = r#"{"guest_ip":"10.0.0.2","vm_dir":"/s/vms/old1","teardown":{"tap":"bg-old1","loops":["/dev/loop0"],"dm_target":"banger-old1","jail_root":"/j/old1"}}"#;
        conn.execute(
            "INSERT INTO vms (id, name, state, spec_json, runtime_json, created_at, updated_at)
             VALUES ('old1', 'old', 'running', ?1, ?2, ?3, ?3)",
            rusqlite::params![
                serde_json::to_string(&record("x", "x").spec).expect("spec"),
                runtime,
                Utc::now().to_rfc3339()
            ],
        )
        .expect("old row");
        conn.execute(
            "INSERT INTO vms (id, name, state, spec_json, created_at, updated_at)
             VALUES ('old2', 'bare', 'created', ?1, ?2, ?2)",
            rusqlite::params![
                serde_json::to_string(&record("x", "x").spec).expect("spec"),
                Utc::now().to_rfc3339()
            ],
        )
        .expect("old row without a mirror");
    }
    let store = Store::open(&path).expect("open old db");
    let vm = store.find_vm("old").expect("find").expect("kept");
    assert_eq!(
        vm.runtime.guest_ip,
        Some(std::net::Ipv4Addr::new(10, 0, 0, 2))
    );
    assert_eq!(
        store.vm_teardown::<Mirror>("old1").expect("mirror"),
        Mirror {
            tap: Some("bg-old1".into()),
            jail_root: Some("/j/old1".into())
        }
    );
    let raw: String = store
        .conn()
        .query_row("SELECT runtime_json FROM vms WHERE id = 'old1'", [], |r| {
            r.get(0)
        })
        .expect("raw runtime");
    assert!(
        !raw.contains("teardown"),
        "moved out of the wire record: {raw}"
    );
    assert_eq!(
        store.vm_teardown::<Mirror>("old2").expect("none"),
        Mirror::default()
    );
    assert!(matches!(
        store.vm_teardown::<Mirror>("nope"),
        Err(StoreError::VmNotFound(_))
    ));
}

#[test]
fn unique_names_and_crud() {
    let store = Store::open_in_memory().expect("open");
    store.insert_vm(&record("id1", "box")).expect("insert");
    let err = store.insert_vm(&record("id2", "box")).expect_err("clash");
    assert!(matches!(err, StoreError::NameTaken(ref n) if n == "box"));

    let mut vm = store.find_vm("box").expect("find").expect("present");
    assert_eq!(
        store.find_vm("id1").expect("by id").expect("present").name,
        "box"
    );
    vm.state = VmState::Running;
    vm.runtime.guest_ip = Some(std::net::Ipv4Addr::new(172, 16, 0, 2));
    store.update_vm(&vm).expect("update");
    let back = store.find_vm("box").expect("find").expect("present");
    assert_eq!(back, vm);
    let mirror = Mirror {
        tap: Some("bg-id1".into()),
        jail_root: None,
    };
    store.set_vm_teardown("id1", &mirror).expect("mirror");
    assert_eq!(
        store.vm_teardown::<Mirror>("id1").expect("mirror back"),
        mirror
    );
    store.update_vm(&vm).expect("update");
    assert_eq!(
        store.vm_teardown::<Mirror>("id1").expect("mirror"),
        mirror,
        "a record update leaves the mirror alone"
    );

    assert!(store.vm_name_exists("box").expect("exists"));
    assert!(store.delete_vm("id1").expect("delete"));
    assert!(!store.delete_vm("id1").expect("idempotent delete"));
    assert!(store.find_vm("box").expect("find").is_none());
    let err = store.update_vm(&vm).expect_err("gone");
    assert!(matches!(err, StoreError::VmNotFound(_)));
}

#[test]
fn corrupt_rows_are_reported_with_the_vm_id() {
    let store = Store::open_in_memory().expect("open");
    store.insert_vm(&record("bad1", "bad")).expect("insert");
    store
        .conn()
        .execute("UPDATE vms SET spec_json = 'nope' WHERE id = 'bad1'", [])
        .expect("corrupt it");
    let err = store.list_vms().expect_err("corrupt");
    assert!(err.to_string().contains("bad1"), "{err}");
}

fn kernel(id: &str, name: &str, digest: &str) -> KernelRecord {
    KernelRecord {
        id: id.into(),
        name: name.into(),
        version: Some("6.1.0".into()),
        source: "import".into(),
        vmlinux: banger_api::asset::AssetFile {
            path: format!("/k/{digest}/vmlinux"),
            sha256: digest.into(),
            size: 10,
        },
        initrd: None,
        modules: vec![],
        cmdline: String::new(),
        booted_on: vec![],
        digest: digest.into(),
        created_at: Utc::now(),
    }
}

#[test]
fn assets_crud_name_clash_and_users() {
    let store = Store::open_in_memory().expect("open");
    store
        .insert_asset(&kernel("k1", "default", "aa"))
        .expect("insert");
    let err = store
        .insert_asset(&kernel("k2", "default", "bb"))
        .expect_err("clash");
    assert!(
        matches!(
            err,
            StoreError::AssetNameTaken {
                kind: AssetKind::Kernel,
                ..
            }
        ),
        "{err}"
    );
    store
        .insert_asset(&kernel("k3", "other", "aa"))
        .expect("insert");
    let all: Vec<KernelRecord> = store.list_assets().expect("list");
    assert_eq!(
        all.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["default", "other"]
    );
    let mut k: KernelRecord = store.find_asset("default").expect("find").expect("some");
    k.booted_on.push(VmmKind::Qemu);
    store.update_asset(&k).expect("update");
    let back: KernelRecord = store.find_asset("default").expect("find").expect("some");
    assert_eq!(back.booted_on, [VmmKind::Qemu]);
    assert!(
        store
            .find_asset::<ImageRecord>("default")
            .expect("find")
            .is_none()
    );

    store.insert_vm(&record("v1", "uses-default")).expect("vm");
    assert_eq!(
        store
            .vms_using(AssetKind::Kernel, "default")
            .expect("users"),
        ["uses-default"]
    );
    assert!(
        store
            .vms_using(AssetKind::Kernel, "other")
            .expect("users")
            .is_empty()
    );
    assert!(
        store
            .delete_asset(AssetKind::Kernel, "default")
            .expect("delete")
    );
    assert!(
        !store
            .delete_asset(AssetKind::Kernel, "default")
            .expect("again")
    );
}

#[test]
fn list_is_ordered_by_name() {
    let store = Store::open_in_memory().expect("open");
    for (id, name) in [("1", "zeta"), ("2", "alpha"), ("3", "mid")] {
        store.insert_vm(&record(id, name)).expect("insert");
    }
    let names: Vec<_> = store
        .list_vms()
        .expect("list")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
    assert_eq!(store.count_vms().expect("count"), 3);
}
