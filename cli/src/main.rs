//! The `vakt` binary: argument parsing and output only; every decision lives in the libraries.

mod cmd;
mod fail;
mod output;

/// mimalloc: validation and compilation allocate millions of small values from every thread,
/// where it is markedly faster than the system allocator (see BENCHMARKS.md, B1).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command wants mimalloc to treat freed memory.
#[derive(Clone, Copy)]
enum AllocProfile {
    /// Commands that compile a commit and hold its keys (apply, plan, drift, promote, backup,
    /// restore): pages go back as soon as they are free and the arena is committed on demand,
    /// so `vakt apply` on 50,000 keys stays near its live heap (BENCHMARKS.md, B7).
    Lean,
    /// One-off commands that read a whole repo and exit (`validate`, `site build`): freed pages
    /// are never given back, so they are reused without a page fault and zeroing; giving them
    /// back made a validation of 40,000 documents take five to seven times the page faults.
    OneShot,
    /// `site build`: as [`AllocProfile::OneShot`], and no transparent huge pages. A cold build
    /// of 5,000 runbooks peaks at ~250 MB; faulting that in as 2 MiB pages (850 faults, each
    /// zeroing a whole huge page, some compacting first) cost 0.7-0.9 s of system time against
    /// 0.43 s for 55,000 ordinary faults (BENCHMARKS.md, B5; `/usr/bin/time`, same run).
    /// mimalloc reads `allow_thp` when it starts, before `main`, and has by then already
    /// advised its first arena for huge pages, so the option alone changed nothing (850 faults
    /// either way): the process also asks the kernel for no huge pages
    /// (`prctl(PR_SET_THP_DISABLE)`, which covers regions advised before).
    SiteBuild,
    /// The daemon (`reconcile`): no transparent huge pages. Each pass allocates and frees a
    /// few megabytes; with huge pages every pass faulted whole 2 MiB pages back in (zeroed,
    /// sometimes compacted first), which doubled a merge's latency (BENCHMARKS.md, B4).
    Daemon,
}

/// Sets mimalloc's options for a command's profile; the other commands keep the defaults. An
/// environment variable of the same name (`MIMALLOC_PURGE_DELAY`, ...) always wins.
fn tune_allocator(profile: AllocProfile) {
    // Option numbers of mimalloc v3's `mi_option_e` (include/mimalloc.h); libmimalloc-sys
    // names only some of them.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    let options: &[(libmimalloc_sys::mi_option_t, &str, std::os::raw::c_long)] = match profile {
        AllocProfile::Lean => &[
            (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
            (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
        ],
        // -1: never purge.
        AllocProfile::OneShot => &[(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1)],
        AllocProfile::SiteBuild => &[
            (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1),
            (ALLOW_THP, "MIMALLOC_ALLOW_THP", 0),
        ],
        AllocProfile::Daemon => &[(ALLOW_THP, "MIMALLOC_ALLOW_THP", 0)],
    };
    for &(option, env, value) in options {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets an integer option, valid for every option number, before the command
            // starts any thread; mimalloc reads its options atomically.
            #[allow(unsafe_code)]
            unsafe {
                libmimalloc_sys::mi_option_set(option, value)
            };
            if matches!(profile, AllocProfile::SiteBuild) && option == ALLOW_THP && value == 0 {
                // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory
                // of ours; on a kernel without it the call fails and nothing changes.
                #[allow(unsafe_code)]
                let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            }
        }
    }
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// vakt: GitOps control plane for multi-tenant, multi-datacenter platforms on NATS.
///
/// Everything operators change lives in one Git repo (the ops repo). `vakt validate` checks it
/// the way CI does on every pull request. Run `vakt <command> --help` for details and examples.
#[derive(Debug, Parser)]
#[command(name = "vakt", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Parsed once per process, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    Validate(cmd::validate::ValidateOpts),
    Init(cmd::init::InitOpts),
    Import(cmd::import::ImportOpts),
    Schemas(cmd::schemas::SchemasOpts),
    Plan(cmd::plan::PlanOpts),
    Apply(cmd::apply::ApplyCmd),
    Drift(cmd::drift::DriftOpts),
    Promote(cmd::promote::PromoteOpts),
    Reconcile(cmd::reconcile::ReconcileOpts),
    Jobs(cmd::jobs::JobsOpts),
    Inventory(cmd::inventory::InventoryOpts),
    Status(cmd::api::StatusOpts),
    Events(cmd::api::EventsOpts),
    Approve(cmd::approve::DecideOpts),
    /// Reject a plan that waits for approval (same options as approve).
    Reject(cmd::approve::DecideOpts),
    Site(cmd::site::SiteOpts),
    Render(cmd::render::RenderOpts),
    Backup(cmd::backup::BackupOpts),
    Restore(cmd::backup::RestoreCmd),
}

/// Exit codes automation can rely on: one table, in `reconciler::outcome::exit`.
pub use reconciler::outcome::exit;

fn main() -> ExitCode {
    output::init_tracing();
    let cli = Cli::parse();
    match &cli.command {
        Command::Apply(_)
        | Command::Plan(_)
        | Command::Drift(_)
        | Command::Promote(_)
        | Command::Backup(_)
        | Command::Restore(_) => tune_allocator(AllocProfile::Lean),
        Command::Validate(_) => tune_allocator(AllocProfile::OneShot),
        Command::Site(cmd::site::SiteOpts {
            command: cmd::site::SiteCommand::Build(_),
        }) => tune_allocator(AllocProfile::SiteBuild),
        Command::Reconcile(_) => tune_allocator(AllocProfile::Daemon),
        _ => {}
    }
    let result = match cli.command {
        Command::Validate(o) => cmd::validate::run(o),
        Command::Init(o) => cmd::init::run(o),
        Command::Import(o) => cmd::import::run(o),
        Command::Schemas(o) => cmd::schemas::run(o),
        Command::Plan(o) => cmd::plan::run(o),
        Command::Apply(o) => cmd::apply::run(o),
        Command::Drift(o) => cmd::drift::run(o),
        Command::Promote(o) => cmd::promote::run(o),
        Command::Reconcile(o) => cmd::reconcile::run(o),
        Command::Jobs(o) => cmd::jobs::run(o),
        Command::Inventory(o) => cmd::inventory::run(o),
        Command::Status(o) => cmd::api::status(o),
        Command::Events(o) => cmd::api::events(o),
        Command::Approve(o) => cmd::approve::run(o, true),
        Command::Reject(o) => cmd::approve::run(o, false),
        Command::Site(o) => cmd::site::run(o),
        Command::Render(o) => cmd::render::run(o),
        Command::Backup(o) => cmd::backup::backup(o),
        Command::Restore(o) => cmd::backup::restore(o),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            output::error(&f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option numbers `tune_allocator` sets name the options it means: each reads back
    /// this mimalloc's default (purge delay 1,000 ms, huge pages allowed on Linux), beside a
    /// control whose default is unmistakable (`os_tag`, 18: 100).
    #[test]
    #[cfg(target_os = "linux")]
    fn allocator_option_numbers_are_the_documented_options() {
        // SAFETY: reads integer options; valid for every option number.
        #[allow(unsafe_code)]
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(18), 100, "os_tag: the numbering is the one assumed");
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(15), 1000, "purge_delay");
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            assert_eq!(get(43), 1, "allow_thp");
        }
    }
}
