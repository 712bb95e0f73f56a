//! A real Mosquitto broker and a real `mosquitto_sub` subscriber, from
//! Debian's mosquitto and mosquitto-clients packages (installed by
//! deploy/install-test-peers.sh), on 127.0.0.1.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const INSTALL: &str = "install them with deploy/install-test-peers.sh";

/// Failure guard for waits on the broker and the subscriber (not a
/// measurement: a healthy run takes milliseconds).
pub const GUARD: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A Mosquitto broker in a child process; killed on drop.
pub struct Mosquitto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port(), "")
    }

    /// Starts a broker on `port` with extra configuration lines, and waits
    /// until it accepts connections.
    pub fn start_on(port: u16, extra_config: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "the MQTT sink tests need the Mosquitto broker at {MOSQUITTO}; {INSTALL}"
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n{extra_config}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO}: {e}; {INSTALL}"));
        let mut m = Mosquitto { port, child: Some(child), dir };
        m.wait_ready();
        m
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + GUARD;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("mosquitto exited with {status} on port {}: {}", self.port, self.log());
            }
            assert!(Instant::now() < deadline, "mosquitto never listened on {}: {}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker: frozen, it keeps
    /// its connections open but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {pid} failed");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // SIGKILL also ends a frozen (stopped) broker.
        self.kill();
    }
}

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5 user properties, `name:value` split at the first colon
    /// (values must not contain spaces: mosquitto_sub separates them by one).
    pub properties: Vec<(String, String)>,
}

/// `mosquitto_sub -V mqttv5 -q 1` printing topic, hex payload and user
/// properties, one line per message; killed on drop.
pub struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Subscribes to `filter` on the broker at `port`.
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5", "-q", "1"])
            .args(["-i", &format!("test-sub-{port}"), "-t", filter, "-F", "%t\t%x\t%P"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto_sub: {e}; {INSTALL}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber { child, lines }
    }

    /// The next message, or None if none arrives within `wait`.
    pub fn next_within(&self, wait: Duration) -> Option<Message> {
        let line = self.lines.recv_timeout(wait).ok()?;
        let mut parts = line.splitn(3, '\t');
        let topic = parts.next().unwrap_or_default().to_owned();
        let hex = parts.next().unwrap_or_default();
        let payload =
            (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let properties = parts
            .next()
            .unwrap_or_default()
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once(':').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Some(Message { topic, payload, properties })
    }

    /// The next message; fails the test after [`GUARD`].
    pub fn next(&self) -> Message {
        self.next_within(GUARD).expect("mosquitto_sub printed no message in time")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
