//! What requests may name: everything the helper does stays inside what
//! banger owns (its bridge, its taps, its VMs' files).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::proto::HelperRequest;
use crate::jail::lexically_beneath;
use crate::layout::{LayoutError, TapName, VmLayout, check_ifname, check_vm_id};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("refused: {0}")]
    Name(#[source] LayoutError),
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
    /// The daemon's group: the only group a tap may be given.
    pub daemon_gid: u32,
    /// The configured NAT uplink; `None`: the default route's interface,
    /// read when a request names one.
    pub uplink: Option<String>,
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError::Refused(msg.into()))
}

/// The shape of every tap banger makes, `bg-<12 lowercase hex>` (the VM
/// id's start).
fn tap_shape(name: &str) -> Result<TapName, PolicyError> {
    TapName::parse(name).map_err(PolicyError::Name)
}

fn plain_ifname(what: &str, n: &str) -> Result<(), PolicyError> {
    check_ifname(what, n).map_err(PolicyError::Name)
}

/// A unicast, locally administered MAC (`02:b6:…` for banger's guests):
/// never a multicast or another vendor's address.
fn guest_mac(mac: &str) -> Result<(), PolicyError> {
    let octets: Vec<Option<u8>> = mac
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect();
    match octets.first() {
        Some(Some(first)) if octets.len() == 6 && octets.iter().all(Option::is_some) => {
            if first & 0x03 == 0x02 {
                Ok(())
            } else {
                refuse(format!(
                    "MAC {mac} is not a unicast, locally administered address"
                ))
            }
        }
        _ => refuse(format!("{mac:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")),
    }
}

impl Policy {
    /// NAT leaves only through the configured uplink, or the default
    /// route's interface when none is configured: never through an
    /// interface the daemon picks.
    fn uplink_is_ours(&self, uplink: &str) -> Result<(), PolicyError> {
        let allowed = match &self.uplink {
            Some(u) => Some(u.clone()),
            None => std::fs::read_to_string("/proc/net/route")
                .ok()
                .and_then(|t| crate::firewall::default_route_iface(&t)),
        };
        match allowed {
            Some(a) if a == uplink => Ok(()),
            Some(a) => refuse(format!(
                "uplink {uplink:?} is not the configured or default-route interface ({a:?})"
            )),
            None => refuse(format!(
                "uplink {uplink:?}: no network.uplink is configured and this host has no default route"
            )),
        }
    }

    fn bridge(&self, name: &str) -> Result<(), PolicyError> {
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
    fn tap(&self, name: &str) -> Result<(), PolicyError> {
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
    fn vm(&self, id: &str) -> Result<PathBuf, PolicyError> {
        check_vm_id(id).map_err(PolicyError::Name)?;
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

    fn path_in(&self, what: &str, path: &Path, dir: &Path) -> Result<(), PolicyError> {
        match lexically_beneath(dir, path) {
            Some(_) => Ok(()),
            None => refuse(format!(
                "{what} {} is outside {}",
                path.display(),
                dir.display()
            )),
        }
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> Result<(), PolicyError> {
        let subnet = ipnet::Ipv4Net::new(self.bridge_ip, self.prefix_len).map(|n| n.trunc());
        if subnet.is_ok_and(|n| n.contains(&ip)) && ip != self.bridge_ip {
            Ok(())
        } else {
            refuse(format!(
                "{ip} is not a guest address in {}/{}",
                self.bridge_ip, self.prefix_len
            ))
        }
    }

    /// Whether `req` stays inside what banger owns.
    pub fn check(&self, req: &HelperRequest) -> Result<(), PolicyError> {
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
                    Some((_, gid)) if *gid != self.daemon_gid => refuse(format!(
                        "a tap may be given the daemon's group {} only, not {gid}",
                        self.daemon_gid
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
                plain_ifname("uplink", uplink)?;
                self.uplink_is_ours(uplink)
            }
            HelperRequest::AddGuard(g) => {
                self.tap(&g.tap)?;
                self.bridge(&g.bridge)?;
                self.in_subnet(g.guest_ip)?;
                if g.bridge_ip != self.bridge_ip {
                    return refuse(format!(
                        "bridge address {} is not the configured {}",
                        g.bridge_ip, self.bridge_ip
                    ));
                }
                guest_mac(&g.mac)
            }
            HelperRequest::RemoveGuard { tap } | HelperRequest::RemoveNat { tap } => {
                plain_ifname("tap", tap)?;
                tap_shape(tap).map(drop)
            }
            HelperRequest::ListLinks | HelperRequest::TaggedTaps | HelperRequest::DefaultUplink => {
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
                check_vm_id(vm_id).map_err(PolicyError::Name)
            }
        }
    }
}
