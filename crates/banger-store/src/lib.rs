//! SQLite persistence of durable intent: VMs, kernels, images.
//!
//! Only durable facts are stored. Kernel objects a VM holds while it runs
//! (pid, tap, loop devices) are never authoritative here; the runtime JSON
//! carries *mirrors* of the teardown-critical ones, nothing more.
//!
//! The schema is versioned with SQLite's `user_version`: each entry of
//! [`MIGRATIONS`] runs once, in order, inside a transaction.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::vm::{VmRecord, VmRuntime, VmSpec, VmState};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

/// Schema migrations; index + 1 is the `user_version` after applying.
/// Never edit an entry that has shipped: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE vms (
        id           TEXT PRIMARY KEY NOT NULL,
        name         TEXT NOT NULL UNIQUE,
        state        TEXT NOT NULL,
        spec_json    TEXT NOT NULL,
        runtime_json TEXT NOT NULL DEFAULT '{}',
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    );
    CREATE TABLE kernels (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL UNIQUE,
        manifest_json TEXT NOT NULL,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE images (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL UNIQUE,
        manifest_json TEXT NOT NULL,
        created_at    TEXT NOT NULL
    );
    "#,
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this banger understands ({known}); upgrade banger"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("migrating database to schema version {version}: {source}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("a vm named {0:?} already exists")]
    NameTaken(String),
    #[error("vm {0} not found")]
    VmNotFound(String),
    #[error("a {kind} named {name:?} already exists")]
    AssetNameTaken { kind: AssetKind, name: String },
    #[error("vm {id}: stored row is unreadable: {message}")]
    Corrupt { id: String, message: String },
    #[error("database error while {context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

/// A handle on the database. Cheap operations, serialised by a mutex:
/// SQLite allows one writer anyway and the daemon's write rate is tiny.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::init(conn, path.to_owned())
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, PathBuf::from(":memory:"))
    }

    fn init(mut conn: Connection, path: PathBuf) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // WAL lets readers proceed during a write and survives a crash
        // mid-transaction; NORMAL sync is durable at checkpoint under WAL.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so poisoning is safe to ignore.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version currently applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading schema version"))
    }

    /// Inserts a new VM. Fails with [`StoreError::NameTaken`] on a clash.
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let spec = to_json(&vm.spec);
        let runtime = to_json(&vm.runtime);
        let res = self.conn().execute(
            "INSERT INTO vms (id, name, state, spec_json, runtime_json, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                vm.id,
                vm.name,
                vm.state.as_str(),
                spec,
                runtime,
                vm.created_at.to_rfc3339(),
                vm.updated_at.to_rfc3339()
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(vm.name.clone()))
            }
            Err(source) => Err(StoreError::Sql {
                context: "inserting vm",
                source,
            }),
        }
    }

    /// Writes state, spec, runtime and `updated_at` of an existing VM.
    pub fn update_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE vms SET state = ?2, spec_json = ?3, runtime_json = ?4, updated_at = ?5
                 WHERE id = ?1",
                params![
                    vm.id,
                    vm.state.as_str(),
                    to_json(&vm.spec),
                    to_json(&vm.runtime),
                    vm.updated_at.to_rfc3339()
                ],
            )
            .map_err(sql("updating vm"))?;
        if n == 0 {
            return Err(StoreError::VmNotFound(vm.id.clone()));
        }
        Ok(())
    }

    /// Deletes a VM row; deleting a missing row is not an error, so a
    /// retried delete converges.
    pub fn delete_vm(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM vms WHERE id = ?1", params![id])
            .map_err(sql("deleting vm"))?;
        Ok(n > 0)
    }

    /// Looks a VM up by exact name, then by exact id.
    pub fn find_vm(&self, name_or_id: &str) -> Result<Option<VmRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("{SELECT_VM} WHERE name = ?1 OR id = ?1 ORDER BY name = ?1 DESC LIMIT 1"),
                params![name_or_id],
                RawVm::from_row,
            )
            .optional()
            .map_err(sql("looking up vm"))?;
        row.map(RawVm::decode).transpose()
    }

    /// All VMs, ordered by name.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("{SELECT_VM} ORDER BY name"))
            .map_err(sql("listing vms"))?;
        let rows = stmt
            .query_map([], RawVm::from_row)
            .map_err(sql("listing vms"))?;
        rows.map(|r| r.map_err(sql("listing vms")).and_then(RawVm::decode))
            .collect()
    }

    pub fn count_vms(&self) -> Result<u64, StoreError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM vms", [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(sql("counting vms"))
    }

    /// Whether `name` is taken (for name generation).
    pub fn vm_name_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.conn()
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM vms WHERE name = ?1)",
                params![name],
                |r| r.get(0),
            )
            .map_err(sql("checking vm name"))
    }
}

/// Which asset table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetKind {
    Kernel,
    Image,
}

impl AssetKind {
    fn table(self) -> &'static str {
        match self {
            Self::Kernel => "kernels",
            Self::Image => "images",
        }
    }
}

impl std::fmt::Display for AssetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Image => "image",
        })
    }
}

