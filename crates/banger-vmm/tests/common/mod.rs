//! What the Firecracker tests share: finding the binary, reading a
//! refusal, a VM's directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use banger_api::doctor::Accel;
use banger_http::StatusCode;
use banger_vmm::firecracker::ApiError;
use banger_vmm::{LaunchError, LaunchSpec, VmmError};

/// Fails under `CI=true` (where the binary must be there), otherwise
/// says why the test does not run.
pub fn skip_or_fail(what: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}: prerequisite missing in CI: {reason}");
    }
    eprintln!("SKIPPED {what}: {reason}");
}

pub fn firecracker(what: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("BANGER_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if bin.is_none() {
        skip_or_fail(
            what,
            "BANGER_FIRECRACKER_BIN unset (scripts/test.sh points it at ../shared/bin/firecracker)",
        );
    }
    bin
}

/// Firecracker's answer inside a refused request: status, path, fault.
pub fn refusal(err: &VmmError) -> (StatusCode, &str, &str) {
    let api = match err {
        VmmError::Api { source, .. } => source,
        VmmError::Launch {
            source: LaunchError::Configure(inner),
            ..
        } => match inner.as_ref() {
            VmmError::Api { source, .. } => source,
            other => panic!("not an API refusal: {other}"),
        },
        other => panic!("not an API refusal: {other}"),
    };
    match api {
        ApiError::Refused {
            status,
            path,
            fault,
            ..
        } => (*status, path, fault.as_str().expect("a fault message")),
        other => panic!("not a refusal: {other}"),
    }
}

/// A VM's files in a directory of its own.
pub struct VmDir {
    pub dir: tempfile::TempDir,
    pub id: String,
}

impl VmDir {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            id: id.into(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Two 1 MiB disks, the vsock and the API socket in the VM's
    /// directory, `kernel` booted.
    pub fn spec(&self, kernel: &Path) -> LaunchSpec {
        let disks: Vec<PathBuf> = ["root.ext4", "work.ext4"]
            .iter()
            .map(|name| {
                let p = self.path(name);
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(1 << 20))
                    .expect("disk");
                p
            })
            .collect();
        LaunchSpec {
            vm_id: self.id.clone(),
            vcpus: 1,
            memory_mib: 128,
            kernel: kernel.to_owned(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            disks,
            net: None,
            console_log: self.path("console.log"),
            control_socket: self.path("fc.sock"),
            pid_file: self.path("fc.pid"),
            accel: Accel::Kvm,
            vsock: Some(self.path("v.sock")),
            agent_serial: None,
        }
    }
}
