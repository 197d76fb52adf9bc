//! `vakt approve` and `vakt reject`.

use super::env::{self, EnvArgs};
use crate::fail::Exit;
use crate::{exit, output};

/// Approve a plan that waits on a gated action.
///
/// Gated actions: placement move, deletion, definition or access change, failover, restore.
///
/// The approval binds to the plan's content digest: if the commit or the live state changes,
/// the plan gets a new id and needs a new approval. Audited with who, why and when. Approvals
/// expire after the environment's approval_ttl.
///
/// Examples:
///   vakt approve plan-54e85d52b4f5 --env prod --reason "CHG-1042 reviewed in #ops"
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DecideOpts {
    /// The plan id, as `vakt apply`, `vakt status` or the site show it.
    #[arg(value_name = "PLAN")]
    pub plan: String,
    #[command(flatten)]
    pub target: EnvArgs,
    /// Why (required; recorded in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Who decides (default: $VAKT_ACTOR, else user:$USER). Ignored with --api (the token's
    /// subject decides).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub via: super::api::OptApi,
}

pub fn run(o: DecideOpts, approve: bool) -> Exit {
    if let Some(a) = o.via.args() {
        let v = a.call(async |c| c.decide(&o.plan, approve, &o.reason).await)?;
        output::print(&format!(
            "{} {} by {} (expires {}).\n",
            v.decision,
            o.plan,
            v.decided_by.as_deref().unwrap_or("?"),
            v.expires_at
        ));
        return Ok(exit::OK);
    }
    let target = o.target.target(None)?;
    let actor = env::actor(&o.actor);
    let a = env::runtime().block_on(async {
        let (store, mut audit) = target.open().await?;
        reconciler::ops::approvals::decide(&store, &mut audit, &o.plan, approve, &actor, &o.reason)
            .await
    })?;
    output::print(&format!(
        "{} {} (expires {}); the next run of that plan (apply, reconcile or restore) proceeds{}.\n",
        a.decision,
        a.plan_id,
        a.expires_at,
        if approve { "" } else { " without it" }
    ));
    Ok(exit::OK)
}
