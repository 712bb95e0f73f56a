//! Load and read-back shared by the crash and fault tests: `sync` HTTP
//! producers that remember what was acknowledged, MQTT QoS 1 publishers,
//! and reading a partition back.

use super::{offsets, Gateway};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Configuration of the mixed-load fault tests: a `sync` service `critical`
/// owning topic `events` (HTTP), a buffered `sensors` owning `plant`
/// (MQTT), with `events_partitions` and `plant_partitions`, and short flush
/// windows.
pub fn mixed_config(events_partitions: u32, plant_partitions: u32) -> String {
    format!(
        "[store]\nsync_window = \"1ms\"\nflush_interval = \"20ms\"\n\
         [[service]]\nname = \"critical\"\ndurability = \"sync\"\n[[service]]\nname = \"sensors\"\n\
         [[topic]]\nname = \"events\"\nservice = \"critical\"\npartitions = {events_partitions}\n\
         [[topic]]\nname = \"plant\"\nservice = \"sensors\"\npartitions = {plant_partitions}\n"
    )
}

/// Acknowledged records: (partition, offset) -> value.
pub type Acked = Arc<Mutex<BTreeMap<(u64, u64), String>>>;

/// Produces 3-record requests to `topic` until the gateway stops answering;
/// records every acknowledged record and fails on an offset handed out twice.
pub async fn producer(base: String, client: reqwest::Client, topic: &'static str, id: usize, acked: Acked) {
    for seq in 0u64.. {
        let values: Vec<Value> = (0..3)
            .map(|i| json!({ "key": format!("k{id}-{i}"), "value": format!("p{id}-s{seq}-r{i}") }))
            .collect();
        let resp = client
            .post(format!("{base}/v1/topics/{topic}/records"))
            .json(&json!({ "records": values }))
            .send()
            .await;
        let Ok(resp) = resp else { return };
        if resp.status() != 200 {
            return;
        }
        let Ok(body) = resp.json::<Value>().await else { return };
        let mut a = acked.lock().unwrap();
        for (i, po) in offsets(&body).into_iter().enumerate() {
            let prev = a.insert(po, format!("p{id}-s{seq}-r{i}"));
            assert!(prev.is_none(), "offset {po:?} handed out twice");
        }
    }
}

/// Every record of `topic`/`partition` from offset 0, as offset -> value.
pub async fn read_partition(gw: &Gateway, topic: &str, partition: u64) -> BTreeMap<u64, Value> {
    let mut stored = BTreeMap::new();
    let mut from = 0;
    loop {
        let (s, body) = gw
            .get_json(&format!(
                "/v1/topics/{topic}/partitions/{partition}/records?offset={from}&max_records=10000"
            ))
            .await;
        assert_eq!(s, 200, "reading {topic}/{partition}: {body}");
        let recs = body["records"].as_array().unwrap();
        for r in recs {
            stored.insert(r["offset"].as_u64().unwrap(), r["value"].clone());
        }
        match recs.last() {
            Some(last) => from = last["offset"].as_u64().unwrap() + 1,
            None => return stored,
        }
    }
}

/// Asserts every record of `expected` is stored at its offset with its
/// value; returns how many were checked.
pub async fn assert_stored(
    gw: &Gateway,
    topic: &str,
    expected: &BTreeMap<(u64, u64), String>,
    what: &str,
) -> usize {
    let mut partitions: BTreeMap<u64, BTreeMap<u64, Value>> = BTreeMap::new();
    for ((p, o), v) in expected {
        if !partitions.contains_key(p) {
            partitions.insert(*p, read_partition(gw, topic, *p).await);
        }
        assert_eq!(
            partitions[p].get(o).and_then(Value::as_str),
            Some(v.as_str()),
            "{what}: record {topic}/{p}/{o} lost or changed"
        );
    }
    expected.len()
}

/// A value of a metric line without labels (or with exactly `labels`).
pub async fn metric(gw: &Gateway, name_and_labels: &str) -> f64 {
    let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits until two more flushes than now succeeded: then everything
/// appended before this call is on disk, whatever the machine's speed (the
/// flush under way now may have started before the last append).
pub async fn wait_two_flushes(gw: &Gateway) {
    let ok = |gw| async move {
        metric(gw, "sluice_store_flushes_total").await - metric(gw, "sluice_store_flush_failures_total").await
    };
    let start = ok(gw).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok(gw).await < start + 2.0 {
        assert!(Instant::now() < deadline, "no flush in 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An MQTT 3.1.1 client publishing JSON strings `"<prefix>-<seq>"` with
/// QoS 1 to `mqtt_topic`, up to 200 per second, until `stop` is set or
/// the broker goes away. Returns how many publishes were acknowledged.
pub async fn mqtt_publisher(
    addr: String,
    client_id: String,
    mqtt_topic: String,
    stop: Arc<AtomicBool>,
) -> u64 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut opts = MqttOptions::new(client_id.clone(), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = acks.clone();
    let events = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) || events.is_finished() {
            break;
        }
        let payload = format!("\"{client_id}-{seq}\"");
        if client.publish(mqtt_topic.as_str(), QoS::AtLeastOnce, false, payload.into_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    events.abort();
    acks.load(Ordering::Relaxed)
}
