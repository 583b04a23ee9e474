//! `banger operation …`, and the Ctrl-C of a streamed asset command.
//!
//! The daemon runs every long command as an operation of its own: a
//! client that goes away (a closed terminal, `kill -9`) leaves it
//! running. A Ctrl-C is different: the user asked to stop, so for the
//! commands that can be cancelled (asset builds, imports, adds) the CLI
//! cancels the operation before it exits, as `docker build` does.

use std::process::ExitCode;

use anyhow::{Context, Result};
use banger_api::event::Progress;
use banger_api::operation::{OperationId, OperationInfo};
use banger_client::{Client, ClientError, StreamObserver};
use tokio::sync::watch;

use crate::args::OperationCmd;
use crate::progress::Stages;
use crate::render;

/// The exit status after a Ctrl-C, as shells report a SIGINT.
pub const INTERRUPTED: u8 = 130;

/// Ended by the user's Ctrl-C; `main` exits [`INTERRUPTED`].
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Progress bars plus the operation's id, once the daemon named it.
pub(crate) struct Watched<'a> {
    bars: &'a mut Stages,
    id: &'a watch::Sender<Option<OperationId>>,
}

impl StreamObserver for Watched<'_> {
    fn started(&mut self, id: &OperationId) {
        self.id.send_replace(Some(id.clone()));
    }
    fn progress(&mut self, p: &Progress) {
        self.bars.update(p);
    }
}

/// Runs a streamed asset call with progress bars (unless `json`); a
/// Ctrl-C cancels its operation in the daemon, waits for the daemon to
/// say it is over (its half-made asset removed), and ends [`Interrupted`].
pub(crate) async fn cancelled_by_ctrl_c<T>(
    client: &Client,
    json: bool,
    call: impl AsyncFnOnce(Watched<'_>) -> Result<T, ClientError>,
) -> Result<T> {
    let mut bars = Stages::new(!json);
    let (id_tx, mut id_rx) = watch::channel(None);
    let outcome = {
        let call = call(Watched {
            bars: &mut bars,
            id: &id_tx,
        });
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => Some(r),
            _ = tokio::signal::ctrl_c() => {
                // The id comes with the answer's headers: wait for it if
                // the Ctrl-C came first, while the call goes on reading.
                let known = tokio::select! {
                    r = &mut call => Err(r),
                    id = id_rx.wait_for(Option::is_some) => Ok(id.ok().and_then(|id| id.clone())),
                };
                match known {
                    Err(r) => Some(r),
                    Ok(Some(id)) => {
                        if let Err(e) = client.cancel_operation(&id).await {
                            eprintln!("warning: cancelling operation {id}: {e}");
                        }
                        // Its end, the removal of what it made included.
                        let _ = call.await;
                        eprintln!("cancelled operation {id}");
                        None
                    }
                    Ok(None) => None,
                }
            }
        }
    };
    match outcome {
        Some(r) => {
            bars.finish(r.is_ok());
            Ok(r?)
        }
        None => {
            bars.finish(false);
            Err(Interrupted.into())
        }
    }
}

fn parse_id(raw: &str) -> Result<OperationId> {
    Ok(raw.parse::<OperationId>()?)
}

pub(crate) async fn operation(client: &Client, cmd: OperationCmd) -> Result<ExitCode> {
    match cmd {
        OperationCmd::List { json } => {
            let ops = client.list_operations().await?;
            if json {
                render::json(&ops)?;
            } else {
                table(&ops);
            }
        }
        OperationCmd::Watch { id, json } => {
            let id = parse_id(&id)?;
            let mut bars = Stages::new(!json);
            let r: Result<serde_json::Value, _> = client
                .watch_operation(&id, |p: &Progress| bars.update(p))
                .await;
            bars.finish(r.is_ok());
            let value = r.with_context(|| format!("operation {id}"))?;
            if json {
                render::json(&value)?;
            } else {
                crate::outln!("operation {id} done");
            }
        }
        OperationCmd::Cancel { id } => {
            let id = parse_id(&id)?;
            let op = client
                .cancel_operation(&id)
                .await
                .with_context(|| format!("operation {id}"))?;
            crate::outln!("cancelling {} ({} {})", op.id, op.kind, op.target);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(ops: &[OperationInfo]) {
    let mut t = render::table(&["ID", "COMMAND", "TARGET", "STARTED", "STAGE", "CANCEL"]);
    for op in ops {
        t.add_row(vec![
            op.id.to_string(),
            op.kind.to_string(),
            op.target.clone(),
            op.started_at.format("%H:%M:%S").to_string(),
            op.stage
                .as_ref()
                .map_or_else(|| "-".into(), |p| p.stage.clone()),
            if op.cancellable { "yes" } else { "no" }.into(),
        ]);
    }
    crate::outln!("{t}");
}
