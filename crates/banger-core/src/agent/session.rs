//! Short requests to one VM's agent, each on its own connection.

use std::time::Duration;

use banger_agent_proto::{ExecRequest, Frame, Message, read_frame, send};
use banger_api::vm::VmRecord;

use super::conn::AgentConn;
use super::connector::{AgentChannel, AgentConnector, AgentStream};
use crate::error::{AgentError, CoreError};

/// One connection attempt (vsock handshake, hello, one request).
pub(super) const ATTEMPT: Duration = Duration::from_secs(5);
/// How long a short command (`agent_output`) may run.
const OUTPUT_WITHIN: Duration = Duration::from_secs(30);
/// How long the guest may take to make its ssh host key after boot.
const HOST_KEY_WITHIN: Duration = Duration::from_secs(30);
/// The most the daemon keeps of a short command's output: the guest
/// writes it, the daemon holds it in memory.
const OUTPUT_MAX: usize = 64 << 10;

/// One VM's agent, reached over the channel it was started with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session<'a> {
    connector: &'a dyn AgentConnector,
    channel: Option<AgentChannel<'a>>,
}

impl<'a> Session<'a> {
    pub(crate) fn new(connector: &'a dyn AgentConnector, vm: &'a VmRecord) -> Self {
        Self {
            connector,
            channel: AgentChannel::of(&vm.runtime),
        }
    }

    async fn connect(&self) -> Result<AgentStream, AgentError> {
        let channel = self.channel.ok_or(AgentError::NoChannel)?;
        match tokio::time::timeout(ATTEMPT, self.connector.connect(channel)).await {
            Ok(r) => r.map_err(AgentError::from),
            Err(_) => Err(AgentError::Timeout {
                what: "no answer".into(),
                secs: ATTEMPT.as_secs(),
            }),
        }
    }

    /// One control request the agent acknowledges with a pong.
    async fn acknowledged(&self, msg: Message, what: &str) -> Result<(), AgentError> {
        let mut s = self.connect().await?;
        let answer = tokio::time::timeout(ATTEMPT, async {
            send(&mut s, &msg).await?;
            read_frame(&mut s).await
        })
        .await
        .map_err(|_| AgentError::Timeout {
            what: format!("no answer to {what}"),
            secs: ATTEMPT.as_secs(),
        })??;
        match answer {
            Some(Frame::Control(Message::Pong)) => Ok(()),
            Some(Frame::Control(Message::Error { message })) => Err(AgentError::Guest(message)),
            other => Err(AgentError::Unexpected {
                what: what.to_owned(),
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Asks the guest to shut itself down; `Ok` once the agent took it.
    pub(crate) async fn power_off(&self, reboot: bool) -> Result<(), AgentError> {
        self.acknowledged(Message::PowerOff { reboot }, "power off")
            .await
    }

    /// A restored guest takes on its own identity; `Ok` once it has.
    pub(crate) async fn identify(
        &self,
        id: banger_agent_proto::Identity,
    ) -> Result<(), AgentError> {
        self.acknowledged(Message::Identify(Box::new(id)), "identify")
            .await
    }

    /// Runs a short command and returns its exit code and stdout.
    pub(crate) async fn output(&self, argv: &[&str]) -> Result<(Option<i32>, Vec<u8>), AgentError> {
        let mut s = self.connect().await?;
        let req = ExecRequest {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..ExecRequest::default()
        };
        tokio::time::timeout(OUTPUT_WITHIN, async {
            send(&mut s, &Message::Exec(req)).await?;
            let mut out = Vec::new();
            loop {
                match read_frame(&mut s).await? {
                    Some(Frame::Stdout(d)) => {
                        if out.len() + d.len() > OUTPUT_MAX {
                            return Err(AgentError::TooMuchOutput {
                                what: format!("{argv:?}"),
                                max: OUTPUT_MAX,
                            });
                        }
                        out.extend(d);
                    }
                    Some(Frame::Control(Message::Exit { code, .. })) => return Ok((code, out)),
                    Some(Frame::Control(Message::Error { message })) => {
                        return Err(AgentError::Guest(message));
                    }
                    Some(_) => {}
                    None => return Err(AgentError::ClosedEarly),
                }
            }
        })
        .await
        .map_err(|_| AgentError::Timeout {
            what: format!("{argv:?} did not finish"),
            secs: OUTPUT_WITHIN.as_secs(),
        })?
    }

    /// A connection with `msg` (exec or an archive request) already sent.
    pub(crate) async fn open(&self, msg: &Message) -> Result<AgentConn, AgentError> {
        let mut s = self.connect().await?;
        send(&mut s, msg).await?;
        Ok(AgentConn::new(s))
    }

    /// The guest's ssh host key (`ssh-ed25519 AAAA…`). The guest makes its
    /// keys on first boot, shortly after the agent starts: retried briefly.
    pub(crate) async fn host_key(&self) -> Result<String, AgentError> {
        let deadline = tokio::time::Instant::now() + HOST_KEY_WITHIN;
        loop {
            let (code, out) = self
                .output(&["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
                .await?;
            let text = String::from_utf8_lossy(&out);
            let mut parts = text.split_whitespace();
            if let (Some(0), Some(kind), Some(key)) = (code, parts.next(), parts.next()) {
                // It goes into a known_hosts line: nothing but the key.
                let base64 = |k: &str| {
                    k.len() <= 128
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                };
                if kind != "ssh-ed25519" || !base64(key) {
                    return Err(AgentError::BadHostKey);
                }
                return Ok(format!("{kind} {key}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(AgentError::NoHostKey);
            }
            // Nothing in the guest announces the key file: look again.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A guest path for copy: absolute, so the agent's working directory
/// never decides where files land.
pub(crate) fn guest_path(p: &str) -> Result<String, CoreError> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(CoreError::InvalidArgument(format!(
            "guest path {p:?} must be absolute, e.g. NAME:/root/file"
        )));
    }
    Ok(p.to_owned())
}
