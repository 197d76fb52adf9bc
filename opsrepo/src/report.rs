//! Rendering findings: human (rustc-like, with the offending line), JSON, GitHub workflow
//! commands, and SARIF 2.1.0.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::diag::{Finding, Severity};
use crate::rules::RULES;
use crate::validate::Report;

/// Output formats of `vakt validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Github,
    Sarif,
}

/// How much of a report the human and JSON formats show (`vakt validate --summary`,
/// `--max-per-rule`). The default shows every finding and no per-rule table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Add the count of findings per rule id (human: a table; JSON: `summary.by_rule`). In the
    /// human format it replaces the findings unless `max_per_rule` is also set.
    pub summary: bool,
    /// Human format: show at most this many findings of each rule and one line per rule saying
    /// how many were left out. `None` shows all of them (or none with `summary`).
    pub max_per_rule: Option<usize>,
}

/// The findings of one rule id, for `--summary`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleCount {
    pub rule: &'static str,
    /// The highest severity among the rule's findings.
    pub severity: Severity,
    pub count: usize,
}

/// Findings counted per rule id, most frequent first (ties by rule id).
pub fn counts_by_rule(report: &Report) -> Vec<RuleCount> {
    let mut by: std::collections::BTreeMap<&'static str, (Severity, usize)> =
        std::collections::BTreeMap::new();
    for f in &report.findings {
        let e = by.entry(f.rule).or_insert((f.severity, 0));
        e.0 = e.0.max(f.severity);
        e.1 += 1;
    }
    let mut out: Vec<RuleCount> = by
        .into_iter()
        .map(|(rule, (severity, count))| RuleCount {
            rule,
            severity,
            count,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(b.rule)));
    out
}

/// Renders a report. `color` adds ANSI colours to the human format only.
pub fn render(report: &Report, format: Format, color: bool) -> String {
    render_with(report, format, RenderOptions::default(), color)
}

/// Renders a report with `--summary` / `--max-per-rule` applied. Both only change the human
/// and JSON formats (GitHub annotations and SARIF always carry every finding).
pub fn render_with(report: &Report, format: Format, opts: RenderOptions, color: bool) -> String {
    match format {
        Format::Human => human(report, opts, color),
        Format::Json => json_report(report, opts),
        Format::Github => github(report),
        Format::Sarif => serde_json::to_string_pretty(&sarif(report)).unwrap_or_default() + "\n",
    }
}

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

