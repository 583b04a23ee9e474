//! SQLite persistence of durable intent: VMs, kernels, images.
//!
//! Only durable facts are stored. Kernel objects a VM holds while it runs
//! (pid, tap, jail) are never authoritative here; a VM row carries a
//! *mirror* of the teardown-critical ones (`teardown_json`, written and
//! read only by the daemon), nothing more.
//!
//! The schema is versioned with SQLite's `user_version` (see
//! [`migrations`]); VM rows live in [`vms`], asset rows in [`assets`].

mod assets;
mod error;
mod migrations;
mod snapshots;
mod vms;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use assets::{AssetKind, AssetRow};
pub use error::StoreError;
pub use migrations::MIGRATIONS;

use error::sql;

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
        migrations::migrate(&mut conn, &path)?;
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
}

#[cfg(test)]
mod tests;
