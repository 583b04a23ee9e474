//! The real firewall: `nft` through its JSON API, and the forwarding
//! sysctl banger switches on for NAT.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nftables::schema::Nftables;

use nftables::types::NfFamily;

use super::guard::{
    BRIDGE_CHAINS, IP_CHAINS, bridge_defaults, bridge_table_commands, guard_commands,
};
use super::rules::{
    Listed, NAT_CHAINS, banger_table, delete_rules_of, delete_table, document, holds_vm_rules,
    ip_defaults, nat_commands, reconcile_defaults, table_commands, tagged_tap,
};
use super::{Firewall, FirewallError, Guard, GuardPolicy, NatRule};
use crate::layout::TapName;

/// Never reached through NAT, whatever the uplink: link-local, where a
/// cloud host's metadata service answers (169.254.169.254).
const LINK_LOCAL: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(169, 254, 0, 0), 16);

pub(super) const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The real one: `nft` through the JSON API.
#[derive(Debug, Clone)]
pub struct Nft {
    pub bin: PathBuf,
    /// Present while forwarding is on because banger turned it on.
    pub forwarding_marker: PathBuf,
    pub policy: GuardPolicy,
    /// Every change lists, then applies: one at a time, or two VMs going
    /// at once both see the other's rules (and the table stays), or one
    /// deletes the table under the other's deletes (and nft fails).
    serial: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Nft {
    pub fn new(bin: impl Into<PathBuf>, forwarding_marker: PathBuf, policy: GuardPolicy) -> Self {
        Self {
            bin: bin.into(),
            forwarding_marker,
            policy,
            serial: Default::default(),
        }
    }
}

impl Nft {
    fn nft_err(&self) -> impl FnOnce(nftables::helper::NftablesError) -> FirewallError + '_ {
        |source| FirewallError::Nft {
            bin: self.bin.clone(),
            source,
        }
    }

    fn task_err(&self) -> impl FnOnce(tokio::task::JoinError) -> FirewallError + '_ {
        |source| FirewallError::Task {
            bin: self.bin.clone(),
            source,
        }
    }

    async fn apply(
        &self,
        cmds: Vec<nftables::schema::NfCmd<'static>>,
    ) -> Result<(), FirewallError> {
        let doc = document(cmds);
        let bin = self.bin.clone();
        tokio::task::spawn_blocking(move || {
            nftables::helper::apply_ruleset_with_args(
                &doc,
                Some(bin.as_os_str()),
                nftables::helper::DEFAULT_ARGS,
            )
        })
        .await
        .map_err(self.task_err())?
        .map_err(self.nft_err())
    }

    /// The rules of banger's table of `family`; `None` when the table does
    /// not exist. The family's whole ruleset is listed, which never fails
    /// for a missing table, so absence is read from the listing rather
    /// than from nft's complaint.
    pub(super) async fn listing(
        &self,
        family: NfFamily,
    ) -> Result<Option<Vec<Listed>>, FirewallError> {
        let bin = self.bin.clone();
        let which = match family {
            NfFamily::Bridge => "bridge",
            _ => "ip",
        };
        let doc: Nftables<'static> = tokio::task::spawn_blocking(move || {
            nftables::helper::get_current_ruleset_with_args(
                Some(bin.as_os_str()),
                ["list", "ruleset", which],
            )
        })
        .await
        .map_err(self.task_err())?
        .map_err(self.nft_err())?;
        Ok(banger_table(&doc, family))
    }

    /// The `ip` table, its chains and defaults, as they must be now.
    fn ip_table(
        &self,
        bridge: &str,
        listing: Option<&[Listed]>,
    ) -> Vec<nftables::schema::NfCmd<'static>> {
        let mut cmds = table_commands();
        cmds.extend(reconcile_defaults(
            listing,
            &ip_defaults(bridge, self.policy),
        ));
        cmds
    }

    /// Removes `tap`'s rules in `chains` of the `family` table; the table
    /// goes when no VM's rules are left in it. Returns the listing it
    /// acted on (from before the removal), `None` with no table.
    async fn remove_tagged(
        &self,
        family: NfFamily,
        tap: &str,
        chains: &[&str],
    ) -> Result<Option<Vec<Listed>>, FirewallError> {
        let Some(existing) = self.listing(family).await? else {
            return Ok(None);
        };
        let cmds = if holds_vm_rules(&existing, Some((tap, chains))) {
            delete_rules_of(family, &existing, tap, chains)
        } else {
            vec![delete_table(family)]
        };
        if !cmds.is_empty() {
            self.apply(cmds).await?;
        }
        Ok(Some(existing))
    }

    /// Switches forwarding on (recording that banger did) or back off
    /// (only if banger did), off the async workers.
    async fn set_forwarding(&self, on: bool) -> Result<(), FirewallError> {
        let marker = self.forwarding_marker.clone();
        tokio::task::spawn_blocking(move || set_forwarding(&marker, Path::new(IP_FORWARD), on))
            .await
            .map_err(self.task_err())?
    }
}

