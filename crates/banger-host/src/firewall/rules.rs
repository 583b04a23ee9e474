//! banger's nftables rules as typed batches (`nftables::schema`), and what
//! a listing of its table says.

use std::borrow::Cow;

use nftables::batch::Batch;
use std::net::Ipv4Addr;

use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Accept, Counter, Drop, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{GuardPolicy, NatRule, TABLE};
use crate::layout::TapName;

/// What every default rule's comment starts with.
pub const DEFAULT_PREFIX: &str = "banger default: ";

/// The default that drops what a guest sends past its accepts.
pub const DEFAULT_DROP: &str = "banger default: no nat, no way out";

/// The comment every rule of the VM with `tap` carries.
pub fn tag(tap: &str) -> String {
    format!("banger {tap}")
}

/// The tap a rule's comment names, if it is a per-VM tag.
pub fn tagged_tap(comment: &str) -> Option<&str> {
    comment.strip_prefix("banger ")
}

/// One rule of banger's table as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub handle: u32,
    pub chain: String,
    pub comment: String,
}

pub(super) fn ip_field(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

/// A header field: `ip saddr`, `ether saddr`, `arp saddr ip`, `udp dport`.
pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

pub(super) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>, comment: String) -> Rule<'static> {
    rule_in(NfFamily::IP, chain, expr, comment)
}

pub(super) fn rule_in(
    family: NfFamily,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: String,
) -> Rule<'static> {
    Rule {
        family,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    }
}

/// A match of `left` against none of `nets`.
fn not_in(left: Expression<'static>, nets: &[(Ipv4Addr, u8)]) -> Statement<'static> {
    let items = nets
        .iter()
        .map(|(addr, len)| {
            SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(text(&addr.to_string())),
                len: u32::from(*len),
            })))
        })
        .collect();
    Statement::Match(Match {
        left,
        right: Expression::Named(NamedExpression::Set(items)),
        op: Operator::NEQ,
    })
}

/// `ct state established,related`.
pub(super) fn replies() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![text("established"), text("related")]),
        op: Operator::IN,
    })
}

/// The chains NAT rules live in (the guard's are elsewhere).
pub const NAT_CHAINS: [&str; 2] = ["postrouting", "forward"];

/// The rules of one VM, each inserted at the head of its chain: a
/// masquerade on the way out, and accepts in front of the default drops.
/// Nothing in `deny` (link-local, the uplink's own networks) is reached.
pub fn nat_commands(r: &NatRule, deny: &[(Ipv4Addr, u8)]) -> Vec<NfCmd<'static>> {
    let comment = tag(&r.tap);
    let ip = r.guest_ip.to_string();
    let insert =
        |chain, expr| NfCmd::Insert(NfListObject::Rule(rule(chain, expr, comment.clone())));
    vec![
        insert(
            "postrouting",
            vec![
                eq(ip_field("saddr"), text(&ip)),
                eq(meta(MetaKey::Oifname), text(&r.uplink)),
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Masquerade(None),
            ],
        ),
        insert(
            "forward",
            vec![
                eq(ip_field("saddr"), text(&ip)),
                eq(meta(MetaKey::Iifname), text(&r.bridge)),
                eq(meta(MetaKey::Oifname), text(&r.uplink)),
                not_in(ip_field("daddr"), deny),
                Statement::Accept(None::<Accept>),
            ],
        ),
        insert(
            "forward",
            vec![
                eq(ip_field("daddr"), text(&ip)),
                eq(meta(MetaKey::Iifname), text(&r.uplink)),
                eq(meta(MetaKey::Oifname), text(&r.bridge)),
                replies(),
                Statement::Accept(None),
            ],
        ),
    ]
}

pub(super) fn base_chain(
    family: NfFamily,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

pub(super) fn table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// The `ip` table and its chains (idempotent `add`s).
pub fn table_commands() -> Vec<NfCmd<'static>> {
    let ip = NfFamily::IP;
    vec![
        NfCmd::Add(NfListObject::Table(table(ip))),
        NfCmd::Add(base_chain(
            ip,
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        )),
        NfCmd::Add(base_chain(
            ip,
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            0,
        )),
        NfCmd::Add(base_chain(
            ip,
            "input",
            NfChainType::Filter,
            NfHook::Input,
            0,
        )),
    ]
}

/// A default rule: inserted at its chain's head (an accept) or appended
/// after every VM's rules (a drop).
#[derive(Debug, Clone)]
pub struct DefaultRule {
    pub family: NfFamily,
    pub chain: &'static str,
    pub comment: &'static str,
    pub expr: Vec<Statement<'static>>,
    pub at_head: bool,
}

