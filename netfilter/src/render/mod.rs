//! The pure renderer: policy + tenant network → the nftables objects of berth's two tables.
//!
//! Layout (names relative to the configured table name `T`, bridge `B`):
//! - `table inet T` — base chains `forward` and `input` hooked at `filter + priority` (before
//!   Docker's filter chains at 0; in nftables a drop in any base chain is final, so Docker's own
//!   ACCEPTs cannot undo ours). Each holds one rule, `iifname B jump tenant_*`: traffic that does
//!   not come from the tenant bridge is never touched. `tenant_forward` covers tenant → anywhere
//!   routed (internet, private ranges, other tenants routed through the host); `tenant_input`
//!   covers tenant → any address of the host itself (only the resolver, ICMP echo to the
//!   gateway, neighbour discovery and the allowlist get through). Deny and allow prefixes live
//!   in interval sets, so the rule count does not grow with the number of entries.
//! - `table bridge T` — a `forward` chain at bridge `filter + priority` that drops frames
//!   forwarded between two ports of the tenant bridge (tenant ↔ tenant without br_netfilter);
//!   with a port map, a `ports` chain at bridge `prerouting` that holds each port to its own
//!   MAC and addresses. Per-port facts are elements of named sets keyed by `iifname . field`,
//!   never chains or rules of their own, so the ruleset's size in rules does not grow with the
//!   number of ports and a port map change is a set-element transaction.
//! - Established/related packets in the *reply* direction (answers to connections others opened
//!   towards a tenant, or that the host opened) are accepted first. A tenant's own flows are
//!   re-judged on every packet — a few set lookups — so a flow opened while the table was
//!   missing (between a flush and the drift watch's re-apply) is cut as soon as it is back.
//! - Every drop goes through a `drop_<reason>` chain: counter, rate-limited log with the
//!   configured prefix and the reason, drop.
//!
//! Files: [`model`] holds the types going in and out, [`builder`] collects objects in nft's
//! order, [`expr`] the expression constructors; [`inet`], [`bridge`] and [`port_binding`]
//! each render one part of the ruleset; [`batch`] makes transactions of the result and
//! [`json`] serialises them the way nft reads them.
//!
//! This module builds values only; applying them is [`crate::nft`]'s job.

mod batch;
mod bridge;
mod builder;
mod expr;
mod inet;
mod json;
mod model;
mod port_binding;
#[cfg(test)]
mod tests;

pub use batch::delete_batch;
pub use json::to_nft_json;
pub use model::{L2Match, Network, Reason, Ruleset};

use crate::bindings::PortBinding;
use crate::config::Policy;
use builder::Builder;

/// Renders the full ruleset. Pure and deterministic: the same inputs give byte-identical JSON.
/// `ports` is the port map (see [`crate::bindings`]); `None` renders no port binding (disabled:
/// anti-spoofing is then only "source inside the tenant subnet").
pub fn render(p: &Policy, net: &Network, l2: L2Match, ports: Option<&[PortBinding]>) -> Ruleset {
    render_full(p, net, l2, ports, &[])
}

/// [`render`], plus the tenant-bridge ports known to have no binding (`unbound`, from the
/// kernel's port list): they are sent to `drop_unbound` by name (`unbound_ports`), which
/// matters where bridge meta expressions are missing and a port's bridge is otherwise unknown.
pub fn render_full(
    p: &Policy,
    net: &Network,
    l2: L2Match,
    ports: Option<&[PortBinding]>,
    unbound: &[String],
) -> Ruleset {
    let mut b = Builder::new(&p.table);
    inet::render(&mut b, p, net);
    bridge::render(&mut b, p, net, l2);
    if let Some(ports) = ports {
        port_binding::render(&mut b, p, net, l2, ports, unbound);
    }
    b.finish()
}
