//! A recording fake VMM for tests of the layers above.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;

use crate::{LaunchSpec, Vmm, VmmError};

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmCall {
    Launch {
        vm_id: String,
    },
    Shutdown {
        socket: PathBuf,
    },
    /// A jail released (only recorded for a VM with a jail root).
    Release {
        vm_id: String,
        jail_root: PathBuf,
    },
    /// Recorded only when something was actually running.
    Kill {
        pid: u32,
    },
    Pause {
        socket: PathBuf,
    },
    Resume {
        socket: PathBuf,
    },
    Save {
        socket: PathBuf,
    },
    Restore {
        vm_id: String,
        from: PathBuf,
    },
}

/// What the fake writes as a VM's saved state, and checks on restore.
pub const FAKE_STATE: &[u8] = b"fake vm state\n";

/// The one-line form [`FakeVmm::recorded`] gives.
impl std::fmt::Display for VmmCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Launch { vm_id } => write!(f, "launch {vm_id}"),
            Self::Shutdown { socket } => write!(f, "shutdown {}", socket.display()),
            Self::Release { vm_id, jail_root } => {
                write!(f, "release {vm_id} {}", jail_root.display())
            }
            Self::Kill { pid } => write!(f, "kill {pid}"),
            Self::Pause { socket } => write!(f, "pause {}", socket.display()),
            Self::Resume { socket } => write!(f, "resume {}", socket.display()),
            Self::Save { socket } => write!(f, "save {}", socket.display()),
            Self::Restore { vm_id, from } => write!(f, "restore {vm_id} {}", from.display()),
        }
    }
}

/// A recording fake. "Processes" are entries in a map: launch adds one,
/// kill and a guest that honours shutdown remove it.
#[derive(Debug, Default)]
pub struct FakeVmm {
    pub calls: Mutex<Vec<VmmCall>>,
    pub running: Mutex<BTreeMap<u32, PathBuf>>,
    /// When true, `request_shutdown` is ignored (a guest without ACPI).
    pub ignore_shutdown: Mutex<bool>,
    /// When set, `launch` fails with this message.
    pub fail_launch: Mutex<Option<String>>,
    /// When set, VMs are "jailed" under `<base>/<vm id>` and `release`
    /// is recorded.
    pub jail_base: Mutex<Option<PathBuf>>,
    /// Whether the daemon should wait for a ready call (the test plays
    /// the guest that makes it).
    pub ready_calls: Mutex<bool>,
    /// When true, a launched VMM "dies" at once (a guest that panics in
    /// early boot), leaving nothing running.
    pub die_after_launch: Mutex<bool>,
    /// When true, guests' agents are on a serial port (like QEMU's), so
    /// VMs can be saved; else vsock, which this fake cannot save.
    pub serial_agent: Mutex<bool>,
    next_pid: Mutex<u32>,
}

impl FakeVmm {
    fn record(&self, call: VmmCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// The calls so far, in order.
    pub fn vmm_calls(&self) -> Vec<VmmCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls so far as lines (`launch <id>`, `kill <pid>`, ...).
    pub fn recorded(&self) -> Vec<String> {
        self.vmm_calls().iter().map(VmmCall::to_string).collect()
    }

    /// Simulates the VMM dying on its own.
    pub fn crash(&self, pid: u32) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn ready_call(&self) -> bool {
        *self.ready_calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        self.record(VmmCall::Launch {
            vm_id: spec.vm_id.clone(),
        });
        if let Some(m) = self
            .fail_launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(VmmError::Launch {
                bin: "fake".into(),
                source: crate::LaunchError::Simulated(m),
            });
        }
        let mut next = self.next_pid.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        let pid = 100_000 + *next;
        if *self
            .die_after_launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            return Ok(pid);
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, spec.control_socket.clone());
        Ok(pid)
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        self.record(VmmCall::Shutdown {
            socket: socket.to_owned(),
        });
        if !*self
            .ignore_shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, s| s != socket);
        }
        Ok(())
    }

    fn agent_transport(&self) -> crate::AgentTransport {
        if *self.serial_agent.lock().unwrap_or_else(|p| p.into_inner()) {
            crate::AgentTransport::Serial
        } else {
            crate::AgentTransport::Vsock
        }
    }

    fn snapshot_blocker(&self, spec: &LaunchSpec) -> Option<String> {
        spec.vsock
            .as_ref()
            .map(|_| "a vsock device (fake)".to_owned())
    }

    async fn pause(&self, socket: &Path) -> Result<(), VmmError> {
        self.record(VmmCall::Pause {
            socket: socket.to_owned(),
        });
        Ok(())
    }

    async fn resume(&self, socket: &Path) -> Result<(), VmmError> {
        self.record(VmmCall::Resume {
            socket: socket.to_owned(),
        });
        Ok(())
    }

    async fn save(&self, socket: &Path, dir: &Path) -> Result<(), VmmError> {
        self.record(VmmCall::Save {
            socket: socket.to_owned(),
        });
        let file = dir.join("vmstate");
        std::fs::write(&file, FAKE_STATE).map_err(|e| VmmError::Snapshot {
            path: file,
            why: e.to_string(),
        })
    }

    /// A launch that first checks the state `save` wrote.
    async fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<u32, VmmError> {
        self.record(VmmCall::Restore {
            vm_id: spec.vm_id.clone(),
            from: dir.to_owned(),
        });
        let file = dir.join("vmstate");
        match std::fs::read(&file) {
            Ok(b) if b == FAKE_STATE => self.launch(spec).await,
            Ok(_) => Err(VmmError::Snapshot {
                path: file,
                why: "not a saved state".into(),
            }),
            Err(e) => Err(VmmError::Snapshot {
                path: file,
                why: e.to_string(),
            }),
        }
    }

    /// Fake pids are no processes: the fake's own table is watched.
    async fn wait_gone(&self, pid: u32, socket: &Path, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        crate::driver::poll_gone(self, pid, socket, deadline, Duration::from_millis(5)).await
    }

    fn alive(&self, pid: u32, socket: &Path) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .is_some_and(|s| s == socket)
    }

    fn find(&self, socket: &Path) -> Option<u32> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, s)| *s == socket)
            .map(|(p, _)| *p)
    }

    fn jail_root(&self, vm_id: &str) -> Option<PathBuf> {
        self.jail_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| b.join(vm_id))
    }

    /// The dirs under the jail base, as the real one lists its chroots.
    fn jailed_ids(&self) -> Vec<String> {
        let base = self
            .jail_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut ids: Vec<String> = base
            .map(std::fs::read_dir)
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    async fn release(&self, vm_id: &str, jail_root: Option<&Path>) -> Result<(), VmmError> {
        if let Some(root) = jail_root {
            self.record(VmmCall::Release {
                vm_id: vm_id.to_owned(),
                jail_root: root.to_owned(),
            });
        }
        Ok(())
    }

    /// Like the real sweep: every "process" of the socket goes. Recorded
    /// only when something was actually running.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.len();
        r.retain(|_, s| s != socket);
        if r.len() != before {
            drop(r);
            self.record(VmmCall::Kill { pid });
        }
        Ok(())
    }
}
