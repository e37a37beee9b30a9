//! Short constructors for the nftables expressions and statements the rules are made of, each
//! producing the form nft lists back (so rendered and live rulesets compare line by line).
//!
//! Nothing here knows which rule it is part of.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadBase, PayloadField, PayloadRaw,
    Prefix, SetItem,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};

use super::model::Reason;

pub(super) fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}
pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}
pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}
pub(super) fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }))
}
pub(super) fn m(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}
pub(super) fn anon_set(items: &[&str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.iter().map(|i| SetItem::Element(s(*i))).collect(),
    ))
}
pub(super) fn goto(reason: Reason) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: reason.chain().into(),
    })
}
pub(super) fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}
pub(super) fn accept() -> Statement<'static> {
    Statement::Accept(None)
}
/// A prefix the way nft lists it back: a bare address for /32 and /128.
pub(super) fn prefix(net: IpNet) -> Expression<'static> {
    if net.prefix_len() == net.max_prefix_len() {
        s(net.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(net.network().to_string())),
            len: u32::from(net.prefix_len()),
        }))
    }
}
pub(super) fn l4_tcp_udp() -> Statement<'static> {
    m(
        meta(MetaKey::L4proto),
        Operator::EQ,
        anon_set(&["tcp", "udp"]),
    )
}
pub(super) fn dport(port: u16) -> Statement<'static> {
    m(
        payload("th", "dport"),
        Operator::EQ,
        Expression::Number(u32::from(port)),
    )
}

pub(super) fn num(v: u32) -> Expression<'static> {
    Expression::Number(v)
}

/// `@th,offset,len`: raw bits of the transport header (used for ND message fields nft has no
/// name for).
pub(super) fn th_raw(offset: u32, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base: PayloadBase::TH,
        offset,
        len,
    })))
}
