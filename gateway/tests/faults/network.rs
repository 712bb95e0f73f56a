//! Uplink network faults while sluice forwards to Kafka (tansu):
//!
//! - the broker killed (SIGKILL) and restarted several times while records
//!   keep arriving;
//! - a degraded link through [`Proxy`]: 30 ms added per chunk, connections
//!   cut mid-stream repeatedly, a black hole (bytes held, connections
//!   open) ended by a cut.
//!
//! Proves: every record reaches Kafka (read back with confluent-kafka),
//! duplicates stay within one batch per partition per fault, and the
//! stored cursors end at, never past, the high watermarks.

use crate::common::Gateway;
use crate::kafka::tansu::Tansu;
use crate::proxy::Proxy;
use crate::uplink::{assert_all_delivered, high_watermarks, wait_drained};
use serde_json::{json, Value};
use sluice_store::{Offset, PartitionId, Store, StoreOptions};
use std::time::{Duration, Instant};

/// Broker restarts in the first test; link faults in the second.
const RESTARTS: u64 = 4;
const CUTS: u64 = 4;
/// Records of ~300 bytes; a 16 KiB batch holds at most this many.
const PER_BATCH: usize = 16 * 1024 / 300 + 1;

fn config(brokers: &str) -> String {
    format!(
        r#"
[node]
id = "pi-01"
[[topic]]
name = "events"
partitions = 2
[[uplink]]
name = "central"
kind = "kafka"
brokers = ["{brokers}"]
linger = "2ms"
batch_max_bytes = "16KiB"
"#
    )
}

async fn produce(gw: &Gateway, tag: &str, n: usize) {
    let filler = "n".repeat(300);
    let recs: Vec<Value> = (0..n)
        .map(|i| json!({ "key": format!("k{}", i % 2), "value": format!("{tag}-{i}-{filler}") }))
        .collect();
    let (s, body) = gw.post_json("/v1/topics/events/records", &json!({ "records": recs })).await;
    assert_eq!(s, 200, "{body}");
}

async fn sent(gw: &Gateway) -> u64 {
    let (_, u) = gw.get_json("/v1/uplinks").await;
    u["uplinks"][0]["services"]["default"]["sent_records"].as_u64().unwrap_or(0)
}

/// Waits until more than `than` records were forwarded.
async fn wait_sent(gw: &Gateway, than: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent(gw).await <= than {
        assert!(Instant::now() < deadline, "{what}: forwarding never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a clean stop: the stored cursors equal the high watermarks.
fn assert_cursors_at_end(gw: &mut Gateway) {
    let data = gw.data_dir.clone();
    gw.terminate();
    let store = Store::open(&StoreOptions::new(data.join("log"))).unwrap();
    for p in 0..2 {
        let (_, hw) = store.watermarks("events", PartitionId(p)).unwrap();
        let cursor = store.cursor("central", "events", PartitionId(p)).unwrap().unwrap_or(Offset(0));
        assert_eq!(cursor, hw, "cursor of events/{p} after the drain");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_killed_and_restarted_repeatedly_loses_nothing() {
    let started = Instant::now();
    let mut tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some(&config(&tansu.bootstrap()))).await;
    for cycle in 0..RESTARTS {
        let before = sent(&gw).await;
        produce(&gw, &format!("up{cycle}"), 200).await;
        wait_sent(&gw, before, &format!("restart {cycle}")).await;
        tansu.stop();
        produce(&gw, &format!("down{cycle}"), 200).await;
        tansu.restart();
    }
    wait_drained(&gw).await;
    let got = assert_all_delivered(&gw, &tansu.bootstrap(), "events").await;
    assert!(got.duplicates <= RESTARTS as usize * 2 * PER_BATCH, "{} duplicates", got.duplicates);
    let total: u64 = high_watermarks(&gw, "events").await.iter().sum();
    assert_eq!(total, RESTARTS * 400);
    assert_cursors_at_end(&mut gw);
    eprintln!(
        "fault figures: broker restarts: {RESTARTS} kills, {total} records, 0 lost, {} duplicates, {:.0} s",
        got.duplicates,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_link_delay_cuts_and_black_hole_lose_nothing() {
    let started = Instant::now();
    let proxy = Proxy::start().await;
    // The broker advertises the proxy, so every connection goes through it.
    let tansu = Tansu::start_with(&[], Some(proxy.port()));
    proxy.set_target(tansu.port());
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("127.0.0.1:{}", proxy.port());
    let mut gw = Gateway::start(&dir.path().join("d"), Some(&config(&brokers))).await;

    // Slow link.
    proxy.set_delay(Duration::from_millis(30));
    produce(&gw, "slow", 300).await;
    wait_sent(&gw, 0, "slow link").await;
    proxy.set_delay(Duration::ZERO);
    // Connections cut mid-stream while records keep coming.
    for cut in 0..CUTS {
        let before = sent(&gw).await;
        produce(&gw, &format!("cut{cut}"), 200).await;
        wait_sent(&gw, before, &format!("cut {cut}")).await;
        proxy.cut();
    }
    // A black hole: requests stall; then the stalled connections are cut.
    proxy.set_black_hole(true);
    produce(&gw, "hole", 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    proxy.set_black_hole(false);

    wait_drained(&gw).await;
    let got = assert_all_delivered(&gw, &tansu.bootstrap(), "events").await;
    let faults = 1 + CUTS as usize + 1;
    assert!(got.duplicates <= faults * 2 * PER_BATCH, "{} duplicates", got.duplicates);
    let total: u64 = high_watermarks(&gw, "events").await.iter().sum();
    assert_eq!(total, 300 + CUTS * 200 + 200);
    assert!(proxy.connections() > CUTS, "the cuts forced reconnects: {} connections", proxy.connections());
    assert_cursors_at_end(&mut gw);
    eprintln!(
        "fault figures: degraded link: delay, {CUTS} cuts, a black hole: {total} records, 0 lost, {} duplicates, \
         {} connections, {:.0} s",
        got.duplicates,
        proxy.connections(),
        started.elapsed().as_secs_f64()
    );
}
