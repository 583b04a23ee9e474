//! The daemon's side of the guest agent, independent of the core: the
//! connector (real and fake), the readiness wait, and the short requests
//! built on one connection (ping, power off, a command's output, an
//! attach for exec and copy).
//!
//! One client for both VMMs: a session is a byte stream whichever
//! channel carries it. Firecracker exposes the guest's vsock as a unix
//! socket with the `CONNECT <port>` handshake, a connection per session;
//! QEMU guests use a virtio-serial port (it can be snapshotted, QEMU's
//! vhost-user vsock cannot), their sessions multiplexed over its one
//! connection. An attach hands the API layer a stream that has done the
//! hello and sent the request; from there the client and the agent talk
//! frames directly.

mod conn;
mod connector;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod readiness;
mod session;

pub use conn::AgentConn;
pub use connector::{
    AgentChannel, AgentConnector, AgentIo, AgentStream, Detached, GuestAgent, Keepalive, SOFTWARE,
};
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeAgent;
pub(crate) use readiness::wait_ready;
pub use readiness::{READY_TIMEOUT_KVM, READY_TIMEOUT_TCG, ready_timeout};
pub(crate) use session::{Session, guest_path};
