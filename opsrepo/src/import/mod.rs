//! `vakt import`: bring an existing estate into an ops repo. Prometheus / vmalert rule files and
//! Kubernetes `PrometheusRule` CRs become `alerts/` files, a markdown runbook tree becomes
//! runbooks with catalog entries, Grafana exports become `dashboards/` normalised to the repo's
//! datasources.
//!
//! Every import is planned first ([`Plan`]: the files it would write and an [`ImportReport`]),
//! then the plan is validated in-process exactly as `vakt validate` would see the repo after the
//! write (`ImportReport::findings_after`), then written ([`write_plan`]) one file at a time with
//! temp + rename. Bad input never stops the import: it becomes a [`Problem`] line naming the
//! file and what to do.

pub mod dashboards;
pub mod mapping;
pub mod rules;
pub mod runbooks;
mod walk;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diag::{Finding, Severity};
use crate::source::{RawFile, RepoFiles};
use crate::validate::{ValidateOptions, validate};

pub use mapping::Mapping;

/// Most files one import reads.
pub const MAX_FILES: usize = 5_000;
/// Largest input file read (rule files, dashboards).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest runbook page read.
pub const MAX_PAGE_BYTES: u64 = 1024 * 1024;
/// Deepest folder nesting walked.
pub const MAX_WALK_DEPTH: usize = 32;

/// Why an import could not run at all (bad input files are [`Problem`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("the mapping file {path}: {message}")]
    Mapping { path: PathBuf, message: String },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One input the import could not use, or used only in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The input file (or folder).
    pub file: String,
    /// 1-based line when known, else 0.
    pub line: u32,
    pub message: String,
    /// What to do about it.
    pub help: String,
}

impl Problem {
    pub fn new(
        file: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Problem {
            file: file.into(),
            line: 0,
            message: message.into(),
            help: help.into(),
        }
    }

    pub fn from_finding(file: &str, f: &Finding) -> Self {
        Problem {
            file: file.to_owned(),
            line: f.line,
            message: f.message.clone(),
            help: if f.help.is_empty() {
                "fix the file and import it again".to_owned()
            } else {
                f.help.clone()
            },
        }
    }
}

/// A value the import chose because the input did not say: worth a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaulted {
    /// What it applies to (alert name, runbook id, dashboard uid).
    pub subject: String,
    pub field: String,
    pub value: String,
    /// Where the value came from and how to change it.
    pub why: String,
}

/// One alerting rule and its runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertLine {
    pub alert: String,
    pub group: String,
    /// The file written under `alerts/`.
    pub file: String,
    pub runbook_id: Option<String>,
    /// Why it has no runbook id (`runbook_id` is `None`).
    pub reason: Option<String>,
}

/// A `runbook_url` that points at no imported page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLink {
    pub url: String,
    pub alerts: Vec<String>,
}

/// One imported runbook page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunbookLine {
    pub source: String,
    pub id: String,
    pub path: String,
    /// Source headings and the section each landed in.
    pub sections: Vec<(String, String)>,
}

/// One imported dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DashboardLine {
    pub source: String,
    pub uid: String,
    pub path: String,
    /// Datasource references rewritten: `from` -> repo datasource uid.
    pub datasources: Vec<(String, String)>,
}

/// What happens to one planned file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Overwrite,
    Unchanged,
    /// A merged file (the runbook catalog) gains entries or signals; no `--force` needed.
    Update,
    /// Exists with other content and `--force` was not given: left alone.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileLine {
    pub path: String,
    pub action: Action,
}

/// The import report: human and JSON output of `vakt import`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub files: Vec<FileLine>,
    pub alerts: Vec<AlertLine>,
    pub dead_links: Vec<DeadLink>,
    /// Catalog runbook ids no alert of the repo (after the import) points at.
    pub unreferenced_runbooks: Vec<String>,
    pub runbooks: Vec<RunbookLine>,
    pub dashboards: Vec<DashboardLine>,
    pub defaulted: Vec<Defaulted>,
    pub problems: Vec<Problem>,
    /// What `vakt validate` reports on the repo once the files are written.
    pub findings_after: Vec<Finding>,
}