/// The `ip` table's defaults for `bridge`: nothing from the bridge is
/// forwarded but what a VM's NAT accepts (or, with VM-to-VM on, back to
/// the bridge), nothing is forwarded to it but replies, and a guest
/// reaches the host itself only with replies and what a VM's rules
/// accept (banger's DNS).
pub fn ip_defaults(bridge: &str, policy: GuardPolicy) -> Vec<DefaultRule> {
    let ip = NfFamily::IP;
    let from = || eq(meta(MetaKey::Iifname), text(bridge));
    let to = || eq(meta(MetaKey::Oifname), text(bridge));
    let mut all = Vec::new();
    if policy.vm_to_vm {
        all.push(DefaultRule {
            family: ip,
            chain: "forward",
            comment: "banger default: vm to vm through the host",
            expr: vec![from(), to(), Statement::Accept(None)],
            at_head: true,
        });
    }
    all.extend([
        DefaultRule {
            family: ip,
            chain: "forward",
            comment: DEFAULT_DROP,
            expr: vec![from(), Statement::Drop(None::<Drop>)],
            at_head: false,
        },
        DefaultRule {
            family: ip,
            chain: "forward",
            comment: "banger default: nothing new in to guests",
            expr: vec![to(), Statement::Drop(None)],
            at_head: false,
        },
        DefaultRule {
            family: ip,
            chain: "input",
            comment: "banger default: replies to the host",
            expr: vec![from(), replies(), Statement::Accept(None)],
            at_head: true,
        },
        DefaultRule {
            family: ip,
            chain: "input",
            comment: "banger default: guests reach only banger's dns on the host",
            expr: vec![from(), Statement::Drop(None)],
            at_head: false,
        },
    ]);
    all
}

/// What brings a table's defaults to `wanted`: the missing added, the
/// ones no longer wanted (a switch changed) deleted.
pub fn reconcile_defaults(
    listing: Option<&[Listed]>,
    wanted: &[DefaultRule],
) -> Vec<NfCmd<'static>> {
    let listing = listing.unwrap_or_default();
    let mut cmds: Vec<NfCmd<'static>> = listing
        .iter()
        .filter(|l| {
            l.comment.starts_with(DEFAULT_PREFIX)
                && !wanted
                    .iter()
                    .any(|w| w.comment == l.comment && w.chain == l.chain)
        })
        .filter_map(|l| {
            let family = wanted.first()?.family;
            Some(delete_rule(family, l))
        })
        .collect();
    for w in wanted {
        if listing
            .iter()
            .any(|l| l.comment == w.comment && l.chain == w.chain)
        {
            continue;
        }
        let r = NfListObject::Rule(rule_in(
            w.family,
            w.chain,
            w.expr.clone(),
            w.comment.to_owned(),
        ));
        cmds.push(if w.at_head {
            NfCmd::Insert(r)
        } else {
            NfCmd::Add(r)
        });
    }
    cmds
}

fn delete_rule(family: NfFamily, l: &Listed) -> NfCmd<'static> {
    NfCmd::Delete(NfListObject::Rule(Rule {
        family,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Owned(l.chain.clone()),
        expr: Cow::Owned(Vec::new()),
        handle: Some(l.handle),
        index: None,
        comment: None,
    }))
}

/// Deletes, by handle, every rule of `listing` (of `family`) tagged for
/// `tap` in one of `chains` (all chains when empty).
pub fn delete_rules_of(
    family: NfFamily,
    listing: &[Listed],
    tap: &str,
    chains: &[&str],
) -> Vec<NfCmd<'static>> {
    let mine = tag(tap);
    listing
        .iter()
        .filter(|l| l.comment == mine && (chains.is_empty() || chains.contains(&l.chain.as_str())))
        .map(|l| delete_rule(family, l))
        .collect()
}

/// Deletes one of banger's tables, rules and all.
pub fn delete_table(family: NfFamily) -> NfCmd<'static> {
    NfCmd::Delete(NfListObject::Table(table(family)))
}

/// Whether a listing still holds some VM's rules (other than `tap`'s in
/// `chains`, which are about to go).
pub fn holds_vm_rules(listing: &[Listed], but: Option<(&str, &[&str])>) -> bool {
    listing.iter().any(|l| {
        tagged_tap(&l.comment).is_some_and(|t| {
            TapName::is_banger(t)
                && but.is_none_or(|(tap, chains)| {
                    t != tap || !(chains.is_empty() || chains.contains(&l.chain.as_str()))
                })
        })
    })
}

/// One batch for nft to apply at once.
pub fn document(cmds: Vec<NfCmd<'static>>) -> Nftables<'static> {
    let mut batch = Batch::new();
    for c in cmds {
        batch.add_cmd(c);
    }
    batch.to_nftables()
}

/// banger's table in a listing of one family's ruleset: its rules, or
/// `None` when the table is not there.
pub fn banger_table(listing: &Nftables<'_>, family: NfFamily) -> Option<Vec<Listed>> {
    let mut present = false;
    let mut rules = Vec::new();
    for o in listing.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Table(t))
                if t.family == family && t.name == TABLE =>
            {
                present = true;
            }
            NfObject::ListObject(NfListObject::Rule(r))
                if r.family == family && r.table == TABLE =>
            {
                // A listed rule always has a handle; one without could
                // not be deleted anyway.
                if let Some(handle) = r.handle {
                    rules.push(Listed {
                        handle,
                        chain: r.chain.to_string(),
                        comment: r.comment.as_deref().unwrap_or("").to_owned(),
                    });
                }
            }
            _ => {}
        }
    }
    present.then_some(rules)
}
