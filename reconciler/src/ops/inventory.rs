//! Discovered inventory: what nodes report that Git does not declare (another id at a declared
//! admin URL, another version, site or service kind). The daemon records each in the state
//! bucket (`inventory.discovered.<id>`); `vakt inventory adopt` turns one into a declaration in
//! a work tree for a pull request, `vakt inventory reject` marks it untrusted (audited).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ops::nodes::{Observation, Trust};
use crate::store::Store;
use crate::store::audit::{Audit, AuditEvent, now_rfc3339};
use crate::store::state;

/// A node as it reported itself, where Git disagrees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Discovered {
    pub node_id: String,
    pub service_kind: String,
    pub site: String,
    pub version: String,
    /// The declared node whose admin URL it answered at.
    pub declared_as: String,
    pub admin_url: String,
    pub first_seen: String,
    /// What differs from Git.
    pub detail: String,
}

/// An operator's refusal of a discovered item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rejected {
    pub node_id: String,
    pub by: String,
    pub reason: String,
    pub at: String,
}

fn dkey(id: &str) -> String {
    format!("inventory.discovered.{id}")
}

fn rkey(id: &str) -> String {
    format!("inventory.rejected.{id}")
}

/// Records the conflicting observations (once per node and content).
pub async fn record(
    store: &Store,
    observations: &[Observation],
) -> Result<(), crate::store::StoreError> {
    for o in observations
        .iter()
        .filter(|o| o.trust == Trust::Conflicting)
    {
        let (Some(info), Some(d)) = (&o.info, &o.declared) else {
            continue;
        };
        let key = dkey(&info.node_id);
        let prev = state::get::<Discovered>(&store.state, &key)
            .await?
            .map(|(p, _)| p);
        let rec = Discovered {
            node_id: info.node_id.clone(),
            service_kind: info.service_kind.clone(),
            site: info.site.clone(),
            version: info.version.clone(),
            declared_as: d.id.clone(),
            admin_url: d.admin_url.clone(),
            first_seen: prev
                .as_ref()
                .map_or_else(now_rfc3339, |p| p.first_seen.clone()),
            detail: o.detail.clone().unwrap_or_default(),
        };
        if prev.as_ref() != Some(&rec) {
            state::put(&store.state, &key, &rec).await?;
        }
    }
    Ok(())
}

/// Every discovered item with its rejection, if any.
pub async fn list(
    store: &Store,
) -> Result<Vec<(Discovered, Option<Rejected>)>, crate::store::StoreError> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut keys = store
        .state
        .keys()
        .await
        .map_err(|e| crate::store::nats_err("list inventory", e))?;
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| crate::store::nats_err("list inventory", e))?;
        if let Some(id) = k.strip_prefix("inventory.discovered.")
            && let Some((d, _)) = state::get::<Discovered>(&store.state, &k).await?
        {
            let r = state::get::<Rejected>(&store.state, &rkey(id))
                .await?
                .map(|(r, _)| r);
            out.push((d, r));
        }
    }
    Ok(out)
}

/// Writes the declaration of a discovered node into the work tree at `repo` (a pull request
/// makes it real). Returns the file written.
pub async fn adopt(
    store: &Store,
    audit: &mut Audit,
    repo: &Path,
    id: &str,
    actor: &str,
) -> Result<PathBuf, Error> {
    let Some((d, _)) = state::get::<Discovered>(&store.state, &dkey(id)).await? else {
        return Err(Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            format!(
                "no discovered node `{id}` in {}; `vakt inventory list --env {}` shows what was discovered",
                store.env, store.env
            ),
        ));
    };
    let template = repo.join(format!("inventory/nodes/{}.toml", d.declared_as));
    let text = std::fs::read_to_string(&template).map_err(|e| {
        Error::Other(format!(
            "{}: {e} (adopt runs in a work tree of the ops repo)",
            template.display()
        ))
    })?;
    let target = repo.join(format!("inventory/nodes/{}.toml", d.node_id));
    let mut out = String::new();
    if d.node_id != d.declared_as {
        out.push_str(&format!(
            "# Adopted by {actor} on {}: discovered answering at {}'s admin URL.\n# Review every field before merging.\n",
            &now_rfc3339()[..10],
            d.declared_as
        ));
    }
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let repl = match key {
            "id" => Some(format!("id = \"{}\"", d.node_id)),
            "site" => Some(format!("site = \"{}\"", d.site)),
            "service_kind" => Some(format!("service_kind = \"{}\"", d.service_kind)),
            "version" => Some(format!("version = \"{}\"", d.version)),
            _ => None,
        };
        out.push_str(&repl.unwrap_or_else(|| line.to_owned()));
        out.push('\n');
    }
    let tmp = target.with_extension("toml.tmp");
    std::fs::write(&tmp, &out).map_err(|e| Error::Other(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &target)
        .map_err(|e| Error::Other(format!("{}: {e}", target.display())))?;
    let mut ev = AuditEvent::new(
        format!("inventory/adopt/{id}/{}", now_rfc3339()),
        &store.env,
        actor,
        "inventory.adopt",
        "written",
    );
    ev.target = Some(format!("inventory/nodes/{}.toml", d.node_id));
    ev.reason = Some(d.detail.clone());
    audit.refresh_head().await?;
    audit.record(ev).await?;
    Ok(target)
}

/// Marks a discovered node untrusted.
pub async fn reject(
    store: &Store,
    audit: &mut Audit,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Rejected, Error> {
    if reason.trim().is_empty() {
        return Err(Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            "a reason is required (--reason \"…\")",
        ));
    }
    if state::get::<Discovered>(&store.state, &dkey(id))
        .await?
        .is_none()
    {
        return Err(Error::refused(
            crate::outcome::RefusalKind::ActionNotAllowed,
            format!("no discovered node `{id}` in {}", store.env),
        ));
    }
    let r = Rejected {
        node_id: id.to_owned(),
        by: actor.to_owned(),
        reason: reason.to_owned(),
        at: now_rfc3339(),
    };
    state::put(&store.state, &rkey(id), &r).await?;
    let mut ev = AuditEvent::new(
        format!("inventory/reject/{id}/{}", r.at),
        &store.env,
        actor,
        "inventory.reject",
        "untrusted",
    );
    ev.target = Some(format!("node:{id}"));
    ev.reason = Some(reason.to_owned());
    audit.refresh_head().await?;
    audit.record(ev).await?;
    Ok(r)
}
