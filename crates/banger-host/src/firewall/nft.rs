//! The real firewall: `nft` through its JSON API, and the forwarding
//! sysctl banger switches on for NAT.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nftables::schema::Nftables;

use super::rules::{
    DEFAULT_DROP, Listed, banger_table, delete_rules_of, delete_table, document, nat_commands,
    table_commands, tag, tagged_tap,
};
use super::{Firewall, FirewallError, NatRule};
use crate::layout::TapName;

pub(super) const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The real one: `nft` through the JSON API.
#[derive(Debug, Clone)]
pub struct Nft {
    pub bin: PathBuf,
    /// Present while forwarding is on because banger turned it on.
    pub forwarding_marker: PathBuf,
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

    /// The table's rules; `None` when the table does not exist. The whole
    /// `ip` ruleset is listed, which never fails for a missing table, so
    /// absence is read from the listing rather than from nft's complaint.
    pub(super) async fn listing(&self) -> Result<Option<Vec<Listed>>, FirewallError> {
        let bin = self.bin.clone();
        let doc: Nftables<'static> = tokio::task::spawn_blocking(move || {
            nftables::helper::get_current_ruleset_with_args(
                Some(bin.as_os_str()),
                ["list", "ruleset", "ip"],
            )
        })
        .await
        .map_err(self.task_err())?
        .map_err(self.nft_err())?;
        Ok(banger_table(&doc))
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
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        let existing = self.listing().await?;
        let mut cmds = table_commands(
            &rule.bridge,
            &rule.uplink,
            !existing
                .as_ref()
                .is_some_and(|r| r.iter().any(|l| l.comment == DEFAULT_DROP)),
        );
        if let Some(listing) = &existing {
            cmds.extend(delete_rules_of(listing, &rule.tap));
        }
        cmds.extend(nat_commands(rule));
        self.apply(cmds).await?;
        self.set_forwarding(true).await
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        let Some(existing) = self.listing().await? else {
            return self.set_forwarding(false).await;
        };
        let mine = tag(tap);
        let others = existing
            .iter()
            .any(|l| tagged_tap(&l.comment).is_some_and(TapName::is_banger) && l.comment != mine);
        let cmds = if others {
            delete_rules_of(&existing, tap)
        } else {
            vec![delete_table()]
        };
        if !cmds.is_empty() {
            self.apply(cmds).await?;
        }
        if !others {
            self.set_forwarding(false).await?;
        }
        Ok(())
    }

    async fn nat_taps(&self) -> Result<Vec<String>, FirewallError> {
        let mut taps: Vec<String> = self
            .listing()
            .await?
            .into_iter()
            .flatten()
            .filter_map(|l| tagged_tap(&l.comment).map(str::to_owned))
            .filter(|t| TapName::is_banger(t))
            .collect();
        taps.sort();
        taps.dedup();
        Ok(taps)
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        let path = Path::new("/proc/net/route");
        let text = std::fs::read_to_string(path).map_err(|source| FirewallError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(default_route_iface(&text))
    }
}

/// The interface of the first default route in `/proc/net/route`.
pub fn default_route_iface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}
