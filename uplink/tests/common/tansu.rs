//! A tansu broker (Kafka protocol) as a child process on 127.0.0.1, with
//! its data in a temporary sqlite file, so it can be stopped and started
//! again on the same data.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Failure guard for a broker to accept connections (not a speed
/// expectation).
const START_GUARD: Duration = Duration::from_secs(60);

/// The tansu binary: `SLUICE_TANSU`, else where `deploy/install-tansu.sh`
/// installs it.
pub(crate) fn tansu_bin() -> PathBuf {
    let default = super::cache_dir().join("tansu-0.6.0").join("bin").join("tansu");
    super::peer("SLUICE_TANSU", default, "the tansu broker", "deploy/install-tansu.sh")
}

/// A running (or stopped) tansu broker; killed on drop.
#[derive(Debug)]
pub(crate) struct Tansu {
    bin: PathBuf,
    dir: TempDir,
    /// Where it listens.
    port: u16,
    /// What it advertises to clients (a TLS front's port, or `port`).
    advertised_port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub(crate) fn start() -> Tansu {
        Tansu::start_with(&[], None)
    }

    /// Starts a broker with extra `args` (e.g. `--authentication`) that
    /// advertises `advertised_port` instead of its own (for a proxy in
    /// front of it).
    pub(crate) fn start_with(args: &[&str], advertised_port: Option<u16>) -> Tansu {
        let dir = tempfile::Builder::new().prefix("sluice-tansu-").tempdir().expect("temp dir");
        let mut tansu = Tansu {
            bin: tansu_bin(),
            dir,
            port: 0,
            advertised_port: 0,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        // Another process may take the free port between the probe and
        // tansu's bind; then tansu exits and another port is tried.
        for _ in 0..5 {
            tansu.port = free_port();
            tansu.advertised_port = advertised_port.unwrap_or(tansu.port);
            if tansu.spawn() {
                return tansu;
            }
        }
        panic!("tansu did not start; its log:\n{}", tansu.log());
    }

    /// `127.0.0.1:port`, where the broker listens.
    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's own port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker (SIGKILL: a crash, not a clean shutdown). Its data
    /// stays.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data, with `args`.
    pub(crate) fn restart_with(&mut self, args: &[&str]) {
        self.stop();
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        assert!(self.spawn(), "tansu did not restart on port {}; its log:\n{}", self.port, self.log());
    }

    /// Starts the broker again on the same port and data.
    pub(crate) fn restart(&mut self) {
        let args = self.args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.restart_with(&args);
    }

    /// Runs `tansu ARGS...` (e.g. `user create`) to completion; panics
    /// with its output when it fails.
    pub(crate) fn run(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run tansu");
        assert!(
            out.status.success(),
            "tansu {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The broker's output so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Starts the process and waits until it accepts connections; false
    /// when it exited first.
    fn spawn(&mut self) -> bool {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log file");
        let err = log.try_clone().expect("tansu log file");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{}", self.advertised_port)]);
        if !self.args.iter().any(|a| a == "--storage-engine") {
            // Relative to the working directory: the temporary directory.
            cmd.args(["--storage-engine", "sqlite://tansu.db"]);
        }
        cmd.arg("--silent")
            .args(&self.args)
            .current_dir(self.dir.path())
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if started.elapsed() > START_GUARD {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tansu did not listen on {} within {START_GUARD:?}; log:\n{}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // The test failed: the broker's side helps (TANSU_LOG=debug for more).
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the tansu log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
