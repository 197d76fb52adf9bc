//! What each page shows: the template contexts, computed once from the repo view and the
//! snippet snapshot, and the JSON files (catalog API, search index, snapshot) beside them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use minijinja::context;
use minijinja::value::merge_maps;
use opsrepo::load::Model;
use opsrepo::model::{DatasourceType, RunbookEntry};
use opsrepo::snippets::{Snapshot, SnippetName};
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::markdown::{self, Rendered};
use crate::output::{self, Stager};
use crate::search::{self, SearchDoc};
use crate::templates::Templates;
use crate::{SearchSizes, SiteError, SiteOptions};

/// Days after which a review is due (runbook architecture §5: at least every 90 days).
pub const REVIEW_MAX_DAYS: i64 = 90;
/// Days after which a review shows as due soon.
pub const REVIEW_SOON_DAYS: i64 = 60;

/// The list pages (every page but the runbook pages), by output path: their directories are
/// made before any task starts.
const LIST_PAGES: [&str; 14] = [
    "index.html",
    "ops/index.html",
    "tasks/index.html",
    "events/index.html",
    "health/index.html",
    "inventory/index.html",
    "sites/index.html",
    "dr/index.html",
    "runbooks/index.html",
    "runbooks/by-group/index.html",
    "runbooks/by-owner/index.html",
    "maps/index.html",
    "dashboards/index.html",
    "search/index.html",
];

/// Runbook pages rendered by one task of [`Site::write`].
const RUNBOOK_CHUNK: usize = 64;

/// Output path, template, depth below the root, nav id, title, snippets, extra context.
type PageSpec<'a> = (
    &'a str,
    &'a str,
    usize,
    &'a str,
    &'a str,
    Vec<SnippetName>,
    minijinja::Value,
);

/// The field of a catalog entry a runbook list page groups by.
type GroupKey = fn(&RunbookEntry) -> &str;

/// A group of list pages rendered by one task (see `Site::list_pages`).
type ListGroup<'s> = Box<dyn Fn() -> Vec<PageSpec<'static>> + Send + Sync + 's>;

struct RunbookPage<'a> {
    entry: &'a RunbookEntry,
    markdown: &'a str,
    rendered: Rendered,
    review_days: Option<i64>,
    review_status: &'static str,
}

pub struct Site<'a> {
    opts: &'a SiteOptions,
    model: &'a Model,
    snap: &'a Snapshot,
    runbooks: Vec<RunbookPage<'a>>,
    warnings: Vec<String>,
}

fn to_mj(v: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && !id.contains("..")
}

/// Review age in days and its status: `fresh`, `due-soon`, `overdue` or `unknown`.
pub fn review(now: time::Date, last: &str) -> (Option<i64>, &'static str) {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(last, &fmt) {
        Ok(d) => {
            let days = (now - d).whole_days();
            let status = if days > REVIEW_MAX_DAYS {
                "overdue"
            } else if days > REVIEW_SOON_DAYS {
                "due-soon"
            } else {
                "fresh"
            };
            (Some(days), status)
        }
        Err(_) => (None, "unknown"),
    }
}

/// Percent-encodes a URL query component.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Grafana Explore deep link for `expr` on datasource `uid`.
pub fn explore_link(grafana: &str, uid: &str, expr: &str) -> String {
    let left = json!({
        "datasource": uid,
        "queries": [{"refId": "A", "expr": expr, "datasource": {"uid": uid}}],
        "range": {"from": "now-1h", "to": "now"},
    });
    format!(
        "{}/explore?left={}",
        grafana.trim_end_matches('/'),
        encode_component(&left.to_string())
    )
}

