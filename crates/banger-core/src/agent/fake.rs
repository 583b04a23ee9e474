//! A recording fake agent for tests above the host layer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use banger_agent_proto::{AGENT_PORT, Frame, Message, ProtoError, handshake, read_frame, send};

use super::connector::{AgentChannel, AgentConnector, AgentStream, Detached, SOFTWARE};

type PowerHook = Box<dyn Fn(&Path) + Send + Sync>;

/// A recording fake agent: an in-memory connection served by a tiny
/// stand-in (hello, ping, power off, `cat` of the host key).
#[derive(Default)]
pub struct FakeAgent {
    /// When false, connections fail as if the guest had not booted yet.
    pub ready: std::sync::atomic::AtomicBool,
    /// Power-off requests: (agent channel path, reboot).
    pub power_offs: Arc<Mutex<Vec<(PathBuf, bool)>>>,
    /// Called on each power-off (e.g. to stop the fake VMM).
    pub on_power_off: Arc<Mutex<Option<PowerHook>>>,
    /// Channels detached, in order.
    pub detaches: Mutex<Vec<PathBuf>>,
    /// What a detach answers (default: it closed).
    pub detach_answer: Mutex<Option<Detached>>,
    /// What every exec writes to stdout (default: an ed25519 host key).
    pub exec_stdout: Arc<Mutex<Option<Vec<u8>>>>,
}

impl std::fmt::Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgent")
            .field("ready", &self.ready)
            .field("power_offs", &self.power_offs)
            .finish_non_exhaustive()
    }
}

impl FakeAgent {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn detaches(&self) -> Vec<PathBuf> {
        self.detaches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn power_offs(&self) -> Vec<(PathBuf, bool)> {
        self.power_offs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl AgentConnector for FakeAgent {
    async fn connect(&self, channel: AgentChannel<'_>) -> Result<AgentStream, ProtoError> {
        if !self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProtoError::NothingListening { port: AGENT_PORT });
        }
        let (ours, mut theirs) = tokio::io::duplex(64 << 10);
        let (power_offs, hook) = (Arc::clone(&self.power_offs), Arc::clone(&self.on_power_off));
        let vsock = channel.path().to_owned();
        let stdout = self
            .exec_stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| b"ssh-ed25519 AAAAfakehostkey root@fake\n".to_vec());
        tokio::spawn(async move {
            while let Ok(Some(Frame::Control(m))) = read_frame(&mut theirs).await {
                let reply = match m {
                    Message::Hello(_) => Message::Hello(banger_agent_proto::Hello {
                        protocol: banger_agent_proto::PROTOCOL_VERSION,
                        software: "fake".into(),
                    }),
                    Message::Ping | Message::Identify(_) => Message::Pong,
                    Message::PowerOff { reboot } => {
                        power_offs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((vsock.clone(), reboot));
                        if let Some(h) = &*hook.lock().unwrap_or_else(|p| p.into_inner()) {
                            h(&vsock);
                        }
                        Message::Pong
                    }
                    Message::Exec(_) => {
                        for chunk in stdout.chunks(banger_agent_proto::CHUNK) {
                            if banger_agent_proto::write_frame(
                                &mut theirs,
                                banger_agent_proto::Kind::Stdout,
                                chunk,
                            )
                            .await
                            .is_err()
                            {
                                return;
                            }
                        }
                        Message::Exit {
                            code: Some(0),
                            signal: None,
                        }
                    }
                    other => Message::Error {
                        message: format!("fake agent: {other:?}"),
                    },
                };
                if send(&mut theirs, &reply).await.is_err() {
                    break;
                }
            }
        });
        let mut s: AgentStream = Box::new(ours);
        handshake(&mut s, SOFTWARE).await?;
        Ok(s)
    }

    async fn detach(&self, path: &Path) -> Detached {
        self.detaches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_owned());
        self.detach_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(Detached::Closed)
    }
}
