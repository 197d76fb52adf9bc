//! The binary's one error type and its one mapping to the documented exit codes.
//!
//! Commands return `Result<u8, Fail>`: `Ok` carries the exit code of a command that ran (0, or 1
//! for findings, 2 for changes or drift), `Err` a failure that `main` prints once, on stderr,
//! before exiting with its code.

use reconciler::outcome::exit;

/// A command that could not do its job: the message for the operator and the exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

/// What every command returns.
pub type Exit = Result<u8, Fail>;

impl Fail {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// Could not run (exit 3): a file, a repo, NATS or an API could not be reached or read.
    pub fn could_not_run(message: impl Into<String>) -> Self {
        Fail {
            code: exit::COULD_NOT_RUN,
            message: message.into(),
        }
    }

    /// Refused by a guard or a policy (exit 4).
    pub fn refused(message: impl Into<String>) -> Self {
        Fail {
            code: exit::REFUSED,
            message: message.into(),
        }
    }

    /// The same failure under another exit code (a command whose documented convention differs,
    /// like `drift`'s 0/1/2).
    pub fn with_code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<reconciler::Error> for Fail {
    fn from(e: reconciler::Error) -> Self {
        Fail {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<reconciler::ops::apply::ApplyError> for Fail {
    fn from(e: reconciler::ops::apply::ApplyError) -> Self {
        Fail {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<reconciler::store::StoreError> for Fail {
    fn from(e: reconciler::store::StoreError) -> Self {
        Fail::could_not_run(e.to_string())
    }
}

impl From<opsrepo::SourceError> for Fail {
    fn from(e: opsrepo::SourceError) -> Self {
        Fail::could_not_run(e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::could_not_run(e.to_string())
    }
}

impl From<sitegen::SiteError> for Fail {
    fn from(e: sitegen::SiteError) -> Self {
        use sitegen::SiteError::*;
        let code = match &e {
            Source(_) | Io { .. } => exit::COULD_NOT_RUN,
            // Refusing to replace a directory vakt did not write is a guard, like any refusal.
            ForeignOutput { .. } => exit::REFUSED,
            InvalidRepo { .. }
            | UnknownEnv { .. }
            | Template { .. }
            | Runbook { .. }
            | Snippet { .. }
            | SnippetsUrl { .. } => exit::FINDINGS,
        };
        Fail::new(code, e.to_string())
    }
}

impl From<opsrepo::render::RenderError> for Fail {
    fn from(e: opsrepo::render::RenderError) -> Self {
        use opsrepo::render::RenderError::*;
        let code = match &e {
            Io { .. } => exit::COULD_NOT_RUN,
            ForeignOutput { .. } => exit::REFUSED,
            NoManifest
            | UnknownEnv { .. }
            | Invalid { .. }
            | Unrenderable { .. }
            | TooLarge { .. }
            | BadOutput { .. } => exit::FINDINGS,
        };
        Fail::new(code, e.to_string())
    }
}

impl From<reconciler::daemon::client::ClientError> for Fail {
    fn from(e: reconciler::daemon::client::ClientError) -> Self {
        Fail::new(e.exit_code(), e.to_string())
    }
}