/// A record stored in an asset table.
pub trait AssetRow: serde::Serialize + serde::de::DeserializeOwned {
    const KIND: AssetKind;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    /// Content address: the directory holding the asset's files.
    fn digest(&self) -> &str;
    fn created_at(&self) -> DateTime<Utc>;
}

/// Both asset records have the same identity fields.
macro_rules! asset_row {
    ($ty:ty, $kind:expr) => {
        impl AssetRow for $ty {
            const KIND: AssetKind = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn digest(&self) -> &str {
                &self.digest
            }
            fn created_at(&self) -> DateTime<Utc> {
                self.created_at
            }
        }
    };
}

asset_row!(KernelRecord, AssetKind::Kernel);
asset_row!(ImageRecord, AssetKind::Image);

impl Store {
    /// Inserts an asset; a name clash is [`StoreError::AssetNameTaken`].
    pub fn insert_asset<T: AssetRow>(&self, rec: &T) -> Result<(), StoreError> {
        let sql_text = format!(
            "INSERT INTO {} (id, name, manifest_json, created_at) VALUES (?1, ?2, ?3, ?4)",
            T::KIND.table()
        );
        let res = self.conn().execute(
            &sql_text,
            params![
                rec.id(),
                rec.name(),
                to_json(rec),
                rec.created_at().to_rfc3339()
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::AssetNameTaken {
                    kind: T::KIND,
                    name: rec.name().to_owned(),
                })
            }
            Err(source) => Err(StoreError::Sql {
                context: "inserting asset",
                source,
            }),
        }
    }

    /// Rewrites an asset's manifest (e.g. a VMM it booted on).
    pub fn update_asset<T: AssetRow>(&self, rec: &T) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "UPDATE {} SET manifest_json = ?2 WHERE id = ?1",
                    T::KIND.table()
                ),
                params![rec.id(), to_json(rec)],
            )
            .map_err(sql("updating asset"))?;
        Ok(())
    }

    pub fn find_asset<T: AssetRow>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                &format!(
                    "SELECT manifest_json FROM {} WHERE name = ?1",
                    T::KIND.table()
                ),
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("looking up asset"))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                id: format!("{} {name}", T::KIND),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    pub fn list_assets<T: AssetRow>(&self) -> Result<Vec<T>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name, manifest_json FROM {} ORDER BY name",
                T::KIND.table()
            ))
            .map_err(sql("listing assets"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("listing assets"))?;
        rows.map(|r| {
            let (name, json) = r.map_err(sql("listing assets"))?;
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                id: format!("{} {name}", T::KIND),
                message: e.to_string(),
            })
        })
        .collect()
    }

    pub fn delete_asset(&self, kind: AssetKind, name: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                &format!("DELETE FROM {} WHERE name = ?1", kind.table()),
                params![name],
            )
            .map_err(sql("deleting asset"))?;
        Ok(n > 0)
    }

    /// Names of VMs whose spec uses the asset: what deleting it breaks.
    pub fn vms_using(&self, kind: AssetKind, name: &str) -> Result<Vec<String>, StoreError> {
        let field = match kind {
            AssetKind::Kernel => "$.kernel",
            AssetKind::Image => "$.image",
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name FROM vms WHERE json_extract(spec_json, ?1) = ?2 ORDER BY name")
            .map_err(sql("finding vms using asset"))?;
        let rows = stmt
            .query_map(params![field, name], |r| r.get(0))
            .map_err(sql("finding vms using asset"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("finding vms using asset"))
    }
}

const SELECT_VM: &str =
    "SELECT id, name, state, spec_json, runtime_json, created_at, updated_at FROM vms";

/// A row as SQLite gives it, decoded outside the rusqlite callback so a
/// bad row yields an error naming the VM instead of a generic one.
struct RawVm {
    id: String,
    name: String,
    state: String,
    spec: String,
    runtime: String,
    created_at: String,
    updated_at: String,
}

impl RawVm {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            name: r.get(1)?,
            state: r.get(2)?,
            spec: r.get(3)?,
            runtime: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        })
    }

    fn decode(self) -> Result<VmRecord, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt {
            id: self.id.clone(),
            message: format!("{what}: {e}"),
        };
        let state: VmState = self.state.parse().map_err(|e| corrupt("state", &e))?;
        let spec: VmSpec = serde_json::from_str(&self.spec).map_err(|e| corrupt("spec", &e))?;
        let runtime: VmRuntime =
            serde_json::from_str(&self.runtime).map_err(|e| corrupt("runtime", &e))?;
        let ts = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt("timestamp", &e))
        };
        Ok(VmRecord {
            created_at: ts(&self.created_at)?,
            updated_at: ts(&self.updated_at)?,
            id: self.id,
            name: self.name,
            state,
            spec,
            runtime,
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql("reading schema version"))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: current,
            known,
        });
    }
    let start = usize::try_from(current).unwrap_or(0);
    for (idx, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        let version = idx + 1;
        let err = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(migration).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use banger_api::vm::VmmKind;

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
        vm.runtime.guest_ip = Some("172.16.0.2".into());
        vm.runtime.teardown.tap = Some("bg-id1".into());
        store.update_vm(&vm).expect("update");
        let back = store.find_vm("box").expect("find").expect("present");
        assert_eq!(back, vm);

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
}
