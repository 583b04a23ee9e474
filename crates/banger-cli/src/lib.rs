//! The `banger` command line.
//!
//! Thin by design: parse arguments, make sure a daemon is listening
//! ([`daemon_ctl`]), call it through [`banger_client`], render the answer
//! ([`render`], [`progress`]).

pub mod args;
pub mod daemon_ctl;
mod operations;
pub mod out;
pub mod printable;
pub mod progress;
pub mod render;
mod run;
pub mod session;
pub mod settings;
mod snapshots;
pub mod ssh;

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, KernelAddRequest, KernelImportRequest,
};
use banger_api::doctor::CheckStatus;
use banger_api::size::parse_size;
use banger_api::vm::{CreateVmRequest, SetVmRequest};
use banger_client::{Client, ClientError};
use clap::{CommandFactory, Parser};

use crate::args::{Cli, DaemonCmd, ImageCmd, KernelCmd, Top, VmCmd};
use crate::progress::Stages;
use crate::settings::Settings;

/// Parses the process arguments and runs; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run(cli));
    // A read of stdin may still block a runtime thread: do not wait for it.
    rt.shutdown_background();
    match outcome {
        Ok(code) => code,
        // `banger vm exec x -- cat big | head`: quiet, like other tools.
        Err(e) if out::is_broken_pipe(&e) => ExitCode::from(out::BROKEN_PIPE_STATUS as u8),
        Err(e) if e.is::<operations::Interrupted>() => ExitCode::from(operations::INTERRUPTED),
        Err(e) => {
            // An error may carry an agent's or a guest's words.
            eprintln!("error: {}", printable::printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Top::Completions { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "banger", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let config = Settings::load().context("loading configuration")?;
    match cli.command {
        Top::Completions { .. } => unreachable_completions(),
        Top::Doctor { json } => doctor(&config, json).await,
        Top::Daemon { command } => daemon(&config, command).await,
        Top::Vm { command } => vm(&config, command).await,
        Top::Kernel { command } => kernel(&config, command).await,
        Top::Image { command } => image(&config, command).await,
        Top::Operation { command } => {
            operations::operation(&daemon_ctl::connect(&config).await?, command).await
        }
        Top::Snapshot { command } => {
            snapshots::snapshot(&daemon_ctl::connect(&config).await?, command).await
        }
    }
}

/// Runs a streamed call with progress bars (unless `json`) closed with a
/// per-stage duration summary.
async fn staged<T>(
    json: bool,
    call: impl AsyncFnOnce(&mut Stages) -> Result<T, ClientError>,
) -> Result<T> {
    let mut bars = Stages::new(!json);
    let r = call(&mut bars).await;
    bars.finish(r.is_ok());
    Ok(r?)
}

/// An absolute, existing path for the daemon, which does not share our
/// working directory.
fn host_path(flag: &str, p: &std::path::Path) -> Result<String> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{flag} {}", p.display()))?;
    Ok(abs.display().to_string())
}

async fn kernel(config: &Settings, cmd: KernelCmd) -> Result<ExitCode> {
    let client = daemon_ctl::connect(config).await?;
    match cmd {
        KernelCmd::List { json } => {
            let ks = client.list_kernels().await?;
            if json {
                render::json(&ks)?;
            } else {
                render::kernel_table(&ks);
            }
        }
        KernelCmd::Show { name, verify, json } => {
            let k = client.show_kernel(&name, verify).await?;
            if json {
                render::json(&k)?;
            } else {
                render::kernel_detail(&k, verify);
            }
        }
        KernelCmd::Rm { name, force } => {
            let k = client.delete_kernel(&name, force).await?;
            crate::outln!("removed kernel {}", k.name);
        }
        KernelCmd::Import {
            name,
            vmlinux,
            initrd,
            cmdline,
            json,
        } => {
            let req = KernelImportRequest {
                name,
                vmlinux: host_path("--vmlinux", &vmlinux)?,
                initrd: initrd.map(|p| host_path("--initrd", &p)).transpose()?,
                cmdline,
            };
            let k = operations::cancelled_by_ctrl_c(&client, json, async |w| {
                client.import_kernel(&req, w).await
            })
            .await?;
            if json {
                render::json(&k)?
            } else {
                render::kernel_detail(&k, false)
            }
        }
        KernelCmd::Add {
            name,
            from_debian,
            json,
        } => {
            let req = KernelAddRequest {
                name,
                package: from_debian.filter(|p| !p.is_empty()),
            };
            let k = operations::cancelled_by_ctrl_c(&client, json, async |w| {
                client.add_kernel(&req, w).await
            })
            .await?;
            if json {
                render::json(&k)?
            } else {
                render::kernel_detail(&k, false)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn image(config: &Settings, cmd: ImageCmd) -> Result<ExitCode> {
    let client = daemon_ctl::connect(config).await?;
    match cmd {
        ImageCmd::List { json } => {
            let is = client.list_images().await?;
            if json {
                render::json(&is)?;
            } else {
                render::image_table(&is);
            }
        }
        ImageCmd::Show { name, verify, json } => {
            let i = client.show_image(&name, verify).await?;
            if json {
                render::json(&i)?;
            } else {
                render::image_detail(&i, verify);
            }
        }
        ImageCmd::Rm { name, force } => {
            let i = client.delete_image(&name, force).await?;
            crate::outln!("removed image {}", i.name);
        }
        ImageCmd::Warm {
            name,
            kernel,
            cpus,
            memory,
            root_disk,
            work_disk,
            vmm,
            json,
        } => {
            let req = banger_api::snapshot::WarmImageRequest {
                kernel,
                vcpus: cpus,
                memory_mib: memory,
                root_disk_bytes: size_arg("--root-disk", root_disk)?,
                work_disk_bytes: size_arg("--work-disk", work_disk)?,
                vmm: vmm.map(Into::into),
            };
            let w = staged(json, async |b: &mut Stages| {
                client.warm_image(&name, &req, |p| b.update(p)).await
            })
            .await?;
            if json {
                render::json(&w)?;
            } else {
                let t = &w.template;
                crate::outln!(
                    "{} template {} for image {} ({} vCPUs, {} MiB, {}), {} on disk",
                    if w.made { "made" } else { "already had" },
                    t.name,
                    t.machine.image,
                    t.machine.vcpus,
                    t.machine.memory_mib,
                    t.machine.vmm,
                    banger_api::size::format_size(t.size_bytes)
                );
            }
        }
        ImageCmd::Build {
            name,
            debian,
            packages,
            json,
        } => {
            let req = ImageBuildRequest {
                name,
                suite: debian,
                packages,
            };
            let i = operations::cancelled_by_ctrl_c(&client, json, async |w| {
                client.build_image(&req, w).await
            })
            .await?;
            if json {
                render::json(&i)?
            } else {
                render::image_detail(&i, false)
            }
        }
        ImageCmd::Import {
            name,
            rootfs,
            dir,
            json,
        } => {
            let req = ImageImportRequest {
                name,
                rootfs: rootfs.map(|p| host_path("--rootfs", &p)).transpose()?,
                dir: dir.map(|p| host_path("--dir", &p)).transpose()?,
            };
            let i = operations::cancelled_by_ctrl_c(&client, json, async |w| {
                client.import_image(&req, w).await
            })
            .await?;
            if json {
                render::json(&i)?
            } else {
                render::image_detail(&i, false)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unreachable_completions() -> Result<ExitCode> {
    bail!("completions are handled before configuration is loaded")
}

async fn doctor(config: &Settings, json: bool) -> Result<ExitCode> {
    let client = daemon_ctl::connect(config).await?;
    let report = client.doctor().await?;
    if json {
        render::json(&report)?;
    } else {
        render::doctor(&report);
    }
    let failed = report.checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn daemon(config: &Settings, cmd: DaemonCmd) -> Result<ExitCode> {
    let client = Client::new(&config.socket);
    match cmd {
        DaemonCmd::Start => {
            if let Ok(st) = client.status().await {
                crate::outln!("bangerd is already running (pid {})", st.pid);
            } else {
                let st = daemon_ctl::start(config).await?;
                crate::outln!("bangerd started (pid {}, socket {})", st.pid, st.socket);
            }
            Ok(ExitCode::SUCCESS)
        }
        DaemonCmd::Stop => {
            match daemon_ctl::stop(&client).await? {
                Some(pid) => crate::outln!("bangerd (pid {pid}) stopped; running vms keep running"),
                None => crate::outln!("bangerd is not running"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DaemonCmd::Status { json } => match client.status().await {
            Ok(st) => {
                if json {
                    render::json(&serde_json::json!({"running": true, "status": st}))?;
                } else {
                    render::daemon_status(&st);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.is_unreachable() => {
                if json {
                    render::json(&serde_json::json!({"running": false}))?;
                } else {
                    crate::outln!(
                        "bangerd is not running (socket {}); any banger command starts it",
                        config.socket.display()
                    );
                }
                // Same convention as `systemctl status` for an inactive unit.
                Ok(ExitCode::from(3))
            }
            Err(e) => Err(e.into()),
        },
        DaemonCmd::Logs { lines, follow } => {
            logs(&config.log_path(), lines, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn logs(path: &std::path::Path, lines: usize, follow: bool) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| {
        format!(
            "opening {} (has bangerd ever run with this state dir?)",
            path.display()
        )
    })?;
    let all: Vec<String> = std::io::BufReader::new(&file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    for l in &all[all.len().saturating_sub(lines)..] {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    let mut pos = file.seek(SeekFrom::End(0))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let len = std::fs::metadata(path)?.len();
        if len < pos {
            // Truncated or replaced: start over.
            file = std::fs::File::open(path)?;
            pos = 0;
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        pos += buf.len() as u64;
        std::io::stdout().write_all(&buf)?;
        std::io::stdout().flush()?;
    }
}

fn size_arg(flag: &str, v: Option<String>) -> Result<Option<u64>> {
    v.map(|s| parse_size(&s).with_context(|| format!("{flag} {s:?}")))
        .transpose()
}

async fn vm(config: &Settings, cmd: VmCmd) -> Result<ExitCode> {
    let client = daemon_ctl::connect(config).await?;
    match cmd {
        VmCmd::List { json } => {
            let vms = client.list_vms().await?;
            if json {
                render::json(&vms)?;
            } else {
                render::vm_table(&vms);
            }
        }
        VmCmd::Show { vm, json } => {
            let rec = client.show_vm(&vm).await?;
            if json {
                render::json(&rec)?;
            } else {
                render::vm_detail(&rec);
            }
        }
        VmCmd::Create(a) => {
            let req = CreateVmRequest {
                name: a.name,
                vcpus: a.cpus,
                memory_mib: a.memory,
                root_disk_bytes: size_arg("--root-disk", a.root_disk)?,
                work_disk_bytes: size_arg("--work-disk", a.work_disk)?,
                image: a.image,
                kernel: a.kernel,
                nat: a.nat,
                vmm: a.vmm.map(Into::into),
                snapshot: a.snapshot,
                cold: a.cold,
                lease: None,
            };
            let rec = staged(a.json, async |b: &mut Stages| {
                client.create_vm(&req, |p| b.update(p)).await
            })
            .await?;
            if a.json {
                render::json(&rec)?;
            } else {
                crate::outln!("{}", rec.name);
            }
        }
        VmCmd::Set(a) => {
            let req = SetVmRequest {
                vcpus: a.cpus,
                memory_mib: a.memory,
                work_disk_bytes: size_arg("--work-disk", a.work_disk)?,
                nat: a.nat.map(|s| s == args::OnOff::On),
            };
            let rec = client.set_vm(&a.vm, &req).await?;
            if a.json {
                render::json(&rec)?;
            } else {
                render::vm_detail(&rec);
            }
        }
        VmCmd::Start { vm, json } => {
            let rec = staged(json, async |b: &mut Stages| {
                client.start_vm(&vm, |p| b.update(p)).await
            })
            .await?;
            if json {
                render::json(&rec)?;
            } else {
                crate::outln!(
                    "{} running at {}",
                    rec.name,
                    rec.runtime
                        .guest_ip
                        .map_or_else(|| "-".into(), |ip| ip.to_string())
                );
            }
        }
        VmCmd::Stop { vm } => {
            let rec = client.stop_vm(&vm).await?;
            crate::outln!("{} stopped", rec.name);
        }
        VmCmd::Kill { vm } => {
            let rec = client.kill_vm(&vm).await?;
            crate::outln!("{} killed", rec.name);
        }
        VmCmd::Logs { vm, lines, raw } => {
            // The daemon reads the tail from the end: a flooded log is
            // never sent whole for ten lines of it.
            let text = client.vm_logs(&vm, (lines > 0).then_some(lines)).await?;
            for l in text.lines() {
                if raw {
                    crate::outln!("{l}");
                } else {
                    crate::outln!("{}", printable::printable(l));
                }
            }
        }
        VmCmd::Exec { vm, exec } => {
            let req = run::exec_request(&exec)?;
            return Ok(run::exit_with(session::exec(&client, &vm, req).await?));
        }
        VmCmd::Run(a) => return run::run_vm(&client, a).await,
        VmCmd::Pause { vm } => snapshots::pause(&client, &vm, true).await?,
        VmCmd::Resume { vm } => snapshots::pause(&client, &vm, false).await?,
        VmCmd::Snapshot(a) => snapshots::take(&client, a).await?,
        VmCmd::Fork(a) => snapshots::fork(&client, a).await?,
        VmCmd::Cp { src, dst } => session::copy(&client, &src, &dst).await?,
        VmCmd::Ssh { vm, command } => {
            let info = client.vm_ssh(&vm).await?;
            let cmd = ssh::SshCommand {
                bin: config.ssh.clone(),
                info,
                command,
            };
            let e = cmd.exec();
            bail!("running {}: {e}", cmd.bin.display());
        }
        VmCmd::Delete { vms } => {
            let mut failed = false;
            // Each name is independent: one failure does not stop the rest.
            for vm in vms {
                match client.delete_vm(&vm).await {
                    Ok(rec) => crate::outln!("deleted {}", rec.name),
                    Err(e) => {
                        eprintln!("error: {vm}: {}", printable::printable(&e.to_string()));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
