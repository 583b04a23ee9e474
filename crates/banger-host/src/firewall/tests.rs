use std::net::Ipv4Addr;

use serde_json::{Value, json};

use nftables::types::NfFamily;

use super::guard::{bridge_defaults, guard_commands};
use super::nft::IP_FORWARD;
use super::rules::{
    DEFAULT_DROP, Listed, delete_rules_of, holds_vm_rules, ip_defaults, reconcile_defaults, tag,
};
use super::*;

fn rule() -> NatRule {
    NatRule {
        tap: "bg-0123456789ab".into(),
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        bridge: "banger0".into(),
        uplink: "eth0".into(),
    }
}

fn guard() -> Guard {
    Guard {
        tap: "bg-0123456789ab".into(),
        mac: "02:b6:01:23:45:67".into(),
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        bridge: "banger0".into(),
        bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
    }
}

const DENY: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(192, 168, 1, 0), 24),
];

fn json_of(cmds: &[nftables::schema::NfCmd<'static>]) -> Vec<Value> {
    cmds.iter()
        .map(|c| serde_json::to_value(c).expect("json"))
        .collect()
}

#[test]
fn batches_are_valid_nft_json_documents() {
    let mut cmds = table_commands();
    cmds.extend(nat_commands(&rule(), &DENY));
    let doc = document(cmds);
    assert_eq!(doc.objects.len(), 7);
    let text = serde_json::to_string(&doc).expect("json");
    assert!(
        text.contains(r#""comment":"banger bg-0123456789ab""#),
        "{text}"
    );
    assert!(text.contains(r#""masquerade""#), "{text}");
    assert!(text.contains(r#""hook":"postrouting""#), "{text}");
    assert!(text.contains(r#""hook":"input""#), "{text}");
}

#[test]
fn per_vm_rules_are_keyed_by_tap_and_address() {
    let cmds = nat_commands(&rule(), &DENY);
    assert_eq!(cmds.len(), 3);
    for c in &json_of(&cmds) {
        let r = &c["insert"]["rule"];
        assert_eq!(r["comment"], "banger bg-0123456789ab");
        assert_eq!(r["table"], TABLE);
        assert!(r["expr"].to_string().contains("172.16.0.2"), "{r}");
    }
    // The way out names what it never reaches.
    let out = json_of(&cmds)[1]["insert"]["rule"]["expr"].to_string();
    assert!(
        out.contains(r#""op":"!=""#) && out.contains("169.254.0.0") && out.contains("192.168.1.0"),
        "{out}"
    );
}

#[test]
fn a_guard_pins_mac_and_address_and_opens_only_dns() {
    let cmds = json_of(&guard_commands(&guard(), GuardPolicy::default()));
    let bridge: Vec<&Value> = cmds
        .iter()
        .map(|c| &c["insert"]["rule"])
        .filter(|r| r["family"] == "bridge")
        .collect();
    assert_eq!(bridge.len(), 2, "ip and arp: {cmds:?}");
    for r in &bridge {
        let e = r["expr"].to_string();
        assert!(
            e.contains("02:b6:01:23:45:67") && e.contains("172.16.0.2"),
            "{e}"
        );
        assert_eq!(r["comment"], "banger bg-0123456789ab");
    }
    assert!(bridge[1]["expr"].to_string().contains("saddr ip"));
    let input: Vec<String> = cmds
        .iter()
        .map(|c| &c["insert"]["rule"])
        .filter(|r| r["family"] == "ip")
        .map(|r| r["expr"].to_string())
        .collect();
    assert_eq!(input.len(), 2, "dns over udp and tcp");
    assert!(
        input
            .iter()
            .all(|e| e.contains("172.16.0.1") && e.contains("53"))
    );
    // IPv6 only when the policy allows it.
    let v6 = GuardPolicy {
        guest_ipv6: true,
        ..Default::default()
    };
    let with = json_of(&guard_commands(&guard(), v6));
    assert_eq!(with.len(), cmds.len() + 1);
    assert!(with.iter().any(|c| c.to_string().contains("ip6")));
}

#[test]
fn defaults_follow_the_policy_and_a_changed_switch_is_reconciled() {
    let off = GuardPolicy::default();
    let on = GuardPolicy {
        vm_to_vm: true,
        ..Default::default()
    };
    let names = |d: Vec<rules::DefaultRule>| d.into_iter().map(|d| d.comment).collect::<Vec<_>>();
    assert!(names(bridge_defaults(off)).contains(&"banger default: no vm to vm"));
    assert!(!names(bridge_defaults(on)).contains(&"banger default: no vm to vm"));
    assert!(
        names(ip_defaults("banger0", on)).contains(&"banger default: vm to vm through the host")
    );
    // A fresh table gets every default: accepts first, drops appended.
    let fresh = json_of(&reconcile_defaults(None, &ip_defaults("banger0", off)));
    assert_eq!(fresh.len(), 4);
    assert!(
        fresh
            .iter()
            .any(|c| c["insert"]["rule"]["chain"] == "input")
    );
    assert!(
        fresh
            .iter()
            .any(|c| c["add"]["rule"]["comment"] == DEFAULT_DROP)
    );
    // A table made with VM-to-VM off, under a policy that turned it on:
    // the drop goes, the accept comes, the rest stays.
    let listing: Vec<Listed> = bridge_defaults(off)
        .iter()
        .enumerate()
        .map(|(i, d)| Listed {
            handle: i as u32 + 1,
            chain: d.chain.into(),
            comment: d.comment.into(),
        })
        .collect();
    let change = json_of(&reconcile_defaults(Some(&listing), &bridge_defaults(on)));
    assert_eq!(change.len(), 1, "{change:?}");
    assert_eq!(change[0]["delete"]["rule"]["handle"], 2);
    assert!(reconcile_defaults(Some(&listing), &bridge_defaults(off)).is_empty());
}

#[test]
fn a_table_holds_vm_rules_until_the_last_tap_goes() {
    let listing = [
        Listed {
            handle: 1,
            chain: "input".into(),
            comment: tag("bg-0123456789ab"),
        },
        Listed {
            handle: 2,
            chain: "forward".into(),
            comment: tag("bg-0123456789ab"),
        },
        Listed {
            handle: 3,
            chain: "forward".into(),
            comment: DEFAULT_DROP.into(),
        },
    ];
    assert!(holds_vm_rules(&listing, None));
    assert!(
        holds_vm_rules(&listing, Some(("bg-0123456789ab", &["forward"]))),
        "input stays"
    );
    assert!(!holds_vm_rules(&listing, Some(("bg-0123456789ab", &[]))));
    let del = json_of(&delete_rules_of(
        NfFamily::IP,
        &listing,
        "bg-0123456789ab",
        &["forward"],
    ));
    assert_eq!(del.len(), 1);
    assert_eq!(del[0]["delete"]["rule"]["handle"], 2);
}

#[test]
fn the_uplinks_own_networks_are_read_from_the_route_table() {
    let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 banger0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n";
    assert_eq!(
        uplink_networks(table, "eth0"),
        [(Ipv4Addr::new(192, 168, 1, 0), 24)],
        "connected only: not the default route, nor one through a gateway"
    );
    assert!(uplink_networks(table, "eth1").is_empty());
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
            let fw = Nft::new("nft", marker.clone(), GuardPolicy::default());
            let ruleset = || {
                let out = std::process::Command::new("nft")
                    .args(["list", "ruleset"])
                    .output()
                    .expect("nft");
                String::from_utf8_lossy(&out.stdout).into_owned()
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
                fw.tagged_taps().await.expect("taps"),
                [a.tap.clone(), b.tap.clone()]
            );
            let listing = fw.listing(NfFamily::IP).await.expect("list").expect("table");
            assert_eq!(
                listing.iter().filter(|l| l.comment == tag(&a.tap)).count(),
                3,
                "no duplicates after a re-add: {listing:?}"
            );
            assert_eq!(forward(), "1");
            assert!(marker.exists());
            fw.remove_nat(&a.tap).await.expect("remove a");
            assert_eq!(fw.tagged_taps().await.expect("taps"), [b.tap.clone()]);
            assert_eq!(forward(), "1", "b still needs it");
            fw.remove_nat(&b.tap).await.expect("remove b");
            assert!(fw.listing(NfFamily::IP).await.expect("list").is_none(), "table gone");
            assert_eq!(forward(), "0", "switched back off");
            assert!(!marker.exists());

            // Guards: both tables with their defaults, kept by any VM's
            // rules, gone with the last; NAT's going leaves the guard.
            let ga = guard();
            let mut gb = guard();
            gb.tap = b.tap.clone();
            gb.guest_ip = b.guest_ip;
            gb.mac = "02:b6:ff:ff:ff:ff".into();
            fw.add_guard(&ga).await.expect("guard a");
            fw.add_guard(&ga).await.expect("guard a again replaces");
            fw.add_guard(&gb).await.expect("guard b");
            fw.add_nat(&a).await.expect("nat a");
            let text = ruleset();
            for want in [
                "table bridge banger",
                "iifname \"bg-0123456789ab\" ether saddr 02:b6:01:23:45:67 ip saddr 172.16.0.2 accept",
                "arp saddr ether 02:b6:01:23:45:67 arp saddr ip 172.16.0.2 accept",
                "iifname \"bg-*\" drop",
                "iifname \"bg-*\" oifname \"bg-*\" drop",
                "ip daddr 172.16.0.1 udp dport 53 accept",
                "iifname \"banger0\" ct state established,related accept",
                "ip daddr != { 169.254.0.0/16",
            ] {
                assert!(text.contains(want), "{want}\n{text}");
            }
            assert_eq!(
                text.matches("ether saddr 02:b6:01:23:45:67 ip saddr").count(),
                1,
                "no duplicates after a re-add\n{text}"
            );
            fw.remove_nat(&a.tap).await.expect("nat a off");
            assert_eq!(forward(), "0", "no nat, no forwarding");
            assert!(ruleset().contains("udp dport 53"), "the guard stays");
            fw.remove_guard(&ga.tap).await.expect("unguard a");
            assert_eq!(fw.tagged_taps().await.expect("taps"), [gb.tap.clone()]);
            fw.remove_guard(&gb.tap).await.expect("unguard b");
            fw.remove_guard(&gb.tap).await.expect("idempotent");
            assert!(!ruleset().contains("banger"), "{}", ruleset());
            // A changed switch is applied to the tables that are there.
            fw.add_guard(&ga).await.expect("guard");
            let on = Nft::new(
                "nft",
                fw.forwarding_marker.clone(),
                GuardPolicy {
                    vm_to_vm: true,
                    guest_ipv6: false,
                },
            );
            on.add_guard(&gb).await.expect("guard with vm to vm");
            let text = ruleset();
            assert!(!text.contains("oifname \"bg-*\" drop"), "{text}");
            assert!(text.contains("iifname \"banger0\" oifname \"banger0\" accept"), "{text}");
            on.remove_guard(&ga.tap).await.expect("unguard");
            on.remove_guard(&gb.tap).await.expect("unguard");

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
    assert_eq!(rules::banger_table(&listing(other), NfFamily::IP), None);
    let empty = json!({ "nftables": [
        { "table": { "family": "ip", "name": TABLE, "handle": 2 } },
    ] });
    assert_eq!(
        rules::banger_table(&listing(empty), NfFamily::IP),
        Some(vec![])
    );
    let one = json!({ "nftables": [
        { "table": { "family": "ip", "name": TABLE, "handle": 2 } },
        { "rule": { "family": "ip", "table": TABLE, "chain": "forward", "handle": 5,
            "comment": "banger bg-0123456789ab", "expr": [] } },
        { "rule": { "family": "ip", "table": TABLE, "chain": "forward", "handle": 6, "expr": [] } },
    ] });
    assert_eq!(
        rules::banger_table(&listing(one), NfFamily::IP),
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

/// Tier 2: ten VMs putting up and taking down their guards at once (ten
/// concurrent starts, then deletes): every change succeeds, and the last
/// one out takes banger's tables with it.
#[test]
fn concurrent_guards_come_and_go_without_a_failed_batch_or_a_table_left() {
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("SKIPPED concurrent nft test: needs root and nft");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("nat-forwarding");
    crate::net::in_new_netns(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let fw = std::sync::Arc::new(Nft::new("nft", marker, GuardPolicy::default()));
            let guards: Vec<Guard> = (0..10u8)
                .map(|i| Guard {
                    tap: format!("bg-00000000000{i:x}"),
                    mac: format!("02:b6:00:00:00:{i:02x}"),
                    guest_ip: Ipv4Addr::new(172, 16, 0, 10 + i),
                    ..guard()
                })
                .collect();
            let all = |remove: bool| {
                let fw = fw.clone();
                let guards = guards.clone();
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for g in guards {
                        let fw = fw.clone();
                        set.spawn(async move {
                            if remove {
                                fw.remove_guard(&g.tap).await
                            } else {
                                fw.add_guard(&g).await
                            }
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("task").expect("a guard change");
                    }
                }
            };
            all(false).await;
            assert_eq!(fw.tagged_taps().await.expect("taps").len(), 10);
            all(true).await;
            assert!(fw.tagged_taps().await.expect("taps").is_empty());
            assert!(
                fw.listing(NfFamily::IP).await.expect("list").is_none(),
                "ip table left"
            );
            assert!(
                fw.listing(NfFamily::Bridge).await.expect("list").is_none(),
                "bridge table left"
            );
        });
    })
    .expect("netns");
}