impl<'a> Site<'a> {
    pub fn new(
        model: &'a Model,
        snap: &'a Snapshot,
        opts: &'a SiteOptions,
    ) -> Result<Self, SiteError> {
        let mut warnings = Vec::new();
        let texts: HashMap<&str, &str> = model
            .runbooks
            .iter()
            .map(|r| (r.path.as_str(), &*r.text))
            .collect();
        let entries: Vec<&RunbookEntry> = model
            .catalogs
            .iter()
            .flat_map(|c| c.spec.runbooks.iter())
            .collect();
        let mut seen = HashSet::new();
        let mut used_paths = HashSet::new();
        for e in &entries {
            if !valid_id(&e.id) {
                return Err(SiteError::Runbook {
                    id: e.id.clone(),
                    message: "id is not usable as a URL path segment (a-z, 0-9, `.`, `-`, `_`)"
                        .into(),
                });
            }
            if !seen.insert(e.id.as_str()) {
                return Err(SiteError::Runbook {
                    id: e.id.clone(),
                    message: "declared twice in the catalog".into(),
                });
            }
            if !texts.contains_key(e.url.as_str()) {
                return Err(SiteError::Runbook {
                    id: e.id.clone(),
                    message: format!("markdown `{}` named by its catalog url is missing", e.url),
                });
            }
            used_paths.insert(e.url.as_str());
        }
        for r in &model.runbooks {
            if !used_paths.contains(r.path.as_str()) {
                warnings.push(format!(
                    "{} has no catalog entry and gets no page (add it to runbooks/runbooks.catalog.json)",
                    r.path
                ));
            }
        }
        let today = opts.now.date();
        let mut runbooks: Vec<RunbookPage<'a>> = entries
            .par_iter()
            .map(|e| {
                let md = texts[e.url.as_str()];
                let (review_days, review_status) = review(today, &e.last_reviewed_at);
                RunbookPage {
                    entry: e,
                    markdown: md,
                    rendered: markdown::render(md),
                    review_days,
                    review_status,
                }
            })
            .collect();
        runbooks.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
        Ok(Site {
            opts,
            model,
            snap,
            runbooks,
            warnings,
        })
    }

    pub fn runbook_count(&self) -> usize {
        self.runbooks.len()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn nav() -> Value {
        json!([
            {"id": "ops", "href": "ops/", "label": "Ops"},
            {"id": "tasks", "href": "tasks/", "label": "Tasks"},
            {"id": "events", "href": "events/", "label": "Events"},
            {"id": "health", "href": "health/", "label": "Health"},
            {"id": "inventory", "href": "inventory/", "label": "Inventory"},
            {"id": "sites", "href": "sites/", "label": "Datacenters"},
            {"id": "dr", "href": "dr/", "label": "DR"},
            {"id": "runbooks", "href": "runbooks/", "label": "Runbooks"},
            {"id": "maps", "href": "maps/", "label": "Maps"},
            {"id": "dashboards", "href": "dashboards/", "label": "Dashboards"},
            {"id": "search", "href": "search/", "label": "Search"},
        ])
    }

    /// Origin of the snippets URL, for the page's Content-Security-Policy.
    fn connect_src(&self) -> String {
        let u = &self.opts.snippets_url;
        let origin = u
            .split_once("://")
            .map(|(scheme, rest)| {
                let host = rest.split('/').next().unwrap_or("");
                format!("{scheme}://{host}")
            })
            .filter(|o| o.starts_with("http://") || o.starts_with("https://"));
        match origin {
            Some(o) => format!("'self' {o}"),
            None => "'self'".into(),
        }
    }

    fn base(&self, depth: usize, id: &str, title: &str, snippets: &[SnippetName]) -> Value {
        let root = if depth == 0 {
            "./".to_owned()
        } else {
            "../".repeat(depth)
        };
        let snap = &self.snap;
        json!({
            "site": {
                "root": root,
                "snippets_url": self.opts.snippets_url,
                "refresh_seconds": self.opts.refresh_seconds,
                "stale_after_seconds": self.opts.stale_after_seconds,
                "live_reload": self.opts.live_reload,
                "env": self.model.env,
                "generated_at": snap.summary.generated_at,
                "snapshot_source": snap.summary.source,
                "vakt_version": env!("CARGO_PKG_VERSION"),
                "nav": Self::nav(),
                "connect_src": self.connect_src(),
            },
            "page": {
                "id": id,
                "title": title,
                "snippets": snippets.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
            },
        })
    }

    /// The part of every page's context that does not depend on the page (built once).
    fn common(&self) -> minijinja::Value {
        let snap = &self.snap;
        to_mj(&json!({
            "snap": {
                "summary": snap.to_value(SnippetName::Summary),
                "actions": snap.to_value(SnippetName::Actions),
                "tasks": snap.to_value(SnippetName::Tasks),
                "events": snap.to_value(SnippetName::Events),
                "health": snap.to_value(SnippetName::Health),
                "inventory": snap.to_value(SnippetName::Inventory),
                "sites": snap.to_value(SnippetName::Sites),
                "dr": snap.to_value(SnippetName::Dr),
            },
            "runbook_ids": self.runbooks.iter().map(|r| (r.entry.id.clone(), Value::Bool(true))).collect::<serde_json::Map<_, _>>(),
        }))
    }

    fn summary(&self, r: &RunbookPage<'_>) -> Value {
        let mut v = serde_json::to_value(r.entry).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("review_days".into(), json!(r.review_days));
            m.insert("review_status".into(), json!(r.review_status));
            m.insert(
                "owner_slug".into(),
                json!(markdown::slug(&r.entry.owner_team)),
            );
            m.insert(
                "group_slug".into(),
                json!(markdown::slug(&r.entry.signal_group)),
            );
        }
        v
    }

