//! The privileged helper: the only part of banger that needs root for
//! networking, so that `bangerd` itself can run as an unprivileged user.
//!
//! It answers one JSON request per line on a unix socket that only root
//! and the daemon's user may use (checked by `SO_PEERCRED`, on top of the
//! file mode). Its surface is deliberately narrow, and every request is
//! checked against a [`Policy`] before anything happens:
//! - the bridge is the one configured, with its configured address;
//! - taps are named `bg-<12 hex>` and must belong to a VM that exists in
//!   the state dir (a foreign id is refused), and only the daemon's own uid
//!   may be made their owner;
//! - NAT addresses lie inside the bridge's subnet, interface names are
//!   plain names (no `/`, no `..`);
//! - jails are named by a VM id of an existing VM; the files staged into
//!   one lie beneath the state dir (a VM's disks beneath its own dir) and
//!   are the daemon's, opened without following symlinks; the jailer,
//!   the firecracker binary, the chroot base and the jail's uid (the
//!   daemon's) come from the helper's own configuration, never from a
//!   request.
//!
//! [`HelperClient`] implements [`NetOps`], [`Firewall`] and [`JailOps`]
//! over the socket, so the daemon core does not know whether it talks to
//! the kernel or to the helper.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::firewall::{Firewall, FirewallError, NatRule};
use crate::jail::{JailError, JailOps, JailStage, check_vm_id, lexically_beneath};
use crate::layout::{LayoutError, TapName, VmLayout, check_ifname};
use crate::net::{NetError, NetOps};

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("refused: {0}")]
    Layout(#[source] LayoutError),
    #[error("helper socket {socket}: {message}")]
    Transport { socket: PathBuf, message: String },
    #[error("{0}")]
    Failed(String),
}

/// What the daemon may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    EnsureBridge {
        name: String,
        ip: Ipv4Addr,
        prefix_len: u8,
    },
    CreateTap {
        name: String,
        bridge: String,
        owner: Option<(u32, u32)>,
    },
    DeleteLink {
        name: String,
    },
    /// Answered with the descriptor attached (`SCM_RIGHTS`).
    OpenTap {
        name: String,
    },
    ListLinks,
    AddNat {
        tap: String,
        guest_ip: Ipv4Addr,
        bridge: String,
        uplink: String,
    },
    RemoveNat {
        tap: String,
    },
    NatTaps,
    DefaultUplink,
    /// Builds a VM's chroot; answered with the jail dir.
    StageJail(JailStage),
    /// Starts the jailer; answered with its pid.
    SpawnJail {
        vm_id: String,
        console: PathBuf,
    },
    ReleaseJail {
        vm_id: String,
        jail_dir: Option<PathBuf>,
    },
}

/// The helper's answer: a value, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperResponse {
    Ok(serde_json::Value),
    Error(String),
}

/// What requests may name.
#[derive(Debug, Clone)]
pub struct Policy {
    pub bridge: String,
    pub bridge_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Where VM directories live; staged files must lie in the state dir.
    pub layout: VmLayout,
    /// The daemon's uid: the only non-root peer served, and the only
    /// owner a tap may be given.
    pub daemon_uid: u32,
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, HelperError> {
    Err(HelperError::Refused(msg.into()))
}

/// The shape of every tap banger makes, `bg-<12 lowercase hex>` (the VM
/// id's start).
fn tap_shape(name: &str) -> Result<TapName, HelperError> {
    TapName::parse(name).map_err(HelperError::Layout)
}

fn plain_ifname(what: &str, n: &str) -> Result<(), HelperError> {
    check_ifname(what, n).map_err(HelperError::Layout)
}

impl Policy {
    fn bridge(&self, name: &str) -> Result<(), HelperError> {
        if name == self.bridge {
            Ok(())
        } else {
            refuse(format!(
                "bridge {name:?} is not banger's ({:?})",
                self.bridge
            ))
        }
    }

