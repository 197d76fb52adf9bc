//! The platform's own metrics, as one node of it would export them on `GET /metrics`, and the
//! fault switches that push chosen series past the thresholds of the bundled alerts.
//!
//! Every family is named and labelled as `alerts/*.yaml` and `dashboards/` query it. The node
//! double also plays, for its own host only, the exporters that run beside a real service:
//! node_exporter (`node_*`), the Swarm task exporter (`swarm_*`) and prometheus-nats-exporter
//! for the JetStream consumers the service owns (`jetstream_consumer_*`). Target labels (`env`,
//! `site`, `service`, `node`, `shard`, `instance`) are not exported: the scrape configuration
//! attaches them, as it does for the real services.
//!
//! Traffic is simulated at a steady 20 requests per second per node (plus the admin calls the
//! double really serves), so counters climb, rates are non-zero and ratios have enough traffic
//! to pass the alerts' minimum-traffic guards. The simulation is deterministic: the same node
//! id gives the same numbers, and baseline error and latency patterns never cross a threshold.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type L = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

fn l(pairs: &[(&str, &str)]) -> L {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The service kinds of the platform (inventory `service_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Aggregate,
    Projection,
    Runner,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Gateway,
        Kind::Aggregate,
        Kind::Projection,
        Kind::Runner,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Aggregate => "aggregate",
            Kind::Projection => "projection",
            Kind::Runner => "runner",
        }
    }
}

/// A fault switch: `--fault NAME` at start, `POST|DELETE /faults/NAME` at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Error500,
    Hang,
    LieDrained,
    Down,
    HighErrorRate,
    SlowApi,
    SlowDb,
    LoginAnomalies,
    CommandPileup,
    ConsumerLag,
    Redeliveries,
    ProjectionLag,
    OutboxBacklog,
    RelayDown,
    DispatchFailures,
    PoisonMessages,
    SlowDisk,
    DiskFull,
    RestartLoop,
    OomKills,
}

/// One row of the fault table: what it does, which series it moves, which alerts it fires.
pub struct FaultInfo {
    pub fault: Fault,
    pub name: &'static str,
    /// Service kinds it applies to; empty: every kind.
    pub kinds: &'static [Kind],
    pub effect: &'static str,
    pub metrics: &'static [&'static str],
    /// Bundled alerts (`alerts/*.yaml`) whose expression returns series while it is on.
    pub alerts: &'static [&'static str],
}

use Kind::{Aggregate, Gateway, Projection, Runner};

/// The fault table: the one place that says fault -> metric -> alert (`GET /faults` serves it,
/// README.md repeats it, `tests/tests/metrics.rs` checks every row against VictoriaMetrics).
pub const FAULTS: &[FaultInfo] = &[
    FaultInfo {
        fault: Fault::Error500,
        name: "error-500",
        kinds: &[],
        effect: "every admin call answers 500",
        metrics: &[],
        alerts: &[],
    },
    FaultInfo {
        fault: Fault::Hang,
        name: "hang",
        kinds: &[],
        effect: "admin calls and /metrics never answer",
        metrics: &[],
        alerts: &[],
    },
    FaultInfo {
        fault: Fault::LieDrained,
        name: "lie-drained",
        kinds: &[],
        effect: "a draining tenant is reported drained while work is inflight",
        metrics: &[],
        alerts: &[],
    },
    FaultInfo {
        fault: Fault::Down,
        name: "down",
        kinds: &[],
        effect: "/healthz, admin calls and /metrics answer 503, so the scrape fails",
        metrics: &["up"],
        alerts: &["ServiceInstanceDown"],
    },
    FaultInfo {
        fault: Fault::HighErrorRate,
        name: "high-error-rate",
        kinds: &[],
        effect: "40% of requests fail with 500 or 503",
        metrics: &[
            "http_server_requests_total",
            "gateway_tenant_requests_total",
        ],
        alerts: &["ApiErrorRateHigh"],
    },
    FaultInfo {
        fault: Fault::SlowApi,
        name: "slow-api",
        kinds: &[],
        effect: "requests take 1-2.5 s",
        metrics: &[
            "http_server_request_duration_seconds",
            "gateway_tenant_request_duration_seconds",
        ],
        alerts: &["ApiLatencyP95High"],
    },
    FaultInfo {
        fault: Fault::SlowDb,
        name: "slow-db",
        kinds: &[Gateway],
        effect: "Postgres metadata queries take 0.4-1 s",
        metrics: &[
            "pg_stat_statements_seconds_total",
            "pg_stat_statements_calls_total",
        ],
        alerts: &["PostgresQueryLatencyHigh"],
    },
    FaultInfo {
        fault: Fault::LoginAnomalies,
        name: "login-anomalies",
        kinds: &[Gateway],
        effect: "two impossible-travel logins per second",
        metrics: &["gateway_login_anomalies_total"],
        alerts: &["LoginAnomalyDetected"],
    },
    FaultInfo {
        fault: Fault::CommandPileup,
        name: "command-pileup",
        kinds: &[Aggregate],
        effect: "every served tenant holds 250+ commands in flight",
        metrics: &["aggregate_in_flight_commands"],
        alerts: &["TenantInFlightCommandsHigh"],
    },
    FaultInfo {
        fault: Fault::ConsumerLag,
        name: "consumer-lag",
        kinds: &[Projection, Runner],
        effect: "the service's JetStream consumers fall 12000+ messages behind, growing 50/s",
        metrics: &["jetstream_consumer_num_pending"],
        alerts: &["JetStreamConsumerLagHigh", "JetStreamConsumerLagGrowing"],
    },
    FaultInfo {
        fault: Fault::Redeliveries,
        name: "redeliveries",
        kinds: &[Projection, Runner],
        effect: "1500 messages stay unacknowledged and 100/s are redelivered",
        metrics: &[
            "jetstream_consumer_num_ack_pending",
            "jetstream_consumer_num_redelivered",
        ],
        alerts: &[
            "JetStreamConsumerAckPendingHigh",
            "JetStreamRedeliveriesHigh",
        ],
    },
    FaultInfo {
        fault: Fault::ProjectionLag,
        name: "projection-lag",
        kinds: &[Projection],
        effect: "every view falls 8000+ events behind its source",
        metrics: &["projection_checkpoint_lag"],
        alerts: &["ProjectionCheckpointLagHigh"],
    },
    FaultInfo {
        fault: Fault::OutboxBacklog,
        name: "outbox-backlog",
        kinds: &[Runner],
        effect: "every served tenant's outbox holds 1500+ effects; 800 schedules are overdue",
        metrics: &["runner_outbox_depth", "runner_schedules_backlog"],
        alerts: &["RunnerOutboxDepthHigh", "RunnerSchedulesBacklogHigh"],
    },
    FaultInfo {
        fault: Fault::RelayDown,
        name: "relay-down",
        kinds: &[Runner],
        effect: "the outbox relay reports itself down",
        metrics: &["runner_outbox_relay_up"],
        alerts: &["OutboxRelayDegraded"],
    },
    FaultInfo {
        fault: Fault::DispatchFailures,
        name: "dispatch-failures",
        kinds: &[Runner],
        effect: "every provider fails 10 dispatches/s, 4/s are dead-lettered, the DLQ grows",
        metrics: &[
            "runner_outbox_dispatch_failures_total",
            "runner_deadletter_writes_total",
            "runner_dlq_pending",
        ],
        alerts: &[
            "RunnerDispatchFailuresHigh",
            "RunnerDeadLetterWritesSpike",
            "DlqBacklogPresent",
        ],
    },
    FaultInfo {
        fault: Fault::PoisonMessages,
        name: "poison-messages",
        kinds: &[Runner],
        effect: "one undecodable message per second is quarantined",
        metrics: &["runner_poison_messages_total"],
        alerts: &["RunnerPoisonMessages"],
    },
    FaultInfo {
        fault: Fault::SlowDisk,
        name: "slow-disk",
        kinds: &[Aggregate, Projection],
        effect: "libmdbx fsyncs take 80-200 ms and writers stall 2 s/s (summed over writers)",
        metrics: &[
            "mdbx_fsync_duration_seconds",
            "mdbx_write_stall_seconds_total",
            "node_disk_io_time_seconds_total",
        ],
        alerts: &["MdbxFsyncLatencyHigh", "MdbxWriteStalls"],
    },
    FaultInfo {
        fault: Fault::DiskFull,
        name: "disk-full",
        kinds: &[],
        effect: "/var/lib/mdbx and /var/lib/dataverket drop to 4% free and keep filling",
        metrics: &["node_filesystem_avail_bytes"],
        alerts: &["MdbxDiskNearlyFull", "MdbxDiskFillingUp"],
    },
    FaultInfo {
        fault: Fault::RestartLoop,
        name: "restart-loop",
        kinds: &[],
        effect: "the service's Swarm task restarts every second and is not running",
        metrics: &["swarm_task_restarts_total", "swarm_tasks_running"],
        alerts: &["ServiceRestartLoop", "ServiceTasksNotConverging"],
    },
    FaultInfo {
        fault: Fault::OomKills,
        name: "oom-kills",
        kinds: &[],
        effect: "the kernel OOM-kills a process every second",
        metrics: &["node_vmstat_oom_kill"],
        alerts: &["NodeOomKills"],
    },
];

impl Fault {
    pub fn info(self) -> &'static FaultInfo {
        FAULTS
            .iter()
            .find(|f| f.fault == self)
            .expect("every fault has a row")
    }

    pub fn parse(name: &str) -> Option<Fault> {
        FAULTS.iter().find(|f| f.name == name).map(|f| f.fault)
    }

    /// Whether the fault means anything on a node of this kind.
    pub fn applies_to(self, kind: Kind) -> bool {
        let k = self.info().kinds;
        k.is_empty() || k.contains(&kind)
    }
}

/// The bundled definitions' names, used as label values (aggregate types, projection views,
/// effect providers of the Dataverket example).
const AGGREGATES: [&str; 4] = ["account", "invoice", "meter_reading", "shipment"];
const VIEWS: [&str; 4] = [
    "account_balance",
    "consumption_hourly",
    "receivables",
    "shipment_tracking",
];
const PROVIDERS: [&str; 4] = [
    "bank_payments",
    "email_notifications",
    "peppol_access_point",
    "sms_gateway",
];

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
const FSYNC_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn fsync() -> Histogram {
    Histogram::new(FSYNC_BUCKETS)
}

/// A small deterministic generator (xorshift64*), seeded from the node id.
struct Rng(u64);

impl Rng {
    fn seeded(s: &str) -> Rng {
        // FNV-1a; never zero.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// Mount points the node reports: (mountpoint, device, fstype, size in bytes, free fraction).
const MOUNTS: [(&str, &str, &str, f64, f64); 3] = [
    ("/", "vda1", "ext4", 64.0 * GIB, 0.71),
    ("/var/lib/mdbx", "nvme0n1", "xfs", 512.0 * GIB, 0.62),
    ("/var/lib/dataverket", "nvme1n1", "xfs", 256.0 * GIB, 0.55),
];
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

struct Http {
    requests: Family<L, Counter>,
    duration: Family<L, Histogram>,
    inflight: Gauge,
}

struct Host {
    fs_avail: Family<L, GaugeF>,
    fs_size: Family<L, GaugeF>,
    load1: GaugeF,
    cpu_pressure: CounterF,
    mem_pressure: CounterF,
    oom_kill: Gauge,
    io_time: Family<L, CounterF>,
    restarts: Counter,
    running: Gauge,
    desired: Gauge,
}

struct GatewayM {
    tenant_requests: Family<L, Counter>,
    tenant_duration: Family<L, Histogram>,
    login_failures: Family<L, Counter>,
    login_anomalies: Family<L, Counter>,
    revocations: Family<L, Counter>,
    mfa_failures: Family<L, Counter>,
    /// postgres_exporter's pg_stat_statements collector: calls and time spent, per database.
    pg_calls: Family<L, Counter>,
    pg_seconds: Family<L, Counter<f64, std::sync::atomic::AtomicU64>>,
}

struct AggregateM {
    command_duration: Family<L, Histogram>,
    command_errors: Family<L, Counter>,
    conflicts: Family<L, Counter>,
    in_flight: Family<L, Gauge>,
    /// The tenant's `quotas.max_inflight_commands` as the node enforces it.
    max_inflight: Family<L, Gauge>,
}

/// The in-flight command quota the double reports for every tenant it serves (a real
/// aggregate reports each tenant's `quotas.max_inflight_commands` from its config). With
/// `TenantInFlightCommandsHigh` at 80% of it, the baseline (up to 30) stays below and
/// `command-pileup` (250 more) goes above.
const INFLIGHT_QUOTA: i64 = 200;

struct ProjectionM {
    lag: Family<L, Gauge>,
    processed: Family<L, Counter>,
    duration: Family<L, Histogram>,
    errors: Family<L, Counter>,
}

struct RunnerM {
    outbox_depth: Family<L, Gauge>,
    dlq_pending: Family<L, Gauge>,
    schedules_backlog: Gauge,
    relay_up: Gauge,
    dispatch_failures: Family<L, Counter>,
    effect_duration: Family<L, Histogram>,
    effect_timeouts: Family<L, Counter>,
    deadletter_writes: Family<L, Counter>,
    poison: Counter,
}

struct Mdbx {
    db_size: Family<L, Gauge>,
    stall: Family<L, CounterF>,
    fsync: Family<L, Histogram>,
}

struct Consumers {
    pending: Family<L, Gauge>,
    ack_pending: Family<L, Gauge>,
    redelivered: Family<L, Gauge>,
    /// (stream, consumer) of each consumer the service owns.
    names: Vec<(String, String)>,
}

/// A tenant the node serves and the units of work it holds (from the admin contract).
pub struct Served {
    pub tenant: String,
    pub inflight: u64,
    pub active: bool,
}

/// One node's metrics: the registry and the simulation that moves it.
pub struct Platform {
    kind: Kind,
    registry: Registry,
    http: Http,
    host: Host,
    gateway: Option<GatewayM>,
    aggregate: Option<AggregateM>,
    projection: Option<ProjectionM>,
    runner: Option<RunnerM>,
    mdbx: Option<Mdbx>,
    consumers: Option<Consumers>,
    rng: Rng,
    /// Simulated requests so far: picks status codes in a fixed cycle.
    n: u64,
    /// Seconds of simulated time.
    t: f64,
    /// Free bytes per mount (index into MOUNTS).
    free: [f64; 3],
    /// Consumer lag and checkpoint lag carried between steps (they grow under a fault).
    lag: f64,
    /// Outbox depth and DLQ size carried between steps.
    outbox: f64,
    dlq: f64,
    /// Sub-unit remainders of the per-second fault counters.
    carry: f64,
    real_inflight: Arc<AtomicI64>,
}

impl Platform {
    pub fn new(kind: Kind, node_id: &str, version: &str) -> Platform {
        let mut r = Registry::default();
        let http = Http {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            inflight: Gauge::default(),
        };
        r.register(
            "http_server_requests",
            "HTTP requests served, by method, route and status",
            http.requests.clone(),
        );
        r.register(
            "http_server_request_duration_seconds",
            "HTTP request duration, by method, route and status",
            http.duration.clone(),
        );
        r.register(
            "http_server_inflight_requests",
            "HTTP requests being served",
            http.inflight.clone(),
        );
        let info = Family::<L, Gauge>::default();
        r.register(
            format!("{}_build_info", kind.as_str()),
            "Build of the running service (version, git_sha)",
            info.clone(),
        );
        info.get_or_create(&l(&[("version", version), ("git_sha", &git_sha(version))]))
            .set(1);

        let host = Host {
            fs_avail: Family::default(),
            fs_size: Family::default(),
            load1: GaugeF::default(),
            cpu_pressure: CounterF::default(),
            mem_pressure: CounterF::default(),
            oom_kill: Gauge::default(),
            io_time: Family::default(),
            restarts: Counter::default(),
            running: Gauge::default(),
            desired: Gauge::default(),
        };
        r.register(
            "node_filesystem_avail_bytes",
            "node_exporter: filesystem space available to non-root users",
            host.fs_avail.clone(),
        );
        r.register(
            "node_filesystem_size_bytes",
            "node_exporter: filesystem size",
            host.fs_size.clone(),
        );
        r.register(
            "node_load1",
            "node_exporter: 1m load average",
            host.load1.clone(),
        );
        r.register(
            "node_pressure_cpu_waiting_seconds",
            "node_exporter: total time processes waited for CPU (PSI)",
            host.cpu_pressure.clone(),
        );
        r.register(
            "node_pressure_memory_waiting_seconds",
            "node_exporter: total time processes waited for memory (PSI)",
            host.mem_pressure.clone(),
        );
        r.register(
            "node_vmstat_oom_kill",
            "node_exporter: /proc/vmstat oom_kill",
            host.oom_kill.clone(),
        );
        r.register(
            "node_disk_io_time_seconds",
            "node_exporter: total seconds spent doing I/Os",
            host.io_time.clone(),
        );
        r.register(
            "swarm_task_restarts",
            "Swarm task restarts of this node's service task",
            host.restarts.clone(),
        );
        r.register(
            "swarm_tasks_running",
            "Running Swarm tasks of the service on this node",
            host.running.clone(),
        );
        r.register(
            "swarm_tasks_desired",
            "Desired Swarm tasks of the service on this node",
            host.desired.clone(),
        );
        host.desired.set(1);
        host.running.set(1);
        for (mp, dev, fs, size, _) in MOUNTS {
            let labels = l(&[("mountpoint", mp), ("device", dev), ("fstype", fs)]);
            host.fs_size.get_or_create(&labels).set(size);
        }

        let gateway = (kind == Kind::Gateway).then(|| {
            let g = GatewayM {
                tenant_requests: Family::default(),
                tenant_duration: Family::new_with_constructor(latency),
                login_failures: Family::default(),
                login_anomalies: Family::default(),
                revocations: Family::default(),
                mfa_failures: Family::default(),
                pg_calls: Family::default(),
                pg_seconds: Family::default(),
            };
            r.register(
                "gateway_tenant_requests",
                "Gateway requests by tenant and status class (2xx, 4xx, 429, 5xx)",
                g.tenant_requests.clone(),
            );
            r.register(
                "gateway_tenant_request_duration_seconds",
                "Gateway request duration by tenant",
                g.tenant_duration.clone(),
            );
            r.register(
                "gateway_login_failures",
                "Failed logins by reason",
                g.login_failures.clone(),
            );
            r.register(
                "gateway_login_anomalies",
                "Logins flagged as anomalous, by kind",
                g.login_anomalies.clone(),
            );
            r.register(
                "gateway_session_revocations",
                "Revoked sessions by scope",
                g.revocations.clone(),
            );
            r.register(
                "gateway_mfa_failures",
                "Failed MFA verifications by method",
                g.mfa_failures.clone(),
            );
            r.register(
                "pg_stat_statements_calls",
                "postgres_exporter: number of times statements were executed, by database",
                g.pg_calls.clone(),
            );
            r.register(
                "pg_stat_statements_seconds",
                "postgres_exporter: total time spent in statements, by database",
                g.pg_seconds.clone(),
            );
            for reason in ["bad_password", "unknown_user", "locked"] {
                g.login_failures
                    .get_or_create(&l(&[("reason", reason)]))
                    .inc_by(0);
            }
            g.login_anomalies
                .get_or_create(&l(&[("kind", "impossible_travel")]))
                .inc_by(0);
            for scope in ["user", "tenant"] {
                g.revocations
                    .get_or_create(&l(&[("scope", scope)]))
                    .inc_by(0);
            }
            for m in ["totp", "webauthn"] {
                g.mfa_failures.get_or_create(&l(&[("method", m)])).inc_by(0);
            }
            g
        });

        let aggregate = (kind == Kind::Aggregate).then(|| {
            let a = AggregateM {
                command_duration: Family::new_with_constructor(latency),
                command_errors: Family::default(),
                conflicts: Family::default(),
                in_flight: Family::default(),
                max_inflight: Family::default(),
            };
            r.register(
                "aggregate_tenant_max_inflight_commands",
                "The tenant's in-flight command quota (quotas.max_inflight_commands), by tenant",
                a.max_inflight.clone(),
            );
            r.register(
                "aggregate_command_duration_seconds",
                "Command handling duration by aggregate type",
                a.command_duration.clone(),
            );
            r.register(
                "aggregate_command_errors",
                "Rejected or failed commands by aggregate type and tenant",
                a.command_errors.clone(),
            );
            r.register(
                "aggregate_version_conflicts",
                "Optimistic concurrency conflicts by aggregate type",
                a.conflicts.clone(),
            );
            r.register(
                "aggregate_in_flight_commands",
                "Commands being handled, by tenant",
                a.in_flight.clone(),
            );
            for ag in AGGREGATES {
                a.conflicts
                    .get_or_create(&l(&[("aggregate", ag)]))
                    .inc_by(0);
            }
            a
        });

        let projection = (kind == Kind::Projection).then(|| {
            let p = ProjectionM {
                lag: Family::default(),
                processed: Family::default(),
                duration: Family::new_with_constructor(latency),
                errors: Family::default(),
            };
            r.register(
                "projection_checkpoint_lag",
                "Events between the view's checkpoint and its source stream",
                p.lag.clone(),
            );
            r.register(
                "projection_events_processed",
                "Events applied to the view",
                p.processed.clone(),
            );
            r.register(
                "projection_processing_duration_seconds",
                "Duration of applying one event to the view",
                p.duration.clone(),
            );
            r.register(
                "projection_processing_errors",
                "Events the view failed to apply, by tenant",
                p.errors.clone(),
            );
            p
        });

        let runner = (kind == Kind::Runner).then(|| {
            let x = RunnerM {
                outbox_depth: Family::default(),
                dlq_pending: Family::default(),
                schedules_backlog: Gauge::default(),
                relay_up: Gauge::default(),
                dispatch_failures: Family::default(),
                effect_duration: Family::new_with_constructor(latency),
                effect_timeouts: Family::default(),
                deadletter_writes: Family::default(),
                poison: Counter::default(),
            };
            r.register(
                "runner_outbox_depth",
                "Undispatched effects in the tenant's outbox",
                x.outbox_depth.clone(),
            );
            r.register(
                "runner_dlq_pending",
                "Dead-lettered effects waiting for a decision, by tenant",
                x.dlq_pending.clone(),
            );
            r.register(
                "runner_schedules_backlog",
                "Due schedules not yet fired",
                x.schedules_backlog.clone(),
            );
            r.register(
                "runner_outbox_relay_up",
                "1 while the outbox relay publishes to JetStream",
                x.relay_up.clone(),
            );
            r.register(
                "runner_outbox_dispatch_failures",
                "Failed effect dispatches by provider",
                x.dispatch_failures.clone(),
            );
            r.register(
                "runner_effect_duration_seconds",
                "Effect dispatch duration by provider",
                x.effect_duration.clone(),
            );
            r.register(
                "runner_effect_timeouts",
                "Effect dispatches that timed out, by provider",
                x.effect_timeouts.clone(),
            );
            r.register(
                "runner_deadletter_writes",
                "Effects written to the dead-letter queue, by provider",
                x.deadletter_writes.clone(),
            );
            r.register(
                "runner_poison_messages",
                "Messages quarantined as undecodable or unprocessable",
                x.poison.clone(),
            );
            for p in PROVIDERS {
                x.dispatch_failures
                    .get_or_create(&l(&[("provider", p)]))
                    .inc_by(0);
                x.deadletter_writes
                    .get_or_create(&l(&[("provider", p)]))
                    .inc_by(0);
                x.effect_timeouts
                    .get_or_create(&l(&[("provider", p)]))
                    .inc_by(0);
            }
            x.relay_up.set(1);
            x
        });

        let mdbx = matches!(kind, Kind::Aggregate | Kind::Projection).then(|| {
            let m = Mdbx {
                db_size: Family::default(),
                stall: Family::default(),
                fsync: Family::new_with_constructor(fsync),
            };
            r.register(
                "mdbx_db_size_bytes",
                "libmdbx database size, by database",
                m.db_size.clone(),
            );
            r.register(
                "mdbx_write_stall_seconds",
                "Seconds writers waited for libmdbx, by database",
                m.stall.clone(),
            );
            r.register(
                "mdbx_fsync_duration_seconds",
                "libmdbx fsync duration, by database",
                m.fsync.clone(),
            );
            m
        });

        let consumers = matches!(kind, Kind::Projection | Kind::Runner).then(|| {
            let names: Vec<(String, String)> = match kind {
                Kind::Projection => VIEWS
                    .iter()
                    .map(|v| ("EVENTS".to_owned(), format!("projection-{v}")))
                    .collect(),
                _ => vec![
                    ("EFFECTS".to_owned(), "runner-dispatch".to_owned()),
                    ("SCHEDULES".to_owned(), "runner-scheduler".to_owned()),
                ],
            };
            let c = Consumers {
                pending: Family::default(),
                ack_pending: Family::default(),
                redelivered: Family::default(),
                names,
            };
            r.register(
                "jetstream_consumer_num_pending",
                "prometheus-nats-exporter: messages not yet delivered to the consumer",
                c.pending.clone(),
            );
            r.register(
                "jetstream_consumer_num_ack_pending",
                "prometheus-nats-exporter: delivered messages not yet acknowledged",
                c.ack_pending.clone(),
            );
            r.register(
                "jetstream_consumer_num_redelivered",
                "prometheus-nats-exporter: messages redelivered so far",
                c.redelivered.clone(),
            );
            c
        });

        let free = MOUNTS.map(|(_, _, _, size, frac)| size * frac);
        let mut p = Platform {
            kind,
            registry: r,
            http,
            host,
            gateway,
            aggregate,
            projection,
            runner,
            mdbx,
            consumers,
            rng: Rng::seeded(node_id),
            n: 0,
            t: 0.0,
            free,
            lag: 0.0,
            outbox: 0.0,
            dlq: 0.0,
            carry: 0.0,
            real_inflight: Arc::new(AtomicI64::new(0)),
        };
        p.step(0.0, &BTreeSet::new(), &[]);
        p
    }

    /// Counts one request the double really served.
    pub fn served(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = l(&[
            ("method", method),
            ("path", route),
            ("status", &status.to_string()),
        ]);
        self.http.requests.get_or_create(&labels).inc();
        self.http.duration.get_or_create(&labels).observe(seconds);
    }

    /// The count of admin calls being served right now, kept by the HTTP layer.
    pub fn real_inflight(&self) -> Arc<AtomicI64> {
        self.real_inflight.clone()
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// Advances the simulation by `dt` seconds under the given faults.
    pub fn step(&mut self, dt: f64, faults: &BTreeSet<Fault>, tenants: &[Served]) {
        let on = |f: Fault| faults.contains(&f);
        self.t += dt;
        let t = self.t;
        // Per-second fault events, whole numbers only (counters count events).
        self.carry += dt;
        let ticks = self.carry.floor();
        self.carry -= ticks;
        let per_s = |rate: f64| (rate * ticks) as u64;

        self.traffic(dt, on(Fault::HighErrorRate), on(Fault::SlowApi), tenants);
        self.host_step(dt, t, faults, per_s(1.0));

        if let Some(g) = &self.gateway {
            let slow = on(Fault::SlowDb);
            let queries = (dt * 8.0).round() as u64;
            for _ in 0..queries {
                let v = if slow {
                    self.rng.between(0.4, 1.0)
                } else {
                    self.rng.between(0.002, 0.04)
                };
                let db = l(&[("datname", "dataverket_meta")]);
                g.pg_calls.get_or_create(&db).inc();
                g.pg_seconds.get_or_create(&db).inc_by(v);
            }
            // A bad password now and then; a clean baseline otherwise.
            if self.rng.next() < dt * 0.2 {
                g.login_failures
                    .get_or_create(&l(&[("reason", "bad_password")]))
                    .inc();
            }
            if self.rng.next() < dt * 0.05 {
                g.revocations.get_or_create(&l(&[("scope", "user")])).inc();
            }
            if self.rng.next() < dt * 0.02 {
                g.mfa_failures
                    .get_or_create(&l(&[("method", "totp")]))
                    .inc();
            }
            if on(Fault::LoginAnomalies) {
                g.login_anomalies
                    .get_or_create(&l(&[("kind", "impossible_travel")]))
                    .inc_by(per_s(2.0));
            }
        }

        if let Some(a) = &self.aggregate {
            let commands = (dt * 12.0).round() as u64;
            for i in 0..commands {
                let ag = AGGREGATES[(self.n + i) as usize % AGGREGATES.len()];
                let v = if on(Fault::SlowDisk) {
                    self.rng.between(0.1, 0.6)
                } else {
                    self.rng.between(0.003, 0.06)
                };
                a.command_duration
                    .get_or_create(&l(&[("aggregate", ag)]))
                    .observe(v);
            }
            if self.rng.next() < dt * 0.1 {
                let ag = AGGREGATES[self.rng.between(0.0, 4.0) as usize % 4];
                a.conflicts.get_or_create(&l(&[("aggregate", ag)])).inc();
            }
            for s in tenants {
                let jitter = if s.active {
                    self.rng.between(2.0, 30.0).round() as i64
                } else {
                    0
                };
                let pile = if on(Fault::CommandPileup) && s.active {
                    250
                } else {
                    0
                };
                a.in_flight
                    .get_or_create(&l(&[("tenant_id", &s.tenant)]))
                    .set(s.inflight as i64 + jitter + pile);
                a.max_inflight
                    .get_or_create(&l(&[("tenant_id", &s.tenant)]))
                    .set(INFLIGHT_QUOTA);
                // Every (aggregate, tenant) series exists from the start; errors are rare.
                let failing = (s.active && self.rng.next() < dt * 0.05)
                    .then(|| self.rng.between(0.0, 4.0) as usize % 4);
                for (i, ag) in AGGREGATES.iter().enumerate() {
                    a.command_errors
                        .get_or_create(&l(&[("aggregate", ag), ("tenant_id", &s.tenant)]))
                        .inc_by(u64::from(failing == Some(i)));
                }
            }
        }

        if let Some(p) = &self.projection {
            for (i, v) in VIEWS.iter().enumerate() {
                let lv = l(&[("view_type", v)]);
                let base = 20.0 + 15.0 * ((t / 7.0) + i as f64).sin();
                let lag = if on(Fault::ProjectionLag) {
                    8000.0 + self.lag
                } else {
                    base
                };
                p.lag.get_or_create(&lv).set(lag.round() as i64);
                let events = (dt * 25.0).round() as u64;
                p.processed.get_or_create(&lv).inc_by(events);
                for _ in 0..events {
                    let d = self.rng.between(0.001, 0.03);
                    p.duration.get_or_create(&lv).observe(d);
                }
                for s in tenants {
                    let failed = self.rng.next() < dt * 0.01;
                    p.errors
                        .get_or_create(&l(&[("view_type", v), ("tenant_id", &s.tenant)]))
                        .inc_by(u64::from(failed));
                }
            }
        }

        if let Some(x) = &self.runner {
            let backlog = on(Fault::OutboxBacklog);
            if backlog {
                self.outbox += 20.0 * dt;
            } else {
                self.outbox = 0.0;
            }
            for (i, s) in tenants.iter().enumerate() {
                let base = 5.0 + 4.0 * ((t / 5.0) + i as f64).sin();
                let depth = if backlog { 1500.0 + self.outbox } else { base };
                x.outbox_depth
                    .get_or_create(&l(&[("tenant_id", &s.tenant)]))
                    .set(depth.round() as i64);
                x.dlq_pending
                    .get_or_create(&l(&[("tenant_id", &s.tenant)]))
                    .set(self.dlq.round() as i64);
            }
            x.schedules_backlog
                .set(if backlog { 800 } else { 3 + (t as i64 % 5) });
            x.relay_up.set(if on(Fault::RelayDown) { 0 } else { 1 });
            let failing = on(Fault::DispatchFailures);
            if failing && !tenants.is_empty() {
                self.dlq += 4.0 * ticks;
            }
            for p in PROVIDERS {
                let lp = l(&[("provider", p)]);
                let effects = (dt * 3.0).round() as u64;
                for _ in 0..effects {
                    let d = self.rng.between(0.05, 0.8);
                    x.effect_duration.get_or_create(&lp).observe(d);
                }
                if failing {
                    x.dispatch_failures.get_or_create(&lp).inc_by(per_s(10.0));
                    x.deadletter_writes.get_or_create(&lp).inc_by(per_s(4.0));
                    x.effect_timeouts.get_or_create(&lp).inc_by(per_s(1.0));
                }
            }
            if on(Fault::PoisonMessages) {
                x.poison.inc_by(per_s(1.0));
            }
        }

        if let Some(m) = &self.mdbx {
            let slow = on(Fault::SlowDisk);
            let dbs: [&str; 2] = if self.kind == Kind::Aggregate {
                ["events", "snapshots"]
            } else {
                ["views", "checkpoints"]
            };
            for (i, db) in dbs.iter().enumerate() {
                let ld = l(&[("db", db)]);
                let size = (24.0 - 16.0 * i as f64) * GIB + t * 40_000.0;
                m.db_size.get_or_create(&ld).set(size as i64);
                m.stall
                    .get_or_create(&ld)
                    .inc_by(if slow { 2.0 * dt } else { 0.001 * dt });
                let syncs = (dt * 10.0).round() as u64;
                for _ in 0..syncs {
                    let v = if slow {
                        self.rng.between(0.08, 0.2)
                    } else {
                        self.rng.between(0.0008, 0.006)
                    };
                    m.fsync.get_or_create(&ld).observe(v);
                }
            }
        }

        let lagging = on(Fault::ConsumerLag) || on(Fault::ProjectionLag);
        if lagging {
            self.lag += 50.0 * dt;
        } else {
            self.lag = 0.0;
        }
        if let Some(c) = &self.consumers {
            for (i, (stream, consumer)) in c.names.iter().enumerate() {
                // prometheus-nats-exporter labels; a double is the consumer leader of what it owns.
                let lc = l(&[
                    ("stream_name", stream),
                    ("consumer_name", consumer),
                    ("is_consumer_leader", "true"),
                ]);
                let base = 30.0 + 25.0 * ((t / 3.0) + i as f64).sin();
                let pending = if on(Fault::ConsumerLag) {
                    12_000.0 + self.lag
                } else {
                    base
                };
                c.pending.get_or_create(&lc).set(pending.round() as i64);
                let redeliveries = on(Fault::Redeliveries);
                c.ack_pending.get_or_create(&lc).set(if redeliveries {
                    1500
                } else {
                    4 + (i as i64 % 3)
                });
                let r = c.redelivered.get_or_create(&lc);
                if redeliveries {
                    r.inc_by(per_s(100.0) as i64);
                }
            }
        }
    }

    /// Simulated platform traffic: 20 requests per second on the service's own routes.
    fn traffic(&mut self, dt: f64, errors: bool, slow: bool, tenants: &[Served]) {
        let routes: &[(&str, &str)] = match self.kind {
            Kind::Gateway => &[
                ("POST", "/api/v1/commands"),
                ("GET", "/api/v1/queries"),
                ("POST", "/api/v1/sessions"),
                ("GET", "/api/v1/events"),
            ],
            Kind::Aggregate => &[("POST", "/internal/commands"), ("GET", "/internal/streams")],
            Kind::Projection => &[("GET", "/internal/views"), ("POST", "/internal/rebuild")],
            Kind::Runner => &[
                ("POST", "/internal/effects"),
                ("GET", "/internal/schedules"),
            ],
        };
        let count = (dt * 20.0).round() as u64;
        for _ in 0..count {
            self.n += 1;
            let n = self.n;
            // A fixed cycle: 0.25% 500s, 0.5% 429s, 2% 404s; under the fault 40% 5xx.
            let status: u16 = if errors && n % 5 < 2 {
                if n.is_multiple_of(5) { 500 } else { 503 }
            } else if n % 400 == 399 {
                500
            } else if n % 200 == 13 {
                429
            } else if n % 50 == 7 {
                404
            } else if n.is_multiple_of(3) && routes[(n as usize) % routes.len()].0 == "POST" {
                201
            } else {
                200
            };
            let (method, route) = routes[(n as usize) % routes.len()];
            let seconds = if slow {
                self.rng.between(1.0, 2.5)
            } else if self.rng.next() < 0.02 {
                self.rng.between(0.1, 0.4)
            } else {
                self.rng.between(0.004, 0.09)
            };
            let labels = l(&[
                ("method", method),
                ("path", route),
                ("status", &status.to_string()),
            ]);
            self.http.requests.get_or_create(&labels).inc();
            self.http.duration.get_or_create(&labels).observe(seconds);
            if let Some(g) = &self.gateway
                && !tenants.is_empty()
            {
                let s = &tenants[(n as usize / 7) % tenants.len()];
                let class = match status {
                    429 => "429",
                    500..=599 => "5xx",
                    400..=499 => "4xx",
                    _ => "2xx",
                };
                g.tenant_requests
                    .get_or_create(&l(&[("tenant_id", &s.tenant), ("status_class", class)]))
                    .inc();
                g.tenant_duration
                    .get_or_create(&l(&[("tenant_id", &s.tenant)]))
                    .observe(seconds);
            }
        }
        // Simulated requests are instantaneous: report a plausible concurrency for them, plus
        // the admin calls really being served.
        let busy = self.rng.between(1.0, 6.0).round() as i64;
        self.http
            .inflight
            .set(busy + self.real_inflight.load(Ordering::Relaxed));
    }

    fn host_step(&mut self, dt: f64, t: f64, faults: &BTreeSet<Fault>, events: u64) {
        let on = |f: Fault| faults.contains(&f);
        let h = &self.host;
        h.load1
            .set(1.2 + 0.8 * (t / 30.0).sin() + self.rng.between(0.0, 0.3));
        h.cpu_pressure.inc_by(0.02 * dt);
        h.mem_pressure.inc_by(0.005 * dt);
        let slow = on(Fault::SlowDisk);
        for (i, (mp, dev, fs, size, frac)) in MOUNTS.iter().enumerate() {
            let labels = l(&[("mountpoint", mp), ("device", dev), ("fstype", fs)]);
            // Data volumes fill slowly (1 MiB/s); under the fault they are nearly full and
            // fill at 20 MiB/s.
            let full = on(Fault::DiskFull) && i > 0;
            if full {
                let floor = size * 0.04;
                if self.free[i] > floor {
                    self.free[i] = floor;
                }
                self.free[i] = (self.free[i] - 20.0 * 1024.0 * 1024.0 * dt).max(0.0);
            } else if i > 0 {
                let baseline = size * frac;
                if self.free[i] < size * 0.3 {
                    // Recovered: space was freed.
                    self.free[i] = baseline;
                }
                self.free[i] = (self.free[i] - 1024.0 * 1024.0 * dt).max(0.0);
            }
            h.fs_avail.get_or_create(&labels).set(self.free[i]);
            if i > 0 {
                h.io_time
                    .get_or_create(&l(&[("device", dev)]))
                    .inc_by(if slow { 0.9 * dt } else { 0.08 * dt });
            }
        }
        if on(Fault::OomKills) {
            h.oom_kill.inc_by(events as i64);
        }
        if on(Fault::RestartLoop) {
            h.restarts.inc_by(events);
            h.running.set(0);
        } else {
            h.running.set(1);
        }
    }
}

/// A stable short "commit" for a version (the double has no Git history of its own).
fn git_sha(version: &str) -> String {
    let mut r = Rng::seeded(version);
    format!("{:07x}", (r.next() * f64::from(0x0fff_ffff_u32)) as u64)
}
