//! `vakt validate`.

use opsrepo::report;

use super::RepoOpts;
use crate::fail::{Exit, Fail};
use crate::output::Format;
use crate::{exit, output};

/// Check every document against its schema, then every governance rule.
///
/// Findings carry a stable rule id, a severity, `path:line:col` and what to do. Every
/// environment's view (base documents with its overlays merged) is checked unless --env
/// narrows it.
///
/// A large repo (or a first import) can have thousands of findings: --summary prints the count
/// per rule id instead of the findings (JSON: adds `summary.by_rule`), and --max-per-rule N
/// shows at most N findings of each rule, then one line per rule saying how many were left out.
///
/// With --rev, what parsing and schema-checking each file produced is cached by its Git blob
/// id (in <git-dir>/vakt/cache/, or --cache-dir), so a commit that changed a few files
/// re-parses only those; cross-document rules still run over every document. A run appends
/// only the entries it parsed (validate-v2.log; concurrent runs take turns on
/// validate-v2.lock), and the commit's listing by tree id (trees-v1.bin: the next run reads
/// only the Git trees that changed). The cache can be deleted at any time; a torn or damaged
/// cache is a miss,
/// never an error; --no-cache bypasses it (same findings, every file parsed). The work tree is
/// never cached. VAKT_LOG=debug logs hits, misses and the time of each phase.
///
/// Exit status: 0 no errors (warnings allowed), 1 error-level findings, 2 usage error,
/// 3 could not run. --summary and --max-per-rule never change the exit status.
///
/// Examples:
///   vakt validate
///   vakt validate --repo ops --rev origin/env/prod --env prod
///   vakt validate --summary                    # counts per rule id only
///   vakt validate --summary --max-per-rule 3   # three findings of each rule, then the counts
///   vakt validate --summary --format json | jq '.summary.by_rule'
///   vakt validate --format github        # annotations in a GitHub Actions log
///   vakt validate --format sarif > vakt.sarif
///   vakt validate --repo ops --rev HEAD        # parses only files changed since a cached run
///   vakt validate --repo ops --rev HEAD --no-cache
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ValidateOpts {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Check only this environment's view (plus the base documents).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Evaluate review ages as of this date (YYYY-MM-DD) instead of today.
    #[arg(long, value_name = "DATE", value_parser = super::parse_date)]
    pub now: Option<time::Date>,
    /// Output format.
    #[arg(long, default_value = "human", value_parser = Format::only(&[Format::Human, Format::Json, Format::Github, Format::Sarif]))]
    pub format: Format,
    /// List every rule with its id, default severity and summary, then exit. Rules another
    /// command checks (`promotion.order`: `vakt promote --check`) come last, under their own
    /// heading; JSON gives each rule's `command`.
    #[arg(long)]
    pub list_rules: bool,
    /// Count the findings per rule id. Human: a table instead of the findings (add
    /// --max-per-rule to see some of each); JSON: `summary.by_rule`, findings kept.
    #[arg(long, conflicts_with = "list_rules")]
    pub summary: bool,
    /// Human format: show at most N findings of each rule (N >= 1) and say per rule how many
    /// were left out.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "list_rules")]
    pub max_per_rule: Option<u32>,
    /// With --rev: keep the validation cache here instead of <git-dir>/vakt/cache (created if
    /// missing; safe to delete at any time). Bounded to 256 MiB.
    #[arg(long, env = "VAKT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// With --rev: parse every file, neither reading nor writing the validation cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// Exit 2, as clap's own usage errors: flags that do not go together.
const USAGE: u8 = exit::CHANGES;

fn format_name(f: Format) -> String {
    use clap::ValueEnum as _;
    f.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

pub fn run(o: ValidateOpts) -> Exit {
    if o.list_rules {
        return Ok(list_rules(o.format));
    }
    if o.summary && !matches!(o.format, Format::Human | Format::Json) {
        return Err(Fail::new(
            USAGE,
            format!(
                "--summary works with --format human or json, not {}; drop --summary for annotations and SARIF",
                format_name(o.format)
            ),
        ));
    }
    if o.max_per_rule.is_some() && o.format != Format::Human {
        return Err(Fail::new(
            USAGE,
            format!(
                "--max-per-rule caps the human format only, not {} (which always lists every finding); use --format human or drop the flag",
                format_name(o.format)
            ),
        ));
    }
    let opts = opsrepo::ValidateOptions {
        env: o.env,
        today: o.now.unwrap_or_else(super::today),
    };
    let commands = ClapCommands::new(env_backed_optional(
        <crate::Cli as clap::CommandFactory>::command(),
    ));
    let report = match (&o.repo.rev, o.no_cache) {
        (Some(rev), false) => {
            let cache = opsrepo::cache::CacheOptions {
                dir: o.cache_dir,
                ..Default::default()
            };
            let (parsed, stats) = opsrepo::cache::parse_commit(&o.repo.repo, rev, &cache)?;
            tracing::debug!(
                dir = %stats.dir.display(),
                hits = stats.hits,
                misses = stats.misses,
                uncached = stats.uncached,
                written_entries = stats.written_entries,
                written_bytes = stats.written_bytes,
                compacted = stats.compacted,
                read_problem = stats.read_problem.as_deref().unwrap_or(""),
                "validation cache"
            );
            if let Some(why) = &stats.write_problem {
                tracing::warn!("validation cache not written (the run is not affected): {why}");
            }
            let t = std::time::Instant::now();
            let r = opsrepo::validate::validate_parsed_with_commands(&parsed, &opts, &commands);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "validated");
            // The process exits right after the report: freeing the parse of every document
            // one by one would cost more than the PR check's whole validation of the changed
            // ones (the OS takes the memory back at exit).
            std::mem::forget(parsed);
            r
        }
        _ => {
            let files = o.repo.read()?;
            let t = std::time::Instant::now();
            let parsed = opsrepo::load::parse_all(&files);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "parsed");
            let r = opsrepo::validate::validate_parsed_with_commands(&parsed, &opts, &commands);
            // As above: the process exits next.
            std::mem::forget(parsed);
            std::mem::forget(files);
            r
        }
    };
    let format = match o.format {
        Format::Json => report::Format::Json,
        Format::Github => report::Format::Github,
        Format::Sarif => report::Format::Sarif,
        Format::Human | Format::Markdown => report::Format::Human,
    };
    let render = report::RenderOptions {
        summary: o.summary,
        max_per_rule: o.max_per_rule.map(|n| n as usize),
    };
    output::print(&report::render_with(
        &report,
        format,
        render,
        output::color_stdout(),
    ));
    let code = if report.has_errors() {
        exit::FINDINGS
    } else {
        exit::OK
    };
    // As the parse above: the process exits next.
    std::mem::forget(report);
    Ok(code)
}

