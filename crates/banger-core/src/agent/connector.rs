//! Opening a connection to a guest's agent, over whichever channel its
//! VMM gives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use banger_agent_proto::mux::{MuxClient, MuxError, WeakMuxClient};
use banger_agent_proto::{AGENT_PORT, Frame, Message, ProtoError, handshake, read_frame, send};
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
    /// Closes the carrier kept for the serial channel at `path` and waits
    /// until the VMM has seen the host leave (it closed its end too).
    async fn detach(&self, _path: &Path) -> Detached {
        Detached::NoCarrier
    }
    /// The VM behind `path` is paused (or being saved): its guest cannot
    /// answer, and its silence is no stall. Until [`Self::unpause`].
    fn pause(&self, _path: &Path) {}
    fn unpause(&self, _path: &Path) {}
}

/// What [`AgentConnector::detach`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// No carrier was open.
    NoCarrier,
    /// Closed, and the VMM closed its end: it has seen the host leave.
    Closed,
    /// Sessions are open on it: it is kept.
    Busy { sessions: usize },
    /// Closed here, but the VMM had not closed its end after `secs`.
    TimedOut { secs: u64 },
}

/// How long [`AgentConnector::detach`] waits for the VMM to close.
const DETACH_WITHIN: Duration = Duration::from_secs(5);

/// How long a new serial carrier may wait for the agent's sync answer:
/// one readiness attempt.
const SYNC_WITHIN: Duration = Duration::from_secs(5);

/// When a serial carrier with sessions open has been silent this long,
/// the agent is asked whether it is there, and given this long to say
/// so. A session may be silent for hours (a command that prints
/// nothing); a channel that stopped carrying anything must not leave it
/// waiting forever: with no answer the carrier is dropped, its sessions
/// fail, and the next session makes a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub within: Duration,
}

impl Default for Keepalive {
    /// Generous: a guest under TCG on a loaded host answers late.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(15),
            within: Duration::from_secs(20),
        }
    }
}

/// The real connector. Vsock sessions are plain connections; serial
/// ones are streams of one [`MuxClient`] per VM, made on first use and
/// again after its carrier ended (the VMM restarted, the daemon
/// restarted, a restore).
#[derive(Debug, Default)]
pub struct GuestAgent {
    carriers: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<MuxClient>>>>>,
    keepalive: Keepalive,
    /// Channels of paused VMs: the keepalive leaves them be.
    paused: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
}

impl GuestAgent {
    pub fn with_keepalive(keepalive: Keepalive) -> Self {
        Self {
            keepalive,
            ..Self::default()
        }
    }

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
        tokio::spawn(keep_alive(
            client.downgrade(),
            path.to_owned(),
            self.keepalive,
            Arc::clone(&self.paused),
        ));
        *held = Some(client.clone());
        Ok(client)
    }
}

/// Watches one carrier for as long as it is kept: see [`Keepalive`].
async fn keep_alive(
    carrier: WeakMuxClient,
    path: PathBuf,
    k: Keepalive,
    paused: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
) {
    loop {
        let Some(client) = carrier.upgrade() else {
            return;
        };
        if client.is_closed() {
            return;
        }
        let idle = client.idle_for();
        let is_paused = paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&path);
        if idle < k.idle || client.open_streams() == 0 || is_paused {
            // Not a strong handle while asleep: dropping the carrier
            // must not wait for this task.
            drop(client);
            tokio::time::sleep(k.idle.saturating_sub(idle).max(k.idle / 4)).await;
            continue;
        }
        match tokio::time::timeout(k.within, probe(&client)).await {
            Ok(Ok(())) => continue,
            // Not the guest's silence: no room for a probe (every stream
            // in use), or the carrier ended by itself meanwhile.
            Ok(Err(ProtoError::Mux(MuxError::TooManyStreams | MuxError::Closed { .. }))) => {
                drop(client);
                tokio::time::sleep(k.idle).await;
                continue;
            }
            // No answer, or a guest that answers wrong: a stall.
            Ok(Err(_)) | Err(_) => {}
        }
        if paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&path)
        {
            // Paused while the probe was out: its silence is the pause.
            continue;
        }
        let secs = (idle + k.within).as_secs();
        tracing::warn!(channel = %path.display(), secs, "the guest agent stopped answering on its channel; dropping it (its sessions fail)");
        client.abort(MuxError::Unresponsive { secs });
        return;
    }
}

