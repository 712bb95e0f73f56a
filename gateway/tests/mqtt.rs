//! MQTT ingest through the embedded broker, with rumqttc clients against
//! the real binary on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{client, read_n};
use common::Gateway;
use rumqttc::{Packet, QoS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[[service]]
name = "alarms"
express = true
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "telemetry"
partitions = 2
[[route]]
mqtt = "plant/+/alarm"
topic = "alarms"
key = "level:2"
[[route]]
mqtt = "plant/+/telemetry/#"
topic = "telemetry"
key = "json:/device/id"
"#;

#[tokio::test]
async fn qos0_and_qos1_publishes_land_in_the_routed_topics() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(ROUTES)).await;
    let (c, _task, mut rx) = client(&gw, "sensor-1").await;
    c.publish("plant/dev-7/alarm", QoS::AtLeastOnce, false, br#"{"level":"high"}"#.to_vec()).await.unwrap();
    c.publish("plant/dev-7/alarm", QoS::AtMostOnce, false, b"raw \xff bytes".to_vec()).await.unwrap();
    c.publish(
        "plant/dev-8/telemetry/temp",
        QoS::AtLeastOnce,
        false,
        br#"{"device":{"id":"d-8"},"t":20}"#.to_vec(),
    )
    .await
    .unwrap();
    c.publish("plant/dev-9/telemetry/temp", QoS::AtLeastOnce, false, b"no json here".to_vec()).await.unwrap();
    c.publish("other/thing", QoS::AtLeastOnce, false, b"1".to_vec()).await.unwrap();
    // Four QoS 1 acknowledgements come back.
    let mut acks = 0;
    while acks < 4 {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    let alarms = read_n(&gw, "alarms", 0, 2).await;
    assert_eq!(alarms[0]["key"], "dev-7");
    assert_eq!(alarms[0]["value"], json!({ "level": "high" }));
    assert_eq!(alarms[0]["headers"]["mqtt.topic"], "plant/dev-7/alarm");
    assert_eq!(alarms[1]["value_b64"], "cmF3IP8gYnl0ZXM=");

    let mut tele = read_n(&gw, "telemetry", 0, 0).await;
    tele.extend(read_n(&gw, "telemetry", 1, 0).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tele.len() < 2 {
        assert!(Instant::now() < deadline);
        tele = read_n(&gw, "telemetry", 0, 0).await;
        tele.extend(read_n(&gw, "telemetry", 1, 0).await);
    }
    let keyed: Vec<&Value> = tele.iter().filter(|r| r["key"] == "d-8").collect();
    assert_eq!(keyed.len(), 1, "{tele:?}");
    assert!(
        tele.iter().any(|r| r["key"].is_null() && r["value_b64"].is_string()),
        "missing JSON key -> keyless"
    );

    // Unrouted publishes follow mqtt.unrouted (default first_level).
    let other = read_n(&gw, "other", 0, 1).await;
    assert_eq!(other[0]["key"], "thing");

    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sluice_mqtt_key_missing_total 1"), "{metrics}");
    let conns: u64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_mqtt_connections "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("sluice_mqtt_connections gauge");
    assert!(conns >= 1, "the test's client is connected: {conns}");
    assert!(metrics.contains("sluice_service_mqtt_in_total{service=\"alarms\"} 2"), "{metrics}");
}

#[tokio::test]
async fn live_subscribers_still_get_publishes_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        &dir.path().join("d"),
        Some("[mqtt]\nunrouted = \"drop\"\n[[route]]\nmqtt = \"a/#\"\ntopic = \"a\"\n"),
    )
    .await;
    let (sub, _t1, mut rx) = client(&gw, "local-service").await;
    sub.subscribe("a/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Packet::SubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            break;
        }
    }
    let (publ, _t2, _rx2) = client(&gw, "sensor").await;
    publ.publish("a/1", QoS::AtLeastOnce, false, b"hello".to_vec()).await.unwrap();
    publ.publish("b/1", QoS::AtLeastOnce, false, b"nowhere".to_vec()).await.unwrap();
    let got = loop {
        if let Packet::Publish(p) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            break p;
        }
    };
    assert_eq!(&got.topic[..], "a/1");
    assert_eq!(&got.payload[..], b"hello");
    read_n(&gw, "a", 0, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.contains("sluice_mqtt_dropped_total{reason=\"unrouted\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = gw.get_json("/v1/topics/b/partitions/0/records").await;
    assert_eq!(s, 404, "unrouted publishes create no topic");
}

#[tokio::test]
async fn publishes_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    let (c, _task, mut rx) = client(&gw, "sensor").await;
    for i in 0..200 {
        c.publish(format!("fleet/truck-{}", i % 5), QoS::AtLeastOnce, false, format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < 200 {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    // Every acknowledged publish is persisted by the drain on SIGTERM.
    let gw = gw.restart().await;
    let recs = read_n(&gw, "fleet", 0, 200).await;
    assert_eq!(recs.len(), 200);
    let values: Vec<u64> = recs.iter().map(|r| r["value"].as_u64().unwrap()).collect();
    assert_eq!(values, (0..200).collect::<Vec<_>>(), "one publisher, one topic: order kept");
}

async fn unflushed(gw: &Gateway) -> u64 {
    let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("sluice_store_unflushed_jobs ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn sigkill_after_the_flush_window_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some("[store]\nflush_interval = \"20ms\"\n")).await;
    let (c, _task, mut rx) = client(&gw, "sensor").await;
    for i in 0..300 {
        c.publish("crash/k", QoS::AtLeastOnce, false, format!("{i}").into_bytes()).await.unwrap();
    }
    let mut acks = 0;
    while acks < 300 {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    // Appended, then flushed by the background flusher: the stated window
    // has passed for every acknowledged publish, whatever the machine's speed.
    read_n(&gw, "crash", 0, 300).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while unflushed(&gw).await > 0 {
        assert!(Instant::now() < deadline, "no background flush");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gw = gw.crash_and_restart().await;
    let recs = read_n(&gw, "crash", 0, 300).await;
    let values: Vec<u64> = recs.iter().map(|r| r["value"].as_u64().unwrap()).collect();
    assert_eq!(values, (0..300).collect::<Vec<_>>());
}

#[tokio::test]
async fn express_mqtt_records_reach_a_group_consumer_before_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[[service]]
name = "alarms"
express = true
[[service]]
name = "bulk"
weight = 1
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "bulk"
service = "bulk"
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    let (c, _task, mut rx) = client(&gw, "sensor").await;
    for i in 0..300 {
        c.publish("bulk/x", QoS::AtLeastOnce, false, format!("{i}").into_bytes()).await.unwrap();
    }
    for i in 0..5 {
        c.publish("alarms/x", QoS::AtLeastOnce, false, format!("{i}").into_bytes()).await.unwrap();
    }
    let mut acks = 0;
    while acks < 305 {
        if let Packet::PubAck(_) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap()
        {
            acks += 1;
        }
    }
    read_n(&gw, "alarms", 0, 5).await;
    read_n(&gw, "bulk", 0, 300).await;
    let (_, body) = gw
        .post_json("/v1/groups/ops/fetch", &json!({ "topics": ["bulk", "alarms"], "max_records": 10 }))
        .await;
    let topics: Vec<&str> =
        body["records"].as_array().unwrap().iter().map(|r| r["topic"].as_str().unwrap()).collect();
    assert_eq!(topics[0], "alarms", "{topics:?}");
    assert_eq!(
        topics.iter().filter(|t| **t == "alarms").count(),
        5,
        "all 5 alarms within the first 10: {topics:?}"
    );
}

/// `mosquitto_pub` QoS 1 at protocol `version` (`mqttv311`, `mqttv5`).
fn mosquitto_pub(addr: &str, version: &str, topic: &str, message: &str) {
    let a: std::net::SocketAddr = addr.parse().unwrap();
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-V", version, "-h", &a.ip().to_string(), "-p", &a.port().to_string(), "-q", "1"])
        .args(["-i", &format!("pub-{version}"), "-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub is installed (deploy/install-test-peers.sh)");
    assert!(out.status.success(), "mosquitto_pub {version}: {}", String::from_utf8_lossy(&out.stderr));
}

/// MQTT 3.1.1 over a raw socket: CONNECT with keep-alive 0 (MQTT-3.1.2-10:
/// no keep-alive), then one QoS 1 PUBLISH; returns the CONNACK and PUBACK.
async fn keep_alive_zero_publish(addr: &str, topic: &str, payload: &[u8]) -> ([u8; 4], [u8; 4]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let id = b"ka-zero";
    let mut connect =
        vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, id.len() as u8];
    connect.extend_from_slice(id);
    s.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    let mut publish = vec![0x32, (2 + topic.len() + 2 + payload.len()) as u8, 0, topic.len() as u8];
    publish.extend_from_slice(topic.as_bytes());
    publish.extend_from_slice(&[0x12, 0x34]);
    publish.extend_from_slice(payload);
    s.write_all(&publish).await.unwrap();
    let mut puback = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut puback)).await.unwrap().unwrap();
    s.write_all(&[0xE0, 0]).await.unwrap();
    (connack, puback)
}

#[tokio::test]
async fn one_port_serves_3_1_1_and_5_and_keep_alive_0_with_a_quiet_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut gw = Gateway::try_start(&data, None, &[]).await.unwrap();
    let addr = gw.mqtt.clone().unwrap();
    mosquitto_pub(&addr, "mqttv311", "both/v4", "\"four\"");
    mosquitto_pub(&addr, "mqttv5", "both/v5", "\"five\"");
    let (connack, puback) = keep_alive_zero_publish(&addr, "both/ka0", b"\"zero\"").await;
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    assert_eq!(puback, [0x40, 2, 0x12, 0x34], "PUBACK of packet id 0x1234");
    let records = read_n(&gw, "both", 0, 3).await;
    let values: Vec<_> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, [json!("four"), json!("five"), json!("zero")]);
    // A live subscriber comes and goes, too.
    let (c, task, _rx) = client(&gw, "watcher").await;
    c.subscribe("both/#", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    gw.signal("TERM");
    gw.terminate_wait();
    // SLUICE_LOG=warn: a healthy run writes nothing at WARN or ERROR.
    let log = std::fs::read_to_string(data.with_extension("stderr")).unwrap();
    let noisy: Vec<_> = log.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
    assert!(noisy.is_empty(), "log lines at WARN or ERROR in a healthy run:\n{}", noisy.join("\n"));
}

