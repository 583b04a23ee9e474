//! Host networking: the banger bridge and per-VM taps.
//!
//! Links and addresses go through netlink (rtnetlink). A tap is created
//! with the tun driver's ioctls, since the kernel refuses to create tun
//! devices over netlink; it is made persistent so the VMM can open it by
//! name and so it outlives the daemon like the VM does.

use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{op} {link}: {source}")]
    Netlink {
        op: &'static str,
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} {link}: {source}")]
    Io {
        op: &'static str,
        link: String,
        #[source]
        source: std::io::Error,
    },
    /// The link is not there (after creating it, or a bridge to attach to).
    #[error("{op} {link}: {why}")]
    Missing {
        op: &'static str,
        link: String,
        why: &'static str,
    },
    #[error("{op} {link}: {source}")]
    Task {
        op: &'static str,
        link: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{op} {link}: via banger-helper: {source}")]
    Helper {
        op: &'static str,
        link: String,
        #[source]
        source: crate::remote::HelperError,
    },
}

#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeNet, NetCall};

/// Network side effects the daemon needs.
#[async_trait]
pub trait NetOps: Send + Sync + std::fmt::Debug {
    /// Creates the bridge if missing, gives it `addr/prefix`, brings it up.
    async fn ensure_bridge(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    /// Creates a persistent tap attached to `bridge`, up.
    /// `owner` (uid, gid): who may attach to it without privileges (a
    /// jailed VMM); root only when `None`.
    async fn create_tap(
        &self,
        name: &str,
        bridge: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), NetError>;
    /// An open descriptor on an existing tap, for a VMM that cannot open
    /// `/dev/net/tun` itself (an unprivileged daemon's QEMU). `None`: the
    /// VMM opens the tap by name.
    async fn open_tap(&self, _name: &str) -> Result<Option<std::os::fd::OwnedFd>, NetError> {
        Ok(None)
    }
    /// Deletes a link; a link that does not exist is not an error.
    async fn delete_link(&self, name: &str) -> Result<(), NetError>;
    /// All links, each with the bridge it is enslaved to (the sweep
    /// leaves taps on another bridge to whoever made that bridge).
    async fn list_links(&self) -> Result<Vec<LinkInfo>, NetError>;
}

/// A link, and the bridge (or other controller) it is enslaved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkInfo {
    pub name: String,
    pub master: Option<String>,
}

/// The real host, over netlink.
#[derive(Debug, Default, Clone, Copy)]
pub struct Netlink;

fn link_err<'a>(op: &'static str, link: &'a str) -> impl FnOnce(rtnetlink::Error) -> NetError + 'a {
    move |source| NetError::Netlink {
        op,
        link: link.to_owned(),
        source,
    }
}

fn io_err<'a>(op: &'static str, link: &'a str) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Io {
        op,
        link: link.to_owned(),
        source,
    }
}

fn missing(op: &'static str, link: &str, why: &'static str) -> NetError {
    NetError::Missing {
        op,
        link: link.to_owned(),
        why,
    }
}

async fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => Ok(None),
        Err(e) => Err(link_err("looking up", name)(e)),
    }
}

/// EEXIST: someone else created it first.
fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -nix::libc::EEXIST)
}

