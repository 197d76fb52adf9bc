//! `vakt import runbooks DIR`: a markdown tree (front matter or not, `_index.md` pages, nested
//! folders) -> `runbooks/<id>.md` with the required sections, plus catalog entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pulldown_cmark::{Event, Parser};
use serde_json::{Value, json};

use super::mapping::crate_sections;
use super::rules::{CATALOG, path_id, read_json};
use super::walk::{read_text, walk};
use super::{
    Defaulted, ImportOptions, MAX_PAGE_BYTES, Plan, Problem, RunbookLine, id_segment, snake_case,
};
use crate::source::RepoFiles;

/// `last_reviewed_at` of a page whose source names no review date: it reads as "never
/// reviewed", so `runbook.review-expired` flags the entry until someone reviews the page and
/// sets the real date. The import never invents a plausible date.
pub const NEVER_REVIEWED: &str = "0000-01-01";

/// HTML elements dropped with their content (they run or restyle code).
const ACTIVE: &[&str] = &[
    "script", "style", "iframe", "object", "embed", "form", "svg", "math",
];

struct Page {
    title: String,
    intro: String,
    /// (heading, content) of each level-2 section, in order.
    sections: Vec<(String, String)>,
}

/// Plans the import of the runbook pages under `dir`.
pub fn plan(dir: &Path, current: &RepoFiles, opts: &ImportOptions) -> Plan {
    let mut plan = Plan::default();
    let mut entries: Vec<Value> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let owner_default = opts
        .mapping
        .owner_team
        .clone()
        .or_else(|| read_manifest_owner(current));
    let found = walk(dir, &["md", "markdown"], &mut plan.report.problems);
    for f in found {
        let problems = &mut plan.report.problems;
        let Some(text) = read_text(&f, MAX_PAGE_BYTES, problems) else {
            continue;
        };
        let (fm, body, body_line) = match front_matter(&text) {
            Ok(x) => x,
            Err(m) => {
                problems.push(Problem {
                    file: f.shown.clone(),
                    line: 1,
                    message: format!("front matter is not valid: {m}; page not imported"),
                    help: "fix the YAML between the `---` lines (or the TOML between `+++`) and import again".into(),
                });
                continue;
            }
        };
        let fm_str = |keys: &[&str]| -> Option<String> {
            keys.iter().find_map(|k| match fm.get(*k)? {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                _ => None,
            })
        };
        let id = opts
            .mapping
            .runbook_ids
            .get(&f.rel)
            .cloned()
            .or_else(|| fm_str(&["id", "runbook_id"]))
            .unwrap_or_else(|| path_id(&f.rel));
        if !valid_id(&id) {
            problems.push(Problem::new(
                &f.shown,
                format!("runbook id `{id}` is not a valid id (lowercase segments joined by dots, at least two)"),
                "set a valid id in [runbook_ids] of --mapping or `id:` in the front matter",
            ));
            continue;
        }
        if let Some(first) = seen.get(&id) {
            problems.push(Problem::new(
                &f.shown,
                format!("gets runbook id `{id}`, which {first} already has; not imported"),
                "give one of them another id in [runbook_ids] of --mapping",
            ));
            continue;
        }
        let (body, html) = convert_html(body);
        for (line, what, active) in html {
            if active {
                problems.push(Problem {
                    file: f.shown.clone(),
                    line: body_line + line,
                    message: format!("active HTML `{what}` dropped with its content"),
                    help: "check the page lost nothing needed; runbooks are plain markdown".into(),
                });
            } else {
                plan.report.defaulted.push(Defaulted {
                    subject: id.clone(),
                    field: format!("html (line {})", body_line + line),
                    value: what,
                    why: "raw HTML converted to markdown (a <summary> becomes bold text, other tags are dropped, their text kept)".into(),
                });
            }
        }
        let stem = f.rel.rsplit('/').next().unwrap_or(&f.rel);
        let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
        let folder = f
            .rel
            .rsplit_once('/')
            .map(|(d, _)| d.rsplit('/').next().unwrap_or(d));
        let name = if stem.eq_ignore_ascii_case("_index") || stem.eq_ignore_ascii_case("index") {
            folder.unwrap_or("index")
        } else {
            stem
        };
        let page = split(&body, fm_str(&["title"]), name);
        if page.sections.is_empty() {
            problems.push(Problem::new(
                &f.shown,
                "has no `##` headings, so no runbook sections; not imported",
                "give it sections (## Meaning, ## Impact, ## Diagnosis, ## Mitigation) and import again",
            ));
            continue;
        }
        seen.insert(id.clone(), f.shown.clone());

        let mut defaulted = |field: &str, value: &str, why: &str| {
            plan.report.defaulted.push(Defaulted {
                subject: id.clone(),
                field: field.into(),
                value: value.into(),
                why: why.into(),
            })
        };
        let severity = match fm_str(&["severity", "severity_hint"]).map(|s| s.to_lowercase()) {
            Some(s) if matches!(s.as_str(), "critical" | "sev1" | "page") => "sev1",
            Some(s) if matches!(s.as_str(), "warning" | "sev2" | "high" | "major") => "sev2",
            Some(_) => "sev3",
            None => {
                defaulted("severity_hint", "sev3", "the page names no severity");
                "sev3"
            }
        };
        let escalation = match severity {
            "sev1" => "urgent",
            "sev2" => "action-required",
            _ => "informational",
        };
        let owner = match fm_str(&["owner_team", "owner", "team"]) {
            Some(o) => o,
            None => {
                let o = owner_default.clone().unwrap_or_else(|| "unowned".into());
                defaulted(
                    "owner_team",
                    &o,
                    "the page names no owner: the --mapping owner_team, else the repo's project.owner_team",
                );
                o
            }
        };
        let reviewed = match fm_str(&["last_reviewed_at", "last_reviewed", "reviewed"])
            .or_else(|| fm.get("last_reviewed_at").map(|v| v.to_string()))
            .and_then(|s| date_prefix(&s))
        {
            Some(d) => d,
            None => {
                defaulted(
                    "last_reviewed_at",
                    NEVER_REVIEWED,
                    "the page names no review date: marked never reviewed, so runbook.review-expired flags it until it is reviewed",
                );
                NEVER_REVIEWED.to_owned()
            }
        };
        let signals: Vec<String> = match fm.get("signals") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => vec![snake_case(name)],
        };
        let group = f
            .rel
            .split_once('/')
            .map(|(d, _)| id_segment(d))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "imported".into());
        let path = format!("runbooks/{id}.md");

        // The markdown, sections in the required order, unmapped sections after them.
        let mut mapped: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        let mut extra: Vec<(String, String)> = Vec::new();
        let mut landed = Vec::new();
        for (h, c) in &page.sections {
            match opts.mapping.section(h) {
                Some(s) => {
                    let s = crate_sections()
                        .into_iter()
                        .find(|r| *r == s)
                        .unwrap_or("Trigger");
                    landed.push((h.clone(), s.to_owned()));
                    mapped.entry(s).or_default().push((h.clone(), c.clone()));
                }
                None => {
                    landed.push((h.clone(), h.clone()));
                    extra.push((h.clone(), c.clone()));
                }
            }
        }
        let mut md = format!("# {}\n\n", page.title);
        if !page.intro.trim().is_empty() {
            md.push_str(page.intro.trim());
            md.push_str("\n\n");
        }
        for s in crate_sections() {
            md.push_str(&format!("## {s}\n\n"));
            match mapped.get(s) {
                Some(parts) => {
                    for (h, c) in parts {
                        if parts.len() > 1 && !h.eq_ignore_ascii_case(s) {
                            md.push_str(&format!("### {h}\n\n"));
                        }
                        if !c.trim().is_empty() {
                            md.push_str(c.trim());
                            md.push_str("\n\n");
                        }
                    }
                }
                None => {
                    let text = match s {
                        "Severity and escalation" => format!(
                            "- Severity hint **{severity}**, escalation class **{escalation}** (set by `vakt import` from the page's front matter or its default; review)."
                        ),
                        "Remediation mode" => "**Manual.** (The imported page does not say; set by `vakt import`, review.)".to_owned(),
                        "Recording the outcome" => "- Incident record: what fired, what was done, the outcome.\n- Update `last_reviewed_at` in runbooks/runbooks.catalog.json after the review.".to_owned(),
                        _ => format!("_The imported page ({}) has no section for this: write it during the review._", f.rel),
                    };
                    defaulted(
                        &format!("section `{s}`"),
                        "generated",
                        "no source heading maps to it; see [headings] of --mapping",
                    );
                    md.push_str(&text);
                    md.push_str("\n\n");
                }
            }
        }
        for (h, c) in extra {
            md.push_str(&format!("## {h}\n\n"));
            if !c.trim().is_empty() {
                md.push_str(c.trim());
                md.push_str("\n\n");
            }
        }
        let md = md.trim_end().to_owned() + "\n";
        plan.files.insert(path.clone(), md);
        entries.push(json!({
            "id": id,
            "title": page.title,
            "severity_hint": severity,
            "owner_team": owner,
            "last_reviewed_at": reviewed,
            "url": path,
            "signals": signals,
            "signal_group": group,
            "remediation_mode": "manual",
            "escalation_class": escalation,
        }));
        plan.report.runbooks.push(RunbookLine {
            source: f.shown.clone(),
            id: id.clone(),
            path,
            sections: landed,
        });
    }

    // Merge the entries into the catalog.
    let mut catalog =
        read_json(current, CATALOG).unwrap_or_else(|| json!({"version": 1, "runbooks": []}));
    let mut changed = !current.files.iter().any(|f| f.path == CATALOG);
    if let Some(list) = catalog.get_mut("runbooks").and_then(Value::as_array_mut) {
        for mut e in entries {
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            match list
                .iter_mut()
                .find(|x| x["id"].as_str() == Some(id.as_str()))
            {
                None => {
                    list.push(e);
                    changed = true;
                }
                Some(old) => {
                    // Keep signals alerts added to the entry.
                    let mut sig: BTreeSet<String> = BTreeSet::new();
                    let mut merged = Vec::new();
                    for s in old["signals"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(e["signals"].as_array().into_iter().flatten())
                    {
                        if let Some(s) = s.as_str()
                            && sig.insert(s.to_owned())
                        {
                            merged.push(Value::String(s.to_owned()));
                        }
                    }
                    e["signals"] = Value::Array(merged);
                    for k in ["saved_queries", "dashboards"] {
                        if let Some(v) = old.get(k) {
                            e[k] = v.clone();
                        }
                    }
                    if *old != e {
                        if opts.force {
                            *old = e;
                            changed = true;
                        } else {
                            plan.report.problems.push(Problem::new(
                                CATALOG,
                                format!(
                                    "catalog entry `{id}` exists with other values; left as it is"
                                ),
                                "review the entry, then import again with --force to replace it",
                            ));
                        }
                    }
                }
            }
        }
    }
    if changed && let Ok(text) = serde_json::to_string_pretty(&catalog) {
        plan.files.insert(CATALOG.to_owned(), text + "\n");
        plan.merged.insert(CATALOG.to_owned());
    }
    super::finish(&mut plan, current, opts);
    plan
}

