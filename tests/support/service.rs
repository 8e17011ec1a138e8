//! Runs the real `swapstats` binary as a child process for end-to-end tests:
//! free ports, log capture, readiness waits, `kill -9`, and JSON over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A running `swapstats` process; killed on drop.
pub struct Service {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Service {
    /// Starts `swapstats ARGS` with `SWAPSTATS__HTTP__ADDR` on a free port plus `env`.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("swapstats-test-{}-{port}.log", std::process::id()));
        let mut service = Self {
            child: None,
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log,
        };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_swapstats"))
            .args(&self.args)
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SWAPSTATS__HTTP__ADDR", format!("127.0.0.1:{}", self.port))
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start swapstats");
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ws://127.0.0.1:PORT/ws...`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{query}", self.port)
    }

    /// SIGKILL, no cleanup: the crash a test wants.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit, and
    /// asserts it exited cleanly (the graceful shutdown path).
    pub async fn terminate(&mut self, timeout: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.wait_exit("after SIGTERM", timeout).await;
        assert!(
            status.success(),
            "exit after SIGTERM: {status}\n{}",
            self.log_tail()
        );
    }

    /// Waits up to `timeout` for the process to exit on its own; panics with
    /// the log if it keeps running (`when` says when an exit was due).
    pub async fn wait_exit(&mut self, when: &str, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {timeout:?} {when}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the same command again on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit status once the process has ended on its own.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process's log so far (for assertion messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(12000);
        text[text.floor_char_boundary(start)..].to_string()
    }

    /// Waits until `path` answers 200, panicking with the log after `timeout`.
    pub async fn wait_ok(&mut self, path: &str, timeout: Duration) {
        self.wait_until(&format!("{path} OK"), timeout, async |service| {
            matches!(get_json(&service.url(path)).await, Ok((200, _)))
        })
        .await;
    }

    /// Polls `done` every 100 ms until it holds; panics with the log if the
    /// process exits or `timeout` passes first (`what` names the condition).
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl AsyncFnMut(&Service) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self).await {
            assert!(self.is_running(), "swapstats exited:\n{}", self.log_tail());
            assert!(
                Instant::now() < deadline,
                "not {what} after {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// GET `url` with the tests' timeout.
async fn get(url: &str) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
}

/// GET `url` → (status, JSON body).
pub async fn get_json(url: &str) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = get(url).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// GET `url` → (status, body text).
pub async fn get_text(url: &str) -> Result<(u16, String), reqwest::Error> {
    let response = get(url).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Parses Prometheus text exposition strictly enough to catch malformed output:
/// returns (series with labels, value) for every sample line.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP") | Some(&"TYPE")),
                "bad comment line: {line}"
            );
            if words[0] == "TYPE" {
                assert!(
                    matches!(
                        words.get(2),
                        Some(&"counter" | &"gauge" | &"histogram" | &"summary" | &"untyped")
                    ),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        samples.push((series.to_string(), value));
    }
    samples
}

/// Sum of all samples whose series starts with `prefix`.
pub fn metric_sum(samples: &[(String, f64)], prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}
