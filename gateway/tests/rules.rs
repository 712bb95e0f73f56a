//! Edge rules (`[[rule]]`) against the real binary on 127.0.0.1: filter and
//! projection over HTTP and MQTT, deadband, tumbling windows, exactly once
//! across kill -9, on_error, and check-config's messages.
#![cfg(feature = "rules")]
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::client;
use common::{sluice, Gateway};
use rumqttc::QoS;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Reads every record of partition 0 of `topic` (durable ones).
async fn all_records(gw: &Gateway, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (s, b) = gw
            .get_json(&format!(
                "/v1/topics/{topic}/partitions/0/records?offset={}&max_records=1000",
                out.len()
            ))
            .await;
        assert_eq!(s, 200, "{b}");
        let recs = b["records"].as_array().unwrap();
        if recs.is_empty() {
            return out;
        }
        out.extend(recs.iter().cloned());
    }
}

/// `/v1/rules` entry of `name`.
async fn rule(gw: &Gateway, name: &str) -> Value {
    let (s, b) = gw.get_json("/v1/rules").await;
    assert_eq!(s, 200, "{b}");
    b["rules"].as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap()
}

/// Waits until rule `name` has read `n` records and has no lag.
async fn caught_up(gw: &Gateway, name: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = rule(gw, name).await;
        if r["records_in"].as_u64() == Some(n) && r["lag_records"] == 0 && r["lag_ms"] == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "rule {name} never read {n} records: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn produce_keyed(gw: &Gateway, topic: &str, records: &[(&str, Value)]) {
    let records: Vec<Value> = records.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    let (s, b) = gw.post_json(&format!("/v1/topics/{topic}/records"), &json!({ "records": records })).await;
    assert_eq!(s, 200, "{b}");
}

const ALARM_FILTER: &str = r#"
[[service]]
name = "alarms"
weight = 10
durability = "sync"
[[topic]]
name = "telemetry"
[[topic]]
name = "hot"
service = "alarms"
[[route]]
mqtt = "plant/+/telemetry"
topic = "telemetry"
key = "level:2"

[[rule]]
name = "hot"
inputs = ["telemetry"]
output = "hot"
filter = "value.temp > 30 && has(value.hum)"
project = { device = "key", temp = "value.temp", hum = "value.hum", alarm = "value.temp > 40 ? 'high' : 'warm'" }
"#;

