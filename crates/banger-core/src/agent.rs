//! The daemon's side of the guest agent: readiness, power off, attach
//! (exec and copy), and the ssh key material built on them.
//!
//! One client for both VMMs: each exposes the guest's vsock as a host
//! unix socket with the `CONNECT <port>` handshake (Firecracker natively,
//! QEMU through `vhost-device-vsock`). An attach hands the API layer a
//! connection that has done the hello and sent the request; from there the
//! client and the agent talk frames directly.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use banger_agent_proto::{
    AGENT_PORT, ExecRequest, Frame, Message, ProtoError, handshake, read_frame, send,
};
use banger_api::doctor::Accel;
use banger_api::vm::{AttachRequest, SshInfo, VmRecord};
use banger_host::tools::SshKeygen;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::CoreError;
use crate::lifecycle::{VmAction, check_action};
use crate::progress::ProgressSink;
use crate::ready::{ReadyCall, ReadyListener};
use crate::service::Core;

/// Identifies the daemon in the hello.
pub const SOFTWARE: &str = concat!("bangerd ", env!("CARGO_PKG_VERSION"));

/// Readiness defaults: a KVM guest answers in about a second; software
/// emulation boots many times slower, more so on a busy host.
pub const READY_TIMEOUT_KVM: Duration = Duration::from_secs(30);
pub const READY_TIMEOUT_TCG: Duration = Duration::from_secs(180);

/// One connection attempt (vsock handshake, hello, one request).
const ATTEMPT: Duration = Duration::from_secs(5);
/// Between readiness attempts.
const POLL: Duration = Duration::from_millis(200);
/// How long `vm ssh` waits for sshd after the agent answered.
const SSH_WAIT: Duration = Duration::from_secs(60);

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

/// An attached connection travelling in a [`crate::Reply`]: taken once
/// by the API layer.
#[derive(Clone)]
pub struct AgentConn(Arc<Mutex<Option<AgentStream>>>);

impl AgentConn {
    fn new(s: AgentStream) -> Self {
        Self(Arc::new(Mutex::new(Some(s))))
    }

    pub fn take(&self) -> Option<AgentStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentConn")
    }
}

impl PartialEq for AgentConn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn agent_err(vm: &VmRecord, e: impl std::fmt::Display) -> CoreError {
    CoreError::Unavailable(format!("guest agent of vm {:?}: {e}", vm.name))
}

/// How one readiness probe went.
enum Attempt {
    /// No answer at all within [`ATTEMPT`]: the vsock backend took the
    /// connection but the guest never took it up (no driver yet).
    Silent,
    /// The guest's vsock answered that nothing listens on the agent port.
    Refused,
    /// Anything else, kept for the error.
    Other(String),
    /// Not worth another try.
    Fatal(CoreError),
}

/// The readiness probes of one start, for its error and the log.
#[derive(Default)]
struct Attempts {
    silent: u32,
    refused: u32,
    other: u32,
    last: Option<String>,
}

impl Attempts {
    fn add(&mut self, a: Attempt) {
        let what = match a {
            Attempt::Silent => {
                self.silent += 1;
                format!("no answer within {}s", ATTEMPT.as_secs())
            }
            Attempt::Refused => {
                self.refused += 1;
                format!("nothing listens on guest port {AGENT_PORT} yet")
            }
            Attempt::Other(e) => {
                self.other += 1;
                e
            }
            Attempt::Fatal(_) => return,
        };
        self.last = Some(what);
    }
}

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.silent + self.refused + self.other == 0 {
            return f.write_str("no failed attempts");
        }
        write!(
            f,
            "{} attempts: {} unanswered (no guest vsock driver yet), {} refused (guest up, agent not listening), {} other",
            self.silent + self.refused + self.other,
            self.silent,
            self.refused,
            self.other
        )?;
        if let Some(last) = &self.last {
            write!(f, "; last: {last}")?;
        }
        Ok(())
    }
}

impl Core {
    /// The start's readiness bound: configured, or by acceleration.
    pub(crate) fn ready_timeout(&self, accel: Accel) -> Duration {
        match self.config().guest.ready_timeout_secs {
            Some(s) => Duration::from_secs(u64::from(s)),
            None if accel == Accel::Kvm => READY_TIMEOUT_KVM,
            None => READY_TIMEOUT_TCG,
        }
    }

