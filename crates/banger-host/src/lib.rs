//! Host side effects and host inspection, behind traits.
//!
//! Everything the daemon learns from or does to the host goes through a
//! trait in this crate with two implementations: the real one, and a
//! recording fake that unit tests drive without privileges or host
//! changes. The fakes (`FakeNet`, `FakeFirewall`, `FakeJail`, ...) and the
//! typed calls they record are compiled only with the `testing` feature.
//!
//! Rooms: `layout` (the names and places banger owns: taps, VM ids,
//! interface names, a VM's files), one room per host concern (`net`,
//! `disk`, `dns`, `firewall`, `jail`, `tools`, `probe`, `doctor`), and the
//! privileged `helper` (its wire, policy, server and client), whose
//! failures reach the daemon as `remote::HelperError`.

pub mod disk;
pub mod dns;
pub mod doctor;
pub mod firewall;
pub mod helper;
pub mod jail;
pub mod layout;
pub mod net;
pub mod probe;
pub mod procs;
pub mod remote;
pub mod sandbox;
pub mod tools;

pub use doctor::{DoctorInputs, run_doctor};
#[cfg(any(test, feature = "testing"))]
pub use probe::FakeProbe;
pub use probe::{HostProbe, ProbeError, SystemProbe, ToolOutput};
