//! The daemon's side: host operations as requests to the helper, each
//! answer checked to be the one its request has.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::proto::{FailureCode, HelperRequest, HelperResponse, Reply};
use crate::firewall::{Firewall, FirewallError, Guard, NatRule};
use crate::jail::{JailError, JailOps, JailStage};
use crate::net::{NetError, NetOps};
use crate::remote::HelperError;

/// The daemon's side: host operations as requests to the helper.
#[derive(Debug, Clone)]
pub struct HelperClient {
    pub socket: PathBuf,
}

impl HelperClient {
    fn io(&self) -> impl Fn(std::io::Error) -> HelperError + '_ {
        |source| HelperError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn line(&self, req: &HelperRequest) -> Result<Vec<u8>, HelperError> {
        let mut line = serde_json::to_vec(req).map_err(|source| HelperError::Encode {
            socket: self.socket.clone(),
            op: req.op(),
            source,
        })?;
        line.push(b'\n');
        Ok(line)
    }

    /// The answer line, decoded; a failure answer is an error.
    fn decode(&self, reply: &str) -> Result<Reply, HelperError> {
        match serde_json::from_str::<HelperResponse>(reply.trim_end()) {
            Ok(HelperResponse::Ok(r)) => Ok(r),
            Ok(HelperResponse::Error(f)) => Err(HelperError::Remote(f)),
            Err(source) => Err(HelperError::Decode {
                socket: self.socket.clone(),
                reply: reply.to_owned(),
                source,
            }),
        }
    }

    fn unexpected(&self, req: &HelperRequest, got: &Reply) -> HelperError {
        HelperError::Unexpected {
            socket: self.socket.clone(),
            op: req.op(),
            got: got.kind(),
        }
    }

    /// One request, one answer.
    pub async fn call(&self, req: &HelperRequest) -> Result<Reply, HelperError> {
        let mut s =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| HelperError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        s.write_all(&self.line(req)?).await.map_err(self.io())?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .await
            .map_err(self.io())?;
        self.decode(&reply)
    }

    /// A request answered with [`Reply::Done`].
    async fn run(&self, req: &HelperRequest) -> Result<(), HelperError> {
        match self.call(req).await? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(req, &other)),
        }
    }

    /// `OpenTap`: the reply line comes with the descriptor attached.
    fn open_tap_blocking(&self, name: &str) -> Result<OwnedFd, HelperError> {
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd};
        let req = HelperRequest::OpenTap { name: name.into() };
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).map_err(|source| {
            HelperError::Connect {
                socket: self.socket.clone(),
                source,
            }
        })?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .map_err(self.io())?;
        s.write_all(&self.line(&req)?).map_err(self.io())?;
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| self.io()(e.into()))?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| self.io()(e.into()))? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    #[allow(unsafe_code)]
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for us (SCM_RIGHTS); nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        let n = msg.bytes;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        match self.decode(&reply)? {
            Reply::Done => fd.ok_or_else(|| HelperError::NoDescriptor {
                socket: self.socket.clone(),
            }),
            other => Err(self.unexpected(&req, &other)),
        }
    }
}

fn net_err<'a>(op: &'static str, link: &'a str) -> impl FnOnce(HelperError) -> NetError + 'a {
    move |source| NetError::Helper {
        op,
        link: link.to_owned(),
        source,
    }
}

#[async_trait]
impl NetOps for HelperClient {
    async fn open_tap(&self, name: &str) -> Result<Option<OwnedFd>, NetError> {
        let me = self.clone();
        let n = name.to_owned();
        tokio::task::spawn_blocking(move || me.open_tap_blocking(&n))
            .await
            .map_err(|source| NetError::Task {
                op: "opening tap",
                link: name.to_owned(),
                source,
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
        self.run(&HelperRequest::EnsureBridge {
            name: name.into(),
            ip,
            prefix_len,
        })
        .await
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
        self.run(&HelperRequest::CreateTap {
            name: name.into(),
            bridge: bridge.into(),
            owner,
        })
        .await
        .map_err(net_err("creating tap", name))
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        self.run(&HelperRequest::DeleteLink { name: name.into() })
            .await
            .map_err(net_err("deleting", name))
    }

    async fn list_links(&self) -> Result<Vec<crate::net::LinkInfo>, NetError> {
        let req = HelperRequest::ListLinks;
        match self.call(&req).await {
            Ok(Reply::Links(links)) => Ok(links),
            Ok(other) => Err(self.unexpected(&req, &other)),
            Err(e) => Err(e),
        }
        .map_err(net_err("listing", "links"))
    }
}

fn fw_err(e: HelperError) -> FirewallError {
    match e.code() {
        Some(FailureCode::NoUplink) => FirewallError::NoUplink,
        _ => FirewallError::Helper(e),
    }
}

#[async_trait]
impl Firewall for HelperClient {
    async fn add_guard(&self, guard: &Guard) -> Result<(), FirewallError> {
        self.run(&HelperRequest::AddGuard(guard.clone()))
            .await
            .map_err(fw_err)
    }

    async fn remove_guard(&self, tap: &str) -> Result<(), FirewallError> {
        self.run(&HelperRequest::RemoveGuard { tap: tap.into() })
            .await
            .map_err(fw_err)
    }

    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        self.run(&HelperRequest::AddNat {
            tap: rule.tap.clone(),
            guest_ip: rule.guest_ip,
            bridge: rule.bridge.clone(),
            uplink: rule.uplink.clone(),
        })
        .await
        .map_err(fw_err)
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        self.run(&HelperRequest::RemoveNat { tap: tap.into() })
            .await
            .map_err(fw_err)
    }

    async fn tagged_taps(&self) -> Result<Vec<String>, FirewallError> {
        let req = HelperRequest::TaggedTaps;
        match self.call(&req).await.map_err(fw_err)? {
            Reply::TaggedTaps(taps) => Ok(taps),
            other => Err(FirewallError::Helper(self.unexpected(&req, &other))),
        }
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        let req = HelperRequest::DefaultUplink;
        match self.call(&req).await.map_err(fw_err)? {
            Reply::Uplink(uplink) => Ok(uplink),
            other => Err(FirewallError::Helper(self.unexpected(&req, &other))),
        }
    }
}

#[async_trait]
impl JailOps for HelperClient {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        let req = HelperRequest::StageJail(stage.clone());
        match self.call(&req).await.map_err(JailError::Helper)? {
            Reply::JailDir(dir) => Ok(dir),
            other => Err(JailError::Helper(self.unexpected(&req, &other))),
        }
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        let req = HelperRequest::SpawnJail {
            vm_id: vm_id.into(),
            console: console.into(),
        };
        match self.call(&req).await.map_err(JailError::Helper)? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(JailError::Helper(self.unexpected(&req, &other))),
        }
    }

    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError> {
        self.run(&HelperRequest::ReleaseJail {
            vm_id: vm_id.into(),
            jail_dir: jail_dir.map(Path::to_path_buf),
        })
        .await
        .map_err(JailError::Helper)
    }
}