    /// `bg-<12 hex>` of a VM whose directory exists.
    fn tap(&self, name: &str) -> Result<(), HelperError> {
        let tap = tap_shape(name)?;
        let hex = tap.vm_id_prefix();
        let vms = self.layout.vms_dir();
        let known = std::fs::read_dir(&vms)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(hex) && e.path().is_dir());
        if known {
            Ok(())
        } else {
            refuse(format!(
                "{name:?} belongs to no vm in {}: refusing a foreign id",
                vms.display()
            ))
        }
    }

    /// A VM id whose directory exists.
    fn vm(&self, id: &str) -> Result<PathBuf, HelperError> {
        check_vm_id(id).map_err(|e| HelperError::Refused(e.to_string()))?;
        let dir = self.layout.vm_dir(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            refuse(format!(
                "{id} is no vm in {}: refusing a foreign id",
                self.layout.vms_dir().display()
            ))
        }
    }

    fn path_in(&self, what: &str, path: &Path, dir: &Path) -> Result<(), HelperError> {
        match lexically_beneath(dir, path) {
            Some(_) => Ok(()),
            None => refuse(format!(
                "{what} {} is outside {}",
                path.display(),
                dir.display()
            )),
        }
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> Result<(), HelperError> {
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        if u32::from(ip) & mask == u32::from(self.bridge_ip) & mask && ip != self.bridge_ip {
            Ok(())
        } else {
            refuse(format!(
                "{ip} is not a guest address in {}/{}",
                self.bridge_ip, self.prefix_len
            ))
        }
    }

    /// Whether `req` stays inside what banger owns.
    pub fn check(&self, req: &HelperRequest) -> Result<(), HelperError> {
        match req {
            HelperRequest::EnsureBridge {
                name,
                ip,
                prefix_len,
            } => {
                self.bridge(name)?;
                if (*ip, *prefix_len) != (self.bridge_ip, self.prefix_len) {
                    return refuse(format!(
                        "bridge address {ip}/{prefix_len} is not the configured {}/{}",
                        self.bridge_ip, self.prefix_len
                    ));
                }
                Ok(())
            }
            HelperRequest::CreateTap {
                name,
                bridge,
                owner,
            } => {
                self.tap(name)?;
                self.bridge(bridge)?;
                match owner {
                    Some((uid, _)) if *uid != self.daemon_uid => refuse(format!(
                        "a tap may be owned by the daemon's uid {} only, not {uid}",
                        self.daemon_uid
                    )),
                    _ => Ok(()),
                }
            }
            HelperRequest::OpenTap { name } => self.tap(name),
            // Teardown: the VM dir may already be gone (only if something
            // else failed); the name's shape is the guard, never another
            // program's interface.
            HelperRequest::DeleteLink { name } => {
                plain_ifname("link", name)?;
                tap_shape(name).map(drop)
            }
            HelperRequest::AddNat {
                tap,
                guest_ip,
                bridge,
                uplink,
            } => {
                self.tap(tap)?;
                self.bridge(bridge)?;
                self.in_subnet(*guest_ip)?;
                plain_ifname("uplink", uplink)
            }
            HelperRequest::RemoveNat { tap } => {
                plain_ifname("tap", tap)?;
                tap_shape(tap).map(drop)
            }
            HelperRequest::ListLinks | HelperRequest::NatTaps | HelperRequest::DefaultUplink => {
                Ok(())
            }
            HelperRequest::StageJail(s) => {
                let vm = self.vm(&s.vm_id)?;
                self.path_in("kernel", &s.kernel, self.layout.state_dir())?;
                if let Some(i) = &s.initrd {
                    self.path_in("initrd", i, self.layout.state_dir())?;
                }
                if s.disks.is_empty() {
                    return refuse("a jail needs at least a root disk");
                }
                for d in &s.disks {
                    self.path_in("disk", d, &vm)?;
                }
                Ok(())
            }
            HelperRequest::SpawnJail { vm_id, console } => {
                self.vm(vm_id)?;
                let own = self.layout.files(vm_id).console;
                if *console == own {
                    Ok(())
                } else {
                    refuse(format!(
                        "console {} is not {}",
                        console.display(),
                        own.display()
                    ))
                }
            }
            // Teardown: the VM dir may be gone; the id's shape is the
            // guard, and the jail must be where the helper puts jails.
            HelperRequest::ReleaseJail { vm_id, .. } => {
                check_vm_id(vm_id).map_err(|e| HelperError::Refused(e.to_string()))
            }
        }
    }
}

/// Executes checked requests with the real (or fake) host operations.
#[derive(Debug, Clone)]
pub struct HelperServer {
    pub policy: Policy,
    pub net: Arc<dyn NetOps>,
    pub firewall: Arc<dyn Firewall>,
    /// `None` when the helper's configuration does not jail.
    pub jail: Option<Arc<dyn JailOps>>,
}

impl HelperServer {
    /// Checks, then runs one request.
    pub async fn handle(&self, req: HelperRequest) -> HelperResponse {
        if let Err(e) = self.policy.check(&req) {
            tracing::warn!(?req, error = %e, "helper refused a request");
            return HelperResponse::Error(e.to_string());
        }
        match req {
            HelperRequest::EnsureBridge {
                name,
                ip,
                prefix_len,
            } => reply(self.net.ensure_bridge(&name, ip, prefix_len).await),
            HelperRequest::CreateTap {
                name,
                bridge,
                owner,
            } => reply(self.net.create_tap(&name, &bridge, owner).await),
            HelperRequest::DeleteLink { name } => reply(self.net.delete_link(&name).await),
            // Sent with its descriptor by `connection`.
            HelperRequest::OpenTap { .. } => {
                HelperResponse::Error("open_tap needs a socket to pass the descriptor on".into())
            }
            HelperRequest::ListLinks => reply(self.net.list_links().await),
            HelperRequest::AddNat {
                tap,
                guest_ip,
                bridge,
                uplink,
            } => reply(
                self.firewall
                    .add_nat(&NatRule {
                        tap,
                        guest_ip,
                        bridge,
                        uplink,
                    })
                    .await,
            ),
            HelperRequest::RemoveNat { tap } => reply(self.firewall.remove_nat(&tap).await),
            HelperRequest::NatTaps => reply(self.firewall.nat_taps().await),
            HelperRequest::DefaultUplink => reply(self.firewall.default_uplink().await),
            HelperRequest::StageJail(_)
            | HelperRequest::SpawnJail { .. }
            | HelperRequest::ReleaseJail { .. } => {
                let Some(jail) = &self.jail else {
                    return HelperResponse::Error(
                        "this helper does not jail firecracker (jailer.enabled is false, or the daemon's uid is root)".into(),
                    );
                };
                match req {
                    HelperRequest::StageJail(s) => reply(jail.stage(&s).await),
                    HelperRequest::SpawnJail { vm_id, console } => {
                        reply(jail.spawn(&vm_id, &console).await)
                    }
                    HelperRequest::ReleaseJail { vm_id, jail_dir } => {
                        reply(jail.release(&vm_id, jail_dir.as_deref()).await)
                    }
                    _ => HelperResponse::Error("unreachable".into()),
                }
            }
        }
    }

