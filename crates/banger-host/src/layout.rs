//! Names and places banger owns on the host, in one room: the tap a VM
//! gets, what counts as an interface name, and where a VM's files live.
//!
//! The daemon core makes these, the privileged helper's policy checks
//! requests against them and the firewall filters its listings with
//! them; each of those used to spell them out on its own.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every tap banger makes starts with this.
const TAP_PREFIX: &str = "bg-";
/// How many characters of the VM id a tap name carries.
const TAP_ID_CHARS: usize = 12;
/// A VM id's length (`banger_core`'s `new_vm_id`).
const VM_ID_CHARS: usize = 16;
/// `IFNAMSIZ` is 16 including the NUL.
pub use banger_api::name::IFNAME_MAX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{name:?} is not a banger tap (bg-<12 hex digits of a vm id>)")]
    NotATap { name: String },
    #[error("{id:?} is not a banger vm id (16 lowercase hex digits)")]
    NotAVmId { id: String },
    #[error(
        "{what} {name:?} is not an interface name (1-{IFNAME_MAX} characters of a-z, A-Z, 0-9, '-', '_' or '.', not '.' or '..')"
    )]
    NotAnIfname { what: String, name: String },
}

/// A VM's tap, `bg-<first 12 characters of its id>`: the VM owns it by
/// name, so teardown and reconcile find it without a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TapName(String);

impl TapName {
    /// The tap of the VM `vm_id`.
    pub fn for_vm(vm_id: &str) -> TapName {
        // Char-wise so a malformed id cannot split a UTF-8 sequence; for
        // the hex ids banger makes this is the first 12 bytes.
        let head: String = vm_id.chars().take(TAP_ID_CHARS).collect();
        TapName(format!("{TAP_PREFIX}{head}"))
    }

    /// A name of the shape banger gives taps, `bg-<12 lowercase hex>`.
    pub fn parse(name: &str) -> Result<TapName, LayoutError> {
        match name.strip_prefix(TAP_PREFIX) {
            Some(hex)
                if hex.len() == TAP_ID_CHARS
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
            {
                Ok(TapName(name.to_owned()))
            }
            _ => Err(LayoutError::NotATap {
                name: name.to_owned(),
            }),
        }
    }

