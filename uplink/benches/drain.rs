//! Drain benchmark (issue 17), a benchmark target, not a test. Run
//!
//! ```text
//! SLUICE_BENCH_DELAY_MS=0,25 SLUICE_BENCH_RUNS=3 cargo bench -p sluice-uplink --bench drain
//! cargo bench -p sluice-uplink --bench drain -- sink-only   # the Kafka sink alone
//! ```
//!
//! A stored backlog of `SLUICE_BENCH_RECORDS` (default 100,000) records of
//! 100 B in 4 partitions, an hour old, is drained by the uplink worker with
//! the Kafka sink (lz4, default batching) to tansu, through a TCP proxy on
//! loopback that delays each direction by the given milliseconds (a
//! latency, not a bandwidth cap: chunks are held until due and pass
//! concurrently). The reference is confluent-kafka (librdkafka) producing
//! the same records to the same broker through the same proxy
//! (`deploy/bench/uplink-librdkafka.py`). Every run is verified at the
//! broker by its watermarks. Prints one line per run and the medians.
#![allow(clippy::unwrap_used, clippy::print_stdout, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::tansu::Tansu;
use sluice_config::{Compression, UplinkConfig, UplinkKind};
use sluice_store::scheduler::ServiceClass;
use sluice_store::{PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use sluice_uplink::kafka::KafkaSink;
use sluice_uplink::{Host, TopicView};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PARTITIONS: u32 = 4;
const SIZE: usize = 100;

struct BenchHost(Store);

impl Host for BenchHost {
    fn topics(&self) -> Vec<TopicView> {
        self.0
            .topics()
            .into_iter()
            .map(|t| TopicView { name: t.spec.name, service: t.spec.service, partitions: t.spec.partitions })
            .collect()
    }
    fn class(&self, _service: &str) -> ServiceClass {
        ServiceClass { weight: 1, express: false }
    }
    fn ttl(&self, _service: &str) -> Option<Duration> {
        None
    }
    fn express_max_share(&self) -> f64 {
        0.5
    }
    fn flush(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let store = self.0.clone();
        Box::pin(
            async move { tokio::task::spawn_blocking(move || store.flush().is_ok()).await.unwrap_or(false) },
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Records of `topic` at the broker. tansu's memory storage reports a high
/// watermark that leaves out the last batch of each partition, so there
/// the records are read back (and for sluice's topics, each partition's
/// `sluice.offset` headers must be 0, 1, 2, ... in order); with sqlite,
/// whose fetch of many small batches is unreliable, the watermarks count.
async fn broker_total(bootstrap: &str, topic: &str, storage: &str, ours: bool) -> i64 {
    if !storage.starts_with("memory") {
        return common::watermarks(bootstrap, topic).await.iter().map(|(_, low, high)| high - low).sum();
    }
    let read = common::read_topic(bootstrap, topic, 1).await;
    if ours {
        let mut next = std::collections::HashMap::new();
        for r in &read.records {
            let (_, offset) = r.headers.iter().find(|(k, _)| k == "sluice.offset").unwrap();
            let offset: u64 = std::str::from_utf8(offset).unwrap().parse().unwrap();
            let n = next.entry(r.partition).or_insert(0u64);
            if offset < *n {
                continue; // a duplicate
            }
            assert_eq!(offset, *n, "{topic} partition {}: order", r.partition);
            *n += 1;
        }
        return next.values().sum::<u64>() as i64;
    }
    read.records.len() as i64
}

/// One drain of `n` stored records through the proxy; records per second.
async fn sluice_run(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
    store
        .ensure_topic(&TopicSpec {
            name: topic.into(),
            partitions: PARTITIONS,
            service: "telemetry".into(),
            retention: Retention::default(),
        })
        .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let old = i64::try_from(now).unwrap() - 3_600_000;
    let value = vec![b'v'; SIZE];
    for p in 0..PARTITIONS {
        let records: Vec<Record> = (0..n / PARTITIONS as usize)
            .map(|i| Record {
                key: Some(format!("k{i}").into_bytes()),
                value: value.clone(),
                headers: vec![],
                timestamp_ms: old,
            })
            .collect();
        for chunk in records.chunks(1000) {
            store.append(topic, PartitionId(p), chunk).unwrap();
        }
    }
    store.flush().unwrap();
    let mut config = UplinkConfig::new("central", UplinkKind::Kafka, vec![bootstrap.to_owned()]);
    config.compression = Compression::Lz4;
    config.remote_topic = "{topic}".into();
    // The remote topic exists before the timed run, as for the reference.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bench/uplink-librdkafka.py");
    let mut cmd = std::process::Command::new(common::python());
    cmd.arg(script).args(["--bootstrap", bootstrap, "--topic", topic, "--create-only"]);
    cmd.args(["--partitions", &PARTITIONS.to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    assert!(out.status.success(), "cannot create {topic}: {}", String::from_utf8_lossy(&out.stderr));
    let sink = KafkaSink::new(&config, "pi-01");
    let (_appended, appended_rx) = watch::channel(0);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let written_before = write_bytes();
    let started = Instant::now();
    let handle = sluice_uplink::spawn(
        config,
        "pi-01".into(),
        store.clone(),
        Arc::new(BenchHost(store.clone())),
        sink,
        appended_rx,
        shutdown_rx,
    );
    let deadline = started + Duration::from_secs(600);
    loop {
        let sent: u64 = handle.status.snapshot().services.values().map(|s| s.sent_records).sum();
        if sent >= n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "drain did not finish: {sent} of {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let snap = handle.status.snapshot();
    println!(
        "  {topic}: retries {}, sent {}, resent {}, checkpoints {}",
        snap.retries,
        snap.services.values().map(|s| s.sent_records).sum::<u64>(),
        snap.resent_records,
        snap.checkpoints
    );
    let _ = shutdown.send(true);
    handle.join().await;
    // Everything this process wrote to disk during the drain and the last
    // checkpoint: the store was filled and flushed before, so this is what
    // the cursor checkpoints (and sent marks) cost.
    let written = write_bytes().saturating_sub(written_before);
    let forwarded: u64 = snap.services.values().map(|s| s.sent_bytes).sum();
    println!(
        "  {topic}: disk writes during the drain {written} B = {:.3}% of {forwarded} B forwarded",
        100.0 * written as f64 / forwarded.max(1) as f64
    );
    n as f64 / took
}

/// `write_bytes` of this process (bytes it caused to be written to disk).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| l.strip_prefix("write_bytes: ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// The reference producer through the same proxy; records per second.
async fn librdkafka_run(bootstrap: &str, topic: &str, n: usize, headers: bool) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bench/uplink-librdkafka.py");
    let mut cmd = std::process::Command::new(common::python());
    cmd.arg(script).args(["--bootstrap", bootstrap, "--topic", topic]).args([
        "--count",
        &n.to_string(),
        "--size",
        &SIZE.to_string(),
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    if headers {
        cmd.arg("--headers");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    assert!(out.status.success(), "librdkafka producer failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rate"].as_f64().unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // (`cargo bench` passes --bench; the one argument of ours is the mode.)
    if std::env::args().skip(1).any(|a| a == "sink-only") {
        rt.block_on(sink_only_bench());
    } else {
        rt.block_on(drain_bench());
    }
}

async fn drain_bench() {
    let n = env_list("SLUICE_BENCH_RECORDS", "100000")[0] as usize;
    let runs = env_list("SLUICE_BENCH_RUNS", "3")[0];
    // 1: the reference sends sluice's five provenance headers too (the
    // same records on the wire); 0: bare records.
    let ref_headers = env_list("SLUICE_BENCH_REF_HEADERS", "1")[0] == 1;
    // tansu's storage: "memory://tansu/" (default; the broker is then much
    // faster than either client) or "sqlite://tansu.db" (the broker's
    // sqlite writes set the pace: ~11k records/s with five headers).
    let storage = std::env::var("SLUICE_BENCH_STORAGE").unwrap_or_else(|_| "memory://tansu/".to_owned());
    for delay in env_list("SLUICE_BENCH_DELAY_MS", "0,25") {
        // The broker advertises the proxy, so every connection goes through it.
        let proxy_port = common::tansu::free_port();
        let tansu = Tansu::start_with(&["--storage-engine", &storage], Some(proxy_port));
        let (port, task) = latency_proxy_on(proxy_port, tansu.port(), Duration::from_millis(delay)).await;
        let bootstrap = format!("127.0.0.1:{port}");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let topic = format!("sluice-{delay}-{run}");
            let rate = sluice_run(&bootstrap, &topic, n).await;
            let total = broker_total(&bootstrap, &topic, &storage, true).await;
            assert!(total >= n as i64, "{topic}: {total} of {n} records at the broker");
            let topic = format!("rdkafka-{delay}-{run}");
            let reference = librdkafka_run(&bootstrap, &topic, n, ref_headers).await;
            let total = broker_total(&bootstrap, &topic, &storage, false).await;
            assert!(total >= n as i64, "{topic}: {total} of {n} records at the broker");
            println!(
                "delay {delay} ms each way, reference headers {ref_headers}, run {run}: sluice {rate:.0} rec/s, librdkafka {reference:.0} rec/s, \
                 ratio {:.2}",
                rate / reference
            );
            ours.push(rate);
            theirs.push(reference);
        }
        let (a, b) = (median(ours), median(theirs));
        println!(
            "MEDIAN {storage} delay {delay} ms each way, reference headers {ref_headers} ({runs} runs, {n} records): sluice {a:.0} rec/s, librdkafka {b:.0} \
             rec/s, ratio {:.2}",
            a / b
        );
        task.abort();
    }
}

/// A TCP proxy on `port` (the one the broker advertises) that delays
/// every chunk by `delay` in each direction without serialising them (a
/// link with latency, not a bandwidth cap).
async fn latency_proxy_on(port: u16, target: u16, delay: Duration) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let _ = client.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, delay), pump(sr, cw, delay));
            });
        }
    });
    (port, task)
}