    async fn agent_connect(&self, vm: &VmRecord) -> Result<AgentStream, CoreError> {
        let vsock = vm.runtime.vsock_path.as_deref().ok_or_else(|| {
            agent_err(
                vm,
                "the vm has no vsock; restart it with this banger version",
            )
        })?;
        match tokio::time::timeout(ATTEMPT, self.deps.agent.connect(Path::new(vsock))).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e @ ProtoError::VersionMismatch { .. })) => {
                Err(CoreError::Unavailable(format!("vm {:?}: {e}", vm.name)))
            }
            Ok(Err(e)) => Err(agent_err(vm, e)),
            Err(_) => Err(agent_err(vm, "no answer within 5s")),
        }
    }

    /// Polls until the agent answers a ping; fails early when the VMM
    /// died or the agent speaks another protocol version. A failure says
    /// how the attempts went, so "the guest never got a vsock device" and
    /// "the guest is up but nothing listens" read apart.
    pub(crate) async fn wait_for_agent(
        &self,
        vm: &VmRecord,
        timeout: Duration,
        progress: &ProgressSink,
        ready: Option<&ReadyListener>,
    ) -> Result<(), CoreError> {
        progress.stage(
            "agent",
            format!("waiting up to {}s for the guest agent", timeout.as_secs()),
        );
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut tally = Attempts::default();
        if let Some(ready) = ready {
            self.await_ready_call(vm, ready, timeout, deadline, &mut tally)
                .await?;
        }
        loop {
            if !self.vm_alive(vm) {
                return Err(CoreError::Host(format!(
                    "the {} process exited before the guest agent answered ({tally})",
                    vm.spec.vmm
                )));
            }
            match self.ready_attempt(vm).await {
                Ok(()) => {
                    tracing::info!(vm_id = %vm.id, waited_ms = started.elapsed().as_millis() as u64, before = %tally, "guest agent answered");
                    return Ok(());
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(failed) => tally.add(failed),
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Err(CoreError::Host(format!(
                    "the guest agent did not answer within {}s ({tally}); raise guest.ready_timeout_secs for slow hosts",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the agent's call on `ready`; the ping that follows
    /// confirms the ordinary path. Ends early when the VMM dies.
    async fn await_ready_call(
        &self,
        vm: &VmRecord,
        ready: &ReadyListener,
        timeout: Duration,
        deadline: tokio::time::Instant,
        tally: &mut Attempts,
    ) -> Result<(), CoreError> {
        let vmm_gone = async {
            while self.vm_alive(vm) {
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::pin!(vmm_gone);
        loop {
            tokio::select! {
                call = ready.next(ATTEMPT) => match call {
                    Ok(ReadyCall::Agent(software)) => {
                        tracing::debug!(vm_id = %vm.id, agent = %software, "the guest agent reported ready");
                        return Ok(());
                    }
                    Ok(ReadyCall::Garbled(line)) => {
                        tally.add(Attempt::Other(format!("a ready call that said {line:?}")));
                    }
                    Err(e) => return Err(CoreError::Host(e.to_string())),
                },
                () = &mut vmm_gone => {
                    return Err(CoreError::Host(format!(
                        "the {} process exited before the guest agent reported ready ({tally})",
                        vm.spec.vmm
                    )));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(CoreError::Host(format!(
                        "the guest agent did not report ready within {}s (nothing called {}; {tally}); raise guest.ready_timeout_secs for slow hosts",
                        timeout.as_secs(),
                        ready.path().display()
                    )));
                }
            }
        }
    }

    /// One readiness probe: connect, hello, ping, pong.
    async fn ready_attempt(&self, vm: &VmRecord) -> Result<(), Attempt> {
        let vsock = vm.runtime.vsock_path.as_deref().ok_or_else(|| {
            Attempt::Fatal(agent_err(
                vm,
                "the vm has no vsock; restart it with this banger version",
            ))
        })?;
        let probe = async {
            let mut s = self.deps.agent.connect(Path::new(vsock)).await?;
            send(&mut s, &Message::Ping).await?;
            read_frame(&mut s).await
        };
        match tokio::time::timeout(ATTEMPT, probe).await {
            Err(_) => Err(Attempt::Silent),
            Ok(Ok(Some(Frame::Control(Message::Pong)))) => Ok(()),
            Ok(Ok(other)) => Err(Attempt::Other(format!("ping answered with {other:?}"))),
            Ok(Err(e @ ProtoError::VersionMismatch { .. })) => Err(Attempt::Fatal(
                CoreError::Unavailable(format!("vm {:?}: {e}", vm.name)),
            )),
            Ok(Err(ProtoError::NothingListening { .. })) => Err(Attempt::Refused),
            Ok(Err(e)) => Err(Attempt::Other(e.to_string())),
        }
    }

    /// One control request the agent acknowledges with a pong.
    async fn acknowledged(&self, vm: &VmRecord, msg: Message, what: &str) -> Result<(), CoreError> {
        let mut s = self.agent_connect(vm).await?;
        let answer = tokio::time::timeout(ATTEMPT, async {
            send(&mut s, &msg).await?;
            read_frame(&mut s).await
        })
        .await
        .map_err(|_| agent_err(vm, format!("no answer to {what} within 5s")))?
        .map_err(|e| agent_err(vm, e))?;
        match answer {
            Some(Frame::Control(Message::Pong)) => Ok(()),
            other => Err(agent_err(vm, format!("{what} answered with {other:?}"))),
        }
    }

    /// Asks the guest to shut itself down; `Ok` once the agent took it.
    pub(crate) async fn agent_power_off(
        &self,
        vm: &VmRecord,
        reboot: bool,
    ) -> Result<(), CoreError> {
        self.acknowledged(vm, Message::PowerOff { reboot }, "power off")
            .await
    }

    /// Runs a short command and returns its exit code and stdout.
    pub(crate) async fn agent_output(
        &self,
        vm: &VmRecord,
        argv: &[&str],
    ) -> Result<(Option<i32>, Vec<u8>), CoreError> {
        let mut s = self.agent_connect(vm).await?;
        let req = ExecRequest {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..ExecRequest::default()
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            send(&mut s, &Message::Exec(req))
                .await
                .map_err(|e| agent_err(vm, e))?;
            let mut out = Vec::new();
            loop {
                match read_frame(&mut s).await.map_err(|e| agent_err(vm, e))? {
                    Some(Frame::Stdout(d)) => out.extend(d),
                    Some(Frame::Control(Message::Exit { code, .. })) => return Ok((code, out)),
                    Some(Frame::Control(Message::Error { message })) => {
                        return Err(agent_err(vm, message));
                    }
                    Some(_) => {}
                    None => return Err(agent_err(vm, "connection closed before the exit")),
                }
            }
        })
        .await
        .map_err(|_| agent_err(vm, format!("{argv:?} did not finish within 30s")))?
    }

    /// `vm exec` / `vm cp`: a connection with the request already sent.
    pub(crate) async fn attach(
        &self,
        name: &str,
        req: AttachRequest,
    ) -> Result<AgentConn, CoreError> {
        let vm = self.find_vm(name).await?;
        check_action(&vm.name, vm.state, VmAction::Exec)?;
        let msg = match req {
            AttachRequest::Exec(e) => {
                if e.argv.is_empty() || e.argv[0].is_empty() {
                    return Err(CoreError::InvalidArgument(
                        "no command given: put it after `--`, e.g. `banger vm exec NAME -- ls /`"
                            .into(),
                    ));
                }
                Message::Exec(e)
            }
            AttachRequest::CopyIn { dest } => Message::PutArchive {
                dest: guest_path(&dest)?,
            },
            AttachRequest::CopyOut { path } => Message::GetArchive {
                path: guest_path(&path)?,
            },
        };
        let mut s = self.agent_connect(&vm).await?;
        send(&mut s, &msg).await.map_err(|e| agent_err(&vm, e))?;
        Ok(AgentConn::new(s))
    }

    /// banger's ssh key pair, made on first use: `(private key, public key line)`.
    pub(crate) async fn ssh_key(&self) -> Result<(PathBuf, String), CoreError> {
        let _g = self.ssh_key_lock.lock().await;
        let dir = self.config().state_dir.join("ssh");
        let key = dir.join("id_ed25519");
        let public = dir.join("id_ed25519.pub");
        if !key.exists() || !public.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
            let _ = std::fs::remove_file(&key);
            let _ = std::fs::remove_file(&public);
            SshKeygen {
                bin: self.config().tools.ssh_keygen.clone(),
            }
            .ed25519(&key, "banger")
            .run(|_| {})
            .await
            .map_err(|e| {
                CoreError::Host(format!("creating banger's ssh key {}: {e}", key.display()))
            })?;
        }
        let line = std::fs::read_to_string(&public)
            .map_err(|e| CoreError::Internal(format!("reading {}: {e}", public.display())))?;
        Ok((key, line.trim().to_owned()))
    }

    /// Captures the guest's ssh host key unless one is pinned already.
    /// The guest makes its keys on first boot, shortly after the agent
    /// starts: retried briefly.
    pub(crate) async fn pin_host_key(&self, vm: &mut VmRecord) -> Result<(), CoreError> {
        if vm.runtime.ssh_host_key.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out) = self
                .agent_output(vm, &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
                .await?;
            let text = String::from_utf8_lossy(&out);
            let mut parts = text.split_whitespace();
            if let (Some(0), Some(kind), Some(key)) = (code, parts.next(), parts.next()) {
                vm.runtime.ssh_host_key = Some(format!("{kind} {key}"));
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(agent_err(
                    vm,
                    "the guest has no /etc/ssh/ssh_host_ed25519_key.pub (is openssh-server in the image?)",
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `vm ssh`: key, pinned host key, and sshd answering.
    pub(crate) async fn ssh_info(&self, name: &str) -> Result<SshInfo, CoreError> {
        let found = self.find_vm(name).await?;
        check_action(&found.name, found.state, VmAction::Exec)?;
        let (key, _) = self.ssh_key().await?;
        let mut vm = {
            let _lock = self.vm_locks.lock(&found.id).await;
            let mut vm = self.find_vm(&found.id).await?;
            if vm.runtime.ssh_host_key.is_none() {
                self.pin_host_key(&mut vm).await?;
                self.save(&mut vm).await?;
            }
            vm
        };
        let ip: Ipv4Addr = vm
            .runtime
            .guest_ip
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CoreError::Internal(format!("vm {:?} has no address", vm.name)))?;
        let host_key = vm.runtime.ssh_host_key.take().unwrap_or_default();
        let dir = self.vm_paths(&vm.id).dir;
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("{ip} {host_key}\n"))
            .map_err(|e| CoreError::Internal(format!("writing {}: {e}", known_hosts.display())))?;
        let deadline = tokio::time::Instant::now() + SSH_WAIT;
        while tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, 22)),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            if tokio::time::Instant::now() > deadline {
                return Err(CoreError::Unavailable(format!(
                    "sshd in vm {:?} does not answer on {ip}:22 after {}s; `banger vm logs {}` shows the console",
                    vm.name,
                    SSH_WAIT.as_secs(),
                    vm.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(SshInfo {
            host: ip.to_string(),
            user: "root".into(),
            identity_file: key.display().to_string(),
            known_hosts_file: known_hosts.display().to_string(),
        })
    }
}

/// A guest path for copy: absolute, so the agent's working directory
/// never decides where files land.
fn guest_path(p: &str) -> Result<String, CoreError> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(CoreError::InvalidArgument(format!(
            "guest path {p:?} must be absolute, e.g. NAME:/root/file"
        )));
    }
    Ok(p.to_owned())
}

type PowerHook = Box<dyn Fn(&Path) + Send + Sync>;

/// A recording fake agent: an in-memory connection served by a tiny
/// stand-in (hello, ping, power off, `cat` of the host key).
#[derive(Default)]
pub struct FakeAgent {
    /// When false, connections fail as if the guest had not booted yet.
    pub ready: std::sync::atomic::AtomicBool,
    /// Power-off requests: (vsock path, reboot).
    pub power_offs: Arc<Mutex<Vec<(PathBuf, bool)>>>,
    /// Called on each power-off (e.g. to stop the fake VMM).
    pub on_power_off: Arc<Mutex<Option<PowerHook>>>,
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

    pub fn power_offs(&self) -> Vec<(PathBuf, bool)> {
        self.power_offs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl AgentConnector for FakeAgent {
    async fn connect(&self, vsock: &Path) -> Result<AgentStream, ProtoError> {
        if !self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProtoError::NothingListening { port: AGENT_PORT });
        }
        let (ours, mut theirs) = tokio::io::duplex(64 << 10);
        let (power_offs, hook) = (Arc::clone(&self.power_offs), Arc::clone(&self.on_power_off));
        let vsock = vsock.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(Frame::Control(m))) = read_frame(&mut theirs).await {
                let reply = match m {
                    Message::Hello(_) => Message::Hello(banger_agent_proto::Hello {
                        protocol: banger_agent_proto::PROTOCOL_VERSION,
                        software: "fake".into(),
                    }),
                    Message::Ping => Message::Pong,
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
                        let _ = banger_agent_proto::write_frame(
                            &mut theirs,
                            banger_agent_proto::Kind::Stdout,
                            b"ssh-ed25519 AAAAfakehostkey root@fake\n",
                        )
                        .await;
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
}