    /// Serves connections until the listener fails: one request per line,
    /// from root or the daemon's uid only.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::debug!(error = %e, "helper connection ended");
                }
            });
        }
    }

    async fn connection(&self, stream: UnixStream) -> std::io::Result<()> {
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            let mut passed: Option<std::os::fd::OwnedFd> = None;
            let resp = if uid != Some(0) && uid != Some(self.policy.daemon_uid) {
                HelperResponse::Error(format!(
                    "refused: the helper serves uid {} only, not {}",
                    self.policy.daemon_uid,
                    uid.map_or_else(|| "unknown".into(), |u| u.to_string())
                ))
            } else {
                match serde_json::from_str::<HelperRequest>(&line) {
                    Ok(HelperRequest::OpenTap { name }) => {
                        let req = HelperRequest::OpenTap { name: name.clone() };
                        match self.policy.check(&req) {
                            Err(e) => HelperResponse::Error(e.to_string()),
                            Ok(()) => match self.net.open_tap(&name).await {
                                Ok(Some(fd)) => {
                                    passed = Some(fd);
                                    HelperResponse::Ok(serde_json::Value::Null)
                                }
                                Ok(None) => HelperResponse::Error(format!(
                                    "no descriptor for tap {name:?} on this host"
                                )),
                                Err(e) => HelperResponse::Error(e.to_string()),
                            },
                        }
                    }
                    Ok(req) => self.handle(req).await,
                    Err(e) => HelperResponse::Error(format!("malformed request: {e}")),
                }
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
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
        Ok(())
    }
}

