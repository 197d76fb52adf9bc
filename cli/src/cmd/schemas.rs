//! `vakt schemas`.

use std::path::PathBuf;

use crate::fail::{Exit, Fail};
use crate::{exit, output};

/// Write, check or list the JSON Schemas of every document kind.
///
/// The schemas are generated from vakt's own types, so the committed `schemas/` directory, the
/// model and editor completion never disagree. CI runs `vakt schemas --check`.
///
/// Examples:
///   vakt schemas --list
///   vakt schemas --write --dir schemas
///   vakt schemas --check --dir schemas
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct SchemasOpts {
    /// Directory of the schema files.
    #[arg(long, default_value = "schemas", value_name = "DIR")]
    pub dir: PathBuf,
    /// Write every schema into --dir.
    #[arg(long, conflicts_with_all = ["check", "list"])]
    pub write: bool,
    /// Exit 1 if a file in --dir differs from the generated schema.
    #[arg(long, conflicts_with = "list")]
    pub check: bool,
    /// List the kinds, their schema ids and where their documents live.
    #[arg(long)]
    pub list: bool,
}

pub fn run(o: SchemasOpts) -> Exit {
    let mut files = opsrepo::kinds::schema_files();
    // Live snippet schemas live in a subdirectory: `schemas/snippets/<name>.schema.json`.
    files.extend(opsrepo::snippets::schema_files());
    if o.write {
        if let Err(e) = std::fs::create_dir_all(&o.dir) {
            return Err(Fail::new(
                exit::COULD_NOT_RUN,
                format!("failed to create {}: {e}", o.dir.display()),
            ));
        }
        for (name, text) in &files {
            let p = o.dir.join(name);
            if let Some(parent) = p.parent()
                && let Err(e) = std::fs::create_dir_all(parent)
            {
                return Err(Fail::new(
                    exit::COULD_NOT_RUN,
                    format!("failed to create {}: {e}", parent.display()),
                ));
            }
            if let Err(e) = std::fs::write(&p, text) {
                return Err(Fail::new(
                    exit::COULD_NOT_RUN,
                    format!("failed to write {}: {e}", p.display()),
                ));
            }
        }
        output::print(&format!(
            "wrote {} schemas to {}\n",
            files.len(),
            o.dir.display()
        ));
        return Ok(exit::OK);
    }
    if o.check {
        let mut stale = Vec::new();
        for (name, text) in &files {
            let p = o.dir.join(name);
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                stale.push(p.display().to_string());
            }
        }
        if stale.is_empty() {
            output::print(&format!("{} schemas up to date\n", files.len()));
            return Ok(exit::OK);
        }
        return Err(Fail::new(
            exit::FINDINGS,
            format!(
                "schemas differ from the model: {}\nrun `vakt schemas --write --dir {}`",
                stale.join(", "),
                o.dir.display()
            ),
        ));
    }
    let mut s = String::new();
    for k in opsrepo::Kind::WITH_SCHEMA {
        s.push_str(&format!(
            "{:<20} {:<52} {}\n",
            k.name(),
            k.schema_id(),
            k.description()
        ));
    }
    s.push_str(&format!(
        "{:<20} {:<52} {}\n",
        "runbook",
        "(markdown; sections checked by rules)",
        opsrepo::Kind::Runbook.description()
    ));
    output::print(&s);
    Ok(exit::OK)
}
