//! The files banger writes into a VM's root disk at every start: identity
//! (hostname, hosts), network (resolv.conf, the address unit), sshd
//! hardening and banger's key, and the agent with its unit. The templates
//! are files beside this module, so they read as what the guest gets.

use std::net::Ipv4Addr;

use banger_host::disk::GuestEntry;

/// Where the guest agent lives in every VM's root disk.
pub const AGENT_PATH: &str = "/usr/local/sbin/banger-agent";

/// The agent's unit, for kernels that boot without banger's initramfs
/// (banger-init starts the agent itself otherwise, and leaves
/// `/run/banger/early`, which makes this unit skip): early (no default
/// dependencies), but after the local filesystems (the work disk at
/// /root) and the network, so that "ready" means commands find /root and
/// the bridge.
pub const AGENT_UNIT: &str = include_str!("banger-agent.service");

/// banger's public key; the sshd drop-in reads it beside the user's own
/// `~/.ssh/authorized_keys` on the work disk, which banger never touches.
pub const AUTHORIZED_KEYS: &str = "/etc/ssh/banger_authorized_keys";

/// The hardened sshd drop-in every guest gets: banger VMs are single-user
/// root sandboxes reachable only over the host bridge, so key-only root
/// login, every password path closed, and the key file pinned to the one
/// banger writes.
pub const SSHD_DROP_IN: &str = include_str!("99-banger.conf");

const NET_UNIT: &str = include_str!("banger-net.service");
/// Images carry no ssh host keys (clones would share them): each VM makes
/// its own on first boot, before sshd starts.
const HOSTKEYS_UNIT: &str = include_str!("banger-hostkeys.service");
const FSTAB: &str = include_str!("fstab");

const UNITS: &str = "/etc/systemd/system";
/// Every directory the entries below write into, parents first.
const PARENTS: &[&str] = &[
    "/etc",
    "/etc/systemd",
    UNITS,
    WANTS,
    "/etc/ssh",
    "/etc/ssh/sshd_config.d",
    "/usr",
    "/usr/local",
    "/usr/local/sbin",
];
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

/// What the guest files say about one VM.
#[derive(Debug)]
pub struct GuestConfig<'a> {
    pub hostname: &'a str,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The bridge address: gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// The agent binary, written at every start and never baked into the
    /// shared image, so it always matches the daemon that talks to it.
    pub agent: Vec<u8>,
    pub authorized_key: &'a str,
}

fn file(path: &str, contents: String) -> GuestEntry {
    GuestEntry::File {
        path: path.into(),
        mode: 0o644,
        contents: contents.into_bytes(),
    }
}

/// A unit file and the symlink that enables it.
fn enabled_unit(name: &str, contents: String) -> [GuestEntry; 2] {
    let path = format!("{UNITS}/{name}");
    [
        file(&path, contents),
        GuestEntry::Symlink {
            path: format!("{WANTS}/{name}"),
            target: path,
        },
    ]
}

/// The entries, in the order they are written.
pub fn entries(cfg: GuestConfig<'_>) -> Vec<GuestEntry> {
    let name = cfg.hostname;
    let net_unit = NET_UNIT
        .replace("@ADDRESS@", &format!("{}/{}", cfg.ip, cfg.prefix_len))
        .replace("@GATEWAY@", &cfg.gateway.to_string());
    // debugfs makes only the last component of a path: every directory a
    // file below needs, for images that lack them (a busybox tree has no
    // /etc/systemd or /usr/local). Existing ones keep their content.
    let mut out: Vec<GuestEntry> = PARENTS
        .iter()
        .map(|p| GuestEntry::Dir {
            path: (*p).into(),
            mode: 0o755,
        })
        .collect();
    out.extend([
        file("/etc/hostname", format!("{name}\n")),
        file(
            "/etc/hosts",
            format!(
                "127.0.0.1 localhost\n127.0.1.1 {name}\n{ip} {name}.vm {name}\n",
                ip = cfg.ip
            ),
        ),
        file(
            "/etc/resolv.conf",
            format!("nameserver {}\nsearch vm\n", cfg.gateway),
        ),
        file("/etc/fstab", FSTAB.into()),
    ]);
    out.extend(enabled_unit("banger-net.service", net_unit));
    out.extend(enabled_unit(
        "banger-hostkeys.service",
        HOSTKEYS_UNIT.into(),
    ));
    out.extend([
        file("/etc/ssh/sshd_config.d/99-banger.conf", SSHD_DROP_IN.into()),
        file(AUTHORIZED_KEYS, format!("{}\n", cfg.authorized_key)),
        GuestEntry::File {
            path: AGENT_PATH.into(),
            mode: 0o755,
            contents: cfg.agent,
        },
    ]);
    out.extend(enabled_unit("banger-agent.service", AGENT_UNIT.into()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(entries: &[GuestEntry], path: &str) -> String {
        entries
            .iter()
            .find_map(|e| match e {
                GuestEntry::File {
                    path: p, contents, ..
                } if p == path => Some(String::from_utf8_lossy(contents).into_owned()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn templates_are_filled_and_every_unit_is_enabled() {
        let e = entries(GuestConfig {
            hostname: "web",
            ip: Ipv4Addr::new(10, 99, 0, 2),
            prefix_len: 28,
            gateway: Ipv4Addr::new(10, 99, 0, 1),
            agent: b"agent".to_vec(),
            authorized_key: "ssh-ed25519 AAAA banger",
        });
        let net = text(&e, "/etc/systemd/system/banger-net.service");
        assert!(
            net.contains("ip addr replace 10.99.0.2/28 dev eth0"),
            "{net}"
        );
        assert!(net.contains("route replace default via 10.99.0.1"), "{net}");
        assert!(!net.contains('@'), "{net}");
        for unit in ["banger-net", "banger-agent"] {
            let text = text(&e, &format!("/etc/systemd/system/{unit}.service"));
            assert!(
                text.contains("ConditionPathExists=!/run/banger/early"),
                "{unit} must skip when banger-init did its job: {text}"
            );
        }
        assert_eq!(text(&e, "/etc/hostname"), "web\n");
        // Every file's directory is made before it, for trees without them.
        let mut made = std::collections::HashSet::new();
        for entry in &e {
            let path = match entry {
                GuestEntry::Dir { path, .. } => {
                    made.insert(path.clone());
                    continue;
                }
                GuestEntry::File { path, .. } | GuestEntry::Symlink { path, .. } => path,
            };
            let parent = std::path::Path::new(path).parent().expect("parent");
            assert!(
                parent == std::path::Path::new("/")
                    || made.contains(parent.to_str().expect("utf8")),
                "{path}: its directory comes first"
            );
        }
        assert_eq!(
            text(&e, "/etc/resolv.conf"),
            "nameserver 10.99.0.1\nsearch vm\n"
        );
        for unit in ["banger-net", "banger-hostkeys", "banger-agent"] {
            assert!(
                e.iter()
                    .any(|x| matches!(x, GuestEntry::Symlink { path, target }
                if path.ends_with(&format!("{unit}.service")) && target.starts_with(UNITS))),
                "{unit}"
            );
        }
    }
}
