//! The forwarding loop with the Kafka sink against a real Kafka-protocol
//! broker (tansu): a stored backlog drains with several batches in flight,
//! the broker goes away in the middle of the drain and comes back, and
//! every record arrives with each partition's records in offset order
//! (first arrivals; re-sends of a batch whose acknowledgement was lost may
//! repeat records, never reorder them). Read back with confluent-kafka.
#![allow(clippy::unwrap_used, dead_code)]

mod common;

use common::tansu::Tansu;
use sluice_config::{ByteSize, Compression, UplinkConfig, UplinkKind};
use sluice_store::scheduler::ServiceClass;
use sluice_store::{PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use sluice_uplink::kafka::{KafkaSink, KafkaSinkOptions};
use sluice_uplink::{Host, TopicView};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct StoreHost(Store);

impl Host for StoreHost {
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

/// Failure guard for conditions that must come true (not a speed bar).
const GUARD: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_drain_keeps_order_per_partition_when_the_broker_goes_away() {
    const PARTITIONS: u32 = 4;
    const PER_PARTITION: u64 = 1_500;
    let mut tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
    store
        .ensure_topic(&TopicSpec {
            name: "telemetry".into(),
            partitions: PARTITIONS,
            service: "telemetry".into(),
            retention: Retention::default(),
        })
        .unwrap();
    let old = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap()
        - 3_600_000;
    for p in 0..PARTITIONS {
        let records: Vec<Record> = (0..PER_PARTITION)
            .map(|i| Record {
                key: Some(format!("k{i}").into_bytes()),
                value: format!("{p}-{i}-{}", "v".repeat(100)).into_bytes(),
                headers: vec![],
                timestamp_ms: old,
            })
            .collect();
        store.append("telemetry", PartitionId(p), &records).unwrap();
    }
    store.flush().unwrap();

    let mut config = UplinkConfig::new("central", UplinkKind::Kafka, vec![tansu.bootstrap()]);
    config.compression = Compression::Lz4;
    // Small batches, so many are in flight and some are cut off by the outage.
    config.batch_max_bytes = ByteSize::kib(16);
    config.backlog_batch_max_bytes = Some(ByteSize::kib(32));
    config.max_in_flight = 5;
    config.checkpoint_interval = Duration::from_millis(100);
    let options = KafkaSinkOptions { send_timeout: Duration::from_secs(10), ..KafkaSinkOptions::default() };
    let sink = KafkaSink::with_options(&config, "pi-01", options);
    let (_appended, appended_rx) = watch::channel(0);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = sluice_uplink::spawn(
        config,
        "pi-01".into(),
        store.clone(),
        Arc::new(StoreHost(store.clone())),
        sink,
        appended_rx,
        shutdown_rx,
    );
    let total = u64::from(PARTITIONS) * PER_PARTITION;
    let sent = || handle.status.snapshot().services.values().map(|s| s.sent_records).sum::<u64>();
    let deadline = Instant::now() + GUARD;
    while sent() < total / 5 {
        assert!(Instant::now() < deadline, "the drain never got going: {:?}", handle.status.snapshot());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut most_in_flight = 0;
    // The broker dies mid-drain (SIGKILL), with batches in flight.
    most_in_flight = most_in_flight.max(handle.status.snapshot().in_flight);
    tansu.stop();
    let at_outage = sent();
    assert!(at_outage < total, "the drain ended before the outage");
    while handle.status.snapshot().retries == 0 {
        assert!(Instant::now() < deadline, "no failure seen while the broker is down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tansu.restart();
    while store.cursor("central", "telemetry", PartitionId(0)).unwrap().map(|o| o.0) != Some(PER_PARTITION)
        || (1..PARTITIONS).any(|p| {
            store.cursor("central", "telemetry", PartitionId(p)).unwrap().map(|o| o.0) != Some(PER_PARTITION)
        })
    {
        most_in_flight = most_in_flight.max(handle.status.snapshot().in_flight);
        assert!(Instant::now() < deadline, "the drain did not finish: {:?}", handle.status.snapshot());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = handle.status.snapshot();
    assert_eq!(status.max_in_flight, 5);
    assert!(status.retries >= 1);
    let _ = shutdown.send(true);
    handle.join().await;

    // Every record arrived; per partition, first arrivals in offset order.
    let got = common::read_all(&tansu.bootstrap(), "edge.pi-01.telemetry", total as usize).await;
    let mut next: BTreeMap<i32, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for r in &got {
        let header = |name: &str| {
            let (_, v) = r.headers.iter().find(|(k, _)| k == name).unwrap();
            std::str::from_utf8(v).unwrap().parse::<u64>().unwrap()
        };
        let (local, offset) = (header("sluice.partition"), header("sluice.offset"));
        assert_eq!(u64::try_from(r.partition).unwrap(), local, "local partition p lands on remote p");
        let value = String::from_utf8(r.value.clone().unwrap()).unwrap();
        assert!(value.starts_with(&format!("{local}-{offset}-")), "value of {local}/{offset}: {value}");
        if !seen.insert((local, offset)) {
            duplicates += 1;
            continue;
        }
        let n = next.entry(r.partition).or_default();
        assert_eq!(offset, *n, "partition {local}: first arrivals in offset order");
        *n += 1;
    }
    assert_eq!(seen.len() as u64, total, "no record lost");
    assert!(most_in_flight >= 2, "several batches in flight: at most {most_in_flight} seen");
    eprintln!(
        "{} records read, {duplicates} re-sent after the outage; {at_outage} acknowledged before it; \
         {} batches in flight seen at most; {} retries",
        got.len(),
        most_in_flight,
        status.retries
    );
}
