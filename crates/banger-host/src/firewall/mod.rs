//! banger's packet filtering: per-VM NAT and the guard that confines
//! every guest, in nftables tables banger owns.
//!
//! Table `ip banger` has three base chains. `postrouting` (nat) holds one
//! masquerade per NAT VM; `forward` holds each NAT VM's accepts (out to
//! the uplink, never to link-local or the uplink's own networks; replies
//! back) in front of defaults that drop everything else from or to the
//! bridge; `input` holds each VM's accept for banger's DNS on the bridge
//! address in front of a default that drops every other packet a guest
//! sends the host, on any of its addresses (replies to what the host
//! opened pass). Table `bridge banger` checks frames as they enter the
//! bridge from a tap: a guest sends only with its own MAC and IPv4
//! address (ARP included), nothing else (IPv6 only when configured), and
//! frames between two taps are dropped unless VM-to-VM traffic is on.
//!
//! Every per-VM rule carries the comment `banger <tap>`, the key teardown
//! finds them by; default rules carry `banger default: …`. A table goes
//! with the last VM's rules, so a host without running VMs has none.
//!
//! IPv4 forwarding is switched on only when banger needs it and was off;
//! a marker file records that banger did it, so the last NAT rule to go
//! switches it back off even across daemon restarts.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;

#[cfg(any(test, feature = "testing"))]
mod fake;
pub mod guard;
mod nft;
pub mod rules;

#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeFirewall, FirewallCall};
pub use nft::{Nft, default_route_iface, uplink_networks};
pub use rules::{document, nat_commands, table_commands};

/// The name of banger's tables (families `ip` and `bridge`).
pub const TABLE: &str = "banger";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft ({}): {source}", bin.display())]
    Nft {
        bin: PathBuf,
        #[source]
        source: nftables::helper::NftablesError,
    },
    #[error("nft ({}): a blocking task: {source}", bin.display())]
    Task {
        bin: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no uplink for NAT: this host (namespace) has no default route; set network.uplink in the config"
    )]
    NoUplink,
    #[error("nft (banger-helper): {0}")]
    Helper(#[source] crate::remote::HelperError),
}

/// One VM's NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRule {
    /// The key: rules are tagged and removed by it.
    pub tap: String,
    pub guest_ip: Ipv4Addr,
    pub bridge: String,
    pub uplink: String,
}

/// One VM's guard: what its tap may send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Guard {
    /// The key: rules are tagged and removed by it.
    pub tap: String,
    /// The only source MAC its frames may carry (`02:b6:…`).
    pub mac: String,
    /// The only IPv4 source address its packets (and ARP) may carry.
    pub guest_ip: Ipv4Addr,
    pub bridge: String,
    /// Where banger's DNS answers: the one host address a guest reaches.
    pub bridge_ip: Ipv4Addr,
}

/// Host-wide switches of the guard, from the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardPolicy {
    /// VMs may reach each other, bridged and routed.
    pub vm_to_vm: bool,
    /// Guests may send IPv6 frames (with their own MAC).
    pub guest_ipv6: bool,
}

/// What the guard and the NAT capability need from the host.
#[async_trait]
pub trait Firewall: Send + Sync + std::fmt::Debug {
    /// Installs the VM's guard, replacing any it had; creates the tables
    /// and their defaults when needed.
    async fn add_guard(&self, guard: &Guard) -> Result<(), FirewallError>;
    /// Removes the guard rules tagged with `tap`; a table left with no
    /// VM's rules goes. Idempotent.
    async fn remove_guard(&self, tap: &str) -> Result<(), FirewallError>;
    /// Installs the VM's rules, replacing any it had; creates the table and
    /// switches forwarding on when needed.
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError>;
    /// Removes the NAT rules tagged with `tap`; with no NAT rule left,
    /// the forwarding banger switched on goes, and a table left with no
    /// VM's rules goes. Idempotent.
    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError>;
    /// Taps that have rules (guard or NAT) now.
    async fn tagged_taps(&self) -> Result<Vec<String>, FirewallError>;
    /// The interface of the default route, if any.
    async fn default_uplink(&self) -> Result<Option<String>, FirewallError>;
}

#[cfg(test)]
mod tests;