fn human(report: &Report, opts: RenderOptions, color: bool) -> String {
    let mut out = String::new();
    // Findings per rule shown so far, and how many were left out (rule order of first sight).
    let limit = match (opts.summary, opts.max_per_rule) {
        (_, Some(n)) => n,
        (true, None) => 0,
        (false, None) => usize::MAX,
    };
    let mut shown: std::collections::HashMap<&'static str, usize> =
        std::collections::HashMap::new();
    let mut left_out: Vec<(&'static str, usize)> = Vec::new();
    for f in &report.findings {
        let n = shown.entry(f.rule).or_insert(0);
        if *n >= limit {
            match left_out.iter_mut().find(|(r, _)| *r == f.rule) {
                Some((_, c)) => *c += 1,
                None => left_out.push((f.rule, 1)),
            }
            continue;
        }
        *n += 1;
        let (label, code) = match f.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
            Severity::Note => ("note", "1;36"),
        };
        let _ = writeln!(
            out,
            "{}{}",
            paint(color, code, &format!("{label}[{}]", f.rule)),
            paint(color, "1", &format!(": {}", f.message))
        );
        let _ = writeln!(
            out,
            "  {} {}:{}:{}",
            paint(color, "1;34", "-->"),
            f.path,
            f.line,
            f.col
        );
        if let Some(line) = report
            .texts
            .get(&f.path)
            .and_then(|t| t.lines().nth(f.line as usize - 1))
        {
            let shown: String = line.chars().take(160).collect();
            let shown = crate::source::sanitize_path(&shown);
            let num = f.line.to_string();
            let pad = " ".repeat(num.len());
            let _ = writeln!(out, "{pad} {}", paint(color, "1;34", "|"));
            let _ = writeln!(
                out,
                "{} {} {shown}",
                paint(color, "1;34", &num),
                paint(color, "1;34", "|")
            );
            let caret_at = (f.col as usize)
                .saturating_sub(1)
                .min(shown.chars().count());
            let _ = writeln!(
                out,
                "{pad} {} {}{}",
                paint(color, "1;34", "|"),
                " ".repeat(caret_at),
                paint(color, code, "^")
            );
        }
        if !f.help.is_empty() {
            let _ = writeln!(out, "  = {}: {}", paint(color, "1", "help"), f.help);
        }
        out.push('\n');
    }
    if opts.max_per_rule.is_some() {
        for (rule, n) in &left_out {
            let _ = writeln!(
                out,
                "{}: {n} more {rule} finding{} not shown (raise --max-per-rule, or --format json for all)",
                paint(color, "1;36", "note"),
                if *n == 1 { "" } else { "s" },
            );
        }
        if !left_out.is_empty() {
            out.push('\n');
        }
    }
    if opts.summary {
        let counts = counts_by_rule(report);
        if counts.is_empty() {
            let _ = writeln!(out, "findings by rule: none");
        } else {
            let _ = writeln!(out, "findings by rule:");
            let width = counts
                .iter()
                .map(|c| c.count.to_string().len())
                .max()
                .unwrap_or(1)
                .max(5);
            let _ = writeln!(out, "  {:>width$}  {:<8} rule", "count", "severity");
            for c in &counts {
                let _ = writeln!(
                    out,
                    "  {:>width$}  {:<8} {}",
                    c.count,
                    c.severity.as_str(),
                    c.rule
                );
            }
        }
        out.push('\n');
    }
    let errors = report.count(Severity::Error);
    let warnings = report.count(Severity::Warning);
    let _ = writeln!(
        out,
        "{}: {} documents in {} files, {} environments checked: {errors} error{}, {warnings} warning{}",
        if errors > 0 {
            paint(color, "1;31", "failed")
        } else {
            paint(color, "1;32", "ok")
        },
        report.documents,
        report.files,
        report.environments.len(),
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    out
}

fn json_report(report: &Report, opts: RenderOptions) -> String {
    let mut v = json!({
        "version": 1,
        "ok": !report.has_errors(),
        "summary": {
            "files": report.files,
            "documents": report.documents,
            "documents_by_kind": report.documents_by_kind,
            "environments": report.environments,
            "errors": report.count(Severity::Error),
            "warnings": report.count(Severity::Warning),
        },
        "findings": report.findings,
    });
    if opts.summary {
        v["summary"]["by_rule"] = json!(counts_by_rule(report));
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// Escapes a GitHub workflow command's message (`%`, CR, LF).
fn gh_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a GitHub workflow command's property (also `:` and `,`).
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn github(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let level = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "notice",
        };
        let msg = if f.help.is_empty() {
            f.message.clone()
        } else {
            format!("{} (help: {})", f.message, f.help)
        };
        let _ = writeln!(
            out,
            "::{level} file={},line={},col={},title={}::{}",
            gh_prop(&f.path),
            f.line,
            f.col,
            gh_prop(&format!("vakt {}", f.rule)),
            gh_data(&msg)
        );
    }
    out
}

/// A SARIF 2.1.0 log of the findings.
pub fn sarif(report: &Report) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "shortDescription": { "text": r.summary },
                "defaultConfiguration": { "level": sarif_level(r.severity) },
            })
        })
        .collect();
    let results: Vec<Value> = report.findings.iter().map(sarif_result).collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "vakt",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/vakt-ops/vakt",
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    })
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

fn sarif_result(f: &Finding) -> Value {
    let idx = RULES.iter().position(|r| r.id == f.rule).unwrap_or(0);
    let text = if f.help.is_empty() {
        f.message.clone()
    } else {
        format!("{} Help: {}", f.message, f.help)
    };
    json!({
        "ruleId": f.rule,
        "ruleIndex": idx,
        "level": sarif_level(f.severity),
        "message": { "text": text },
        "locations": [{
            "physicalLocation": {
                "artifactLocation": { "uri": f.path, "uriBaseId": "%SRCROOT%" },
                "region": { "startLine": f.line, "startColumn": f.col },
            }
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;

    fn report(rules: &[&'static str]) -> Report {
        Report {
            findings: rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Finding::new(r, format!("f{i}.toml"), Pos { line: 1, col: 1 }, "m")
                        .severity(Severity::Warning)
                })
                .collect(),
            files: rules.len(),
            documents: rules.len(),
            documents_by_kind: Default::default(),
            environments: vec![],
            texts: Default::default(),
        }
    }

    #[test]
    fn counts_are_by_count_then_rule_id() {
        let r = report(&["b.x", "a.y", "b.x", "c.z", "a.y", "b.x"]);
        let c: Vec<(&str, usize)> = counts_by_rule(&r)
            .iter()
            .map(|c| (c.rule, c.count))
            .collect();
        assert_eq!(c, [("b.x", 3), ("a.y", 2), ("c.z", 1)]);
    }

    #[test]
    fn the_cap_keeps_the_first_n_of_each_rule_and_counts_the_rest() {
        let r = report(&["b.x", "a.y", "b.x", "b.x", "b.x"]);
        let opts = RenderOptions {
            summary: false,
            max_per_rule: Some(2),
        };
        let out = render_with(&r, Format::Human, opts, false);
        assert_eq!(out.matches("warning[b.x]").count(), 2);
        assert!(out.contains("--> f0.toml") && out.contains("--> f2.toml"));
        assert!(!out.contains("--> f3.toml"));
        assert!(out.contains("note: 2 more b.x findings not shown"));
        assert!(!out.contains("more a.y"));
        assert!(out.contains("0 errors, 5 warnings"));
    }
}
