//! The virtio-serial agent channel (QEMU guests): the port, and one
//! carrier per host connection ("epoch") for [`banger_agent_proto::mux`].
//!
//! virtio_console, while the host side is not connected: `read` returns 0
//! at once, `poll` says IN|HUP, `write` would block. A host connecting or
//! leaving wakes the port's wait queue. So an epoch ends at a `read` of 0
//! that still finds no host, and the next begins once `poll` shows no
//! HUP, checked after each wake.
//!
//! Why not an `AsyncFd` on the port: tokio keeps "read closed" and "write
//! closed" once seen (they are final for sockets), so after the first HUP
//! every readiness wait would return at once and the agent would spin.
//! Instead the port sits in two private epoll sets (edge-triggered; one
//! for input, one for output) and tokio watches those: an epoll fd only
//! ever says "readable", once per new edge, and never closes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use rustix::event::epoll;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Where the kernel lists virtio-serial ports.
pub const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The device of the port named `name` (`/dev/vportNpM`; devtmpfs makes
/// it, there is no udev this early), if the VM has one.
pub fn find_port(name: &str) -> Option<PathBuf> {
    find_port_in(Path::new(VIRTIO_PORTS), Path::new("/dev"), name)
}

/// [`find_port`] under other roots, for tests.
pub fn find_port_in(class: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(class).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|e| {
        let named = std::fs::read_to_string(e.path().join("name")).ok()?;
        (named.trim_end() == name).then(|| dev.join(e.file_name()))
    })
}

/// Waits for the port named `name` and returns its device.
///
/// virtio_console adds ports asynchronously: the driver binds, then asks
/// the host for its ports over a control queue, creates each device, and
/// only then learns its name (a later message, announced by a `change`
/// uevent). The agent starts right after switch_root, often before that.
/// So it listens to the kernel's uevents (the same multicast udev reads)
/// and looks again after each: subscribed before the first look, so no
/// event can fall between the look and the wait. Returns `Ok(None)` only
/// if the kernel has no virtio-serial at all (the class never appears and
/// no uevent comes for `max_quiet`).
pub async fn wait_port(name: &str, max_quiet: std::time::Duration) -> io::Result<Option<PathBuf>> {
    let uevents = Uevents::subscribe()?;
    loop {
        if let Some(p) = find_port(name).filter(|p| p.exists()) {
            return Ok(Some(p));
        }
        let has_class = Path::new(VIRTIO_PORTS).exists();
        match tokio::time::timeout(max_quiet, uevents.next()).await {
            Ok(r) => r?,
            // A VM with virtio-serial keeps the wait going: its port comes.
            Err(_) if has_class => {}
            Err(_) => return Ok(None),
        }
    }
}

/// A kernel uevent subscription (`NETLINK_KOBJECT_UEVENT`, group 1).
#[derive(Debug)]
struct Uevents {
    sock: AsyncFd<OwnedFd>,
}

