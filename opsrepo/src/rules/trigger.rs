//! Trigger consistency: what a runbook's `## Trigger` section says about a signal (the PromQL it
//! quotes, its numbers and durations, "for N minutes") must agree with the alert rules that name
//! the runbook and carry that signal.
//!
//! Only list items that name a signal (``Signal `x` ``) raised by at least one alert rule of the
//! runbook are compared; signals vakt raises itself have no rule to agree with. Within such an
//! item, inline code that parses as PromQL and compares something is a claim about the rule.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use super::memo::{Memo, text_key};
use super::promql::{self, show_duration};
use crate::diag::Finding;
use crate::load::Model;
use crate::model::Rule;
use crate::parse::LineIndex;

/// What the alert rules of one signal say: the site and the rule use these.
#[derive(Debug, Default)]
struct RuleFacts {
    names: Vec<String>,
    metrics: HashSet<String>,
    numbers: Vec<f64>,
    durations: HashSet<Duration>,
    fors: HashSet<Duration>,
}

pub(super) fn check(m: &Model, out: &mut Vec<Finding>) {
    // Recording rules: a runbook may quote the raw metrics a recorded series is made of.
    let mut recorded: HashMap<&str, promql::ExprFacts> = HashMap::new();
    let mut alerts: Vec<&Rule> = Vec::new();
    for f in &m.alert_rules {
        for g in &f.spec.groups {
            for r in &g.rules {
                if let Some(name) = &r.record {
                    if let Some(fx) = promql::facts(&r.expr) {
                        recorded.insert(name, fx);
                    }
                } else {
                    alerts.push(r);
                }
            }
        }
    }
    let url_to_id: HashMap<&str, &str> = m
        .catalogs
        .iter()
        .flat_map(|c| c.spec.runbooks.iter())
        .map(|e| (e.url.as_str(), e.id.as_str()))
        .collect();
    for rb in &m.runbooks {
        let Some(id) = url_to_id.get(rb.path.as_str()).copied() else {
            continue;
        };
        let names_rb = |r: &Rule| r.annotations.get("runbook_id").map(String::as_str) == Some(id);
        if !alerts.iter().any(|r| names_rb(r)) {
            continue;
        }
        // The rules a Trigger item about `signal` may quote: those that name this runbook and
        // those that raise the signal. A label or annotation that is wrong is its own rule's
        // finding (`alert.signal-mismatch`, `alert.runbook-missing`), not a trigger mismatch.
        let by_signal = |signal: &str| -> Option<RuleFacts> {
            if !alerts.iter().any(|r| label(r, "signal") == Some(signal)) {
                return None;
            }
            let mut f = RuleFacts::default();
            for r in alerts
                .iter()
                .filter(|r| names_rb(r) || label(r, "signal") == Some(signal))
            {
                // A rule that does not parse is `alert.promql`'s finding; without its facts the
                // prose cannot be judged, so the item is skipped rather than reported twice.
                let fx = promql::facts(&r.expr)?;
                f.names.push(r.alert.clone().unwrap_or_default());
                for name in fx.metrics() {
                    f.metrics.insert(name.to_string());
                    if let Some(rec) = recorded.get(name) {
                        f.metrics.extend(rec.metrics().map(str::to_string));
                        f.numbers.extend(&rec.numbers);
                        f.durations.extend(&rec.durations);
                    }
                }
                f.numbers.extend(&fx.numbers);
                f.durations.extend(&fx.durations);
                if let Some(d) = r.for_.as_deref().and_then(promql::duration) {
                    f.fors.insert(d);
                    f.durations.insert(d);
                } else {
                    f.fors.insert(Duration::ZERO);
                }
            }
            Some(f)
        };
        section(&rb.path, &rb.text, &by_signal, out);
    }
}

/// One top-level list item of the Trigger section.
#[derive(Default)]
struct Item {
    /// Inline code spans with their byte offsets.
    code: Vec<(String, usize)>,
    /// Prose text runs with their byte offsets.
    prose: Vec<(String, usize)>,
}

/// The Trigger section's items, remembered per text (every view and daemon pass reads the
/// same runbooks).
fn trigger_items(text: &str) -> Arc<[Item]> {
    static MEMO: Memo<Arc<[Item]>> = Memo::new(4096, 4096);
    MEMO.get_or(&text_key("", text), |_| parse_trigger_items(text).into())
}