fn set_forwarding(marker: &Path, sysctl: &Path, on: bool) -> Result<(), FirewallError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FirewallError::Io { path, source }
    };
    let current = std::fs::read_to_string(sysctl).map_err(io(sysctl))?;
    if on && current.trim() == "0" {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        // Marker first: a crash in between leaves banger owning it.
        std::fs::write(marker, "banger enabled net.ipv4.ip_forward\n").map_err(io(marker))?;
        std::fs::write(sysctl, "1\n").map_err(io(sysctl))?;
    } else if !on && marker.exists() {
        std::fs::write(sysctl, "0\n").map_err(io(sysctl))?;
        std::fs::remove_file(marker).map_err(io(marker))?;
    }
    Ok(())
}

#[async_trait]
impl Firewall for Nft {
    async fn add_guard(&self, g: &Guard) -> Result<(), FirewallError> {
        let _one = self.serial.lock().await;
        let ip = self.listing(NfFamily::IP).await?;
        let br = self.listing(NfFamily::Bridge).await?;
        let mut cmds = self.ip_table(&g.bridge, ip.as_deref());
        cmds.extend(bridge_table_commands());
        cmds.extend(reconcile_defaults(
            br.as_deref(),
            &bridge_defaults(self.policy),
        ));
        if let Some(l) = &ip {
            cmds.extend(delete_rules_of(NfFamily::IP, l, &g.tap, &IP_CHAINS));
        }
        if let Some(l) = &br {
            cmds.extend(delete_rules_of(NfFamily::Bridge, l, &g.tap, &BRIDGE_CHAINS));
        }
        cmds.extend(guard_commands(g, self.policy));
        self.apply(cmds).await
    }

    async fn remove_guard(&self, tap: &str) -> Result<(), FirewallError> {
        let _one = self.serial.lock().await;
        self.remove_tagged(NfFamily::Bridge, tap, &BRIDGE_CHAINS)
            .await?;
        self.remove_tagged(NfFamily::IP, tap, &IP_CHAINS).await?;
        Ok(())
    }

    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        let _one = self.serial.lock().await;
        let existing = self.listing(NfFamily::IP).await?;
        let mut cmds = self.ip_table(&rule.bridge, existing.as_deref());
        if let Some(listing) = &existing {
            cmds.extend(delete_rules_of(
                NfFamily::IP,
                listing,
                &rule.tap,
                &NAT_CHAINS,
            ));
        }
        let mut deny = vec![LINK_LOCAL];
        deny.extend(uplink_networks(&read_routes()?, &rule.uplink));
        cmds.extend(nat_commands(rule, &deny));
        self.apply(cmds).await?;
        self.set_forwarding(true).await
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        let _one = self.serial.lock().await;
        let before = self.remove_tagged(NfFamily::IP, tap, &NAT_CHAINS).await?;
        // Forwarding is NAT's: it goes with the last masquerade. Changes
        // are one at a time, so the listing read for the removal tells.
        let nat_left = before.is_some_and(|l| {
            l.iter().any(|r| {
                r.chain == "postrouting"
                    && tagged_tap(&r.comment).is_some_and(|t| TapName::is_banger(t) && t != tap)
            })
        });
        if !nat_left {
            self.set_forwarding(false).await?;
        }
        Ok(())
    }

    async fn tagged_taps(&self) -> Result<Vec<String>, FirewallError> {
        let mut taps = Vec::new();
        for family in [NfFamily::IP, NfFamily::Bridge] {
            taps.extend(
                self.listing(family)
                    .await?
                    .into_iter()
                    .flatten()
                    .filter_map(|l| tagged_tap(&l.comment).map(str::to_owned))
                    .filter(|t| TapName::is_banger(t)),
            );
        }
        taps.sort();
        taps.dedup();
        Ok(taps)
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        Ok(default_route_iface(&read_routes()?))
    }
}

fn read_routes() -> Result<String, FirewallError> {
    let path = Path::new("/proc/net/route");
    std::fs::read_to_string(path).map_err(|source| FirewallError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The networks `uplink` is directly on (its LAN): routes through it
/// without a gateway, from `/proc/net/route` (little-endian hex).
pub fn uplink_networks(route_table: &str, uplink: &str) -> Vec<(std::net::Ipv4Addr, u8)> {
    // The kernel prints each address as its bytes read as a native u32.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let mut nets: Vec<_> = route_table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() <= 7 || f[0] != uplink || f[2] != "00000000" {
                return None;
            }
            let (dest, mask) = (hex(f[1])?, hex(f[7])?);
            (mask != 0).then(|| {
                (
                    std::net::Ipv4Addr::from(dest.to_ne_bytes()),
                    mask.count_ones() as u8,
                )
            })
        })
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// The interface of the first default route in `/proc/net/route`.
pub fn default_route_iface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}
