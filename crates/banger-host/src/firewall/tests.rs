use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::nft::IP_FORWARD;
use super::rules::{DEFAULT_DROP, Listed, delete_rules_of, delete_table, tag};
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
    let doc = document(cmds);
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
    let cmds: Vec<Value> = cmds
        .iter()
        .map(|c| serde_json::to_value(c).expect("json"))
        .collect();
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
                listing.iter().filter(|l| l.comment == tag(&a.tap)).count(),
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

// What the rules were built with before the typed schema: `json!`
// values, checked by a round trip through `nftables::schema`. The typed
// batches must say exactly the same to nft.
mod was_json {
    use super::*;

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

    pub fn delete_rule(handle: u32, chain: &str) -> Value {
        json!({ "delete": { "rule": {
            "family": "ip", "table": TABLE, "chain": chain, "handle": handle, "expr": [],
        } } })
    }

    pub fn delete_table() -> Value {
        json!({ "delete": { "table": { "family": "ip", "name": TABLE } } })
    }

    /// What was sent: the values through the typed document, serialised.
    pub fn sent(cmds: Vec<Value>) -> Value {
        let doc: nftables::schema::Nftables<'static> =
            serde_json::from_value(json!({ "nftables": cmds })).expect("typed");
        serde_json::to_value(&doc).expect("json")
    }
}

fn sent(cmds: Vec<nftables::schema::NfCmd<'static>>) -> Value {
    serde_json::to_value(document(cmds)).expect("json")
}

#[test]
fn the_typed_batches_send_what_the_json_builders_sent() {
    let r = rule();
    for with_drop in [true, false] {
        assert_eq!(
            sent(table_commands("banger0", "eth0", with_drop)),
            was_json::sent(was_json::table_commands("banger0", "eth0", with_drop)),
        );
    }
    assert_eq!(
        sent(nat_commands(&r)),
        was_json::sent(was_json::nat_commands(&r))
    );
    // Before any round trip too: the typed batch is the literal JSON.
    assert_eq!(
        sent(nat_commands(&r)),
        json!({ "nftables": was_json::nat_commands(&r) })
    );
    let listing = [
        Listed {
            handle: 7,
            chain: "forward".into(),
            comment: tag(&r.tap),
        },
        Listed {
            handle: 8,
            chain: "forward".into(),
            comment: DEFAULT_DROP.into(),
        },
        Listed {
            handle: 9,
            chain: "postrouting".into(),
            comment: tag(&r.tap),
        },
    ];
    assert_eq!(
        sent(delete_rules_of(&listing, &r.tap)),
        was_json::sent(vec![
            was_json::delete_rule(7, "forward"),
            was_json::delete_rule(9, "postrouting"),
        ]),
    );
    assert_eq!(
        sent(vec![delete_table()]),
        was_json::sent(vec![was_json::delete_table()])
    );
}

#[test]
fn a_listing_tells_a_missing_table_from_an_empty_one() {
    let listing = |v: Value| -> nftables::schema::Nftables<'static> {
        serde_json::from_value(v).expect("listing")
    };
    let other = json!({ "nftables": [
        { "metainfo": { "version": "1.0.9", "release_name": "x", "json_schema_version": 1 } },
        { "table": { "family": "ip", "name": "docker", "handle": 1 } },
        { "rule": { "family": "ip", "table": "docker", "chain": "c", "handle": 3,
            "comment": "banger bg-0123456789ab", "expr": [] } },
    ] });
    assert_eq!(rules::banger_table(&listing(other)), None);
    let empty = json!({ "nftables": [
        { "table": { "family": "ip", "name": TABLE, "handle": 2 } },
    ] });
    assert_eq!(rules::banger_table(&listing(empty)), Some(vec![]));
    let one = json!({ "nftables": [
        { "table": { "family": "ip", "name": TABLE, "handle": 2 } },
        { "rule": { "family": "ip", "table": TABLE, "chain": "forward", "handle": 5,
            "comment": "banger bg-0123456789ab", "expr": [] } },
        { "rule": { "family": "ip", "table": TABLE, "chain": "forward", "handle": 6, "expr": [] } },
    ] });
    assert_eq!(
        rules::banger_table(&listing(one)),
        Some(vec![
            Listed {
                handle: 5,
                chain: "forward".into(),
                comment: "banger bg-0123456789ab".into(),
            },
            Listed {
                handle: 6,
                chain: "forward".into(),
                comment: String::new(),
            },
        ])
    );
}

#[tokio::test]
async fn the_fake_records_typed_calls() {
    let f = FakeFirewall::with_uplink("eth0");
    f.add_nat(&rule()).await.expect("add");
    f.remove_nat("bg-0123456789ab").await.expect("remove");
    assert_eq!(
        f.calls(),
        [
            FirewallCall::AddNat(rule()),
            FirewallCall::RemoveNat {
                tap: "bg-0123456789ab".into()
            }
        ]
    );
    assert_eq!(
        f.recorded(),
        [
            "add_nat bg-0123456789ab 172.16.0.2 via eth0",
            "remove_nat bg-0123456789ab"
        ]
    );
}
