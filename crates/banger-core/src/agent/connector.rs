//! Opening a connection to a guest's agent, over whichever channel its
//! VMM gives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use banger_agent_proto::mux::MuxClient;
use banger_agent_proto::{AGENT_PORT, ProtoError, handshake};
use banger_api::vm::VmRuntime;
use tokio::io::{AsyncRead, AsyncWrite};

/// Identifies the daemon in the hello.
pub const SOFTWARE: &str = concat!("bangerd ", env!("CARGO_PKG_VERSION"));

/// A byte stream to the agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentIo for T {}
pub type AgentStream = Box<dyn AgentIo>;

/// Where the daemon reaches one VM's agent. Each session is a byte
/// stream either way; only how a stream is opened differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentChannel<'a> {
    /// The guest's vsock as a host unix socket speaking `CONNECT <port>`
    /// (Firecracker): one connection per session.
    Vsock(&'a Path),
    /// The agent's virtio-serial port as a unix socket QEMU serves, one
    /// connection at a time: sessions are multiplexed over it. Chosen for
    /// QEMU because, unlike its vhost-user vsock, it can be snapshotted.
    Serial(&'a Path),
}

impl<'a> AgentChannel<'a> {
    /// The channel a VM was started with; `None` before its first start.
    pub fn of(rt: &'a VmRuntime) -> Option<Self> {
        match (&rt.agent_socket, &rt.vsock_path) {
            (Some(serial), _) => Some(Self::Serial(serial)),
            (None, Some(vsock)) => Some(Self::Vsock(vsock)),
            (None, None) => None,
        }
    }

    pub fn path(&self) -> &'a Path {
        match self {
            Self::Vsock(p) | Self::Serial(p) => p,
        }
    }
}

/// Opens agent connections; the fake serves tests without a guest.
#[async_trait]
pub trait AgentConnector: Send + Sync + std::fmt::Debug {
    /// Opens a session to the agent behind `channel` and completes the
    /// versioned hello.
    async fn connect(&self, channel: AgentChannel<'_>) -> Result<AgentStream, ProtoError>;
    /// Drops what is kept for the channel at `path` (its VM stopped).
    fn forget(&self, _path: &Path) {}
}

/// How long a new serial carrier may wait for the agent's sync answer:
/// one readiness attempt.
const SYNC_WITHIN: Duration = Duration::from_secs(5);

/// The real connector. Vsock sessions are plain connections; serial
/// ones are streams of one [`MuxClient`] per VM, made on first use and
/// again after its carrier ended (the VMM restarted, the daemon
/// restarted, a restore).
#[derive(Debug, Default)]
pub struct GuestAgent {
    carriers: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<MuxClient>>>>>,
}

impl GuestAgent {
    fn slot(&self, path: &Path) -> Arc<tokio::sync::Mutex<Option<MuxClient>>> {
        let mut map = self.carriers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(path.to_owned()).or_default())
    }

    /// The VM's live carrier, or a new one. Serialised per VM: QEMU
    /// serves one connection at a time, so a second carrier made
    /// alongside would only wait in its backlog.
    async fn carrier(&self, path: &Path) -> Result<MuxClient, ProtoError> {
        let slot = self.slot(path);
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *held = None;
        let sock = tokio::net::UnixStream::connect(path).await?;
        let client = MuxClient::connect(sock, SYNC_WITHIN).await?;
        *held = Some(client.clone());
        Ok(client)
    }
}

#[async_trait]
impl AgentConnector for GuestAgent {
    async fn connect(&self, channel: AgentChannel<'_>) -> Result<AgentStream, ProtoError> {
        match channel {
            AgentChannel::Vsock(path) => {
                let mut s = banger_agent_proto::vsock::connect(path, AGENT_PORT).await?;
                handshake(&mut s, SOFTWARE).await?;
                Ok(Box::new(s))
            }
            AgentChannel::Serial(path) => {
                let mut s = self.carrier(path).await?.open().await?;
                handshake(&mut s, SOFTWARE).await?;
                Ok(Box::new(s))
            }
        }
    }

    fn forget(&self, path: &Path) {
        self.carriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::{Frame, Message, read_frame, send};

    /// A guest agent stand-in serving mux streams on a unix socket, as
    /// QEMU's chardev would carry them, answering hello and ping.
    async fn serve_guest(listener: tokio::net::UnixListener) {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let _ = banger_agent_proto::mux::serve(sock, |mut s| {
                tokio::spawn(async move {
                    while let Ok(Some(Frame::Control(m))) = read_frame(&mut s).await {
                        let reply = match m {
                            Message::Hello(_) => Message::Hello(banger_agent_proto::Hello {
                                protocol: banger_agent_proto::PROTOCOL_VERSION,
                                software: "stand-in".into(),
                            }),
                            _ => Message::Pong,
                        };
                        if send(&mut s, &reply).await.is_err() {
                            return;
                        }
                    }
                });
            })
            .await;
        }
    }

    async fn ping(agent: &GuestAgent, path: &Path) {
        let mut s = agent
            .connect(AgentChannel::Serial(path))
            .await
            .expect("session");
        send(&mut s, &Message::Ping).await.expect("ping");
        assert!(matches!(
            read_frame(&mut s).await.expect("read"),
            Some(Frame::Control(Message::Pong))
        ));
    }

    #[tokio::test]
    async fn serial_sessions_share_one_carrier_and_a_new_one_follows_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.agent");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let guest = tokio::spawn(serve_guest(listener));
        let agent = GuestAgent::default();
        ping(&agent, &path).await;
        ping(&agent, &path).await;
        let first = agent.carrier(&path).await.expect("carrier");
        assert_eq!(agent.carriers.lock().expect("lock").len(), 1);
        // The VMM goes away and comes back (a restart, a restore): the
        // next session makes a new carrier instead of failing.
        guest.abort();
        let _ = guest.await;
        tokio::time::timeout(Duration::from_secs(10), first.closed())
            .await
            .expect("the carrier ends with its socket");
        std::fs::remove_file(&path).expect("unlink");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind again");
        let _guest = tokio::spawn(serve_guest(listener));
        ping(&agent, &path).await;
        agent.forget(&path);
        assert!(agent.carriers.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_vm_without_a_channel_has_none_and_serial_wins_over_vsock() {
        let mut rt = VmRuntime::default();
        assert_eq!(AgentChannel::of(&rt), None);
        rt.vsock_path = Some("/run/v.vsock".into());
        assert_eq!(
            AgentChannel::of(&rt),
            Some(AgentChannel::Vsock(Path::new("/run/v.vsock")))
        );
        rt.agent_socket = Some("/run/v.agent".into());
        assert_eq!(
            AgentChannel::of(&rt).map(|c| c.path()),
            Some(Path::new("/run/v.agent"))
        );
    }
}
