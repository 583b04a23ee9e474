//! QEMU: installed, which version, and what that version means for
//! snapshots.

use std::fmt;
use std::num::ParseIntError;
use std::path::Path;

use banger_api::doctor::{Check, CheckId, CheckStatus};

use super::check;
use super::tools::{tool_run, version_check};
use crate::probe::HostProbe;

const INSTALL_HINT: &str = "apt-get install qemu-system-x86";
const BACKPORTS_HINT: &str = "install QEMU >= 9 from bookworm-backports: see scripts/setup.sh";

/// The line `qemu-system-* --version` starts with.
const PREFIX: &str = "QEMU emulator version ";

/// How much of unreadable output an error quotes: a hostile binary must
/// not fill the report.
const QUOTE_MAX: usize = 80;

/// A QEMU release, as `--version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// Why `--version` output names no QEMU version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuVersionError {
    #[error("no \"{}\" line in {quoted:?}", PREFIX.trim_end())]
    NoVersionLine { quoted: String },
    #[error("version {quoted:?} is not MAJOR.MINOR[.MICRO]")]
    Shape { quoted: String },
    #[error("version {quoted:?}: {source}")]
    Number {
        quoted: String,
        #[source]
        source: ParseIntError,
    },
}

impl QemuVersion {
    /// The first release with the `mapped-ram` migration capability,
    /// which banger's snapshots use for fast restores.
    pub const MAPPED_RAM: QemuVersion = QemuVersion {
        major: 9,
        minor: 0,
        micro: 0,
    };

    /// Reads the version from `qemu-system-* --version` output, e.g.
    /// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)`.
    pub fn parse(output: &str) -> Result<Self, QemuVersionError> {
        let rest = output
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(PREFIX))
            .ok_or_else(|| QemuVersionError::NoVersionLine {
                quoted: quote(output),
            })?;
        let word = rest.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = word.split('.').collect();
        // `u32::from_str` takes a leading `+`; a version has digits only.
        let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(digits) {
            return Err(QemuVersionError::Shape {
                quoted: quote(word),
            });
        }
        let num = |p: &str| {
            p.parse::<u32>().map_err(|source| QemuVersionError::Number {
                quoted: quote(word),
                source,
            })
        };
        Ok(QemuVersion {
            major: num(parts[0])?,
            minor: num(parts[1])?,
            micro: parts.get(2).map_or(Ok(0), |p| num(p))?,
        })
    }

    /// Whether snapshots can use `mapped-ram` (fixed page offsets, so a
    /// restore reads memory in place instead of parsing a stream).
    pub fn has_mapped_ram(self) -> bool {
        self >= Self::MAPPED_RAM
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

fn quote(text: &str) -> String {
    let mut q: String = text.chars().take(QUOTE_MAX).collect();
    if text.chars().nth(QUOTE_MAX).is_some() {
        q.push('…');
    }
    q
}

/// The QEMU check and the snapshot support its version gives, from one
/// run of `--version`.
pub(super) fn qemu_checks(probe: &dyn HostProbe, bin: &Path) -> (Check, Check) {
    const ID: CheckId = CheckId::QemuSnapshots;
    match tool_run(probe, CheckId::Qemu, bin, &["--version"], INSTALL_HINT) {
        Ok((path, out)) => (
            version_check(CheckId::Qemu, &path, &out),
            snapshot_support(&out.text),
        ),
        // Like TCG: unknown until QEMU answers, and the QEMU line says why.
        Err(qemu) => {
            let unknown = check(
                ID,
                CheckStatus::Warn,
                format!("unknown: {}", qemu.detail),
                Some(INSTALL_HINT),
            );
            (qemu, unknown)
        }
    }
}

fn snapshot_support(version_output: &str) -> Check {
    const ID: CheckId = CheckId::QemuSnapshots;
    match QemuVersion::parse(version_output) {
        Ok(v) if v.has_mapped_ram() => check(
            ID,
            CheckStatus::Ok,
            format!("QEMU {v}: fast restore (mapped-ram)"),
            None,
        ),
        Ok(v) => check(
            ID,
            CheckStatus::Warn,
            format!("QEMU {v}: snapshots without mapped-ram (slower restore)"),
            Some(BACKPORTS_HINT),
        ),
        Err(e) => check(
            ID,
            CheckStatus::Warn,
            format!("unknown QEMU version: {e}"),
            Some(BACKPORTS_HINT),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    #[test]
    fn reads_debian_and_upstream_version_lines() {
        let cases = [
            (
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n",
                v(10, 0, 2),
            ),
            (
                "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n",
                v(7, 2, 15),
            ),
            ("QEMU emulator version 9.0.0\n", v(9, 0, 0)),
            // A development build: the micro is 50 and the tag follows.
            (
                "QEMU emulator version 9.0.50 (v9.0.0-1234-gdeadbeef)\n",
                v(9, 0, 50),
            ),
            // Some wrappers print a banner first.
            ("warning: foo\n  QEMU emulator version 8.2\n", v(8, 2, 0)),
        ];
        for (text, want) in cases {
            assert_eq!(QemuVersion::parse(text), Ok(want), "{text:?}");
        }
        assert_eq!(v(10, 0, 2).to_string(), "10.0.2");
    }

    #[test]
    fn mapped_ram_starts_at_nine() {
        assert!(v(10, 0, 2).has_mapped_ram());
        assert!(v(9, 0, 0).has_mapped_ram());
        assert!(!v(8, 2, 9).has_mapped_ram());
        assert!(!v(7, 2, 15).has_mapped_ram());
    }

    #[test]
    fn garbled_output_is_a_typed_error() {
        let no_line = [
            "",
            "\n\n",
            "qemu-system-x86_64: unknown option --version",
            "QEMU emulator version",
            "Firecracker v1.16.1",
            "\u{0}\u{fffd}\u{7f}ELF",
        ];
        for text in no_line {
            assert!(
                matches!(
                    QemuVersion::parse(text),
                    Err(QemuVersionError::NoVersionLine { .. })
                ),
                "{text:?}"
            );
        }
        let shape = [
            "QEMU emulator version ",
            "QEMU emulator version 10",
            "QEMU emulator version 10.0.2.1",
            "QEMU emulator version 10..2",
            "QEMU emulator version x.y.z",
            "QEMU emulator version +10.0.2",
            "QEMU emulator version 10.-1.2",
            "QEMU emulator version 10.0.2-rc1",
        ];
        for text in shape {
            assert!(
                matches!(
                    QemuVersion::parse(text),
                    Err(QemuVersionError::Shape { .. })
                ),
                "{text:?}"
            );
        }
        assert!(matches!(
            QemuVersion::parse("QEMU emulator version 99999999999.0.0"),
            Err(QemuVersionError::Number { .. })
        ));
        // A hostile binary cannot fill the report.
        let flood = "A".repeat(1 << 20);
        let e = QemuVersion::parse(&flood).expect_err("no version");
        assert!(e.to_string().len() < 200, "{}", e.to_string().len());
        let e = QemuVersion::parse(&format!("QEMU emulator version {flood}")).expect_err("shape");
        assert!(e.to_string().len() < 200, "{}", e.to_string().len());
    }
}
