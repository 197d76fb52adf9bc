//! `vakt backup` and `vakt restore`.

use std::path::PathBuf;

use reconciler::ops::backup::{self, RestoreOpts, RestorePlan};

use super::env::{self, EnvArgs};
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Take a verified, checksummed backup of an environment's NATS state.
///
/// Writes every managed bucket (config, definitions, placement, access, catalog, inventory,
/// state, jobs) and the environment's audit events into a new directory, each file with its
/// SHA-256 in manifest.json, then reads the backup back and verifies it. Only a backup that
/// verifies is recorded (state key `backup.last`, audit event `backup`; the site's DR page and
/// the `vakt_backup_last_success_timestamp_seconds` metric show it). An existing directory is
/// never overwritten.
///
/// Exit status: 0 written and verified, 3 could not run (NATS, I/O), 4 refused (the directory
/// exists) or the written backup failed verification.
///
/// Examples:
///   vakt backup --env prod --out /var/backups/vakt/prod/2026-11-22T0310Z
///   vakt backup --env prod --out "backups/$(date -u +%Y%m%dT%H%MZ)" --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct BackupOpts {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The backup directory to create.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Who takes it (default: $VAKT_ACTOR, else user:$USER).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

/// Restore an environment's NATS state from a backup, after a preflight.
///
/// The preflight (always run; alone with --preflight) verifies every checksum, the format and
/// the target environment, then compares the backup with the live buckets and the audit stream:
/// keys to create, keys to overwrite and keys to delete per bucket, and audit events to
/// republish. It refuses while a reconciler holds the environment's lease (stop
/// `vakt reconcile` first) and when the live audit trail and the backup's diverge (the hash
/// chain would fork; --skip-audit restores the buckets only). When one trail extends the
/// other, only the missing events are republished.
///
/// Creating keys in empty buckets runs at once. Overwriting or deleting live keys is
/// destructive: it needs --reason, and the first run records a pending approval bound to the
/// restore plan's digest and exits 4; after `vakt approve restore-… --reason …` the same command restores. Writes are
/// compare-and-set on the revisions the preflight read, so a concurrent writer stops the
/// restore instead of being overwritten. Every step is audited (restore.start,
/// restore.bucket, restore.done) and `restore.last` records the outcome.
///
/// A restore that was interrupted (killed, NATS lost) is completed by running it again: the
/// rerun writes only what is still missing, records restore.interrupted for the earlier run
/// and ends with restore.done, even when nothing was left to write.
///
/// After a restore, `vakt reconcile` (or `vakt apply`) brings the desired buckets to the
/// branch head again; `vakt drift` shows the difference meanwhile.
///
/// Exit status: 0 restored (or preflight passed), 3 could not run, 4 refused or waiting for
/// approval.
///
/// Examples:
///   vakt restore --env prod --from /var/backups/vakt/prod/2026-11-22T0310Z --preflight
///   vakt restore --env prod --from /var/backups/vakt/prod/2026-11-22T0310Z --yes
///   vakt restore --env prod --from DIR --buckets state,jobs --reason "INC-2211: state lost" --yes
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RestoreCmd {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The backup directory (as written by `vakt backup`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Check and show what would be written; write nothing.
    #[arg(long)]
    pub preflight: bool,
    /// Restore without asking (required without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Only these buckets (comma separated: config, definitions, placement, access, catalog,
    /// inventory, state, jobs).
    #[arg(long, value_delimiter = ',', value_name = "NAME[,NAME…]")]
    pub buckets: Option<Vec<String>>,
    /// Leave the audit stream alone (when its trail and the backup's diverge).
    #[arg(long)]
    pub skip_audit: bool,
    /// Why (required to overwrite or delete live keys; recorded).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Who restores (default: $VAKT_ACTOR, else user:$USER).
    #[arg(long, value_name = "WHO")]
    pub actor: Option<String>,
    #[arg(long, default_value = "human", value_parser = Format::only(output::HUMAN_JSON))]
    pub format: Format,
}

pub fn backup(o: BackupOpts) -> Exit {
    let target = o.target.target(None)?;
    let actor = env::actor(&o.actor);
    let r = env::runtime().block_on(async {
        let (store, mut audit) = target.open().await?;
        backup::backup(&store, &mut audit, &o.out, &actor).await
    });
    let rep = r?;

    match o.format {
        Format::Json => Format::print_json(&rep),
        _ => {
            let m = &rep.manifest;
            let mut s = format!(
                "Backup {} of {} written to {} and verified.\n",
                m.id,
                m.env,
                rep.dir.display()
            );
            for f in &m.files {
                s.push_str(&format!(
                    "  {:<26} {:>7} {}  {}\n",
                    f.path,
                    f.records,
                    if f.bucket.is_some() {
                        "keys  "
                    } else {
                        "events"
                    },
                    f.sha256
                ));
            }
            s.push_str(&format!(
                        "Applied commit: {}. Manifest {}.\nCheck it with: vakt restore --env {} --from {} --preflight\n",
                        m.applied_commit.as_deref().unwrap_or("none"),
                        rep.digest,
                        m.env,
                        rep.dir.display()
                    ));
            output::print(&s);
        }
    }
    Ok(exit::OK)
}

pub fn restore(o: RestoreCmd) -> Exit {
    let checkout = o.target.checkout();
    let target = o.target.target_in(&checkout, None)?;
    // The approval lifetime of the environment's policy, from the same vakt.toml as the target.
    let ttl = checkout.settings()?.policy.approval_ttl.get();
    let opts = RestoreOpts {
        buckets: o.buckets.clone(),
        skip_audit: o.skip_audit,
        actor: env::actor(&o.actor),
        reason: o.reason.clone(),
        now: time::OffsetDateTime::now_utc(),
        approval_ttl: ttl,
        progress: None,
    };
    let rt = env::runtime();
    let opened = rt.block_on(target.open());
    let (store, mut audit) = opened?;
    let plan = rt.block_on(backup::preflight(&store, &o.from, &opts))?;
    if o.preflight || matches!(o.format, Format::Human) {
        match o.format {
            Format::Json if o.preflight => Format::print_json(&plan),
            Format::Json => {}
            _ => output::print(&render_plan(&plan)),
        }
    }
    if !plan.refusals.is_empty() {
        return Err(Fail::new(
            exit::REFUSED,
            format!("refused: {}", plan.refusals.join("; ")),
        ));
    }
    if o.preflight {
        return Ok(exit::OK);
    }
    if plan.writes() == 0 && plan.audit.to_publish == 0 && plan.resumes.is_none() {
        output::print("Nothing to restore: the live state matches the backup.\n");
        return Ok(exit::OK);
    }
    if !o.yes && !super::apply::confirm("Restore this backup? Type `yes`: ") {
        return Err(Fail::refused(
            "not restored: pass --yes to restore without a terminal",
        ));
    }
    let (bar, progress) = output::progress("restoring");
    let opts = RestoreOpts { progress, ..opts };
    let result = rt.block_on(backup::restore(&store, &mut audit, plan, &opts));
    bar.finish_and_clear();
    let out = result?;

    match o.format {
        Format::Json => Format::print_json(&out),
        _ => output::print(&format!(
            "Restored {} to {}: {} write(s), {} audit event(s) republished ({}).\nNext: `vakt drift --env {}` shows what differs from Git; `vakt reconcile` or `vakt apply` converges the desired buckets.\n",
            out.plan.backup_id,
            out.plan.env,
            out.written,
            out.events_published,
            out.plan.id,
            out.plan.env
        )),
    }
    Ok(exit::OK)
}

fn render_plan(p: &RestorePlan) -> String {
    let mut s = format!(
        "Restore preflight {} for {}\n  backup {} taken {} (applied commit {}), checksums verified\n",
        p.id,
        p.env,
        p.backup_id,
        p.backup_created_at,
        p.applied_commit.as_deref().unwrap_or("none")
    );
    s.push_str("  bucket         create  overwrite  delete  unchanged\n");
    for b in &p.buckets {
        s.push_str(&format!(
            "  {:<13} {:>7} {:>10} {:>7} {:>10}\n",
            b.bucket,
            b.create.len(),
            b.overwrite.len(),
            b.delete.len(),
            b.unchanged
        ));
        for (what, keys) in [("overwrite", &b.overwrite), ("delete", &b.delete)] {
            for k in keys.iter().take(10) {
                s.push_str(&format!("      {what} {k}\n"));
            }
            if keys.len() > 10 {
                s.push_str(&format!("      … and {} more to {what}\n", keys.len() - 10));
            }
        }
    }
    if let Some(prev) = &p.resumes {
        s.push_str(&format!(
            "  completes the interrupted restore {prev} (started, never finished)\n"
        ));
    }
    if p.audit.skipped {
        s.push_str("  audit trail: left as it is (--skip-audit)\n");
    } else {
        s.push_str(&format!(
            "  audit trail: {} event(s) in the backup, {} live, {} to republish\n",
            p.audit.in_backup, p.audit.live, p.audit.to_publish
        ));
    }
    if p.destructive {
        s.push_str(&format!(
            "  DESTRUCTIVE: it overwrites or deletes live keys; it needs an approval of {} (with --reason)\n",
            p.id
        ));
    }
    s
}
