//! The operator site end to end: `vakt site build` and `vakt site serve` as real processes,
//! pages checked in headless Chromium (WebDriver), the built tree crawled for broken links.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use vakt_tests::browser::{Driver, Server, build_site, http, rfc3339_ago, write_snippet};
use vakt_tests::{copy_bundled, git, outcome, vakt, workspace};

const SNIPPETS: [&str; 8] = [
    "summary",
    "actions",
    "tasks",
    "events",
    "health",
    "inventory",
    "sites",
    "dr",
];
const WAIT: Duration = Duration::from_secs(30);

/// A built site of the bundled repo plus a directory of fresh live snippets (copies of the
/// build-time snapshot with `generated_at` = now, `source` = live).
struct Fixture {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    snippets: PathBuf,
}

fn fixture(repo: &Path, build_extra: &[&str]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    let snippets = tmp.path().join("snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    build_site(repo, &out, build_extra);
    for name in SNIPPETS {
        let mut v: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("snapshot").join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        v["generated_at"] = json!(rfc3339_ago(0));
        if name == "summary" {
            v["source"] = json!("live");
        }
        write_snippet(&snippets, name, &v.to_string());
    }
    Fixture {
        _tmp: tmp,
        out,
        snippets,
    }
}

fn condition(id: &str, kind: &str, runbook: &str, title: &str) -> Value {
    json!({
        "id": id, "kind": kind, "title": title,
        "escalation_class": "action-required", "remediation_mode": "operator-approved",
        "runbook": runbook, "site": "osl1", "env": "prod",
    })
}

fn actions(conditions: Vec<Value>) -> String {
    json!({"version": 1, "generated_at": rfc3339_ago(0), "conditions": conditions}).to_string()
}

#[test]
fn ops_shows_the_five_sections_in_decision_first_order() {
    let f = fixture(&workspace(), &[]);
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/ops/"));
    let ids = s.js("return Array.from(document.querySelectorAll('main > section')).map(x => x.id)");
    assert_eq!(
        ids,
        json!([
            "decision",
            "action-required",
            "health-summary",
            "investigation-tools",
            "fleet-detail"
        ])
    );
    let landmarks = s.js(
        "return ['header', 'nav', 'main'].every(t => document.querySelector(t)) && \
         document.querySelector('meta[name=viewport]') !== null",
    );
    assert_eq!(landmarks, json!(true));
    // every input on the page has a label
    let unlabelled = s.js(
        "return Array.from(document.querySelectorAll('input')).filter(i => !i.labels || !i.labels.length).length",
    );
    assert_eq!(unlabelled, json!(0));
    // fresh snippets: the live banner, no problem banners
    s.wait_for(
        "return document.querySelector('[data-banner=live]') !== null",
        WAIT,
        "live banner",
    );
}

#[test]
fn conditions_written_live_appear_with_their_runbook_links() {
    let f = fixture(&workspace(), &["--refresh", "1"]);
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/ops/"));
    s.wait_for(
        "return document.querySelector('[data-banner=live]') !== null",
        WAIT,
        "first refresh",
    );
    assert_eq!(
        s.js("return document.querySelectorAll('#action-required li.cond').length"),
        json!(0)
    );
    write_snippet(
        &f.snippets,
        "actions",
        &actions(vec![
            condition(
                "drift.prod.placement.acme",
                "drift",
                "ops.vakt.drift",
                "2 drifted keys in vakt_prod_placement",
            ),
            condition(
                "job.apply.42",
                "failed-job",
                "ops.vakt.job-dead-lettered",
                "apply job 42 dead-lettered",
            ),
            condition(
                "approval.node.gw-osl1-09",
                "pending-approval",
                "ops.vakt.approval-pending",
                "discovered node gw-osl1-09 waits for approval",
            ),
        ]),
    );
    let links = s.wait_for(
        "const l = Array.from(document.querySelectorAll('#action-required li.cond a.runbook-link')); \
         return l.length === 3 ? l.map(a => [a.closest('li').dataset.kind, a.getAttribute('href'), a.href]) : null",
        WAIT,
        "three live conditions",
    );
    let links = links.as_array().unwrap();
    let kinds: Vec<&str> = links.iter().map(|l| l[0].as_str().unwrap()).collect();
    assert_eq!(kinds, ["drift", "failed-job", "pending-approval"]);
    assert_eq!(links[0][1], "../runbooks/ops.vakt.drift/");
    for l in links {
        let (code, body) = http("GET", l[2].as_str().unwrap(), None);
        assert_eq!(code, 200, "{}", l[2]);
        assert!(body.contains("<article class=\"md\">"), "{}", l[2]);
    }
    // escalation and remediation are shown on each card
    let text = s.js("return document.querySelector('#action-required').innerText");
    assert!(
        text.as_str().unwrap().contains("operator-approved"),
        "{text}"
    );
}

#[test]
fn stale_missing_and_invalid_snippets_show_banners_and_the_page_still_renders() {
    let f = fixture(&workspace(), &["--refresh", "1"]);
    let mut summary: Value =
        serde_json::from_str(&std::fs::read_to_string(f.snippets.join("summary.json")).unwrap())
            .unwrap();
    summary["generated_at"] = json!(rfc3339_ago(3600));
    write_snippet(&f.snippets, "summary", &summary.to_string());
    write_snippet(
        &f.snippets,
        "actions",
        "{\"version\": 1, \"generated_at\": ",
    );
    write_snippet(
        &f.snippets,
        "events",
        &json!({"version": 1, "generated_at": rfc3339_ago(0), "events": "<b>x</b>"}).to_string(),
    );
    std::fs::remove_file(f.snippets.join("tasks.json")).unwrap();
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/ops/"));
    let banners = s.wait_for(
        "const b = Array.from(document.querySelectorAll('#live-status [data-banner]')); \
         return b.length >= 4 ? b.map(x => [x.dataset.snippet, x.dataset.banner, x.textContent]) : null",
        WAIT,
        "four banners",
    );
    let by: BTreeMap<String, (String, String)> = banners
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b[0].as_str().unwrap().to_owned(),
                (
                    b[1].as_str().unwrap().to_owned(),
                    b[2].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(by["summary"].0, "stale", "{by:?}");
    assert!(by["summary"].1.contains("60 min ago"), "{by:?}");
    assert_eq!(by["actions"].0, "invalid", "{by:?}");
    assert!(by["actions"].1.contains("not valid JSON"), "{by:?}");
    assert_eq!(by["events"].0, "invalid", "{by:?}");
    assert_eq!(by["tasks"].0, "missing", "{by:?}");
    assert!(!by.contains_key("health"), "{by:?}");
    // the page is intact: five sections, the snapshot of the failed parts still shown
    assert_eq!(
        s.js("return document.querySelectorAll('main > section').length"),
        json!(5)
    );
    assert_eq!(
        s.js("return document.querySelector('#action-required .live').innerText.includes('No conditions')"),
        json!(true)
    );
    // the stale summary is still rendered (stale is a warning, not a refusal)
    assert_eq!(
        s.js("return document.querySelector('#decision .live').dataset.source"),
        json!("live")
    );
}

#[test]
fn without_javascript_the_build_time_snapshot_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let at_build = tmp.path().join("at-build");
    std::fs::create_dir_all(&at_build).unwrap();
    write_snippet(
        &at_build,
        "actions",
        &actions(vec![condition(
            "drift.snapshot.1",
            "drift",
            "ops.vakt.drift",
            "drift seen when the site was built",
        )]),
    );
    let f = fixture(
        &workspace(),
        &["--snippets-dir", &at_build.to_string_lossy()],
    );
    // the live snippets say something else; without JS they must not be used
    write_snippet(&f.snippets, "actions", &actions(vec![]));
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(false);
    s.goto(&server.url("/ops/"));
    assert_eq!(
        s.js("return document.documentElement.className.includes('js')"),
        json!(false),
        "scripts ran in the no-JavaScript session"
    );
    let cond = s.js(
        "const c = document.querySelector('#action-required li.cond'); \
         return c && [c.dataset.id, c.querySelector('a.runbook-link').getAttribute('href')]",
    );
    assert_eq!(
        cond,
        json!(["drift.snapshot.1", "../runbooks/ops.vakt.drift/"])
    );
    assert_eq!(
        s.js("return document.querySelector('[data-banner=snapshot]') !== null"),
        json!(true)
    );
    // repo-only parts of the snapshot: declared DR stores and sites
    s.goto(&server.url("/dr/"));
    assert_eq!(
        s.js("return document.querySelector('#dr-status tr[data-store=\"vakt-state\"]') !== null"),
        json!(true)
    );
    s.goto(&server.url("/sites/"));
    let text = s.js("return document.querySelector('#site-status').innerText");
    assert!(text.as_str().unwrap().contains("Oslo 1"), "{text}");
}

#[test]
fn search_finds_a_runbook_by_a_word_from_its_body() {
    let repo = copy_bundled();
    let p = repo.path().join("runbooks/ops.vakt.drift.md");
    let mut md = std::fs::read_to_string(&p).unwrap();
    md.push_str("\nThe zanzibarquokka procedure applies to hand edits.\n");
    std::fs::write(&p, md).unwrap();
    let f = fixture(repo.path(), &[]);
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/search/?q=Zanzibarquokka"));
    let hits = s.wait_for(
        "const r = Array.from(document.querySelectorAll('#search-results a')); \
         return r.length ? r.map(a => a.getAttribute('href')) : null",
        WAIT,
        "search results",
    );
    assert_eq!(hits, json!(["../runbooks/ops.vakt.drift/"]));
    // two words: both must match (quorum appears in three runbooks, restore in several)
    s.goto(&server.url("/search/?q=quorum+bergen"));
    let hits = s.wait_for(
        "const r = Array.from(document.querySelectorAll('#search-results a')); \
         return r.length ? r.map(a => a.getAttribute('href')) : null",
        WAIT,
        "two-word results",
    );
    for h in hits.as_array().unwrap() {
        let id = h
            .as_str()
            .unwrap()
            .trim_start_matches("../runbooks/")
            .trim_end_matches('/');
        let path = workspace().join(format!("runbooks/{id}.md"));
        let text = std::fs::read_to_string(path).unwrap().to_lowercase();
        assert!(text.contains("quorum") && text.contains("bergen"), "{id}");
    }
    let status = s.js("return document.getElementById('search-status').textContent");
    assert!(status.as_str().unwrap().contains("match"), "{status}");
}

#[test]
fn correlation_search_finds_the_events_of_a_task() {
    let f = fixture(&workspace(), &["--refresh", "1"]);
    let ev = |id: &str, corr: &str, task: &str, msg: &str| {
        json!({"id": id, "at": rfc3339_ago(60), "kind": "apply.step", "message": msg,
               "task_id": task, "correlation_id": corr, "resource": "tenant.acme.tenant",
               "tenant": "acme", "site": "osl1"})
    };
    write_snippet(
        &f.snippets,
        "events",
        &json!({"version": 1, "generated_at": rfc3339_ago(0), "events": [
            ev("e1", "corr-7f3a", "task-apply-17", "apply started"),
            ev("e2", "corr-other", "task-drift-3", "drift check"),
            ev("e3", "corr-7f3a", "task-apply-17", "key written"),
            ev("e4", "corr-9999", "task-backup-1", "backup done"),
            ev("e5", "corr-7f3a", "task-apply-17", "apply finished"),
        ]})
        .to_string(),
    );
    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    // the investigation form on /ops/ submits to the events view
    s.goto(&server.url("/ops/"));
    s.js(
        "document.getElementById('ops-correlation').value = 'corr-7f3a'; \
          document.querySelector('#investigation-tools form').submit(); return true",
    );
    let rows = s.wait_for(
        "if (!location.pathname.startsWith('/events/')) return null; \
         const r = Array.from(document.querySelectorAll('#events tr[data-event]')).filter(x => !x.hidden); \
         return r.length === 3 ? r.map(x => [x.dataset.event, x.children[3].textContent]) : null",
        WAIT,
        "three matching events",
    );
    assert_eq!(
        rows,
        json!([
            ["e1", "task-apply-17"],
            ["e3", "task-apply-17"],
            ["e5", "task-apply-17"]
        ])
    );
    // filtering by task works the same way
    s.goto(&server.url("/events/?task=task-backup-1"));
    let rows = s.wait_for(
        "const r = Array.from(document.querySelectorAll('#events tr[data-event]')).filter(x => !x.hidden); \
         return r.length === 1 && document.querySelector('#events .live').dataset.source === 'live' ? r.map(x => x.dataset.event) : null",
        WAIT,
        "one event for the backup task",
    );
    assert_eq!(rows, json!(["e4"]));
}

/// Every payload would set a `window.__xss*` global if it ran.
#[test]
fn html_in_runbooks_and_snippets_never_runs() {
    let repo = copy_bundled();
    let cat_path = repo.path().join("runbooks/runbooks.catalog.json");
    let mut cat: Value =
        serde_json::from_str(&std::fs::read_to_string(&cat_path).unwrap()).unwrap();
    let entry = cat["runbooks"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["id"] == "ops.vakt.drift")
        .unwrap();
    entry["title"] =
        json!("Drift <script>window.__xss1=1</script><img src=x onerror=\"window.__xss2=1\">");
    std::fs::write(&cat_path, serde_json::to_string_pretty(&cat).unwrap()).unwrap();
    let md_path = repo.path().join("runbooks/ops.vakt.drift.md");
    let mut md = std::fs::read_to_string(&md_path).unwrap();
    md.push_str(concat!(
        "\n## Payloads {#__xss20}\n\n",
        "<script>window.__xss3=1</script>\n\n",
        "[click me](javascript:window.__xss4=1) and [data](data:text/html,<script>parent.__xss5=1</script>)\n\n",
        "<img src=\"x\" onerror=\"window.__xss6=1\">\n\n",
        "<iframe src=\"javascript:parent.__xss7=1\"></iframe>\n\n",
        "<iframe srcdoc=\"<script>parent.__xss8=1</script>\"></iframe>\n\n",
        "<style>body{background:url(\"javascript:window.__xss9=1\")}</style>\n\n",
        "<div style=\"background-image:url(javascript:window.__xss10=1)\">styled</div>\n\n",
        "<svg onload=\"window.__xss11=1\"><circle r=\"1\"/></svg>\n\n",
        "<a href=\"#\" onclick=\"window.__xss12=1\" id=\"clickme\">x</a>\n\n",
        "<form action=\"javascript:window.__xss13=1\"><button id=\"submitme\">go</button></form>\n",
    ));
    std::fs::write(&md_path, md).unwrap();
    let f = fixture(repo.path(), &["--refresh", "1"]);

    // the rendered page carries no script but ours, and no dangerous attribute
    let page = std::fs::read_to_string(f.out.join("runbooks/ops.vakt.drift/index.html")).unwrap();
    assert_eq!(page.matches("<script").count(), 1, "only site.js");
    // payload text may remain as escaped text (`&lt;img … onerror=…`), never inside a tag
    let in_tag = regex::Regex::new(
        r#"(?i)<[^>]*(onerror|onload|onclick|style=|srcdoc|javascript:|data:text/html|id="__xss)"#,
    )
    .unwrap();
    assert!(
        in_tag.find(&page).is_none(),
        "{:?} survived in the runbook page",
        in_tag.find(&page)
    );
    for tag in ["<iframe", "<style", "<svg", "<form"] {
        assert!(!page.contains(tag), "{tag} survived in the runbook page");
    }

    let payload = "<img src=x onerror=\"window.__xss30=1\"><script>window.__xss31=1</script>";
    let mut c = condition("xss.1", "drift", "javascript:window.__xss32=1", payload);
    c["detail"] = json!("<svg onload=\"window.__xss33=1\">");
    c["resource"] = json!("<iframe src=\"javascript:parent.__xss34=1\">");
    write_snippet(&f.snippets, "actions", &actions(vec![c]));
    let mut sites: Value =
        serde_json::from_str(&std::fs::read_to_string(f.snippets.join("sites.json")).unwrap())
            .unwrap();
    sites["sites"][0]["name"] = json!("<img src=x onerror=\"window.__xss35=1\">");
    write_snippet(&f.snippets, "sites", &sites.to_string());
    let mut events: Value =
        serde_json::from_str(&std::fs::read_to_string(f.snippets.join("events.json")).unwrap())
            .unwrap();
    events["events"] = json!([{"id": "<b>e</b>", "at": rfc3339_ago(0), "kind": "x",
        "message": "<img src=x onerror=\"window.__xss36=1\">", "correlation_id": "<script>window.__xss37=1</script>"}]);
    write_snippet(&f.snippets, "events", &events.to_string());

    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    let ran = "return Object.keys(window).filter(k => k.startsWith('__xss'))";

    s.goto(&server.url("/runbooks/ops.vakt.drift/"));
    s.wait_for("return document.readyState === 'complete'", WAIT, "load");
    let clicks = s.js(
        "for (const id of ['clickme', 'submitme']) { const e = document.getElementById(id); if (e) e.click(); } \
         for (const a of document.querySelectorAll('article.md a')) { if (a.protocol === 'javascript:') a.click(); } \
         return document.querySelectorAll('a[href^=\"javascript:\"], [onerror], [onload], iframe, main style').length",
    );
    assert_eq!(clicks, json!(0));
    s.settle(WAIT);
    assert_eq!(s.js(ran), json!([]), "a runbook payload ran");
    // the title is shown as text
    let h1 = s.js("return document.querySelector('main h1').textContent");
    assert!(
        h1.as_str()
            .unwrap()
            .contains("<script>window.__xss1=1</script>"),
        "{h1}"
    );

    for path in ["/runbooks/", "/search/?q=drift", "/maps/"] {
        s.goto(&server.url(path));
        s.wait_for("return document.readyState === 'complete'", WAIT, "load");
        s.settle(WAIT);
        assert_eq!(s.js(ran), json!([]), "a payload ran on {path}");
    }

    s.goto(&server.url("/ops/"));
    let shown = s.wait_for(
        "const c = document.querySelector('#action-required li.cond[data-id=\"xss.1\"]'); \
         const e = document.querySelector('#fleet-detail tr[data-event]'); \
         return c && e ? [c.querySelector('.cond-title').textContent, e.children[2].textContent] : null",
        WAIT,
        "live payload conditions",
    );
    assert_eq!(shown[0], json!(payload), "shown as text");
    assert!(shown[1].as_str().unwrap().contains("onerror"), "{shown}");
    s.wait_for(
        "return Array.from(document.querySelectorAll('#health-summary .site h3')).some(h => h.textContent.includes('<img'))",
        WAIT,
        "site name as text",
    );
    let href =
        s.js("return document.querySelector('li.cond[data-id=\"xss.1\"] a.runbook-link').href");
    assert!(
        href.as_str().unwrap().starts_with(&server.base),
        "runbook link left the site: {href}"
    );
    s.js(
        "document.querySelector('li.cond[data-id=\"xss.1\"] a.runbook-link').click(); return true",
    );
    // The click leaves /ops/ for the runbook page: wait for that page, then let it settle.
    s.wait_for(
        &format!(
            "return location.href !== {} && document.readyState === 'complete'",
            json!(server.url("/ops/"))
        ),
        WAIT,
        "the runbook page the link leads to",
    );
    s.settle(WAIT);
    assert_eq!(s.js(ran), json!([]), "a snippet payload ran");
    assert_eq!(
        s.js("return document.querySelectorAll('main img, main svg, main iframe, main script').length"),
        json!(0)
    );
}

fn crawl_targets(html: &str) -> Vec<String> {
    let re = regex::Regex::new(r#"(?:href|src|action)="([^"]*)""#).unwrap();
    re.captures_iter(html).map(|c| unescape(&c[1])).collect()
}

/// Undoes the HTML escaping of attribute values.
fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn ids_of(html: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r#"\bid="([^"]+)""#).unwrap();
    re.captures_iter(html).map(|c| unescape(&c[1])).collect()
}

/// Resolves `link` against the directory of `page` (both relative to the site root).
fn resolve(page: &str, link: &str) -> Option<String> {
    let mut parts: Vec<&str> = page.split('/').collect();
    parts.pop(); // the file name
    for seg in link.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    let mut p = parts.join("/");
    if link.ends_with('/') || link.is_empty() || p.is_empty() {
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str("index.html");
    }
    Some(p)
}

#[test]
fn the_whole_built_site_has_no_broken_internal_link() {
    let f = fixture(&workspace(), &[]);
    let mut pages = BTreeMap::new();
    let mut files = BTreeSet::new();
    let mut stack = vec![f.out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&f.out)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel.ends_with(".html") {
                pages.insert(rel.clone(), std::fs::read_to_string(&p).unwrap());
            }
            files.insert(rel);
        }
    }
    assert!(pages.len() > 40, "{} pages", pages.len());
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, html) in &pages {
        for link in crawl_targets(html) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            assert!(
                !link.starts_with('/'),
                "{page}: root-absolute link {link} breaks under a path prefix"
            );
            let (path, frag) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link.as_str(), None),
            };
            let path = path.split('?').next().unwrap_or("");
            let target = if path.is_empty() {
                Some(page.clone())
            } else {
                resolve(page, path)
            };
            checked += 1;
            match target {
                Some(t) if files.contains(&t) => {
                    if let Some(fr) = frag.filter(|f| !f.is_empty())
                        && !ids_of(&pages[&t]).contains(fr)
                    {
                        broken.push(format!("{page}: {link} (no #{fr} in {t})"));
                    }
                }
                _ => broken.push(format!("{page}: {link}")),
            }
        }
    }
    assert!(checked > 1000, "only {checked} links checked");
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn runbook_pages_and_the_catalog_api_use_stable_ids_and_review_ages() {
    let repo = copy_bundled();
    // renaming the file never renames the page
    std::fs::rename(
        repo.path().join("runbooks/ops.vakt.drift.md"),
        repo.path().join("runbooks/drift-renamed.md"),
    )
    .unwrap();
    let cat_path = repo.path().join("runbooks/runbooks.catalog.json");
    let text = std::fs::read_to_string(&cat_path)
        .unwrap()
        .replace("runbooks/ops.vakt.drift.md", "runbooks/drift-renamed.md");
    std::fs::write(&cat_path, text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    build_site(repo.path(), &out, &[]);
    assert!(out.join("runbooks/ops.vakt.drift/index.html").is_file());
    assert!(!out.join("runbooks/drift-renamed").exists());

    let cat: Value = serde_json::from_str(&std::fs::read_to_string(&cat_path).unwrap()).unwrap();
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("api/v1/admin/runbooks/index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["runbooks"].as_array().unwrap().len(),
        cat["runbooks"].as_array().unwrap().len()
    );
    for e in cat["runbooks"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        let one: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("api/v1/admin/runbooks/{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(one["id"], id);
        assert_eq!(one["owner_team"], e["owner_team"]);
        assert!(one["markdown"].as_str().unwrap().starts_with('#'), "{id}");
    }
    // review age from last_reviewed_at against --now 2026-11-22
    let drift = index["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dr.control-plane.restore")
        .unwrap();
    assert_eq!(drift["last_reviewed_at"], "2026-11-20");
    assert_eq!(drift["review_days"], 2);
    assert_eq!(drift["review_status"], "fresh");
    let page =
        std::fs::read_to_string(out.join("runbooks/dr.control-plane.restore/index.html")).unwrap();
    assert!(page.contains("reviewed 2 d ago"), "review badge");
    // an old review shows as overdue
    let text = std::fs::read_to_string(&cat_path).unwrap().replace(
        "\"last_reviewed_at\": \"2026-11-20\"",
        "\"last_reviewed_at\": \"2026-01-02\"",
    );
    std::fs::write(&cat_path, text).unwrap();
    build_site(repo.path(), &out, &[]);
    let page =
        std::fs::read_to_string(out.join("runbooks/dr.control-plane.restore/index.html")).unwrap();
    assert!(page.contains("review overdue · 324 d"), "overdue badge");
}

#[test]
fn a_template_syntax_error_fails_with_file_and_line_and_leaves_the_output_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    build_site(&workspace(), &out, &[]);
    let before = vakt_tests::files_under(&out);
    let templates = tmp.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("ops.html"),
        "{% extends \"base.html\" %}\n{% block content %}\n<p>{% if %}</p>\n{% endblock %}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &workspace().to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--templates",
        &templates.to_string_lossy(),
    ]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    let expected = format!("{}:3", templates.join("ops.html").display());
    assert!(stderr.contains(&expected), "no `{expected}` in: {stderr}");
    assert!(stderr.contains("syntax error"), "{stderr}");
    assert_eq!(vakt_tests::files_under(&out), before, "output changed");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // a valid override is used
    std::fs::write(
        templates.join("ops.html"),
        "{% extends \"base.html\" %}\n{% block content %}<p id=\"custom\">custom ops</p>{% endblock %}\n",
    )
    .unwrap();
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &workspace().to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--templates",
        &templates.to_string_lossy(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        std::fs::read_to_string(out.join("ops/index.html"))
            .unwrap()
            .contains("custom ops")
    );
}

