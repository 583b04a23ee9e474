//! The guest's address and default route, set before any distro init runs.
//! A static PID 1 has no `ip` and no netlink library: the classic socket
//! ioctls do what is needed (link up, one address, one route).
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::cmdline::Address;

/// The guest's NIC (the kernel command line has `net.ifnames=0`).
const NIC: &str = "eth0";
const NIC_WAIT: Duration = Duration::from_secs(10);

fn ifreq_for(name: &str) -> Result<libc::ifreq, String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(format!("{name:?} is not an interface name"));
    }
    // SAFETY: ifreq is plain old data (a name and a union of plain
    // values); all zeroes is a valid, empty request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // the kernel reads an AF_INET sockaddr as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn raw_ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the exclusively borrowed struct the request expects
    // (ifreq for SIOC[GS]IF*, rtentry for SIOCADDRT), alive for the call;
    // `fd` is an open socket.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    raw_ioctl(fd, request, arg).map_err(|e| format!("{what}: {e}"))
}

fn link_up(fd: &OwnedFd, name: &str) -> Result<(), String> {
    let mut req = ifreq_for(name)?;
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        &mut req,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS,
        &mut req,
        &format!("setting {name} up"),
    )
}

fn set_addr(fd: &OwnedFd, name: &str, a: &Address) -> Result<(), String> {
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(a.ip);
    ioctl(
        fd,
        libc::SIOCSIFADDR,
        &mut req,
        &format!("address {} on {name}", a.ip),
    )?;
    let mask = u32::MAX.checked_shl(32 - u32::from(a.prefix)).unwrap_or(0);
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(
        fd,
        libc::SIOCSIFNETMASK,
        &mut req,
        &format!("netmask /{} on {name}", a.prefix),
    )
}

fn default_route(fd: &OwnedFd, gateway: Ipv4Addr) -> Result<(), String> {
    // SAFETY: rtentry is plain old data; zeroes are "no value" for every
    // field left unset (metric, device, window).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    match raw_ioctl(fd, libc::SIOCADDRT, &mut rt) {
        Ok(()) => Ok(()),
        // The same route already there (a second run of this code) is fine.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(format!("default route via {gateway}: {e}")),
    }
}

/// `lo` and the NIC up, the address, the default route.
pub fn configure(a: &Address) -> Result<(), String> {
    // The driver (a module) registers the NIC shortly after loading;
    // nothing announces it without netlink, so its sysfs entry is looked
    // for until NIC_WAIT.
    crate::setup::wait_for(&format!("/sys/class/net/{NIC}"), NIC_WAIT)?;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    link_up(&fd, "lo")?;
    set_addr(&fd, NIC, a)?;
    link_up(&fd, NIC)?;
    if let Some(gw) = a.gateway {
        default_route(&fd, gw)?;
    }
    Ok(())
}
