//! The forwarding loop against a real store, with an in-memory sink standing
//! in for the central cluster (the batching and ordering logic only; the
//! sinks have their own tests against real brokers).
#![allow(clippy::unwrap_used)]

use sluice_config::{ByteSize, UplinkConfig, UplinkKind};
use sluice_store::scheduler::ServiceClass;
use sluice_store::{PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use sluice_uplink::{Batch, Host, Sink, SinkError, TopicView};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

struct TestHost {
    store: Store,
    classes: HashMap<String, ServiceClass>,
    ttl: HashMap<String, Duration>,
}

impl Host for TestHost {
    fn topics(&self) -> Vec<TopicView> {
        self.store
            .topics()
            .into_iter()
            .map(|t| TopicView { name: t.spec.name, service: t.spec.service, partitions: t.spec.partitions })
            .collect()
    }
    fn class(&self, service: &str) -> ServiceClass {
        self.classes.get(service).copied().unwrap_or(ServiceClass { weight: 1, express: false })
    }
    fn ttl(&self, service: &str) -> Option<Duration> {
        self.ttl.get(service).copied()
    }
    fn express_max_share(&self) -> f64 {
        0.5
    }
    fn flush(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let store = self.store.clone();
        Box::pin(
            async move { tokio::task::spawn_blocking(move || store.flush().is_ok()).await.unwrap_or(false) },
        )
    }
}

/// Records every batch; refuses everything while `online` is false.
#[derive(Clone, Default)]
struct MemorySink {
    online: Arc<Mutex<bool>>,
    got: Arc<Mutex<Vec<Batch>>>,
}

impl Sink for MemorySink {
    fn send(&mut self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send {
        let ok = *self.online.lock().unwrap();
        if ok {
            self.got.lock().unwrap().push(batch.clone());
        }
        async move {
            if ok {
                Ok(())
            } else {
                Err(SinkError("central cluster unreachable".into()))
            }
        }
    }
}

fn store(dir: &std::path::Path) -> Store {
    Store::open(&StoreOptions { cache_capacity: 1 << 20, ..StoreOptions::new(dir) }).unwrap()
}

fn topic(store: &Store, name: &str, service: &str, partitions: u32) {
    store
        .ensure_topic(&TopicSpec {
            name: name.into(),
            partitions,
            service: service.into(),
            retention: Retention::default(),
        })
        .unwrap();
}

fn rec(i: usize, ts: i64) -> Record {
    Record {
        key: Some(format!("k{i}").into_bytes()),
        value: vec![b'v'; 200],
        headers: vec![],
        timestamp_ms: ts,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn uplink(batch_bytes: u64) -> UplinkConfig {
    let mut c = UplinkConfig::new("central", UplinkKind::Kafka, vec!["127.0.0.1:9".into()]);
    c.batch_max_bytes = ByteSize(batch_bytes);
    c.linger = Duration::ZERO;
    c
}

struct Running {
    sink: MemorySink,
    handle: sluice_uplink::UplinkHandle,
    _appended: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
}

fn start(store: &Store, host: TestHost, config: UplinkConfig, online: bool) -> Running {
    let sink = MemorySink::default();
    *sink.online.lock().unwrap() = online;
    let (appended, appended_rx) = watch::channel(0);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = sluice_uplink::spawn(
        config,
        "pi-01".into(),
        store.clone(),
        Arc::new(host),
        sink.clone(),
        appended_rx,
        shutdown_rx,
    );
    Running { sink, handle, _appended: appended, shutdown }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn host(store: &Store) -> TestHost {
    TestHost {
        store: store.clone(),
        classes: HashMap::from([
            ("alarms".to_owned(), ServiceClass { weight: 1, express: true }),
            ("telemetry".to_owned(), ServiceClass { weight: 4, express: false }),
            ("logs".to_owned(), ServiceClass { weight: 1, express: false }),
        ]),
        ttl: HashMap::new(),
    }
}

#[tokio::test]
async fn backlog_drains_in_priority_order_after_an_outage_and_cursors_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "logs", "logs", 2);
    topic(&store, "telemetry", "telemetry", 1);
    topic(&store, "alarms", "alarms", 1);
    let old = now_ms() - 60_000; // an hour-old style backlog: all "backlog" lane
    for p in 0..2 {
        store.append("logs", PartitionId(p), &(0..100).map(|i| rec(i, old)).collect::<Vec<_>>()).unwrap();
    }
    store
        .append("telemetry", PartitionId(0), &(0..100).map(|i| rec(i, old + 1)).collect::<Vec<_>>())
        .unwrap();
    store.append("alarms", PartitionId(0), &(0..20).map(|i| rec(i, old + 2)).collect::<Vec<_>>()).unwrap();
    store.flush().unwrap();

    let run = start(&store, host(&store), uplink(2_000), false);
    wait_for("retries while offline", || run.handle.status.snapshot().retries >= 2).await;
    assert!(run.sink.got.lock().unwrap().is_empty());
    assert_eq!(run.handle.status.snapshot().state.label(), "backing_off");
    *run.sink.online.lock().unwrap() = true;
    wait_for("everything forwarded", || {
        run.sink.got.lock().unwrap().iter().map(|b| b.records.len()).sum::<usize>() == 320
    })
    .await;
    let batches = run.sink.got.lock().unwrap().clone();
    // Express first: every alarm batch comes before any other once the cap
    // allows (share 0.5 by bytes while others wait), so alarms finish early.
    let last_alarm = batches.iter().rposition(|b| b.service == "alarms").unwrap();
    let first_logs = batches.iter().position(|b| b.service == "logs").unwrap();
    assert!(
        last_alarm < batches.len() / 3,
        "alarms drained early: last at {last_alarm} of {}",
        batches.len()
    );
    assert_eq!(batches[0].service, "alarms");
    // Weighted 4:1 while both are backlogged: telemetry is done well before logs.
    let last_tel = batches.iter().rposition(|b| b.service == "telemetry").unwrap();
    let logs_before_tel_done = batches[..last_tel].iter().filter(|b| b.service == "logs").count();
    let tel_batches = batches.iter().filter(|b| b.service == "telemetry").count();
    assert!(
        logs_before_tel_done * 2 <= tel_batches,
        "{logs_before_tel_done} logs batches vs {tel_batches} telemetry"
    );
    assert!(first_logs > 0);
    // Per partition order and provenance headers.
    let mut next: HashMap<(String, u32), u64> = HashMap::new();
    for b in &batches {
        for r in &b.records {
            let n = next.entry((b.topic.clone(), b.partition)).or_default();
            assert_eq!(r.offset, *n, "order in {}/{}", b.topic, b.partition);
            *n += 1;
            let h: HashMap<&str, &[u8]> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            assert_eq!(h["sluice.node"], b"pi-01");
            assert_eq!(h["sluice.service"], b.service.as_bytes());
            assert_eq!(h["sluice.offset"], r.offset.to_string().as_bytes());
        }
        assert_eq!(b.remote_topic, format!("edge.pi-01.{}", b.topic));
    }
    let _ = run.shutdown.send(true);
    run.handle.join().await;
    // Cursors are stored: a new worker sends nothing again.
    assert_eq!(store.cursor("central", "logs", PartitionId(1)).unwrap().map(|o| o.0), Some(100));
    let again = start(&store, host(&store), uplink(2_000), true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(again.sink.got.lock().unwrap().is_empty(), "nothing re-sent after a clean stop");
}

#[tokio::test]
async fn live_share_interleaves_fresh_records_with_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "old", "logs", 1);
    topic(&store, "fresh", "logs", 1);
    let old = now_ms() - 600_000;
    store.append("old", PartitionId(0), &(0..400).map(|i| rec(i, old)).collect::<Vec<_>>()).unwrap();
    store.append("fresh", PartitionId(0), &(0..40).map(|i| rec(i, now_ms())).collect::<Vec<_>>()).unwrap();
    store.flush().unwrap();
    let mut config = uplink(2_000);
    config.live_share = 0.3;
    let run = start(&store, host(&store), config, true);
    wait_for("fresh forwarded", || {
        run.sink
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.topic == "fresh")
            .map(|b| b.records.len())
            .sum::<usize>()
            == 40
    })
    .await;
    let batches = run.sink.got.lock().unwrap().clone();
    let last_fresh = batches.iter().rposition(|b| b.topic == "fresh").unwrap();
    let old_before = batches[..last_fresh].iter().filter(|b| b.topic == "old").count();
    let fresh = batches.iter().filter(|b| b.topic == "fresh").count();
    // Same service, same weight: without live_share the 400-record backlog
    // would go first. With 0.3 the fresh lane gets ~30% of the bytes.
    assert!(old_before <= fresh * 3, "fresh data waited behind {old_before} backlog batches ({fresh} fresh)");
    assert!(old_before >= 1, "the backlog still moves");
    let _ = run.shutdown.send(true);
}

#[tokio::test]
async fn ttl_expired_records_are_skipped_and_counted_and_the_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "t", "telemetry", 1);
    store
        .append("t", PartitionId(0), &(0..10).map(|i| rec(i, now_ms() - 3_600_000)).collect::<Vec<_>>())
        .unwrap();
    store.append("t", PartitionId(0), &(10..110).map(|i| rec(i, now_ms())).collect::<Vec<_>>()).unwrap();
    store.flush().unwrap();
    let mut h = host(&store);
    h.ttl.insert("telemetry".into(), Duration::from_secs(60));
    let mut config = uplink(1_000);
    config.max_bytes_per_sec = Some(ByteSize(20_000));
    let started = std::time::Instant::now();
    let run = start(&store, h, config, true);
    wait_for("100 live records", || {
        run.sink.got.lock().unwrap().iter().map(|b| b.records.len()).sum::<usize>() == 100
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let got = run.sink.got.lock().unwrap().clone();
    assert_eq!(got[0].records[0].offset, 10, "expired records never sent");
    let snap = run.handle.status.snapshot();
    assert_eq!(snap.services["telemetry"].ttl_skipped, 10);
    let bytes: u64 = got.iter().map(Batch::bytes).sum();
    // The cap: never faster than 20 kB/s (+10%), whatever the machine.
    assert!(bytes as f64 / elapsed <= 22_000.0, "{bytes} bytes in {elapsed:.2}s");
    let _ = run.shutdown.send(true);
}

/// Only flushed records leave the node: one a crash could still lose (and
/// whose offset could be handed out again) is not forwarded until a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unflushed_records_wait_for_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "t", "telemetry", 1);
    store.flush().unwrap();
    store.append("t", PartitionId(0), &(0..10).map(|i| rec(i, now_ms())).collect::<Vec<_>>()).unwrap();
    let run = start(&store, host(&store), uplink(100_000), true);
    let forwarded =
        || run.sink.got.lock().unwrap().iter().flat_map(|b| b.records.iter().map(|r| r.offset)).max();
    // The worker polls while records wait for their flush (every 5 ms):
    // watching many of its turns, none may forward them. Correct code
    // passes whatever the machine's speed.
    for _ in 0..50 {
        assert_eq!(forwarded(), None, "an unflushed record was forwarded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.flush().unwrap();
    wait_for("forwarded after the flush", || forwarded() == Some(9)).await;
}
