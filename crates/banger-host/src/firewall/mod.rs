//! Per-VM NAT in one nftables table owned by banger.
//!
//! Table `ip banger` holds two base chains: `postrouting` (nat) with one
//! masquerade rule per VM, and `forward` (filter) with each VM's accept
//! rules in front of one rule that drops everything else from the bridge to
//! the uplink: a VM reaches the outside only while its NAT is on. Every
//! per-VM rule carries the comment `banger <tap>`, the key teardown finds
//! them by, so rules are removed by the same name that owns the tap.
//!
//! IPv4 forwarding is switched on only when banger needs it and was off;
//! a marker file records that banger did it, so the last NAT rule to go
//! switches it back off even across daemon restarts.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;

#[cfg(any(test, feature = "testing"))]
mod fake;
mod nft;
pub mod rules;

#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeFirewall, FirewallCall};
pub use nft::{Nft, default_route_iface};
pub use rules::{document, nat_commands, table_commands};

/// The one table banger owns (family `ip`).
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

/// What the NAT capability needs from the host.
#[async_trait]
pub trait Firewall: Send + Sync + std::fmt::Debug {
    /// Installs the VM's rules, replacing any it had; creates the table and
    /// switches forwarding on when needed.
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError>;
    /// Removes every rule tagged with `tap`; with none left, removes the
    /// table and the forwarding banger switched on. Idempotent.
    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError>;
    /// Taps that have rules now.
    async fn nat_taps(&self) -> Result<Vec<String>, FirewallError>;
    /// The interface of the default route, if any.
    async fn default_uplink(&self) -> Result<Option<String>, FirewallError>;
}

#[cfg(test)]
mod tests;
