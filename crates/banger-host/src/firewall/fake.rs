//! A recording fake: rules by tap, forwarding as a flag.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, NatRule};

/// One recorded [`Firewall`] change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    AddNat(NatRule),
    RemoveNat { tap: String },
}

/// How the calls read in [`FakeFirewall::recorded`].
impl std::fmt::Display for FirewallCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FirewallCall::AddNat(r) => {
                write!(f, "add_nat {} {} via {}", r.tap, r.guest_ip, r.uplink)
            }
            FirewallCall::RemoveNat { tap } => write!(f, "remove_nat {tap}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct FakeFirewall {
    pub calls: Mutex<Vec<FirewallCall>>,
    pub rules: Mutex<Vec<NatRule>>,
    pub forwarding: Mutex<bool>,
    pub uplink: Mutex<Option<String>>,
    /// When set, `remove_nat` fails with this message.
    pub fail_remove: Mutex<Option<String>>,
}

impl FakeFirewall {
    pub fn with_uplink(uplink: &str) -> Self {
        let f = Self::default();
        *f.uplink.lock().unwrap_or_else(|p| p.into_inner()) = Some(uplink.to_owned());
        f
    }

    /// Every change asked for, in order.
    pub fn calls(&self) -> Vec<FirewallCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`FakeFirewall::calls`] as text, for tests that still read it so.
    pub fn recorded(&self) -> Vec<String> {
        self.calls().iter().map(ToString::to_string).collect()
    }

    pub fn has(&self, tap: &str) -> bool {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.tap == tap)
    }

    fn record(&self, c: FirewallCall) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        self.record(FirewallCall::AddNat(rule.clone()));
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.retain(|r| r.tap != rule.tap);
        rules.push(rule.clone());
        *self.forwarding.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(())
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        self.record(FirewallCall::RemoveNat { tap: tap.into() });
        if let Some(m) = self
            .fail_remove
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(FirewallError::Io {
                path: "fake-nft".into(),
                source: std::io::Error::other(m),
            });
        }
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.retain(|r| r.tap != tap);
        if rules.is_empty() {
            *self.forwarding.lock().unwrap_or_else(|p| p.into_inner()) = false;
        }
        Ok(())
    }

    async fn nat_taps(&self) -> Result<Vec<String>, FirewallError> {
        Ok(self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.tap.clone())
            .collect())
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        Ok(self
            .uplink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
}
