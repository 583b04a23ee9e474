//! The guest's address, default route and MAC: set by banger-init before
//! any distro init runs, and by the agent when a VM restored from a
//! snapshot takes on its own identity. A static PID 1 has no `ip` and no
//! netlink library: the classic socket ioctls do what is needed (link up,
//! one address, one route, the hardware address).
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The guest's NIC (the kernel command line has `net.ifnames=0`).
pub const NIC: &str = "eth0";

/// The guest's address, as the daemon allocated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// What failed, with the interface and value in the message.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an interface name")]
    BadName(String),
    #[error("{0:?} is not a MAC address (six hex pairs)")]
    BadMac(String),
    #[error("socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("{what}: {source}")]
    Ioctl {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, NetError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(NetError::BadName(name.to_owned()));
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

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), NetError> {
    raw_ioctl(fd, request, arg).map_err(|source| NetError::Ioctl {
        what: what.to_owned(),
        source,
    })
}

fn link_up(fd: &OwnedFd, name: &str) -> Result<(), NetError> {
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

fn set_addr(fd: &OwnedFd, name: &str, a: &Address) -> Result<(), NetError> {
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

fn default_route(fd: &OwnedFd, gateway: Ipv4Addr) -> Result<(), NetError> {
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
        Err(source) => Err(NetError::Ioctl {
            what: format!("default route via {gateway}"),
            source,
        }),
    }
}

fn inet_socket() -> Result<OwnedFd, NetError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)
}

/// `lo` and the NIC up, the address, the default route. The NIC must
/// exist (its driver registered it).
pub fn configure(a: &Address) -> Result<(), NetError> {
    let fd = inet_socket()?;
    link_up(&fd, "lo")?;
    set_addr(&fd, NIC, a)?;
    link_up(&fd, NIC)?;
    if let Some(gw) = a.gateway {
        default_route(&fd, gw)?;
    }
    Ok(())
}

/// Parses `02:b6:01:23:45:67`.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(mac.to_owned());
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// Gives the NIC another hardware address. virtio-net changes it live
/// (and tells the device), so the link stays up.
pub fn set_mac(mac: &str) -> Result<(), NetError> {
    let bytes = parse_mac(mac)?;
    let fd = inet_socket()?;
    let mut req = ifreq_for(NIC)?;
    // SAFETY: the union's hwaddr member is a plain sockaddr; the kernel
    // reads sa_family (ARPHRD_ETHER) and the first six data bytes.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(bytes) {
            *d = s as libc::c_char;
        }
    }
    ioctl(
        &fd,
        libc::SIOCSIFHWADDR,
        &mut req,
        &format!("MAC {mac} on {NIC}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_mac("02:b6:01:23:45:6f").expect("mac"),
            [0x02, 0xb6, 0x01, 0x23, 0x45, 0x6f]
        );
        for bad in [
            "",
            "02:b6:01:23:45",
            "02:b6:01:23:45:67:89",
            "02:b6:01:23:45:zz",
            "2:b6:01:23:45:67",
        ] {
            let e = parse_mac(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn interface_names_are_bounded() {
        assert!(ifreq_for("eth0").is_ok());
        assert!(matches!(ifreq_for(""), Err(NetError::BadName(_))));
        assert!(matches!(
            ifreq_for("a-name-far-too-long"),
            Err(NetError::BadName(_))
        ));
    }
}
