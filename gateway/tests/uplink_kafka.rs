//! Forwarding end to end from the `sluice` binary to a real Kafka-protocol
//! broker (tansu), verified with an independent client (confluent-kafka):
//! HTTP and MQTT records arrive with key, headers and per-partition order;
//! an outage loses nothing and drains the express backlog first; a SIGKILL
//! while forwarding loses nothing and duplicates at most one batch per
//! partition.
#![allow(clippy::unwrap_used, dead_code)]

mod common;
#[path = "../../uplink/tests/common/mod.rs"]
mod kafka;

use common::Gateway;
use kafka::tansu::Tansu;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn config(bootstrap: &str, extra: &str) -> String {
    format!(
        r#"
[node]
id = "pi-01"
[[service]]
name = "alarms"
express = true
[[service]]
name = "telemetry"
weight = 4
[[service]]
name = "logs"
weight = 1
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "telemetry"
service = "telemetry"
partitions = 2
[[topic]]
name = "logs"
service = "logs"
[[uplink]]
name = "central"
kind = "kafka"
brokers = ["{bootstrap}"]
compression = "lz4"
linger = "2ms"
batch_max_bytes = "16KiB"
{extra}
"#
    )
}

fn header<'a>(r: &'a kafka::Consumed, name: &str) -> Option<&'a [u8]> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

