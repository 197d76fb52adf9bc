//! Saved plans: `vakt plan --live --out FILE` writes one, `vakt apply FILE` applies exactly it or
//! refuses, naming why.
//!
//! A saved plan holds the commit, the environment and its bucket prefix, the branch head it was
//! made at, the plan itself (every change with the live revision its write is conditional on),
//! the last stream sequence of every bucket when the live state was read (no key the plan read
//! can change without moving its bucket past that sequence), when it expires, and a SHA-256
//! digest over all of it in canonical JSON. The values to write are not stored: they are
//! recompiled from the commit, which is deterministic, and checked against each change's
//! target digest.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::desired::canon;
use crate::desired::compile::Desired;
use crate::desired::plan::Action;
use crate::desired::plan::LivePlan;
use crate::outcome::{RefusalKind, Refused};

/// The format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// What the `kind` field of a saved plan says.
pub const KIND: &str = "vakt-plan";
/// The largest saved plan read (a plan of 50,000 changes is about 20 MB).
pub const MAX_BYTES: u64 = 128 * 1024 * 1024;

/// A plan saved to a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    pub kind: String,
    pub format: u32,
    /// The vakt version that wrote it (informational).
    pub vakt_version: String,
    pub env: String,
    pub kv_prefix: String,
    pub branch: String,
    /// The branch head when the plan was made: if the branch moves, the plan is stale.
    pub branch_head: String,
    pub commit: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: String,
    pub planned: LivePlan,
    /// `sha256:<hex>` of the canonical JSON of every other field.
    #[serde(default)]
    pub digest: String,
}

/// Everything a saved plan records about where it was made.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub env: &'a str,
    pub kv_prefix: &'a str,
    pub branch: &'a str,
    pub branch_head: &'a str,
    pub actor: &'a str,
}

impl SavedPlan {
    /// Seals `planned` into a saved plan valid for `valid_for`.
    pub fn new(
        origin: &Origin<'_>,
        planned: LivePlan,
        now: OffsetDateTime,
        valid_for: std::time::Duration,
    ) -> SavedPlan {
        let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let expires = now + time::Duration::try_from(valid_for).unwrap_or(time::Duration::HOUR);
        let mut s = SavedPlan {
            kind: KIND.to_owned(),
            format: FORMAT,
            vakt_version: env!("CARGO_PKG_VERSION").to_owned(),
            env: origin.env.to_owned(),
            kv_prefix: origin.kv_prefix.to_owned(),
            branch: origin.branch.to_owned(),
            branch_head: origin.branch_head.to_owned(),
            commit: planned.plan.head.clone(),
            created_at: fmt(now),
            created_by: origin.actor.to_owned(),
            expires_at: fmt(expires),
            planned,
            digest: String::new(),
        };
        s.digest = s.compute_digest();
        s
    }

