//! The HTTP API against the real binary on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;

use common::{offsets, Gateway};
use serde_json::{json, Value};

#[tokio::test]
async fn produce_and_fetch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    let (status, body) = gw
        .post_json(
            "/v1/topics/sensors/records",
            &json!({ "records": [
                { "key": "dev-1", "value": { "t": 21.5 }, "headers": { "unit": "C" } },
                { "key": null, "value_b64": "AAEC/w==" },
                { "value": null },
                { "value": "text" }
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body), vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
    gw.settle("sensors").await;

    let (status, body) = gw.get_json("/v1/topics/sensors/partitions/0/records?offset=0&max_records=10").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["high_watermark"], 4);
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0]["key"], "dev-1");
    assert_eq!(recs[0]["value"], json!({ "t": 21.5 }));
    assert_eq!(recs[0]["headers"], json!({ "unit": "C" }));
    assert!(recs[0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(recs[1]["key"], Value::Null);
    assert_eq!(recs[1]["value_b64"], "AAEC/w==");
    assert!(recs[1].get("value").is_none());
    assert_eq!(recs[2]["value"], Value::Null);
    assert!(recs[2].get("value_b64").is_none());
    assert_eq!(recs[3]["value"], "text");

    // Paging by offset and max_records.
    let (_, body) = gw.get_json("/v1/topics/sensors/partitions/0/records?offset=2&max_records=1").await;
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["offset"], 2);

    // Raw body, key from the query string.
    let r = gw
        .http
        .post(gw.url("/v1/topics/raw/records?key=k1"))
        .header("content-type", "application/octet-stream")
        .body(vec![0xffu8, 0x00, 0x10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.settle("raw").await;
    let (_, body) = gw.get_json("/v1/topics/raw/partitions/0/records").await;
    assert_eq!(body["records"][0]["key"], "k1");
    assert_eq!(body["records"][0]["value_b64"], "/wAQ");

    let (status, body) = gw.get_json("/v1/topics").await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        body["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["raw", "sensors"]);
    assert_eq!(body["topics"][1]["service"], "default");
    assert_eq!(body["topics"][1]["partitions"][0]["high_watermark"], 4);
}

#[tokio::test]
async fn keys_pick_stable_partitions_and_keyless_spread() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[[topic]]
name = "t"
partitions = 4
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    let recs: Vec<Value> = (0..8).map(|i| json!({ "key": "same", "value": i })).collect();
    let (_, body) = gw.post_json("/v1/topics/t/records", &json!({ "records": recs })).await;
    let offs = offsets(&body);
    assert!(offs.iter().all(|(p, _)| *p == offs[0].0), "one key, one partition: {offs:?}");
    assert_eq!(offs.iter().map(|o| o.1).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    let recs: Vec<Value> = (0..8).map(|i| json!({ "value": i })).collect();
    let (_, body) = gw.post_json("/v1/topics/t/records", &json!({ "records": recs })).await;
    let mut parts: Vec<u64> = offsets(&body).iter().map(|o| o.0).collect();
    parts.sort_unstable();
    parts.dedup();
    assert_eq!(parts, vec![0, 1, 2, 3], "keyless records spread round-robin");
}

async fn expect_error(resp: reqwest::Response, status: u16, needle: &str) {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {body}"));
    assert_eq!(got, status, "{msg}");
    assert!(msg.contains(needle), "error {msg:?} should mention {needle:?}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[http]
max_body = "64KiB"
[store]
auto_create_topics = false
[[topic]]
name = "known"
partitions = 2
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    gw.produce("known", &[json!("kept")]).await;
    let post = |path: &str, body: &str| {
        gw.http.post(gw.url(path)).header("content-type", "application/json").body(body.to_owned()).send()
    };
    expect_error(post("/v1/topics/known/records", "{not json").await.unwrap(), 400, "invalid JSON").await;
    expect_error(
        post("/v1/topics/known/records", r#"{"records":[{"key":"a"}]}"#).await.unwrap(),
        400,
        "records[0]: missing value",
    )
    .await;
    expect_error(
        post("/v1/topics/known/records", r#"{"records":[{"value_b64":"!!"}]}"#).await.unwrap(),
        400,
        "records[0].value_b64",
    )
    .await;
    expect_error(
        post("/v1/topics/known/records", r#"{"records":[{"vlaue":1}]}"#).await.unwrap(),
        400,
        "vlaue",
    )
    .await;
    expect_error(post("/v1/topics/known/records", r#"{"records":[]}"#).await.unwrap(), 400, "at least one")
        .await;
    expect_error(
        post("/v1/topics/bad%20name/records", r#"{"records":[{"value":1}]}"#).await.unwrap(),
        400,
        "invalid topic name",
    )
    .await;
    let long = "x".repeat(250);
    expect_error(
        post(&format!("/v1/topics/{long}/records"), r#"{"records":[{"value":1}]}"#).await.unwrap(),
        400,
        "249",
    )
    .await;
    expect_error(
        post("/v1/topics/unknown/records", r#"{"records":[{"value":1}]}"#).await.unwrap(),
        404,
        "auto_create_topics",
    )
    .await;
    let big = format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "a".repeat(100 * 1024));
    expect_error(post("/v1/topics/known/records", &big).await.unwrap(), 413, "http.max_body").await;
    let r = gw
        .http
        .post(gw.url("/v1/topics/known/records"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "Content-Type").await;

    let get = |path: &str| gw.http.get(gw.url(path)).send();
    expect_error(get("/v1/topics/known/partitions/0/records?offset=-1").await.unwrap(), 400, "offset").await;
    expect_error(get("/v1/topics/known/partitions/0/records?offset=abc").await.unwrap(), 400, "offset").await;
    expect_error(get("/v1/topics/known/partitions/0/records?ofset=1").await.unwrap(), 400, "ofset").await;
    expect_error(get("/v1/topics/known/partitions/7/records").await.unwrap(), 404, "partition 7").await;
    expect_error(get("/v1/topics/known/partitions/x/records").await.unwrap(), 400, "partition").await;
    expect_error(get("/v1/topics/nope/partitions/0/records").await.unwrap(), 404, "nope").await;
    expect_error(get("/v1/nothing-here").await.unwrap(), 404, "no such endpoint").await;
    expect_error(
        post("/v1/groups/g/commit", r#"{"offsets":[{"topic":"known","partition":0,"offset":99}]}"#)
            .await
            .unwrap(),
        400,
        "high watermark",
    )
    .await;
    expect_error(
        post("/v1/groups/g/fetch", r#"{"topics":["known"],"max_records":0}"#).await.unwrap(),
        400,
        "max_records",
    )
    .await;

    // The record accepted before all of that is still there.
    let (_, body) = gw.get_json("/v1/topics/known/partitions/0/records").await;
    let (_, body1) = gw.get_json("/v1/topics/known/partitions/1/records").await;
    let n = body["records"].as_array().unwrap().len() + body1["records"].as_array().unwrap().len();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn long_poll_returns_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    gw.produce("lp", &[json!(0)]).await;
    let url = gw.url("/v1/topics/lp/partitions/0/records?offset=1&wait_ms=20000");
    let client = gw.http.clone();
    let waiter =
        tokio::spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    gw.produce("lp", &[json!("late")]).await;
    let body = waiter.await.unwrap();
    assert_eq!(body["records"][0]["value"], "late");
    assert_eq!(body["records"][0]["offset"], 1);
    // Without data and with wait_ms=0 the answer is immediate and empty.
    let (_, body) = gw.get_json("/v1/topics/lp/partitions/0/records?offset=2").await;
    assert_eq!(body["records"].as_array().unwrap().len(), 0);
    assert_eq!(body["high_watermark"], 2);
}

const PRIORITY_CONFIG: &str = r#"
[[service]]
name = "alarms"
express = true
durability = "sync"
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
"#;

#[tokio::test]
async fn group_fetch_orders_by_priority_and_resumes_from_commits() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    let filler = "x".repeat(100);
    let logs: Vec<Value> = (0..40).map(|i| json!(format!("log-{i}-{filler}"))).collect();
    let tele: Vec<Value> = (0..40).map(|i| json!(format!("tel-{i}-{filler}"))).collect();
    let alarms: Vec<Value> = (0..4).map(|i| json!(format!("alarm-{i}-{filler}"))).collect();
    // Oldest first: the low-priority flood, then telemetry, then alarms.
    gw.produce("logs", &logs).await;
    gw.produce("telemetry", &tele).await;
    gw.produce("alarms", &alarms).await;

    let fetch = json!({ "topics": ["logs", "telemetry", "alarms"], "max_records": 20 });
    let (status, body) = gw.post_json("/v1/groups/edge/fetch", &fetch).await;
    assert_eq!(status, 200, "{body}");
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 20);
    let topics: Vec<&str> = recs.iter().map(|r| r["topic"].as_str().unwrap()).collect();
    assert_eq!(topics[0], "alarms", "express first: {topics:?}");
    assert_eq!(
        topics.iter().filter(|t| **t == "alarms").count(),
        4,
        "every alarm in the first page: {topics:?}"
    );
    let tel = topics.iter().filter(|t| **t == "telemetry").count();
    let log = topics.iter().filter(|t| **t == "logs").count();
    assert!(tel >= 3 * log, "weight 4 vs 1 among the rest: {tel} telemetry, {log} logs");

    // Without a commit the same records come again; after one, the next ones.
    let (_, again) = gw.post_json("/v1/groups/edge/fetch", &fetch).await;
    assert_eq!(again["records"], body["records"]);
    gw.commit("edge", recs).await;

    let gw = gw.restart().await;
    let (_, body) = gw
        .post_json(
            "/v1/groups/edge/fetch",
            &json!({ "topics": ["logs", "telemetry", "alarms"], "max_records": 1000 }),
        )
        .await;
    let rest = body["records"].as_array().unwrap();
    assert_eq!(rest.len(), 84 - 20, "resumes after the committed positions across a restart");
    assert!(rest.iter().all(|r| r["topic"] != "alarms"));
    let (_, lag) = gw.get_json("/v1/groups/edge/offsets?topics=alarms,logs").await;
    assert_eq!(lag["offsets"][0]["lag"], 0);
}

/// Pages of three records still share by weight: the rounds continue from
/// one fetch to the next instead of starting with the heaviest service on
/// every page (which starved weight 1 while weight 4 had a backlog).
#[tokio::test]
async fn small_pages_share_by_weight_across_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    let values: Vec<Value> = (0..80).map(|i| json!(format!("record-{i}"))).collect();
    gw.produce("logs", &values).await;
    gw.produce("telemetry", &values).await;

    let fetch = json!({ "topics": ["logs", "telemetry"], "max_records": 3 });
    let mut logs = 0;
    for page in 0..20 {
        let (status, body) = gw.post_json("/v1/groups/paged/fetch", &fetch).await;
        assert_eq!(status, 200, "{body}");
        let recs = body["records"].as_array().unwrap();
        assert_eq!(recs.len(), 3, "page {page}: {body}");
        // A retry without a commit gets the same page.
        let (_, again) = gw.post_json("/v1/groups/paged/fetch", &fetch).await;
        assert_eq!(again["records"], body["records"], "page {page} repeated");
        logs += recs.iter().filter(|r| r["topic"] == "logs").count();
        gw.commit("paged", recs).await;
    }
    // Weight 1 of 5: 12 of 60, give or take the rounds cut by the last page.
    assert!((8..=16).contains(&logs), "logs got {logs} of 60 deliveries, expected about 12");
}

#[tokio::test]
async fn full_service_gets_429_while_others_flow() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[[service]]
name = "tiny"
max_pending = "1KiB"
[[service]]
name = "other"
[[topic]]
name = "tiny"
service = "tiny"
[[topic]]
name = "other"
service = "other"
"#;
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;
    // One request larger than the whole queue can never fit: 413 naming it.
    let big = json!({ "records": [{ "value": "z".repeat(2000) }] });
    let (status, body) = gw.post_json("/v1/topics/tiny/records", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_pending"));

    let payload = json!({ "records": [{ "value": "y".repeat(900) }] });
    let mut saw_429 = None;
    for _round in 0..50 {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (client, url, body) = (gw.http.clone(), gw.url("/v1/topics/tiny/records"), payload.clone());
            tasks.push(tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            if r.status() == 429 {
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body: Value = r.json().await.unwrap();
                saw_429 = Some((retry, body));
            } else {
                assert_eq!(r.status(), 200);
            }
        }
        if saw_429.is_some() {
            break;
        }
    }
    let (retry, body) = saw_429.expect("64 concurrent requests against a 1 KiB queue never saw a 429");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body["error"].as_str().unwrap().contains("\"tiny\""), "{body}");
    // The other service is unaffected.
    gw.produce("other", &[json!("fine")]).await;
    let (_, metrics) = {
        let r = gw.http.get(gw.url("/metrics")).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let line =
        metrics.lines().find(|l| l.starts_with("sluice_service_rejected_total{service=\"tiny\"}")).unwrap();
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
}

#[tokio::test]
async fn health_metrics_and_services() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    gw.produce("alarms", &[json!("a")]).await;
    let (s, _) = gw.get_json("/healthz").await;
    assert_eq!(s, 200);
    let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for family in [
        "sluice_service_queue_depth{service=\"alarms\"}",
        "sluice_service_queue_bytes{service=\"logs\"}",
        "sluice_service_oldest_pending_seconds{service=\"telemetry\"}",
        "sluice_service_rejected_total{service=\"alarms\"}",
        "sluice_service_records_in_total{service=\"alarms\"} 1",
        "sluice_topic_high_watermark{topic=\"alarms\",partition=\"0\"} 1",
        "sluice_store_flushes_total",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    let (_, body) = gw.get_json("/v1/services").await;
    let names: Vec<&str> =
        body["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["alarms", "telemetry", "logs", "default"]);
    // Run-time weight change.
    let r = gw.http.put(gw.url("/v1/services/logs")).json(&json!({ "weight": 7 })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, body) = gw.get_json("/v1/services").await;
    assert_eq!(body["services"][2]["weight"], 7);
    let r = gw.http.put(gw.url("/v1/services/logs")).json(&json!({ "weight": 0 })).send().await.unwrap();
    assert_eq!(r.status(), 400);
}
