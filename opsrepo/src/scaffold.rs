//! `vakt init`: the files of a new, minimal ops repo that validates clean, with the CI
//! workflows of a team's ops repo (which install a pinned vakt instead of building it).

use crate::rules::BUILTIN_SIGNALS;

/// The vakt release the generated workflows install: the version of the binary running `init`.
pub const VAKT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the generated workflows install vakt from (`cargo install --git … --tag v<version>`).
pub const VAKT_GIT: &str = "https://github.com/vakt-ops/vakt";

/// The generated `.github/` files, as `(path, content)`: pull-request validation with the plan
/// comment, the scheduled drift job, and the comment splitter both use.
pub fn workflow_files() -> Vec<(String, String)> {
    let fill = |t: &str| {
        t.replace("@VAKT_VERSION@", VAKT_VERSION)
            .replace("@VAKT_GIT@", VAKT_GIT)
    };
    vec![
        (
            ".github/workflows/vakt-validate.yml".into(),
            fill(include_str!("scaffold/validate.yml")),
        ),
        (
            ".github/workflows/vakt-drift.yml".into(),
            fill(include_str!("scaffold/drift.yml")),
        ),
        (
            ".github/vakt/split_comment.py".into(),
            include_str!("scaffold/split_comment.py").into(),
        ),
    ]
}

/// The files of a new ops repo, as `(path, content)`. `today` is `YYYY-MM-DD`.
pub fn files(today: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        ("vakt.toml".into(), MANIFEST.into()),
        ("config/global/platform.toml".into(), PLATFORM.into()),
        ("config/tenants/example/tenant.toml".into(), TENANT.into()),
        ("inventory/sites/dc1.toml".into(), SITE.into()),
        ("inventory/placement/example.toml".into(), PLACEMENT.into()),
        ("access/roles/operator.toml".into(), ROLE.into()),
        ("runbooks/ops.vakt.control-plane.md".into(), RUNBOOK.into()),
        (".gitignore".into(), "/target\n".into()),
    ];
    for (kind, short, port) in [
        ("gateway", "gw", 9101),
        ("aggregate", "agg", 9102),
        ("projection", "proj", 9103),
        ("runner", "run", 9104),
    ] {
        out.push((
            format!("inventory/nodes/{short}-dc1-01.toml"),
            format!(
                "id = \"{short}-dc1-01\"\nsite = \"dc1\"\nservice_kind = \"{kind}\"\n\
                 admin_url = \"http://127.0.0.1:{port}\"\nversion = \"1.0.0\"\n\n\
                 [labels]\nzone = \"a\"\n\n[capacity]\ncpu_cores = 4\nmemory_gb = 8\nmax_tenants = 50\nmax_inflight = 256\n"
            ),
        ));
        out.push((
            format!("inventory/shards/{short}-dc1-a.toml"),
            format!(
                "id = \"{short}-dc1-a\"\nservice_kind = \"{kind}\"\nsite = \"dc1\"\nnodes = [\"{short}-dc1-01\"]\nmax_tenants = 50\n"
            ),
        ));
    }
    out.extend(workflow_files());
    let signals: Vec<String> = BUILTIN_SIGNALS.iter().map(|s| format!("\"{s}\"")).collect();
    out.push((
        "runbooks/runbooks.catalog.json".into(),
        format!(
            r#"{{
  "version": 1,
  "runbooks": [
    {{
      "id": "ops.vakt.control-plane",
      "title": "vakt control plane needs attention",
      "severity_hint": "sev2",
      "owner_team": "platform-sre",
      "last_reviewed_at": "{today}",
      "url": "runbooks/ops.vakt.control-plane.md",
      "signals": [{}],
      "signal_group": "vakt",
      "remediation_mode": "manual",
      "escalation_class": "action-required"
    }}
  ]
}}
"#,
            signals.join(", ")
        ),
    ));
    out.sort();
    out
}

const MANIFEST: &str = r#"# The ops repo manifest. See `vakt schemas --list` for every document kind.
version = 1

[project]
name = "example-platform"
resource_prefix = "example:platform"
site_url = "http://127.0.0.1:8080"
owner_team = "platform-sre"

[environments.dev]
branch = "env/dev"
order = 1
nats_url = "nats://127.0.0.1:4222"
sites = ["dc1"]