impl ImportReport {
    /// Errors `vakt validate` will report after the import.
    pub fn errors_after(&self) -> usize {
        self.findings_after
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
}

/// The files an import would write, with its report.
#[derive(Debug, Default)]
pub struct Plan {
    /// Repository-relative path -> full new content.
    pub files: BTreeMap<String, String>,
    /// Planned files that merge into an existing file (only adding to it).
    pub merged: std::collections::BTreeSet<String>,
    pub report: ImportReport,
}

/// Options common to every import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub repo: PathBuf,
    pub mapping: Mapping,
    pub force: bool,
    pub dry_run: bool,
    pub today: time::Date,
}

/// Decides each planned file's action, validates the repo as it will be after the write and
/// fills `files` and `findings_after` in the report.
pub fn finish(plan: &mut Plan, current: &RepoFiles, opts: &ImportOptions) {
    let mut after: BTreeMap<String, RawFile> = current
        .files
        .iter()
        .map(|f| (f.path.clone(), f.clone()))
        .collect();
    plan.report.files.clear();
    for (path, text) in &plan.files {
        let on_disk = std::fs::read(opts.repo.join(path)).ok();
        let action = match on_disk {
            None => Action::Create,
            Some(b) if b == text.as_bytes() => Action::Unchanged,
            Some(_) if plan.merged.contains(path) => Action::Update,
            Some(_) if opts.force => Action::Overwrite,
            Some(_) => Action::Conflict,
        };
        if action == Action::Conflict {
            plan.report.problems.push(Problem::new(
                path.clone(),
                "exists with other content; left as it is",
                "review the difference, then run the import again with --force to replace it",
            ));
        } else {
            after.insert(
                path.clone(),
                RawFile {
                    path: path.clone(),
                    content: Ok(text.clone().into_bytes()),
                },
            );
        }
        plan.report.files.push(FileLine {
            path: path.clone(),
            action,
        });
    }
    let files = RepoFiles {
        origin: current.origin.clone(),
        files: after.into_values().collect(),
    };
    let report = validate(
        &files,
        &ValidateOptions {
            env: None,
            today: opts.today,
        },
    );
    plan.report.findings_after = report.findings;
    plan.report.dry_run = opts.dry_run;
    plan.report
        .problems
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    plan.report.problems.dedup();
}

/// Writes the planned files that are created or overwritten, each to a temporary file beside
/// it and renamed into place, so a failure never leaves a half-written file.
pub fn write_plan(plan: &Plan, repo: &Path) -> Result<usize, ImportError> {
    let mut n = 0;
    for line in &plan.report.files {
        if !matches!(
            line.action,
            Action::Create | Action::Overwrite | Action::Update
        ) {
            continue;
        }
        let Some(text) = plan.files.get(&line.path) else {
            continue;
        };
        let dest = repo.join(&line.path);
        let dir = dest.parent().unwrap_or(repo);
        std::fs::create_dir_all(dir).map_err(|source| ImportError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let name = dest
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.vakt-import-{}", std::process::id()));
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &dest));
        if let Err(source) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImportError::Write { path: dest, source });
        }
        n += 1;
    }
    Ok(n)
}

/// A lowercase id segment: `[a-z0-9][a-z0-9_-]*`.
pub(crate) fn id_segment(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(|c| c == '-' || c == '_').to_owned()
}

/// A signal key from a CamelCase name: `KubeAPIDown` -> `kube_api_down`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_keys_from_names() {
        assert_eq!(snake_case("KubePodCrashLooping"), "kube_pod_crash_looping");
        assert_eq!(snake_case("KubeAPIDown"), "kube_api_down");
        assert_eq!(
            snake_case("NodeFilesystemAlmostOutOfSpace"),
            "node_filesystem_almost_out_of_space"
        );
        assert_eq!(snake_case("etcd-members-down"), "etcd_members_down");
        assert_eq!(snake_case("Watchdog"), "watchdog");
    }

    #[test]
    fn id_segments() {
        assert_eq!(id_segment("KubePodCrashLooping"), "kubepodcrashlooping");
        assert_eq!(id_segment("node exporter"), "node-exporter");
        assert_eq!(id_segment("_index"), "index");
    }
}