async fn lag(gw: &Gateway, service: &str) -> u64 {
    let (_, u) = gw.get_json("/v1/uplinks").await;
    u["uplinks"][0]["services"][service]["lag_records"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_mqtt_records_arrive_in_kafka_with_keys_headers_and_order() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(&tansu.bootstrap(), ""))).await;
    let recs: Vec<Value> = (0..40)
        .map(|i| json!({ "key": format!("dev-{}", i % 4), "value": { "i": i }, "headers": { "unit": "C" } }))
        .collect();
    let (s, _) = gw.post_json("/v1/topics/telemetry/records", &json!({ "records": recs })).await;
    assert_eq!(s, 200);
    // And over MQTT, routed by the default first-level rule.
    let (h, p) = {
        let a: std::net::SocketAddr = gw.mqtt.clone().unwrap().parse().unwrap();
        (a.ip().to_string(), a.port().to_string())
    };
    for i in 0..5 {
        let st = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                &h,
                "-p",
                &p,
                "-q",
                "1",
                "-t",
                &format!("alarms/dev-{i}"),
                "-m",
                &format!("{{\"a\":{i}}}"),
            ])
            .status()
            .expect("mosquitto_pub (deploy/install-test-peers.sh)");
        assert!(st.success());
    }
    let got = kafka::read_all(&tansu.bootstrap(), "edge.pi-01.telemetry", 40).await;
    let unique: BTreeSet<(i32, i64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(unique.len(), 40);
    let mut by_partition: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for r in &got {
        let src: u64 = std::str::from_utf8(header(r, "sluice.offset").unwrap()).unwrap().parse().unwrap();
        let src_p: i32 =
            std::str::from_utf8(header(r, "sluice.partition").unwrap()).unwrap().parse().unwrap();
        assert_eq!(src_p, r.partition, "remote partition = local partition");
        by_partition.entry(r.partition).or_default().push(src);
        assert_eq!(header(r, "unit"), Some(&b"C"[..]));
        assert_eq!(header(r, "sluice.node"), Some(&b"pi-01"[..]));
        assert_eq!(header(r, "sluice.service"), Some(&b"telemetry"[..]));
        assert!(r.key.as_deref().unwrap().starts_with(b"dev-"));
    }
    for offsets in by_partition.values() {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "per-partition order: {offsets:?}");
    }
    let alarms = kafka::read_all(&tansu.bootstrap(), "edge.pi-01.alarms", 5).await;
    let keys: BTreeSet<Vec<u8>> = alarms.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys.len(), 5, "MQTT keys carried: {keys:?}");
    assert_eq!(header(&alarms[0], "mqtt.topic").map(|v| v.starts_with(b"alarms/")), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_loses_nothing_and_the_express_backlog_drains_first() {
    let mut tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // A bandwidth cap makes the drain long enough to watch.
    let cfg = config(&tansu.bootstrap(), "max_bytes_per_sec = \"64KiB\"");
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    gw.produce("logs", &[json!("before")]).await;
    kafka::read_all(&tansu.bootstrap(), "edge.pi-01.logs", 1).await;

    tansu.stop();
    let filler = "l".repeat(1000);
    for chunk in 0..8 {
        let vals: Vec<Value> = (0..50).map(|i| json!(format!("{chunk}-{i}-{filler}"))).collect();
        gw.produce("logs", &vals).await;
    }
    let alarms: Vec<Value> = (0..10).map(|i| json!(format!("alarm-{i}"))).collect();
    gw.produce("alarms", &alarms).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, u) = gw.get_json("/v1/uplinks").await;
        let state = u["uplinks"][0]["state"].as_str().unwrap_or("").to_owned();
        if state == "backing_off" || state == "failing" {
            break;
        }
        assert!(Instant::now() < deadline, "the outage was never noticed: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tansu.restart();
    // Watch the drain: the alarms' lag reaches 0 while the logs still lag.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut alarms_first = false;
    loop {
        let (a, l) = (lag(&gw, "alarms").await, lag(&gw, "logs").await);
        if a == 0 && l > 0 {
            alarms_first = true;
        }
        if a == 0 && l == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "drain did not finish: alarms {a}, logs {l}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alarms_first, "the express backlog should be forwarded before the low-weight one");
    let logs = kafka::read_all(&tansu.bootstrap(), "edge.pi-01.logs", 401).await;
    let offsets: BTreeSet<u64> = logs
        .iter()
        .map(|r| std::str::from_utf8(header(r, "sluice.offset").unwrap()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets, (0..401).collect(), "no record lost across the outage");
    let alarms = kafka::read_all(&tansu.bootstrap(), "edge.pi-01.alarms", 10).await;
    assert_eq!(alarms.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_forwarding_loses_nothing_and_duplicates_at_most_a_batch() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&tansu.bootstrap(), "max_bytes_per_sec = \"32KiB\"");
    let mut gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let filler = "t".repeat(500);
    for chunk in 0..4 {
        let vals: Vec<Value> = (0..50)
            .map(|i| json!({ "key": format!("k{}", i % 2), "value": format!("{chunk}-{i}-{filler}") }))
            .collect();
        gw.post_json("/v1/topics/telemetry/records", &json!({ "records": vals })).await;
    }
    // Kill while the capped drain is under way.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, u) = gw.get_json("/v1/uplinks").await;
        let sent = u["uplinks"][0]["services"]["telemetry"]["sent_records"].as_u64().unwrap_or(0);
        if sent > 20 {
            break;
        }
        assert!(Instant::now() < deadline, "forwarding never started: {u}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill9();
    let gw = gw.crash_and_restart().await;
    let got = kafka::read_all(&tansu.bootstrap(), "edge.pi-01.telemetry", 200).await;
    let mut per_source: BTreeMap<(i32, u64), usize> = BTreeMap::new();
    for r in &got {
        let src: u64 = std::str::from_utf8(header(r, "sluice.offset").unwrap()).unwrap().parse().unwrap();
        *per_source.entry((r.partition, src)).or_default() += 1;
    }
    assert_eq!(per_source.len(), 200, "every record forwarded after the crash");
    let duplicates: usize = per_source.values().map(|n| n - 1).sum();
    // One 16 KiB batch of ~600-byte records per partition at most.
    let per_batch = 16 * 1024 / 500 + 1;
    assert!(duplicates <= 2 * per_batch, "{duplicates} duplicates");
    drop(gw);
}
