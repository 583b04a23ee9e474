//! Why the configuration could not be loaded, and where a bad value came
//! from so the error can name the variable or the key.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: String,
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

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Env(String),
    File,
}

pub(crate) fn invalid(
    key: &'static str,
    src: Source,
    value: String,
    message: String,
) -> ConfigError {
    match src {
        Source::Env(var) => ConfigError::Env {
            var,
            value,
            message,
        },
        Source::File => ConfigError::Invalid {
            key,
            value,
            message,
        },
    }
}