/// A session of its own on `client`: hello, then ping for a pong.
async fn probe(client: &MuxClient) -> Result<(), ProtoError> {
    let mut s = client.open().await?;
    handshake(&mut s, SOFTWARE).await?;
    send(&mut s, &Message::Ping).await?;
    match read_frame(&mut s).await? {
        Some(Frame::Control(Message::Pong)) => Ok(()),
        other => Err(ProtoError::Unexpected {
            expected: "a pong",
            got: format!("{other:?}"),
        }),
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
        self.unpause(path);
    }

    fn pause(&self, path: &Path) {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned());
    }

    fn unpause(&self, path: &Path) {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }

    async fn detach(&self, path: &Path) -> Detached {
        let slot = self.slot(path);
        let mut held = slot.lock().await;
        let Some(client) = held.take() else {
            return Detached::NoCarrier;
        };
        let sessions = client.open_streams();
        if sessions > 0 {
            *held = Some(client);
            return Detached::Busy { sessions };
        }
        drop(held);
        // Our write side is shut once no handle and no stream is left;
        // QEMU reads the end, takes the port's host side down, and
        // closes its end, which ends the carrier here.
        match tokio::time::timeout(DETACH_WITHIN, client.close()).await {
            Ok(()) => Detached::Closed,
            Err(_) => Detached::TimedOut {
                secs: DETACH_WITHIN.as_secs(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::{Frame, Message, read_frame, send};

    /// What the stand-in guest does: answers, or (frozen) reads on and
    /// answers nothing, as an agent behind a stalled channel would look.
    #[derive(Default)]
    struct Guest {
        frozen: std::sync::atomic::AtomicBool,
        pings: tokio::sync::watch::Sender<usize>,
    }

    /// A guest agent stand-in serving mux streams on a unix socket, as
    /// QEMU's chardev would carry them, answering hello and ping.
    async fn serve_guest(listener: tokio::net::UnixListener) {
        serve_as(listener, Arc::new(Guest::default())).await;
    }

    async fn serve_as(listener: tokio::net::UnixListener, guest: Arc<Guest>) {
        use std::sync::atomic::Ordering;
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let guest = guest.clone();
            let _ = banger_agent_proto::mux::serve(sock, move |mut s| {
                let guest = guest.clone();
                tokio::spawn(async move {
                    while let Ok(Some(Frame::Control(m))) = read_frame(&mut s).await {
                        if guest.frozen.load(Ordering::SeqCst) {
                            continue;
                        }
                        let reply = match m {
                            Message::Hello(_) => Message::Hello(banger_agent_proto::Hello {
                                protocol: banger_agent_proto::PROTOCOL_VERSION,
                                software: "stand-in".into(),
                            }),
                            _ => {
                                guest.pings.send_modify(|n| *n += 1);
                                Message::Pong
                            }
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

    /// A stand-in guest behind `vm.agent` in a new temporary dir.
    fn stand_in() -> (
        tempfile::TempDir,
        PathBuf,
        Arc<Guest>,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.agent");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let guest = Arc::new(Guest::default());
        let serving = tokio::spawn(serve_as(listener, guest.clone()));
        (dir, path, guest, serving)
    }

    async fn ping(agent: &GuestAgent, path: &Path) {
        let mut s = agent
            .connect(AgentChannel::Serial(path))
            .await
            .expect("session");
        ping_on(&mut s).await;
    }

    async fn ping_on(s: &mut AgentStream) {
        send(s, &Message::Ping).await.expect("ping");
        assert!(matches!(
            read_frame(s).await.expect("read"),
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

    /// Keepalive periods short enough for a test; a failing wait below
    /// is bounded by `BOUND`.
    const QUICK: Keepalive = Keepalive {
        idle: Duration::from_millis(100),
        within: Duration::from_millis(400),
    };
    const BOUND: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_stalled_carrier_under_an_open_session_is_dropped_and_the_next_session_makes_a_new_one()
     {
        let (_dir, path, guest, _serving) = stand_in();
        let agent = GuestAgent::with_keepalive(QUICK);
        let mut waiting = agent
            .connect(AgentChannel::Serial(&path))
            .await
            .expect("session");
        let first = agent.carrier(&path).await.expect("carrier");
        guest
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Like `vm exec` waiting for an exit status that never comes.
        send(&mut waiting, &Message::Ping).await.expect("ping");
        let read = tokio::time::timeout(BOUND, read_frame(&mut waiting))
            .await
            .expect("the session fails instead of waiting forever");
        assert!(
            read.is_err(),
            "the stalled session ends in an error: {read:?}"
        );
        assert!(
            matches!(
                first.close_reason().as_deref(),
                Some(MuxError::Unresponsive { .. })
            ),
            "why the carrier was dropped: {:?}",
            first.close_reason()
        );
        guest
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(BOUND, ping(&agent, &path))
            .await
            .expect("a new carrier serves the next session");
    }

    #[tokio::test]
    async fn a_quiet_session_on_an_answering_carrier_is_kept() {
        let (_dir, path, guest, _serving) = stand_in();
        let agent = GuestAgent::with_keepalive(QUICK);
        let mut quiet = agent
            .connect(AgentChannel::Serial(&path))
            .await
            .expect("session");
        let carrier = agent.carrier(&path).await.expect("carrier");
        // The session says nothing while the keepalive asks three times.
        let mut pings = guest.pings.subscribe();
        tokio::time::timeout(BOUND, pings.wait_for(|n| *n >= 3))
            .await
            .expect("the keepalive asks")
            .expect("the guest lives");
        assert!(!carrier.is_closed(), "an answering carrier is kept");
        ping_on(&mut quiet).await;
    }

    #[tokio::test]
    async fn detach_waits_for_the_guest_side_to_close_and_keeps_one_a_session_holds() {
        let (_dir, path, _guest, _serving) = stand_in();
        let agent = GuestAgent::default();
        assert_eq!(agent.detach(&path).await, Detached::NoCarrier);
        ping(&agent, &path).await;
        let carrier = agent.carrier(&path).await.expect("carrier").downgrade();
        assert_eq!(agent.detach(&path).await, Detached::Closed);
        assert!(carrier.upgrade().is_none(), "nothing holds it");
        // A session open on it keeps the carrier.
        let _held = agent
            .connect(AgentChannel::Serial(&path))
            .await
            .expect("session");
        assert_eq!(agent.detach(&path).await, Detached::Busy { sessions: 1 });
        let kept = agent.carrier(&path).await.expect("carrier");
        assert!(!kept.is_closed(), "a busy carrier is kept");
    }

    #[tokio::test]
    async fn a_paused_vms_silence_is_not_a_stall_until_it_runs_again() {
        let (_dir, path, guest, _serving) = stand_in();
        let agent = GuestAgent::with_keepalive(QUICK);
        let mut waiting = agent
            .connect(AgentChannel::Serial(&path))
            .await
            .expect("session");
        let carrier = agent.carrier(&path).await.expect("carrier");
        // `vm pause` with a session open: the guest answers nothing.
        agent.pause(&path);
        guest
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Nothing announces that nothing happened: a window of several
        // keepalive rounds (idle 100 ms, 400 ms to answer) is watched.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!carrier.is_closed(), "a paused vm's channel is kept");
        // Resumed but still silent: now it is a stall.
        agent.unpause(&path);
        send(&mut waiting, &Message::Ping).await.expect("ping");
        tokio::time::timeout(BOUND, carrier.closed())
            .await
            .expect("a stall once it runs again");
    }
}
