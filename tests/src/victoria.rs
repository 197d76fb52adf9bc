//! A real VictoriaMetrics single-node server per test (Debian's `victoria-metrics`): a free
//! loopback port, its own data directory, a `-promscrape.config` the test writes, killed on
//! drop. Queries go through its Prometheus API (`/api/v1/query`), so alert expressions are
//! evaluated by a real PromQL engine over really scraped samples.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One scrape target: `host:port` and the target labels the scrape configuration attaches
/// (`env`, `site`, `service`, `node`, `shard`, as `vakt render` generates them).
pub struct Target {
    pub address: String,
    pub labels: Vec<(String, String)>,
}

/// One series of an instant query's result: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

pub struct VictoriaMetrics {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    /// Starts a server scraping `targets` (job `platform`) every `interval`, and waits until it
    /// answers `/health`.
    pub fn start(targets: &[Target], interval: Duration) -> VictoriaMetrics {
        VictoriaMetrics::start_on(crate::nats::port(), targets, interval)
    }

    /// As [`VictoriaMetrics::start`], on a port chosen beforehand (a client configured before
    /// the server exists).
    pub fn start_on(port: u16, targets: &[Target], interval: Duration) -> VictoriaMetrics {
        VictoriaMetrics::start_with_config_on(port, &scrape_config(targets, interval))
    }

    /// Starts a server with `config_text` as its `-promscrape.config` (e.g. what `vakt render`
    /// wrote), and waits until it answers `/health`.
    pub fn start_with_config(config_text: &str) -> VictoriaMetrics {
        VictoriaMetrics::start_with_config_on(crate::nats::port(), config_text)
    }

    fn start_with_config_on(port: u16, config_text: &str) -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("scrape.yml");
        std::fs::write(&config, config_text).expect("scrape config");
        let mut vm = VictoriaMetrics {
            child: None,
            port,
            dir,
        };
        vm.spawn();
        vm
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("victoria-metrics.log"))
            .expect("log");
        let child = Command::new("victoria-metrics")
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!(
                "-promscrape.config={}",
                self.dir.path().join("scrape.yml").display()
            ))
            // Samples are visible to queries as soon as they are stored (default: 30 s later).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-loggerOutput=stderr")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start victoria-metrics (apt-get install victoria-metrics)");
        self.child = Some(child);
        let up = crate::nats::wait_until(Duration::from_secs(20), || {
            crate::nats::http_get(&self.url(), "/health").is_some_and(|(c, _)| c == 200)
        });
        assert!(up, "victoria-metrics did not start:\n{}", self.log());
    }

    /// Kills the server (SIGKILL); its data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the killed server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("victoria-metrics.log")).unwrap_or_default()
    }

    /// Evaluates a PromQL / MetricsQL expression at the current time.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let body = self.api("/api/v1/query", &[("query", expr)])?;
        let result = body["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no data.result in {body}"))?;
        Ok(result
            .iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// The metric names stored so far (`/api/v1/label/__name__/values`).
    pub fn names(&self) -> Result<Vec<String>, String> {
        let body = self.api("/api/v1/label/__name__/values", &[])?;
        Ok(body["data"]
            .as_array()
            .ok_or_else(|| format!("no data in {body}"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// POSTs a form to the HTTP API and returns the JSON answer.
    fn api(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("{}{path}", self.url());
        crate::nats::rt().block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let r = client
                .post(&url)
                .form(form)
                .send()
                .await
                .map_err(|e| format!("failed to call victoria-metrics {path}: {e}"))?;
            let status = r.status();
            let text = r.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("victoria-metrics {path} answered {status}: {text}"));
            }
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
        })
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Prometheus-style scrape configuration with one static target per entry.
fn scrape_config(targets: &[Target], interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut s = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\nscrape_configs:\n  - job_name: platform\n    static_configs:\n"
    );
    for t in targets {
        s.push_str(&format!("      - targets: [{:?}]\n", t.address));
        if !t.labels.is_empty() {
            s.push_str("        labels:\n");
            for (k, v) in &t.labels {
                s.push_str(&format!("          {k}: {v:?}\n"));
            }
        }
    }
    s
}