fn read_manifest_owner(current: &RepoFiles) -> Option<String> {
    let f = current.files.iter().find(|f| f.path == "vakt.toml")?;
    let text = std::str::from_utf8(f.content.as_ref().ok()?).ok()?;
    let v: toml::Table = toml::from_str(text).ok()?;
    v.get("project")?
        .get("owner_team")?
        .as_str()
        .map(str::to_owned)
}

fn valid_id(id: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$").expect("valid regex")
    })
    .is_match(id)
        && id.len() <= 128
}

/// `YYYY-MM-DD` at the start of a front matter date (a date-time keeps its date).
fn date_prefix(s: &str) -> Option<String> {
    let s = s.trim().trim_matches('"');
    let d = s.get(..10)?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(d, &fmt).ok().map(|_| d.to_owned())
}

/// Splits off front matter (`---` YAML or `+++` TOML): (fields, body, lines before the body).
fn front_matter(text: &str) -> Result<(serde_json::Map<String, Value>, &str, u32), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (fence, yaml) in [("---", true), ("+++", false)] {
        let Some(rest) = text
            .strip_prefix(fence)
            .and_then(|r| r.strip_prefix('\n').or_else(|| r.strip_prefix("\r\n")))
        else {
            continue;
        };
        let mut offset = 0;
        for line in rest.split_inclusive('\n') {
            if line.trim_end() == fence {
                let fm = &rest[..offset];
                let body = &rest[offset + line.len()..];
                let lines = 2 + fm.lines().count() as u32;
                let v: Value = if yaml {
                    crate::parse::parse_value("front matter", crate::parse::Format::Yaml, fm)
                        .map_err(|f| format!("YAML line {}: {}", f.line + 1, f.message))?
                } else {
                    toml::from_str::<toml::Table>(fm)
                        .map_err(|e| format!("TOML: {}", e.message()))
                        .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string()))?
                };
                return match v {
                    Value::Object(m) => Ok((m, body, lines)),
                    Value::Null => Ok((serde_json::Map::new(), body, lines)),
                    _ => Err("it is not a mapping of fields".into()),
                };
            }
            offset += line.len();
        }
        return Err(format!("the opening `{fence}` has no closing `{fence}`"));
    }
    Ok((serde_json::Map::new(), text, 0))
}