/// An operation's outcome on the wire (`()` is `null`).
fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> HelperResponse {
    match r.map(|v| serde_json::to_value(v)) {
        Ok(Ok(v)) => HelperResponse::Ok(v),
        Ok(Err(e)) => HelperResponse::Error(e.to_string()),
        Err(e) => HelperResponse::Error(e.to_string()),
    }
}

/// The daemon's side: host operations as requests to the helper.
#[derive(Debug, Clone)]
pub struct HelperClient {
    pub socket: PathBuf,
}

impl HelperClient {
    pub async fn call(&self, req: &HelperRequest) -> Result<serde_json::Value, HelperError> {
        let t = |message: String| HelperError::Transport {
            socket: self.socket.clone(),
            message,
        };
        let mut s = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| t(format!("{e} (is banger-helper running?)")))?;
        let mut line = serde_json::to_vec(req).map_err(|e| t(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line).await.map_err(|e| t(e.to_string()))?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .await
            .map_err(|e| t(e.to_string()))?;
        match serde_json::from_str::<HelperResponse>(&reply) {
            Ok(HelperResponse::Ok(v)) => Ok(v),
            Ok(HelperResponse::Error(e)) => Err(HelperError::Failed(e)),
            Err(e) => Err(t(format!("bad answer {reply:?}: {e}"))),
        }
    }
}

fn net_err<'a>(op: &'static str, link: &'a str) -> impl FnOnce(HelperError) -> NetError + 'a {
    move |e| NetError::Link {
        op,
        link: link.to_owned(),
        message: format!("via banger-helper: {e}"),
    }
}

impl HelperClient {
    /// `OpenTap`: the reply line comes with the descriptor attached.
    fn open_tap_blocking(&self, name: &str) -> Result<std::os::fd::OwnedFd, HelperError> {
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd};
        let t = |message: String| HelperError::Transport {
            socket: self.socket.clone(),
            message,
        };
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|e| t(format!("{e} (is banger-helper running?)")))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .map_err(|e| t(e.to_string()))?;
        let mut line = serde_json::to_vec(&HelperRequest::OpenTap { name: name.into() })
            .map_err(|e| t(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line).map_err(|e| t(e.to_string()))?;
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| t(e.to_string()))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| t(e.to_string()))? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    #[allow(unsafe_code)]
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for us (SCM_RIGHTS); nothing else owns it.
                    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        let n = msg.bytes;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        match serde_json::from_str::<HelperResponse>(reply.trim_end()) {
            Ok(HelperResponse::Ok(_)) => {
                fd.ok_or_else(|| t("the helper sent no descriptor".into()))
            }
            Ok(HelperResponse::Error(e)) => Err(HelperError::Failed(e)),
            Err(e) => Err(t(format!("bad answer {reply:?}: {e}"))),
        }
    }
}

#[async_trait]
impl NetOps for HelperClient {
    async fn open_tap(&self, name: &str) -> Result<Option<std::os::fd::OwnedFd>, NetError> {
        let me = self.clone();
        let n = name.to_owned();
        tokio::task::spawn_blocking(move || me.open_tap_blocking(&n))
            .await
            .map_err(|e| NetError::Link {
                op: "opening tap",
                link: name.to_owned(),
                message: e.to_string(),
            })?
            .map(Some)
            .map_err(net_err("opening tap", name))
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        self.call(&HelperRequest::EnsureBridge {
            name: name.into(),
            ip,
            prefix_len,
        })
        .await
        .map(drop)
        .map_err(net_err("ensuring bridge", name))
    }

    async fn create_tap(
        &self,
        name: &str,
        bridge: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), NetError> {
        // Unprivileged, the daemon's VMMs run as its own uid: the tap must
        // be theirs to attach to.
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let owner = owner.or((me.0 != 0).then_some(me));
        self.call(&HelperRequest::CreateTap {
            name: name.into(),
            bridge: bridge.into(),
            owner,
        })
        .await
        .map(drop)
        .map_err(net_err("creating tap", name))
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        self.call(&HelperRequest::DeleteLink { name: name.into() })
            .await
            .map(drop)
            .map_err(net_err("deleting", name))
    }

