//! Terminal output: the one `--format` type, colour decisions, broken pipes, logging.

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use clap::builder::{PossibleValuesParser, TypedValueParser};

/// How a command prints its result. Every command takes `--format`; each accepts the subset it
/// can render, which its `--help` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: aligned text, colour on a terminal.
    Human,
    /// One JSON document, for scripts and `jq`.
    Json,
    /// GitHub-flavoured markdown, for a pull request comment.
    Markdown,
    /// GitHub Actions workflow commands (`::error file=…`).
    Github,
    /// SARIF 2.1.0, for code-scanning uploads.
    Sarif,
}

/// Human and JSON: what most commands print.
pub const HUMAN_JSON: &[Format] = &[Format::Human, Format::Json];

impl Format {
    /// A `--format` parser that accepts only `allowed` (and lists only those in `--help`).
    pub fn only(allowed: &'static [Format]) -> impl TypedValueParser<Value = Format> {
        PossibleValuesParser::new(allowed.iter().filter_map(|f| f.to_possible_value()))
            .map(|s| Format::from_str(&s, false).unwrap_or(Format::Human))
    }

    /// Prints `v` as pretty JSON.
    pub fn print_json<T: serde::Serialize>(v: &T) {
        print(&format!(
            "{}\n",
            serde_json::to_string_pretty(v).unwrap_or_default()
        ));
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set.
pub fn color_stdout() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Writes to stdout; a closed pipe (`vakt validate | head`) ends quietly.
pub fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// An error for the user, on stderr.
pub fn error(msg: &str) {
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal();
    if color {
        eprintln!("\x1b[1;31merror\x1b[0m: {msg}");
    } else {
        eprintln!("error: {msg}");
    }
}

/// Installs the log subscriber: `VAKT_LOG` filter (default `warn`), stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAKT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// A progress bar on stderr for long work, only when stderr is a terminal (scripts and CI see
/// nothing). Returns the bar (finish it when done) and the callback for the library.
pub fn progress(what: &str) -> (indicatif::ProgressBar, Option<reconciler::Progress>) {
    if !std::io::stderr().is_terminal() {
        return (indicatif::ProgressBar::hidden(), None);
    }
    // Hidden until the first report says how much there is to do.
    let bar = indicatif::ProgressBar::hidden();
    let style = if std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) {
        "{msg} [{bar:30.cyan/blue}] {pos}/{len} ({elapsed}, eta {eta})"
    } else {
        "{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})"
    };
    if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
        bar.set_style(s.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    let b = bar.clone();
    let cb = reconciler::Progress(std::sync::Arc::new(move |done, total| {
        if b.length() != Some(total) {
            b.set_length(total);
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        b.set_position(done);
    }));
    (bar, Some(cb))
}
