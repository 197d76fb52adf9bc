//! Typed outcomes: why an apply was refused, what state an environment is in, how an approval was
//! decided and what a daemon step did. Each enum derives its metric label, its site signal and its
//! exit code here, in one place; strings exist only at the edges (JSON, text, metric labels).

use serde::{Deserialize, Serialize};

/// Exit codes automation can rely on (documented in `vakt --help` and the README).
pub mod exit {
    /// Success; nothing to report.
    pub const OK: u8 = 0;
    /// Error-level findings, or work that failed part-way.
    pub const FINDINGS: u8 = 1;
    /// Usage error (clap), or changes/drift found (`plan --detailed-exitcode`, `drift`).
    pub const CHANGES: u8 = 2;
    /// Could not run: a repo, a revision, NATS or a file could not be read.
    pub const COULD_NOT_RUN: u8 = 3;
    /// Refused by a guard or a policy.
    pub const REFUSED: u8 = 4;
}

/// Why an apply (or a saved plan) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The commit fails validation.
    InvalidCommit,
    /// The env branch moved backwards (force push) and `--allow-rewind` was not given.
    BranchRewound,
    /// The commit is not on the environment's branch.
    OffBranch,
    /// A freeze window is active and `--break-glass` was not given.
    FreezeWindow,
    /// The plan deletes more keys than the policy allows.
    MaxDeletions,
    /// The plan contains gated actions and waits for an approval bound to its digest.
    ApprovalRequired,
    /// The approval of this plan expired.
    ApprovalExpired,
    /// The plan was rejected by an approver.
    Rejected,
    /// A saved plan no longer describes the world: the branch moved, a key it read changed, or
    /// it expired.
    PlanStale,
    /// A saved plan file that cannot be trusted: edited, truncated, another env or repo, or a
    /// format this vakt does not know.
    PlanInvalid,
    /// An operator action the current state does not allow (a decided approval, a finished
    /// job, an unknown id, an inventory record that changed).
    ActionNotAllowed,
    /// The job, plan or node named does not exist (the API answers 404).
    NotFound,
    /// `vakt promote` guard: order of environments, or a branch that is not a fast-forward.
    PromotionGuard,
    /// `vakt backup`/`vakt restore` guard: a damaged or foreign backup, a leader holding the
    /// lease, a diverged audit trail, a pending approval.
    RestoreGuard,
    /// A daemon (`vakt reconcile`) holds the environment's lease: a hand-run apply would be a
    /// second writer. The refusal names the leader and how long its lease runs.
    LeaderActive,
    /// Anything else (records written by older versions of vakt read as this).
    #[default]
    #[serde(other)]
    Other,
}

impl RefusalKind {
    /// Every kind, for tables and tests.
    pub const ALL: [RefusalKind; 16] = [
        RefusalKind::InvalidCommit,
        RefusalKind::BranchRewound,
        RefusalKind::OffBranch,
        RefusalKind::FreezeWindow,
        RefusalKind::MaxDeletions,
        RefusalKind::ApprovalRequired,
        RefusalKind::ApprovalExpired,
        RefusalKind::Rejected,
        RefusalKind::PlanStale,
        RefusalKind::PlanInvalid,
        RefusalKind::ActionNotAllowed,
        RefusalKind::NotFound,
        RefusalKind::PromotionGuard,
        RefusalKind::RestoreGuard,
        RefusalKind::LeaderActive,
        RefusalKind::Other,
    ];

