//! Runbook catalog and markdown rules: pairing, required sections, review age, active content,
//! and signal coverage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use crate::diag::{Finding, Pos};
use crate::load::Model;
use crate::parse::LineIndex;

use super::memo::{Memo, text_key};
use super::{BUILTIN_SIGNALS, RuleContext};

/// Sections every runbook has (H2 headings, matched case-insensitively).
pub const REQUIRED_SECTIONS: [&str; 6] = [
    "Trigger",
    "Severity and escalation",
    "Remediation mode",
    "Allowed actions",
    "Evidence to review first",
    "Recording the outcome",
];

pub(super) fn check(m: &Model, ctx: &RuleContext, out: &mut Vec<Finding>) {
    let review = m
        .manifest
        .as_ref()
        .map(|d| d.spec.review.clone())
        .unwrap_or_default();
    let md_paths: HashSet<&str> = m.runbooks.iter().map(|r| r.path.as_str()).collect();
    let mut referenced: HashSet<&str> = HashSet::new();
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let queries: HashSet<&str> = m.saved_queries.iter().map(|q| q.spec.id.as_str()).collect();
    let dashboards: HashSet<&str> = m.dashboards.iter().map(|d| d.spec.uid.as_str()).collect();
    let mut mapped_signals: HashSet<&str> = HashSet::new();

    for cat in &m.catalogs {
        for (i, e) in cat.spec.runbooks.iter().enumerate() {
            let ptr = format!("/runbooks/{i}");
            if let Some(first) = ids.insert(&e.id, cat.path()) {
                let (p, pos) = cat.at(&format!("{ptr}/id"));
                out.push(
                    Finding::new(
                        "id.duplicate",
                        p,
                        pos,
                        format!("runbook id `{}` is listed twice (first in {first})", e.id),
                    )
                    .help("runbook ids are unique and stable; remove or rename one entry"),
                );
            }
            mapped_signals.extend(e.signals.iter().map(String::as_str));
            referenced.insert(&e.url);
            if !md_paths.contains(e.url.as_str()) {
                let (p, pos) = cat.at(&format!("{ptr}/url"));
                out.push(
                    Finding::new(
                        "runbook.markdown-missing",
                        p,
                        pos,
                        format!(
                            "runbook `{}` points at `{}`, which does not exist",
                            e.id, e.url
                        ),
                    )
                    .help("write the markdown at that path, or fix `url`"),
                );
            }
            for (j, q) in e.saved_queries.iter().enumerate() {
                if !queries.contains(q.as_str()) && !m.saved_queries.is_empty() {
                    let (p, pos) = cat.at(&format!("{ptr}/saved_queries/{j}"));
                    out.push(
                        Finding::new("ref.query", p, pos, format!("unknown saved query `{q}`"))
                            .help("name a query id from dashboards/queries/"),
                    );
                }
            }
            for (j, d) in e.dashboards.iter().enumerate() {
                if !dashboards.contains(d.as_str()) && !m.dashboards.is_empty() {
                    let (p, pos) = cat.at(&format!("{ptr}/dashboards/{j}"));
                    out.push(
                        Finding::new(
                            "ref.dashboard",
                            p,
                            pos,
                            format!("unknown dashboard uid `{d}`"),
                        )
                        .help("name the uid of a dashboard under dashboards/"),
                    );
                }
            }
            review_age(
                cat.at(&format!("{ptr}/last_reviewed_at")),
                e,
                &review,
                ctx,
                out,
            );
        }
    }
    for r in &m.runbooks {
        if !referenced.contains(r.path.as_str()) && !m.catalogs.is_empty() {
            out.push(
                Finding::new(
                    "runbook.catalog-missing",
                    &r.path,
                    Pos { line: 1, col: 1 },
                    "runbook markdown has no entry in runbooks/runbooks.catalog.json",
                )
                .help("add an entry with a stable id whose `url` is this path"),
            );
        }
        markdown(&r.path, &r.text, out);
    }

    // Signal coverage: vakt's own signals and health checks (alerts are checked with alerts).
    if let Some(cat) = m.catalogs.first() {
        for s in BUILTIN_SIGNALS {
            if !mapped_signals.contains(s) {
                let (p, pos) = cat.at("/runbooks");
                out.push(
                    Finding::new(
                        "signal.unmapped",
                        p,
                        pos,
                        format!("vakt's built-in signal `{s}` maps to no runbook"),
                    )
                    .help("add the signal to the `signals` of the runbook that handles it"),
                );
            }
        }
    }
    for svc in &m.services {
        for (i, hc) in svc.spec.health_checks.iter().enumerate() {
            if !mapped_signals.contains(hc.signal.as_str()) {
                let (p, pos) = svc.at(&format!("/health_checks/{i}/signal"));
                out.push(
                    Finding::new(
                        "signal.unmapped",
                        p,
                        pos,
                        format!("health check signal `{}` maps to no runbook", hc.signal),
                    )
                    .help("list the signal under `signals` of a runbook in runbooks/runbooks.catalog.json"),
                );
            }
        }
    }
}

