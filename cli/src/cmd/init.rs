//! `vakt init`.

use std::path::{Path, PathBuf};

use crate::fail::{Exit, Fail};
use crate::{exit, output};

/// Create a new ops repo: manifest, schemas and a minimal example that validates clean.
///
/// DIR must not exist or must be empty. Files are written to a temporary directory beside DIR
/// and moved into place at the end, so a failure leaves nothing half-written.
///
/// Also writes the repo's CI: .github/workflows/vakt-validate.yml (pull requests: annotations,
/// promotion order, the plan as comments split below GitHub's size limit) and vakt-drift.yml
/// (scheduled: one issue per drifted environment, closed when it is in sync again). Both install
/// this version of vakt (VAKT_VERSION) instead of building it; add one drift matrix entry per
/// environment and the NATS_URL / NATS_CREDS secrets per GitHub environment.
///
/// Example:
///   vakt init ops && cd ops && git init -b env/dev && vakt validate
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct InitOpts {
    /// Directory to create.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(o: InitOpts) -> Exit {
    let n = init(&o.dir).map_err(Fail::could_not_run)?;
    output::print(&format!(
        "created {} with {n} files\nnext: cd {} && vakt validate\n",
        o.dir.display(),
        o.dir.display()
    ));
    Ok(exit::OK)
}

fn init(dir: &Path) -> Result<usize, String> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("failed to read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} exists and is not empty; choose a new directory",
                dir.display()
            ));
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ops".into());
    let tmp = parent.join(format!(".{name}.vakt-init-{}", std::process::id()));
    let result = (|| {
        let today = super::today().to_string();
        let mut files = opsrepo::scaffold::files(&today);
        files.extend(
            opsrepo::kinds::schema_files()
                .into_iter()
                .map(|(n, t)| (format!("schemas/{n}"), t)),
        );
        for (rel, text) in &files {
            let p = tmp.join(rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("failed to create {}: {e}", d.display()))?;
            }
            std::fs::write(&p, text)
                .map_err(|e| format!("failed to write {}: {e}", p.display()))?;
        }
        if dir.exists() {
            std::fs::remove_dir(dir)
                .map_err(|e| format!("failed to replace {}: {e}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir)
            .map_err(|e| format!("failed to move files into {}: {e}", dir.display()))?;
        Ok(files.len())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
