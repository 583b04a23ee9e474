//! Reading Debian packages without installing them.
//!
//! A `.deb` is an `ar` archive of `debian-binary`, `control.tar.*` and
//! `data.tar.*`. We read the control fields (to follow a metapackage such
//! as `linux-image-cloud-amd64` to the real image package) and extract
//! selected files from the data archive into a directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid .deb: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// The `control` file of a package, as field -> value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    pub fields: Vec<(String, String)>,
}

impl Control {
    pub fn parse(text: &str) -> Self {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Self { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Package names in `Depends`, alternatives and versions dropped.
    pub fn depends(&self) -> Vec<String> {
        self.get("Depends")
            .unwrap_or("")
            .split(',')
            .filter_map(|d| d.split('|').next())
            .map(|d| {
                d.split(['(', ' '])
                    .find(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_owned()
            })
            .filter(|d| !d.is_empty())
            .collect()
    }
}

/// An opened `.deb`.
#[derive(Debug)]
pub struct Deb {
    path: PathBuf,
    control: Vec<u8>,
    control_name: String,
    data: Vec<u8>,
    data_name: String,
}

impl Deb {
    pub fn open(path: &Path) -> Result<Self, DebError> {
        let corrupt = |message: String| DebError::Corrupt {
            path: path.to_owned(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|source| DebError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut ar = ar::Archive::new(std::io::BufReader::new(file));
        let (mut control, mut control_name, mut data, mut data_name) =
            (Vec::new(), String::new(), Vec::new(), String::new());
        let mut saw_binary = false;
        while let Some(entry) = ar.next_entry() {
            let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
            let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
            let name = name.trim_end_matches('/').to_owned();
            if name == "debian-binary" {
                saw_binary = true;
            } else if name.starts_with("control.tar") {
                entry
                    .read_to_end(&mut control)
                    .map_err(|e| corrupt(e.to_string()))?;
                control_name = name;
            } else if name.starts_with("data.tar") {
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| corrupt(e.to_string()))?;
                data_name = name;
            }
        }
        if !saw_binary || control_name.is_empty() || data_name.is_empty() {
            return Err(corrupt(
                "missing debian-binary, control.tar.* or data.tar.* member".into(),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            control,
            control_name,
            data,
            data_name,
        })
    }

    fn corrupt(&self, message: impl std::fmt::Display) -> DebError {
        DebError::Corrupt {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn tar<'a>(
        &self,
        name: &str,
        bytes: &'a [u8],
    ) -> Result<tar::Archive<Box<dyn Read + 'a>>, DebError> {
        let reader: Box<dyn Read + 'a> = if name.ends_with(".xz") {
            Box::new(liblzma::read::XzDecoder::new(bytes))
        } else if name.ends_with(".zst") {
            Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|e| self.corrupt(e))?)
        } else if name.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(bytes))
        } else if name.ends_with(".tar") {
            Box::new(bytes)
        } else {
            return Err(self.corrupt(format!("unsupported member compression: {name}")));
        };
        Ok(tar::Archive::new(reader))
    }

    /// The package's control fields.
    pub fn control(&self) -> Result<Control, DebError> {
        let mut archive = self.tar(&self.control_name, &self.control)?;
        for entry in archive.entries().map_err(|e| self.corrupt(e))? {
            let mut entry = entry.map_err(|e| self.corrupt(e))?;
            let path = entry.path().map_err(|e| self.corrupt(e))?.into_owned();
            if path.file_name().is_some_and(|n| n == "control") {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| self.corrupt(e))?;
                return Ok(Control::parse(&text));
            }
        }
        Err(self.corrupt("control.tar has no control file"))
    }

    /// Extracts the data entries for which `want(path)` is true into
    /// `dest` (paths relative to the package root). Returns what was
    /// written. Entries that would escape `dest` are refused.
    pub fn extract(
        &self,
        dest: &Path,
        mut want: impl FnMut(&Path) -> bool,
    ) -> Result<Vec<PathBuf>, DebError> {
        let mut archive = self.tar(&self.data_name, &self.data)?;
        let mut written = Vec::new();
        for entry in archive.entries().map_err(|e| self.corrupt(e))? {
            let mut entry = entry.map_err(|e| self.corrupt(e))?;
            let raw = entry.path().map_err(|e| self.corrupt(e))?.into_owned();
            let rel: PathBuf = raw
                .components()
                .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
                .collect();
            if rel.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(
                    self.corrupt(format!("entry {} escapes the package root", raw.display()))
                );
            }
            if rel.as_os_str().is_empty() || !want(&rel) {
                continue;
            }
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                continue;
            }
            let target = dest.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|source| DebError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            entry.unpack(&target).map_err(|source| DebError::Io {
                path: target.clone(),
                source,
            })?;
            if kind.is_file() {
                written.push(rel);
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Builds a `.deb` with the given control text and data files.
    pub fn make_deb(path: &Path, control: &str, files: &[(&str, &[u8])]) {
        let tar_of = |entries: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, *data).expect("append");
            }
            b.into_inner().expect("tar")
        };
        let xz = |data: &[u8]| {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).expect("xz");
            e.finish().expect("xz")
        };
        let control_tar = xz(&tar_of(&[("./control", control.as_bytes())]));
        let data_tar = xz(&tar_of(files));
        let mut ar = ar::Builder::new(std::fs::File::create(path).expect("create"));
        for (name, data) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.xz", control_tar),
            ("data.tar.xz", data_tar),
        ] {
            let header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            ar.append(&header, &data[..]).expect("ar");
        }
    }

    #[test]
    fn reads_control_and_extracts_selected_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = dir.path().join("k.deb");
        make_deb(
            &deb,
            "Package: linux-image-cloud-amd64\nVersion: 6.1\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), foo | bar\nDescription: x\n more\n",
            &[
                ("./boot/vmlinuz-6.1", b"KERNEL"),
                ("./usr/share/doc/x", b"doc"),
            ],
        );
        let d = Deb::open(&deb).expect("open");
        let c = d.control().expect("control");
        assert_eq!(c.get("package"), Some("linux-image-cloud-amd64"));
        assert_eq!(c.depends(), ["linux-image-6.1.0-56-cloud-amd64", "foo"]);
        assert_eq!(c.get("Description"), Some("x\nmore"));
        let out = dir.path().join("x");
        let got = d.extract(&out, |p| p.starts_with("boot")).expect("extract");
        assert_eq!(got, [PathBuf::from("boot/vmlinuz-6.1")]);
        assert_eq!(
            std::fs::read(out.join("boot/vmlinuz-6.1")).expect("read"),
            b"KERNEL"
        );
        assert!(!out.join("usr").exists());
    }

    #[test]
    fn corrupt_debs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.deb");
        std::fs::write(&p, b"!<arch>\ngarbage").expect("write");
        assert!(matches!(Deb::open(&p), Err(DebError::Corrupt { .. })));
        std::fs::write(&p, b"not even ar").expect("write");
        assert!(Deb::open(&p).is_err());
        assert!(matches!(
            Deb::open(&dir.path().join("missing.deb")),
            Err(DebError::Io { .. })
        ));
    }
}
