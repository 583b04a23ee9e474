//! Structured logs to `<state>/bangerd.log` and, in the foreground, stderr.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Keeps the log writer flushing; drop it last.
#[derive(Debug)]
pub struct LogGuard {
    _file: WorkerGuard,
}

/// Installs the global subscriber. `level` is the config's `log_level`;
/// `RUST_LOG` refines it when set.
pub fn init(log_file: &Path, level: &str, to_stderr: bool) -> std::io::Result<LogGuard> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let file_layer = fmt::layer().with_writer(writer).with_ansi(false);
    let stderr_layer = to_stderr.then(|| fmt::layer().with_writer(std::io::stderr));
    // A second init (tests running two daemons in one process) keeps the
    // first subscriber; that is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    Ok(LogGuard { _file: guard })
}
