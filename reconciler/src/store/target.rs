//! How to reach an environment's store: NATS URLs, credentials, bucket prefix and settings,
//! resolved from the flags and `vakt.toml`.

use super::audit::Audit;
use super::{BucketSettings, NatsOpts, Store, connect};
use crate::Error;
use crate::desired::checkout::Checkout;

/// Everything needed to reach an environment's buckets.
#[derive(Debug, Clone)]
pub struct EnvTarget {
    pub env: String,
    pub nats: NatsOpts,
    /// KV bucket prefix (`vakt_<env>` unless vakt.toml or --kv-prefix says otherwise).
    pub prefix: String,
    pub settings: BucketSettings,
}

impl EnvTarget {
    /// Resolves the NATS URLs (`--nats`, else `NATS_URL`, else the environment's `nats_url` in
    /// vakt.toml) and the bucket prefix, from the `vakt.toml` of the checkout (the one merged
    /// into the environment's branch; never the work tree of a Git repository).
    pub fn resolve(
        checkout: &Checkout,
        mut nats: NatsOpts,
        prefix: Option<String>,
        mut settings: BucketSettings,
    ) -> Result<EnvTarget, Error> {
        let env = checkout.env();
        let e = checkout.settings()?;
        if nats.urls.is_empty() {
            nats.urls = std::env::var("NATS_URL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| e.nats_url.clone());
        }
        let prefix = prefix
            .or_else(|| e.kv_prefix.clone())
            .unwrap_or_else(|| format!("vakt_{env}"));
        if settings.replicas == 0 {
            settings.replicas = e.kv_replicas.unwrap_or(1).max(1);
        }
        Ok(EnvTarget {
            env: env.to_owned(),
            nats,
            prefix,
            settings,
        })
    }

    /// Connects and opens the existing buckets, creating nothing (read-only commands).
    pub async fn open_existing(&self) -> Result<Store, Error> {
        let client = connect(&self.nats).await?;
        Ok(Store::open_existing(client, &self.env, &self.prefix).await?)
    }

    /// Connects and opens the buckets and the audit stream.
    pub async fn open(&self) -> Result<(Store, Audit), Error> {
        let client = connect(&self.nats).await?;
        let s = Store::open(client, &self.env, &self.prefix, &self.settings).await?;
        let a = Audit::open(&s).await?;
        Ok((s, a))
    }
}
