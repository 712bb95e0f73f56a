//! The latency histograms of `/metrics`: ingest to durable per service
//! (sync lane and bulk lane), record age at delivery per consumer path
//! (partition fetch, group fetch, SSE, live MQTT subscriber) and at the
//! uplink's acknowledgement, in the Prometheus histogram format; and a
//! consumer group's lag in records and seconds.
#![allow(clippy::unwrap_used, dead_code)]

mod common;

use common::mqtt;
use common::Gateway;
use rumqttc::{Packet, QoS};
use serde_json::json;
use std::time::{Duration, Instant};

async fn receiver() -> String {
    let app = axum::Router::new().route("/ingest", axum::routing::post(|_: axum::body::Bytes| async {}));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The `_count` of the histogram series `name` with these labels (0 when
/// absent).
fn count(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_count{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_feeds_its_histogram() {
    let url = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[node]
id = "pi-01"
[[service]]
name = "alarms"
express = true
durability = "sync"
[[service]]
name = "logs"
weight = 1
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "logs"
service = "logs"
[[route]]
mqtt = "plant/+/alarm"
topic = "alarms"
[[uplink]]
name = "central"
kind = "http"
brokers = ["{url}"]
linger = "1ms"
"#
    );
    let gw = Gateway::start(&dir.path().join("data"), Some(&config)).await;
    let (sub, _task, mut packets) = mqtt::client(&gw, "histogram-sub").await;
    sub.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Packet::SubAck(_) = packets.recv().await.unwrap() {
            break;
        }
    }
    let (publisher, _ptask, _) = mqtt::client(&gw, "histogram-pub").await;
    publisher.publish("plant/dev-1/alarm", QoS::AtLeastOnce, false, r#"{"level":2}"#).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), packets.recv()).await {
            Ok(Some(Packet::Publish(_))) => break,
            Ok(Some(_)) => {}
            other => panic!("the subscriber got no publish: {other:?}"),
        }
    }

    gw.produce("alarms", &[json!({"a": 1}), json!({"a": 2})]).await;
    gw.produce("logs", &[json!({"l": 1}), json!({"l": 2}), json!({"l": 3})]).await;
    let (status, body) = gw.get_json("/v1/topics/alarms/partitions/0/records?offset=0").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        gw.post_json("/v1/groups/ops/fetch", &json!({"topics": ["logs"], "max_records": 10})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 3, "{body}");
    // The group commits the first of the three: two left, the oldest of
    // them some time old.
    gw.commit("ops", &body["records"].as_array().unwrap()[..1]).await;
    let mut sse = gw.http.get(gw.url("/v1/groups/watch/stream?topics=alarms")).send().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), sse.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"), "{first:?}");
    drop(sse);

    // Everything lands in its histogram (the uplink acknowledges in the
    // background).
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if count(&text, "sluice_uplink_ack_age_seconds", &["uplink=\"central\"", "service=\"logs\""]) >= 3
            && count(&text, "sluice_uplink_ack_age_seconds", &["uplink=\"central\"", "service=\"alarms\""])
                >= 3
        {
            break text;
        }
        assert!(Instant::now() < deadline, "the uplink acknowledgements never showed:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.contains("# TYPE sluice_delivery_age_seconds histogram"), "{metrics}");
    // The two HTTP alarms (sync lane) and the logs (bulk lane).
    assert!(count(&metrics, "sluice_ingest_durable_seconds", &["service=\"alarms\""]) >= 2, "{metrics}");
    assert!(count(&metrics, "sluice_ingest_durable_seconds", &["service=\"logs\""]) >= 1, "{metrics}");
    assert!(
        count(&metrics, "sluice_delivery_age_seconds", &["service=\"alarms\"", "path=\"fetch\""]) >= 3,
        "{metrics}"
    );
    assert_eq!(
        count(&metrics, "sluice_delivery_age_seconds", &["service=\"logs\"", "path=\"group\""]),
        3,
        "{metrics}"
    );
    assert!(
        count(&metrics, "sluice_delivery_age_seconds", &["service=\"alarms\"", "path=\"sse\""]) >= 1,
        "{metrics}"
    );
    assert!(
        count(&metrics, "sluice_delivery_age_seconds", &["service=\"alarms\"", "path=\"mqtt\""]) >= 1,
        "{metrics}"
    );
    // The group's lag, in records and seconds.
    let lag = |name: &str| -> f64 {
        let series = format!("{name}{{group=\"ops\",topic=\"logs\",partition=\"0\"}} ");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series}in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(lag("sluice_group_lag_records"), 2.0);
    assert!(lag("sluice_group_lag_seconds") > 0.0, "{metrics}");
    // Buckets as documented, cumulative, ending in +Inf.
    let buckets: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_delivery_age_seconds_bucket") && l.contains("path=\"group\""))
        .collect();
    assert_eq!(buckets.len(), 18, "{buckets:?}");
    assert!(buckets[0].contains("le=\"0.001\"") && buckets[17].contains("le=\"+Inf\""), "{buckets:?}");
    assert!(buckets[17].ends_with(" 3"), "{buckets:?}");
}