fn parse_trigger_items(text: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut in_h2: Option<String> = None;
    let mut in_trigger = false;
    let mut depth = 0usize;
    for (ev, range) in Parser::new_ext(text, pulldown_cmark::Options::all()).into_offset_iter() {
        match ev {
            Event::Start(Tag::Heading { level, .. }) => {
                if level <= HeadingLevel::H2 {
                    in_trigger = false;
                }
                if level == HeadingLevel::H2 {
                    in_h2 = Some(String::new());
                }
            }
            Event::End(TagEnd::Heading(HeadingLevel::H2)) => {
                if let Some(h) = in_h2.take() {
                    in_trigger = h.trim().eq_ignore_ascii_case("trigger");
                }
            }
            Event::Text(t) if in_h2.is_some() => {
                if let Some(h) = &mut in_h2 {
                    h.push_str(&t);
                }
            }
            _ if !in_trigger => {}
            Event::Start(Tag::Item) => {
                if depth == 0 {
                    items.push(Item::default());
                }
                depth += 1;
            }
            Event::End(TagEnd::Item) => depth = depth.saturating_sub(1),
            Event::Code(c) if depth > 0 => {
                let off = text[range.clone()]
                    .find(|ch: char| ch != '`')
                    .map_or(range.start, |i| range.start + i);
                if let Some(it) = items.last_mut() {
                    it.code.push((c.to_string(), off));
                }
            }
            Event::Text(t) if depth > 0 => {
                if let Some(it) = items.last_mut() {
                    it.prose.push((t.to_string(), range.start));
                }
            }
            _ => {}
        }
    }
    items
}

/// `for 10 minutes`, `for 2 hours`: prose durations with their byte offset in `s`.
fn prose_fors(s: &str) -> Vec<(Duration, usize)> {
    let mut out = Vec::new();
    let words: Vec<(usize, &str)> = s
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - s.as_ptr() as usize, w))
        .collect();
    for w in words.windows(3) {
        let [(at, f), (_, n), (_, unit)] = w else {
            continue;
        };
        if !f.eq_ignore_ascii_case("for") {
            continue;
        }
        let Ok(n) = n.parse::<u64>() else { continue };
        let unit = unit.trim_end_matches(|c: char| !c.is_alphabetic());
        let secs = match unit.trim_end_matches('s') {
            "second" => 1,
            "minute" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            _ => continue,
        };
        out.push((Duration::from_secs(n.saturating_mul(secs)), *at));
    }
    out
}

fn label<'a>(r: &'a Rule, k: &str) -> Option<&'a str> {
    r.labels.get(k).map(String::as_str)
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn section(
    path: &str,
    text: &str,
    by_signal: &dyn Fn(&str) -> Option<RuleFacts>,
    out: &mut Vec<Finding>,
) {
    let idx = LineIndex::new(text);
    for item in trigger_items(text).iter() {
        // ``Signal `x` ``: the item is about signal x.
        let names_signal = item
            .prose
            .first()
            .is_some_and(|(t, _)| t.trim_start().to_ascii_lowercase().starts_with("signal"));
        let Some((signal, _)) = item.code.first().filter(|_| names_signal) else {
            continue;
        };
        let Some(facts) = by_signal(signal) else {
            continue;
        };
        let rules = facts.names.join(", ");
        for (code, off) in item.code.iter().skip(1) {
            // `for `10m``: a duration in code right after "for".
            if let Some(d) = promql::duration(code) {
                // The prose run right before the code span ends with "for".
                let after_for = item
                    .prose
                    .iter()
                    .filter(|(t, o)| o + t.len() <= *off)
                    .max_by_key(|(_, o)| *o)
                    .is_some_and(|(t, _)| t.trim_end().to_ascii_lowercase().ends_with(" for"));
                if after_for && !facts.fors.contains(&d) {
                    out.push(mismatch(
                        path,
                        idx.pos(*off),
                        signal,
                        &rules,
                        format!(
                            "says `for {code}`, the rule's `for` is {}",
                            show_fors(&facts)
                        ),
                    ));
                }
                continue;
            }
            if !promql::has_comparison(code) {
                continue;
            }
            let Some(fx) = promql::facts(code) else {
                continue;
            };
            let mut problems = Vec::new();
            for mname in fx.metrics() {
                if !facts.metrics.contains(mname) {
                    problems.push(format!("metric `{mname}` is not in the rule"));
                }
            }
            for n in &fx.numbers {
                if !facts
                    .numbers
                    .iter()
                    .any(|x| (x - n).abs() <= f64::EPSILON * n.abs().max(1.0))
                {
                    problems.push(format!("number {} is not in the rule", fmt_num(*n)));
                }
            }
            for d in &fx.durations {
                if !facts.durations.contains(d) {
                    problems.push(format!("duration {} is not in the rule", show_duration(*d)));
                }
            }
            if !problems.is_empty() {
                out.push(mismatch(
                    path,
                    idx.pos(*off),
                    signal,
                    &rules,
                    format!("quotes `{}`: {}", trunc(code), problems.join("; ")),
                ));
            }
        }
        for (t, off) in &item.prose {
            for (d, at) in prose_fors(t) {
                if !facts.fors.contains(&d) {
                    out.push(mismatch(
                        path,
                        idx.pos(off + at),
                        signal,
                        &rules,
                        format!(
                            "says \"for {}\", the rule's `for` is {}",
                            show_duration(d),
                            show_fors(&facts)
                        ),
                    ));
                }
            }
        }
    }
}

