//! SIGKILL loop under mixed load: `sync` HTTP producers, MQTT QoS 1
//! publishers into a buffered service, and a Kafka uplink forwarding both
//! topics to tansu. After each kill:
//!
//! - the on-disk state as the kill left it (the store opened directly,
//!   before sluice restarts): every uplink cursor is at or below its
//!   partition's high watermark;
//! - after the restart: every `sync`-acknowledged record is at the offset it
//!   was acknowledged with, and so is every MQTT record that was stored
//!   before two later flushes completed (the stated loss window had passed
//!   for it, whatever the machine's speed); offsets are never handed out
//!   twice (the producers fail on a repeat).
//!
//! At the end the uplink drains and Kafka is read back: every stored
//! record of both topics arrived, no local offset names two different
//! records there (only flushed records are forwarded) (so what was below a cursor had been
//! delivered: a restarted uplink never re-sends below its cursor), with at
//! most one batch per partition duplicated per kill.

use crate::common::load::{
    assert_stored, mixed_config, mqtt_publisher, producer, read_partition, wait_two_flushes, Acked,
};
use crate::common::Gateway;
use crate::kafka::tansu::Tansu;
use crate::uplink::{assert_all_delivered, high_watermarks, wait_drained};
use sluice_store::{PartitionId, Store, StoreOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kill cycles; about 2-4 s each on the 2-core test machine.
const CYCLES: u64 = 15;

fn config(bootstrap: &str) -> String {
    format!(
        r#"{}
[node]
id = "pi-01"
[[uplink]]
name = "central"
kind = "kafka"
brokers = ["{bootstrap}"]
linger = "50ms"
batch_max_bytes = "64KiB"
backlog_batch_max_bytes = "64KiB"
checkpoint_interval = "100ms"
"#,
        mixed_config(3, 2)
    )
}

/// Stored MQTT records as (partition, offset) -> value.
async fn mqtt_records(gw: &Gateway) -> BTreeMap<(u64, u64), String> {
    let mut out = BTreeMap::new();
    for p in 0..2 {
        for (o, v) in read_partition(gw, "plant", p).await {
            out.insert((p, o), v.as_str().unwrap().to_owned());
        }
    }
    out
}

/// Opens the store as the kill left it and checks the uplink cursors.
fn assert_cursors_not_ahead(data_dir: &std::path::Path, cycle: u64) -> usize {
    let store = Store::open(&StoreOptions::new(data_dir.join("log"))).unwrap();
    let mut checked = 0;
    for (topic, partitions) in [("events", 3), ("plant", 2)] {
        for p in 0..partitions {
            let (_, hw) = store.watermarks(topic, PartitionId(p)).unwrap();
            if let Some(cursor) = store.cursor("central", topic, PartitionId(p)).unwrap() {
                assert!(cursor <= hw, "cycle {cycle}: cursor {cursor:?} of {topic}/{p} ahead of {hw:?}");
                checked += 1;
            }
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_under_mixed_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("d");
    let cfg = config(&tansu.bootstrap());
    let mut gw = Gateway::start(&data_dir, Some(&cfg)).await;
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut durable_mqtt: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let (mut checks, mut cursors) = (0usize, 0usize);
    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let mut http = Vec::new();
        for id in 0..2 {
            http.push(tokio::spawn(producer(gw.base.clone(), gw.http.clone(), "events", id, acked.clone())));
        }
        let mut mqtt = Vec::new();
        for id in 0..2 {
            let (addr, stop) = (gw.mqtt.clone().unwrap(), stop.clone());
            mqtt.push(tokio::spawn(mqtt_publisher(
                addr,
                format!("c{cycle}m{id}"),
                format!("plant/dev-{id}"),
                stop,
            )));
        }
        // Let load build up.
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mqtt_before: u64 = high_watermarks(&gw, "plant").await.iter().sum();
        while acked.lock().unwrap().len() < before + 30
            || high_watermarks(&gw, "plant").await.iter().sum::<u64>() < mqtt_before + 30
        {
            assert!(Instant::now() < deadline, "cycle {cycle}: no load");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // These MQTT records are past the loss window once two more flushes
        // completed; the load keeps running meanwhile.
        let seen = mqtt_records(&gw).await;
        wait_two_flushes(&gw).await;
        for (k, v) in seen {
            if let Some(prev) = durable_mqtt.insert(k, v.clone()) {
                assert_eq!(prev, v, "cycle {cycle}: MQTT offset {k:?} reused");
            }
        }
        // The kill lands at a different moment of the load each cycle.
        tokio::time::sleep(Duration::from_millis(7 * (cycle % 8))).await;
        gw.kill9();
        for t in http {
            t.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for t in mqtt {
            t.await.unwrap();
        }
        cursors += assert_cursors_not_ahead(&data_dir, cycle);
        gw = Gateway::start(&data_dir, Some(&cfg)).await;
        let snapshot = acked.lock().unwrap().clone();
        checks += assert_stored(&gw, "events", &snapshot, &format!("cycle {cycle}")).await;
        checks += assert_stored(&gw, "plant", &durable_mqtt, &format!("cycle {cycle} (MQTT)")).await;
    }
    // (The uplink checkpoints its cursors every 100 ms here, the first one
    // at once: most kills find durable cursors to check.)
    assert!(
        cursors >= CYCLES as usize / 2,
        "only {cursors} durable uplink cursors found after {CYCLES} kills"
    );
    wait_drained(&gw).await;
    let events = assert_all_delivered(&gw, &tansu.bootstrap(), "events").await;
    let plant = assert_all_delivered(&gw, &tansu.bootstrap(), "plant").await;
    for ((p, o), v) in acked.lock().unwrap().iter() {
        let copies = &events.records[&(*p, *o)];
        let acked_value = format!("\"{v}\"").into_bytes();
        assert!(copies.contains(&acked_value), "events/{p}/{o}: acknowledged value not in Kafka: {copies:?}");
    }
    // Only flushed records are forwarded, so a record a kill lost locally
    // never reached Kafka and a reused offset never names two records there
    // (this found the uplink forwarding unflushed records).
    let collisions: Vec<_> = [&events, &plant]
        .iter()
        .flat_map(|d| d.records.iter())
        .filter(|(_, copies)| copies.iter().any(|c| c != &copies[0]))
        .collect();
    assert!(collisions.is_empty(), "local offsets with two different records in Kafka: {collisions:?}");
    // One 64 KiB batch per partition per kill at most (records of 40+ bytes;
    // 50 ms of linger keeps the batches few, which tansu reads back faster).
    let per_batch = 64 * 1024 / 40;
    let duplicates = events.duplicates + plant.duplicates;
    assert!(duplicates as u64 <= CYCLES * 5 * per_batch, "{duplicates} duplicates");
    let sync_acked = acked.lock().unwrap().len();
    eprintln!(
        "fault figures: kill -9 loop: {CYCLES} cycles, {sync_acked} sync-acknowledged + {} MQTT records that \
         had to survive, {checks} record checks after restarts, 0 lost, {cursors} cursor checks, {} records \
         in Kafka, {duplicates} duplicates, 0 offsets with two different records in Kafka, {:.0} s",
        durable_mqtt.len(),
        events.records.len() + plant.records.len(),
        started.elapsed().as_secs_f64()
    );
}
