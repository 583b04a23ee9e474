//! Facts both `bangerd` and `banger` must agree on without sharing the
//! daemon's configuration crate: where the daemon lives by default, the
//! variables that move it, and how the daemon's exit says why it stopped.
//!
//! The CLI reads only these; the daemon's `banger-config` resolves them
//! the same way (plus everything else), so the two cannot drift.

/// Environment variable naming an explicit config file.
pub const CONFIG_ENV: &str = "BANGER_CONFIG";
/// Where the config file is read from unless [`CONFIG_ENV`] says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/banger/config.toml";

/// Durable state: database, assets, VM directories, logs.
pub const STATE_DIR_ENV: &str = "BANGER_STATE_DIR";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/banger";

/// Ephemeral state: sockets.
pub const RUNTIME_DIR_ENV: &str = "BANGER_RUNTIME_DIR";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/banger";

/// The API socket; unset, it is [`SOCKET_FILE`] in the runtime dir.
pub const SOCKET_ENV: &str = "BANGER_SOCKET";
pub const SOCKET_FILE: &str = "bangerd.sock";
/// `sun_path` is 108 bytes including the terminating NUL.
pub const SUN_PATH_MAX: usize = 107;

/// The `ssh` that `banger vm ssh` runs; a bare name is looked up on `PATH`.
pub const SSH_BIN_ENV: &str = "BANGER_SSH_BIN";
pub const DEFAULT_SSH_BIN: &str = "ssh";

/// The daemon's own log (tracing output), in the state dir.
pub const LOG_FILE: &str = "bangerd.log";
/// A detached daemon's stderr, in the state dir: panics and failures that
/// happen before logging is set up.
pub const STDERR_LOG_FILE: &str = "bangerd.stderr.log";

/// `bangerd`'s exit status when another daemon already holds the state
/// dir's instance lock (`EX_TEMPFAIL`: trying again may succeed, once that
/// daemon answers or has finished exiting).
pub const EXIT_ALREADY_RUNNING: u8 = 75;
