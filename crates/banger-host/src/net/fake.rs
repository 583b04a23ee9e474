//! A recording fake: keeps a set of links and every call made.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{LinkInfo, NetError, NetOps};

/// One recorded [`NetOps`] change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCall {
    EnsureBridge {
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    CreateTap {
        name: String,
        bridge: String,
        owner: Option<(u32, u32)>,
    },
    DeleteLink {
        name: String,
    },
}

/// How the calls read in [`FakeNet::recorded`].
impl std::fmt::Display for NetCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetCall::EnsureBridge { name, addr, prefix } => {
                write!(f, "ensure_bridge {name} {addr}/{prefix}")
            }
            NetCall::CreateTap {
                name,
                bridge,
                owner: Some((uid, gid)),
            } => write!(f, "create_tap {name} {bridge} owner {uid}:{gid}"),
            NetCall::CreateTap {
                name,
                bridge,
                owner: None,
            } => write!(f, "create_tap {name} {bridge}"),
            NetCall::DeleteLink { name } => write!(f, "delete_link {name}"),
        }
    }
}

/// A recording fake: keeps a set of links and every call made.
#[derive(Debug, Default)]
pub struct FakeNet {
    pub links: Mutex<BTreeSet<String>>,
    /// The bridge each enslaved link is on (taps made here, and any a
    /// test puts on another bridge).
    pub masters: Mutex<std::collections::BTreeMap<String, String>>,
    pub calls: Mutex<Vec<NetCall>>,
    /// Link names whose creation or deletion fails.
    pub failing: Mutex<BTreeSet<String>>,
}

impl FakeNet {
    fn record(&self, c: NetCall) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// Every change asked for, in order.
    pub fn calls(&self) -> Vec<NetCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`FakeNet::calls`] as text, for tests that still read it so.
    pub fn recorded(&self) -> Vec<String> {
        self.calls().iter().map(ToString::to_string).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn check(&self, op: &'static str, name: &str) -> Result<(), NetError> {
        if self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
        {
            return Err(NetError::Io {
                op,
                link: name.to_owned(),
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl NetOps for FakeNet {
    async fn ensure_bridge(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        self.record(NetCall::EnsureBridge {
            name: name.to_owned(),
            addr,
            prefix,
        });
        self.check("creating bridge", name)?;
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        Ok(())
    }

    async fn create_tap(
        &self,
        name: &str,
        bridge: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), NetError> {
        self.record(NetCall::CreateTap {
            name: name.to_owned(),
            bridge: bridge.to_owned(),
            owner,
        });
        self.check("creating tap", name)?;
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        self.masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), bridge.to_owned());
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        self.record(NetCall::DeleteLink {
            name: name.to_owned(),
        });
        self.check("deleting", name)?;
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    async fn list_links(&self) -> Result<Vec<LinkInfo>, NetError> {
        let masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|n| LinkInfo {
                name: n.clone(),
                master: masters.get(n).cloned(),
            })
            .collect())
    }
}