#[async_trait]
impl NetOps for Netlink {
    async fn ensure_bridge(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let h = connect().await?;
        let idx = match index_of(&h, name).await? {
            Some(i) => i,
            None => {
                // Two starts racing to create it: whoever loses sees EEXIST
                // and uses the winner's bridge.
                if let Err(e) = h.link().add(LinkBridge::new(name).build()).execute().await {
                    if !is_exists(&e) {
                        return Err(link_err("creating bridge", name)(e));
                    }
                }
                index_of(&h, name)
                    .await?
                    .ok_or_else(|| missing("creating bridge", name, "created but not found"))?
            }
        };
        let mut addrs = h.address().get().set_link_index_filter(idx).execute();
        let mut present = false;
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(link_err("listing addresses of", name))?
        {
            use rtnetlink::packet_route::address::AddressAttribute;
            present |= msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(v)) if *v == addr));
        }
        if !present {
            if let Err(e) = h
                .address()
                .add(idx, IpAddr::V4(addr), prefix)
                .execute()
                .await
            {
                if !is_exists(&e) {
                    return Err(link_err("adding address to", name)(e));
                }
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(link_err("bringing up", name))
    }

    async fn create_tap(
        &self,
        name: &str,
        bridge: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), NetError> {
        tap::create_persistent(name, owner).map_err(io_err("creating tap", name))?;
        let h = connect().await?;
        let br = index_of(&h, bridge)
            .await?
            .ok_or_else(|| missing("attaching to bridge", bridge, "bridge does not exist"))?;
        let idx = index_of(&h, name)
            .await?
            .ok_or_else(|| missing("creating tap", name, "created but not found"))?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
            .execute()
            .await
            .map_err(link_err("attaching tap", name))
    }

    async fn open_tap(&self, name: &str) -> Result<Option<std::os::fd::OwnedFd>, NetError> {
        // A single-queue tap takes one descriptor at a time (EBUSY beyond).
        // The one that created it is closed, but a concurrent start's
        // fork may still hold a copy until its exec closes it: wait that
        // moment out, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match tap::open(name) {
                Ok(f) => return Ok(Some(std::os::fd::OwnedFd::from(f))),
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io_err("opening tap", name)(e)),
            }
        }
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        let h = connect().await?;
        match index_of(&h, name).await? {
            None => Ok(()),
            Some(idx) => h
                .link()
                .del(idx)
                .execute()
                .await
                .map_err(link_err("deleting", name)),
        }
    }

    async fn list_links(&self) -> Result<Vec<LinkInfo>, NetError> {
        let h = connect().await?;
        // (index, name, controller index), then controllers by name.
        let mut seen: Vec<(u32, String, Option<u32>)> = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(link_err("listing", "links"))?
        {
            use rtnetlink::packet_route::link::LinkAttribute;
            let mut name = None;
            let mut master = None;
            for a in msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n),
                    LinkAttribute::Controller(i) => master = Some(i),
                    _ => {}
                }
            }
            if let Some(n) = name {
                seen.push((msg.header.index, n, master));
            }
        }
        let name_of = |i: u32| {
            seen.iter()
                .find(|(idx, _, _)| *idx == i)
                .map(|(_, n, _)| n.clone())
        };
        Ok(seen
            .iter()
            .map(|(_, name, master)| LinkInfo {
                name: name.clone(),
                master: master.and_then(name_of),
            })
            .collect())
    }
}

#[allow(unsafe_code)]
mod tap {
    //! `TUNSETIFF` + `TUNSETPERSIST`: the only way to make a tap.

    use std::os::fd::AsRawFd;

    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    /// QEMU's virtio-net expects the vnet header on a tap it is handed.
    const IFF_VNET_HDR: i16 = 0x4000;

    /// `struct ifreq` as the tun driver reads it: name, then flags.
    #[repr(C)]
    pub struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }

    nix::ioctl_write_ptr_bad!(tun_set_iff, 0x4004_54ca, IfReq);
    nix::ioctl_write_int_bad!(tun_set_persist, 0x4004_54cb);
    nix::ioctl_write_int_bad!(tun_set_owner, 0x4004_54cc);
    nix::ioctl_write_int_bad!(tun_set_group, 0x4004_54ce);

    /// `/dev/net/tun` bound to tap `name` (made if it does not exist).
    fn attach(name: &str, flags: i16) -> std::io::Result<std::fs::File> {
        if name.is_empty()
            || name.len() > 15
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `tun` is an open /dev/net/tun descriptor that outlives the
        // call, and `req` is a properly sized, NUL-terminated `ifreq` the
        // kernel only reads from.
        unsafe { tun_set_iff(tun.as_raw_fd(), &req) }?;
        Ok(tun)
    }

    /// A descriptor attached to the existing tap `name`.
    pub fn open(name: &str) -> std::io::Result<std::fs::File> {
        attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    }

    pub fn create_persistent(name: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        let tun = attach(name, IFF_TAP | IFF_NO_PI)?;
        // SAFETY: the same descriptor, now bound to the tap; the argument
        // is a plain integer flag.
        unsafe { tun_set_persist(tun.as_raw_fd(), 1) }?;
        if let Some((uid, gid)) = owner {
            let (uid, gid) = (
                i32::try_from(uid).map_err(std::io::Error::other)?,
                i32::try_from(gid).map_err(std::io::Error::other)?,
            );
            // SAFETY: the same descriptor; the arguments are plain integers
            // (a uid and a gid) the kernel copies.
            unsafe { tun_set_owner(tun.as_raw_fd(), uid) }?;
            // SAFETY: as above.
            unsafe { tun_set_group(tun.as_raw_fd(), gid) }?;
        }
        Ok(())
    }
}

