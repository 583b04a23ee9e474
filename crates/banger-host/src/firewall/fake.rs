//! A recording fake: rules by tap, forwarding as a flag.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, Guard, NatRule};

/// One recorded [`Firewall`] change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCall {
    AddGuard(Guard),
    RemoveGuard { tap: String },
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
            FirewallCall::AddGuard(g) => {
                write!(f, "add_guard {} {} {}", g.tap, g.mac, g.guest_ip)
            }
            FirewallCall::RemoveGuard { tap } => write!(f, "remove_guard {tap}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct FakeFirewall {
    pub calls: Mutex<Vec<FirewallCall>>,
    pub rules: Mutex<Vec<NatRule>>,
    pub guards: Mutex<Vec<Guard>>,
    pub forwarding: Mutex<bool>,
    pub uplink: Mutex<Option<String>>,
    /// When set, `remove_nat` fails with this message.
    pub fail_remove: Mutex<Option<String>>,
    /// When set, `add_guard` fails with this message.
    pub fail_guard: Mutex<Option<String>>,
}

impl FakeFirewall {
    pub fn with_uplink(uplink: &str) -> Self {
        let f = Self::default();
        *f.uplink.lock().unwrap_or_else(|p| p.into_inner()) = Some(uplink.to_owned());
        f
    }

    /// Whether `tap` has a guard now.
    pub fn guarded(&self, tap: &str) -> bool {
        self.guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|g| g.tap == tap)
    }

    /// Every NAT change asked for, in order (the guard's calls left out).
    pub fn nat_calls(&self) -> Vec<FirewallCall> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, FirewallCall::AddNat(_) | FirewallCall::RemoveNat { .. }))
            .collect()
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

/// The error a test armed, if it did.
fn injected(slot: &Mutex<Option<String>>) -> Result<(), FirewallError> {
    match slot.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        Some(m) => Err(FirewallError::Io {
            path: "fake-nft".into(),
            source: std::io::Error::other(m),
        }),
        None => Ok(()),
    }
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn add_guard(&self, guard: &Guard) -> Result<(), FirewallError> {
        self.record(FirewallCall::AddGuard(guard.clone()));
        injected(&self.fail_guard)?;
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        guards.retain(|g| g.tap != guard.tap);
        guards.push(guard.clone());
        Ok(())
    }

    async fn remove_guard(&self, tap: &str) -> Result<(), FirewallError> {
        self.record(FirewallCall::RemoveGuard { tap: tap.into() });
        self.guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|g| g.tap != tap);
        Ok(())
    }

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
        injected(&self.fail_remove)?;
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.retain(|r| r.tap != tap);
        if rules.is_empty() {
            *self.forwarding.lock().unwrap_or_else(|p| p.into_inner()) = false;
        }
        Ok(())
    }

    async fn tagged_taps(&self) -> Result<Vec<String>, FirewallError> {
        let mut taps: Vec<String> = self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.tap.clone())
            .chain(
                self.guards
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|g| g.tap.clone()),
            )
            .collect();
        taps.sort();
        taps.dedup();
        Ok(taps)
    }

    async fn default_uplink(&self) -> Result<Option<String>, FirewallError> {
        Ok(self
            .uplink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
}
