//! A real Alertmanager (Debian's `prometheus-alertmanager`, API v2) per test: a free loopback
//! port, its own storage directory and a minimal configuration, clustering off, killed on drop.
//! Alerts are posted with `POST /api/v2/alerts`, silences with `POST /api/v2/silences`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::nats::{http_get, http_req, port, wait_until};

/// One route to a receiver that sends nothing: vakt reads alerts through the API.
const CONFIG: &str = "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n\
                      receivers:\n  - name: blackhole\n";

pub struct Alertmanager {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("prometheus-alertmanager")
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("alertmanager.yml"), CONFIG).expect("config");
        let mut am = Alertmanager {
            child: None,
            port: port(),
            dir,
        };
        am.spawn();
        am
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("alertmanager.log")).expect("log");
        let child = Command::new(binary())
            .arg(format!(
                "--config.file={}",
                d.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus-alertmanager (apt-get install prometheus-alertmanager)");
        self.child = Some(child);
        let url = self.url();
        assert!(
            wait_until(Duration::from_secs(30), || http_get(&url, "/-/ready")
                .is_some_and(|(c, _)| c == 200)),
            "alertmanager did not become ready: {}",
            std::fs::read_to_string(d.join("alertmanager.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the process (SIGKILL), keeping its storage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Posts alerts (`[{labels, annotations, startsAt, endsAt}]`).
    pub fn post_alerts(&self, alerts: &serde_json::Value) {
        let (code, body) = http_req(
            &self.url(),
            "POST",
            "/api/v2/alerts",
            None,
            Some(&alerts.to_string()),
        )
        .expect("post alerts");
        assert_eq!(code, 200, "post alerts: {body}");
    }

    /// Creates a silence matching `alertname` exactly; returns its id.
    pub fn silence(&self, alertname: &str, created_by: &str, comment: &str) -> String {
        let body = serde_json::json!({
            "matchers": [{"name": "alertname", "value": alertname, "isRegex": false, "isEqual": true}],
            "startsAt": rfc3339(time_offset(-60)),
            "endsAt": rfc3339(time_offset(3600)),
            "createdBy": created_by,
            "comment": comment,
        });
        let (code, out) = http_req(
            &self.url(),
            "POST",
            "/api/v2/silences",
            None,
            Some(&body.to_string()),
        )
        .expect("post silence");
        assert_eq!(code, 200, "post silence: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("silence JSON");
        v["silenceID"].as_str().expect("silenceID").to_owned()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Unix seconds from now plus `secs`.
pub fn time_offset(secs: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    now + secs
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(unix: i64) -> String {
    // Civil-from-days (Howard Hinnant), enough for test timestamps.
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