/// Replaces raw HTML with markdown: `<summary>X</summary>` -> `**X**`, `<br>` -> a line break,
/// comments and other tags dropped (their text kept), active elements dropped with their
/// content. Returns the text and, per chunk, (line, what, active).
fn convert_html(body: &str) -> (String, Vec<(u32, String, bool)>) {
    let mut text = body.to_owned();
    let mut notes = Vec::new();
    // A converted chunk can expose new HTML (`<<b>b>`): convert until none is left.
    for _ in 0..4 {
        let mut chunks = Vec::new();
        for (ev, range) in Parser::new_ext(&text, pulldown_cmark::Options::all()).into_offset_iter()
        {
            if let Event::Html(_) | Event::InlineHtml(_) = ev {
                chunks.push(range);
            }
        }
        if chunks.is_empty() {
            break;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for r in chunks {
            if r.start < last {
                continue;
            }
            out.push_str(&text[last..r.start]);
            let chunk = &text[r.clone()];
            let line = text[..r.start].matches('\n').count() as u32 + 1;
            let (md, active) = html_to_md(chunk);
            let what: String = chunk.trim().chars().take(40).collect();
            notes.push((line, what, active));
            out.push_str(&md);
            last = r.end;
        }
        out.push_str(&text[last..]);
        text = out;
    }
    // Whatever still reads as HTML is escaped, never passed through.
    let left: Vec<_> = Parser::new_ext(&text, pulldown_cmark::Options::all())
        .into_offset_iter()
        .filter(|(e, _)| matches!(e, Event::Html(_) | Event::InlineHtml(_)))
        .map(|(_, r)| r)
        .collect();
    for r in left.into_iter().rev() {
        let escaped = text[r.clone()].replace('<', "&lt;");
        text.replace_range(r, &escaped);
    }
    (text, notes)
}

fn html_to_md(chunk: &str) -> (String, bool) {
    static TAG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let tag = TAG.get_or_init(|| {
        regex::Regex::new(r"(?s)<!--.*?(-->|$)|<(/?)([a-zA-Z][a-zA-Z0-9-]*)[^>]*>")
            .expect("valid regex")
    });
    let mut out = String::new();
    let mut last = 0;
    let mut active = false;
    let mut skip_until: Option<String> = None;
    for c in tag.captures_iter(chunk) {
        let m = c.get(0).expect("whole match");
        let name = c.get(3).map(|n| n.as_str().to_ascii_lowercase());
        let closing = c.get(2).is_some_and(|s| !s.as_str().is_empty());
        if let Some(until) = &skip_until {
            if closing && name.as_deref() == Some(until.as_str()) {
                skip_until = None;
            }
            last = m.end();
            continue;
        }
        out.push_str(&chunk[last..m.start()]);
        last = m.end();
        let on_attr = m.as_str().to_ascii_lowercase().contains(" on");
        match name.as_deref() {
            Some(n) if ACTIVE.contains(&n) => {
                active = true;
                if !closing && !m.as_str().ends_with("/>") {
                    skip_until = Some(n.to_owned());
                }
            }
            Some("summary") => out.push_str("**"),
            Some("br") => out.push('\n'),
            Some("b" | "strong") => out.push_str("**"),
            Some("code") => out.push('`'),
            _ => {}
        }
        if on_attr {
            active = true;
        }
    }
    if skip_until.is_none() {
        out.push_str(&chunk[last..]);
    }
    (out, active)
}

/// Splits a page into title, intro and level-2 sections (code fences respected; a level-1
/// heading after the first counts as a section).
fn split(body: &str, fm_title: Option<String>, name: &str) -> Page {
    let mut title = fm_title;
    let mut intro = String::new();
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut fence: Option<&str> = None;
    for line in body.lines() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
        } else if t.starts_with("```") || t.starts_with("~~~") {
            fence = Some(&t[..3]);
        } else if let Some((level, text)) = heading(line) {
            if level == 1 && title.is_none() && sections.is_empty() {
                title = Some(text);
                continue;
            }
            if level <= 2 {
                sections.push((text, String::new()));
                continue;
            }
        }
        let target = match sections.last_mut() {
            Some((_, c)) => c,
            None => &mut intro,
        };
        target.push_str(line);
        target.push('\n');
    }
    Page {
        title: title.unwrap_or_else(|| name.to_owned()),
        intro,
        sections,
    }
}

fn heading(line: &str) -> Option<(usize, String)> {
    if line.starts_with("    ") {
        return None;
    }
    let t = line.trim_start();
    let level = t.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &t[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim().to_owned();
    (!text.is_empty()).then_some((level, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_become_markdown() {
        let (t, notes) = convert_html(
            "Intro\n\n<details>\n<summary>Fix it</summary>\n\nRun `x`.\n\n</details>\n\n<script>alert(1)</script>\n",
        );
        assert!(!t.contains('<'), "{t}");
        assert!(t.contains("**Fix it**"), "{t}");
        assert!(!t.contains("alert(1)"), "{t}");
        assert!(notes.iter().any(|n| n.2));
    }

    #[test]
    fn front_matter_variants() {
        let (m, body, n) = front_matter("---\ntitle: X\n---\n# Y\n").unwrap();
        assert_eq!(m["title"], "X");
        assert_eq!(body, "# Y\n");
        assert_eq!(n, 3);
        assert!(front_matter("---\ntitle: [x\n---\n").is_err());
        assert!(front_matter("# no fm\n").unwrap().0.is_empty());
    }
}