    fn alerts(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in &self.model.alert_rules {
            for g in &f.spec.groups {
                for rule in &g.rules {
                    let Some(name) = &rule.alert else { continue };
                    let runbook = rule
                        .annotations
                        .get("runbook_id")
                        .or_else(|| rule.labels.get("runbook_id"))
                        .cloned();
                    out.push(json!({
                        "name": name,
                        "file": f.path(),
                        "group": g.name,
                        "severity": rule.labels.get("severity"),
                        "escalation": rule.labels.get("escalation"),
                        "signal": rule.labels.get("signal"),
                        "summary": rule.annotations.get("summary"),
                        "runbook": runbook,
                        "expr": rule.expr,
                        "for": rule.for_,
                        "threshold": opsrepo::rules::promql::facts(&rule.expr)
                            .and_then(|f| f.threshold)
                            .map(|(op, n)| format!("{op} {n}")),
                    }));
                }
            }
        }
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    fn grafana_for(&self, uid: &str) -> Option<(String, DatasourceType)> {
        self.model
            .datasources
            .iter()
            .flat_map(|d| d.spec.datasources.iter())
            .find(|d| d.uid == uid)
            .map(|d| (d.grafana_url.clone(), d.kind))
    }

    fn any_grafana(&self) -> Option<String> {
        self.model
            .datasources
            .iter()
            .flat_map(|d| d.spec.datasources.iter())
            .map(|d| d.grafana_url.clone())
            .next()
    }

    fn queries(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .model
            .saved_queries
            .iter()
            .map(|q| {
                let q = &q.spec;
                let (grafana, kind) = self
                    .grafana_for(&q.datasource)
                    .map(|(g, k)| (Some(g), Some(k)))
                    .unwrap_or((None, None));
                let mut example = q.template.clone();
                for v in &q.variables {
                    example = example.replace(&format!("${{{}}}", v.name), &v.example);
                }
                let link = grafana
                    .as_deref()
                    .map(|g| explore_link(g, &q.datasource, &example));
                let runbooks: Vec<&str> = self
                    .runbooks
                    .iter()
                    .filter(|r| r.entry.saved_queries.contains(&q.id))
                    .map(|r| r.entry.id.as_str())
                    .collect();
                let dashboards: Vec<Value> = self
                    .model
                    .dashboards
                    .iter()
                    .filter(|d| saved_queries_of(&d.spec).contains(&q.id.as_str()))
                    .map(|d| json!({"uid": d.spec.uid, "title": d.spec.title}))
                    .collect();
                json!({
                    "id": q.id,
                    "title": q.title,
                    "datasource": q.datasource,
                    "language": match kind { Some(DatasourceType::Loki) => "LogQL", Some(DatasourceType::Prometheus) => "PromQL", None => "query" },
                    "template": q.template,
                    "variables": q.variables,
                    "owner_service": q.owner_service,
                    "symptom": q.symptom,
                    "grafana_url": grafana,
                    "example": example,
                    "explore_link": link,
                    "runbooks": runbooks,
                    "dashboards": dashboards,
                })
            })
            .collect();
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        out
    }

    fn dashboards(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .model
            .dashboards
            .iter()
            .map(|d| {
                let d = &d.spec;
                let ds_uid = d
                    .panels
                    .iter()
                    .chain(d.panels.iter().flat_map(|p| p.panels.iter()))
                    .find_map(|p| p.datasource.as_ref().map(|r| r.uid.clone()));
                let grafana = ds_uid
                    .and_then(|u| self.grafana_for(&u).map(|g| g.0))
                    .or_else(|| self.any_grafana());
                let variables: Vec<String> = d
                    .templating
                    .as_ref()
                    .map(|t| {
                        t.list
                            .iter()
                            .filter_map(|v| v.get("name")?.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let link = grafana
                    .as_ref()
                    .map(|g| format!("{}/d/{}", g.trim_end_matches('/'), d.uid));
                let runbooks: Vec<&str> = self
                    .runbooks
                    .iter()
                    .filter(|r| r.entry.dashboards.contains(&d.uid))
                    .map(|r| r.entry.id.as_str())
                    .collect();
                let description = d.other.get("description").and_then(Value::as_str);
                json!({
                    "saved_queries": saved_queries_of(d),
                    "uid": d.uid,
                    "title": d.title,
                    "tags": d.tags,
                    "description": description,
                    "link": link,
                    "variables": variables,
                    "panels": d.panels.len(),
                    "runbooks": runbooks,
                })
            })
            .collect();
        out.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
        out
    }

    fn signals(&self, alerts: &[Value]) -> Value {
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        let entry = |map: &mut BTreeMap<String, Value>, s: &str| {
            map.entry(s.to_owned()).or_insert_with(
                || json!({"signal": s, "runbooks": [], "alerts": [], "checks": []}),
            );
        };
        for r in &self.runbooks {
            for s in &r.entry.signals {
                entry(&mut map, s);
                if let Some(a) = map.get_mut(s).and_then(|v| v["runbooks"].as_array_mut()) {
                    a.push(json!({"id": r.entry.id, "title": r.entry.title}));
                }
            }
        }
        for a in alerts {
            if let Some(s) = a["signal"].as_str() {
                entry(&mut map, s);
                if let Some(v) = map.get_mut(s).and_then(|v| v["alerts"].as_array_mut()) {
                    v.push(a["name"].clone());
                }
            }
        }
        for svc in &self.model.services {
            for c in &svc.spec.health_checks {
                entry(&mut map, &c.signal);
                if let Some(v) = map
                    .get_mut(&c.signal)
                    .and_then(|v| v["checks"].as_array_mut())
                {
                    v.push(json!(format!("{}: {}", svc.spec.kind, c.name)));
                }
            }
        }
        Value::Array(map.into_values().collect())
    }

    /// Renders every file of the site except the static assets and streams it into `st` as
    /// soon as it exists. The work is split into tasks that run side by side on the thread
    /// pool, so the files (most of them the runbook pages and their catalog JSON) are being
    /// written while the search index and the list pages are still being computed:
    ///
    /// * one task builds the search index and writes `search/`;
    /// * one task writes `api/v1/admin/runbooks/` (a JSON file per runbook, then the
    ///   index): one directory, so one writer;
    /// * after the directory skeleton (one thread: every `runbooks/<id>/`), the runbook pages
    ///   in chunks, each list page or group of pages that shares a costly context, and the
    ///   snapshot files.
    ///
    /// Returns the search index's sizes.
    pub fn write(&self, t: &Templates, st: &Stager<'_>) -> Result<SearchSizes, SiteError> {
        let common = self.common();
        let all: Vec<Value> = self.runbooks.par_iter().map(|r| self.summary(r)).collect();
        let alerts = self.alerts();
        let mut alerts_of: HashMap<&str, Vec<&Value>> = HashMap::new();
        for a in &alerts {
            if let Some(id) = a["runbook"].as_str() {
                alerts_of.entry(id).or_default().push(a);
            }
        }
        let no_alerts = Vec::new();
        let alerts_of = |id: &str| alerts_of.get(id).unwrap_or(&no_alerts);

        // the directories every task needs before it starts, except `runbooks/<id>/`
        let fixed: Vec<&str> = LIST_PAGES
            .iter()
            .copied()
            .chain([
                "api/v1/admin/runbooks/index.json",
                "search/meta.json",
                "snapshot/summary.json",
                "assets/site.css",
            ])
            .collect();
        st.make_dirs(output::dirs_of(fixed))?;
        let started = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;

        let failed: Mutex<Option<SiteError>> = Mutex::new(None);
        let sizes: Mutex<Option<SearchSizes>> = Mutex::new(None);
        let fail = |e: SiteError| {
            failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert(e);
        };
        // a task that starts after another one failed does nothing (the build fails anyway)
        let run = |task: &dyn Fn() -> Result<(), SiteError>| {
            let stopped = failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some();
            if !stopped && let Err(e) = task() {
                fail(e);
            }
        };
        let base = self.base(2, "runbooks", "", &[]);
        let shared = merge_maps([to_mj(&json!({"site": base["site"]})), common.clone()]);
        // every summary converted to a template value once: the runbook pages and the three
        // runbook lists share them
        let all_mj: Vec<minijinja::Value> = all.par_iter().map(to_mj).collect();
        let lists = self.list_pages(&all_mj, &alerts);
        rayon::scope_fifo(|s| {
            s.spawn_fifo(|_| {
                run(&|| {
                    let docs: Vec<SearchDoc<'_>> = self
                        .runbooks
                        .iter()
                        .map(|r| SearchDoc {
                            id: &r.entry.id,
                            title: &r.entry.title,
                            group: &r.entry.signal_group,
                            text: &r.rendered.text,
                        })
                        .collect();
                    let index = search::build(&docs);
                    tracing::debug!(ms = ms(started), "site: search index built");
                    let mut w = st.dir("search")?;
                    for (rel, content) in &index.files {
                        w.put(rel.rsplit('/').next().unwrap_or(rel), content)?;
                    }
                    *sizes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SearchSizes {
                        first_download_bytes: index.first_download,
                        worst_single_word_query_bytes: index.worst_single_word_query,
                        total_bytes: index.total,
                    });
                    Ok(())
                })
            });
            s.spawn_fifo(|_| {
                run(&|| {
                    let mut w = st.dir("api/v1/admin/runbooks")?;
                    for (r, summary) in self.runbooks.iter().zip(&all) {
                        let id = &r.entry.id;
                        let mut api = summary.clone();
                        api["html_url"] = json!(format!("runbooks/{id}/"));
                        api["markdown"] = json!(r.markdown);
                        api["alerts"] =
                            json!(alerts_of(id).iter().map(|a| &a["name"]).collect::<Vec<_>>());
                        let text = serde_json::to_string_pretty(&api).unwrap_or_default() + "\n";
                        w.put(&format!("{id}.json"), &text)?;
                    }
                    let index: Vec<Value> = all
                        .iter()
                        .map(|s| {
                            let mut s = s.clone();
                            let id = s["id"].as_str().unwrap_or("").to_owned();
                            s["html_url"] = json!(format!("runbooks/{id}/"));
                            s["api_url"] = json!(format!("api/v1/admin/runbooks/{id}.json"));
                            s
                        })
                        .collect();
                    let text = serde_json::to_string_pretty(&json!({
                        "version": 1,
                        "generated_at": self.snap.summary.generated_at,
                        "runbooks": index,
                    }))
                    .unwrap_or_default()
                        + "\n";
                    w.put("index.json", &text)?;
                    tracing::debug!(ms = ms(started), "site: catalog JSON written");
                    Ok(())
                })
            });
            // The skeleton of the runbook pages, on this thread while the others work; the
            // tasks below write into these directories. The list pages go first and the
            // runbook pages last, in small chunks, so the pool's work ends evenly.
            let dirs: Vec<String> = self
                .runbooks
                .iter()
                .map(|r| format!("runbooks/{}", r.entry.id))
                .collect();
            if let Err(e) = st.make_dirs(dirs.iter().map(String::as_str)) {
                fail(e);
                return;
            }
            tracing::debug!(ms = ms(started), "site: runbook directories made");
            for group in &lists {
                let (common, run) = (&common, &run);
                s.spawn_fifo(move |_| {
                    run(&|| {
                        for (path, tmpl, depth, id, title, snippets, extra) in group() {
                            // the keys of `extra` and `common` never meet those of `base`
                            let base = to_mj(&self.base(depth, id, title, &snippets));
                            let ctx = merge_maps([base, extra, common.clone()]);
                            st.put(path, &t.render(tmpl, ctx)?)?;
                        }
                        Ok(())
                    })
                });
            }
            s.spawn_fifo(|_| {
                run(&|| {
                    let mut w = st.dir("snapshot")?;
                    for name in SnippetName::ALL {
                        let text = serde_json::to_string_pretty(&self.snap.to_value(name))
                            .unwrap_or_default()
                            + "\n";
                        w.put(&name.file_name(), &text)?;
                    }
                    Ok(())
                })
            });
            let (page_id, page_snippets) = (
                base["page"]["id"].as_str().unwrap_or_default(),
                base["page"]["snippets"].as_str().unwrap_or_default(),
            );
            for chunk in self
                .runbooks
                .chunks(RUNBOOK_CHUNK)
                .zip(all_mj.chunks(RUNBOOK_CHUNK))
            {
                let (shared, alerts_of, run) = (&shared, &alerts_of, &run);
                s.spawn_fifo(move |_| {
                    run(&|| {
                        for (r, summary) in chunk.0.iter().zip(chunk.1) {
                            // built as template values directly: no JSON tree per page
                            let alerts = alerts_of(&r.entry.id);
                            let ctx = context! {
                                page => context! {
                                    id => page_id,
                                    title => r.entry.title.as_str(),
                                    snippets => page_snippets,
                                },
                                runbook => summary.clone(),
                                html => r.rendered.html.as_str(),
                                toc => minijinja::Value::from(minijinja::value::Serde(&r.rendered.toc)),
                                alerts => if alerts.is_empty() {
                                    minijinja::Value::from(Vec::<minijinja::Value>::new())
                                } else {
                                    minijinja::Value::from(minijinja::value::Serde(alerts))
                                },
                            };
                            let page =
                                t.render("runbook.html", merge_maps([ctx, shared.clone()]))?;
                            st.put(&format!("runbooks/{}/index.html", r.entry.id), &page)?;
                        }
                        Ok(())
                    })
                });
            }
        });
        if let Some(e) = failed
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Err(e);
        }
        Ok(sizes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or(SearchSizes {
                first_download_bytes: 0,
                worst_single_word_query_bytes: 0,
                total_bytes: 0,
            }))
    }

    /// The list pages, in groups that share a context: each group is one task of
    /// [`Site::write`], so the costly contexts (queries and dashboards, the runbook lists)
    /// are computed side by side. Every path is in [`LIST_PAGES`].
    fn list_pages<'s>(
        &'s self,
        all: &'s [minijinja::Value],
        alerts: &'s [Value],
    ) -> Vec<ListGroup<'s>> {
        use SnippetName::*;
        // The runbook summaries grouped by one field of their catalog entry, groups by name.
        // (`all` holds template values, so a list shares each summary instead of copying it)
        let grouped = move |key: GroupKey| -> minijinja::Value {
            let mut m: BTreeMap<&str, Vec<minijinja::Value>> = BTreeMap::new();
            for (r, s) in self.runbooks.iter().zip(all) {
                m.entry(key(r.entry)).or_default().push(s.clone());
            }
            m.into_iter()
                .map(|(k, v)| context! {name => k, slug => markdown::slug(k), runbooks => v})
                .collect()
        };
        let mut pages: Vec<ListGroup<'s>> = Vec::new();
        pages.push(Box::new(move || {
                let (queries, dashboards) = (self.queries(), self.dashboards());
                let overdue = self
                    .runbooks
                    .iter()
                    .filter(|r| r.review_status == "overdue")
                    .count();
                vec![
                    (
                        "ops/index.html",
                        "ops.html",
                        1,
                        "ops",
                        "Operations",
                        vec![Summary, Actions, Health, Sites, Dr, Tasks, Events],
                        to_mj(&json!({"queries": queries, "dashboards": dashboards, "overdue_reviews": overdue})),
                    ),
                    (
                        "dashboards/index.html",
                        "dashboards.html",
                        1,
                        "dashboards",
                        "Dashboards and queries",
                        vec![],
                        to_mj(&json!({"queries": queries, "dashboards": dashboards})),
                    ),
                ]
            }));
        pages.push(Box::new(move || {
            vec![(
                "runbooks/index.html",
                "runbooks.html",
                1,
                "runbooks",
                "Runbooks",
                vec![],
                context! {runbooks => all, review_max_days => REVIEW_MAX_DAYS},
            )]
        }));
        let by: [(&str, &str, &str, GroupKey); 2] = [
            (
                "runbooks/by-group/index.html",
                "runbooks_by_group.html",
                "Runbooks by signal group",
                |e| &e.signal_group,
            ),
            (
                "runbooks/by-owner/index.html",
                "runbooks_by_owner.html",
                "Runbooks by owner",
                |e| &e.owner_team,
            ),
        ];
        for (path, template, title, key) in by {
            pages.push(Box::new(move || {
                vec![(
                    path,
                    template,
                    2,
                    "runbooks",
                    title,
                    vec![],
                    context! {groups => grouped(key)},
                )]
            }));
        }
        pages.push(Box::new(move || {
            vec![(
                "maps/index.html",
                "maps.html",
                1,
                "maps",
                "Signal and alert maps",
                vec![],
                to_mj(&json!({"signals": self.signals(alerts), "alerts": alerts})),
            )]
        }));
        pages.push(Box::new(move || {
            vec![
                (
                    "health/index.html",
                    "health.html",
                    1,
                    "health",
                    "Health",
                    vec![Health],
                    to_mj(&json!({"services": self.services()})),
                ),
                (
                    "sites/index.html",
                    "sites.html",
                    1,
                    "sites",
                    "Datacenters",
                    vec![Sites],
                    to_mj(&json!({"sites_declared": self.sites_declared()})),
                ),
                (
                    "dr/index.html",
                    "dr.html",
                    1,
                    "dr",
                    "DR posture",
                    vec![Dr],
                    to_mj(&json!({"stores_declared": self.dr_declared()})),
                ),
                (
                    "index.html",
                    "index.html",
                    0,
                    "home",
                    "vakt operator site",
                    vec![Summary],
                    to_mj(&json!({})),
                ),
                (
                    "tasks/index.html",
                    "tasks.html",
                    1,
                    "tasks",
                    "Tasks",
                    vec![Tasks],
                    to_mj(&json!({})),
                ),
                (
                    "events/index.html",
                    "events.html",
                    1,
                    "events",
                    "Events",
                    vec![Events],
                    to_mj(&json!({})),
                ),
                (
                    "inventory/index.html",
                    "inventory.html",
                    1,
                    "inventory",
                    "Inventory and drift",
                    vec![Inventory],
                    to_mj(&json!({})),
                ),
                (
                    "search/index.html",
                    "search.html",
                    1,
                    "search",
                    "Search",
                    vec![],
                    to_mj(&json!({"runbook_count": self.runbooks.len()})),
                ),
            ]
        }));
        pages
    }

