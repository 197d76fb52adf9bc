//! A real vmalert per test (Debian's `victoria-metrics` package): a free loopback port, its own
//! directory, the rule files a test gives it (e.g. what `vakt render` wrote), evaluating
//! against a VictoriaMetrics and notifying an Alertmanager; killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::nats::{http_get, port, wait_until};

pub struct Vmalert {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Vmalert {
    /// Starts vmalert over `rules` (a file or glob), querying `datasource` (a VictoriaMetrics
    /// base URL), writing recording rules' results back to it (`-remoteWrite.url`, which
    /// vmalert requires when there are recording rules) and sending alerts to `notifier` (an
    /// Alertmanager base URL); groups without their own `interval` are evaluated every
    /// `every`. Waits until it answers `/health`.
    pub fn start(rules: &Path, datasource: &str, notifier: &str, every: Duration) -> Vmalert {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = port();
        let log = std::fs::File::create(dir.path().join("vmalert.log")).expect("log");
        let child = Command::new("vmalert")
            .arg(format!("-rule={}", rules.display()))
            .arg(format!("-datasource.url={datasource}"))
            .arg(format!("-remoteWrite.url={datasource}"))
            .arg(format!("-notifier.url={notifier}"))
            .arg(format!(
                "-evaluationInterval={}ms",
                every.as_millis().max(1)
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-loggerOutput=stderr")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vmalert (apt-get install victoria-metrics)");
        let v = Vmalert {
            child: Some(child),
            port,
            dir,
        };
        let up = wait_until(Duration::from_secs(20), || {
            http_get(&v.url(), "/health").is_some_and(|(c, _)| c == 200)
        });
        assert!(up, "vmalert did not start:\n{}", v.log());
        v
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmalert.log")).unwrap_or_default()
    }

    /// vmalert's own view of its alerts (`/api/v1/alerts`), for assertion messages.
    pub fn alerts(&self) -> String {
        http_get(&self.url(), "/api/v1/alerts")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Vmalert {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
