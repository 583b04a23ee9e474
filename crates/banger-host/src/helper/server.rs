//! The helper's side: checks each request against the [`Policy`], then
//! carries it out with the real (or fake) host operations.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::policy::Policy;
use super::proto::{FailureCode, HelperRequest, HelperResponse, Reply};
use crate::firewall::{Firewall, FirewallError, NatRule};
use crate::jail::{JailError, JailOps};
use crate::net::{NetError, NetOps};

/// Executes checked requests with the real (or fake) host operations.
#[derive(Debug, Clone)]
pub struct HelperServer {
    pub policy: Policy,
    pub net: Arc<dyn NetOps>,
    pub firewall: Arc<dyn Firewall>,
    /// `None` when the helper's configuration does not jail.
    pub jail: Option<Arc<dyn JailOps>>,
}

fn net_code(_: &NetError) -> FailureCode {
    FailureCode::Net
}

fn firewall_code(e: &FirewallError) -> FailureCode {
    match e {
        FirewallError::NoUplink => FailureCode::NoUplink,
        _ => FailureCode::Firewall,
    }
}

fn jail_code(e: &JailError) -> FailureCode {
    match e {
        JailError::Refused(_) | JailError::Name(_) => FailureCode::Refused,
        _ => FailureCode::Jail,
    }
}

/// An operation's outcome on the wire.
fn answer<T, E: std::fmt::Display>(
    r: Result<T, E>,
    code: fn(&E) -> FailureCode,
    ok: impl FnOnce(T) -> Reply,
) -> HelperResponse {
    match r {
        Ok(v) => HelperResponse::Ok(ok(v)),
        Err(e) => HelperResponse::failed(code(&e), e),
    }
}

fn done<T>(_: T) -> Reply {
    Reply::Done
}

impl HelperServer {
    /// Checks, then runs one request.
    pub async fn handle(&self, req: HelperRequest) -> HelperResponse {
        if let Err(no) = self.check(&req).await {
            return no;
        }
        match req {
            HelperRequest::EnsureBridge {
                name,
                ip,
                prefix_len,
            } => answer(
                self.net.ensure_bridge(&name, ip, prefix_len).await,
                net_code,
                done,
            ),
            HelperRequest::CreateTap {
                name,
                bridge,
                owner,
            } => answer(
                self.net.create_tap(&name, &bridge, owner).await,
                net_code,
                done,
            ),
            HelperRequest::DeleteLink { name } => {
                answer(self.net.delete_link(&name).await, net_code, done)
            }
            // Sent with its descriptor by `connection`.
            HelperRequest::OpenTap { .. } => HelperResponse::failed(
                FailureCode::Malformed,
                "open_tap needs a socket to pass the descriptor on",
            ),
            HelperRequest::ListLinks => answer(self.net.list_links().await, net_code, Reply::Links),
            HelperRequest::AddNat {
                tap,
                guest_ip,
                bridge,
                uplink,
            } => answer(
                self.firewall
                    .add_nat(&NatRule {
                        tap,
                        guest_ip,
                        bridge,
                        uplink,
                    })
                    .await,
                firewall_code,
                done,
            ),
            HelperRequest::AddGuard(g) => {
                answer(self.firewall.add_guard(&g).await, firewall_code, done)
            }
            HelperRequest::RemoveGuard { tap } => {
                answer(self.firewall.remove_guard(&tap).await, firewall_code, done)
            }
            HelperRequest::RemoveNat { tap } => {
                answer(self.firewall.remove_nat(&tap).await, firewall_code, done)
            }
            HelperRequest::TaggedTaps => answer(
                self.firewall.tagged_taps().await,
                firewall_code,
                Reply::TaggedTaps,
            ),
            HelperRequest::DefaultUplink => answer(
                self.firewall.default_uplink().await,
                firewall_code,
                Reply::Uplink,
            ),
            HelperRequest::StageJail(s) => match self.jail() {
                Ok(jail) => answer(jail.stage(&s).await, jail_code, Reply::JailDir),
                Err(no) => no,
            },
            HelperRequest::SpawnJail { vm_id, console } => match self.jail() {
                Ok(jail) => answer(jail.spawn(&vm_id, &console).await, jail_code, Reply::Pid),
                Err(no) => no,
            },
            HelperRequest::ReleaseJail { vm_id, jail_dir } => match self.jail() {
                Ok(jail) => answer(
                    jail.release(&vm_id, jail_dir.as_deref()).await,
                    jail_code,
                    done,
                ),
                Err(no) => no,
            },
        }
    }