    /// The `reason` label of `vakt_reconcile_refused_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            RefusalKind::InvalidCommit => "invalid_commit",
            RefusalKind::BranchRewound => "branch_rewound",
            RefusalKind::OffBranch => "off_branch",
            RefusalKind::FreezeWindow => "freeze_window",
            RefusalKind::MaxDeletions => "max_deletions",
            RefusalKind::ApprovalRequired | RefusalKind::ApprovalExpired => "approval_required",
            RefusalKind::Rejected => "rejected",
            RefusalKind::PlanStale => "plan_stale",
            RefusalKind::PlanInvalid => "plan_invalid",
            RefusalKind::ActionNotAllowed => "action_not_allowed",
            RefusalKind::NotFound => "not_found",
            RefusalKind::PromotionGuard => "promotion_guard",
            RefusalKind::RestoreGuard => "restore_guard",
            RefusalKind::LeaderActive => "leader_active",
            RefusalKind::Other => "other",
        }
    }

    /// The signal whose catalog entry (escalation, remediation, runbook) the site shows for it.
    pub fn signal(self) -> &'static str {
        match self {
            RefusalKind::InvalidCommit => "vakt_invalid_commit",
            RefusalKind::BranchRewound => "vakt_branch_rewound",
            RefusalKind::ApprovalRequired | RefusalKind::ApprovalExpired => "vakt_approval_pending",
            _ => "vakt_apply_failed",
        }
    }

    /// The refusal waits for a human decision (an approval), rather than a fix.
    pub fn waits_for_approval(self) -> bool {
        matches!(
            self,
            RefusalKind::ApprovalRequired | RefusalKind::ApprovalExpired
        )
    }

    /// The process exit code of a command refused for this reason.
    pub fn exit_code(self) -> u8 {
        exit::REFUSED
    }

    /// The state the environment's status takes after this refusal.
    pub fn sync_state(self) -> SyncState {
        if self.waits_for_approval() {
            SyncState::WaitingApproval
        } else {
            SyncState::Refused
        }
    }
}

/// A refusal: its kind (what automation branches on) and the sentence the operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refused {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Refused {
            kind,
            reason: reason.into(),
        }
    }
}

/// The state of an environment, as its status record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    InSync,
    Applied,
    Drift,
    Refused,
    Failed,
    WaitingApproval,
    /// Nothing applied yet (and any state this version does not know).
    #[default]
    #[serde(other)]
    Unknown,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Unknown => "unknown",
            SyncState::InSync => "in-sync",
            SyncState::Applied => "applied",
            SyncState::Drift => "drift",
            SyncState::Refused => "refused",
            SyncState::Failed => "failed",
            SyncState::WaitingApproval => "waiting-approval",
        }
    }

    /// A human must act (fix a commit, approve, or look at a failure).
    pub fn needs_human(self) -> bool {
        matches!(
            self,
            SyncState::Refused | SyncState::Failed | SyncState::WaitingApproval
        )
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an approval was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    #[default]
    Pending,
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pending => "pending",
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one daemon reconcile step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepOutcome {
    /// Wrote at least one key.
    Applied,
    /// Nothing to write (in sync, or drift measured only).
    Noop,
    /// Refused by a guard or a policy.
    Refused(RefusalKind),
    /// Could not complete (NATS, Git, a conflict).
    Failed,
}

impl StepOutcome {
    /// The `outcome` label of `vakt_reconcile_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            StepOutcome::Applied => "applied",
            StepOutcome::Noop => "noop",
            StepOutcome::Refused(_) => "refused",
            StepOutcome::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_kind_has_a_label_a_signal_and_exit_code_4() {
        for k in RefusalKind::ALL {
            assert!(!k.metric_label().is_empty());
            assert!(k.signal().starts_with("vakt_"));
            assert_eq!(k.exit_code(), exit::REFUSED);
            // The JSON form round-trips (status records store it).
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<RefusalKind>(&j).unwrap(), k);
        }
        assert_eq!(
            RefusalKind::ApprovalRequired.sync_state(),
            SyncState::WaitingApproval
        );
        assert_eq!(RefusalKind::FreezeWindow.sync_state(), SyncState::Refused);
    }

    #[test]
    fn states_serialise_as_before() {
        for (s, text) in [
            (SyncState::InSync, "\"in-sync\""),
            (SyncState::WaitingApproval, "\"waiting-approval\""),
            (SyncState::Failed, "\"failed\""),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), text);
            assert_eq!(format!("\"{s}\""), text);
        }
        assert_eq!(
            serde_json::to_string(&Decision::Approved).unwrap(),
            "\"approved\""
        );
    }
}