#[tokio::test]
async fn filter_and_projection_over_http_and_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(ALARM_FILTER)).await;
    produce_keyed(
        &gw,
        "telemetry",
        &[
            ("d1", json!({"temp": 20, "hum": 40})),
            ("d2", json!({"temp": 35, "hum": 41})),
            ("d3", json!({"temp": 45})),
            ("d4", json!({"temp": 45.5, "hum": 10})),
        ],
    )
    .await;
    let (c, _task, _rx) = client(&gw, "sensor").await;
    for (dev, body) in [("m1", r#"{"temp":31,"hum":50}"#), ("m2", r#"{"temp":12,"hum":50}"#)] {
        c.publish(format!("plant/{dev}/telemetry"), QoS::AtLeastOnce, false, body.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let r = caught_up(&gw, "hot", 6).await;
    let got: Vec<Value> = all_records(&gw, "hot").await.into_iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        got,
        [
            json!({"device": "d2", "temp": 35, "hum": 41, "alarm": "warm"}),
            json!({"device": "d4", "temp": 45.5, "hum": 10, "alarm": "high"}),
            json!({"device": "m1", "temp": 31, "hum": 50, "alarm": "warm"}),
        ]
    );
    assert_eq!(
        (r["records_out"].as_u64(), r["filtered"].as_u64(), r["errors"].as_u64()),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(gw.metric("sluice_rule_records_out_total{rule=\"hot\"}").await, 3);
    assert_eq!(gw.metric("sluice_rule_filtered_total{rule=\"hot\"}").await, 3);
}

/// A slow temperature with noise: a sine of 2 degrees over 600 readings
/// plus +-0.15 of deterministic noise.
fn slow_signal(n: usize) -> Vec<f64> {
    let mut seed: u64 = 7;
    (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.3;
            let x = 20.0 + 2.0 * (i as f64 / 600.0 * std::f64::consts::TAU).sin() + noise;
            // As the gateway will read it back from the JSON text.
            let x = (x * 100.0).round() / 100.0;
            serde_json::from_slice::<f64>(&serde_json::to_vec(&x).unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn deadband_reduces_a_noisy_slow_signal() {
    let config = r#"
[[topic]]
name = "temps"
[[topic]]
name = "temps-changed"

[[rule]]
name = "rbe"
inputs = ["temps"]
output = "temps-changed"
[rule.deadband]
value = "value.t"
absolute = 0.5
"#;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(config)).await;
    let signal = slow_signal(600);
    for chunk in signal.chunks(100) {
        let recs: Vec<(&str, Value)> = chunk.iter().map(|t| ("boiler", json!({"t": t}))).collect();
        produce_keyed(&gw, "temps", &recs).await;
    }
    let r = caught_up(&gw, "rbe", 600).await;
    // The same rule computed here: emit when moved more than 0.5.
    let mut last: Option<f64> = None;
    let mut expected = Vec::new();
    let mut saved = 0u64;
    for t in &signal {
        if last.is_none_or(|l| (t - l).abs() > 0.5) {
            expected.push(*t);
            last = Some(*t);
        } else {
            saved += (serde_json::to_vec(&json!({"t": t})).unwrap().len() + "boiler".len()) as u64;
        }
    }
    let got: Vec<f64> =
        all_records(&gw, "temps-changed").await.iter().map(|r| r["value"]["t"].as_f64().unwrap()).collect();
    assert_eq!(got, expected);
    assert!(got.len() * 10 < signal.len(), "deadband kept {} of {}", got.len(), signal.len());
    assert_eq!(r["suppressed"].as_u64(), Some((signal.len() - got.len()) as u64));
    assert_eq!(r["bytes_saved"].as_u64(), Some(saved));
    assert_eq!(gw.metric("sluice_rule_bytes_saved_total{rule=\"rbe\"}").await, saved);
    let raw: u64 =
        signal.iter().map(|t| (serde_json::to_vec(&json!({"t": t})).unwrap().len() + 6) as u64).sum();
    eprintln!(
        "deadband: {} of {} readings forwarded, {} of {raw} bytes kept off the uplink ({:.1}x less)",
        got.len(),
        signal.len(),
        saved,
        raw as f64 / (raw - saved) as f64
    );
}

const WINDOW_RULE: &str = r#"
[[topic]]
name = "readings"
[[topic]]
name = "per-minute"

[[rule]]
name = "avg"
inputs = ["readings"]
output = "per-minute"
key = "value.device"
time = "value.ts"
side_topic = "late-readings"
[rule.window]
size = "1m"
lateness = "2s"
idle_timeout = "1s"
on_late = "side_topic"
aggregates = { n = "count()", sum = "sum(value.t)", lo = "min(value.t)", hi = "max(value.t)", avg = "avg(value.t)", first = "first(value.t)", last = "last(value.t)", med = "p50(value.t)" }
"#;

#[tokio::test]
async fn tumbling_window_emits_correct_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(WINDOW_RULE)).await;
    let readings = [
        ("a", 1_000, 10),
        ("b", 2_000, 1),
        ("a", 30_000, 14),
        ("a", 20_000, 12),
        ("b", 59_999, 3),
        ("a", 61_000, 20),  // the stream is at 61 s: [0, 60 s) still takes records
        ("b", 59_000, 5),   // within the lateness
        ("a", 117_000, 21), // closes [0, 60 s)
        ("a", 118_500, 22),
        ("b", 10_000, 100), // late: dropped and counted
    ];
    let values: Vec<Value> =
        readings.iter().map(|(d, ts, t)| json!({"device": d, "ts": ts, "t": t})).collect();
    for v in values {
        gw.produce("readings", &[v]).await;
    }
    let recs = gw.wait_records("per-minute", 2).await;
    let got: Vec<Value> = recs.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        got,
        [
            json!({"key": "a", "start": 0, "end": 60_000, "n": 3, "sum": 36, "lo": 10, "hi": 14, "avg": 12, "first": 10, "last": 14, "med": 12}),
            json!({"key": "b", "start": 0, "end": 60_000, "n": 3, "sum": 9, "lo": 1, "hi": 5, "avg": 3, "first": 1, "last": 3, "med": 3}),
        ]
    );
    assert_eq!(recs[0]["key"], "a");
    assert_eq!(recs[0]["timestamp"], 60_000);
    let r = caught_up(&gw, "avg", 10).await;
    assert_eq!(r["late"], 1);
    // on_late = "side_topic": the late record, unchanged, with the reason.
    let late = all_records(&gw, "late-readings").await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["value"], json!({"device": "b", "ts": 10_000, "t": 100}));
    let why = late[0]["headers"]["sluice-rule-late"].as_str().unwrap();
    assert_eq!(why, "event time 10000: windows up to 116500 have closed");
    // The inputs go idle: after idle_timeout, stream time follows the wall
    // clock and [60 s, 120 s) closes without another record.
    let recs = gw.wait_records("per-minute", 3).await;
    assert_eq!(
        recs[2]["value"],
        json!({"key": "a", "start": 60_000, "end": 120_000, "n": 3, "sum": 63, "lo": 20, "hi": 22, "avg": 21, "first": 20, "last": 22, "med": 21})
    );
    assert_eq!(rule(&gw, "avg").await["open_windows"], 0);
}

#[tokio::test]
async fn kill9_mid_stream_window_output_is_exactly_once_and_state_resumes() {
    let config = r#"
[[service]]
name = "sensors"
durability = "sync"
[[topic]]
name = "seq"
service = "sensors"
partitions = 2
[[topic]]
name = "sums"

[[rule]]
name = "sums"
inputs = ["seq"]
output = "sums"
key = "value.dev"
time = "value.i * 100"
batch = 50
[rule.window]
size = "1s"
idle_timeout = "1h"
aggregates = { n = "count()", sum = "sum(value.i)", first = "first(value.i)", last = "last(value.i)" }
"#;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut gw = Gateway::start(&data, Some(config)).await;
    const N: u64 = 3000;
    let devs = ["d0", "d1", "d2"];
    let mut i = 0u64;
    let mut kills = 0;
    while i < N {
        // Batches of 75 records per device (each a copy of the sequence), so
        // kills fall in the middle of 1 s windows (10 records).
        let end = (i + 75).min(N);
        let recs: Vec<Value> = (i..end)
            .flat_map(|i| devs.iter().map(move |d| json!({"key": d, "value": {"dev": d, "i": i}})))
            .collect();
        let (s, b) = gw.post_json("/v1/topics/seq/records", &json!({ "records": recs })).await;
        assert_eq!(s, 200, "{b}");
        i = end;
        if i % 525 == 0 && i < N {
            // Mid-stream: the rule may still be working through what was
            // just acknowledged, and windows are half full.
            let before = rule(&gw, "sums").await;
            eprintln!(
                "kill -9 at {i}: lag {} records, {} open windows",
                before["lag_records"], before["open_windows"]
            );
            gw.kill9();
            kills += 1;
            gw = Gateway::start(&data, Some(config)).await;
        }
    }
    // One more record per device closes the last window (stream time N * 100).
    let closing: Vec<Value> =
        devs.iter().map(|d| json!({"key": d, "value": {"dev": d, "i": N + 10}})).collect();
    let (s, b) = gw.post_json("/v1/topics/seq/records", &json!({ "records": closing })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(kills, 5);
    let windows = (N / 10) as usize * devs.len();
    // Counters start at 0 with each process: wait for no lag and the last
    // open window of each device (the one of the closing record).
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = rule(&gw, "sums").await;
        if r["lag_records"] == 0 && r["open_windows"] == 3 && r["records_in"].as_u64() > Some(0) {
            break r;
        }
        assert!(Instant::now() < deadline, "rule sums never caught up: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut got: BTreeMap<(String, i64), Vec<Value>> = BTreeMap::new();
    let (s, b) = gw.get_json("/v1/topics").await;
    assert_eq!(s, 200);
    let parts = b["topics"].as_array().unwrap().iter().find(|t| t["name"] == "sums").unwrap()["partitions"]
        .as_array()
        .unwrap()
        .len();
    let mut total = 0;
    for p in 0..parts {
        let mut offset = 0;
        loop {
            let (_, body) = gw
                .get_json(&format!("/v1/topics/sums/partitions/{p}/records?offset={offset}&max_records=1000"))
                .await;
            let recs = body["records"].as_array().unwrap();
            if recs.is_empty() {
                break;
            }
            for rec in recs {
                let v = &rec["value"];
                got.entry((v["key"].as_str().unwrap().to_owned(), v["start"].as_i64().unwrap()))
                    .or_default()
                    .push(v.clone());
            }
            offset += recs.len();
            total += recs.len();
        }
    }
    assert_eq!(total, windows, "one result per (device, window), no duplicates: {r}");
    for d in devs {
        for w in 0..(N / 10) {
            let (first, last) = (w * 10, w * 10 + 9);
            let results = &got[&(d.to_owned(), (w * 1000) as i64)];
            assert_eq!(
                results,
                &vec![json!({"key": d, "start": w * 1000, "end": (w + 1) * 1000, "n": 10,
                    "sum": (first..=last).sum::<u64>(), "first": first, "last": last})],
                "window {w} of {d}"
            );
        }
    }
    assert_eq!(r["late"], 0);
    assert_eq!(r["errors"], 0);
}

#[tokio::test]
async fn on_error_skip_counts_and_the_rule_keeps_going() {
    let config = r#"
[[topic]]
name = "in"
[[topic]]
name = "out"
[[topic]]
name = "bad"

[[rule]]
name = "skip"
inputs = ["in"]
output = "out"
filter = "value.temp > 30"
project = { t = "value.temp * 2" }

[[rule]]
name = "side"
inputs = ["in"]
output = "out2"
filter = "value.temp > 30"
on_error = "side_topic"
side_topic = "bad"
"#;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(config)).await;
    let values =
        [json!({"temp": 31}), json!({"hum": 3}), json!("text"), json!({"temp": "hot"}), json!({"temp": 40})];
    gw.produce("in", &values).await;
    let r = caught_up(&gw, "skip", 5).await;
    assert_eq!((r["errors"].as_u64(), r["records_out"].as_u64()), (Some(3), Some(2)));
    let last_error = r["last_error"].as_str().unwrap();
    assert!(
        last_error
            .contains("rule \"skip\" filter: column 1: value.temp > 30 cannot order a string and a number"),
        "{last_error}"
    );
    let out: Vec<Value> = all_records(&gw, "out").await.into_iter().map(|r| r["value"].clone()).collect();
    assert_eq!(out, [json!({"t": 62}), json!({"t": 80})]);
    assert_eq!(gw.metric("sluice_rule_errors_total{rule=\"skip\"}").await, 3);
    // The side topic gets the failing input records, with the reason.
    caught_up(&gw, "side", 5).await;
    let bad = all_records(&gw, "bad").await;
    assert_eq!(bad.len(), 3);
    assert_eq!(bad[0]["value"], json!({"hum": 3}));
    let why = bad[0]["headers"]["sluice-rule-error"].as_str().unwrap();
    assert!(why.contains("value.temp is missing"), "{why}");
}

#[test]
fn check_config_names_the_rule_field_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = r#"
[[rule]]
name = "hot"
inputs = ["telemetry"]
output = "hot-out"
filter = "value.temp > 30 && hass(value.hum)"
project = { t = "value.temp +" }
[rule.window]
size = "1m"
aggregates = { m = "median(value.t)", a = "avg(value.t +)" }
"#;
    std::fs::write(&path, config).unwrap();
    let (ok, err) = sluice(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    for want in [
        "rule[\"hot\"].filter: column 20: unknown function \"hass\"",
        "rule[\"hot\"].project.t: column 13: expected a value, a name or \"(\", found the end",
        "rule[\"hot\"].window.aggregates.m: unknown aggregate \"median\"",
        "rule[\"hot\"].window.aggregates.a: column 14: expected a value",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    // Structure is checked by the configuration itself.
    std::fs::write(
        &path,
        "[[rule]]\nname = \"r\"\ninputs = [\"a\"]\noutput = \"a\"\non_error = \"side_topic\"\n",
    )
    .unwrap();
    let (ok, err) = sluice(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("rule[\"r\"].output: \"a\" is also an input of the rule"), "{err}");
    assert!(err.contains("rule[\"r\"].side_topic: is missing"), "{err}");
    // And a good one passes.
    std::fs::write(&path, ALARM_FILTER).unwrap();
    let (ok, err) = sluice(&["check-config", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("1 rules"), "{err}");
}

#[test]
fn rule_test_prints_what_a_rule_emits_without_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, WINDOW_RULE).unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        r#"{"value": {"device": "a", "ts": 1000, "t": 10}}"#,
        r#"{"value": {"device": "a", "ts": 2000, "t": 20}}"#,
        r#"{"value": {"device": "b", "ts": 3000}}"#,
        "",
        r#"{"value": {"device": "a", "ts": 70000, "t": 30}, "key": "k", "timestamp": 5}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "rule",
            "test",
            "avg",
            "--input",
            input.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .env("SLUICE_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["topic"], "per-minute");
    assert_eq!(got[0]["key"], "a");
    assert_eq!(got[0]["value"]["avg"], 15);
    assert_eq!(got[1]["value"]["start"], 60_000, "closed at the end of the input");
    assert!(stderr.contains("4 in, 2 out, 0 filtered"), "{stderr}");
    assert!(stderr.contains("1 errors"), "{stderr}");
    assert!(stderr.contains("rule \"avg\" window.aggregates.avg: column 1: value.t is missing"), "{stderr}");
    // An unknown rule is named with the ones there are.
    let (ok, err) = sluice(&[
        "rule",
        "test",
        "nope",
        "--input",
        input.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("no rule \"nope\" in the configuration (rules: avg)"), "{err}");
}

/// A flood into a low-priority rule's input makes that rule lag, not an
/// alarm rule: the alarm's result is out while the bulk rule still has a
/// backlog.
#[tokio::test]
async fn a_flooded_bulk_rule_lags_and_the_alarm_rule_does_not() {
    let config = r#"
[[service]]
name = "bulk"
weight = 1
[[service]]
name = "alarms"
express = true
durability = "sync"
[[topic]]
name = "raw"
service = "bulk"
[[topic]]
name = "raw-out"
service = "bulk"
[[topic]]
name = "alarm-in"
service = "alarms"
[[topic]]
name = "alarm-out"
service = "alarms"

[[rule]]
name = "bulk"
inputs = ["raw"]
output = "raw-out"
project = { x = "value.i * 2", odd = "value.i % 2 == 1" }
batch = 100

[[rule]]
name = "alarm"
inputs = ["alarm-in"]
output = "alarm-out"
filter = "value.level > 2"
"#;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(config)).await;
    for b in 0..30 {
        let recs: Vec<Value> = (0..2000).map(|i| json!({ "value": {"i": b * 2000 + i} })).collect();
        let (s, body) = gw.post_json("/v1/topics/raw/records", &json!({ "records": recs })).await;
        assert_eq!(s, 200, "{body}");
    }
    gw.settle("raw").await;
    let before = rule(&gw, "bulk").await;
    assert!(
        before["lag_records"].as_u64().unwrap() > 10_000,
        "the flood is queued for the bulk rule: {before}"
    );
    let sent = Instant::now();
    gw.produce("alarm-in", &[json!({"level": 5})]).await;
    let got = gw.wait_records("alarm-out", 1).await;
    let latency = sent.elapsed();
    assert_eq!(got[0]["value"], json!({"level": 5}));
    let bulk = rule(&gw, "bulk").await;
    assert!(bulk["lag_records"].as_u64().unwrap() > 0, "the bulk rule caught up first: {bulk}");
    // Its backlog is old: the oldest record waiting was produced before the alarm.
    assert!(bulk["lag_ms"].as_u64().unwrap() >= latency.as_millis() as u64, "{bulk}");
    eprintln!("alarm rule result after {latency:?}; bulk rule lag then {}", bulk["lag_records"]);
}

/// Restarts with a changed rule: a new filter keeps the open windows, a
/// new aggregate list starts the state over and says so.
#[tokio::test]
async fn a_changed_window_starts_fresh_and_a_changed_filter_keeps_the_state() {
    let base = r#"
[[topic]]
name = "r"
[[topic]]
name = "w"
[[rule]]
name = "w"
inputs = ["r"]
output = "w"
key = "value.d"
time = "value.ts"
FILTER
[rule.window]
size = "1m"
idle_timeout = "1h"
aggregates = AGGS
"#;
    let config = |filter: &str, aggs: &str| base.replace("FILTER", filter).replace("AGGS", aggs);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut gw = Gateway::start(&data, Some(&config("", r#"{ n = "count()" }"#))).await;
    gw.produce("r", &[json!({"d": "a", "ts": 1000}), json!({"d": "a", "ts": 2000})]).await;
    caught_up(&gw, "w", 2).await;
    gw.terminate();

    let mut gw =
        Gateway::start(&data, Some(&config("filter = \"value.ts >= 0\"", r#"{ n = "count()" }"#))).await;
    gw.produce("r", &[json!({"d": "a", "ts": 3000}), json!({"d": "a", "ts": 61_000})]).await;
    let out = gw.wait_records("w", 1).await;
    assert_eq!(out[0]["value"], json!({"key": "a", "start": 0, "end": 60_000, "n": 3}), "state kept");
    assert_eq!(rule(&gw, "w").await["last_error"], Value::Null);
    gw.terminate();

    let gw = Gateway::start(&data, Some(&config("", r#"{ n = "count()", s = "sum(value.ts)" }"#))).await;
    let r = rule(&gw, "w").await;
    assert!(r["last_error"].as_str().unwrap().starts_with("state started fresh: the rule changed"), "{r}");
    gw.produce("r", &[json!({"d": "a", "ts": 62_000}), json!({"d": "a", "ts": 125_000})]).await;
    let out = gw.wait_records("w", 2).await;
    assert_eq!(out[1]["value"], json!({"key": "a", "start": 60_000, "end": 120_000, "n": 1, "s": 62_000}));
}

/// MQTT publishes into a count window: per device, one result every 3
/// readings, keyed by the MQTT topic level.
#[tokio::test]
async fn count_window_over_mqtt() {
    let config = r#"
[[topic]]
name = "vib"
[[topic]]
name = "vib-3"
[[route]]
mqtt = "plant/+/vib"
topic = "vib"
key = "level:2"

[[rule]]
name = "per3"
inputs = ["vib"]
output = "vib-3"
[rule.window]
kind = "count"
count = 3
aggregates = { n = "count()", mean = "avg(value.rms)", top = "max(value.rms)" }
"#;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(config)).await;
    let (c, _task, _rx) = client(&gw, "vib-sensor").await;
    for (dev, rms) in [("m1", 1), ("m2", 10), ("m1", 2), ("m1", 6), ("m2", 20), ("m1", 7), ("m2", 30)] {
        let body = json!({ "rms": rms }).to_string();
        c.publish(format!("plant/{dev}/vib"), QoS::AtLeastOnce, false, body.into_bytes()).await.unwrap();
    }
    let r = caught_up(&gw, "per3", 7).await;
    assert_eq!(r["open_windows"], 1, "{r}");
    let got: Vec<(Value, Value)> =
        all_records(&gw, "vib-3").await.into_iter().map(|r| (r["key"].clone(), r["value"].clone())).collect();
    let without_times = |v: &Value| json!({"key": v["key"], "n": v["n"], "mean": v["mean"], "top": v["top"]});
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "m1");
    assert_eq!(without_times(&got[0].1), json!({"key": "m1", "n": 3, "mean": 3, "top": 6}));
    assert_eq!(without_times(&got[1].1), json!({"key": "m2", "n": 3, "mean": 20, "top": 30}));
}

/// SIGHUP: a changed filter restarts the rule with its state; an invalid
/// rule is refused and the running version stays.
#[tokio::test]
async fn sighup_reloads_rules_and_refuses_an_invalid_one() {
    let config = |filter: &str| {
        format!(
            r#"
[[topic]]
name = "in"
[[topic]]
name = "out"
[[rule]]
name = "db"
inputs = ["in"]
output = "out"
key = "value.d"
filter = "{filter}"
deadband = {{ value = "value.t", absolute = 5 }}
"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config("value.t >= 0"))).await;
    gw.produce("in", &[json!({"d": "a", "t": 10}), json!({"d": "a", "t": 12})]).await;
    caught_up(&gw, "db", 2).await;

    let path = gw.config_path().unwrap().to_owned();
    std::fs::write(&path, config("value.t >= 1")).unwrap();
    gw.signal("HUP");
    // The restarted rule counts from 0 again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rule(&gw, "db").await["records_in"] != 0 {
        assert!(Instant::now() < deadline, "the rule was not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 13 is within 5 of the 10 emitted before the reload (state kept); 0
    // is filtered by the new filter; 16 moved 6.
    gw.produce("in", &[json!({"d": "a", "t": 13}), json!({"d": "a", "t": 0}), json!({"d": "a", "t": 16})])
        .await;
    let r = caught_up(&gw, "db", 3).await;
    assert_eq!((r["filtered"].as_u64(), r["suppressed"].as_u64()), (Some(1), Some(1)), "{r}");
    let out: Vec<Value> =
        all_records(&gw, "out").await.into_iter().map(|r| r["value"]["t"].clone()).collect();
    assert_eq!(out, [json!(10), json!(16)]);

    std::fs::write(&path, config("value.t >=")).unwrap();
    gw.signal("HUP");
    // Still the running version: same counters, same filter.
    gw.produce("in", &[json!({"d": "a", "t": 0})]).await;
    let r = caught_up(&gw, "db", 4).await;
    assert_eq!(r["filtered"].as_u64(), Some(2), "{r}");
}
