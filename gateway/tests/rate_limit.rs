//! Per-service ingest rate limits against the real binary: HTTP producers
//! over the limit get 429 with Retry-After while another service flows;
//! MQTT publishes over it are dropped and counted.
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
async fn mqtt_publishes_over_the_rate_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}[[route]]\nmqtt = \"m/#\"\ntopic = \"limited\"\n", config());
    let gw = Gateway::start(&dir.path().join("d"), Some(&text)).await;
    let (c, _task, mut rx) = client(&gw, "fast").await;
    const SENT: u64 = 30;
    for i in 0..SENT {
        c.publish("m/x", QoS::AtLeastOnce, false, i.to_string().into_bytes()).await.unwrap();
    }
    let mut acks = 0;
    while acks < SENT {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    // Every publish is either stored or counted as dropped.
    let dropped_series = "sluice_mqtt_dropped_total{reason=\"rate_limited\",service=\"limited\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = gw.get_json("/v1/topics/limited/partitions/0/records?max_records=1000").await;
        let stored = body["records"].as_array().map_or(0, Vec::len) as u64;
        let dropped = gw.metric(dropped_series).await;
        if stored + dropped == SENT {
            assert!(dropped > 0 && stored >= 10, "stored {stored}, dropped {dropped}");
            break;
        }
        assert!(Instant::now() < deadline, "stored {stored} + dropped {dropped} never reached {SENT}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