    /// The policy's verdict; it looks at the state dir, so off the async
    /// workers.
    async fn check(&self, req: &HelperRequest) -> Result<(), HelperResponse> {
        let policy = self.policy.clone();
        let checked = req.clone();
        match tokio::task::spawn_blocking(move || policy.check(&checked)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(?req, error = %e, "helper refused a request");
                Err(HelperResponse::failed(FailureCode::Refused, e))
            }
            Err(e) => Err(HelperResponse::failed(
                FailureCode::Internal,
                format!("checking the request: {e}"),
            )),
        }
    }

    fn jail(&self) -> Result<&dyn JailOps, HelperResponse> {
        self.jail.as_deref().ok_or_else(|| {
            HelperResponse::failed(
                FailureCode::NotJailing,
                "this helper does not jail firecracker (jailer.enabled is false, or the daemon's uid is root)",
            )
        })
    }

    /// Serves connections for good: one request per line, from root or
    /// the daemon's uid only. A failed accept (out of descriptors under a
    /// flood of connections) is logged and retried after a pause, never
    /// the helper's end: idle connections time out and free their
    /// descriptors meanwhile.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "helper accept failed; retrying");
                    // Nothing announces a descriptor freed: a short pause.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::debug!(error = %e, "helper connection ended");
                }
            });
        }
    }

    /// `OpenTap`: answered with the descriptor, which `connection` sends
    /// beside the line.
    async fn open_tap(&self, name: String) -> (HelperResponse, Option<OwnedFd>) {
        if let Err(no) = self
            .check(&HelperRequest::OpenTap { name: name.clone() })
            .await
        {
            return (no, None);
        }
        match self.net.open_tap(&name).await {
            Ok(Some(fd)) => (HelperResponse::Ok(Reply::Done), Some(fd)),
            Ok(None) => (
                HelperResponse::failed(
                    FailureCode::Net,
                    format!("no descriptor for tap {name:?} on this host"),
                ),
                None,
            ),
            Err(e) => (HelperResponse::failed(FailureCode::Net, e), None),
        }
    }

    async fn connection(&self, stream: UnixStream) -> std::io::Result<()> {
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let (r, mut w) = stream.into_split();
        // Anyone else is answered once and let go, before a byte of
        // theirs is read.
        if uid != Some(0) && uid != Some(self.policy.daemon_uid) {
            let who = uid.map_or_else(|| "unknown".into(), |u| u.to_string());
            let msg = format!(
                "refused: the helper serves uid {} only, not {who}",
                self.policy.daemon_uid,
            );
            w.write_all(&encode(&HelperResponse::failed(FailureCode::Refused, msg))?)
                .await?;
            return Ok(());
        }
        let mut reader = BufReader::new(r);
        loop {
            let line = match read_request(&mut reader).await {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(()),
                Err(RequestLine::Idle) => return Ok(()),
                Err(RequestLine::TooLong) => {
                    let resp = HelperResponse::failed(
                        FailureCode::Malformed,
                        format!("malformed request: a line longer than {MAX_LINE} bytes"),
                    );
                    w.write_all(&encode(&resp)?).await?;
                    return Ok(());
                }
                Err(RequestLine::Io(e)) => return Err(e),
            };
            let (resp, passed) = {
                match serde_json::from_str::<HelperRequest>(&line) {
                    Ok(HelperRequest::OpenTap { name }) => self.open_tap(name).await,
                    Ok(req) => (self.handle(req).await, None),
                    Err(e) => (
                        HelperResponse::failed(
                            FailureCode::Malformed,
                            format!("malformed request: {e}"),
                        ),
                        None,
                    ),
                }
            };
            let out = encode(&resp)?;
            match passed {
                None => w.write_all(&out).await?,
                Some(fd) => {
                    use std::os::fd::AsRawFd;
                    let sock = w.as_ref();
                    sock.writable().await?;
                    let raw = [fd.as_raw_fd()];
                    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                    // One small message on a fresh, writable socket: sent
                    // whole or not at all.
                    sock.try_io(tokio::io::Interest::WRITABLE, || {
                        nix::sys::socket::sendmsg::<()>(
                            sock.as_raw_fd(),
                            &[std::io::IoSlice::new(&out)],
                            &cmsg,
                            nix::sys::socket::MsgFlags::empty(),
                            None,
                        )
                        .map_err(std::io::Error::from)
                    })?;
                }
            }
        }
    }
}

/// How long a connection may sit without sending a whole request.
const IDLE: Duration = Duration::from_secs(30);
/// The longest request line (a jail stage, the largest, is far smaller).
const MAX_LINE: usize = 64 << 10;
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

enum RequestLine {
    Idle,
    TooLong,
    Io(std::io::Error),
}

/// The next request line, read at most [`MAX_LINE`] bytes and [`IDLE`]
/// long; `None` at the end of the connection.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<String>, RequestLine> {
    let mut line = Vec::new();
    let read = async {
        loop {
            let buf = r.fill_buf().await.map_err(RequestLine::Io)?;
            if buf.is_empty() {
                return Ok(!line.is_empty());
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > MAX_LINE + 1 {
                return Err(RequestLine::TooLong);
            }
            line.extend_from_slice(&buf[..take]);
            r.consume(take);
            if done {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(IDLE, read).await {
        Err(_) => Err(RequestLine::Idle),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => Ok(None),
        Ok(Ok(true)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Ok(Some(String::from_utf8_lossy(&line).into_owned()))
        }
    }
}

/// One answer line. An answer that cannot be encoded is answered with
/// that failure, so the daemon never waits for a line that never comes.
fn encode(resp: &HelperResponse) -> std::io::Result<Vec<u8>> {
    let mut out = match serde_json::to_vec(resp) {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(error = %e, "helper could not encode an answer");
            let fallback =
                HelperResponse::failed(FailureCode::Internal, format!("encoding the answer: {e}"));
            serde_json::to_vec(&fallback).map_err(std::io::Error::other)?
        }
    };
    out.push(b'\n');
    Ok(out)
}
