//! The ops repo: a typed model of every document kind, read from a work tree or a Git commit,
//! with schema and governance validation that reports findings with source spans.

pub mod cache;
pub mod diag;
#[cfg(feature = "http")]
pub mod http;
pub mod import;
pub mod kinds;
pub mod load;
pub mod model;
pub mod parse;
pub mod render;
pub mod report;
pub mod rules;
pub mod scaffold;
pub mod snippets;
pub mod source;
mod tree_memo;
pub mod validate;

pub use diag::{Finding, Pos, Severity};
pub use kinds::Kind;
pub use source::{RepoFiles, SourceError, read_commit, read_work_tree};
pub use validate::{Report, ValidateOptions, validate};
