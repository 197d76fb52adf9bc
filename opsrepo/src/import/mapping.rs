//! The mapping file of `vakt import --mapping FILE` (TOML): overrides of every default the
//! import applies. Every table is optional.
//!
//! ```toml
//! [escalation]            # alert `severity` label -> `escalation` label
//! critical = "urgent"
//! warning = "action-required"
//! info = "informational"
//!
//! [signals]               # alert name -> signal key (default: the name in snake_case)
//! KubePodCrashLooping = "pod_crash_looping"
//!
//! [headings]              # source heading (any case) -> required runbook section
//! Meaning = "Trigger"
//!
//! [runbook_ids]           # page path under the imported folder -> runbook id
//! "kubernetes/KubePodCrashLooping.md" = "k8s.pod-crash-looping"
//!
//! [runbook_urls]          # runbook_url -> runbook id, when no rule matches it
//! "https://wiki.example.com/x" = "k8s.pod-crash-looping"
//!
//! [datasources]           # Grafana datasource type -> repo datasource uid
//! prometheus = "victoriametrics"
//!
//! owner_team = "platform-sre"   # owner of pages whose front matter names none
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ImportError;

/// Largest mapping file read.
const MAX_MAPPING_BYTES: u64 = 1024 * 1024;

/// Overrides of the import's defaults; see the module documentation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    pub escalation: BTreeMap<String, String>,
    #[serde(default)]
    pub signals: BTreeMap<String, String>,
    #[serde(default)]
    pub headings: BTreeMap<String, String>,
    #[serde(default)]
    pub runbook_ids: BTreeMap<String, String>,
    #[serde(default)]
    pub runbook_urls: BTreeMap<String, String>,
    #[serde(default)]
    pub datasources: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_team: Option<String>,
}

/// The default `severity` -> `escalation` mapping.
pub const DEFAULT_ESCALATION: &[(&str, &str)] = &[
    ("critical", "urgent"),
    ("warning", "action-required"),
    ("info", "informational"),
];

/// The default heading map: source heading (lowercase) -> required section.
pub const DEFAULT_HEADINGS: &[(&str, &str)] = &[
    ("meaning", "Trigger"),
    ("impact", "Trigger"),
    ("summary", "Trigger"),
    ("symptoms", "Trigger"),
    ("diagnosis", "Evidence to review first"),
    ("investigation", "Evidence to review first"),
    ("mitigation", "Allowed actions"),
    ("remediation", "Allowed actions"),
    ("resolution", "Allowed actions"),
    ("escalation", "Severity and escalation"),
    ("severity", "Severity and escalation"),
];

impl Mapping {
    /// Reads a mapping file.
    pub fn read(path: &Path) -> Result<Mapping, ImportError> {
        let err = |message: String| ImportError::Mapping {
            path: path.to_owned(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_MAPPING_BYTES {
            return Err(err(format!(
                "is larger than {MAX_MAPPING_BYTES} bytes; a mapping file is a few tables"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let m: Mapping = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        for (h, s) in &m.headings {
            if !crate_sections().iter().any(|r| r.eq_ignore_ascii_case(s)) {
                return Err(err(format!(
                    "[headings] maps `{h}` to `{s}`, which is not a required section ({})",
                    crate_sections().join(", ")
                )));
            }
        }
        for (sev, esc) in &m.escalation {
            if !matches!(esc.as_str(), "informational" | "action-required" | "urgent") {
                return Err(err(format!(
                    "[escalation] maps `{sev}` to `{esc}`; use informational, action-required or urgent"
                )));
            }
        }
        Ok(m)
    }

    /// The escalation for a severity label, and whether it came from the defaults.
    pub fn escalation(&self, severity: &str) -> (String, bool) {
        if let Some(e) = self.escalation.get(severity) {
            return (e.clone(), false);
        }
        let e = DEFAULT_ESCALATION
            .iter()
            .find(|(s, _)| *s == severity)
            .map_or("informational", |(_, e)| e);
        (e.to_owned(), true)
    }

    /// The required section a source heading maps to, if any.
    pub fn section(&self, heading: &str) -> Option<String> {
        let h = heading.trim().to_lowercase();
        if let Some((_, s)) = self.headings.iter().find(|(k, _)| k.to_lowercase() == h) {
            return crate_sections()
                .iter()
                .find(|r| r.eq_ignore_ascii_case(s))
                .map(|s| (*s).to_owned());
        }
        if let Some(r) = crate_sections().iter().find(|r| r.eq_ignore_ascii_case(&h)) {
            return Some((*r).to_owned());
        }
        DEFAULT_HEADINGS
            .iter()
            .find(|(k, _)| *k == h)
            .map(|(_, s)| (*s).to_owned())
    }
}

/// The sections every runbook has: the runbook rule's own list.
pub(crate) fn crate_sections() -> [&'static str; 6] {
    crate::rules::REQUIRED_SECTIONS
}
