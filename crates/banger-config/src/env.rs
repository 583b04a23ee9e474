//! `BANGER_*` overrides: a set, non-empty variable wins over the file.

use std::path::PathBuf;

use crate::error::{ConfigError, Source, invalid};

/// A value as chosen from the environment or the file, with its source.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) value: String,
    pub(crate) src: Source,
}

impl Picked {
    /// The error for this value, naming the variable or `key`.
    pub(crate) fn invalid(self, key: &'static str, message: String) -> ConfigError {
        invalid(key, self.src, self.value, message)
    }
}

/// Chooses each value by precedence: environment, then file.
pub(crate) struct Pick<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Pick<'a> {
    pub(crate) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { env }
    }

    pub(crate) fn text(&self, var: &str, from_file: Option<String>) -> Option<Picked> {
        match (self.env)(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Picked {
                value,
                src: Source::Env(var.to_owned()),
            }),
            None => from_file.map(|value| Picked {
                value,
                src: Source::File,
            }),
        }
    }

    /// A path key; TOML strings are UTF-8, so the lossy conversion of a
    /// file value never changes it.
    pub(crate) fn path(&self, var: &str, from_file: Option<PathBuf>) -> Option<Picked> {
        self.text(var, from_file.map(|p| p.to_string_lossy().into_owned()))
    }

    /// A key the file gives typed (number, bool) but the environment as text.
    pub(crate) fn shown<T: ToString>(&self, var: &str, from_file: Option<T>) -> Option<Picked> {
        self.text(var, from_file.map(|v| v.to_string()))
    }
}