impl Uevents {
    fn subscribe() -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
        let sock = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        rustix::net::bind(&sock, &netlink::SocketAddrNetlink::new(0, 1))?;
        #[allow(unsafe_code)]
        // SAFETY: the AsyncFd owns `sock` from here on and nothing else
        // closes or replaces it while it is registered.
        let sock = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }?;
        Ok(Self { sock })
    }

    /// Returns after one or more uevents (drained: only "something
    /// changed" matters, the caller looks at sysfs itself). A full
    /// receive queue (ENOBUFS) also means events came.
    async fn next(&self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        let mut got = false;
        loop {
            let mut guard = self.sock.readable().await?;
            loop {
                match rustix::net::recv(
                    self.sock.get_ref(),
                    &mut buf[..],
                    rustix::net::RecvFlags::empty(),
                ) {
                    Ok(_) | Err(Errno::NOBUFS) => got = true,
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

/// Wakes of the port's wait queue seen through one epoll set.
#[derive(Debug)]
struct Edges {
    epoll: AsyncFd<OwnedFd>,
    seen: AtomicU64,
}

impl Edges {
    fn new(port: &OwnedFd, events: epoll::EventFlags) -> io::Result<Self> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &ep,
            port,
            epoll::EventData::new_u64(0),
            events | epoll::EventFlags::ET,
        )?;
        #[allow(unsafe_code)]
        // SAFETY: `ep` is a valid descriptor that the AsyncFd owns from
        // here on; nothing closes or replaces it while it is registered
        // (it is only lent out through `get_ref` for epoll_wait).
        let epoll = unsafe { AsyncFd::register_with_interest(ep, Interest::READABLE) }?;
        Ok(Self {
            epoll,
            seen: AtomicU64::new(0),
        })
    }

    /// Ready once an edge came since the last call; the caller then
    /// retries its I/O (an edge after the drain re-arms the epoll fd, so
    /// none is lost between the drain and that retry).
    fn poll_edge(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = ready!(self.epoll.poll_read_ready(cx))?;
        let mut events = Vec::with_capacity(4);
        epoll::wait(
            self.epoll.get_ref(),
            rustix::buffer::spare_capacity(&mut events),
            Some(&Timespec::default()),
        )?;
        guard.clear_ready();
        self.seen.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// The guest's end of the agent's virtio-serial port, kept open across
/// host connections.
#[derive(Debug)]
pub struct Port {
    fd: OwnedFd,
    rx: Edges,
    tx: Edges,
}

impl Port {
    /// Opens the port (needs a tokio runtime).
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        Self::from_fd(fd)
    }

    /// Over a descriptor already open in non-blocking mode.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Arc<Self>> {
        use epoll::EventFlags as E;
        let rx = Edges::new(&fd, E::IN | E::RDHUP)?;
        let tx = Edges::new(&fd, E::OUT)?;
        Ok(Arc::new(Self { fd, rx, tx }))
    }

    /// No host is connected (the port polls HUP).
    fn hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN | PollFlags::OUT)];
        rustix::event::poll(&mut fds, Some(&Timespec::default()))?;
        Ok(fds[0].revents().contains(PollFlags::HUP))
    }

    /// Returns once a host is connected: at once if one is, else at the
    /// first wake that finds one (a connect makes the port writable).
    pub async fn wait_for_host(&self) -> io::Result<()> {
        loop {
            if !self.hung_up()? {
                return Ok(());
            }
            std::future::poll_fn(|cx| match (self.rx.poll_edge(cx), self.tx.poll_edge(cx)) {
                (Poll::Pending, Poll::Pending) => Poll::Pending,
                (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(())),
            })
            .await?;
        }
    }

    /// The carrier for the host connected now: reads end (0) when it
    /// leaves.
    pub fn epoch(self: &Arc<Self>) -> Epoch {
        Epoch { port: self.clone() }
    }

    /// Edges taken so far (both sets), to prove waits do not spin.
    pub fn edges_seen(&self) -> u64 {
        self.rx.seen.load(Ordering::Relaxed) + self.tx.seen.load(Ordering::Relaxed)
    }
}

/// One host connection's byte stream over the [`Port`].
#[derive(Debug)]
pub struct Epoch {
    port: Arc<Port>,
}

impl AsyncRead for Epoch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let port = &self.port;
        loop {
            let room = buf.initialize_unfilled();
            let asked = room.len();
            match rustix::io::read(port.fd.as_fd(), room) {
                // The host left while nothing was to be read, but one is
                // connected again already (a restore's stale "closed"
                // followed at once by the new host's "open"): the epoch
                // goes on, and the new host's SYNC re-syncs it. Ending it
                // would greet that host with "no sync here" after it had
                // synced, and drop its carrier.
                Ok(0) if asked > 0 && !port.hung_up()? => {}
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => ready!(port.rx.poll_edge(cx))?,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl AsyncWrite for Epoch {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let port = &self.port;
        loop {
            match rustix::io::write(port.fd.as_fd(), data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(Errno::INTR) => {}
                // No host, or the host has not taken what is queued.
                Err(Errno::AGAIN) => ready!(port.tx.poll_edge(cx))?,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A port has no half close; the mux never asks for one in the guest.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
