//! VMM drivers behind one interface.
//!
//! [`LaunchSpec`] says what to run (kernel, disks, tap, sockets); a
//! driver turns it into a process and controls it. Everything else in
//! banger (storage, network, guest config, crash safety) is shared.
//!
//! VMM processes must outlive the daemon: a daemon crash or upgrade never
//! takes VMs down. QEMU daemonizes itself (`-daemonize`, pid in a file);
//! either way the daemon identifies a VMM by pid *and* the control socket
//! path in its command line ([`process::vmm_alive`]), so a recycled pid is
//! never mistaken for a VM.

pub mod driver;
mod error;
pub use error::{LaunchError, NotUp, VmmError};
#[cfg(feature = "testing")]
mod fake;
pub mod firecracker;
/// Jailing lives with the other privileged host operations.
pub use banger_host::jail;
pub use driver::Vmm;
#[cfg(feature = "testing")]
pub use fake::{FAKE_STATE, FakeVmm, VmmCall};
pub use qemu::QemuVmm;
pub mod process;
pub mod qemu;
pub mod qmp;
mod wait;

use std::path::PathBuf;

use banger_api::doctor::Accel;

/// The tap a VM's virtio-net device is backed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
    /// An open descriptor on the tap (kept open by the caller through the
    /// launch): the VMM gets it instead of opening the tap by name, so it
    /// needs no access to `/dev/net/tun`.
    pub fd: Option<i32>,
}

/// Where a QEMU child finds a tap descriptor it was handed.
pub const TAP_FD: i32 = 3;

/// Everything a VMM needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub vm_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// In order: `/dev/vda` (root), `/dev/vdb` (work), ...
    pub disks: Vec<PathBuf>,
    pub net: Option<NetSpec>,
    /// The serial console is written here.
    pub console_log: PathBuf,
    /// QMP socket (QEMU) or API socket (Firecracker): also the identity
    /// of the process in `/proc/<pid>/cmdline`.
    pub control_socket: PathBuf,
    pub pid_file: PathBuf,
    pub accel: Accel,
    /// Host end of the guest's vsock: a unix socket speaking the
    /// `CONNECT <port>` handshake, whichever VMM runs the guest.
    pub vsock: Option<PathBuf>,
    /// Host end of the guest agent's virtio-serial port (QEMU): a unix
    /// socket the VMM serves, one connection at a time, carrying the
    /// agent's multiplexed sessions. Unlike vsock it can be snapshotted.
    pub agent_serial: Option<PathBuf>,
}

/// How a VMM's guests reach their agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentTransport {
    /// A vsock device, its host end a unix socket with the `CONNECT`
    /// handshake ([`LaunchSpec::vsock`]).
    Vsock,
    /// A virtio-serial port, sessions multiplexed over its unix socket
    /// ([`LaunchSpec::agent_serial`]): unlike vhost-user vsock, QEMU can
    /// migrate it, so the VM can be snapshotted.
    Serial,
}

/// The name of the agent's virtio-serial port, as the guest sees it in
/// `/sys/class/virtio-ports/*/name`.
pub const AGENT_PORT_NAME: &str = "org.banger.agent";

/// The guest's vsock context id. Every VM has its own vsock device and
/// backend, so the id only has to be unique inside one VM.
pub const GUEST_CID: u32 = 3;

/// The vhost-user socket between QEMU and the VM's vsock backend,
/// derived from the control socket so cleanup finds it without a record.
/// Named so that neither path contains the other: a process is matched
/// to its VM by the path in its command line.
pub fn vhost_user_socket(control_socket: &std::path::Path) -> PathBuf {
    control_socket.with_extension("vhu")
}

/// A MAC address derived from the VM id: stable across restarts, locally
/// administered, unicast.
pub fn mac_for(vm_id: &str) -> String {
    let hex: Vec<u8> = (0..4)
        .map(|i| {
            vm_id
                .get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0)
        })
        .collect();
    format!(
        "02:b6:{:02x}:{:02x}:{:02x}:{:02x}",
        hex[0], hex[1], hex[2], hex[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_stable() {
        assert_eq!(mac_for("0123456789abcdef"), "02:b6:01:23:45:67");
        assert_eq!(mac_for("0123456789abcdef"), mac_for("0123456789abcdef"));
        let first = u8::from_str_radix(&mac_for("ff")[..2], 16).expect("hex");
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
    }
}
