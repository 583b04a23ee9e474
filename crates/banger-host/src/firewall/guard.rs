//! The guard's rules: what a guest may send, as typed nftables batches.
//!
//! In `bridge banger`, a frame entering the bridge from a tap passes only
//! with the VM's own MAC, as IPv4 from its own address or as ARP that
//! names its own MAC and address (IPv6 too, with its MAC, when the policy
//! allows); a default drops every other frame from a `bg-*` tap. Frames
//! from one tap to another are dropped unless VM-to-VM is on. In
//! `ip banger`'s input chain, each VM's one accept is banger's DNS on the
//! bridge address; the chain's defaults (`rules::ip_defaults`) pass
//! replies and drop the rest.

use nftables::expr::{Expression, MetaKey};
use nftables::schema::{NfCmd, NfListObject};
use nftables::stmt::{Accept, Drop, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

use super::rules::{
    DefaultRule, base_chain, eq, ip_field, meta, payload, rule_in, table, tag, text,
};
use super::{Guard, GuardPolicy};

/// Every banger tap, as nft's interface-name wildcard.
const ANY_TAP: &str = "bg-*";

/// The chains the guard's per-VM rules live in, by family.
pub const BRIDGE_CHAINS: [&str; 1] = ["prerouting"];
pub const IP_CHAINS: [&str; 1] = ["input"];

/// The `bridge` table and its chains (idempotent `add`s). Prerouting at
/// the filter priority sees a frame before the bridge forwards or
/// delivers it.
pub fn bridge_table_commands() -> Vec<NfCmd<'static>> {
    let br = NfFamily::Bridge;
    vec![
        NfCmd::Add(NfListObject::Table(table(br))),
        NfCmd::Add(base_chain(
            br,
            "prerouting",
            NfChainType::Filter,
            NfHook::Prerouting,
            -200,
        )),
        NfCmd::Add(base_chain(
            br,
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            0,
        )),
    ]
}

/// The `bridge` table's defaults.
pub fn bridge_defaults(policy: GuardPolicy) -> Vec<DefaultRule> {
    let br = NfFamily::Bridge;
    let from_tap = || eq(meta(MetaKey::Iifname), text(ANY_TAP));
    let mut all = vec![DefaultRule {
        family: br,
        chain: "prerouting",
        comment: "banger default: a guest sends only as itself",
        expr: vec![from_tap(), Statement::Drop(None::<Drop>)],
        at_head: false,
    }];
    if !policy.vm_to_vm {
        all.push(DefaultRule {
            family: br,
            chain: "forward",
            comment: "banger default: no vm to vm",
            expr: vec![
                from_tap(),
                eq(meta(MetaKey::Oifname), text(ANY_TAP)),
                Statement::Drop(None),
            ],
            at_head: false,
        });
    }
    all
}

/// One VM's guard rules, each inserted at the head of its chain (in
/// front of the defaults).
pub fn guard_commands(g: &Guard, policy: GuardPolicy) -> Vec<NfCmd<'static>> {
    let comment = tag(&g.tap);
    let ip = g.guest_ip.to_string();
    let from_tap = || eq(meta(MetaKey::Iifname), text(&g.tap));
    let own_mac = || eq(payload("ether", "saddr"), text(&g.mac));
    let insert = |family, chain, expr| {
        NfCmd::Insert(NfListObject::Rule(rule_in(
            family,
            chain,
            expr,
            comment.clone(),
        )))
    };
    let br = NfFamily::Bridge;
    let mut cmds = vec![
        insert(
            br,
            "prerouting",
            vec![
                from_tap(),
                own_mac(),
                eq(ip_field("saddr"), text(&ip)),
                Statement::Accept(None::<Accept>),
            ],
        ),
        insert(
            br,
            "prerouting",
            vec![
                from_tap(),
                own_mac(),
                eq(payload("arp", "saddr ether"), text(&g.mac)),
                eq(payload("arp", "saddr ip"), text(&ip)),
                Statement::Accept(None),
            ],
        ),
    ];
    if policy.guest_ipv6 {
        cmds.push(insert(
            br,
            "prerouting",
            vec![
                from_tap(),
                own_mac(),
                eq(payload("ether", "type"), text("ip6")),
                Statement::Accept(None),
            ],
        ));
    }
    for proto in ["udp", "tcp"] {
        cmds.push(insert(
            NfFamily::IP,
            "input",
            vec![
                eq(meta(MetaKey::Iifname), text(&g.bridge)),
                eq(ip_field("saddr"), text(&ip)),
                eq(ip_field("daddr"), text(&g.bridge_ip.to_string())),
                eq(payload(proto, "dport"), Expression::Number(53)),
                Statement::Accept(None),
            ],
        ));
    }
    cmds
}
