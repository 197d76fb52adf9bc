//! Page templates (minijinja): built in with `include_str!`, each overridable by a file of the
//! same name in `--templates DIR`. Every template is compiled before anything is rendered, so a
//! syntax error fails the build with its file and line.

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::SiteError;

macro_rules! builtin {
    ($($name:literal),* $(,)?) => {
        /// Names of the built-in templates (the files `--templates DIR` may override).
        pub const TEMPLATE_NAMES: &[&str] = &[$($name),*];
        pub(crate) fn builtin(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../templates/", $name))),)*
                _ => None,
            }
        }
    };
}

builtin!(
    "base.html",
    "macros.html",
    "index.html",
    "ops.html",
    "tasks.html",
    "events.html",
    "health.html",
    "inventory.html",
    "sites.html",
    "dr.html",
    "runbooks.html",
    "runbooks_by_group.html",
    "runbooks_by_owner.html",
    "runbook.html",
    "maps.html",
    "dashboards.html",
    "search.html",
);

pub struct Templates {
    env: Environment<'static>,
    overrides: Option<PathBuf>,
}

impl Templates {
    pub fn new(overrides: Option<&Path>) -> Result<Self, SiteError> {
        if let Some(dir) = overrides
            && !dir.is_dir()
        {
            return Err(SiteError::Template {
                file: dir.display().to_string(),
                line: None,
                message: "--templates is not a directory".into(),
            });
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let dir = overrides.map(Path::to_owned);
        let loader_dir = dir.clone();
        env.set_loader(move |name| {
            if let Some(d) = &loader_dir {
                // names are plain file names: no separators, no dot-files
                if !name.contains(['/', '\\']) && !name.starts_with('.') {
                    let p = d.join(name);
                    match std::fs::read_to_string(&p) {
                        Ok(s) => return Ok(Some(s)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(minijinja::Error::new(
                                minijinja::ErrorKind::InvalidOperation,
                                format!("failed to read {}: {e}", p.display()),
                            ));
                        }
                    }
                }
            }
            Ok(builtin(name).map(str::to_owned))
        });
        let t = Templates {
            env,
            overrides: dir,
        };
        for name in TEMPLATE_NAMES {
            t.env.get_template(name).map_err(|e| t.error(e))?;
        }
        Ok(t)
    }

    /// Renders template `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, SiteError> {
        let tmpl = self.env.get_template(name).map_err(|e| self.error(e))?;
        tmpl.render(ctx).map_err(|e| self.error(e))
    }

    fn file_of(&self, name: &str) -> String {
        match &self.overrides {
            Some(d) if d.join(name).is_file() => d.join(name).display().to_string(),
            _ => format!("(built-in) {name}"),
        }
    }

    fn error(&self, e: minijinja::Error) -> SiteError {
        let name = e.name().unwrap_or("?").to_owned();
        let mut message = e.kind().to_string();
        if let Some(d) = e.detail() {
            message = format!("{message}: {d}");
        }
        // errors raised inside an included/extended template name the innermost one
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}; caused by: {s}");
            source = s.source();
        }
        SiteError::Template {
            file: self.file_of(&name),
            line: e.line(),
            message,
        }
    }
}
