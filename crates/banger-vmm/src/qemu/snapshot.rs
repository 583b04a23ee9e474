//! QEMU snapshots: a paused VM's state migrated into a file, and a new
//! QEMU started with `-incoming defer` that loads it.
//!
//! The file uses `mapped-ram` (QEMU >= 9): every RAM page has a fixed
//! offset, so the file is sparse where the guest's memory is zero and a
//! restore reads pages in place instead of parsing a stream — about half
//! the restore time of the stream format here (ENVIRONMENT.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::VmmError;
use crate::qmp::Qmp;

/// The one file a QEMU snapshot is made of (RAM and device state).
pub const STATE_FILE: &str = "vmstate";

/// Saving writes the whole RAM image; a busy host under TCG is slow.
const SAVE_WITHIN: Duration = Duration::from_secs(600);
const LOAD_WITHIN: Duration = Duration::from_secs(300);

/// What makes a running VM's state savable: `vhost-user` devices keep
/// state QEMU cannot see.
pub(super) fn blocker(spec: &crate::LaunchSpec) -> Option<String> {
    spec.vsock.as_ref().map(|_| {
        "its vsock device (vhost-user-vsock-device, the agent's channel) cannot be \
         migrated by QEMU: its vhost-user backend keeps state QEMU cannot save"
            .to_owned()
    })
}

/// The capabilities both ends of a migration must agree on.
async fn set_capabilities(q: &mut Qmp) -> Result<(), VmmError> {
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [
            { "capability": "mapped-ram", "state": true },
            { "capability": "events", "state": true },
        ]})),
    )
    .await
    .map(drop)
}

fn uri(file: &Path) -> String {
    format!("file:{}", file.display())
}

/// Waits for the migration's end; a failure carries QEMU's reason.
async fn finish(q: &mut Qmp, file: &Path, within: Duration) -> Result<(), VmmError> {
    let status = q
        .wait_event("MIGRATION", within, |d| match d["status"].as_str() {
            Some(s @ ("completed" | "failed" | "cancelled")) => Some(s.to_owned()),
            _ => None,
        })
        .await?;
    if status == "completed" {
        return Ok(());
    }
    let why = match q.execute("query-migrate", None).await {
        Ok(info) => info
            .get("error-desc")
            .and_then(Value::as_str)
            .map_or_else(|| format!("migration {status}"), str::to_owned),
        // A failed incoming migration makes QEMU exit: no one to ask.
        Err(_) => format!("migration {status}"),
    };
    Err(VmmError::Snapshot {
        path: file.to_owned(),
        why,
    })
}

/// Saves a paused VM into `dir`. The VM stays paused (QEMU says
/// `postmigrate`); `cont` lets it run on.
pub(super) async fn save(socket: &Path, dir: &Path) -> Result<(), VmmError> {
    let file = dir.join(STATE_FILE);
    let mut q = Qmp::connect(socket).await?;
    set_capabilities(&mut q).await?;
    q.execute("migrate", Some(json!({ "uri": uri(&file) })))
        .await?;
    finish(&mut q, &file, SAVE_WITHIN).await
}

/// Loads `dir`'s state into a QEMU started with `-incoming defer`, then
/// lets the guest run.
pub(super) async fn load(socket: &Path, dir: &Path) -> Result<(), VmmError> {
    let file: PathBuf = dir.join(STATE_FILE);
    if !file.is_file() {
        return Err(VmmError::Snapshot {
            path: file,
            why: "no such file".into(),
        });
    }
    let mut q = Qmp::connect(socket).await?;
    set_capabilities(&mut q).await?;
    // QEMU announces a migrated guest's MAC on the network; the snapshot's
    // MAC belongs to another VM (maybe still running), and the guest takes
    // its own address before it is used.
    q.execute(
        "migrate-set-parameters",
        Some(json!({ "announce-rounds": 0 })),
    )
    .await?;
    q.execute("migrate-incoming", Some(json!({ "uri": uri(&file) })))
        .await?;
    finish(&mut q, &file, LOAD_WITHIN).await?;
    // Without -S QEMU runs the guest once loaded; ask, to be sure.
    if q.status().await? != "running" {
        q.execute("cont", None).await?;
    }
    Ok(())
}

pub(super) async fn pause(socket: &Path) -> Result<(), VmmError> {
    Qmp::connect(socket)
        .await?
        .execute("stop", None)
        .await
        .map(drop)
}

/// Lets the guest run; a save still in progress (its daemon died) is
/// cancelled first, or QEMU would refuse.
pub(super) async fn resume(socket: &Path) -> Result<(), VmmError> {
    let mut q = Qmp::connect(socket).await?;
    let migrating = |info: &Value| {
        matches!(
            info.get("status").and_then(Value::as_str),
            Some("setup" | "active" | "device" | "pre-switchover" | "cancelling" | "wait-unplug")
        )
    };
    if migrating(&q.execute("query-migrate", None).await?) {
        q.execute("migrate_cancel", None).await?;
        // A rare recovery path, and the MIGRATION events may be off on
        // this QEMU: its status is asked until the cancel took.
        let deadline = tokio::time::Instant::now() + CANCEL_WITHIN;
        while migrating(&q.execute("query-migrate", None).await?) {
            if tokio::time::Instant::now() > deadline {
                return Err(VmmError::Snapshot {
                    path: socket.to_owned(),
                    why: format!(
                        "an earlier save did not cancel within {}s",
                        CANCEL_WITHIN.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    q.execute("cont", None).await.map(drop)
}

const CANCEL_WITHIN: Duration = Duration::from_secs(30);

pub(super) async fn is_paused(socket: &Path) -> Result<bool, VmmError> {
    let status = Qmp::connect(socket).await?.status().await?;
    Ok(matches!(
        status.as_str(),
        "paused" | "postmigrate" | "suspended"
    ))
}
