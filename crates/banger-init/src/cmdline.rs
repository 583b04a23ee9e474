//! What banger-init reads from the kernel command line.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Who is PID 1 once the root is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// Exec the image's `/sbin/init` (systemd) after starting the agent.
    Systemd,
    /// Stay PID 1: the image has no init of its own.
    Banger,
}

pub use banger_guest_net::Address;

#[derive(Debug)]
pub struct Cmdline {
    pub root: String,
    pub fstype: String,
    pub flags: String,
    pub read_only: bool,
    pub init: String,
    pub root_wait: Duration,
    /// `None`: the daemon passed no `banger.init=` (an older daemon):
    /// switch root to `init` and nothing else, as before.
    pub mode: Option<InitMode>,
    pub address: Option<Address>,
    pub hostname: Option<String>,
}

fn parse_addr(v: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = v.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((ip.parse().ok()?, prefix))
}

pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline {
        root: "/dev/vda".into(),
        fstype: "ext4".into(),
        flags: String::new(),
        read_only: false,
        init: "/sbin/init".into(),
        root_wait: Duration::from_secs(30),
        mode: None,
        address: None,
        hostname: None,
    };
    let mut gateway = None;
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some(("root", v)) => c.root = v.into(),
            Some(("rootfstype", v)) => c.fstype = v.into(),
            Some(("rootflags", v)) => c.flags = v.into(),
            Some(("init", v)) => c.init = v.into(),
            Some(("banger.rootwait", v)) => {
                if let Ok(s) = v.parse() {
                    c.root_wait = Duration::from_secs(s);
                }
            }
            Some(("banger.init", "systemd")) => c.mode = Some(InitMode::Systemd),
            Some(("banger.init", "banger")) => c.mode = Some(InitMode::Banger),
            Some(("banger.addr", v)) => {
                c.address = parse_addr(v).map(|(ip, prefix)| Address {
                    ip,
                    prefix,
                    gateway: None,
                });
            }
            Some(("banger.gw", v)) => gateway = v.parse().ok(),
            Some(("banger.hostname", v)) if !v.is_empty() => c.hostname = Some(v.into()),
            None if word == "ro" => c.read_only = true,
            None if word == "rw" => c.read_only = false,
            _ => {}
        }
    }
    if let Some(a) = &mut c.address {
        a.gateway = gateway;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = parse("console=ttyS0 quiet");
        assert_eq!(
            (c.root.as_str(), c.fstype.as_str(), c.init.as_str()),
            ("/dev/vda", "ext4", "/sbin/init")
        );
        assert!(!c.read_only);
        assert_eq!(c.mode, None);
        assert_eq!(c.address, None);
        let c = parse(
            "root=/dev/vdb rootfstype=xfs ro init=/bin/sh banger.rootwait=5 rootflags=noatime",
        );
        assert_eq!(c.root, "/dev/vdb");
        assert_eq!(c.fstype, "xfs");
        assert!(c.read_only);
        assert_eq!(c.init, "/bin/sh");
        assert_eq!(c.root_wait, Duration::from_secs(5));
        assert_eq!(c.flags, "noatime");
    }

    #[test]
    fn banger_parameters() {
        let c = parse(
            "banger.init=banger banger.addr=10.99.0.2/28 banger.gw=10.99.0.1 banger.hostname=web",
        );
        assert_eq!(c.mode, Some(InitMode::Banger));
        assert_eq!(
            c.address,
            Some(Address {
                ip: Ipv4Addr::new(10, 99, 0, 2),
                prefix: 28,
                gateway: Some(Ipv4Addr::new(10, 99, 0, 1)),
            })
        );
        assert_eq!(c.hostname.as_deref(), Some("web"));
        assert_eq!(parse("banger.init=systemd").mode, Some(InitMode::Systemd));
        for bad in [
            "banger.addr=10.0.0.2",
            "banger.addr=10.0.0.2/33",
            "banger.addr=x/24",
        ] {
            assert_eq!(parse(bad).address, None, "{bad}");
        }
        assert_eq!(parse("banger.init=runit").mode, None);
    }
}
