//! `bangerd`: the daemon.

use std::process::ExitCode;

use anyhow::Context;
use banger_config::Config;
use banger_daemon::{DaemonError, DaemonOptions};

/// Parsed by hand: the daemon has a handful of flags and no subcommands.
fn main() -> ExitCode {
    let mut detached = false;
    let mut helper = false;
    let mut for_uid: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--detached" => detached = true,
            "--helper" => helper = true,
            "--for-uid" => match args.next().and_then(|u| u.parse().ok()) {
                Some(u) => for_uid = Some(u),
                None => {
                    eprintln!("bangerd: --for-uid needs the daemon user's numeric uid");
                    return ExitCode::from(2);
                }
            },
            "--for-user" => {
                let name = args.next().unwrap_or_default();
                match nix::unistd::User::from_name(&name) {
                    Ok(Some(u)) => for_uid = Some(u.uid.as_raw()),
                    _ => {
                        eprintln!("bangerd: --for-user {name:?}: no such user");
                        return ExitCode::from(2);
                    }
                }
            }
            "--version" | "-V" => {
                println!("bangerd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!(
                    "bangerd {}: the banger daemon\n\nUsage: bangerd [--detached]\n       bangerd --helper --for-uid UID | --for-user NAME\n\n  --detached  log only to <state dir>/bangerd.log (set by `banger` when it starts the daemon)\n  --helper    run as the privileged helper (root) for a daemon running as UID;\n              it listens on privileges.helper_socket\n\nExit status: 0 after a clean stop, 2 on bad arguments, 75 when another\nbangerd holds this state dir, 1 on any other failure.\n\nConfiguration: /etc/banger/config.toml or $BANGER_CONFIG, BANGER_* variables.",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bangerd: unknown argument {other:?}; see `bangerd --help`");
                return ExitCode::from(2);
            }
        }
    }
    if helper {
        let Some(uid) = for_uid else {
            eprintln!("bangerd: --helper needs --for-uid UID (the user bangerd runs as)");
            return ExitCode::from(2);
        };
        return match run_helper(uid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bangerd --helper: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(detached) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e:#}");
            let code = e
                .downcast_ref::<DaemonError>()
                .map_or(1, DaemonError::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run_helper(uid: u32) -> anyhow::Result<()> {
    let config = Config::load().context("loading configuration")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(banger_daemon::run_helper(config, uid))?;
    Ok(())
}

fn run(detached: bool) -> anyhow::Result<()> {
    let config = Config::load().context("loading configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(banger_daemon::run(
        config,
        DaemonOptions {
            log_to_stderr: !detached,
        },
    ))?;
    Ok(())
}