    /// Whether `name` lies in banger's tap namespace (its prefix). Looser
    /// than [`TapName::parse`] on purpose: a listing filter must still
    /// see, and so clean up, a banger link of an unexpected shape.
    pub fn is_banger(name: &str) -> bool {
        name.starts_with(TAP_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of the VM id the name carries.
    pub fn vm_id_prefix(&self) -> &str {
        &self.0[TAP_PREFIX.len()..]
    }
}

impl fmt::Display for TapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TapName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<TapName> for String {
    fn from(t: TapName) -> String {
        t.0
    }
}

impl TryFrom<String> for TapName {
    type Error = LayoutError;
    fn try_from(s: String) -> Result<TapName, LayoutError> {
        TapName::parse(&s)
    }
}

/// A VM id as banger makes them, 16 lowercase hex digits: a path
/// component of the VM's dir, its jail and cgroups; nothing else passes.
pub fn check_vm_id(id: &str) -> Result<(), LayoutError> {
    if id.len() == VM_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(LayoutError::NotAVmId { id: id.to_owned() })
    }
}

/// The one rule for interface names banger accepts (bridge, uplink, taps):
/// 1-15 bytes of `[A-Za-z0-9_.-]`, not `.` or `..`. Stricter than the
/// kernel (which only bars `/`, whitespace and `.`/`..`) so a name is also
/// safe to log, to put in an nft rule and to pass on a command line.
pub fn check_ifname(what: &str, name: &str) -> Result<(), LayoutError> {
    if banger_api::name::is_ifname(name) {
        Ok(())
    } else {
        Err(LayoutError::NotAnIfname {
            what: what.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// `<state_dir>/vms`, for those that know the state dir only (the jail's
/// confinement); everyone else asks a [`VmLayout`].
pub fn vms_dir_in(state_dir: &Path) -> PathBuf {
    state_dir.join("vms")
}

/// Where VMs keep their files: disks and logs under the state dir,
/// sockets under the (short) runtime dir so their paths fit `sun_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    state_dir: PathBuf,
    runtime_dir: PathBuf,
}

/// Files the daemon keeps per VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub dir: PathBuf,
    pub root_disk: PathBuf,
    pub work_disk: PathBuf,
    pub console: PathBuf,
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    /// Host end of the guest's vsock (the agent's channel on Firecracker).
    pub vsock: PathBuf,
    /// Host end of the agent's virtio-serial port (its channel on QEMU).
    pub agent: PathBuf,
}

impl VmLayout {
    pub fn new(state_dir: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> VmLayout {
        VmLayout {
            state_dir: state_dir.into(),
            runtime_dir: runtime_dir.into(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// `<state>/vms`: one directory per VM.
    pub fn vms_dir(&self) -> PathBuf {
        vms_dir_in(&self.state_dir)
    }

    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.vms_dir().join(vm_id)
    }

    pub fn files(&self, vm_id: &str) -> VmFiles {
        let dir = self.vm_dir(vm_id);
        let sockets = self.runtime_dir.join("vms");
        VmFiles {
            root_disk: dir.join("root.ext4"),
            work_disk: dir.join("work.ext4"),
            console: dir.join("console.log"),
            pid_file: dir.join("vmm.pid"),
            socket: sockets.join(format!("{vm_id}.sock")),
            vsock: sockets.join(format!("{vm_id}.vsock")),
            agent: sockets.join(format!("{vm_id}.agent")),
            dir,
        }
    }

    /// `<state>/snapshots`: one directory per snapshot, published by
    /// rename from a `.staging-<id>` sibling.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.state_dir.join("snapshots")
    }

    /// Whether `dir` is a directory directly in [`Self::snapshots_dir`]
    /// (published or staging): the only snapshot trees banger removes.
    pub fn is_snapshot_dir(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.snapshots_dir().as_path())
            && dir.file_name().is_some_and(|n| n != "." && n != "..")
    }

    /// Whether `dir` names one VM's directory (directly inside
    /// `<state>/vms`, not `.` or `..`): the guard before removing it.
    pub fn is_vm_dir(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.vms_dir().as_path())
            && dir.file_name().is_some_and(|n| n != "." && n != "..")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vms_tap_is_bg_and_the_first_twelve_of_its_id() {
        let t = TapName::for_vm("0123456789abcdef");
        assert_eq!(t.as_str(), "bg-0123456789ab");
        assert_eq!(t.to_string(), "bg-0123456789ab");
        assert_eq!(t.vm_id_prefix(), "0123456789ab");
        assert_eq!(TapName::parse(t.as_str()), Ok(t));
        // Short ids are taken whole, as the core always did.
        assert_eq!(TapName::for_vm("0123").as_str(), "bg-0123");
    }

    #[test]
    fn only_the_banger_shape_parses() {
        for bad in [
            "eth0",
            "bg-../../etc",
            "bg-0123/56789a",
            "bg-0123456789AB",
            "bg-0123456789a",
            "bg-0123456789abc",
            "bg-",
            "",
        ] {
            assert_eq!(
                TapName::parse(bad),
                Err(LayoutError::NotATap { name: bad.into() }),
                "{bad}"
            );
        }
        assert!(
            TapName::parse("eth0")
                .expect_err("not a tap")
                .to_string()
                .contains("not a banger tap")
        );
    }

    #[test]
    fn a_tap_travels_as_a_string_and_is_checked_on_arrival() {
        let t = TapName::parse("bg-0123456789ab").expect("tap");
        let json = serde_json::to_string(&t).expect("json");
        assert_eq!(json, r#""bg-0123456789ab""#);
        assert_eq!(serde_json::from_str::<TapName>(&json).expect("back"), t);
        assert!(serde_json::from_str::<TapName>(r#""eth0""#).is_err());
    }

    #[test]
    fn the_listing_filter_takes_the_prefix() {
        assert!(TapName::is_banger("bg-0123456789ab"));
        assert!(TapName::is_banger("bg-odd"));
        assert!(!TapName::is_banger("eth0"));
        assert!(!TapName::is_banger("xbg-0123456789ab"));
    }

    #[test]
    fn vm_ids_are_sixteen_lowercase_hex() {
        check_vm_id("0123456789abcdef").expect("id");
        for bad in [
            "",
            "..",
            "0123456789ABCDEF",
            "0123/56789abcdef",
            "0123456789abcde",
        ] {
            assert_eq!(
                check_vm_id(bad),
                Err(LayoutError::NotAVmId { id: bad.into() })
            );
        }
        assert!(
            check_vm_id("..")
                .expect_err("no id")
                .to_string()
                .contains("not a banger vm id")
        );
    }

    #[test]
    fn interface_names_follow_one_rule() {
        for good in [
            "banger0",
            "eth0",
            "br-lan.10",
            "a_b",
            "a",
            "bg-0123456789ab",
        ] {
            check_ifname("bridge", good).expect(good);
        }
        for bad in [
            "",
            ".",
            "..",
            "../eth0",
            "a/b",
            "a b",
            "tab\t",
            "a-very-long-bridge-name",
            "sixteen-chars-xx",
            "ünï",
        ] {
            let e = check_ifname("uplink", bad).expect_err(bad);
            assert!(e.to_string().contains("not an interface name"), "{e}");
            assert!(e.to_string().starts_with("uplink "), "{e}");
        }
        check_ifname("x", "fifteen-chars-x").expect("15 bytes fit");
    }

    #[test]
    fn a_vms_files_are_under_its_dir_and_its_sockets_under_the_runtime_dir() {
        let l = VmLayout::new("/var/lib/banger", "/run/banger");
        assert_eq!(l.vms_dir(), Path::new("/var/lib/banger/vms"));
        let f = l.files("0123456789abcdef");
        let dir = Path::new("/var/lib/banger/vms/0123456789abcdef");
        assert_eq!(
            f,
            VmFiles {
                dir: dir.to_owned(),
                root_disk: dir.join("root.ext4"),
                work_disk: dir.join("work.ext4"),
                console: dir.join("console.log"),
                pid_file: dir.join("vmm.pid"),
                socket: "/run/banger/vms/0123456789abcdef.sock".into(),
                agent: "/run/banger/vms/0123456789abcdef.agent".into(),
                vsock: "/run/banger/vms/0123456789abcdef.vsock".into(),
            }
        );
        assert_eq!(l.vm_dir("0123456789abcdef"), dir);
    }

    #[test]
    fn only_a_direct_child_of_the_vms_dir_is_a_vm_dir() {
        let l = VmLayout::new("/s", "/r");
        assert!(l.is_vm_dir(Path::new("/s/vms/0123456789abcdef")));
        assert!(!l.is_vm_dir(Path::new("/s/vms")));
        assert!(!l.is_vm_dir(Path::new("/s/vms/..")));
        assert!(!l.is_vm_dir(Path::new("/s/vms/a/b")));
        assert!(!l.is_vm_dir(Path::new("/s/images/x")));
        assert!(!l.is_vm_dir(Path::new("/")));
    }
}
