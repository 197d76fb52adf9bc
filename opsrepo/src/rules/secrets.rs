//! Secret detection: known token formats and private key blocks anywhere in any file, and
//! secret-looking values (by key name or entropy) in structured documents. Only
//! `secret://<backend>/<path>#<field>` references are allowed where a credential belongs.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use crate::diag::{Finding, Pos};
use crate::parse::LineIndex;

struct Pattern {
    name: &'static str,
    re: Regex,
}

fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        [
            (
                "private key block",
                r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----",
            ),
            ("NATS user credentials", r"-----BEGIN NATS USER JWT-----"),
            ("NATS NKey seed", r"\bS[UOANCA][A-Z2-7]{56}\b"),
            ("AWS access key id", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
            ("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
            (
                "GitHub fine-grained token",
                r"\bgithub_pat_[A-Za-z0-9_]{40,}\b",
            ),
            ("GitLab token", r"\bglpat-[A-Za-z0-9_-]{20,}\b"),
            ("Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
            ("Stripe secret key", r"\b[sr]k_live_[A-Za-z0-9]{20,}\b"),
            ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
            (
                "JSON web token",
                r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            ),
            (
                "password in a URL",
                r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]+@",
            ),
        ]
        .into_iter()
        .map(|(name, re)| Pattern {
            name,
            re: Regex::new(re).expect("static pattern"),
        })
        .collect()
    })
}

/// What every pattern of [`patterns`] starts with (a superset of their matches, one pass).
fn hints() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"-----BEGIN|AKIA|ASIA|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|[sr]k_live_|AIza|eyJ|://|S[UOANCA][A-Z2-7]{56}",
        )
        .expect("static pattern")
    })
}

fn sensitive_key() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"(?i)(passw(or)?d|passphrase|secret|token|api_?key|private_?key|credential|client_secret|access_key|signing_key)")
            .expect("static pattern")
    })
}

/// Scans the raw text of any file for known secret formats.
pub fn scan_text(path: &str, text: &str, out: &mut Vec<Finding>) {
    // One pass over the text first: every pattern needs a match of this one.
    if !hints().is_match(text) {
        return;
    }
    let idx = LineIndex::new(text);
    for p in patterns() {
        if let Some(m) = p.re.find(text) {
            out.push(
                Finding::new("secret.value", path, idx.pos(m.start()), format!("looks like a {} in the repository", p.name))
                    .help("remove it, rotate the credential, and reference it as secret://<backend>/<path>#<field>"),
            );
        }
    }
}

/// Where a JSON pointer of the scanned document is: the file and position a finding names.
pub type Locate<'a> = &'a dyn Fn(&str) -> (String, Pos);

/// Scans the string values of a structured document by key name and entropy.
pub fn scan_values(value: &Value, locate: Locate<'_>, out: &mut Vec<Finding>) {
    let mut ptr = String::new();
    walk(locate, value, &mut ptr, None, out);
}

/// Walks `v` (at `ptr`, restored on return) looking for literal credentials.
fn walk(spans: Locate<'_>, v: &Value, ptr: &mut String, key: Option<&str>, out: &mut Vec<Finding>) {
    let len = ptr.len();
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                ptr.push('/');
                crate::parse::push_segment(ptr, k);
                walk(spans, child, ptr, Some(k), out);
                ptr.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                use std::fmt::Write;
                let _ = write!(ptr, "/{i}");
                walk(spans, child, ptr, key, out);
                ptr.truncate(len);
            }
        }
        Value::String(s) => {
            if let Some(why) = suspicious(key, s) {
                let (p, pos) = spans(ptr);
                out.push(
                    Finding::new("secret.value", &p, pos, why)
                        .help("store the value in the secrets backend and write secret://<backend>/<path>#<field> here"),
                );
            }
        }
        _ => {}
    }
}

fn suspicious(key: Option<&str>, s: &str) -> Option<String> {
    if s.starts_with("secret://") || s.is_empty() {
        return None;
    }
    let k = key.unwrap_or("");
    let looks_like_value = !s.contains(char::is_whitespace)
        && s.len() >= 8
        && !s.contains("://")
        && !is_duration(s)
        && !s.starts_with("sha256:");
    if looks_like_value
        && sensitive_key().is_match(k)
        && !k.ends_with("_header")
        && !k.ends_with("_ttl")
    {
        return Some(format!(
            "`{k}` holds a literal value where a secret reference belongs"
        ));
    }
    if s.len() >= 32
        && !s.contains(char::is_whitespace)
        && !s.contains("://")
        && !s.starts_with("sha256:")
    {
        let charset_ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=_-".contains(c));
        if charset_ok && entropy(s) >= 4.5 {
            return Some("high-entropy string looks like a credential".to_owned());
        }
    }
    None
}

fn is_duration(s: &str) -> bool {
    let mut digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if !"smhdwy".contains(c) {
            return false;
        }
    }
    digits
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes() {
        counts[b as usize] += 1;
        n += 1;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_known_formats() {
        let mut out = Vec::new();
        scan_text("a.md", "x\nkey: AKIAIOSFODNN7EXAMPLE\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].line, 2);
        let mut out = Vec::new();
        scan_text("a.md", "-----BEGIN OPENSSH PRIVATE KEY-----\n", &mut out);
        assert_eq!(out.len(), 1);
        let mut out = Vec::new();
        scan_text(
            "a.md",
            "see https://grafana.dataverket.internal/d/x and ghost_town",
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn every_nkey_seed_prefix_is_found() {
        // Server (SN) and cluster (SC) seeds too: the prefilter once knew only SU, SA and SO.
        for prefix in ["SU", "SO", "SA", "SN", "SC"] {
            let seed = format!("{prefix}{}", "A".repeat(56));
            let mut out = Vec::new();
            scan_text("a.md", &format!("note\nseed = {seed}\n"), &mut out);
            assert_eq!(out.len(), 1, "{prefix}: {out:?}");
            assert_eq!(out[0].line, 2);
        }
        let mut out = Vec::new();
        scan_text("a.md", "SNAPSHOT SCHEDULE", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn values_by_key_and_entropy() {
        assert!(suspicious(Some("password"), "hunter2hunter2").is_some());
        assert!(suspicious(Some("password"), "secret://vault/x#y").is_none());
        assert!(suspicious(Some("token_ttl"), "12h").is_none());
        assert!(suspicious(Some("tenant_header"), "x-tenant-id").is_none());
        assert!(suspicious(Some("note"), "q8Zr4TbX1vPq0LmN9sKd2Wf7Hj3Yc6Ae5Ug").is_some());
        assert!(suspicious(Some("digest"), &format!("sha256:{}", "ab".repeat(32))).is_none());
    }
}