/// Diagnosis: the Kafka sink alone (batches prepared in memory, 4
/// partitions concurrently), with and without sluice's provenance headers.
async fn sink_only_bench() {
    use sluice_uplink::{Batch, OutRecord, Sink};
    let n = env_list("SLUICE_BENCH_RECORDS", "100000")[0] as usize;
    let storage = std::env::var("SLUICE_BENCH_STORAGE").unwrap_or_else(|_| "memory://tansu/".to_owned());
    let delay = env_list("SLUICE_BENCH_DELAY_MS", "0")[0];
    let proxy_port = common::tansu::free_port();
    let tansu = Tansu::start_with(&["--storage-engine", &storage], Some(proxy_port));
    let (port, _task) = latency_proxy_on(proxy_port, tansu.port(), Duration::from_millis(delay)).await;
    for headers in [false, true] {
        let mut config = UplinkConfig::new("central", UplinkKind::Kafka, vec![format!("127.0.0.1:{port}")]);
        config.compression = Compression::Lz4;
        let sink = Arc::new(KafkaSink::new(&config, "pi-01"));
        let topic = format!("only-{headers}");
        let per_batch = 2900;
        let mut batches = Vec::new();
        for p in 0..PARTITIONS {
            let mut offset = 0u64;
            while offset < (n / PARTITIONS as usize) as u64 {
                let records = (offset..(offset + per_batch).min((n / PARTITIONS as usize) as u64))
                    .map(|o| OutRecord {
                        offset: o,
                        key: Some(format!("k{o}").into_bytes()),
                        value: vec![b'v'; SIZE],
                        headers: if headers {
                            vec![
                                ("sluice.node".into(), b"pi-01".to_vec()),
                                ("sluice.service".into(), b"telemetry".to_vec()),
                                ("sluice.topic".into(), b"bench".to_vec()),
                                ("sluice.partition".into(), p.to_string().into_bytes()),
                                ("sluice.offset".into(), o.to_string().into_bytes()),
                            ]
                        } else {
                            vec![]
                        },
                        timestamp_ms: 1_700_000_000_000,
                    })
                    .collect();
                batches.push(Batch {
                    topic: "bench".into(),
                    partition: p,
                    partitions: PARTITIONS,
                    remote_topic: topic.clone(),
                    service: "telemetry".into(),
                    records,
                });
                offset += per_batch;
            }
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..PARTITIONS {
            let mine: Vec<Batch> = batches.iter().filter(|b| b.partition == p).cloned().collect();
            let sink = sink.clone();
            tasks.spawn(async move {
                for b in mine {
                    let t = Instant::now();
                    sink.send(&b).await.unwrap();
                    if std::env::var("SLUICE_BENCH_VERBOSE").is_ok() {
                        println!("p{p} {} records in {:?}", b.records.len(), t.elapsed());
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let took = started.elapsed().as_secs_f64();
        println!("headers {headers}: {:.0} rec/s", n as f64 / took);
    }
}
