//! Who may call the operator API: bearer tokens (from a file outside the repo or
//! `VAKT_API_TOKENS_DATA`) and the permissions the roles and bindings of `access/` at the applied
//! commit give each subject.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::desired::compile::{Bucket, Desired};

/// Token → subject (`user:kari.nordby`).
#[derive(Debug, Clone, Default)]
pub struct Tokens(pub(super) BTreeMap<String, String>);

impl Tokens {
    /// Reads a tokens file; refuses one inside the ops repo (tokens never live in Git).
    pub fn load(path: &Path, repo: &Path) -> Result<Tokens, String> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        if canon(path).starts_with(canon(repo)) {
            return Err(format!(
                "{} is inside the ops repo; API tokens must never be kept in Git: move the file out",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(tok), Some(subj), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "{}:{}: expected `<token> <kind>:<name>`",
                    path.display(),
                    i + 1
                ));
            };
            if !subj.contains(':') || tok.len() < 16 {
                return Err(format!(
                    "{}:{}: tokens are at least 16 characters and subjects look like user:<name>",
                    path.display(),
                    i + 1
                ));
            }
            out.insert(tok.to_owned(), subj.to_owned());
        }
        Ok(Tokens(out))
    }
}

impl Tokens {
    /// The subject of a presented token. Every known token is compared, in constant time, so
    /// neither the answer's timing nor a map's ordering tells how close a guess was.
    pub fn subject(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (tok, subj) in &self.0 {
            if opsrepo::http::ct_eq(tok.as_bytes(), presented.as_bytes()) {
                found = Some(subj.as_str());
            }
        }
        found
    }

    /// Whether no token is configured (every API call is then refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Tokens from the environment: `VAKT_API_TOKENS_DATA`, the file format with lines or `;`
    /// separating entries. Merged with the file's.
    pub fn from_env(mut self) -> Result<Tokens, String> {
        let Ok(data) = std::env::var("VAKT_API_TOKENS_DATA") else {
            return Ok(self);
        };
        for (i, entry) in data.split(['\n', ';']).enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(t), Some(subj), None) if t.len() >= 16 && subj.contains(':') => {
                    self.0.insert(t.to_owned(), subj.to_owned());
                }
                _ => {
                    return Err(format!(
                        "VAKT_API_TOKENS_DATA entry {}: expected `<token of 16+ characters> <kind>:<name>`",
                        i + 1
                    ));
                }
            }
        }
        Ok(self)
    }
}

/// Roles and bindings of the applied commit.
#[derive(Debug, Clone, Default)]
pub struct Access {
    roles: BTreeMap<String, Vec<String>>,
    bindings: Vec<Value>,
}

impl Access {
    pub fn from_desired(d: &Desired) -> Access {
        let mut a = Access::default();
        for (k, e) in d.bucket(Bucket::Access) {
            let v = e.spec_value();
            if let Some(id) = k.strip_prefix("role.") {
                let perms = v["permissions"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                a.roles.insert(id.to_owned(), perms);
            } else if k.starts_with("binding.") {
                a.bindings.push(v);
            }
        }
        a
    }

    /// Whether roles have been loaded from an applied commit.
    pub fn is_loaded(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Whether `subject` (`kind:name`) holds `perm` in `env`.
    pub fn allows(&self, subject: &str, env: &str, perm: &str) -> bool {
        let Some((kind, name)) = subject.split_once(':') else {
            return false;
        };
        let now = time::OffsetDateTime::now_utc();
        self.bindings.iter().any(|b| {
            let subject_ok = b["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["kind"] == kind && x["name"] == name));
            let scope_ok = match b["scope"]["kind"].as_str() {
                Some("global") => true,
                Some("environment") => b["scope"]["value"] == env,
                _ => false,
            };
            let live = b["expires_at"].as_str().is_none_or(|e| {
                time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|t| t > now)
            });
            subject_ok
                && scope_ok
                && live
                && b["roles"].as_array().is_some_and(|roles| {
                    roles.iter().filter_map(Value::as_str).any(|r| {
                        self.roles
                            .get(r)
                            .is_some_and(|perms| perms.iter().any(|p| grants(p, perm)))
                    })
                })
        })
    }
}

/// `ops.*` grants `ops.jobs.retry`; `ops.jobs.retry` grants itself.
pub fn grants(pattern: &str, perm: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => perm.starts_with(prefix),
        None => pattern == perm,
    }
}
