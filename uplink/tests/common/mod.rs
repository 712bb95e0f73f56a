//! Real peers for the Kafka sink tests: a tansu broker ([`tansu`]), a TLS
//! front for it ([`tls`]), and an independent reader, confluent-kafka
//! (librdkafka) through `deploy/kafka-check.py`.
//!
//! Where they are: `SLUICE_TANSU` (the tansu binary) and `SLUICE_PYTHON`
//! (the venv python with confluent-kafka), which `deploy/test.sh` sets; else
//! the default paths under `${SLUICE_CACHE:-$HOME/.cache/sluice}` where
//! `deploy/install-tansu.sh` and `deploy/install-test-peers.sh` put them. A
//! missing peer fails the test with the command that installs it.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

pub(crate) mod tansu;
pub(crate) mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sluice_uplink::{Batch, OutRecord};

/// Failure guard for reading records back (not a speed expectation).
pub(crate) const READ_GUARD: Duration = Duration::from_secs(150);

/// `${SLUICE_CACHE:-$HOME/.cache/sluice}`.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set SLUICE_CACHE instead");
    Path::new(&home).join(".cache").join("sluice")
}

/// A peer's path from `var`, else `default`; panics with the install
/// command when it is not there.
pub(crate) fn peer(var: &str, default: PathBuf, what: &str, install: &str) -> PathBuf {
    let path = std::env::var_os(var).filter(|p| !p.is_empty()).map_or(default, PathBuf::from);
    assert!(
        path.is_file(),
        "{what} not found at {} (from {var} or the default path): run {install} (deploy/test.sh runs it \
         and sets {var})",
        path.display()
    );
    path
}

/// The python of the venv that has confluent-kafka.
pub(crate) fn python() -> PathBuf {
    let default = cache_dir().join("venv").join("bin").join("python");
    peer("SLUICE_PYTHON", default, "python with confluent-kafka", "deploy/install-test-peers.sh")
}

/// One record as confluent-kafka read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Consumed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    /// In the order they came, repeated names kept.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) timestamp: i64,
    pub(crate) timestamp_type: String,
}

/// What `deploy/kafka-check.py` found: the records (in partition, then
/// offset order) and its exit status.
#[derive(Debug)]
pub(crate) struct Read {
    pub(crate) records: Vec<Consumed>,
    pub(crate) status: Option<i32>,
    pub(crate) stderr: String,
}

/// Reads `topic` from the beginning with confluent-kafka until at least
/// `count` records came and every partition is at its end.
pub(crate) async fn read_topic(bootstrap: &str, topic: &str, count: usize) -> Read {
    read_topic_with(bootstrap, topic, count, &[]).await
}

/// [`read_topic`] with more options of `deploy/kafka-check.py` (TLS, SASL).
pub(crate) async fn read_topic_with(bootstrap: &str, topic: &str, count: usize, options: &[&str]) -> Read {
    let mut args = vec!["--count".to_owned(), count.to_string()];
    args.extend(options.iter().map(|o| (*o).to_owned()));
    let (stdout, status, stderr) = kafka_check(bootstrap, topic, args).await;
    Read { records: stdout.lines().map(parse_line).collect(), status, stderr }
}

/// `(partition, low, high)` watermarks of every partition of `topic`, as
/// the broker reports them (no records are fetched).
pub(crate) async fn watermarks(bootstrap: &str, topic: &str) -> Vec<(i32, i64, i64)> {
    let (stdout, status, stderr) = kafka_check(bootstrap, topic, vec!["--watermarks".to_owned()]).await;
    assert_eq!(status, Some(0), "kafka-check --watermarks failed on {topic:?}: {stderr}");
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let field = |name: &str| v[name].as_i64().expect("watermark field");
            (i32::try_from(field("partition")).expect("partition"), field("low"), field("high"))
        })
        .collect()
}