    fn compute_digest(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("digest");
        }
        canon::digest(&canon::to_vec(&v))
    }

    /// The file's bytes (pretty JSON, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    /// Writes the plan to `path` atomically (a hidden temporary sibling, synced, then renamed),
    /// so a reader never sees half a plan.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plan".into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads and checks a saved plan file: size, completeness, kind, format version and digest.
    /// Every refusal names the file and what is wrong with it.
    pub fn read(path: &Path) -> Result<SavedPlan, ReadError> {
        use std::io::Read;
        let name = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| ReadError::Io(format!("{name}: {e}")))?;
        let mut bytes = Vec::new();
        f.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ReadError::Io(format!("{name}: {e}")))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(invalid(format!(
                "{name} is larger than {} MiB: not a plan vakt wrote",
                MAX_BYTES / (1024 * 1024)
            )));
        }
        Self::parse(&name, &bytes)
    }

    /// [`SavedPlan::read`] on bytes already in memory; `name` is used in messages.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<SavedPlan, ReadError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            let hint = if e.is_eof() {
                "the file ends early: was it truncated?"
            } else {
                "it is not a plan written by `vakt plan --out`"
            };
            invalid(format!(
                "{name}:{}:{}: not a complete saved plan ({e}); {hint}",
                e.line(),
                e.column()
            ))
        })?;
        if v.get("kind").and_then(Value::as_str) != Some(KIND) {
            return Err(invalid(format!(
                "{name} is not a saved plan (its `kind` is not \"{KIND}\"); write one with `vakt plan --live --out FILE`"
            )));
        }
        match v.get("format").and_then(Value::as_u64) {
            Some(f) if f > u64::from(FORMAT) => {
                return Err(invalid(format!(
                    "{name} is a format {f} plan, newer than this vakt reads (format {FORMAT}, vakt {}); apply it with the vakt that wrote it, or plan again",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            Some(f) if f >= 1 => {}
            _ => {
                return Err(invalid(format!(
                    "{name} has no valid `format` version; plan again"
                )));
            }
        }
        let s: SavedPlan = serde_json::from_value(v).map_err(|e| {
            invalid(format!(
                "{name} does not have the shape of a format {FORMAT} plan ({e}); plan again"
            ))
        })?;
        let want = s.compute_digest();
        if s.digest != want {
            return Err(invalid(format!(
                "{name} was changed after vakt wrote it (its digest is {}, its content hashes to {want}); a saved plan cannot be edited: plan again",
                if s.digest.is_empty() {
                    "missing"
                } else {
                    &s.digest
                }
            )));
        }
        Ok(s)
    }

    /// Checks the plan against where it is applied: environment and bucket prefix.
    pub fn check_origin(&self, env: &str, kv_prefix: &str) -> Result<(), Refused> {
        let id = &self.planned.plan.id;
        if self.env != env {
            return Err(Refused::new(
                RefusalKind::PlanInvalid,
                format!("saved plan {id} is for environment {}, not {env}", self.env),
            ));
        }
        if self.kv_prefix != kv_prefix {
            return Err(Refused::new(
                RefusalKind::PlanInvalid,
                format!(
                    "saved plan {id} was made for buckets {}_*, not {kv_prefix}_*",
                    self.kv_prefix
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the plan still describes the world: not expired, and made at the branch's
    /// current head.
    pub fn check_fresh(&self, branch_head: &str, now: OffsetDateTime) -> Result<(), Refused> {
        let id = &self.planned.plan.id;
        match OffsetDateTime::parse(&self.expires_at, &Rfc3339) {
            Ok(t) if t > now => {}
            _ => {
                return Err(Refused::new(
                    RefusalKind::PlanStale,
                    format!(
                        "saved plan {id} expired at {}; nothing was written. Make a new plan",
                        self.expires_at
                    ),
                ));
            }
        }
        if self.branch_head != branch_head {
            return Err(Refused::new(
                RefusalKind::PlanStale,
                format!(
                    "saved plan {id} is stale: branch {} moved from {} to {} since it was made; nothing was written. Make a new plan",
                    self.branch,
                    crate::desired::short(&self.branch_head),
                    crate::desired::short(branch_head)
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the commit, compiled here, gives exactly the values the plan says it writes.
    pub fn check_desired(&self, d: &Desired) -> Result<(), Refused> {
        let p = &self.planned.plan;
        for c in &p.changes {
            let got = d.get(c.bucket, &c.key).map(|e| e.digest.as_str());
            let ok = match c.action {
                Action::Remove => got.is_none(),
                _ => got.is_some() && got == c.to_digest.as_deref(),
            };
            if !ok {
                return Err(Refused::new(
                    RefusalKind::PlanInvalid,
                    format!(
                        "saved plan {} does not match commit {} compiled by this vakt ({}/{}: planned {}, compiled {}); plan again with this vakt",
                        p.id,
                        crate::desired::short(&self.commit),
                        c.bucket,
                        c.key,
                        c.to_digest.as_deref().unwrap_or("removal"),
                        got.unwrap_or("nothing")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why a saved plan file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read at all.
    #[error("cannot read saved plan {0}")]
    Io(String),
    /// The file is not a plan vakt can trust.
    #[error(transparent)]
    Invalid(Refused),
}

fn invalid(reason: String) -> ReadError {
    ReadError::Invalid(Refused::new(RefusalKind::PlanInvalid, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::plan::Plan;

    fn sample() -> SavedPlan {
        let mut plan = Plan::empty("dev", &"c".repeat(40));
        plan.id = "plan-0123456789ab".into();
        plan.digest = "sha256:aa".into();
        let origin = Origin {
            env: "dev",
            kv_prefix: "vakt_dev",
            branch: "env/dev",
            branch_head: &"c".repeat(40),
            actor: "user:test",
        };
        SavedPlan::new(
            &origin,
            LivePlan {
                plan,
                read_seqs: Default::default(),
            },
            OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
            std::time::Duration::from_secs(3600),
        )
    }

    fn reason(e: ReadError) -> String {
        match e {
            ReadError::Invalid(r) => {
                assert_eq!(r.kind, RefusalKind::PlanInvalid);
                r.reason
            }
            ReadError::Io(m) => panic!("io: {m}"),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let back = SavedPlan::parse("p.json", &s.to_bytes()).unwrap();
        assert_eq!(back.digest, s.digest);
        assert_eq!(back.planned.plan.id, "plan-0123456789ab");
    }

    #[test]
    fn an_edited_plan_is_refused() {
        let b = String::from_utf8(sample().to_bytes())
            .unwrap()
            .replace("user:test", "user:mallory");
        let r = reason(SavedPlan::parse("p.json", b.as_bytes()).unwrap_err());
        assert!(r.contains("changed after vakt wrote it"), "{r}");
    }

    #[test]
    fn a_truncated_plan_is_refused_with_its_position() {
        let b = sample().to_bytes();
        let r = reason(SavedPlan::parse("p.json", &b[..b.len() / 2]).unwrap_err());
        assert!(r.starts_with("p.json:"), "{r}");
        assert!(r.contains("truncated"), "{r}");
    }

    #[test]
    fn a_future_format_is_refused_by_version() {
        let mut v: Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["format"] = 2.into();
        let r = reason(SavedPlan::parse("p.json", &serde_json::to_vec(&v).unwrap()).unwrap_err());
        assert!(r.contains("format 2 plan, newer"), "{r}");
        v["kind"] = "terraform".into();
        let r = reason(SavedPlan::parse("p.json", &serde_json::to_vec(&v).unwrap()).unwrap_err());
        assert!(r.contains("not a saved plan"), "{r}");
    }

    #[test]
    fn target_checks_name_the_cause() {
        let s = sample();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let head = "c".repeat(40);
        assert!(s.check_origin("dev", "vakt_dev").is_ok());
        assert!(s.check_fresh(&head, now).is_ok());
        let e = s.check_origin("prod", "vakt_dev").unwrap_err();
        assert_eq!(e.kind, RefusalKind::PlanInvalid);
        assert!(e.reason.contains("not prod"), "{}", e.reason);
        let e = s.check_origin("dev", "vakt_other").unwrap_err();
        assert!(e.reason.contains("vakt_other"), "{}", e.reason);
        let e = s.check_fresh(&"d".repeat(40), now).unwrap_err();
        assert_eq!(e.kind, RefusalKind::PlanStale);
        assert!(e.reason.contains("moved from"), "{}", e.reason);
        let later = now + time::Duration::hours(2);
        let e = s.check_fresh(&head, later).unwrap_err();
        assert_eq!(e.kind, RefusalKind::PlanStale);
        assert!(e.reason.contains("expired"), "{}", e.reason);
    }
}
