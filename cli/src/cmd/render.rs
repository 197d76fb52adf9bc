//! `vakt render`: rule files, scrape configuration and Grafana provisioning from a commit.

use std::path::PathBuf;

use opsrepo::render::{self, RenderError, RenderOptions};
use opsrepo::report;

use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Render what the observability stack reads, from the ops repo at a commit.
///
/// Reads one commit straight from Git (default: the head of the environment's branch from
/// vakt.toml; --rev any branch, tag or sha), never the work tree. Validates that commit's view
/// for --env first and refuses to render when there are error findings (the date-dependent
/// runbook review rules excepted, as for `vakt apply`), printing them. Then writes into --out:
///
///   rules/<file>.yaml                          every alerts/ file, for vmalert or Prometheus,
///                                              with env="<ENV>" on every alert and runbook_url
///                                              = <project.site_url>/runbooks/<runbook_id>/
///   scrape.yaml                                Prometheus scrape_configs (vmagent, victoria-
///                                              metrics -promscrape.config): one job per service,
///                                              one target per node with labels env, site,
///                                              service, node and shard
///   grafana/provisioning/datasources/vakt.yaml from dashboards/datasources.toml
///   grafana/provisioning/dashboards/vakt.yaml  a file provider reading --dashboards-path
///   grafana/dashboards/<uid>.json              the dashboards of the view
///
/// A node's target is its `metrics_url`, or `<admin_url>/metrics` when it has none. A node in
/// several shards gets shard="<a>,<b>" (sorted); a node in none gets no shard label.
///
/// Output is deterministic (byte-identical for the same commit) and atomic: written into a
/// hidden sibling directory, then renamed into place. A non-empty --out that `vakt render` did
/// not write (no .vakt-render marker) is never replaced.
///
/// Exit status: 0 rendered, 1 error findings, 2 usage error, 3 could not run (no repo, unknown
/// revision, I/O), 4 refused (an --out that `vakt render` did not write).
///
/// Examples:
///   vakt render --env prod --out /etc/vakt-render
///   vakt render --env staging --rev 3f2c1ab --out rendered --format json
///   vakt render --env prod --out out --dashboards-path /var/lib/grafana/dashboards/vakt
///   promtool check rules out/rules/*.yaml && vmalert -dryRun -rule='out/rules/*.yaml'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RenderOpts {
    /// The environment to render (its view: base documents plus its overlays).
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Output directory; replaced as a whole on success, untouched on failure.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The ops repo (a Git repository).
    #[arg(long, env = "VAKT_REPO", default_value = ".", value_name = "DIR")]
    pub repo: PathBuf,
    /// The commit to render: branch, tag or sha (default: the environment's branch head).
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Where Grafana finds the dashboards, as Grafana sees the path (default: --out made
    /// absolute, plus /grafana/dashboards).
    #[arg(long, value_name = "PATH")]
    pub dashboards_path: Option<String>,
    /// Evaluate runbook review ages as of this date (YYYY-MM-DD); they never stop a render.
    #[arg(long, value_name = "DATE", value_parser = super::parse_date)]
    pub now: Option<time::Date>,
    /// Output format.
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

pub fn run(o: RenderOpts) -> Exit {
    let rev = o
        .rev
        .clone()
        .unwrap_or_else(|| reconciler::env_branch(&o.repo, &o.env));
    let files = match opsrepo::read_commit(&o.repo, &rev) {
        Ok(f) => f,
        Err(e) => {
            let hint = if o.rev.is_none() {
                format!(
                    " (the branch of environment `{}`: is it declared in vakt.toml, and does the branch exist?)",
                    o.env
                )
            } else {
                String::new()
            };
            return Err(Fail::could_not_run(format!("{e}{hint}")));
        }
    };
    let commit = match &files.origin {
        opsrepo::source::Origin::Commit { id, .. } => Some(id.clone()),
        opsrepo::source::Origin::WorkTree(_) => None,
    };
    let dashboards_path = match &o.dashboards_path {
        Some(p) => p.clone(),
        None => match std::path::absolute(&o.out) {
            Ok(p) => p.join("grafana").join("dashboards").display().to_string(),
            Err(e) => {
                return Err(Fail::could_not_run(format!(
                    "failed to resolve {}: {e}",
                    o.out.display()
                )));
            }
        },
    };
    let opts = RenderOptions {
        env: o.env.clone(),
        dashboards_path,
    };
    let today = o.now.unwrap_or_else(super::today);
    let result = render::render_repo(&files, &opts, today).and_then(|(r, rep)| {
        Ok((
            render::write_atomically(&o.out, &r, commit.as_deref())?,
            r,
            rep,
        ))
    });
    match result {
        Ok((w, r, rep)) => {
            let warnings = rep.count(opsrepo::Severity::Warning);
            match o.format {
                Format::Json => {
                    let v = serde_json::json!({
                        "env": o.env,
                        "rev": rev,
                        "commit": commit,
                        "out": w.out,
                        "files": w.files,
                        "bytes": w.bytes,
                        "replaced": w.replaced,
                        "counts": r.counts,
                        "warnings": rep.findings.iter().filter(|f| f.severity != opsrepo::Severity::Error).collect::<Vec<_>>(),
                    });
                    output::print(&(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"));
                }
                _ => {
                    let c = &r.counts;
                    let short = commit.as_deref().map_or("", |c| &c[..c.len().min(12)]);
                    output::print(&format!(
                        "rendered {} ({rev} at {short}) into {}: {} rule files ({} alerts, {} recording rules), \
                         {} scrape targets in {} jobs, {} datasources, {} dashboards ({} files, {} bytes){}\n",
                        o.env,
                        w.out.display(),
                        c.rule_files,
                        c.alerts,
                        c.recording_rules,
                        c.scrape_targets,
                        c.scrape_jobs,
                        c.datasources,
                        c.dashboards,
                        w.files,
                        w.bytes,
                        if warnings > 0 {
                            format!(
                                "; {warnings} warning(s), run `vakt validate --env {}`",
                                o.env
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            Ok(exit::OK)
        }
        Err(RenderError::Invalid { env, report }) => {
            let format = match o.format {
                Format::Json => report::Format::Json,
                _ => report::Format::Human,
            };
            output::print(&report::render(&report, format, output::color_stdout()));
            Err(RenderError::Invalid { env, report }.into())
        }
        Err(e) => Err(e.into()),
    }
}
