//! banger's nftables rules as typed batches (`nftables::schema`), and what
//! a listing of its table says.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Accept, Counter, Drop, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{NatRule, TABLE};

/// The comment of the one rule that is not a VM's.
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

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>, comment: String) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    }
}

/// The rules of one VM, each inserted at the head of its chain: a
/// masquerade on the way out, and accepts in front of the default drop.
pub fn nat_commands(r: &NatRule) -> Vec<NfCmd<'static>> {
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
                Statement::Accept(None::<Accept>),
            ],
        ),
        insert(
            "forward",
            vec![
                eq(ip_field("daddr"), text(&ip)),
                eq(meta(MetaKey::Iifname), text(&r.uplink)),
                eq(meta(MetaKey::Oifname), text(&r.bridge)),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::CT(CT {
                        key: Cow::Borrowed("state"),
                        family: None,
                        dir: None,
                    })),
                    right: Expression::List(vec![text("established"), text("related")]),
                    op: Operator::IN,
                }),
                Statement::Accept(None),
            ],
        ),
    ]
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// The table and its chains (idempotent `add`s), and the default drop
/// from `bridge` to `uplink` that per-VM accepts are inserted before.
pub fn table_commands(bridge: &str, uplink: &str, with_drop: bool) -> Vec<NfCmd<'static>> {
    let mut cmds = vec![
        NfCmd::Add(NfListObject::Table(table())),
        NfCmd::Add(base_chain(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        )),
        NfCmd::Add(base_chain(
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            0,
        )),
    ];
    if with_drop {
        cmds.push(NfCmd::Add(NfListObject::Rule(rule(
            "forward",
            vec![
                eq(meta(MetaKey::Iifname), text(bridge)),
                eq(meta(MetaKey::Oifname), text(uplink)),
                Statement::Drop(None::<Drop>),
            ],
            DEFAULT_DROP.to_owned(),
        ))));
    }
    cmds
}

/// Deletes, by handle, every rule of `listing` tagged for `tap`.
pub fn delete_rules_of(listing: &[Listed], tap: &str) -> Vec<NfCmd<'static>> {
    let mine = tag(tap);
    listing
        .iter()
        .filter(|l| l.comment == mine)
        .map(|l| {
            NfCmd::Delete(NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: Cow::Borrowed(TABLE),
                chain: Cow::Owned(l.chain.clone()),
                expr: Cow::Owned(Vec::new()),
                handle: Some(l.handle),
                index: None,
                comment: None,
            }))
        })
        .collect()
}

/// Deletes banger's table, rules and all.
pub fn delete_table() -> NfCmd<'static> {
    NfCmd::Delete(NfListObject::Table(table()))
}

/// One batch for nft to apply at once.
pub fn document(cmds: Vec<NfCmd<'static>>) -> Nftables<'static> {
    let mut batch = Batch::new();
    for c in cmds {
        batch.add_cmd(c);
    }
    batch.to_nftables()
}

/// banger's table in a listing of the `ip` family's ruleset: its rules,
/// or `None` when the table is not there.
pub fn banger_table(listing: &Nftables<'_>) -> Option<Vec<Listed>> {
    let mut present = false;
    let mut rules = Vec::new();
    for o in listing.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Table(t))
                if t.family == NfFamily::IP && t.name == TABLE =>
            {
                present = true;
            }
            NfObject::ListObject(NfListObject::Rule(r))
                if r.family == NfFamily::IP && r.table == TABLE =>
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