    fn sites_declared(&self) -> Vec<Value> {
        self.model
            .sites
            .iter()
            .map(|s| {
                let nodes: Vec<&str> = self
                    .model
                    .nodes
                    .iter()
                    .filter(|n| n.spec.site == s.spec.id)
                    .map(|n| n.spec.id.as_str())
                    .collect();
                let tenants: Vec<&str> = self
                    .model
                    .placements
                    .iter()
                    .filter(|p| {
                        p.spec.shards.values().any(|sh| {
                            self.model
                                .shards
                                .iter()
                                .any(|x| &x.spec.id == sh && x.spec.site == s.spec.id)
                        })
                    })
                    .map(|p| p.spec.tenant.as_str())
                    .collect();
                json!({"id": s.spec.id, "name": s.spec.name, "region": s.spec.region,
                       "location": s.spec.location, "role": s.spec.role, "links": s.spec.links,
                       "nodes": nodes, "tenants": tenants})
            })
            .collect()
    }

    fn dr_declared(&self) -> Vec<Value> {
        let mut dr_decl: Vec<Value> = self
            .model
            .dr_stores
            .iter()
            .map(|d| serde_json::to_value(&d.spec).unwrap_or(Value::Null))
            .collect();
        dr_decl.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        dr_decl
    }

    fn services(&self) -> Vec<Value> {
        let mut services: Vec<Value> = self
            .model
            .services
            .iter()
            .map(|s| {
                let checks: Vec<Value> = s
                    .spec
                    .health_checks
                    .iter()
                    .map(|c| {
                        let rb: Vec<&str> = self
                            .runbooks
                            .iter()
                            .filter(|r| r.entry.signals.contains(&c.signal))
                            .map(|r| r.entry.id.as_str())
                            .collect();
                        json!({"name": c.name, "signal": c.signal, "description": c.description, "runbooks": rb})
                    })
                    .collect();
                json!({"kind": s.spec.kind, "description": s.spec.description, "owner_team": s.spec.owner_team,
                       "version": s.spec.version, "checks": checks})
            })
            .collect();
        services.sort_by(|a, b| a["kind"].as_str().cmp(&b["kind"].as_str()));
        services
    }
}