/// Runs `deploy/kafka-check.py` with the venv's python: stdout, exit
/// status, stderr.
async fn kafka_check(bootstrap: &str, topic: &str, args: Vec<String>) -> (String, Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka-check.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--timeout", &READ_GUARD.as_secs().to_string()])
        .args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run deploy/kafka-check.py");
    let stdout = String::from_utf8(output.stdout).expect("kafka-check prints UTF-8");
    (stdout, output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// [`read_topic`] that must find `count` records or more.
pub(crate) async fn read_all(bootstrap: &str, topic: &str, count: usize) -> Vec<Consumed> {
    read_all_with(bootstrap, topic, count, &[]).await
}

/// [`read_topic_with`] that must find `count` records or more.
pub(crate) async fn read_all_with(
    bootstrap: &str,
    topic: &str,
    count: usize,
    options: &[&str],
) -> Vec<Consumed> {
    let read = read_topic_with(bootstrap, topic, count, options).await;
    assert_eq!(
        read.status,
        Some(0),
        "kafka-check failed on {topic:?} (exit 1: too few records; 2: no such topic or a client error; \
         other: is confluent-kafka installed? run deploy/install-test-peers.sh): {}",
        read.stderr
    );
    read.records
}

fn parse_line(line: &str) -> Consumed {
    let v: serde_json::Value = serde_json::from_str(line).expect("kafka-check prints JSON lines");
    let bytes = |v: &serde_json::Value| v.as_str().map(|s| B64.decode(s).expect("base64"));
    Consumed {
        partition: v["partition"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("partition"),
        offset: v["offset"].as_i64().expect("offset"),
        key: bytes(&v["key_b64"]),
        value: bytes(&v["value_b64"]),
        headers: v["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| (h[0].as_str().expect("name").to_owned(), bytes(&h[1]).unwrap_or_default()))
            .collect(),
        timestamp: v["timestamp"].as_i64().expect("timestamp"),
        timestamp_type: v["timestamp_type"].as_str().expect("timestamp_type").to_owned(),
    }
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

/// A batch of local `topic`/`partition` (of `partitions`) with the records
/// at `offsets`, bound for `remote_topic`. Records vary: keyless ones, an
/// empty value, binary values, their own headers plus provenance headers
/// as the worker adds them.
pub(crate) fn batch(
    topic: &str,
    remote_topic: &str,
    partition: u32,
    partitions: u32,
    offsets: std::ops::Range<u64>,
) -> Batch {
    let base = now_ms();
    let records = offsets
        .map(|offset| {
            let key = (offset % 5 != 4).then(|| format!("dev-{partition}-{}", offset % 3).into_bytes());
            let value = match offset % 7 {
                3 => Vec::new(),
                6 => vec![0, 159, 146, 150, 255, offset as u8],
                _ => {
                    format!(r#"{{"offset":{offset},"temp":{},"pad":"{}"}}"#, 20 + offset % 9, "x".repeat(40))
                        .into_bytes()
                }
            };
            let headers = vec![
                ("content-type".to_owned(), b"application/json".to_vec()),
                ("sluice.node".to_owned(), b"pi-01".to_vec()),
                ("sluice.service".to_owned(), b"telemetry".to_vec()),
                ("sluice.topic".to_owned(), topic.as_bytes().to_vec()),
                ("sluice.partition".to_owned(), partition.to_string().into_bytes()),
                ("sluice.offset".to_owned(), offset.to_string().into_bytes()),
            ];
            OutRecord { offset, key, value, headers, timestamp_ms: base - 60_000 + offset as i64 }
        })
        .collect();
    Batch {
        topic: topic.to_owned(),
        partition,
        partitions,
        remote_topic: remote_topic.to_owned(),
        service: "telemetry".to_owned(),
        records,
    }
}

/// Asserts that `got` (one remote partition, in offset order) holds exactly
/// `sent`, in order, with key, value, timestamp and headers.
#[track_caller]
pub(crate) fn assert_same(sent: &[&OutRecord], got: &[&Consumed]) {
    assert_eq!(got.len(), sent.len(), "record count");
    for (i, (s, g)) in sent.iter().zip(got).enumerate() {
        assert_eq!(g.key, s.key, "key of record {i}");
        assert_eq!(g.value.as_deref(), Some(&s.value[..]), "value of record {i}");
        assert_eq!(g.timestamp, s.timestamp_ms, "timestamp of record {i}");
        assert_eq!(g.timestamp_type, "create", "timestamp type of record {i}");
        let mut want = s.headers.clone();
        want.sort();
        let mut have = g.headers.clone();
        have.sort();
        assert_eq!(have, want, "headers of record {i}");
    }
    let offsets: Vec<i64> = got.iter().map(|g| g.offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase: {offsets:?}");
}
