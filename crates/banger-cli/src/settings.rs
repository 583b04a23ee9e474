//! What the CLI needs to find and start its daemon: the socket, the state
//! dir (auto-start's stderr log, `daemon logs`) and the `ssh` binary.
//!
//! The CLI does not resolve the daemon's configuration: a key only the
//! daemon reads, valid or not, must not stop `banger vm list` from talking
//! to a running daemon (and a daemon that cannot start reports its own
//! config errors, which the CLI shows). Each value comes, in order, from
//! its `BANGER_*` variable, the same key of the config file, or the
//! daemon's default ([`banger_api::defaults`]); the file is read leniently,
//! for these keys only.

use std::path::{Path, PathBuf};

use banger_api::defaults::{
    CONFIG_ENV, DEFAULT_CONFIG_PATH, DEFAULT_RUNTIME_DIR, DEFAULT_SSH_BIN, DEFAULT_STATE_DIR,
    LOG_FILE, RUNTIME_DIR_ENV, SOCKET_ENV, SOCKET_FILE, SSH_BIN_ENV, STATE_DIR_ENV,
    STDERR_LOG_FILE, SUN_PATH_MAX,
};

/// Why the CLI's settings could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("config key `{key}` = {value:?}: {message}")]
    Invalid {
        key: &'static str,
        value: String,
        message: String,
    },
}

/// The CLI's view of where its daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `vm ssh` runs this; a bare name is looked up on `PATH`.
    pub ssh: PathBuf,
}

impl Settings {
    /// From the real process environment.
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_with(|k| std::env::var(k).ok())
    }

    /// With `env` standing in for the process environment.
    pub fn load_with(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let env = |var: &str| env(var).filter(|v| !v.is_empty());
        let file = ConfigFile::read(env(CONFIG_ENV))?;
        let pick = |var: &'static str, key: &'static str| -> Result<Option<Value>, SettingsError> {
            Ok(match env(var) {
                Some(v) => Some(Value::Env { var, value: v }),
                None => file.string(key)?.map(|v| Value::File { key, value: v }),
            })
        };
        let state_dir = absolute(pick(STATE_DIR_ENV, "state_dir")?, DEFAULT_STATE_DIR)?;
        let runtime_dir = absolute(pick(RUNTIME_DIR_ENV, "runtime_dir")?, DEFAULT_RUNTIME_DIR)?;
        let socket = match pick(SOCKET_ENV, "socket")? {
            Some(v) => absolute(Some(v), "")?,
            None => runtime_dir.join(SOCKET_FILE),
        };
        let sock_len = socket.as_os_str().len();
        if sock_len > SUN_PATH_MAX {
            return Err(SettingsError::Invalid {
                key: "socket",
                value: socket.display().to_string(),
                message: format!(
                    "a unix socket path is limited to {SUN_PATH_MAX} bytes and this one has {sock_len}; choose a shorter runtime_dir or socket"
                ),
            });
        }
        let ssh = match pick(SSH_BIN_ENV, "tools.ssh")? {
            Some(v) if v.text().trim().is_empty() => {
                return Err(v.invalid("must name a binary or a path"));
            }
            Some(v) => PathBuf::from(v.into_text()),
            None => PathBuf::from(DEFAULT_SSH_BIN),
        };
        Ok(Self {
            socket,
            state_dir,
            ssh,
        })
    }

    /// The daemon's own log.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join(LOG_FILE)
    }

    /// Where a daemon this CLI starts writes its stderr.
    pub fn stderr_log_path(&self) -> PathBuf {
        self.state_dir.join(STDERR_LOG_FILE)
    }
}

/// A chosen value and where it came from, for the error that names it.
enum Value {
    Env { var: &'static str, value: String },
    File { key: &'static str, value: String },
}

impl Value {
    fn text(&self) -> &str {
        match self {
            Self::Env { value, .. } | Self::File { value, .. } => value,
        }
    }

    fn into_text(self) -> String {
        match self {
            Self::Env { value, .. } | Self::File { value, .. } => value,
        }
    }

    fn invalid(self, message: &'static str) -> SettingsError {
        match self {
            Self::Env { var, value } => SettingsError::Env {
                var,
                value,
                message: message.to_owned(),
            },
            Self::File { key, value } => SettingsError::Invalid {
                key,
                value,
                message: message.to_owned(),
            },
        }
    }
}

fn absolute(v: Option<Value>, default: &str) -> Result<PathBuf, SettingsError> {
    let Some(v) = v else {
        return Ok(PathBuf::from(default));
    };
    if Path::new(v.text()).is_absolute() {
        Ok(PathBuf::from(v.into_text()))
    } else {
        Err(v.invalid("must be an absolute path"))
    }
}

/// The config file as a plain table: keys the CLI does not read are not
/// looked at, so they cannot fail it.
struct ConfigFile {
    table: toml::Table,
}

impl ConfigFile {
    /// `explicit` is `$BANGER_CONFIG`: that file must exist; the default
    /// one may be missing.
    fn read(explicit: Option<String>) -> Result<Self, SettingsError> {
        let (path, must_exist) = match explicit {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Self {
                    table: toml::Table::new(),
                });
            }
            Err(source) => return Err(SettingsError::Read { path, source }),
        };
        let table = text
            .parse::<toml::Table>()
            .map_err(|source| SettingsError::Parse { path, source })?;
        Ok(Self { table })
    }

