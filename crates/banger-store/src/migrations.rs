//! The schema, versioned with SQLite's `user_version` through
//! `rusqlite_migration`: `user_version` is the number of entries of
//! [`MIGRATIONS`] applied, the same numbering the hand-rolled runner before
//! it wrote, so databases it migrated are not migrated again.

use std::path::Path;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use crate::error::{StoreError, sql};

/// Schema migrations; index + 1 is the `user_version` after applying.
/// Never edit an entry that has shipped: append a new one.
pub const MIGRATIONS: &[M<'static>] = &[
    M::up(V1_INITIAL),
    M::up(V2_TEARDOWN_COLUMN),
    M::up(V3_SNAPSHOTS),
];

/// 1: initial schema.
pub(crate) const V1_INITIAL: &str = r#"
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
    "#;

/// 2: the teardown mirror (names of host objects cleanup cannot derive)
/// leaves the runtime JSON, which is wire data, for a column of its own
/// that only the daemon reads. Rows written before keep their mirror.
pub(crate) const V2_TEARDOWN_COLUMN: &str = r#"
    ALTER TABLE vms ADD COLUMN teardown_json TEXT NOT NULL DEFAULT '{}';
    UPDATE vms
       SET teardown_json = json_extract(runtime_json, '$.teardown')
     WHERE json_type(runtime_json, '$.teardown') = 'object';
    UPDATE vms SET runtime_json = json_remove(runtime_json, '$.teardown');
    "#;

/// 3: snapshots, one row per published snapshot.
pub(crate) const V3_SNAPSHOTS: &str = r#"
    CREATE TABLE snapshots (
        id          TEXT PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL UNIQUE,
        record_json TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    "#;

/// Brings the database to the latest schema, refusing one written by a
/// newer banger (whose rows this one could misread).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len();
    // Read here rather than through rusqlite_migration so a database from
    // the future is reported with both versions.
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql("reading schema version"))?;
    let known_i64 = i64::try_from(known).unwrap_or(i64::MAX);
    if found > known_i64 {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: known_i64,
        });
    }
    Migrations::from_slice(MIGRATIONS)
        .to_latest(conn)
        .map_err(|source| StoreError::Migrate {
            path: path.to_owned(),
            version: known,
            source,
        })
}
