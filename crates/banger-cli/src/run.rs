//! `vm run` and what `vm exec` shares with it: the exec request from the
//! arguments, and the exit code from the command's.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use banger_agent_proto::ExecRequest;
use banger_api::vm::CreateVmRequest;
use banger_client::Client;

use crate::args;
use crate::progress::Stages;
use crate::{session, staged};

/// The process exit code for a command's: 0-255 as is, others wrapped.
pub(crate) fn exit_with(code: i32) -> ExitCode {
    ExitCode::from((code & 0xff) as u8)
}

pub(crate) fn exec_request(a: &args::ExecArgs) -> Result<ExecRequest> {
    let mut env = Vec::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("-e {kv:?}: write it as NAME=VALUE");
        };
        if k.is_empty() {
            bail!("-e {kv:?}: the variable name is empty");
        }
        env.push((k.to_owned(), v.to_owned()));
    }
    if a.tty && !env.iter().any(|(k, _)| k == "TERM") {
        if let Ok(term) = std::env::var("TERM") {
            env.push(("TERM".into(), term));
        }
    }
    Ok(ExecRequest {
        argv: a.command.clone(),
        env,
        cwd: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty.then(|| session::terminal_size().unwrap_or((80, 24))),
        stdin: a.interactive,
    })
}

/// `vm run`: create, start, exec, and with `--rm` delete whatever happened
/// (a failed start, a failed command, Ctrl-C).
pub(crate) async fn run_vm(client: &Client, a: args::RunArgs) -> Result<ExitCode> {
    let req = exec_request(&a.exec)?;
    // With --rm the daemon removes the VM if this process goes before it
    // could (a closed terminal, SIGHUP, kill -9): the lease is held until
    // the process ends.
    let lease = match a.rm {
        true => Some(
            client
                .hold_lease()
                .await
                .context("holding a lease for --rm")?,
        ),
        false => None,
    };
    let create = CreateVmRequest {
        lease: lease.as_ref().map(|l| l.id().to_owned()),
        name: a.name,
        vcpus: a.cpus,
        memory_mib: a.memory,
        image: a.image,
        kernel: a.kernel,
        nat: a.nat,
        vmm: a.vmm.map(Into::into),
        cold: a.cold,
        ..CreateVmRequest::default()
    };
    let rec = staged(false, async |b: &mut Stages| {
        client.create_vm(&create, |p| b.update(p)).await
    })
    .await?;
    let name = rec.name;
    let started = tokio::select! {
        r = staged(false, async |b: &mut Stages| client.start_vm(&name, |p| b.update(p)).await) => r.map(|_| ()),
        _ = tokio::signal::ctrl_c() => {
            if lease.is_some() {
                // The start runs on in the daemon, which removes the VM
                // once it is over: the lease ends with this process.
                eprintln!("interrupted: bangerd removes vm {name} once its start is over");
                return Ok(ExitCode::from(130));
            }
            Err(anyhow::anyhow!("interrupted while vm {name} was starting"))
        }
    };
    let outcome = match started {
        Ok(()) => session::exec(client, &name, req).await,
        Err(e) => Err(e),
    };
    if a.rm {
        // Kill, not stop: the VM is going away, its disks with it.
        if let Err(e) = client.kill_vm(&name).await {
            if e.api_code() != Some(banger_api::ErrorCode::InvalidState) {
                eprintln!(
                    "warning: killing vm {name}: {}",
                    crate::printable::printable(&e.to_string())
                );
            }
        }
        if let Err(e) = client.delete_vm(&name).await {
            eprintln!(
                "error: vm {name} was not deleted: {}; remove it with `banger vm delete {name}`",
                crate::printable::printable(&e.to_string())
            );
            return outcome.map(|_| ExitCode::FAILURE);
        }
    } else if outcome.is_err() {
        eprintln!("note: vm {name} is kept; `banger vm delete {name}` removes it");
    }
    Ok(exit_with(outcome?))
}
