//! The forwarding loop against a real store, with an in-memory sink standing
//! in for the central cluster (the batching and ordering logic only; the
//! sinks have their own tests against real brokers).
#![allow(clippy::unwrap_used)]

use sluice_config::{ByteSize, UplinkConfig, UplinkKind};
use sluice_store::scheduler::ServiceClass;
use sluice_store::{PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use sluice_uplink::{Batch, Host, Sink, SinkError, TopicView};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

struct TestHost {
    store: Store,
    classes: HashMap<String, ServiceClass>,
    ttl: HashMap<String, Duration>,
    /// Counts the flushes the worker asks for.
    flushes: Option<Arc<std::sync::atomic::AtomicU64>>,
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
        if let Some(n) = &self.flushes {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let store = self.store.clone();
        Box::pin(
            async move { tokio::task::spawn_blocking(move || store.flush().is_ok()).await.unwrap_or(false) },
        )
    }
}

/// Records every batch; refuses everything while `online` is false. Each
/// send takes `delay` (a link's round trip), and the sink checks that no
/// two batches of one partition are ever in flight at once.
#[derive(Clone, Default)]
struct MemorySink {
    online: Arc<Mutex<bool>>,
    got: Arc<Mutex<Vec<Batch>>>,
    delay: Arc<Mutex<Duration>>,
    /// Partitions with a send in progress, and the most sends at once.
    in_flight: Arc<Mutex<InFlight>>,
    /// Two sends of one partition overlapped.
    overlapped: Arc<Mutex<bool>>,
    /// The next send panics (a sink bug).
    panic_once: Arc<Mutex<bool>>,
}

/// Partitions with a send in progress, and the most at once.
type InFlight = (HashSet<(String, u32)>, usize);

impl Sink for MemorySink {
    fn send(&self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send {
        if std::mem::take(&mut *self.panic_once.lock().unwrap()) {
            panic!("a sink bug");
        }
        let ok = *self.online.lock().unwrap();
        let delay = *self.delay.lock().unwrap();
        let key = (batch.topic.clone(), batch.partition);
        {
            let mut f = self.in_flight.lock().unwrap();
            if !f.0.insert(key.clone()) {
                *self.overlapped.lock().unwrap() = true;
            }
            f.1 = f.1.max(f.0.len());
        }
        if ok {
            self.got.lock().unwrap().push(batch.clone());
        }
        let in_flight = self.in_flight.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            in_flight.lock().unwrap().0.remove(&key);
            if ok {
                Ok(())
            } else {
                Err(SinkError("central cluster unreachable".into()))
            }
        }
    }

    fn max_in_flight(&self) -> usize {
        usize::MAX
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
    start_with(store, host, config, sink)
}

fn start_with(store: &Store, host: TestHost, config: UplinkConfig, sink: MemorySink) -> Running {
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
        flushes: None,
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

    // One batch at a time and no growth: the order of the batches is the
    // scheduler's choice alone (with several in flight, partitions share
    // the window; `pipelined_drain_...` below).
    let mut config = uplink(2_000);
    config.max_in_flight = 1;
    config.backlog_batch_max_bytes = Some(ByteSize(2_000));
    let run = start(&store, host(&store), config, false);
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

/// Several batches in flight, a link with a round trip, an outage in the
/// middle of the drain: every record arrives, each partition's records in
/// offset order (counting the first arrival of each), never two batches
/// of one partition in flight at once, batches grow while the backlog
/// lasts, and cursors move without a flush per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_drain_keeps_order_per_partition_across_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "logs", "logs", 4);
    topic(&store, "telemetry", "telemetry", 4);
    let old = now_ms() - 60_000;
    for t in ["logs", "telemetry"] {
        for p in 0..4 {
            let records: Vec<Record> = (0..500).map(|i| rec(i, old)).collect();
            store.append(t, PartitionId(p), &records).unwrap();
        }
    }
    store.flush().unwrap();
    let flushes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut h = host(&store);
    h.flushes = Some(flushes.clone());
    let mut config = uplink(2_000);
    config.max_in_flight = 5;
    config.checkpoint_interval = Duration::from_millis(200);
    let run = start(&store, h, config, true);
    *run.sink.delay.lock().unwrap() = Duration::from_millis(20);
    let total = 8 * 500;
    let arrived = |sink: &MemorySink| {
        let got = sink.got.lock().unwrap();
        let mut seen = HashSet::new();
        for b in got.iter() {
            for r in &b.records {
                seen.insert((b.topic.clone(), b.partition, r.offset));
            }
        }
        seen.len()
    };
    wait_for("a part of the backlog", || arrived(&run.sink) >= total / 4).await;
    // The central cluster goes away mid-drain, then comes back.
    *run.sink.online.lock().unwrap() = false;
    wait_for("retries while offline", || run.handle.status.snapshot().retries >= 2).await;
    *run.sink.online.lock().unwrap() = true;
    wait_for("everything forwarded", || arrived(&run.sink) == total).await;
    let batches = run.sink.got.lock().unwrap().clone();
    assert!(!*run.sink.overlapped.lock().unwrap(), "two batches of one partition were in flight at once");
    let most = run.sink.in_flight.lock().unwrap().1;
    assert!((2..=5).contains(&most), "{most} batches in flight at most");
    // First arrival of each record, per partition: in offset order.
    let mut next: HashMap<(String, u32), u64> = HashMap::new();
    for b in &batches {
        for r in &b.records {
            let n = next.entry((b.topic.clone(), b.partition)).or_default();
            if r.offset < *n {
                continue; // a re-send of something that arrived already
            }
            assert_eq!(r.offset, *n, "order in {}/{}", b.topic, b.partition);
            *n += 1;
        }
    }
    // Batches grew past batch_max_bytes (2000) while the backlog lasted.
    let biggest = batches.iter().map(Batch::bytes).max().unwrap();
    assert!(biggest > 8_000, "largest batch {biggest} bytes");
    // Cursors: in memory at once, durable in a few checkpoints, not one
    // flush per batch.
    wait_for("cursors at the end", || {
        (0..4)
            .all(|p| store.cursor("central", "telemetry", PartitionId(p)).unwrap().map(|o| o.0) == Some(500))
    })
    .await;
    let status = run.handle.status.snapshot();
    let flushes = flushes.load(std::sync::atomic::Ordering::Relaxed);
    assert!((flushes as usize) < batches.len() / 2, "{flushes} flushes for {} batches", batches.len());
    assert!(status.checkpoints >= 1);
    assert_eq!(status.max_in_flight, 5);
    let _ = run.shutdown.send(true);
    run.handle.join().await;
}

/// A batch in flight when the worker stops is sent again by the next run,
/// and counted as a re-send; acknowledged cursors survive a clean stop.
#[tokio::test]
async fn resends_after_a_restart_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "t", "telemetry", 1);
    let old = now_ms() - 60_000;
    store.append("t", PartitionId(0), &(0..50).map(|i| rec(i, old)).collect::<Vec<_>>()).unwrap();
    store.flush().unwrap();
    let mut config = uplink(100_000);
    config.checkpoint_interval = Duration::from_millis(10);
    // The first batch never gets its acknowledgement before the stop.
    let sink = MemorySink::default();
    *sink.online.lock().unwrap() = true;
    *sink.delay.lock().unwrap() = Duration::from_secs(3600);
    let run = start_with(&store, host(&store), config.clone(), sink);
    wait_for("a batch handed to the sink", || !run.sink.got.lock().unwrap().is_empty()).await;
    let _ = run.shutdown.send(true);
    run.handle.join().await;
    assert_eq!(store.cursor("central", "t", PartitionId(0)).unwrap(), None, "nothing acknowledged");
    let again = start(&store, host(&store), config, true);
    wait_for("re-sent", || {
        again.sink.got.lock().unwrap().iter().map(|b| b.records.len()).sum::<usize>() == 50
    })
    .await;
    wait_for("counted", || again.handle.status.snapshot().resent_records == 50).await;
    let _ = again.shutdown.send(true);
}

/// A sink that panics in a send does not stop its partition: the batch is
/// sent again, and everything arrives in order.
#[tokio::test]
async fn a_panicking_send_is_retried_like_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    topic(&store, "t", "telemetry", 2);
    let old = now_ms() - 60_000;
    for p in 0..2 {
        store.append("t", PartitionId(p), &(0..100).map(|i| rec(i, old)).collect::<Vec<_>>()).unwrap();
    }
    store.flush().unwrap();
    let sink = MemorySink::default();
    *sink.online.lock().unwrap() = true;
    *sink.panic_once.lock().unwrap() = true;
    let run = start_with(&store, host(&store), uplink(2_000), sink);
    wait_for("everything after the panic", || {
        (0..2).all(|p| store.cursor("central", "t", PartitionId(p)).unwrap().map(|o| o.0) == Some(100))
    })
    .await;
    let mut next: HashMap<u32, u64> = HashMap::new();
    for b in run.sink.got.lock().unwrap().iter() {
        for r in &b.records {
            let n = next.entry(b.partition).or_default();
            assert_eq!(r.offset, *n, "order in partition {}", b.partition);
            *n += 1;
        }
    }
    assert_eq!(next.values().sum::<u64>(), 200);
    let _ = run.shutdown.send(true);
}