/// Parses runbook command lines with the binary's own argument definitions.
/// Checks runbook commands against vakt's own clap definition. Parsing needs the command
/// mutably (clap builds it on first use); one built copy behind a lock serves every check,
/// where a clone per command cost more than the parse.
struct ClapCommands {
    /// The definition, for looking subcommands up.
    def: clap::Command,
    parser: std::sync::Mutex<clap::Command>,
}

impl ClapCommands {
    fn new(def: clap::Command) -> ClapCommands {
        ClapCommands {
            parser: std::sync::Mutex::new(def.clone()),
            def,
        }
    }
}

/// An argument clap can read from the environment (`--api`: `$VAKT_API`) is set in an
/// operator's shell, so a runbook line may leave it out; every other required argument must be
/// written (or a placeholder like `E` or `<env>` given).
fn env_backed_optional(cmd: clap::Command) -> clap::Command {
    let ids: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_some())
        .map(|a| a.get_id().clone())
        .collect();
    let mut cmd = ids
        .into_iter()
        .fold(cmd, |c, id| c.mut_arg(id, |a| a.required(false)));
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(s, env_backed_optional);
    }
    cmd
}

impl opsrepo::rules::commands::CommandChecker for ClapCommands {
    fn check(&self, args: &[String]) -> Result<(), String> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        // A bare reference in prose (`vakt approve`, `vakt jobs retry`): the command must exist.
        let mut cmd = &self.def;
        let mut only_commands = true;
        for a in args {
            match cmd.find_subcommand(a) {
                Some(c) => cmd = c,
                None => {
                    only_commands = false;
                    break;
                }
            }
        }
        if only_commands {
            return Ok(());
        }
        let argv = std::iter::once("vakt").chain(args.iter().map(String::as_str));
        let parsed = match self.parser.lock() {
            Ok(mut p) => p.try_get_matches_from_mut(argv),
            // A panic in another check poisoned it: parse with a fresh copy.
            Err(_) => self.def.clone().try_get_matches_from(argv),
        };
        let Err(e) = parsed else {
            return Ok(());
        };
        let placeholder = |v: &str| {
            (v.starts_with('<') && v.ends_with('>'))
                || (v.chars().any(|c| c.is_ascii_uppercase())
                    && v.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        };
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(()),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation if matches!(e.get(ContextKind::InvalidValue), Some(ContextValue::String(v)) if placeholder(v)) => {
                Ok(())
            }
            ErrorKind::MissingRequiredArgument => {
                let missing = match e.get(ContextKind::InvalidArg) {
                    Some(ContextValue::Strings(v)) => v.join(", "),
                    _ => "an argument".to_string(),
                };
                Err(format!("missing required {missing}"))
            }
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("").trim();
                Err(first.strip_prefix("error: ").unwrap_or(first).to_string())
            }
        }
    }
}

fn list_rules(format: Format) -> u8 {
    match format {
        Format::Json => {
            output::print(
                &(serde_json::to_string_pretty(opsrepo::rules::RULES).unwrap_or_default() + "\n"),
            );
        }
        _ => {
            let line = |r: &opsrepo::rules::RuleInfo| {
                format!("{:<26} {:<8} {}\n", r.id, r.severity.as_str(), r.summary)
            };
            let (ours, others): (Vec<_>, Vec<_>) =
                opsrepo::rules::RULES.iter().partition(|r| r.is_validate());
            let mut s: String = ours.into_iter().map(line).collect();
            if !others.is_empty() {
                s.push_str("\nChecked by other commands, not by validate:\n");
                for r in others {
                    s.push_str(&format!("{}  (vakt {})", line(r).trim_end(), r.command));
                    s.push('\n');
                }
            }
            output::print(&s);
        }
    }
    exit::OK
}