/// Ids of the saved queries a dashboard's panel targets name (`savedQuery`), sorted, once each.
fn saved_queries_of(d: &opsrepo::model::Dashboard) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack: Vec<&opsrepo::model::Panel> = d.panels.iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p.panels.iter());
        out.extend(
            p.targets
                .iter()
                .filter_map(|t| t.saved_query.as_ref().map(|r| r.id.as_str())),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_ages() {
        let now = time::macros::date!(2026 - 11 - 22);
        assert_eq!(review(now, "2026-11-20"), (Some(2), "fresh"));
        assert_eq!(review(now, "2026-09-01"), (Some(82), "due-soon"));
        assert_eq!(review(now, "2026-01-01"), (Some(325), "overdue"));
        assert_eq!(review(now, "soon"), (None, "unknown"));
    }

    #[test]
    fn ids_usable_as_paths() {
        assert!(valid_id("ops.vakt.drift"));
        for bad in ["", "../x", "a/b", ".x", "A.b", "a..b"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn explore_links_are_encoded() {
        let l = explore_link("https://g.example/", "loki", r#"{service="x"} | json"#);
        assert!(l.starts_with("https://g.example/explore?left=%7B"), "{l}");
        assert!(!l.contains(' ') && !l.contains('"'), "{l}");
    }
}
