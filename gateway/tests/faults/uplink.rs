//! Checks of what an uplink delivered to Kafka, shared by the fault tests.

use crate::common::Gateway;
use crate::kafka;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Waits until every service's uplink lag is 0.
pub(crate) async fn wait_drained(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, u) = gw.get_json("/v1/uplinks").await;
        let services = u["uplinks"][0]["services"].as_object().cloned().unwrap_or_default();
        let lag: u64 = services.values().map(|s| s["lag_records"].as_u64().unwrap_or(0)).sum();
        if lag == 0 && !services.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "uplink never drained: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one local topic looks like in Kafka after forwarding.
pub(crate) struct Delivered {
    /// (partition, local offset) -> the value of each copy.
    pub(crate) records: BTreeMap<(u64, u64), Vec<Vec<u8>>>,
    pub(crate) duplicates: usize,
}

/// Reads `edge.pi-01.<topic>` back with confluent-kafka and asserts every
/// local offset below each partition's high watermark arrived (none lost).
pub(crate) async fn assert_all_delivered(gw: &Gateway, bootstrap: &str, topic: &str) -> Delivered {
    let hws = high_watermarks(gw, topic).await;
    let total: u64 = hws.iter().sum();
    let got = kafka::read_all(bootstrap, &format!("edge.pi-01.{topic}"), total as usize).await;
    let mut records: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for r in &got {
        let header = |name: &str| -> u64 {
            let v = r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
            std::str::from_utf8(&v).unwrap().parse().unwrap()
        };
        let copies = records.entry((header("sluice.partition"), header("sluice.offset"))).or_default();
        copies.push(r.value.clone().unwrap_or_default());
    }
    for (p, hw) in hws.iter().enumerate() {
        for o in 0..*hw {
            assert!(records.contains_key(&(p as u64, o)), "{topic}/{p}/{o} never reached Kafka");
        }
    }
    let duplicates = records.values().map(|copies| copies.len() - 1).sum();
    Delivered { records, duplicates }
}

/// High watermark of each partition of `topic`, from `GET /v1/topics`.
pub(crate) async fn high_watermarks(gw: &Gateway, topic: &str) -> Vec<u64> {
    let (_, list) = gw.get_json("/v1/topics").await;
    let info = list["topics"].as_array().unwrap().iter().find(|t| t["name"] == topic).cloned();
    let info = info.unwrap_or_else(|| panic!("no topic {topic} in {list}"));
    info["partitions"].as_array().unwrap().iter().map(|p| p["high_watermark"].as_u64().unwrap()).collect()
}