/// Reads one whole packet (remaining length under 128).
async fn read_packet(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut head)).await.unwrap().unwrap();
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).await.unwrap();
    [&head[..], &rest].concat()
}

#[tokio::test]
async fn mqtt5_qos2_packet_id_is_free_again_after_a_failed_pubrec() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    let mut s = tokio::net::TcpStream::connect(gw.mqtt.as_ref().unwrap()).await.unwrap();
    let id = b"q2";
    let mut connect =
        vec![0x10, (13 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 2];
    connect.extend_from_slice(id);
    s.write_all(&connect).await.unwrap();
    let connack = read_packet(&mut s).await;
    assert_eq!((connack[0], connack[3]), (0x20, 0), "CONNACK success: {connack:?}");
    let publish = |topic: &str, payload: &[u8]| {
        let mut p = vec![0x34, (2 + topic.len() + 2 + 1 + payload.len()) as u8, 0, topic.len() as u8];
        p.extend_from_slice(topic.as_bytes());
        p.extend_from_slice(&[0, 5, 0]);
        p.extend_from_slice(payload);
        p
    };
    // "bad level" is no log topic name: PUBREC 0x90 ends the exchange.
    s.write_all(&publish("bad level/x", b"1")).await.unwrap();
    assert_eq!(read_packet(&mut s).await, [0x50, 3, 0, 5, 0x90]);
    // So packet id 5 is new again: stored, PUBREC success, PUBCOMP on PUBREL.
    s.write_all(&publish("plant/x", b"\"two\"")).await.unwrap();
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 5]);
    s.write_all(&[0x62, 2, 0, 5]).await.unwrap();
    assert_eq!(read_packet(&mut s).await, [0x70, 2, 0, 5]);
    let records = read_n(&gw, "plant", 0, 1).await;
    assert_eq!(records[0]["value"], json!("two"));
}
