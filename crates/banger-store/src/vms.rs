//! VM rows: one per VM, spec and runtime as JSON columns.

use banger_api::vm::{VmRecord, VmRuntime, VmSpec, VmState};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::error::{StoreError, is_constraint, sql, to_json};

impl Store {
    /// Inserts a new VM. Fails with [`StoreError::NameTaken`] on a clash.
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let spec = to_json(&vm.spec, "spec", &vm.id)?;
        let runtime = to_json(&vm.runtime, "runtime", &vm.id)?;
        let res = self.conn().execute(
            "INSERT INTO vms (id, name, state, spec_json, runtime_json, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                vm.id.as_str(),
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
            Err(e) if is_constraint(&e) => Err(StoreError::NameTaken(vm.name.clone())),
            Err(source) => Err(StoreError::Sql {
                context: "inserting vm",
                source,
            }),
        }
    }

    /// Writes state, spec, runtime and `updated_at` of an existing VM.
    pub fn update_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let spec = to_json(&vm.spec, "spec", &vm.id)?;
        let runtime = to_json(&vm.runtime, "runtime", &vm.id)?;
        let n = self
            .conn()
            .execute(
                "UPDATE vms SET state = ?2, spec_json = ?3, runtime_json = ?4, updated_at = ?5
                 WHERE id = ?1",
                params![
                    vm.id.as_str(),
                    vm.state.as_str(),
                    spec,
                    runtime,
                    vm.updated_at.to_rfc3339()
                ],
            )
            .map_err(sql("updating vm"))?;
        if n == 0 {
            return Err(StoreError::VmNotFound(vm.id.to_string()));
        }
        Ok(())
    }

    /// The daemon's teardown mirror of VM `id` (opaque here: the core owns
    /// its shape); the default when none was written.
    pub fn vm_teardown<T: serde::de::DeserializeOwned + Default>(
        &self,
        id: &str,
    ) -> Result<T, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT teardown_json FROM vms WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading a teardown mirror"))?;
        let json = json.ok_or_else(|| StoreError::VmNotFound(id.to_owned()))?;
        serde_json::from_str(&json).map_err(|e| StoreError::CorruptVm {
            id: id.to_owned(),
            what: "teardown",
            source: Box::new(e),
        })
    }

    /// Replaces VM `id`'s teardown mirror.
    pub fn set_vm_teardown<T: serde::Serialize>(
        &self,
        id: &str,
        mirror: &T,
    ) -> Result<(), StoreError> {
        let json = to_json(mirror, "teardown", id)?;
        let n = self
            .conn()
            .execute(
                "UPDATE vms SET teardown_json = ?2 WHERE id = ?1",
                params![id, json],
            )
            .map_err(sql("writing a teardown mirror"))?;
        if n == 0 {
            return Err(StoreError::VmNotFound(id.to_owned()));
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
        let id = self.id.as_str();
        let state: VmState = self.state.parse().map_err(corrupt(id, "state"))?;
        let spec: VmSpec = serde_json::from_str(&self.spec).map_err(corrupt(id, "spec"))?;
        let runtime: VmRuntime =
            serde_json::from_str(&self.runtime).map_err(corrupt(id, "runtime"))?;
        let ts = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(corrupt(id, "timestamp"))
        };
        let (created_at, updated_at) = (ts(&self.created_at)?, ts(&self.updated_at)?);
        Ok(VmRecord {
            created_at,
            updated_at,
            id: self.id.into(),
            name: self.name,
            state,
            spec,
            runtime,
        })
    }
}

/// The error for a column of VM `id` that did not decode.
fn corrupt<E>(id: &str, what: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let id = id.to_owned();
    move |e| StoreError::CorruptVm {
        id,
        what,
        source: Box::new(e),
    }
}
