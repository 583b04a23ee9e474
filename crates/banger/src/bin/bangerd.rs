//! `bangerd`: the daemon.

use std::process::ExitCode;

use anyhow::Context;
use banger_config::Config;
use banger_daemon::DaemonOptions;

/// Parsed by hand: the daemon has two flags and no subcommands.
fn main() -> ExitCode {
    let mut detached = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--detached" => detached = true,
            "--version" | "-V" => {
                println!("bangerd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!(
                    "bangerd {}: the banger daemon\n\nUsage: bangerd [--detached]\n\n  --detached  log only to <state dir>/bangerd.log (set by `banger` when it starts the daemon)\n\nConfiguration: /etc/banger/config.toml or $BANGER_CONFIG, BANGER_* variables.",
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
    match run(detached) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e:#}");
            ExitCode::FAILURE
        }
    }
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
