//! Snapshot rows: one per published snapshot, the record as JSON.
//!
//! A row is inserted only after the snapshot's directory was published
//! (renamed into place), so every listed snapshot is whole; a directory
//! without a row is an interrupted one, swept at daemon start.

use banger_api::snapshot::SnapshotRecord;
use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::error::{StoreError, is_constraint, sql, to_json};

impl Store {
    /// Fails with [`StoreError::SnapshotNameTaken`] on a clash.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        let json = to_json(s, "snapshot", &s.id)?;
        let res = self.conn().execute(
            "INSERT INTO snapshots (id, name, record_json, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![s.id, s.name, json, s.created_at.to_rfc3339()],
        );
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(StoreError::SnapshotNameTaken(s.name.clone())),
            Err(source) => Err(StoreError::Sql {
                context: "inserting snapshot",
                source,
            }),
        }
    }

    /// By exact name, then by exact id.
    pub fn find_snapshot(&self, name_or_id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT id, record_json FROM snapshots WHERE name = ?1 OR id = ?1
                 ORDER BY name = ?1 DESC LIMIT 1",
                params![name_or_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("looking up snapshot"))?;
        row.map(|(id, json)| decode(&id, &json)).transpose()
    }

    /// All snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, record_json FROM snapshots ORDER BY created_at, name")
            .map_err(sql("listing snapshots"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("listing snapshots"))?;
        rows.map(|r| {
            r.map_err(sql("listing snapshots"))
                .and_then(|(id, json)| decode(&id, &json))
        })
        .collect()
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", params![id])
            .map_err(sql("deleting snapshot"))?;
        Ok(n > 0)
    }

    pub fn snapshot_name_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.conn()
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM snapshots WHERE name = ?1)",
                params![name],
                |r| r.get(0),
            )
            .map_err(sql("checking snapshot name"))
    }
}

fn decode(id: &str, json: &str) -> Result<SnapshotRecord, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::CorruptSnapshot {
        id: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use banger_api::snapshot::{SnapshotKind, SnapshotMachine};
    use banger_api::vm::VmmKind;

    use super::*;

    fn snap(id: &str, name: &str) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: name.into(),
            kind: SnapshotKind::User,
            source_vm: "box".into(),
            source_vm_id: "0123456789abcdef".into(),
            machine: SnapshotMachine {
                vmm: VmmKind::Qemu,
                vcpus: 2,
                memory_mib: 512,
                kernel: "default".into(),
                image: "default".into(),
                root_disk_bytes: 1 << 30,
                work_disk_bytes: 1 << 29,
                cmdline: "console=ttyS0".into(),
                devices: vec!["virtio-blk".into()],
            },
            dir: "/var/lib/banger/snapshots/s1".into(),
            size_bytes: 123,
            save_ms: 4,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn round_trip_lookup_clash_and_delete() {
        let store = Store::open_in_memory().expect("store");
        store.insert_snapshot(&snap("s1", "one")).expect("insert");
        store.insert_snapshot(&snap("s2", "two")).expect("insert");
        assert!(matches!(
            store.insert_snapshot(&snap("s3", "one")),
            Err(StoreError::SnapshotNameTaken(n)) if n == "one"
        ));
        assert_eq!(
            store.find_snapshot("one").expect("find"),
            Some(snap("s1", "one")).map(|mut s| {
                s.created_at = store
                    .find_snapshot("s1")
                    .expect("by id")
                    .expect("some")
                    .created_at;
                s
            })
        );
        assert_eq!(
            store.find_snapshot("s2").expect("find").expect("some").name,
            "two"
        );
        assert!(store.find_snapshot("nope").expect("find").is_none());
        let names: Vec<_> = store
            .list_snapshots()
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["one", "two"]);
        assert!(store.snapshot_name_exists("two").expect("exists"));
        assert!(store.delete_snapshot("s1").expect("delete"));
        assert!(!store.delete_snapshot("s1").expect("gone"));
        assert!(store.find_snapshot("one").expect("find").is_none());
    }

    #[test]
    fn a_corrupt_row_names_the_snapshot() {
        let store = Store::open_in_memory().expect("store");
        store
            .conn()
            .execute(
                "INSERT INTO snapshots (id, name, record_json, created_at) VALUES ('bad', 'b', '{', 'x')",
                [],
            )
            .expect("raw insert");
        let e = store.find_snapshot("b").expect_err("corrupt");
        assert!(e.to_string().contains("bad"), "{e}");
    }
}
