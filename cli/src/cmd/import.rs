//! `vakt import`.

use std::path::PathBuf;

use opsrepo::import::{self, Action, ImportOptions, ImportReport, Mapping, Plan};

use crate::fail::{Exit, Fail};
use crate::output::{Format, HUMAN_JSON};
use crate::{exit, output};

/// Bring an existing estate into the ops repo: rule files, runbook pages, Grafana dashboards.
///
/// Import runbooks first, then rules (runbook_url links are matched against the catalog the
/// runbook import wrote), then dashboards. Every import prints a report: per alert its runbook id
/// or why it has none, dead runbook links with the alerts using them, runbooks no alert points
/// at, every value chosen by default (review these), every input it could not use and what to
/// do, and the findings `vakt validate` will report once the files are written.
///
/// A run never overwrites an existing file without --force (the runbook catalog is merged:
/// entries and signals are added), writes each file atomically (temp + rename), and
/// --dry-run writes nothing. Importing the same input again changes nothing.
///
/// Defaults (override them with --mapping FILE, a TOML file; see README "vakt import"):
///   severity -> escalation   critical: urgent, warning: action-required, else informational
///   alert name -> signal     the name in snake_case (KubePodCrashLooping: kube_pod_crash_looping)
///   page path -> runbook id  kubernetes/KubePodCrashLooping.md: kubernetes.kubepodcrashlooping
///   headings                 Meaning, Impact: Trigger; Diagnosis: Evidence to review first;
///                            Mitigation: Allowed actions
///   no review date           last_reviewed_at 0000-01-01 (never reviewed: validate flags it)
///
/// Exit status: 0 imported and `vakt validate` will pass; 1 the report lists problems or
/// validate findings; 3 could not run.
///
/// Examples:
///   vakt import runbooks ../runbooks/content/runbooks --dry-run
///   vakt import runbooks ../runbooks/content/runbooks
///   vakt import rules manifests/*prometheusRule.yaml \
///       --runbook-url-base https://runbooks.prometheus-operator.dev/runbooks/
///   vakt import dashboards grafana-exports/ --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ImportOpts {
    #[command(subcommand)]
    pub what: What,
    /// The ops repo (a work tree) to import into.
    #[arg(
        long,
        env = "VAKT_REPO",
        default_value = ".",
        value_name = "DIR",
        global = true
    )]
    pub repo: PathBuf,
    /// Overrides of the defaults (TOML: [escalation], [signals], [headings], [runbook_ids],
    /// [runbook_urls], [datasources], owner_team).
    #[arg(long, value_name = "FILE", global = true)]
    pub mapping: Option<PathBuf>,
    /// Print the report and the files that would be written; write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Replace existing files (and catalog entries) whose content differs.
    #[arg(long, global = true)]
    pub force: bool,
    /// Evaluate runbook review ages as of this date (YYYY-MM-DD) instead of today.
    #[arg(long, value_name = "DATE", value_parser = super::parse_date, global = true)]
    pub now: Option<time::Date>,
    /// Output format.
    #[arg(long, default_value = "human", value_parser = Format::only(HUMAN_JSON), global = true)]
    pub format: Format,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Prometheus/vmalert rule files and PrometheusRule CRs (files or folders) -> alerts/.
    Rules {
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// The URL runbook pages were published under; the rest of a runbook_url is the page
        /// path (e.g. https://runbooks.prometheus-operator.dev/runbooks/). Without it a link
        /// matches the catalog id its trailing path segments spell.
        #[arg(long, value_name = "URL")]
        runbook_url_base: Option<String>,
    },
    /// A folder of markdown runbook pages -> runbooks/<id>.md and catalog entries.
    Runbooks {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// A folder of Grafana dashboard exports -> dashboards/<uid>.json.
    Dashboards {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

pub fn run(o: ImportOpts) -> Exit {
    let mapping = match &o.mapping {
        Some(p) => Mapping::read(p).map_err(|e| Fail::could_not_run(e.to_string()))?,
        None => Mapping::default(),
    };
    let current = opsrepo::read_work_tree(&o.repo)?;
    let opts = ImportOptions {
        repo: o.repo.clone(),
        mapping,
        force: o.force,
        dry_run: o.dry_run,
        today: o.now.unwrap_or_else(super::today),
    };
    let plan: Plan = match &o.what {
        What::Rules {
            paths,
            runbook_url_base,
        } => import::rules::plan(paths, runbook_url_base.as_deref(), &current, &opts),
        What::Runbooks { dir } => import::runbooks::plan(dir, &current, &opts),
        What::Dashboards { dir } => import::dashboards::plan(dir, &current, &opts),
    };
    let written = if o.dry_run {
        0
    } else {
        import::write_plan(&plan, &o.repo).map_err(|e| Fail::could_not_run(e.to_string()))?
    };
    let r = &plan.report;
    match o.format {
        Format::Json => Format::print_json(r),
        _ => output::print(&human(r, written)),
    }
    Ok(if r.problems.is_empty() && r.errors_after() == 0 {
        exit::OK
    } else {
        exit::FINDINGS
    })
}

fn human(r: &ImportReport, written: usize) -> String {
    let mut s = String::new();
    let verb = if r.dry_run { "would write" } else { "wrote" };
    s.push_str("Files\n");
    for f in &r.files {
        let a = match f.action {
            Action::Create => "create",
            Action::Overwrite => "overwrite",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Conflict => "conflict",
        };
        s.push_str(&format!("  {a:<10} {}\n", f.path));
    }
    if !r.alerts.is_empty() {
        s.push_str("\nAlerts\n");
        for a in &r.alerts {
            match (&a.runbook_id, &a.reason) {
                (Some(id), _) => s.push_str(&format!("  {:<40} runbook {id}\n", a.alert)),
                (None, reason) => s.push_str(&format!(
                    "  {:<40} no runbook: {}\n",
                    a.alert,
                    reason.as_deref().unwrap_or("")
                )),
            }
        }
    }
    if !r.dead_links.is_empty() {
        s.push_str("\nDead runbook links (no imported page)\n");
        for d in &r.dead_links {
            s.push_str(&format!(
                "  {}\n    used by: {}\n",
                d.url,
                d.alerts.join(", ")
            ));
        }
    }
    if !r.unreferenced_runbooks.is_empty() {
        s.push_str("\nRunbooks no alert points at\n");
        for id in &r.unreferenced_runbooks {
            s.push_str(&format!("  {id}\n"));
        }
    }
    if !r.runbooks.is_empty() {
        s.push_str("\nRunbooks\n");
        for p in &r.runbooks {
            s.push_str(&format!("  {} -> {} ({})\n", p.source, p.id, p.path));
            for (from, to) in &p.sections {
                if from != to {
                    s.push_str(&format!("    ## {from} -> ## {to}\n"));
                }
            }
        }
    }
    if !r.dashboards.is_empty() {
        s.push_str("\nDashboards\n");
        for d in &r.dashboards {
            s.push_str(&format!("  {} -> {}\n", d.source, d.path));
            for (from, to) in &d.datasources {
                s.push_str(&format!("    datasource {from} -> {to}\n"));
            }
        }
    }
    if !r.defaulted.is_empty() {
        s.push_str("\nSet by default (review)\n");
        for d in &r.defaulted {
            s.push_str(&format!(
                "  {}: {} = {} ({})\n",
                d.subject, d.field, d.value, d.why
            ));
        }
    }
    if !r.problems.is_empty() {
        s.push_str("\nProblems\n");
        for p in &r.problems {
            let at = if p.line > 0 {
                format!("{}:{}", p.file, p.line)
            } else {
                p.file.clone()
            };
            s.push_str(&format!("  {at}: {}\n    help: {}\n", p.message, p.help));
        }
    }
    s.push_str(&format!(
        "\nvakt validate after the import: {} finding(s), {} error(s)\n",
        r.findings_after.len(),
        r.errors_after()
    ));
    for f in &r.findings_after {
        s.push_str(&format!(
            "  {}:{}:{}: {} [{}] {}\n",
            f.path,
            f.line,
            f.col,
            f.severity.as_str(),
            f.rule,
            f.message
        ));
    }
    let n = r
        .files
        .iter()
        .filter(|f| {
            matches!(
                f.action,
                Action::Create | Action::Overwrite | Action::Update
            )
        })
        .count();
    s.push_str(&format!(
        "\n{verb} {} file(s); {} problem(s)\n",
        if r.dry_run { n } else { written },
        r.problems.len()
    ));
    s
}
