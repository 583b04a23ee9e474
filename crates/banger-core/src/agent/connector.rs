//! Opening a connection to a guest's agent.

use std::path::Path;

use async_trait::async_trait;
use banger_agent_proto::{AGENT_PORT, ProtoError, handshake};
use tokio::io::{AsyncRead, AsyncWrite};

/// Identifies the daemon in the hello.
pub const SOFTWARE: &str = concat!("bangerd ", env!("CARGO_PKG_VERSION"));

/// A byte stream to the agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentIo for T {}
pub type AgentStream = Box<dyn AgentIo>;

/// Opens agent connections; the fake serves tests without a guest.
#[async_trait]
pub trait AgentConnector: Send + Sync + std::fmt::Debug {
    /// Connects to the agent behind the VM's vsock socket and completes
    /// the versioned hello.
    async fn connect(&self, vsock: &Path) -> Result<AgentStream, ProtoError>;
}

/// The real connector.
#[derive(Debug, Default)]
pub struct VsockAgent;

#[async_trait]
impl AgentConnector for VsockAgent {
    async fn connect(&self, vsock: &Path) -> Result<AgentStream, ProtoError> {
        let mut s = banger_agent_proto::vsock::connect(vsock, AGENT_PORT).await?;
        handshake(&mut s, SOFTWARE).await?;
        Ok(Box::new(s))
    }
}
