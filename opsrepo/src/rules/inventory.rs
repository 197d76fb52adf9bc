//! Inventory, placement, access, DR and manifest references.

use std::collections::{HashMap, HashSet};

use crate::diag::Finding;
use crate::load::{IdMap, Model, index_by};
use crate::model::{PERMISSION_DOMAINS, ScopeKind, ServiceKind};

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    let sites = index_by(&m.sites, |s| &s.id, "/id", "site", out);
    let nodes = index_by(&m.nodes, |n| &n.id, "/id", "node", out);
    let shards = index_by(&m.shards, |s| &s.id, "/id", "shard", out);
    let tenants = index_by(&m.tenants, |t| &t.id, "/id", "tenant", out);
    let roles = index_by(&m.roles, |r| &r.id, "/id", "role", out);
    index_by(&m.bindings, |b| &b.id, "/id", "binding", out);
    index_by(&m.dr_stores, |d| &d.id, "/id", "DR store", out);
    index_by(
        &m.placements,
        |p| &p.tenant,
        "/tenant",
        "placement for tenant",
        out,
    );
    let mut kinds_seen = HashSet::new();
    for s in &m.services {
        if !kinds_seen.insert(s.spec.kind) {
            let (p, pos) = s.at("/kind");
            out.push(
                Finding::new(
                    "id.duplicate",
                    p,
                    pos,
                    format!("service kind `{}` is declared twice", s.spec.kind),
                )
                .help("keep one document per service kind"),
            );
        }
    }
    let envs: HashSet<&str> = m
        .manifest
        .iter()
        .flat_map(|d| d.spec.environments.keys().map(String::as_str))
        .collect();

    let unresolved =
        |rule: &'static str, loc: (&str, crate::diag::Pos), what: String, help: &str| {
            Finding::new(rule, loc.0, loc.1, what).help(help.to_owned())
        };

    // Manifest: promotion order, branches and sites.
    if let Some(md) = &m.manifest {
        let mut branches: HashMap<&str, &str> = HashMap::new();
        for (name, env) in &md.spec.environments {
            let ptr = format!("/environments/{name}");
            if let Some(other) = branches.insert(&env.branch, name) {
                out.push(unresolved(
                    "manifest.environments",
                    md.at(&format!("{ptr}/branch")),
                    format!(
                        "environments `{other}` and `{name}` use the same branch `{}`",
                        env.branch
                    ),
                    "give every environment its own branch",
                ));
            }
            if let Some(from) = &env.promote_from {
                match md.spec.environments.get(from) {
                    None => out.push(unresolved(
                        "manifest.environments",
                        md.at(&format!("{ptr}/promote_from")),
                        format!("environment `{name}` is promoted from `{from}`, which is not declared"),
                        "name a declared environment",
                    )),
                    Some(src) if src.order >= env.order => out.push(unresolved(
                        "manifest.environments",
                        md.at(&format!("{ptr}/promote_from")),
                        format!(
                            "`{name}` (order {}) is promoted from `{from}` (order {}); promotion must go to a higher order",
                            env.order, src.order
                        ),
                        "fix `order` so that promotion runs dev → staging → prod",
                    )),
                    _ => {}
                }
            }
            for (i, s) in env.sites.iter().enumerate() {
                if !sites.contains_key(s.as_str()) && !m.sites.is_empty() {
                    out.push(unresolved(
                        "ref.inventory",
                        md.at(&format!("{ptr}/sites/{i}")),
                        format!("environment `{name}` spans site `{s}`, which inventory/sites does not declare"),
                        "declare the site under inventory/sites/ or fix the name",
                    ));
                }
            }
        }
    }

    for s in &m.sites {
        for (i, l) in s.spec.links.iter().enumerate() {
            if !sites.contains_key(l.to.as_str()) {
                out.push(unresolved(
                    "ref.inventory",
                    s.at(&format!("/links/{i}/to")),
                    format!("site link to unknown site `{}`", l.to),
                    "link to a site declared under inventory/sites/",
                ));
            }
        }
    }
    for n in &m.nodes {
        if !sites.contains_key(n.spec.site.as_str()) {
            out.push(unresolved(
                "ref.inventory",
                n.at("/site"),
                format!("node `{}` is in unknown site `{}`", n.spec.id, n.spec.site),
                "declare the site under inventory/sites/ or fix the name",
            ));
        }
        // The daemon refuses to call such a node at runtime (NodeError::TlsRequired); say so
        // before it merges.
        if n.spec.tls == crate::model::NodeTls::Required
            && !n.spec.admin_url.starts_with("https://")
        {
            out.push(unresolved(
                "inventory.node-tls",
                n.at("/admin_url"),
                format!(
                    "node `{}` requires TLS (tls = \"required\") but its admin_url {} is plain HTTP: vakt would never call it",
                    n.spec.id, n.spec.admin_url
                ),
                "change admin_url to https://, or drop `tls = \"required\"`",
            ));
        }
    }
    for sh in &m.shards {
        if !sites.contains_key(sh.spec.site.as_str()) {
            out.push(unresolved(
                "ref.inventory",
                sh.at("/site"),
                format!(
                    "shard `{}` is in unknown site `{}`",
                    sh.spec.id, sh.spec.site
                ),
                "declare the site under inventory/sites/ or fix the name",
            ));
        }
        for (i, nid) in sh.spec.nodes.iter().enumerate() {
            let loc = sh.at(&format!("/nodes/{i}"));
            match nodes.get(nid.as_str()) {
                None => out.push(unresolved(
                    "ref.inventory",
                    loc,
                    format!("shard `{}` is served by unknown node `{nid}`", sh.spec.id),
                    "declare the node under inventory/nodes/ or fix the name",
                )),
                Some(n)
                    if n.spec.service_kind != sh.spec.service_kind
                        || n.spec.site != sh.spec.site =>
                {
                    out.push(unresolved(
                        "ref.inventory",
                        loc,
                        format!(
                            "shard `{}` ({} in {}) is served by node `{nid}` ({} in {})",
                            sh.spec.id,
                            sh.spec.service_kind,
                            sh.spec.site,
                            n.spec.service_kind,
                            n.spec.site
                        ),
                        "a shard's nodes must run its service kind in its site",
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let mut placed: IdMap<&str, &crate::load::Doc<crate::model::Placement>> =
        IdMap::with_capacity_and_hasher(m.placements.len(), Default::default());
    for p in &m.placements {
        if !tenants.contains_key(p.spec.tenant.as_str()) {
            out.push(unresolved(
                "ref.placement",
                p.at("/tenant"),
                format!("placement for unknown tenant `{}`", p.spec.tenant),
                "create config/tenants/<tenant>/tenant.toml or remove the placement",
            ));
        }
        placed.insert(&p.spec.tenant, p);
        for kind in ServiceKind::ALL {
            match p.spec.shards.get(&kind) {
                None => out.push(unresolved(
                    "placement.incomplete",
                    p.at("/shards"),
                    format!("tenant `{}` has no {kind} shard", p.spec.tenant),
                    "add the service kind under [shards]; every tenant is placed for every kind",
                )),
                Some(sid) => match shards.get(sid.as_str()) {
                    None => out.push(unresolved(
                        "ref.placement",
                        p.at(&format!("/shards/{kind}")),
                        format!("unknown shard `{sid}`"),
                        "name a shard declared under inventory/shards/",
                    )),
                    Some(sh) if sh.spec.service_kind != kind => out.push(unresolved(
                        "ref.placement",
                        p.at(&format!("/shards/{kind}")),
                        format!(
                            "shard `{sid}` is a {} shard, not {kind}",
                            sh.spec.service_kind
                        ),
                        "place each kind on a shard of that kind",
                    )),
                    Some(_) => {}
                },
            }
        }
    }
    for t in &m.tenants {
        if !placed.contains_key(t.spec.id.as_str()) && !m.tenants.is_empty() {
            out.push(unresolved(
                "placement.incomplete",
                t.at("/id"),
                format!("tenant `{}` has no placement", t.spec.id),
                "add inventory/placement/<tenant>.toml",
            ));
        }
        if !sites.contains_key(t.spec.home_site.as_str()) {
            out.push(unresolved(
                "ref.inventory",
                t.at("/home_site"),
                format!("tenant home site `{}` is not declared", t.spec.home_site),
                "name a site declared under inventory/sites/",
            ));
        }
    }

    // Access.
    for r in &m.roles {
        for (i, perm) in r.spec.permissions.iter().enumerate() {
            let domain = perm.split('.').next().unwrap_or("");
            if domain != "*" && !PERMISSION_DOMAINS.contains(&domain) {
                out.push(unresolved(
                    "ref.access",
                    r.at(&format!("/permissions/{i}")),
                    format!("permission `{perm}` is in unknown domain `{domain}`"),
                    "use one of iam, tenants, configs, definitions, scale, ops, observability, audit",
                ));
            }
        }
    }
    for b in &m.bindings {
        for (i, role) in b.spec.roles.iter().enumerate() {
            if !roles.contains_key(role.as_str()) {
                out.push(unresolved(
                    "ref.access",
                    b.at(&format!("/roles/{i}")),
                    format!("binding `{}` names unknown role `{role}`", b.spec.id),
                    "name a role declared under access/roles/",
                ));
            }
        }
        let scope = &b.spec.scope;
        let ok = match (scope.kind, scope.value.as_deref()) {
            (ScopeKind::Global, None) => true,
            (ScopeKind::Tenant, Some(t)) => tenants.contains_key(t),
            (ScopeKind::Environment, Some(e)) => envs.contains(e),
            _ => false,
        };
        if !ok {
            out.push(unresolved(
                "ref.access",
                b.at("/scope"),
                format!("binding `{}` has a scope that does not resolve", b.spec.id),
                "global scopes take no value; tenant and environment scopes name a declared tenant or environment",
            ));
        }
    }

    // DR posture.
    let runbook_ids: HashSet<&str> = m
        .catalogs
        .iter()
        .flat_map(|c| c.spec.runbooks.iter().map(|r| r.id.as_str()))
        .collect();
    for d in &m.dr_stores {
        if !runbook_ids.contains(d.spec.runbook.as_str()) {
            out.push(unresolved(
                "ref.runbook",
                d.at("/runbook"),
                format!(
                    "DR store `{}` names unknown runbook `{}`",
                    d.spec.id, d.spec.runbook
                ),
                "name a runbook id from runbooks/runbooks.catalog.json",
            ));
        }
        for (i, s) in d.spec.sites.iter().enumerate() {
            if !sites.contains_key(s.as_str()) {
                out.push(unresolved(
                    "ref.inventory",
                    d.at(&format!("/sites/{i}")),
                    format!("unknown site `{s}`"),
                    "name a site declared under inventory/sites/",
                ));
            }
        }
        for (i, l) in d.spec.backup.locations.iter().enumerate() {
            if !sites.contains_key(l.site.as_str()) {
                out.push(unresolved(
                    "ref.inventory",
                    d.at(&format!("/backup/locations/{i}/site")),
                    format!("backup location in unknown site `{}`", l.site),
                    "name a site declared under inventory/sites/",
                ));
            }
        }
    }
}