[environments.dev.policy]
self_heal = true
prune = true
max_deletions = 100
require_approval = []

[review]
window_days = 90
warn_days = 14
"#;

const PLATFORM: &str = r#"schema_version = 1

[gateway]
placement_source = "nats-kv"
placement_bucket = "vakt_dev_placement"
hot_reload = true
tenant_header = "x-tenant-id"
upstream_timeout = "10s"

[gateway.default_rate_limit]
requests_per_second = 100
burst = 200

[services.gateway]
max_concurrency = 1024
per_tenant_concurrency = 128
max_queue_depth = 4096

[services.aggregate]
max_concurrency = 256
per_tenant_concurrency = 32
max_queue_depth = 1024

[services.projection]
max_concurrency = 128
per_tenant_concurrency = 16
max_queue_depth = 1024

[services.runner]
max_concurrency = 64
per_tenant_concurrency = 8
max_queue_depth = 512

[drain]
max_inflight_to_start = 50
max_consumer_lag = 1000
drain_timeout = "5m"
poll_interval = "2s"
max_attempts = 3
"#;

const TENANT: &str = r#"id = "example"
name = "Example tenant"
status = "active"
tier = "standard"
region = "local"
home_site = "dc1"
owner_team = "platform-sre"
contact = "ops@example-tenant.example"
projects = ["main"]

[quotas]
requests_per_second = 50
max_inflight_commands = 20
max_projections = 5
max_sagas = 5
storage_gb = 10
event_retention_days = 30

[flags]

[kill_switches]
all_commands = false
all_effects = false
"#;

const SITE: &str = r#"id = "dc1"
name = "Datacenter 1"
region = "local"
location = "Local"
role = "primary"
"#;

const PLACEMENT: &str = r#"tenant = "example"

[shards]
gateway = "gw-dc1-a"
aggregate = "agg-dc1-a"
projection = "proj-dc1-a"
runner = "run-dc1-a"
"#;

const ROLE: &str = r#"id = "operator"
description = "On-call operator: view everything, retry and cancel jobs, drain tenants."
permissions = ["ops.*", "scale.view", "scale.drain", "observability.dashboards.view", "audit.view"]
requires_step_up = false
"#;

const RUNBOOK: &str = r#"# vakt control plane needs attention

One runbook for every signal vakt raises about itself, until the team writes one per signal.

## Trigger

Any of vakt's own signals: drift detected, apply failed, an invalid commit or a rewound branch,
an approval waiting, a dead-lettered job, an unhealthy node, a degraded site link, a stale backup.

## Severity and escalation

Action required during working hours; urgent if the platform cannot apply changes for more than
an hour.

## Remediation mode

Manual. vakt self-heals drift where the environment policy allows it; everything else waits for
an operator.

## Allowed actions

- `vakt status` and `vakt drift --env dev` to see what is wrong.
- `vakt plan --env dev` before any `vakt apply --env dev`.
- `vakt jobs retry JOB_ID --env dev --reason "…"` for a dead-lettered job once its cause is fixed.

## Evidence to review first

- `vakt validate` on the failing commit.
- `vakt events --correlation-id ID` for the failing change.

## Recording the outcome

Every action above is written to the audit stream with your reason. Note the plan id, job id and
correlation id in the incident record.
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn workflows_pin_vakt_and_every_action() {
        for (path, text) in super::workflow_files() {
            assert!(!text.contains("@VAKT_"), "{path}");
            if !path.ends_with(".yml") {
                continue;
            }
            assert!(text.contains(&format!("VAKT_VERSION: \"{}\"", super::VAKT_VERSION)));
            assert!(!text.contains("cargo build"), "{path} builds vakt");
            for line in text.lines().filter(|l| l.contains("uses: ")) {
                let r = line.split("uses: ").nth(1).unwrap();
                let sha = r
                    .split('@')
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                assert!(
                    sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                    "{path}: {line}"
                );
            }
        }
    }

    #[test]
    fn scaffold_has_every_builtin_signal() {
        let files = super::files("2026-01-01");
        let catalog = &files
            .iter()
            .find(|(p, _)| p.ends_with("catalog.json"))
            .unwrap()
            .1;
        for s in crate::rules::BUILTIN_SIGNALS {
            assert!(catalog.contains(s));
        }
    }
}
