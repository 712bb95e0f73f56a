//! Retention, disk-budget eviction by priority, TTL, SIGHUP reload and
//! refusal of sections this version cannot run, end to end.
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn stored_bytes(gw: &Gateway) -> std::collections::BTreeMap<String, u64> {
    let (_, body) = gw.get_json("/v1/services").await;
    body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["stored_bytes"].as_u64().unwrap()))
        .collect()
}

/// Polls `cond` (maintenance runs every second) for up to a minute.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn over_budget_evicts_lowest_priority_first_but_keeps_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[store]
max_bytes = "1MiB"
segment_bytes = "16KiB"
[[service]]
name = "alarms"
express = true
[[service]]
name = "telemetry"
weight = 4
[[service]]
name = "logs"
weight = 1
reserved_bytes = "100KiB"
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "telemetry"
service = "telemetry"
[[topic]]
name = "logs"
service = "logs"
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    let chunk: Vec<Value> = (0..64).map(|i| json!(format!("{i:04}-{}", "v".repeat(1000)))).collect();
    for _ in 0..8 {
        gw.produce("logs", &chunk).await; // ~512 KiB
    }
    for _ in 0..16 {
        gw.produce("telemetry", &chunk).await; // ~1 MiB
    }
    gw.produce("alarms", &chunk[..16]).await;
    eventually("eviction under 1 MiB", || async { stored_bytes(&gw).await.values().sum::<u64>() <= 1 << 20 })
        .await;
    let bytes = stored_bytes(&gw).await;
    assert!(bytes["logs"] >= 100 * 1024, "reserved bytes kept: {bytes:?}");
    // Whole segments go: down to the reservation plus at most one segment.
    assert!(bytes["logs"] < (100 + 17) * 1024, "logs evicted first, down to its reservation: {bytes:?}");
    let (_, t) = gw.get_json("/v1/topics/telemetry/partitions/0/records?max_records=1").await;
    assert!(t["log_start"].as_u64().unwrap() > 0, "then the next lowest priority, telemetry: {bytes:?}");
    let (_, a) = gw.get_json("/v1/topics/alarms/partitions/0/records").await;
    assert_eq!(a["records"].as_array().unwrap().len(), 16);
    // The oldest logs went first: what is left is a suffix.
    let (_, l) = gw.get_json("/v1/topics/logs/partitions/0/records?max_records=10000").await;
    let recs = l["records"].as_array().unwrap();
    assert_eq!(recs.last().unwrap()["offset"], 8 * 64 - 1);
    assert_eq!(l["log_start"], recs[0]["offset"]);
    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("sluice_service_evicted_total{service=\"logs\"} 0\n"), "{metrics}");
}

#[tokio::test]
async fn retention_by_bytes_and_ttl_skips_at_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[[service]]
name = "fleeting"
ttl = "1s"
[[topic]]
name = "short"
retention = { max_bytes = "8KiB" }
[store]
segment_bytes = "4KiB"
[[topic]]
name = "fleeting"
service = "fleeting"
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    let vals: Vec<Value> = (0..40).map(|i| json!(format!("{i}-{}", "r".repeat(1000)))).collect();
    gw.produce("short", &vals).await;
    // Whole segments of 4 KiB go while 8 KiB remain without them: at most
    // 8 KiB plus one segment (about 12 records of 1 KiB) is kept.
    eventually("retention by bytes", || async {
        let (_, b) = gw.get_json("/v1/topics/short/partitions/0/records?max_records=1000").await;
        b["records"].as_array().unwrap().len() <= 12
    })
    .await;
    let (_, b) = gw.get_json("/v1/topics/short/partitions/0/records?max_records=1000").await;
    assert_eq!(b["records"].as_array().unwrap().last().unwrap()["offset"], 39, "newest kept");

    gw.produce("fleeting", &[json!("old-1"), json!("old-2")]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.produce("fleeting", &[json!("fresh")]).await;
    let (_, body) = gw.post_json("/v1/groups/g/fetch", &json!({ "topics": ["fleeting"] })).await;
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{body}");
    assert_eq!(recs[0]["value"], "fresh");
    let (_, s) = gw.get_json("/v1/services").await;
    let fleeting =
        s["services"].as_array().unwrap().iter().find(|s| s["name"] == "fleeting").unwrap().clone();
    assert_eq!(fleeting["ttl_expired"], 2);
    // Expired records leading the partition were committed past: counted once.
    gw.post_json("/v1/groups/g/fetch", &json!({ "topics": ["fleeting"] })).await;
    let (_, s) = gw.get_json("/v1/services").await;
    let fleeting =
        s["services"].as_array().unwrap().iter().find(|s| s["name"] == "fleeting").unwrap().clone();
    assert_eq!(fleeting["ttl_expired"], 2);
}

#[tokio::test]
async fn sighup_applies_new_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[[service]]\nname = \"logs\"\nweight = 2\n";
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    std::fs::write(gw.config_path().unwrap(), "[[service]]\nname = \"logs\"\nweight = 9\nexpress = true\n")
        .unwrap();
    gw.signal("HUP");
    eventually("weight 9 after SIGHUP", || async {
        let (_, s) = gw.get_json("/v1/services").await;
        s["services"][0]["weight"] == 9 && s["services"][0]["express"] == true
    })
    .await;
    // A broken file is refused and the running configuration stays.
    std::fs::write(gw.config_path().unwrap(), "[[service]]\nname = \"logs\"\nweight = 0\n").unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, s) = gw.get_json("/v1/services").await;
    assert_eq!(s["services"][0]["weight"], 9);
}

#[tokio::test]
async fn post_reload_applies_the_file_like_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some("[[service]]\nname = \"logs\"\nweight = 2\n")).await;
    std::fs::write(gw.config_path().unwrap(), "[[service]]\nname = \"logs\"\nweight = 7\n").unwrap();
    let (status, body) = gw.post_json("/v1/reload", &json!({})).await;
    assert_eq!((status, &body), (200, &json!({"changed": 1})));
    let (_, s) = gw.get_json("/v1/services").await;
    assert_eq!(s["services"][0]["weight"], 7);
    // A broken file: 400 naming the field, the running configuration stays.
    std::fs::write(gw.config_path().unwrap(), "[[service]]\nname = \"logs\"\nweight = 0\n").unwrap();
    let (status, body) = gw.post_json("/v1/reload", &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("weight"), "{body}");
    let (_, s) = gw.get_json("/v1/services").await;
    assert_eq!(s["services"][0]["weight"], 7);
    // Started without a file: nothing to reload.
    let bare = Gateway::start(&dir.path().join("bare"), None).await;
    let (status, body) = bare.post_json("/v1/reload", &json!({})).await;
    assert_eq!(status, 409, "{body}");
}

#[test]
fn an_uplink_its_sink_refuses_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[uplink]]\nname = \"central\"\nkind = \"http\"\nbrokers = [\"https://127.0.0.1:9/in\"]\n\
         tls = { ca = \"/nonexistent/ca.pem\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
        ])
        .args(["--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uplink[\"central\"].tls.ca /nonexistent/ca.pem: cannot read"), "{err}");
}
