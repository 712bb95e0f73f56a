//! Test harness: runs the real `sluice` binary on 127.0.0.1 port 0 in a
//! temporary data directory and talks to it over HTTP.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod load;
pub mod mqtt;
pub mod sse;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How [`Gateway::launch`] starts `sluice run`, besides the data directory
/// and config.
#[derive(Default)]
struct Launch<'a> {
    /// Another executable than the one cargo built.
    bin: Option<&'a Path>,
    env: &'a [(&'a str, &'a str)],
    /// Extra `sluice run` arguments.
    args: &'a [&'a str],
    /// Where sluice's stderr goes (inherited without).
    stderr: Option<&'a Path>,
    /// The HTTP client trusts only this CA (PEM).
    ca: Option<&'a Path>,
}

/// A running `sluice run` child process.
pub struct Gateway {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub base: String,
    /// MQTT 3.1.1 listener address.
    pub mqtt: Option<String>,
    /// MQTT 5 listener address, if configured.
    pub mqtt_v5: Option<String>,
    /// The whole `listen.json`.
    pub listen: Value,
    pub http: reqwest::Client,
    config: Option<PathBuf>,
    /// The `sluice` executable: the one cargo built, or an installed copy.
    bin: PathBuf,
}

impl Gateway {
    /// Starts a gateway in `data_dir` with an optional TOML config text.
    pub async fn start(data_dir: &Path, config: Option<&str>) -> Gateway {
        let config = config.map(|text| {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        Self::start_with(data_dir, config).await
    }

    async fn start_with(data_dir: &Path, config: Option<PathBuf>) -> Gateway {
        Self::start_env(data_dir, config, &[]).await
    }

    /// Starts with extra environment variables.
    pub async fn start_env(data_dir: &Path, config: Option<PathBuf>, env: &[(&str, &str)]) -> Gateway {
        Self::started(Self::launch(data_dir, config, Launch { env, ..Launch::default() }).await)
    }

    /// Starts another `sluice` executable (e.g. one installed from a package).
    pub async fn start_bin(
        bin: &Path,
        data_dir: &Path,
        config: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Gateway {
        Self::started(
            Self::launch(data_dir, config, Launch { bin: Some(bin), env, ..Launch::default() }).await,
        )
    }

    /// Starts with a config whose `[http.tls]` certificate is signed by the
    /// CA in the PEM file `ca`; the client trusts that CA only.
    pub async fn start_tls(data_dir: &Path, config: &str, ca: &Path) -> Gateway {
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        Self::started(Self::launch(data_dir, Some(path), Launch { ca: Some(ca), ..Launch::default() }).await)
    }

    fn started(launched: Result<Gateway, std::process::ExitStatus>) -> Gateway {
        launched.unwrap_or_else(|status| panic!("sluice exited during start: {status}"))
    }

    /// Starts with extra `sluice run` arguments; when sluice exits instead
    /// (it must exit non-zero), returns what it wrote to stderr.
    pub async fn try_start(data_dir: &Path, config: Option<&str>, args: &[&str]) -> Result<Gateway, String> {
        let config = config.map(|text| {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let log = data_dir.with_extension("stderr");
        match Self::launch(data_dir, config, Launch { args, stderr: Some(&log), ..Launch::default() }).await {
            Ok(gw) => Ok(gw),
            Err(status) => {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(!status.success(), "sluice exited with success during start: {stderr}");
                Err(stderr)
            }
        }
    }

    async fn launch(
        data_dir: &Path,
        config: Option<PathBuf>,
        how: Launch<'_>,
    ) -> Result<Gateway, std::process::ExitStatus> {
        let Launch { bin, env, args, stderr, ca } = how;
        let bin = bin.unwrap_or(Path::new(env!("CARGO_BIN_EXE_sluice")));
        let _ = std::fs::remove_file(data_dir.join("listen.json"));
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
            .args(args)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match stderr {
            Some(path) => cmd.stderr(std::fs::File::create(path).unwrap()),
            None => cmd.stderr(Stdio::inherit()),
        };
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn sluice");
        Self::connect(data_dir, Some(child), config, bin, ca).await
    }

    /// A gateway that runs inside the test process (`sluice_gateway::run::run`)
    /// and writes its addresses to `data_dir`.
    pub async fn attach(data_dir: &Path) -> Gateway {
        let bin = Path::new(env!("CARGO_BIN_EXE_sluice"));
        Self::started(Self::connect(data_dir, None, None, bin, None).await)
    }

    /// Waits for `listen.json` in `data_dir` and for `/readyz`.
    async fn connect(
        data_dir: &Path,
        mut child: Option<Child>,
        config: Option<PathBuf>,
        bin: &Path,
        ca: Option<&Path>,
    ) -> Result<Gateway, std::process::ExitStatus> {
        let listen = data_dir.join("listen.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        let listen = loop {
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    break v;
                }
            }
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                return Err(status);
            }
            assert!(Instant::now() < deadline, "sluice did not write listen.json");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = listen["http"].as_str().unwrap().to_owned();
        assert!(addr.starts_with("127.0.0.1:"), "listening on {addr}");
        let scheme = if listen["tls"]["http"] == true { "https" } else { "http" };
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(ca) = ca {
            http = http.use_preconfigured_tls(tls_client(ca));
        }
        let gw = Gateway {
            child,
            data_dir: data_dir.to_owned(),
            base: format!("{scheme}://{addr}"),
            mqtt: listen["mqtt"].as_str().map(str::to_owned),
            mqtt_v5: listen["mqtt_v5"].as_str().map(str::to_owned),
            listen,
            http: http.build().unwrap(),
            config,
            bin: bin.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = gw.http.get(gw.url("/readyz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "sluice never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(gw)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Restarts on the same data directory and config.
    pub async fn restart(mut self) -> Gateway {
        self.terminate();
        let config = self.config.take();
        Self::start_bin(&self.bin.clone(), &self.data_dir.clone(), config, &[]).await
    }

    /// SIGKILL, then a fresh start on the same data.
    pub async fn crash_and_restart(mut self) -> Gateway {
        self.kill9();
        let config = self.config.take();
        Self::start_bin(&self.bin.clone(), &self.data_dir.clone(), config, &[]).await
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for an exit already requested with a signal; asserts it is clean.
    pub fn terminate_wait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = c.wait().unwrap();
            assert!(status.success(), "sluice exited with {status}");
        }
    }

    /// Path of the config file, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
            assert!(status.success());
            let status = c.wait().unwrap();
            assert!(status.success(), "sluice exited with {status} after SIGTERM");
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until partition 0 of `topic` holds at least `n` records and
    /// returns them.
    pub async fn wait_records(&self, topic: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, b) = self.get_json(&format!("/v1/topics/{topic}/partitions/0/records?wait_ms=200")).await;
            if s == 200 && b["records"].as_array().is_some_and(|r| r.len() >= n) {
                return b["records"].as_array().unwrap().clone();
            }
            assert!(Instant::now() < deadline, "{topic} never got {n} records: {s} {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one series of `/metrics` (exact name and labels, e.g.
    /// `sluice_mqtt_dropped_total{reason="unrouted"}`); panics when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        self.metric_text(series).await.parse().unwrap()
    }

    /// The value of a gauge with a fractional value (seconds).
    pub async fn metric_f64(&self, series: &str) -> f64 {
        self.metric_text(series).await.parse().unwrap()
    }

    async fn metric_text(&self, series: &str) -> String {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
            .unwrap_or_else(|| panic!("{series} not in /metrics"));
        line.rsplit(' ').next().unwrap().to_owned()
    }

    /// Commits `group` past every record in `records`; asserts 200.
    pub async fn commit(&self, group: &str, records: &[Value]) {
        let offsets = positions_after(records);
        let (status, body) =
            self.post_json(&format!("/v1/groups/{group}/commit"), &json!({ "offsets": offsets })).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Produces JSON values; returns (partition, offset) per record.
    pub async fn produce(&self, topic: &str, values: &[Value]) -> Vec<(u64, u64)> {
        let records: Vec<Value> = values.iter().map(|v| json!({ "value": v })).collect();
        let (status, body) =
            self.post_json(&format!("/v1/topics/{topic}/records"), &json!({ "records": records })).await;
        assert_eq!(status, 200, "{body}");
        self.settle(topic).await;
        offsets(&body)
    }

    /// Waits until every record appended to `topic` so far is durable, so
    /// readers (who see only durable records) see it: a buffered service's
    /// records become visible within `store.flush_interval`.
    pub async fn settle(&self, topic: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.get_json("/v1/topics").await;
            let mut found =
                body["topics"].as_array().into_iter().flatten().filter(|t| t["name"] == topic).peekable();
            let settled = found.peek().is_some()
                && found.all(|t| {
                    t["partitions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|p| p["durable"] == p["high_watermark"])
                });
            if settled {
                return;
            }
            assert!(Instant::now() < deadline, "{topic} never became durable: {body}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs the `sluice` binary to completion; (success, stderr).
pub fn sluice(args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).env("SLUICE_LOG", "off").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A rustls client configuration (ring) trusting only the CAs in `ca`,
/// loaded by sluice's own loader.
pub fn tls_client(ca: &Path) -> rustls::ClientConfig {
    let tls = sluice_config::UplinkTls { ca: Some(ca.to_owned()), cert: None, key: None };
    sluice_config::tls::client_config(&tls, "test").unwrap()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Commit entries past every record in `records` (offset = next to read).
pub fn positions_after(records: &[Value]) -> Vec<Value> {
    let mut next = std::collections::BTreeMap::new();
    for r in records {
        let key = (r["topic"].as_str().unwrap().to_owned(), r["partition"].as_u64().unwrap());
        let e = next.entry(key).or_insert(0);
        *e = (r["offset"].as_u64().unwrap() + 1).max(*e);
    }
    next.iter().map(|((t, p), o)| json!({ "topic": t, "partition": p, "offset": o })).collect()
}

pub fn offsets(body: &Value) -> Vec<(u64, u64)> {
    body["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap()))
        .collect()
}

/// Config text: for each (name, extra service lines), a `[[service]]` and a
/// `[[topic]]` of that name belonging to it.
pub fn service_topics(services: &[(&str, &str)]) -> String {
    services
        .iter()
        .map(|(name, extra)| {
            format!("[[service]]\nname = \"{name}\"\n{extra}\n[[topic]]\nname = \"{name}\"\nservice = \"{name}\"\n")
        })
        .collect()
}
