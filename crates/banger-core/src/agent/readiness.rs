//! Waiting for a started guest's agent: the agent's ready call where the
//! VMM forwards it, then (or otherwise) pings until one is answered.

use std::time::Duration;

use banger_agent_proto::mux::MuxError;
use banger_agent_proto::{AGENT_PORT, Frame, Message, ProtoError, read_frame, send};
use banger_api::doctor::Accel;
use banger_api::vm::VmRecord;

use super::connector::{AgentChannel, AgentConnector};
use super::session::ATTEMPT;
use crate::error::{AgentError, CoreError, HostError, ReadinessError};
use crate::progress::ProgressSink;
use crate::ready::{ReadyCall, ReadyListener};

/// Readiness defaults: a KVM guest answers in about a second; software
/// emulation boots many times slower, more so on a busy host.
pub const READY_TIMEOUT_KVM: Duration = Duration::from_secs(30);
pub const READY_TIMEOUT_TCG: Duration = Duration::from_secs(180);

/// Between readiness attempts, and between looks at the VMM process.
const POLL: Duration = Duration::from_millis(200);

/// The start's readiness bound: configured, or by acceleration.
pub fn ready_timeout(configured_secs: Option<u32>, accel: Accel) -> Duration {
    match configured_secs {
        Some(s) => Duration::from_secs(u64::from(s)),
        None if accel == Accel::Kvm => READY_TIMEOUT_KVM,
        None => READY_TIMEOUT_TCG,
    }
}

/// How one readiness probe went.
enum Attempt {
    /// No answer at all within [`ATTEMPT`]: the vsock backend took the
    /// connection but the guest never took it up (no driver yet), or the
    /// serial port's sync went unanswered (no agent on it yet).
    Silent,
    /// The guest's vsock answered that nothing listens on the agent port.
    Refused,
    /// Anything else, kept for the error.
    Other(String),
    /// Not worth another try.
    Fatal(AgentError),
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
            "{} attempts: {} unanswered (guest not up yet: no vsock driver, or no agent on the serial port), {} refused (guest up, agent not listening), {} other",
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

fn vmm_exited(vm: &VmRecord, stage: &'static str, tally: &Attempts) -> CoreError {
    HostError::from(ReadinessError::VmmExited {
        vmm: vm.spec.vmm,
        stage,
        attempts: tally.to_string(),
    })
    .into()
}

/// Waits until the agent answers a ping; fails early when the VMM died
/// (`exited` resolves `true`, or `alive` says so between pings) or the
/// agent speaks another protocol version. A
/// failure says how the attempts went, so "the guest never got a vsock
/// device" and "the guest is up but nothing listens" read apart.
pub(crate) async fn wait_ready(
    connector: &dyn AgentConnector,
    vm: &VmRecord,
    alive: &(dyn Fn() -> bool + Sync),
    exited: impl Future<Output = bool>,
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
        await_ready_call(vm, exited, ready, timeout, deadline, &mut tally).await?;
    }
    let fatal = |source| CoreError::Agent {
        vm: vm.name.clone(),
        source,
    };
    let channel = AgentChannel::of(&vm.runtime).ok_or_else(|| fatal(AgentError::NoChannel))?;
    loop {
        if !alive() {
            return Err(vmm_exited(vm, "answered", &tally));
        }
        match attempt(connector, channel).await {
            Ok(()) => {
                tracing::info!(vm_id = %vm.id, waited_ms = started.elapsed().as_millis() as u64, before = %tally, "guest agent answered");
                return Ok(());
            }
            Err(Attempt::Fatal(e)) => return Err(fatal(e)),
            Err(failed) => tally.add(failed),
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(HostError::from(ReadinessError::NoAnswer {
                secs: timeout.as_secs(),
                attempts: tally.to_string(),
            })
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for the agent's call on `ready`; the ping that follows
/// confirms the ordinary path. Ends early when the VMM dies.
async fn await_ready_call(
    vm: &VmRecord,
    exited: impl Future<Output = bool>,
    ready: &ReadyListener,
    timeout: Duration,
    deadline: tokio::time::Instant,
    tally: &mut Attempts,
) -> Result<(), CoreError> {
    let mut exited = std::pin::pin!(exited);
    // Until the exit watch ends (the VMM gone, or the watch gave up).
    let mut watching = true;
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
                Err(e) => return Err(HostError::from(e).into()),
            },
            gone = &mut exited, if watching => {
                if gone {
                    return Err(vmm_exited(vm, "reported ready", tally));
                }
                watching = false;
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(HostError::from(ReadinessError::NoReadyCall {
                    secs: timeout.as_secs(),
                    path: ready.path().to_owned(),
                    attempts: tally.to_string(),
                })
                .into());
            }
        }
    }
}

/// One readiness probe: connect, hello, ping, pong.
async fn attempt(connector: &dyn AgentConnector, channel: AgentChannel<'_>) -> Result<(), Attempt> {
    let probe = async {
        let mut s = connector.connect(channel).await?;
        send(&mut s, &Message::Ping).await?;
        read_frame(&mut s).await
    };
    match tokio::time::timeout(ATTEMPT, probe).await {
        Err(_) => Err(Attempt::Silent),
        Ok(Ok(Some(Frame::Control(Message::Pong)))) => Ok(()),
        Ok(Ok(other)) => Err(Attempt::Other(format!("ping answered with {other:?}"))),
        Ok(Err(e @ ProtoError::VersionMismatch { .. })) => {
            Err(Attempt::Fatal(AgentError::VersionMismatch(e)))
        }
        Ok(Err(ProtoError::NothingListening { .. })) => Err(Attempt::Refused),
        Ok(Err(ProtoError::Mux(MuxError::SyncTimeout { .. }))) => Err(Attempt::Silent),
        Ok(Err(e)) => Err(Attempt::Other(e.to_string())),
    }
}
