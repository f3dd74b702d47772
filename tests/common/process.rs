//! The real `unpoll` binary as a child process, for signals, exit codes and memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_unpoll")
}

/// A running `unpoll --config FILE` process.
pub struct Spawned {
    /// The child process.
    pub child: Child,
    /// Main listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The config file it was started with (rewrite it, then `signal("HUP")`).
    pub config: PathBuf,
    /// Everything it logged so far.
    pub log: Arc<Mutex<String>>,
    /// The task reading its stderr; aborting it closes the pipe's read end.
    log_reader: tokio::task::JoinHandle<()>,
    /// Tells that task to stop reading while keeping the pipe open.
    pause: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Write `config` to a temp file and start the binary on it; waits for its
    /// `listening` log line (listen on port 0 to get free ports).
    pub async fn start(config: &str) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unpoll.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn unpoll");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        let pause = Arc::new(tokio::sync::Notify::new());
        let paused = pause.clone();
        let log_reader = tokio::spawn(async move {
            loop {
                let line = tokio::select! {
                    line = lines.next_line() => line,
                    _ = paused.notified() => {
                        // Keep the pipe open, never read again.
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                };
                let Ok(Some(line)) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let addrs = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if line.contains("listening") {
                    return Some((field(&line, "main="), field(&line, "admin=")));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("unpoll did not start; log:\n{}", log.lock().unwrap()));
        Spawned {
            child,
            addr: addrs.0,
            admin: addrs.1,
            config: path,
            log,
            log_reader,
            pause,
            _dir: dir,
        }
    }

    /// Send a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([format!("-{name}").as_str(), pid.as_str()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Stop reading its stderr and close the pipe: its next log write fails with EPIPE.
    pub async fn close_stderr(&mut self) {
        self.log_reader.abort();
        // Wait until the task, and with it the pipe's read end, is dropped.
        let _ = (&mut self.log_reader).await;
    }

    /// Stop reading its stderr but keep the pipe open: once the pipe buffer is full its log
    /// writes would block.
    pub fn pause_stderr(&self) {
        self.pause.notify_one();
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// Resident memory now (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// The rendered `/metrics` text of the admin listener.
    pub async fn metrics(&self) -> String {
        crate::common::get_text(&format!("http://{}/metrics", self.admin)).await
    }

    /// `http://ADDR{path}` on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// `key=value` of a text log line, or `"key": "value"` of a JSON one.
fn field(line: &str, key: &str) -> SocketAddr {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        let name = key.trim_end_matches('=');
        return v[name]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {name} in {line:?}"));
    }
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {line:?}"))
        + key.len();
    line[start..]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {key} in {line:?}"))
}