fn show_fors(f: &RuleFacts) -> String {
    let mut v: Vec<Duration> = f.fors.iter().copied().collect();
    v.sort();
    v.iter()
        .map(|d| {
            if d.is_zero() {
                "unset".to_string()
            } else {
                show_duration(*d)
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn trunc(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

fn mismatch(path: &str, pos: crate::diag::Pos, signal: &str, rules: &str, what: String) -> Finding {
    Finding::new(
        "runbook.trigger-mismatch",
        path,
        pos,
        format!("Trigger for signal `{signal}` disagrees with alert rule {rules}: it {what}"),
    )
    .help(
        "make the Trigger section say what the rule says (or fix the rule); the site shows the \
         rule's expression, `for`, threshold and severity next to the prose",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(signal: &str) -> Option<RuleFacts> {
        (signal == "s").then(|| RuleFacts {
            names: vec!["A".into()],
            metrics: ["x".to_string()].into(),
            numbers: vec![5.0],
            durations: [Duration::from_secs(300), Duration::from_secs(600)].into(),
            fors: [Duration::from_secs(600)].into(),
        })
    }

    fn run(trigger: &str) -> Vec<Finding> {
        let md = format!(
            "# T\n\n## Trigger\n\n{trigger}\n## Other\n\n- Signal `s`: `x > 99` for 1 minutes.\n"
        );
        let mut out = Vec::new();
        section("r.md", &md, &facts, &mut out);
        out
    }

    #[test]
    fn agreeing_prose_is_quiet_and_each_disagreement_is_one_finding() {
        assert!(run("- Signal `s`: `max(rate(x[5m])) > 5` for 10 minutes.\n").is_empty());
        assert!(run("- Signal `s`: `x > 5` for `10m`.\n").is_empty());
        // Another signal, a supporting line, prose outside the Trigger section: not judged.
        assert!(run("- Signal `t`: `y > 1` for 3 minutes.\n- Supporting: `z > 7`.\n").is_empty());
        let f = run("- Signal `s`: `x > 6` for 10 minutes.\n");
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].rule, f[0].line), ("runbook.trigger-mismatch", 5));
        assert!(f[0].message.contains("number 6"), "{}", f[0].message);
        assert_eq!(run("- Signal `s`: `y > 5`.\n").len(), 1);
        assert_eq!(run("- Signal `s`: `x > 5` for 5 minutes.\n").len(), 1);
        assert_eq!(run("- Signal `s`: `x > 5` for `15m`.\n").len(), 1);
        assert_eq!(run("- Signal `s`: `rate(x[1h]) > 5`.\n").len(), 1);
    }

    #[test]
    fn prose_durations() {
        let v = prose_fors("holds for 10 minutes, or for 2 hours. For x minutes");
        assert_eq!(
            v.iter().map(|(d, _)| d.as_secs()).collect::<Vec<_>>(),
            [600, 7200]
        );
    }
}
