//! End to end with the standard Mosquitto command-line clients from
//! Debian's mosquitto-clients (installed by deploy/install-test-peers.sh):
//! publish with mosquitto_pub, read through the HTTP API, subscribe live
//! with mosquitto_sub.
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn host_port(addr: &str) -> (String, String) {
    let a: std::net::SocketAddr = addr.parse().unwrap();
    (a.ip().to_string(), a.port().to_string())
}

fn mosquitto_pub(addr: &str, args: &[&str]) {
    let (h, p) = host_port(addr);
    let out = Command::new("mosquitto_pub")
        .args(["-h", &h, "-p", &p, "-i", "mosq-pub"])
        .args(args)
        .output()
        .expect("mosquitto_pub is installed (deploy/install-test-peers.sh)");
    assert!(out.status.success(), "mosquitto_pub {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn records(gw: &Gateway, topic: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = gw.get_json(&format!("/v1/topics/{topic}/partitions/0/records?wait_ms=200")).await;
        if s == 200 && b["records"].as_array().unwrap().len() >= n {
            return b["records"].as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "{topic} never got {n} records");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mosquitto_clients_publish_and_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[mqtt]\nlisten_v5 = \"127.0.0.1:0\"\n";
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    let mqtt = gw.mqtt.clone().unwrap();

    // A live subscriber (a local service) on the embedded broker.
    let (h, p) = host_port(&mqtt);
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            &h,
            "-p",
            &p,
            "-i",
            "mosq-sub",
            "-t",
            "sensors/#",
            "-C",
            "2",
            "-W",
            "60",
            "-v",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the subscription time to register; a publish before it is only
    // missed by the live subscriber, never by the log.
    tokio::time::sleep(Duration::from_millis(500)).await;

    mosquitto_pub(&mqtt, &["-t", "sensors/dev-1", "-m", r#"{"t":21.5}"#, "-q", "1"]);
    mosquitto_pub(&mqtt, &["-t", "sensors/dev-2", "-m", "plain text", "-q", "0"]);
    let recs = records(&gw, "sensors", 2).await;
    assert_eq!(recs[0]["key"], "dev-1");
    assert_eq!(recs[0]["value"]["t"], 21.5);
    assert_eq!(recs[1]["key"], "dev-2");
    assert_eq!(recs[1]["value_b64"], "cGxhaW4gdGV4dA==");

    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap()).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#"sensors/dev-1 {"t":21.5}"#), "mosquitto_sub got: {text}");
    assert!(text.contains("sensors/dev-2 plain text"), "mosquitto_sub got: {text}");

    // MQTT 5 on its own listener.
    let v5 = gw.mqtt_v5.clone().expect("MQTT 5 listener");
    mosquitto_pub(&v5, &["-V", "mqttv5", "-t", "v5topic/k", "-m", "5", "-q", "1"]);
    let recs = records(&gw, "v5topic", 1).await;
    assert_eq!(recs[0]["value"], 5);
}
