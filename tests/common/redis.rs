//! Redis for the cluster tests: the machine's (`REDIS_URL`, default 127.0.0.1:6379) with a
//! key prefix of its own per test, or a private `redis-server` on a free port that a test
//! can kill and restart.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The shared Redis of this machine.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string())
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("test:{name}:{}:{nanos}:", std::process::id())
}

/// A private Redis without persistence: killing it loses every key, as a real restart of
/// an unpersisted Redis does.
pub struct PrivateRedis {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start on a free port and wait until it answers.
    pub async fn start() -> PrivateRedis {
        let port = super::mqtt::free_port();
        let mut r = PrivateRedis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        r.restart().await;
        r
    }

    /// `redis://` URL of it.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Kill it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Start it again on the same port (empty), and wait until it answers.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
