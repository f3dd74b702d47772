//! MQTT test helpers: a publisher on the machine's broker (`MQTT_URL`, default
//! mqtt://127.0.0.1:1883) and private Mosquitto instances a test can kill and restart.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The shared broker's URL.
pub fn broker_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_string())
}

/// Host and port of `broker_url()`.
pub fn broker_addr() -> SocketAddr {
    let url = broker_url();
    let hostport = url
        .strip_prefix("mqtt://")
        .unwrap_or(&url)
        .trim_end_matches('/');
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:1883")
    };
    hostport
        .parse()
        .unwrap_or_else(|_| panic!("MQTT_URL {url:?}: write mqtt://IP:PORT"))
}

/// A test publisher: QoS 1 publishes wait for the broker's PUBACK, so a message is at the
/// broker when `publish` returns.
pub struct Publisher {
    client: AsyncClient,
    acks: mpsc::Receiver<()>,
}

impl Publisher {
    /// Connect to `addr` (clean session), or panic with a clear message when no broker
    /// answers.
    pub async fn connect(addr: SocketAddr) -> Publisher {
        let id = super::pg::unique("pub");
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (ack_tx, acks) = mpsc::channel(1024);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(()).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(Ok(Ok(()))) => Publisher { client, acks },
            other => panic!(
                "no MQTT broker reachable at {addr} ({other:?}): start Mosquitto \
                 (`.ci/run` does) or set MQTT_URL"
            ),
        }
    }

    /// Connect to the shared broker.
    pub async fn shared() -> Publisher {
        Publisher::connect(broker_addr()).await
    }

    /// Publish at QoS 1 and wait for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue publish");
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("PUBACK in time")
            .expect("publisher event loop alive");
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A private Mosquitto without persistence on its own port: killing and restarting it
/// loses every session, as a real broker restart without persistence does.
pub struct Mosquitto {
    /// Where it listens.
    pub addr: SocketAddr,
    conf: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn mosquitto_binary() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto")
}

impl Mosquitto {
    /// Start on `port` and wait until it accepts connections.
    pub async fn start(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            child: None,
            _dir: dir,
        };
        m.restart().await;
        m
    }

    /// Kill it (sessions and queued messages are gone: no persistence).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Start it again on the same port, and wait until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({}): {e}", mosquitto_binary()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "private mosquitto did not listen on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