    async fn list_links(&self) -> Result<Vec<String>, NetError> {
        let v = self
            .call(&HelperRequest::ListLinks)
            .await
            .map_err(net_err("listing", "links"))?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
}

fn fw_err(e: HelperError) -> FirewallError {
    FirewallError::Nft {
        bin: Path::new("banger-helper").to_owned(),
        message: e.to_string(),
    }
}

#[async_trait]
impl Firewall for HelperClient {
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        self.call(&HelperRequest::AddNat {
            tap: rule.tap.clone(),
            guest_ip: rule.guest_ip,
            bridge: rule.bridge.clone(),
            uplink: rule.uplink.clone(),
        })
        .await
        .map(drop)
        .map_err(fw_err)
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        self.call(&HelperRequest::RemoveNat { tap: tap.into() })
            .await
            .map(drop)
            .map_err(fw_err)
    }

    async fn nat_taps(&self) -> Result<Vec<String>, FirewallError> {
        let v = self.call(&HelperRequest::NatTaps).await.map_err(fw_err)?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        let v = self
            .call(&HelperRequest::DefaultUplink)
            .await
            .map_err(fw_err)?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
}

fn jail_err(e: HelperError) -> JailError {
    JailError::Helper(format!("via banger-helper: {e}"))
}

#[async_trait]
impl JailOps for HelperClient {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        let v = self
            .call(&HelperRequest::StageJail(stage.clone()))
            .await
            .map_err(jail_err)?;
        serde_json::from_value(v).map_err(|e| JailError::Helper(format!("bad jail dir: {e}")))
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        let v = self
            .call(&HelperRequest::SpawnJail {
                vm_id: vm_id.into(),
                console: console.into(),
            })
            .await
            .map_err(jail_err)?;
        serde_json::from_value(v).map_err(|e| JailError::Helper(format!("bad pid: {e}")))
    }

    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError> {
        self.call(&HelperRequest::ReleaseJail {
            vm_id: vm_id.into(),
            jail_dir: jail_dir.map(Path::to_path_buf),
        })
        .await
        .map(drop)
        .map_err(jail_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::FakeFirewall;
    use crate::jail::{FakeJail, JailCall};
    use crate::net::FakeNet;

    const VM: &str = "0123456789abcdef";
    const TAP: &str = "bg-0123456789ab";

    fn server(dir: &Path) -> (Arc<HelperServer>, Arc<FakeNet>, Arc<FakeFirewall>) {
        let (s, net, fw, _) = server_with_jail(dir);
        (s, net, fw)
    }

    fn server_with_jail(
        dir: &Path,
    ) -> (
        Arc<HelperServer>,
        Arc<FakeNet>,
        Arc<FakeFirewall>,
        Arc<FakeJail>,
    ) {
        std::fs::create_dir_all(dir.join("vms").join(VM)).expect("vm dir");
        let net = Arc::new(FakeNet::default());
        let fw = Arc::new(FakeFirewall::with_uplink("eth0"));
        let jail = Arc::new(FakeJail::with_pid(4242));
        let s = HelperServer {
            policy: Policy {
                bridge: "banger0".into(),
                bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
                prefix_len: 24,
                layout: VmLayout::new(dir, dir.join("run")),
                daemon_uid: 1000,
            },
            net: net.clone(),
            firewall: fw.clone(),
            jail: Some(jail.clone()),
        };
        (Arc::new(s), net, fw, jail)
    }

    fn refused(r: &HelperResponse, needle: &str) {
        match r {
            HelperResponse::Error(e) => assert!(e.contains(needle), "{e}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_before_anything_happens() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, net, fw) = server(dir.path());
        let tap = |name: &str| HelperRequest::CreateTap {
            name: name.into(),
            bridge: "banger0".into(),
            owner: None,
        };
        // Names with / or .., other shapes, foreign vm ids.
        refused(&s.handle(tap("bg-../../etc")).await, "not a banger tap");
        refused(&s.handle(tap("bg-0123/56789a")).await, "not a banger tap");
        refused(&s.handle(tap("eth0")).await, "not a banger tap");
        refused(&s.handle(tap("bg-ffffffffffff")).await, "foreign id");
        refused(
            &s.handle(HelperRequest::DeleteLink {
                name: "eth0".into(),
            })
            .await,
            "not a banger tap",
        );
        refused(
            &s.handle(HelperRequest::DeleteLink { name: "..".into() })
                .await,
            "not an interface name",
        );
        // The configured bridge and address only.
        refused(
            &s.handle(HelperRequest::EnsureBridge {
                name: "docker0".into(),
                ip: Ipv4Addr::new(172, 16, 0, 1),
                prefix_len: 24,
            })
            .await,
            "not banger's",
        );
        refused(
            &s.handle(HelperRequest::EnsureBridge {
                name: "banger0".into(),
                ip: Ipv4Addr::new(10, 0, 0, 1),
                prefix_len: 8,
            })
            .await,
            "not the configured",
        );
        // A tap for someone else's uid.
        refused(
            &s.handle(HelperRequest::CreateTap {
                name: TAP.into(),
                bridge: "banger0".into(),
                owner: Some((0, 0)),
            })
            .await,
            "daemon's uid 1000 only",
        );
        // NAT outside the subnet, or through a path-like uplink.
        let nat = |ip: [u8; 4], uplink: &str| HelperRequest::AddNat {
            tap: TAP.into(),
            guest_ip: Ipv4Addr::from(ip),
            bridge: "banger0".into(),
            uplink: uplink.into(),
        };
        refused(
            &s.handle(nat([8, 8, 8, 8], "eth0")).await,
            "not a guest address",
        );
        refused(
            &s.handle(nat([172, 16, 0, 1], "eth0")).await,
            "not a guest address",
        );
        refused(
            &s.handle(nat([172, 16, 0, 2], "../eth0")).await,
            "not an interface name",
        );
        assert!(net.recorded().is_empty(), "{:?}", net.recorded());
        assert!(fw.recorded().is_empty(), "{:?}", fw.recorded());

        // And what is inside the policy goes through.
        assert_eq!(
            s.handle(tap(TAP)).await,
            HelperResponse::Ok(serde_json::Value::Null)
        );
        assert_eq!(
            s.handle(nat([172, 16, 0, 2], "eth0")).await,
            HelperResponse::Ok(serde_json::Value::Null)
        );
        assert!(net.has(TAP) && fw.has(TAP));
    }

    #[tokio::test]
    async fn the_client_drives_the_server_over_a_socket_and_malformed_lines_are_answered() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, net, fw) = server(dir.path());
        let sock = dir.path().join("helper.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        // Our own uid must be served: make it the daemon's.
        let mut policy = s.policy.clone();
        policy.daemon_uid = nix::unistd::geteuid().as_raw();
        let s = Arc::new(HelperServer {
            policy,
            net: s.net.clone(),
            firewall: s.firewall.clone(),
            jail: s.jail.clone(),
        });
        tokio::spawn(s.serve(listener));
        let c = HelperClient {
            socket: sock.clone(),
        };
        c.ensure_bridge("banger0", Ipv4Addr::new(172, 16, 0, 1), 24)
            .await
            .expect("bridge");
        c.create_tap(TAP, "banger0", None).await.expect("tap");
        assert!(net.has(TAP));
        c.add_nat(&NatRule {
            tap: TAP.into(),
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            bridge: "banger0".into(),
            uplink: "eth0".into(),
        })
        .await
        .expect("nat");
        assert_eq!(c.nat_taps().await.expect("taps"), [TAP]);
        assert_eq!(
            c.default_uplink().await.expect("uplink").as_deref(),
            Some("eth0")
        );
        let err = c
            .create_tap("bg-ffffffffffff", "banger0", None)
            .await
            .expect_err("foreign");
        assert!(err.to_string().contains("foreign id"), "{err}");
        c.remove_nat(TAP).await.expect("remove");
        c.delete_link(TAP).await.expect("delete");
        assert!(!net.has(TAP) && !fw.has(TAP));

        // A line that is not a request gets an answer, not a hang.
        let mut raw = UnixStream::connect(&sock).await.expect("connect");
        raw.write_all(b"{\"op\":\"format_disk\",\"path\":\"/dev/sda\"}\n")
            .await
            .expect("write");
        let mut reply = String::new();
        BufReader::new(raw)
            .read_line(&mut reply)
            .await
            .expect("read");
        assert!(reply.contains("malformed request"), "{reply}");
    }

    #[tokio::test]
    async fn jail_requests_outside_the_state_dir_or_for_foreign_ids_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, _, _, jail) = server_with_jail(dir.path());
        let state = dir.path();
        let vm = state.join("vms").join(VM);
        let good = JailStage {
            vm_id: VM.into(),
            kernel: state.join("kernels/k1/vmlinux"),
            initrd: Some(state.join("kernels/k1/initrd.img")),
            disks: vec![vm.join("root.ext4"), vm.join("work.ext4")],
        };
        let stage = |f: &dyn Fn(&mut JailStage)| {
            let mut j = good.clone();
            f(&mut j);
            HelperRequest::StageJail(j)
        };
        for (req, needle) in [
            (stage(&|j| j.kernel = "/boot/vmlinuz".into()), "outside"),
            (
                stage(&|j| j.kernel = state.join("../../etc/shadow")),
                "outside",
            ),
            (stage(&|j| j.initrd = Some("/etc/shadow".into())), "outside"),
            (stage(&|j| j.initrd = Some("initrd.img".into())), "outside"),
            // Another VM's disk, or the shared image, is not this VM's.
            (
                stage(&|j| j.disks = vec![state.join("vms/ffffffffffffffff/root.ext4")]),
                "outside",
            ),
            (
                stage(&|j| j.disks = vec![state.join("images/default/rootfs.ext4")]),
                "outside",
            ),
            (
                stage(&|j| j.disks = vec![vm.join("../ffffffffffffffff/root.ext4")]),
                "outside",
            ),
            (stage(&|j| j.disks = vec![]), "at least a root disk"),
            (
                stage(&|j| j.vm_id = "../../etc".into()),
                "not a banger vm id",
            ),
            (
                stage(&|j| j.vm_id = "0123/56789abcdef".into()),
                "not a banger vm id",
            ),
            (
                stage(&|j| j.vm_id = "ffffffffffffffff".into()),
                "foreign id",
            ),
            (
                HelperRequest::SpawnJail {
                    vm_id: "ffffffffffffffff".into(),
                    console: state.join("vms/ffffffffffffffff/console.log"),
                },
                "foreign id",
            ),
            (
                HelperRequest::SpawnJail {
                    vm_id: VM.into(),
                    console: "/etc/motd".into(),
                },
                "is not",
            ),
            (
                HelperRequest::ReleaseJail {
                    vm_id: "..".into(),
                    jail_dir: None,
                },
                "not a banger vm id",
            ),
        ] {
            refused(&s.handle(req).await, needle);
        }
        assert!(jail.recorded().is_empty(), "{:?}", jail.recorded());

        // Inside the policy: forwarded as asked.
        assert!(matches!(
            s.handle(HelperRequest::StageJail(good.clone())).await,
            HelperResponse::Ok(_)
        ));
        assert_eq!(
            s.handle(HelperRequest::SpawnJail {
                vm_id: VM.into(),
                console: vm.join("console.log"),
            })
            .await,
            HelperResponse::Ok(serde_json::json!(4242))
        );
        assert_eq!(
            jail.recorded(),
            [
                JailCall::Stage(good),
                JailCall::Spawn {
                    vm_id: VM.into(),
                    console: vm.join("console.log")
                }
            ]
        );
    }

    #[tokio::test]
    async fn a_helper_without_a_jail_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, net, fw) = server(dir.path());
        let s = HelperServer {
            policy: s.policy.clone(),
            net,
            firewall: fw,
            jail: None,
        };
        refused(
            &s.handle(HelperRequest::ReleaseJail {
                vm_id: VM.into(),
                jail_dir: None,
            })
            .await,
            "does not jail",
        );
    }
}
