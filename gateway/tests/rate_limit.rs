//! Per-service ingest rate limits against the real binary: HTTP producers
//! over the limit get 429 with Retry-After while another service flows;
//! MQTT QoS 0 publishes over it are dropped and counted, QoS 1 ones wait.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::client;
use common::Gateway;
use rumqttc::{Packet, QoS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One record per second, ten seconds of burst: the second batch of ten
/// is over the limit however slow the machine is.
fn config() -> String {
    common::service_topics(&[("limited", "max_records_per_sec = 1\nrate_burst = \"10s\""), ("free", "")])
}

fn batch(n: usize) -> Value {
    json!({ "records": (0..n).map(|i| json!({ "value": i })).collect::<Vec<_>>() })
}

#[tokio::test]
async fn http_producer_over_its_rate_gets_429_while_another_service_flows() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config())).await;
    let (status, body) = gw.post_json("/v1/topics/limited/records", &batch(10)).await;
    assert_eq!(status, 200, "{body}");
    let r = gw.http.post(gw.url("/v1/topics/limited/records")).json(&batch(10)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("rate limit (max_records_per_sec = 1"), "{body}");
    // The other service is not limited.
    for _ in 0..5 {
        let (status, body) = gw.post_json("/v1/topics/free/records", &batch(50)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(gw.metric("sluice_service_rate_limited_total{service=\"limited\"}").await, 1);
    assert_eq!(gw.metric("sluice_service_rate_limited_total{service=\"free\"}").await, 0);
}

#[tokio::test]
async fn mqtt_qos0_over_the_rate_is_dropped_and_qos1_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}[[route]]\nmqtt = \"m/#\"\ntopic = \"limited\"\n", config());
    let gw = Gateway::start(&dir.path().join("d"), Some(&text)).await;
    let (c, _task, mut rx) = client(&gw, "fast").await;
    // QoS 0: what is over the limit is dropped and counted.
    const SENT: u64 = 30;
    for i in 0..SENT {
        c.publish("m/x", QoS::AtMostOnce, false, i.to_string().into_bytes()).await.unwrap();
    }
    let dropped_series = "sluice_mqtt_dropped_total{reason=\"rate_limited\",service=\"limited\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored_qos0 = loop {
        let (_, body) = gw.get_json("/v1/topics/limited/partitions/0/records?max_records=1000").await;
        let stored = body["records"].as_array().map_or(0, Vec::len) as u64;
        let dropped = gw.metric(dropped_series).await;
        if stored + dropped == SENT {
            assert!(dropped > 0 && stored >= 10, "stored {stored}, dropped {dropped}");
            break stored;
        }
        assert!(Instant::now() < deadline, "stored {stored} + dropped {dropped} never reached {SENT}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dropped_qos0 = gw.metric(dropped_series).await;
    // QoS 1: nothing is dropped; the connection waits for the rate, and
    // every PUBACK means stored.
    const ACKED: u64 = 3;
    for i in 0..ACKED {
        c.publish("m/x", QoS::AtLeastOnce, false, format!("q1-{i}").into_bytes()).await.unwrap();
    }
    let mut acks = 0;
    while acks < ACKED {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    // Acknowledged means appended; readers see it once durable.
    gw.settle("limited").await;
    let (_, body) = gw.get_json("/v1/topics/limited/partitions/0/records?max_records=1000").await;
    assert_eq!(body["records"].as_array().map_or(0, Vec::len) as u64, stored_qos0 + ACKED, "{body}");
    assert_eq!(gw.metric(dropped_series).await, dropped_qos0);
    assert_eq!(gw.metric("sluice_service_mqtt_acked_total{service=\"limited\"}").await, ACKED);
}
