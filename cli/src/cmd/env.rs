//! Options shared by every command that talks to an environment's NATS.

use std::path::PathBuf;

use reconciler::desired::checkout::Checkout;
use reconciler::store::{BucketSettings, NatsOpts};
use reconciler::{EnvTarget, Error};

/// `--env`, `--repo` and how to reach NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvArgs {
    /// Environment, as declared in vakt.toml (e.g. dev, staging, prod).
    #[arg(long, short = 'e', value_name = "ENV")]
    pub env: String,
    /// The ops repo (a Git repository; its env branches are what gets applied).
    #[arg(long, env = "VAKT_REPO", default_value = ".", value_name = "DIR")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// How to reach NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma separated. Default: $NATS_URL, then the environment's
    /// `nats_url` in vakt.toml.
    #[arg(long, value_name = "URL[,URL…]")]
    pub nats: Option<String>,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, value_name = "FILE", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// File holding an NKey seed.
    #[arg(long, value_name = "FILE", env = "NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server.
    #[arg(long, value_name = "FILE", env = "NATS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key", env = "NATS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "NATS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS.
    #[arg(long)]
    pub tls: bool,
    /// KV bucket prefix (default: the environment's kv_prefix, else `vakt_<env>`).
    #[arg(long, value_name = "PREFIX")]
    pub kv_prefix: Option<String>,
    /// Revisions kept per key in buckets vakt creates.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub history: i64,
    /// Replicas of the buckets and the audit stream vakt creates (1 for a single server, 3 for
    /// a cluster). Default: the environment's `kv_replicas` in vakt.toml, else 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
}

impl EnvArgs {
    /// The environment's checkout of the repository (opened once; see `Checkout`).
    pub fn checkout(&self) -> Checkout {
        Checkout::open(&self.repo, &self.env)
    }

    /// How to reach the environment's store, from a fresh checkout.
    pub fn target(&self, lease: Option<std::time::Duration>) -> Result<EnvTarget, Error> {
        self.target_in(&self.checkout(), lease)
    }

    /// How to reach the environment's store, from the flags and the checkout's vakt.toml.
    pub fn target_in(
        &self,
        checkout: &Checkout,
        lease: Option<std::time::Duration>,
    ) -> Result<EnvTarget, Error> {
        let n = &self.nats;
        let mut settings = BucketSettings {
            history: n.history,
            replicas: n.replicas.map_or(0, usize::from),
            ..Default::default()
        };
        if let Some(l) = lease {
            settings.lease = l;
        }
        EnvTarget::resolve(
            checkout,
            NatsOpts {
                urls: n.nats.clone().unwrap_or_default(),
                creds: n.creds.clone(),
                nkey: n.nkey.clone(),
                tls_ca: n.tls_ca.clone(),
                tls_cert: n.tls_cert.clone(),
                tls_key: n.tls_key.clone(),
                tls_required: n.tls,
                name: format!("vakt {}", self.env),
            },
            n.kv_prefix.clone(),
            settings,
        )
    }
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The actor recorded in audit events: --actor, else $VAKT_ACTOR, else $USER.
pub fn actor(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("VAKT_ACTOR").ok())
        .or_else(|| std::env::var("USER").ok().map(|u| format!("user:{u}")))
        .unwrap_or_else(|| "unknown".into())
}
