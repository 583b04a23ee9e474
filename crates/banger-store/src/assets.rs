//! Asset rows: kernels and images, each a manifest as JSON keyed by name.

use banger_api::asset::{ImageRecord, KernelRecord};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::error::{StoreError, is_constraint, sql, to_json};

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
        let manifest = to_json(rec, "manifest", rec.id())?;
        let res = self.conn().execute(
            &sql_text,
            params![
                rec.id(),
                rec.name(),
                manifest,
                rec.created_at().to_rfc3339()
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(StoreError::AssetNameTaken {
                kind: T::KIND,
                name: rec.name().to_owned(),
            }),
            Err(source) => Err(StoreError::Sql {
                context: "inserting asset",
                source,
            }),
        }
    }

    /// Rewrites an asset's manifest (e.g. a VMM it booted on).
    pub fn update_asset<T: AssetRow>(&self, rec: &T) -> Result<(), StoreError> {
        let manifest = to_json(rec, "manifest", rec.id())?;
        self.conn()
            .execute(
                &format!(
                    "UPDATE {} SET manifest_json = ?2 WHERE id = ?1",
                    T::KIND.table()
                ),
                params![rec.id(), manifest],
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
            serde_json::from_str(&j).map_err(|source| StoreError::CorruptAsset {
                kind: T::KIND,
                name: name.to_owned(),
                source,
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
            serde_json::from_str(&json).map_err(|source| StoreError::CorruptAsset {
                kind: T::KIND,
                name,
                source,
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
