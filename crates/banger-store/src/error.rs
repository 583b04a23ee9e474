//! Why a store operation failed.

use std::path::PathBuf;

use crate::AssetKind;

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
    #[error("migrating database {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: usize,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("a vm named {0:?} already exists")]
    NameTaken(String),
    #[error("vm {0} not found")]
    VmNotFound(String),
    #[error("a snapshot named {0:?} already exists")]
    SnapshotNameTaken(String),
    #[error("snapshot {id}: stored row is unreadable: {source}")]
    CorruptSnapshot {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("a {kind} named {name:?} already exists")]
    AssetNameTaken { kind: AssetKind, name: String },
    #[error("vm {id}: stored row is unreadable: {what}: {source}")]
    CorruptVm {
        id: String,
        /// The column that did not decode: state, spec, runtime, timestamp.
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("vm {kind} {name}: stored row is unreadable: {source}")]
    CorruptAsset {
        kind: AssetKind,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    /// Refused rather than storing a placeholder: a row written from a
    /// value that did not serialise would read back as a different VM.
    #[error("cannot encode {what} of {id} for storage: {source}")]
    Encode {
        what: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("database error while {context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

pub(crate) fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

/// Serialises a value for a JSON column, naming what failed.
pub(crate) fn to_json<T: serde::Serialize>(
    v: &T,
    what: &'static str,
    id: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Encode {
        what,
        id: id.to_owned(),
        source,
    })
}

/// Whether an insert failed on a UNIQUE/PRIMARY KEY constraint.
pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}