#[cfg(test)]
/// Runs `f` in a fresh network namespace on a dedicated thread, so a root
/// test can use the real netlink implementation without touching the
/// host's interfaces.
pub fn in_new_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_records_and_tracks_links() {
        let f = FakeNet::default();
        f.ensure_bridge("banger0", Ipv4Addr::new(172, 16, 0, 1), 24)
            .await
            .expect("bridge");
        f.create_tap("bg-1", "banger0", None).await.expect("tap");
        assert!(f.has("bg-1"));
        f.delete_link("bg-1").await.expect("del");
        f.delete_link("bg-1").await.expect("idempotent");
        assert!(!f.has("bg-1"));
        f.failing.lock().expect("lock").insert("bg-2".into());
        assert!(f.create_tap("bg-2", "banger0", None).await.is_err());
        assert_eq!(
            f.recorded(),
            [
                "ensure_bridge banger0 172.16.0.1/24",
                "create_tap bg-1 banger0",
                "delete_link bg-1",
                "delete_link bg-1",
                "create_tap bg-2 banger0"
            ]
        );
    }

    /// The real implementation, inside a throwaway network namespace.
    #[test]
    fn netlink_bridge_and_tap_in_a_private_netns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED netlink test: needs root (CAP_NET_ADMIN) to create a namespace");
            return;
        }
        let res = in_new_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async {
                let n = Netlink;
                let ip = Ipv4Addr::new(172, 16, 0, 1);
                n.ensure_bridge("bgtestbr0", ip, 24).await.expect("bridge");
                n.ensure_bridge("bgtestbr0", ip, 24)
                    .await
                    .expect("bridge again is a no-op");
                n.create_tap("bg-test0", "bgtestbr0", Some((64123, 64123)))
                    .await
                    .expect("tap");
                let links = n.list_links().await.expect("list");
                assert!(
                    links.contains(&LinkInfo {
                        name: "bg-test0".into(),
                        master: Some("bgtestbr0".into())
                    }),
                    "{links:?}"
                );
                // /sys shows the host's namespace: ask netlink instead.
                let h = connect().await.expect("connect");
                let br = index_of(&h, "bgtestbr0")
                    .await
                    .expect("lookup")
                    .expect("bridge");
                let tap = h
                    .link()
                    .get()
                    .match_name("bg-test0".to_owned())
                    .execute()
                    .try_next()
                    .await
                    .expect("get")
                    .expect("tap");
                use rtnetlink::packet_route::link::LinkAttribute;
                assert!(
                    tap.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == br)),
                    "tap not attached to the bridge"
                );
                n.delete_link("bg-test0").await.expect("del");
                n.delete_link("bg-test0").await.expect("del absent");
                assert!(
                    !n.list_links()
                        .await
                        .expect("list")
                        .iter()
                        .any(|l| l.name == "bg-test0")
                );
                assert!(n.create_tap("bad/name", "bgtestbr0", None).await.is_err());
            });
        });
        res.expect("netns");
    }
}
