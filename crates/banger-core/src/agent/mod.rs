//! The daemon's side of the guest agent, independent of the core: the
//! connector (real and fake), the readiness wait, and the short requests
//! built on one connection (ping, power off, a command's output, an
//! attach for exec and copy).
//!
//! One client for both VMMs: each exposes the guest's vsock as a host
//! unix socket with the `CONNECT <port>` handshake (Firecracker natively,
//! QEMU through `vhost-device-vsock`). An attach hands the API layer a
//! connection that has done the hello and sent the request; from there the
//! client and the agent talk frames directly.

mod conn;
mod connector;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod readiness;
mod session;

pub use conn::AgentConn;
pub use connector::{AgentConnector, AgentIo, AgentStream, SOFTWARE, VsockAgent};
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeAgent;
pub(crate) use readiness::wait_ready;
pub use readiness::{READY_TIMEOUT_KVM, READY_TIMEOUT_TCG, ready_timeout};
pub(crate) use session::{Session, guest_path};
