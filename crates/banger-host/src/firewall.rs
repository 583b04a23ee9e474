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
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::layout::TapName;
use nftables::schema::{NfListObject, NfObject, Nftables};
use serde_json::{Value, json};

/// The one table banger owns (family `ip`).
pub const TABLE: &str = "banger";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft ({bin}): {message}")]
    Nft { bin: PathBuf, message: String },
    #[error("{path}: {source}")]
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

fn tag(tap: &str) -> String {
    format!("banger {tap}")
}

/// The tap a rule's comment names, if it is a per-VM tag.
fn tagged_tap(comment: &str) -> Option<&str> {
    comment.strip_prefix("banger ")
}

/// The comment of the one rule that is not a VM's.
const DEFAULT_DROP: &str = "banger default: no nat, no way out";

/// Deletes, by handle, every rule of `listing` tagged for `tap`.
fn delete_rules_of(listing: &[(u32, String, String)], tap: &str) -> Vec<Value> {
    let mine = tag(tap);
    listing
        .iter()
        .filter(|(_, _, c)| *c == mine)
        .map(|(handle, chain, _)| {
            json!({ "delete": { "rule": {
                "family": "ip", "table": TABLE, "chain": chain, "handle": handle, "expr": [],
            } } })
        })
        .collect()
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

/// The real one: `nft` through the JSON API.
#[derive(Debug, Clone)]
pub struct Nft {
    pub bin: PathBuf,
    /// Present while forwarding is on because banger turned it on.
    pub forwarding_marker: PathBuf,
}

/// The rules of one VM, as nft JSON commands.
pub fn nat_commands(rule: &NatRule) -> Vec<Value> {
    let comment = tag(&rule.tap);
    let ip = rule.guest_ip.to_string();
    let field = |f: &str| json!({ "payload": { "protocol": "ip", "field": f } });
    let meta = |k: &str| json!({ "meta": { "key": k } });
    let eq = |left: Value, right: Value| json!({ "match": { "op": "==", "left": left, "right": right } });
    let rule_in = |chain: &str, expr: Vec<Value>| {
        json!({ "insert": { "rule": {
            "family": "ip", "table": TABLE, "chain": chain, "expr": expr, "comment": comment,
        } } })
    };
    vec![
        rule_in(
            "postrouting",
            vec![
                eq(field("saddr"), json!(ip)),
                eq(meta("oifname"), json!(rule.uplink)),
                json!({ "counter": null }),
                json!({ "masquerade": null }),
            ],
        ),
        rule_in(
            "forward",
            vec![
                eq(field("saddr"), json!(ip)),
                eq(meta("iifname"), json!(rule.bridge)),
                eq(meta("oifname"), json!(rule.uplink)),
                json!({ "accept": null }),
            ],
        ),
        rule_in(
            "forward",
            vec![
                eq(field("daddr"), json!(ip)),
                eq(meta("iifname"), json!(rule.uplink)),
                eq(meta("oifname"), json!(rule.bridge)),
                json!({ "match": { "op": "in", "left": { "ct": { "key": "state" } }, "right": ["established", "related"] } }),
                json!({ "accept": null }),
            ],
        ),
    ]
}

/// The table and its chains (idempotent `add`s), and the default drop
/// from `bridge` to `uplink` that per-VM accepts are inserted before.
pub fn table_commands(bridge: &str, uplink: &str, with_drop: bool) -> Vec<Value> {
    let mut cmds = vec![
        json!({ "add": { "table": { "family": "ip", "name": TABLE } } }),
        json!({ "add": { "chain": { "family": "ip", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept" } } }),
        json!({ "add": { "chain": { "family": "ip", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept" } } }),
    ];
    if with_drop {
        cmds.push(json!({ "add": { "rule": {
            "family": "ip", "table": TABLE, "chain": "forward",
            "expr": [
                { "match": { "op": "==", "left": { "meta": { "key": "iifname" } }, "right": bridge } },
                { "match": { "op": "==", "left": { "meta": { "key": "oifname" } }, "right": uplink } },
                { "drop": null },
            ],
            "comment": DEFAULT_DROP,
        } } }));
    }
    cmds
}

/// Typed check of a batch before it reaches nft.
pub fn document(cmds: Vec<Value>) -> Result<Nftables<'static>, String> {
    serde_json::from_value(json!({ "nftables": cmds })).map_err(|e| e.to_string())
}

/// Rules in a listing: (handle, chain, comment).
fn rules(listing: &Nftables<'_>) -> Vec<(u32, String, String)> {
    listing
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) => Some((
                r.handle?,
                r.chain.to_string(),
                r.comment.as_deref().unwrap_or("").to_owned(),
            )),
            _ => None,
        })
        .collect()
}

impl Nft {
    fn err(&self, message: impl std::fmt::Display) -> FirewallError {
        FirewallError::Nft {
            bin: self.bin.clone(),
            message: message.to_string(),
        }
    }

    async fn apply(&self, cmds: Vec<Value>) -> Result<(), FirewallError> {
        let doc = document(cmds).map_err(|e| self.err(e))?;
        let bin = self.bin.clone();
        tokio::task::spawn_blocking(move || {
            nftables::helper::apply_ruleset_with_args(
                &doc,
                Some(bin.as_os_str()),
                nftables::helper::DEFAULT_ARGS,
            )
        })
        .await
        .map_err(|e| self.err(e))?
        .map_err(|e| self.err(e))
    }

    /// The table's rules; `None` when the table does not exist.
    async fn listing(&self) -> Result<Option<Vec<(u32, String, String)>>, FirewallError> {
        let bin = self.bin.clone();
        let out = tokio::task::spawn_blocking(move || {
            nftables::helper::get_current_ruleset_with_args(
                Some(bin.as_os_str()),
                ["list", "table", "ip", TABLE],
            )
        })
        .await
        .map_err(|e| self.err(e))?;
        match out {
            Ok(doc) => Ok(Some(rules(&doc))),
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn set_forwarding(&self, on: bool) -> Result<(), FirewallError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| FirewallError::Io { path, source }
        };
        let current = std::fs::read_to_string(IP_FORWARD).map_err(io(Path::new(IP_FORWARD)))?;
        if on && current.trim() == "0" {
            if let Some(dir) = self.forwarding_marker.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            // Marker first: a crash in between leaves banger owning it.
            std::fs::write(
                &self.forwarding_marker,
                "banger enabled net.ipv4.ip_forward\n",
            )
            .map_err(io(&self.forwarding_marker))?;
            std::fs::write(IP_FORWARD, "1\n").map_err(io(Path::new(IP_FORWARD)))?;
        } else if !on && self.forwarding_marker.exists() {
            std::fs::write(IP_FORWARD, "0\n").map_err(io(Path::new(IP_FORWARD)))?;
            std::fs::remove_file(&self.forwarding_marker).map_err(io(&self.forwarding_marker))?;
        }
        Ok(())
    }
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
                .is_some_and(|r| r.iter().any(|(_, _, c)| c == DEFAULT_DROP)),
        );
        if let Some(listing) = &existing {
            cmds.extend(delete_rules_of(listing, &rule.tap));
        }
        cmds.extend(nat_commands(rule));
        self.apply(cmds).await?;
        self.set_forwarding(true)
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        let Some(existing) = self.listing().await? else {
            return self.set_forwarding(false);
        };
        let mine = tag(tap);
        let others = existing
            .iter()
            .any(|(_, _, c)| tagged_tap(c).is_some_and(TapName::is_banger) && *c != mine);
        let cmds: Vec<Value> = if others {
            delete_rules_of(&existing, tap)
        } else {
            vec![json!({ "delete": { "table": { "family": "ip", "name": TABLE } } })]
        };
        if !cmds.is_empty() {
            self.apply(cmds).await?;
        }
        if !others {
            self.set_forwarding(false)?;
        }
        Ok(())
    }

    async fn nat_taps(&self) -> Result<Vec<String>, FirewallError> {
        let mut taps: Vec<String> = self
            .listing()
            .await?
            .into_iter()
            .flatten()
            .filter_map(|(_, _, c)| tagged_tap(&c).map(str::to_owned))
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

/// A recording fake: rules by tap, forwarding as a flag.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    pub calls: Mutex<Vec<String>>,
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

    pub fn recorded(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn has(&self, tap: &str) -> bool {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.tap == tap)
    }

    fn record(&self, s: String) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn add_nat(&self, rule: &NatRule) -> Result<(), FirewallError> {
        self.record(format!(
            "add_nat {} {} via {}",
            rule.tap, rule.guest_ip, rule.uplink
        ));
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.retain(|r| r.tap != rule.tap);
        rules.push(rule.clone());
        *self.forwarding.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(())
    }

    async fn remove_nat(&self, tap: &str) -> Result<(), FirewallError> {
        self.record(format!("remove_nat {tap}"));
        if let Some(m) = self
            .fail_remove
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(FirewallError::Nft {
                bin: "fake-nft".into(),
                message: m,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> NatRule {
        NatRule {
            tap: "bg-0123456789ab".into(),
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            bridge: "banger0".into(),
            uplink: "eth0".into(),
        }
    }

    #[test]
    fn batches_are_valid_nft_json_documents() {
        let mut cmds = table_commands("banger0", "eth0", true);
        cmds.extend(nat_commands(&rule()));
        let doc = document(cmds).expect("typed nftables document");
        assert_eq!(doc.objects.len(), 7);
        let text = serde_json::to_string(&doc).expect("json");
        assert!(
            text.contains(r#""comment":"banger bg-0123456789ab""#),
            "{text}"
        );
        assert!(text.contains(r#""masquerade""#), "{text}");
        assert!(text.contains(r#""hook":"postrouting""#), "{text}");
    }

    #[test]
    fn per_vm_rules_are_keyed_by_tap_and_address() {
        let cmds = nat_commands(&rule());
        assert_eq!(cmds.len(), 3);
        for c in &cmds {
            let r = &c["insert"]["rule"];
            assert_eq!(r["comment"], "banger bg-0123456789ab");
            assert_eq!(r["table"], TABLE);
            assert!(r["expr"].to_string().contains("172.16.0.2"), "{r}");
        }
    }

    #[test]
    fn the_default_route_names_the_uplink() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     banger0\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_iface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_iface("Iface\tDestination\n"), None);
    }

    /// Tier 2: the real nft in a network namespace of the test's own.
    #[test]
    fn real_rules_come_and_go_with_the_table_and_forwarding() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED nft test: needs root (CAP_NET_ADMIN) to create a namespace");
            return;
        }
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED nft test: nft not installed (scripts/setup.sh --deps-only)");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("nat-forwarding");
        crate::net::in_new_netns(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async {
                let fw = Nft {
                    bin: "nft".into(),
                    forwarding_marker: marker.clone(),
                };
                let forward = || {
                    std::fs::read_to_string(IP_FORWARD)
                        .expect("sysctl")
                        .trim()
                        .to_owned()
                };
                assert_eq!(forward(), "0", "a fresh namespace forwards nothing");
                fw.remove_nat("bg-000000000000")
                    .await
                    .expect("nothing to remove is fine");
                let a = rule();
                let mut b = rule();
                b.tap = "bg-ffffffffffff".into();
                b.guest_ip = Ipv4Addr::new(172, 16, 0, 3);
                fw.add_nat(&a).await.expect("add a");
                fw.add_nat(&a).await.expect("add a again replaces");
                fw.add_nat(&b).await.expect("add b");
                assert_eq!(
                    fw.nat_taps().await.expect("taps"),
                    [a.tap.clone(), b.tap.clone()]
                );
                let listing = fw.listing().await.expect("list").expect("table");
                assert_eq!(
                    listing.iter().filter(|(_, _, c)| *c == tag(&a.tap)).count(),
                    3,
                    "no duplicates after a re-add: {listing:?}"
                );
                assert_eq!(forward(), "1");
                assert!(marker.exists());
                fw.remove_nat(&a.tap).await.expect("remove a");
                assert_eq!(fw.nat_taps().await.expect("taps"), [b.tap.clone()]);
                assert_eq!(forward(), "1", "b still needs it");
                fw.remove_nat(&b.tap).await.expect("remove b");
                assert!(fw.listing().await.expect("list").is_none(), "table gone");
                assert_eq!(forward(), "0", "switched back off");
                assert!(!marker.exists());

                // Forwarding someone else switched on stays on.
                std::fs::write(IP_FORWARD, "1\n").expect("sysctl");
                fw.add_nat(&a).await.expect("add");
                fw.remove_nat(&a.tap).await.expect("remove");
                assert_eq!(forward(), "1");
            });
        })
        .expect("netns");
    }

    #[tokio::test]
    async fn the_fake_keeps_forwarding_while_any_rule_lives() {
        let f = FakeFirewall::with_uplink("eth0");
        f.add_nat(&rule()).await.expect("add");
        let mut other = rule();
        other.tap = "bg-ffffffffffff".into();
        f.add_nat(&other).await.expect("add");
        f.remove_nat("bg-0123456789ab").await.expect("remove");
        assert!(*f.forwarding.lock().expect("lock"));
        f.remove_nat("bg-ffffffffffff").await.expect("remove");
        assert!(!*f.forwarding.lock().expect("lock"));
        f.remove_nat("bg-ffffffffffff").await.expect("idempotent");
    }
}
