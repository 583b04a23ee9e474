//! Checks and parsers for single values, shared by the sections.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_api::size::parse_size;

use crate::env::Picked;
use crate::error::{ConfigError, Source, invalid};

/// `IFNAMSIZ` is 16 including the NUL.
use banger_api::name::IFNAME_MAX;
/// Smallest disk a VM can be given.
const MIN_DISK_BYTES: u64 = 64 << 20;

pub(crate) fn abs_path(
    key: &'static str,
    value: Option<Picked>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some(v) => {
            let p = PathBuf::from(&v.value);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(v.invalid(key, "must be an absolute path".into()))
            }
        }
        None => Ok(PathBuf::from(default)),
    }
}

/// A binary: a bare name looked up on `PATH`, or a path.
pub(crate) fn binary(
    key: &'static str,
    value: Option<Picked>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some(v) if v.value.trim().is_empty() => {
            Err(v.invalid(key, "must name a binary or a path".into()))
        }
        Some(v) => Ok(PathBuf::from(v.value)),
        None => Ok(PathBuf::from(default)),
    }
}

pub(crate) fn bounded_int(
    key: &'static str,
    v: Picked,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    match v.value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(v.invalid(key, format!("must be a whole number from {min} to {max}"))),
    }
}

/// An optional bounded number: unset stays unset.
pub(crate) fn opt_bounded_int(
    key: &'static str,
    v: Option<Picked>,
    min: u32,
    max: u32,
) -> Result<Option<u32>, ConfigError> {
    v.map(|v| bounded_int(key, v, min, max)).transpose()
}

/// A disk size such as `8G`, at least [`MIN_DISK_BYTES`].
pub(crate) fn disk_size(
    key: &'static str,
    v: Option<Picked>,
    default: u64,
) -> Result<u64, ConfigError> {
    byte_size(key, v, default, MIN_DISK_BYTES)
}

/// A size such as `8M` or `1G`, at least `min` bytes.
pub(crate) fn byte_size(
    key: &'static str,
    v: Option<Picked>,
    default: u64,
    min: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let bytes = match parse_size(&v.value) {
        Ok(b) => b,
        Err(e) => {
            let message = e.to_string();
            return Err(v.invalid(key, message));
        }
    };
    if bytes < min {
        // Reported as the file's key whatever the source, as before.
        let least = if min % (1 << 20) == 0 {
            format!("{}M", min >> 20)
        } else {
            format!("{}K", min >> 10)
        };
        return Err(invalid(
            key,
            Source::File,
            v.value,
            format!("must be at least {least}"),
        ));
    }
    Ok(bytes)
}

/// A Linux interface name (bridge, uplink).
pub(crate) fn ifname(key: &'static str, v: Option<Picked>) -> Result<Option<String>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    if !banger_api::name::is_ifname(&v.value) {
        return Err(v.invalid(
            key,
            format!(
                "an interface name is 1-{IFNAME_MAX} characters of a-z, A-Z, 0-9, '-', '_' or '.' (not '.' or '..')"
            ),
        ));
    }
    Ok(Some(v.value))
}

/// How a boolean key may be spelled.
#[derive(Debug)]
pub(crate) struct Spelling {
    truthy: &'static [&'static str],
    falsy: &'static [&'static str],
    ignore_case: bool,
}

/// `assets.auto_provision`: any case, yes/no too.
pub(crate) const LOOSE: Spelling = Spelling {
    truthy: &["true", "1", "yes", "on"],
    falsy: &["false", "0", "no", "off"],
    ignore_case: true,
};

/// `jailer.enabled`: lower case only, no yes/no.
pub(crate) const STRICT: Spelling = Spelling {
    truthy: &["true", "1", "on"],
    falsy: &["false", "0", "off"],
    ignore_case: false,
};

pub(crate) fn flag(
    key: &'static str,
    v: Option<Picked>,
    spelling: &Spelling,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let word = if spelling.ignore_case {
        v.value.to_ascii_lowercase()
    } else {
        v.value.clone()
    };
    if spelling.truthy.contains(&word.as_str()) {
        Ok(true)
    } else if spelling.falsy.contains(&word.as_str()) {
        Ok(false)
    } else {
        Err(v.invalid(key, "use true or false".into()))
    }
}

/// `a.b.c.d/prefix`, prefix 8-30.
pub(crate) fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (8..=30).contains(&prefix).then_some((addr, prefix))
}
