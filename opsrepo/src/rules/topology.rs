//! The two-datacenter topology: a site can take the other sites' tenants when they are gone
//! (`topology.capacity`), a stateful service's shard survives the loss of one node
//! (`topology.stateful-replicas`), and every quorum system (NATS, Vault) keeps a majority when
//! any one site is lost (`topology.quorum`).
//!
//! Capacity is counted per service kind. A shard holds at most `min(shard.max_tenants, every
//! node's capacity.max_tenants)` tenants and, on the aggregate (command) path, at most the
//! smallest `capacity.max_inflight` of its nodes in flight: a shard's nodes are replicas, so
//! the shard can do what its weakest node can do once the others are gone. A site's load when
//! the others are lost is every tenant placed on that kind anywhere, and on the command path
//! the sum of their `quotas.max_inflight_commands`. Witness sites hold no shards and take no
//! load.

use std::collections::{BTreeMap, HashMap};

use crate::diag::Finding;
use crate::load::{IdMap, Model};
use crate::model::{ServiceKind, SiteRole};

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    replicas(m, out);
    capacity(m, out);
    quorum(m, out);
}

fn replicas(m: &Model, out: &mut Vec<Finding>) {
    let stateful: HashMap<ServiceKind, bool> = m
        .services
        .iter()
        .map(|s| (s.spec.kind, s.spec.stateful))
        .collect();
    for sh in &m.shards {
        if !stateful
            .get(&sh.spec.service_kind)
            .copied()
            .unwrap_or(false)
        {
            continue;
        }
        let n = sh.spec.nodes.len();
        if n < 2 {
            let (p, pos) = sh.at("/nodes");
            out.push(
                Finding::new(
                    "topology.stateful-replicas",
                    p,
                    pos,
                    format!(
                        "shard `{}` of stateful service {} has {n} node{}: losing it strands its tenants' data until a restore",
                        sh.spec.id,
                        sh.spec.service_kind,
                        if n == 1 { "" } else { "s" }
                    ),
                )
                .help("add a second node of the same service kind and site to `nodes` (declare it under inventory/nodes/)"),
            );
        }
    }
}

/// What one site's shards of one kind can hold.
#[derive(Default)]
struct Room {
    tenants: u64,
    inflight: u64,
    /// Tenants placed on this site's shards of the kind.
    own: u64,
    own_inflight: u64,
}

fn capacity(m: &Model, out: &mut Vec<Finding>) {
    let nodes: IdMap<&str, &crate::model::Node> = m
        .nodes
        .iter()
        .map(|n| (n.spec.id.as_str(), &n.spec))
        .collect();
    // (site, kind) -> room, each room also at its index in `room_of` so a placement's shard
    // finds its room without comparing site names.
    let mut rooms: BTreeMap<(&str, ServiceKind), usize> = BTreeMap::new();
    let mut room_of: Vec<Room> = Vec::new();
    // Shard id -> (kind, index of its site's room of that kind).
    let mut shard_room: IdMap<&str, (ServiceKind, usize)> =
        IdMap::with_capacity_and_hasher(m.shards.len(), Default::default());
    for sh in &m.shards {
        let members: Vec<&crate::model::Node> = sh
            .spec
            .nodes
            .iter()
            .filter_map(|n| nodes.get(n.as_str()).copied())
            .collect();
        let tenants = members
            .iter()
            .map(|n| n.capacity.max_tenants)
            .min()
            .map_or(sh.spec.max_tenants, |n| n.min(sh.spec.max_tenants));
        let inflight = members
            .iter()
            .map(|n| n.capacity.max_inflight)
            .min()
            .unwrap_or(0);
        let i = *rooms
            .entry((sh.spec.site.as_str(), sh.spec.service_kind))
            .or_insert_with(|| {
                room_of.push(Room::default());
                room_of.len() - 1
            });
        room_of[i].tenants += u64::from(tenants);
        room_of[i].inflight += u64::from(inflight);
        // A duplicate shard id: the last one counts (the duplicate is reported elsewhere).
        shard_room.insert(sh.spec.id.as_str(), (sh.spec.service_kind, i));
    }
    let quota: IdMap<&str, u64> = m
        .tenants
        .iter()
        .map(|t| {
            (
                t.spec.id.as_str(),
                u64::from(t.spec.quotas.max_inflight_commands),
            )
        })
        .collect();
    // Load per kind: every tenant placed on a shard of the kind, and its in-flight quota.
    let mut load: BTreeMap<ServiceKind, (u64, u64)> = BTreeMap::new();
    for p in &m.placements {
        let q = quota.get(p.spec.tenant.as_str()).copied().unwrap_or(0);
        for (kind, sid) in &p.spec.shards {
            let Some(&(k, room)) = shard_room.get(sid.as_str()) else {
                continue; // ref.placement reports it
            };
            if k != *kind {
                continue;
            }
            let l = load.entry(*kind).or_default();
            l.0 += 1;
            l.1 += q;
            room_of[room].own += 1;
            room_of[room].own_inflight += q;
        }
    }
    for s in &m.sites {
        if s.spec.role == SiteRole::Witness {
            continue;
        }
        let site = s.spec.id.as_str();
        let mut short: Vec<String> = Vec::new();
        for (kind, (tenants, inflight)) in &load {
            let empty = Room::default();
            let r = rooms.get(&(site, *kind)).map_or(&empty, |&i| &room_of[i]);
            if r.tenants < *tenants {
                short.push(format!(
                    "{kind} shards hold {} tenants, {tenants} are placed ({} here, {} elsewhere): short by {}",
                    r.tenants,
                    r.own,
                    tenants - r.own,
                    tenants - r.tenants
                ));
            }
            // Commands run on the aggregate path: in-flight quotas must fit there.
            if *kind == ServiceKind::Aggregate && r.inflight < *inflight {
                short.push(format!(
                    "aggregate shards take {} commands in flight, the placed tenants' quotas.max_inflight_commands add up to {inflight} ({} here, {} elsewhere): short by {}",
                    r.inflight,
                    r.own_inflight,
                    inflight - r.own_inflight,
                    inflight - r.inflight
                ));
            }
        }
        if !short.is_empty() {
            let (p, pos) = s.at("/id");
            out.push(
                Finding::new(
                    "topology.capacity",
                    p,
                    pos,
                    format!(
                        "site `{site}` cannot take the other sites' tenants if they are lost: {}",
                        short.join("; ")
                    ),
                )
                .help("add shards or nodes in this site (inventory/shards/, inventory/nodes/ `capacity`), or raise `max_tenants` / `max_inflight` where the hardware allows"),
            );
        }
    }
}

fn quorum(m: &Model, out: &mut Vec<Finding>) {
    let mut total: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &m.sites {
        for (sys, n) in &s.spec.quorum {
            *total.entry(sys.as_str()).or_default() += u64::from(*n);
        }
    }
    for s in &m.sites {
        for (sys, n) in &s.spec.quorum {
            let n = u64::from(*n);
            let all = total.get(sys.as_str()).copied().unwrap_or(0);
            let left = all - n;
            if n > 0 && left * 2 <= all {
                let (p, pos) = s.at(&format!("/quorum/{sys}"));
                out.push(
                    Finding::new(
                        "topology.quorum",
                        p,
                        pos,
                        format!(
                            "losing site `{}` leaves {sys} with {left} of {all} voters: no majority, so it stops accepting writes",
                            s.spec.id
                        ),
                    )
                    .help("spread the voters so no site holds half or more: e.g. 2 + 2 in the datacenters and 1 on a witness site (inventory/sites/<id>.toml, role = \"witness\")"),
                );
            }
        }
    }
}