#[test]
fn bad_input_is_refused_without_touching_anything() {
    let tmp = tempfile::tempdir().unwrap();
    // an output directory that is not a site is never replaced
    let foreign = tmp.path().join("precious");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
    let ws = workspace();
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &ws.to_string_lossy(),
        "--out",
        &foreign.to_string_lossy(),
    ]));
    assert_eq!(code, 4, "a refusal exits 4: {stderr}");
    assert!(stderr.contains("refusing to replace"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "keep me"
    );

    // a snippet file that is not JSON names the file
    let snippets = tmp.path().join("snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    std::fs::write(snippets.join("dr.json"), "{oops").unwrap();
    let out = tmp.path().join("site");
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &ws.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--snippets-dir",
        &snippets.to_string_lossy(),
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("dr.json") && stderr.contains("not JSON"),
        "{stderr}"
    );
    assert!(!out.exists());

    // a snippet that misses a condition's runbook is refused with the schema named
    std::fs::write(
        snippets.join("dr.json"),
        json!({"version": 1, "generated_at": "2026-11-22T00:00:00Z", "stores": [],
               "conditions": [{"id": "b", "kind": "stale-backup", "title": "t",
                               "escalation_class": "urgent", "remediation_mode": "manual"}]})
        .to_string(),
    )
    .unwrap();
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &ws.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--snippets-dir",
        &snippets.to_string_lossy(),
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("schemas/snippets/dr.schema.json") && stderr.contains("runbook"),
        "{stderr}"
    );

    // an unknown environment
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &ws.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--env",
        "nope",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown environment `nope`"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn snippet_schemas_accept_the_build_time_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    build_site(&workspace(), &out, &["--env", "prod"]);
    for name in SNIPPETS {
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(
                workspace().join(format!("schemas/snippets/{name}.schema.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("snapshot/{name}.json"))).unwrap(),
        )
        .unwrap();
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert_eq!(doc["version"], 1);
    }
}

#[test]
fn serve_watch_rebuilds_and_the_open_page_reloads() {
    let repo = copy_bundled();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    let server = Server::start(
        &out,
        &[
            "--watch",
            "--repo",
            &repo.path().to_string_lossy(),
            "--now",
            vakt_tests::TODAY,
        ],
    );
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/runbooks/ops.vakt.drift/"));
    s.wait_for("return document.readyState === 'complete'", WAIT, "load");
    s.js("window.__marker = 1; return true");
    let cat_path = repo.path().join("runbooks/runbooks.catalog.json");
    let text = std::fs::read_to_string(&cat_path).unwrap().replace(
        "\"vakt: NATS KV drift detected\"",
        "\"vakt: drift (edited live)\"",
    );
    assert!(text.contains("edited live"), "catalog title not found");
    std::fs::write(&cat_path, text).unwrap();
    s.wait_for(
        "return window.__marker === undefined && document.querySelector('main h1').textContent.includes('edited live')",
        Duration::from_secs(60),
        "reload with the new title",
    );
}

/// The operator-surface ADR's questions, each answered by a page from live snippets.
#[test]
fn the_operator_questions_are_answered_from_live_snippets() {
    let f = fixture(&workspace(), &["--refresh", "1"]);
    let now = rfc3339_ago(0);
    let read = |name: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(f.snippets.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap()
    };
    let cond = |id: &str, kind: &str, esc: &str, rem: &str, runbook: &str| {
        json!({"id": id, "kind": kind, "title": format!("{kind} {id}"), "escalation_class": esc,
               "remediation_mode": rem, "runbook": runbook, "site": "osl1"})
    };
    let mut summary = read("summary");
    summary["decision"] =
        json!({"level": "urgent", "headline": "osl1 ↔ bgo1 replication degraded"});
    summary["counts"]["urgent"] = json!(1);
    write_snippet(&f.snippets, "summary", &summary.to_string());
    write_snippet(
        &f.snippets,
        "tasks",
        &json!({"version": 1, "generated_at": now, "tasks": [
            {"id": "t-run", "kind": "apply", "state": "running", "attempts": 1, "allowed_actions": ["inspect", "cancel"]},
            {"id": "t-fail", "kind": "apply", "state": "failed", "attempts": 3, "error": "cas conflict",
             "runbook": "ops.vakt.apply-failed", "allowed_actions": ["inspect", "retry"]},
            {"id": "t-dead", "kind": "node-call", "state": "dead-lettered", "attempts": 5,
             "runbook": "ops.vakt.job-dead-lettered", "allowed_actions": ["inspect", "retry"]},
        ]})
        .to_string(),
    );
    let mut health = read("health");
    health["services"][0]["status"] = json!("degraded");
    health["conditions"] = json!([cond(
        "node.gw-osl1-01",
        "unhealthy-node",
        "action-required",
        "automatic",
        "ops.vakt.node-unhealthy"
    )]);
    write_snippet(&f.snippets, "health", &health.to_string());
    let mut sites = read("sites");
    sites["sites"][1]["links"][1]["status"] = json!("degraded");
    sites["failovers"] = json!([{"at": now, "from": "osl1", "to": "bgo1", "scope": "postgres",
                                 "reason": "drill", "correlation_id": "corr-fo-1"}]);
    sites["conditions"] = json!([cond(
        "link.osl1.bgo1.pg",
        "degraded-site-link",
        "urgent",
        "manual",
        "ops.vakt.site-link-degraded"
    )]);
    write_snippet(&f.snippets, "sites", &sites.to_string());
    let mut inv = read("inventory");
    inv["discovered"] =
        json!([{"id": "gw-osl1-09", "kind": "node", "site": "osl1", "trust": "discovered-only"}]);
    inv["conditions"] = json!([cond(
        "approval.gw-osl1-09",
        "pending-approval",
        "action-required",
        "operator-approved",
        "ops.vakt.approval-pending"
    )]);
    write_snippet(&f.snippets, "inventory", &inv.to_string());
    let mut dr = read("dr");
    for s in dr["stores"].as_array_mut().unwrap() {
        if s["id"] == "vakt-state" {
            s["recoverable"] = json!("no");
            s["last_success_at"] = json!(rfc3339_ago(7200));
        }
    }
    dr["conditions"] = json!([cond(
        "backup.vakt-state",
        "stale-backup",
        "urgent",
        "manual",
        "dr.control-plane.restore"
    )]);
    write_snippet(&f.snippets, "dr", &dr.to_string());

    let server = Server::start(&f.out, &["--snippets-dir", &f.snippets.to_string_lossy()]);
    let driver = Driver::start();
    let s = driver.session(true);
    let live = |region: &str| {
        format!(
            "const r = document.querySelector('{region} .live'); return r && r.dataset.source === 'live' ? r.innerText : null"
        )
    };
    // what tasks are running; what failed; what is dead-lettered; what is safe to retry or cancel
    s.goto(&server.url("/tasks/"));
    let rows = s.wait_for(
        "const r = Array.from(document.querySelectorAll('#tasks tr[data-task]')); \
         return r.length === 3 ? r.map(x => [x.dataset.task, x.children[2].textContent, x.children[7].textContent, x.children[8].textContent]) : null",
        WAIT,
        "live tasks",
    );
    assert_eq!(
        rows,
        json!([
            ["t-run", "running", "inspect, cancel", ""],
            [
                "t-fail",
                "failed",
                "inspect, retry",
                "ops.vakt.apply-failed"
            ],
            [
                "t-dead",
                "dead-lettered",
                "inspect, retry",
                "ops.vakt.job-dead-lettered"
            ]
        ])
    );
    // what services or sites are degraded
    s.goto(&server.url("/health/"));
    let text = s.wait_for(&live("#services"), WAIT, "live services");
    assert!(text.as_str().unwrap().contains("degraded"), "{text}");
    let text = s.wait_for(&live("#health-conditions"), WAIT, "health conditions");
    assert!(text.as_str().unwrap().contains("unhealthy-node"), "{text}");
    s.goto(&server.url("/sites/"));
    let text = s.wait_for(&live("#site-status"), WAIT, "live sites");
    assert!(text.as_str().unwrap().contains("degraded"), "{text}");
    let text = s.wait_for(&live("#failovers"), WAIT, "failovers");
    assert!(text.as_str().unwrap().contains("corr-fo-1"), "{text}");
    // what inventory drift or pending approvals exist
    s.goto(&server.url("/inventory/"));
    let text = s.wait_for(&live("#drift-approvals"), WAIT, "approvals");
    assert!(
        text.as_str().unwrap().contains("pending-approval"),
        "{text}"
    );
    assert!(
        text.as_str().unwrap().contains("operator-approved"),
        "{text}"
    );
    let text = s.wait_for(&live("#discovered"), WAIT, "discovered");
    assert!(text.as_str().unwrap().contains("discovered-only"), "{text}");
    // DR: recoverable now or not, and which runbook applies
    s.goto(&server.url("/dr/"));
    let text = s.wait_for(
        "const r = document.querySelector('#dr-status tr[data-store=\"vakt-state\"]'); \
         return r && document.querySelector('#dr-status .live').dataset.source === 'live' ? r.innerText : null",
        WAIT,
        "live DR",
    );
    assert!(text.as_str().unwrap().contains("no"), "{text}");
    assert!(
        text.as_str().unwrap().contains("dr.control-plane.restore"),
        "{text}"
    );
    // the decision header says whether a human is needed now
    s.goto(&server.url("/ops/"));
    let text = s.wait_for(&live("#decision"), WAIT, "live decision");
    assert!(
        text.as_str().unwrap().to_lowercase().contains("urgent"),
        "{text}"
    );
}

#[test]
fn build_reads_a_git_revision_not_the_work_tree() {
    let repo = copy_bundled();
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "ops repo"]);
    let cat = dir.join("runbooks/runbooks.catalog.json");
    let text = std::fs::read_to_string(&cat)
        .unwrap()
        .replace("\"vakt: NATS KV drift detected\"", "\"uncommitted title\"");
    std::fs::write(&cat, text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    build_site(dir, &out, &["--rev", "main"]);
    let page = std::fs::read_to_string(out.join("runbooks/ops.vakt.drift/index.html")).unwrap();
    assert!(
        page.contains("vakt: NATS KV drift detected"),
        "committed title"
    );
    assert!(!page.contains("uncommitted title"));
    build_site(dir, &out, &[]);
    let page = std::fs::read_to_string(out.join("runbooks/ops.vakt.drift/index.html")).unwrap();
    assert!(page.contains("uncommitted title"), "work tree title");
    // an unknown revision is an error that names it, and leaves the site alone
    let (code, _, stderr) = outcome(&vakt(&[
        "site",
        "build",
        "--repo",
        &dir.to_string_lossy(),
        "--rev",
        "no-such-branch",
        "--out",
        &out.to_string_lossy(),
    ]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no-such-branch"), "{stderr}");
    assert!(out.join("runbooks/ops.vakt.drift/index.html").is_file());
}

#[test]
fn query_templates_are_prefilled_by_tenant_service_and_correlation_id() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    build_site(&workspace(), &out, &[]);
    // without JavaScript: the example values and a matching Explore link
    let page = std::fs::read_to_string(out.join("dashboards/index.html")).unwrap();
    assert!(
        page.contains("correlation_id=&quot;req-20250611-0042&quot;"),
        "example value"
    );
    let server = Server::start(&out, &[]);
    let driver = Driver::start();
    let s = driver.session(true);
    s.goto(&server.url("/dashboards/?correlation_id=corr-42&tenant=havbruk-data&service=gateway"));
    let got = s.wait_for(
        "const q = id => document.querySelector('#q-' + id); \
         const t = id => q(id).querySelector('.query-text').textContent; \
         const a = q('api_error_by_correlation_id').querySelector('a.explore'); \
         const d = document.querySelector('#d-vakt-control-plane a.deep'); \
         return t('api_error_by_correlation_id').includes('corr-42') \
           ? [t('api_error_by_correlation_id'), t('tenant_logs'), t('error_rate_by_service'), \
              decodeURIComponent(a.href), d ? d.getAttribute('href') : ''] : null",
        WAIT,
        "prefilled queries",
    );
    let got: Vec<String> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(got[0].contains(r#"correlation_id="corr-42""#), "{}", got[0]);
    assert!(
        got[1].contains(r#"tenant_id=~"havbruk-data""#),
        "{}",
        got[1]
    );
    assert!(got[2].contains(r#"service=~"gateway""#), "{}", got[2]);
    assert!(!got[2].contains("${"), "every variable filled: {}", got[2]);
    assert!(
        got[3].starts_with("https://grafana.dataverket.internal/explore?left="),
        "{}",
        got[3]
    );
    assert!(got[3].contains("corr-42"), "{}", got[3]);
    assert!(got[4].contains("var-correlation_id=corr-42"), "{}", got[4]);
}

/// Every file of a built site with its inode and modification time: a file that was not
/// written again keeps both.
fn identities(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    vakt_tests::files_under(dir)
        .into_keys()
        .filter(|rel| rel != ".vakt-site") // the manifest: rewritten by every build that writes
        .map(|rel| {
            let m = std::fs::metadata(dir.join(&rel)).unwrap();
            (rel, (m.ino(), m.modified().unwrap()))
        })
        .collect()
}

fn build_json(repo: &Path, out: &Path, now: &str) -> Value {
    let (repo, out) = (repo.to_string_lossy(), out.to_string_lossy());
    let (code, stdout, stderr) = outcome(&vakt(&[
        "site", "build", "--repo", &repo, "--out", &out, "--now", now, "--format", "json",
    ]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn rebuilds_write_nothing_when_nothing_changed_and_only_what_one_runbook_edit_touches() {
    let repo = copy_bundled();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("site");
    let first = build_json(repo.path(), &out, "2026-11-22T08:00:00Z");
    assert_eq!(first["unchanged"], false);
    assert_eq!(first["written"], first["files"], "{first}");
    let before = identities(&out);
    let bytes_before = vakt_tests::files_under(&out);

    // Same inputs, later the same day: nothing is rendered or written.
    let again = build_json(repo.path(), &out, "2026-11-22T09:30:00Z");
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(again["written"], 0);
    assert_eq!(again["files"], first["files"]);
    assert_eq!(identities(&out), before, "a no-op rebuild touched files");
    assert_eq!(vakt_tests::files_under(&out), bytes_before);

    // One runbook edited: its page, its catalog entry and the search shards that index the
    // new word are written; every other file is the same inode as before.
    let rb = repo.path().join("runbooks/dr.control-plane.restore.md");
    let text = std::fs::read_to_string(&rb).unwrap();
    std::fs::write(
        &rb,
        text.replace(
            "## Recording the outcome\n",
            "## Recording the outcome\n\nNote the zanzibarquokka ticket in the hand-over.\n",
        ),
    )
    .unwrap();
    let edited = build_json(repo.path(), &out, "2026-11-22T10:00:00Z");
    assert_eq!(edited["unchanged"], false);
    let after = identities(&out);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(rel, id)| before.get(*rel) != Some(id))
        .map(|(rel, _)| rel)
        .collect();
    assert_eq!(
        edited["written"].as_u64().unwrap() as usize,
        changed.len(),
        "{edited}"
    );
    assert!(
        changed
            .iter()
            .any(|p| p.contains("dr.control-plane.restore") && p.ends_with(".html")),
        "{changed:?}"
    );
    for p in &changed {
        let related = p.contains("dr.control-plane.restore") || p.starts_with("search/");
        assert!(
            related,
            "{p} was rewritten by an edit that does not concern it"
        );
    }
    assert!(changed.len() < 10, "{changed:?}");
    let page = after
        .keys()
        .find(|p| p.contains("dr.control-plane.restore") && p.ends_with(".html"))
        .unwrap();
    let html = std::fs::read_to_string(out.join(page)).unwrap();
    assert!(html.contains("zanzibarquokka"));
    assert!(
        html.contains("2026-11-22T10:00:00Z"),
        "the rewritten page says when"
    );
    // an unchanged page keeps the time of the build that wrote it
    let ops = std::fs::read_to_string(out.join("ops/index.html")).unwrap();
    assert!(ops.contains("2026-11-22T08:00:00Z"));
    // nothing is left beside the output
    let beside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, vec!["site".to_owned()]);

    // A new day changes review ages: every runbook page is rendered again.
    let next_day = build_json(repo.path(), &out, "2026-11-23T08:00:00Z");
    assert_eq!(next_day["unchanged"], false);
}
