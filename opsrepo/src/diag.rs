//! Findings: what validation reports, with a stable rule id, a severity and a source span.

use serde::Serialize;

/// How bad a finding is. `Error` fails `vakt validate` (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// A position in a file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// One finding about one place in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    /// Stable rule id, e.g. `alert.runbook-missing`; see `vakt validate --list-rules`.
    pub rule: &'static str,
    pub severity: Severity,
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    pub line: u32,
    pub col: u32,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: String,
}

impl Finding {
    pub fn new(
        rule: &'static str,
        path: impl Into<String>,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        let severity = RULES
            .iter()
            .find(|r| r.id == rule)
            .map_or(Severity::Error, |r| r.severity);
        Finding {
            rule,
            severity,
            path: path.into(),
            line: pos.line.max(1),
            col: pos.col.max(1),
            message: message.into(),
            help: String::new(),
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Sort key: path, then position, then rule.
    pub fn sort_key(&self) -> (&str, u32, u32, &str) {
        (&self.path, self.line, self.col, self.rule)
    }
}

/// A rule's documentation entry (`vakt validate --list-rules`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    /// The command that checks it: `validate` for all but a few rules that need more than the
    /// documents of one commit (e.g. `promotion.order` needs the env branches' history, so
    /// `vakt promote --check` checks it). `--list-rules` lists those apart, never as validate's.
    pub command: &'static str,
}

impl RuleInfo {
    /// Whether `vakt validate` can report this rule.
    pub fn is_validate(&self) -> bool {
        self.command == VALIDATE
    }
}

/// [`RuleInfo::command`] of the rules `vakt validate` checks.
pub const VALIDATE: &str = "validate";

macro_rules! rules {
    ($( $id:literal, $sev:ident, $summary:literal $(, by $cmd:literal)? ; )*) => {
        /// Every rule vakt checks, with its default severity and the command that checks it.
        pub const RULES: &[RuleInfo] = &[ $( RuleInfo {
            id: $id,
            severity: Severity::$sev,
            summary: $summary,
            command: rules!(@cmd $($cmd)?),
        }, )* ];
    };
    (@cmd) => { VALIDATE };
    (@cmd $cmd:literal) => { $cmd };
}

rules! {
    "input.syntax", Error, "the file is not valid TOML, YAML or JSON";
    "input.encoding", Error, "the file is not UTF-8";
    "input.too-large", Error, "the document is larger than 8 MiB or expands to too many values";
    "input.too-deep", Error, "the document nests deeper than 64 levels";
    "input.bad-path", Error, "a path segment is `..`, empty, or holds control characters";
    "input.symlink-escape", Error, "a symlink points outside the repository";
    "input.unreadable", Error, "the file could not be read";
    "input.unknown-file", Warning, "a file in the layout matches no document kind";
    "schema.invalid", Error, "the document does not match the schema of its kind";
    "overlay.no-base", Error, "an environment overlay has no base document and the policy forbids it";
    "overlay.unknown-env", Error, "an overlay directory names an environment vakt.toml does not declare";
    "overlay.forbidden", Error, "this kind cannot be overlaid per environment";
    "id.duplicate", Error, "two documents declare the same id";
    "manifest.environments", Error, "environments: promotion order, branches or sites are inconsistent";
    "ref.inventory", Error, "an inventory reference (site, node, shard) does not resolve or does not match";
    "ref.placement", Error, "a placement names an unknown tenant or a shard of another service kind";
    "placement.incomplete", Error, "a tenant lacks a placement for a service kind";
    "ref.definition", Error, "a definition reference (aggregate, event, command, effect, version) does not resolve";
    "ref.access", Error, "a binding names an unknown role, tenant or environment, or a permission an unknown domain";
    "ref.runbook", Error, "a reference to a runbook id does not resolve";
    "ref.datasource", Error, "a dashboard or saved query names an undeclared datasource";
    "ref.query", Error, "a saved query id does not resolve";
    "ref.dashboard", Error, "a dashboard uid does not resolve";
    "alert.runbook-missing", Error, "an actionable alert has no `runbook_id` annotation";
    "alert.runbook-url", Error, "an alert has a hand-written `runbook_url` (vakt generates it)";
    "alert.labels", Error, "an alert lacks a valid `severity`, `escalation` or `signal` label";
    "alert.signal-mismatch", Warning, "an alert's runbook does not list the alert's signal";
    "alert.promql", Error, "an alert or recording rule expression is not valid PromQL";
    "signal.unmapped", Error, "a signal key used by an alert, a health check or vakt itself maps to no runbook";
    "runbook.markdown-missing", Error, "a catalog entry has no markdown file";
    "runbook.catalog-missing", Error, "a runbook markdown file has no catalog entry";
    "runbook.section-missing", Error, "a runbook lacks a required section";
    "runbook.review-due", Warning, "a runbook's review window closes soon";
    "runbook.review-expired", Error, "a runbook has not been reviewed within the review window";
    "runbook.active-content", Error, "runbook markdown carries raw HTML, scripts or script links";
    "runbook.trigger-mismatch", Error, "a runbook's Trigger section quotes a metric, number or duration its alert rule does not use";
    "runbook.command", Error, "a `vakt …` command in a runbook does not parse against the CLI (unknown flag, missing required option)";
    "query.template", Error, "a saved query uses an undeclared variable or does not parse";
    "query.unused", Warning, "a saved query is used by no runbook and no dashboard";
    "dashboard.query", Error, "a dashboard panel query is not valid PromQL or LogQL";
    "dashboard.label-value", Error, "a dashboard query matches a label of vakt's own metrics on a value vakt never emits";
    "dashboard.saved-query", Error, "a panel's saved query reference does not match the saved query (datasource, variables, expression)";
    "secret.value", Error, "a secret value appears in the repository";
    "render.runbook-url", Error, "an alert's runbook_url cannot be built: project.site_url is not an absolute http(s) URL";
    "render.metrics-url", Error, "a node has no usable metrics endpoint for the scrape configuration";
    "render.rule", Error, "a rule Prometheus would reject once rendered (label names, recording rule fields, a hand-set `env` label)";
    "render.collision", Error, "two alert rule files render to the same rules/<name>.yaml";
    "render.datasource-url", Warning, "a datasource has no (valid) `url` for Grafana provisioning";
    // Metric provenance and the two-datacenter topology (rules/provenance.rs, rules/topology.rs).
    "metric.provenance", Error, "a metric an alert, recording rule, dashboard or saved query uses is recorded by no rule, exported by no service and declared by no external exporter";
    "topology.capacity", Warning, "a site's shards cannot take its own tenants plus the other sites' tenants (tenant slots or in-flight commands)";
    "topology.stateful-replicas", Warning, "a shard of a stateful service has fewer than two nodes";
    "topology.quorum", Warning, "a quorum system (NATS, Vault) loses its majority when one site is lost";
    // Tests, rule coverage and loader holes (tests/tests/validate.rs ties this list to the
    // fixtures under tests/fixtures/validate/).
    "inventory.node-tls", Error, "a node with `tls = \"required\"` has a plain `http://` admin URL";
    "promotion.order", Error, "a commit would reach an environment before the one it is promoted from", by "promote --check";
}

/// Milliseconds since `t`, for the phase timings logged at debug level.
pub(crate) fn ms(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The process's resident memory in MiB (Linux; 0 elsewhere), for the phase logs: on a
/// virtual machine the first touch of a page costs more than most of the work on it.
pub(crate) fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096 / (1024 * 1024))
}