    /// A string key, `section.key` for one inside a table.
    fn string(&self, key: &'static str) -> Result<Option<String>, SettingsError> {
        let found = match key.split_once('.') {
            Some((section, name)) => match self.table.get(section) {
                Some(toml::Value::Table(t)) => t.get(name),
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        key,
                        value: other.to_string(),
                        message: "the section is not a table".to_owned(),
                    });
                }
                None => None,
            },
            None => self.table.get(key),
        };
        match found {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(SettingsError::Invalid {
                key,
                value: other.to_string(),
                message: "must be a string".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_with(move |k| map.get(k).cloned())
    }

    fn with_file(text: &str, pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let p = path.display().to_string();
        let mut all = vec![(CONFIG_ENV, p.as_str())];
        all.extend_from_slice(pairs);
        load(&all)
    }

    #[test]
    fn defaults_are_the_daemons() {
        let s = with_file("", &[]).expect("defaults");
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/banger"));
        assert_eq!(s.socket, PathBuf::from("/run/banger/bangerd.sock"));
        assert_eq!(s.ssh, PathBuf::from("ssh"));
        assert_eq!(s.log_path(), PathBuf::from("/var/lib/banger/bangerd.log"));
    }

    #[test]
    fn env_wins_over_the_file_and_the_socket_follows_the_runtime_dir() {
        let s = with_file(
            "state_dir = \"/srv/banger\"\nruntime_dir = \"/run/b\"\n[tools]\nssh = \"/opt/ssh\"\n",
            &[(RUNTIME_DIR_ENV, "/tmp/rt"), (SSH_BIN_ENV, "")],
        )
        .expect("load");
        assert_eq!(s.state_dir, PathBuf::from("/srv/banger"));
        assert_eq!(s.socket, PathBuf::from("/tmp/rt/bangerd.sock"));
        assert_eq!(s.ssh, PathBuf::from("/opt/ssh"), "empty env is unset");
        let s =
            with_file("socket = \"/x/d.sock\"\n", &[(RUNTIME_DIR_ENV, "/tmp/rt")]).expect("load");
        assert_eq!(s.socket, PathBuf::from("/x/d.sock"));
    }

    #[test]
    fn keys_only_the_daemon_reads_do_not_matter() {
        let s = with_file(
            "[network]\nbrige = \"br0\"\n[defaults]\nvcpus = 0\n",
            &[(STATE_DIR_ENV, "/s")],
        )
        .expect("lenient");
        assert_eq!(s.state_dir, PathBuf::from("/s"));
    }

    #[test]
    fn bad_values_of_its_own_keys_name_their_source() {
        let err = with_file("", &[(STATE_DIR_ENV, "relative")]).expect_err("relative");
        assert!(
            matches!(
                err,
                SettingsError::Env {
                    var: STATE_DIR_ENV,
                    ..
                }
            ),
            "{err}"
        );
        let err = with_file("socket = 5\n", &[]).expect_err("type");
        assert!(err.to_string().contains("`socket`"), "{err}");
        let err = with_file("[tools]\nssh = \"\"\n", &[]).expect_err("empty");
        assert!(err.to_string().contains("tools.ssh"), "{err}");
        let err = with_file("state_dir = [", &[]).expect_err("syntax");
        assert!(matches!(err, SettingsError::Parse { .. }), "{err}");
        let err = load(&[(CONFIG_ENV, "/nonexistent/banger.toml")]).expect_err("explicit");
        assert!(matches!(err, SettingsError::Read { .. }), "{err}");
        let long = format!("/{}", "r".repeat(120));
        let err = with_file("", &[(RUNTIME_DIR_ENV, &long)]).expect_err("long");
        assert!(err.to_string().contains("107 bytes"), "{err}");
    }
}
