//! banger's own ssh key pair, made on first use, whose public half every
//! guest trusts.

use std::path::PathBuf;

use banger_host::tools::SshKeygen;

use crate::error::{CoreError, HostError, InternalError};

#[derive(Debug)]
pub struct SshKeys {
    dir: PathBuf,
    keygen: PathBuf,
    /// One maker at a time: concurrent first starts must not race.
    lock: tokio::sync::Mutex<()>,
}

impl SshKeys {
    pub fn new(dir: PathBuf, keygen: PathBuf) -> Self {
        Self {
            dir,
            keygen,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// `(private key, public key line)`, making the pair if it is missing.
    pub async fn ensure(&self) -> Result<(PathBuf, String), CoreError> {
        let _g = self.lock.lock().await;
        let key = self.dir.join("id_ed25519");
        let public = self.dir.join("id_ed25519.pub");
        let exists = |p: PathBuf| async move {
            tokio::fs::try_exists(&p)
                .await
                .map_err(InternalError::io("checking", &p))
        };
        let complete = exists(key.clone()).await? && exists(public.clone()).await?;
        if !complete {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(InternalError::io("creating", &self.dir))?;
            // A half-made pair is replaced whole; absent files are fine.
            for f in [&key, &public] {
                if let Err(e) = tokio::fs::remove_file(f).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(InternalError::io("removing", f)(e).into());
                    }
                }
            }
            SshKeygen {
                bin: self.keygen.clone(),
            }
            .ed25519(&key, "banger")
            .run(|_| {})
            .await
            .map_err(|source| HostError::Tool {
                what: format!("creating banger's ssh key {}", key.display()),
                source,
            })?;
        }
        let line = tokio::fs::read_to_string(&public)
            .await
            .map_err(InternalError::io("reading", &public))?;
        Ok((key, line.trim().to_owned()))
    }

    /// A fresh ed25519 host key for a guest, made in `scratch` (removed
    /// after): `(private key file text, public key line)`. The host makes
    /// it so the key is pinned before anyone connects.
    pub async fn host_key(&self, scratch: &std::path::Path) -> Result<(String, String), CoreError> {
        let dir = tempfile::Builder::new()
            .prefix("hostkey-")
            .tempdir_in(scratch)
            .map_err(InternalError::io("making a temp dir in", scratch))?;
        let key = dir.path().join("ssh_host_ed25519_key");
        SshKeygen {
            bin: self.keygen.clone(),
        }
        .ed25519(&key, "root@banger")
        .run(|_| {})
        .await
        .map_err(|source| HostError::Tool {
            what: format!("creating a guest host key {}", key.display()),
            source,
        })?;
        let public = key.with_extension("pub");
        let private = tokio::fs::read_to_string(&key)
            .await
            .map_err(InternalError::io("reading", &key))?;
        let line = tokio::fs::read_to_string(&public)
            .await
            .map_err(InternalError::io("reading", &public))?;
        let mut parts = line.split_whitespace();
        let public = match (parts.next(), parts.next()) {
            (Some(kind), Some(k)) => format!("{kind} {k}"),
            _ => line.trim().to_owned(),
        };
        Ok((private, public))
    }
}
