//! A PUBACK means stored: many connections publishing QoS 1 at full speed
//! get exactly as many acknowledgements as there are records, and a
//! `sync` service keeps every acknowledged publish across kill -9.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::try_client;
use common::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 100;
const PER_CONNECTION: u64 = 200;
const IN_FLIGHT: u16 = 100;

/// Records stored in `topic`, from the watermarks.
async fn stored(gw: &Gateway, topic: &str) -> u64 {
    let (_, body) = gw.get_json("/v1/topics").await;
    body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == topic)
        .flat_map(|t| t["partitions"].as_array().unwrap().iter())
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum()
}

/// One publisher: `PER_CONNECTION` QoS 1 publishes of 4 KiB (on the old ingest path, through rumqttd's router, about 30% of these were acknowledged and lost) with up to
/// `IN_FLIGHT` unacknowledged; returns the PUBACKs it got.
async fn flood(addr: std::net::SocketAddr, id: usize) -> u64 {
    let mut opts = MqttOptions::new(format!("flood-{id}"), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_inflight(IN_FLIGHT);
    let (client, mut eventloop) = AsyncClient::new(opts, usize::from(IN_FLIGHT));
    let acks = Arc::new(AtomicU64::new(0));
    let counted = acks.clone();
    let events = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if counted.fetch_add(1, Ordering::Relaxed) + 1 == PER_CONNECTION {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => return eprintln!("flood-{id}: {e:?}"),
            }
        }
    });
    let payload = vec![b'x'; 4096];
    for _ in 0..PER_CONNECTION {
        client.publish(format!("load/c{id}"), QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(180), events).await;
    acks.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_full_speed_every_puback_is_a_stored_record() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    let addr: std::net::SocketAddr = gw.mqtt.as_ref().unwrap().parse().unwrap();
    let tasks: Vec<_> = (0..CONNECTIONS).map(|id| tokio::spawn(flood(addr, id))).collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(acked, CONNECTIONS as u64 * PER_CONNECTION, "every publish is acknowledged in the end");
    // Acknowledged means appended: the records are there now, not later.
    assert_eq!(stored(&gw, "load").await, acked);
    let service = "service=\"default\"";
    assert_eq!(gw.metric(&format!("sluice_service_mqtt_acked_total{{{service}}}")).await, acked);
    assert_eq!(gw.metric(&format!("sluice_service_mqtt_stored_total{{{service}}}")).await, acked);
    assert_eq!(gw.metric(&format!("sluice_service_mqtt_in_total{{{service}}}")).await, acked);
    assert_eq!(gw.metric(&format!("sluice_service_mqtt_failed_total{{{service}}}")).await, 0);
    assert_eq!(gw.metric("sluice_mqtt_received_total").await, acked);
}

const SYNC: &str = r#"
[store]
sync_window = "1ms"
[[service]]
name = "critical"
durability = "sync"
[[topic]]
name = "events"
service = "critical"
[[route]]
mqtt = "crit/#"
topic = "events"
"#;

/// Publishes `"<id>-<seq>"` one at a time (QoS 1) and records each payload
/// whose PUBACK arrived, until the connection breaks.
async fn sync_publisher(gw_mqtt: String, id: String, acked: Arc<Mutex<BTreeSet<String>>>) {
    let addr: std::net::SocketAddr = gw_mqtt.parse().unwrap();
    let mut opts = MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                let _ = tx.send(());
            }
        }
    });
    for seq in 0u64.. {
        let payload = format!("\"{id}-{seq}\"");
        if client.publish("crit/x", QoS::AtLeastOnce, false, payload.clone().into_bytes()).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(())) => {
                acked.lock().unwrap().insert(payload);
            }
            _ => break,
        }
    }
    events.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_every_acknowledged_publish_of_a_sync_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some(SYNC)).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    for cycle in 0..3u64 {
        let before = acked.lock().unwrap().len();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let id = format!("c{cycle}-p{i}");
                tokio::spawn(sync_publisher(gw.mqtt.clone().unwrap(), id, acked.clone()))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < before + 40 {
            assert!(Instant::now() < deadline, "publishes are not acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(13 * cycle)).await;
        gw.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        gw = gw.crash_and_restart().await;
        let mut stored = BTreeSet::new();
        let mut offset = 0;
        loop {
            let (s, body) = gw
                .get_json(&format!("/v1/topics/events/partitions/0/records?offset={offset}&max_records=1000"))
                .await;
            assert_eq!(s, 200, "{body}");
            let records = body["records"].as_array().unwrap();
            if records.is_empty() {
                break;
            }
            offset = records.last().unwrap()["offset"].as_u64().unwrap() + 1;
            stored.extend(records.iter().map(|r| r["value"].to_string()));
        }
        let acked = acked.lock().unwrap();
        let missing: Vec<_> = acked.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: {} acknowledged publishes lost: {missing:?}",
            missing.len()
        );
    }
    // The harness's own client helper still connects after the crashes.
    try_client(&gw, "after", |_| {}).await.unwrap();
}