fn review_age(
    loc: (&str, Pos),
    e: &crate::model::RunbookEntry,
    review: &crate::model::ReviewPolicy,
    ctx: &RuleContext,
    out: &mut Vec<Finding>,
) {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let Ok(date) = time::Date::parse(&e.last_reviewed_at, &fmt) else {
        out.push(
            Finding::new(
                "schema.invalid",
                loc.0,
                loc.1,
                format!("`{}` is not a calendar date", e.last_reviewed_at),
            )
            .help("write the date as YYYY-MM-DD"),
        );
        return;
    };
    let age = (ctx.today - date).whole_days();
    let window = i64::from(review.window_days);
    if age < 0 {
        out.push(
            Finding::new(
                "runbook.review-expired",
                loc.0,
                loc.1,
                format!(
                    "runbook `{}` claims a review in the future ({})",
                    e.id, e.last_reviewed_at
                ),
            )
            .help("set last_reviewed_at to the day of the actual review"),
        );
    } else if age > window {
        out.push(
            Finding::new(
                "runbook.review-expired",
                loc.0,
                loc.1,
                format!(
                    "runbook `{}` was last reviewed {age} days ago; the review window is {window} days",
                    e.id
                ),
            )
            .help(format!("have {} review it, then update last_reviewed_at", e.owner_team)),
        );
    } else if age > window - i64::from(review.warn_days) {
        out.push(
            Finding::new(
                "runbook.review-due",
                loc.0,
                loc.1,
                format!(
                    "runbook `{}` is due for review in {} days (last reviewed {})",
                    e.id,
                    window - age,
                    e.last_reviewed_at
                ),
            )
            .help(format!(
                "ask {} to review it and update last_reviewed_at",
                e.owner_team
            )),
        );
    }
}

/// Checks one runbook's markdown: required sections, no raw HTML, no script links.
pub fn markdown(path: &str, text: &str, out: &mut Vec<Finding>) {
    // A pure function of the path and the text: every view, and every daemon pass, checks
    // the same runbooks again.
    static MEMO: Memo<Arc<[Finding]>> = Memo::new(4096, 4096);
    let found = MEMO.get_or(&text_key(path, text), |_| {
        let mut v = Vec::new();
        check_markdown(path, text, &mut v);
        v.into()
    });
    out.extend(found.iter().cloned());
}

fn check_markdown(path: &str, text: &str, out: &mut Vec<Finding>) {
    let idx = LineIndex::new(text);
    let mut sections: Vec<String> = Vec::new();
    let mut in_h2: Option<String> = None;
    for (ev, range) in Parser::new_ext(text, pulldown_cmark::Options::all()).into_offset_iter() {
        match ev {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H2,
                ..
            }) => in_h2 = Some(String::new()),
            Event::End(TagEnd::Heading(HeadingLevel::H2)) => {
                if let Some(h) = in_h2.take() {
                    sections.push(h.trim().to_lowercase());
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = &mut in_h2 {
                    h.push_str(&t);
                }
            }
            Event::Html(h) | Event::InlineHtml(h) => {
                let snippet: String = h.trim().chars().take(40).collect();
                out.push(
                    Finding::new(
                        "runbook.active-content",
                        path,
                        idx.pos(range.start),
                        format!("raw HTML `{snippet}` in a runbook"),
                    )
                    .help("use plain markdown; runbooks are rendered sanitised for operators"),
                );
            }
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => {
                let d = dest_url.trim().to_ascii_lowercase();
                let d: String = d
                    .chars()
                    .filter(|c| !c.is_whitespace() && !c.is_control())
                    .collect();
                if d.starts_with("javascript:")
                    || d.starts_with("vbscript:")
                    || d.starts_with("data:")
                {
                    out.push(
                        Finding::new(
                            "runbook.active-content",
                            path,
                            idx.pos(range.start),
                            format!(
                                "link to `{}` would run code",
                                dest_url.chars().take(40).collect::<String>()
                            ),
                        )
                        .help("link to a page or an anchor instead"),
                    );
                }
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = REQUIRED_SECTIONS
        .iter()
        .filter(|s| !sections.iter().any(|h| h == &s.to_lowercase()))
        .copied()
        .collect();
    for s in missing {
        out.push(
            Finding::new(
                "runbook.section-missing",
                path,
                Pos { line: 1, col: 1 },
                format!("runbook has no `## {s}` section"),
            )
            .help(format!(
                "add a `## {s}` section; see the sections every runbook needs in README.md"
            )),
        );
    }
}
