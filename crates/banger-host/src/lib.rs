//! Host side effects and host inspection, behind traits.
//!
//! Everything the daemon learns from or does to the host goes through a
//! trait in this crate with two implementations: the real one, and a
//! recording fake that unit tests drive without privileges or host
//! changes.

pub mod disk;
pub mod dns;
pub mod doctor;
pub mod firewall;
pub mod helper;
pub mod jail;
pub mod layout;
pub mod net;
pub mod probe;
pub mod remote;
pub mod tools;

pub use doctor::{DoctorInputs, run_doctor};
#[cfg(any(test, feature = "testing"))]
pub use probe::FakeProbe;
pub use probe::{HostProbe, ProbeError, SystemProbe, ToolOutput};
