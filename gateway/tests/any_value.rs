//! Every accepted record is readable on every path, whatever its bytes.
//!
//! - `deep_value_is_served_on_every_path`: against the `sluice` binary, a
//!   value nested 100,000 arrays deep (stored through a raw body, which
//!   takes any bytes) is served by partition fetch, group fetch, SSE and
//!   WebSocket, and so are the records after it; a JSON produce nested
//!   deeper than the limit (128) is refused with a 400 naming it, before
//!   anything is stored. `sluice_panics_total` stays 0.
//! - `records_round_trip_and_nothing_panics`: the gateway runs inside the
//!   test process with sluice's own panic hook wrapped by one that records
//!   every panic; odd produce bodies (JSON of every kind, raw bytes, keys
//!   that are not UTF-8, headers, bad bodies) go in over HTTP and the
//!   records come back identical through every read path. Any panic, in
//!   any thread (request handlers run in tasks whose panics would otherwise
//!   be a log line and a dropped connection), fails the test.
//!
//! Replies are read as text into structs holding `RawValue`s: a
//! `serde_json::Value` could not hold the deep value either. The panic
//! hook is process-wide, so a failing assertion in one test is also
//! reported by the other.
#![allow(clippy::unwrap_used)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::sse::SseClient;
use common::Gateway;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sluice_gateway::http::codec::json_bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long to wait for something that must happen before calling it a hang.
const GUARD: Duration = Duration::from_secs(60);

/// A fetch or group fetch reply.
#[derive(Debug, Deserialize)]
struct Reply {
    records: Vec<Rec>,
}

/// A record as served; unknown fields (topic, partition, timestamp) are
/// skipped.
#[derive(Debug, Deserialize)]
struct Rec {
    offset: u64,
    key: Option<String>,
    key_b64: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    value_b64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// `"value": null` is a present JSON null, not a missing value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Rec {
    /// The value as served: (is JSON, text or decoded bytes).
    fn value(&self) -> (bool, Vec<u8>) {
        match (&self.value, &self.value_b64) {
            (Some(v), None) => (true, v.get().as_bytes().to_vec()),
            (None, Some(b)) => (false, B64.decode(b).unwrap()),
            _ => panic!("record {} has neither or both of value and value_b64", self.offset),
        }
    }

    fn key(&self) -> Option<Vec<u8>> {
        match (&self.key, &self.key_b64) {
            (Some(k), None) => Some(k.as_bytes().to_vec()),
            (None, Some(b)) => Some(B64.decode(b).unwrap()),
            (None, None) => None,
            _ => panic!("record {} has both key and key_b64", self.offset),
        }
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Produces `body` as `content_type` (with `query` after the path).
async fn produce(gw: &Gateway, topic: &str, query: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r = gw
        .http
        .post(gw.url(&format!("/v1/topics/{topic}/records{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn produce_raw(gw: &Gateway, topic: &str, query: &str, body: Vec<u8>) -> (u16, String) {
    produce(gw, topic, query, "application/octet-stream", body).await
}

async fn produce_json(gw: &Gateway, topic: &str, body: String) -> (u16, String) {
    produce(gw, topic, "", "application/json", body.into_bytes()).await
}

/// Partition 0 of `topic` from offset 0 once it has `n` records (records
/// are served once durable).
async fn fetch_partition(gw: &Gateway, topic: &str, n: usize) -> Vec<Rec> {
    let deadline = Instant::now() + GUARD;
    loop {
        let url = gw.url(&format!("/v1/topics/{topic}/partitions/0/records?max_records=1000&wait_ms=200"));
        let r = gw.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let reply: Reply = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        if reply.records.len() >= n {
            return reply.records;
        }
        assert!(Instant::now() < deadline, "{topic} never got {n} records");
    }
}

async fn fetch_group(gw: &Gateway, group: &str, topic: &str) -> Vec<Rec> {
    let body = json!({ "topics": [topic], "max_records": 1000 });
    let r = gw.http.post(gw.url(&format!("/v1/groups/{group}/fetch"))).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reply: Reply = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    reply.records
}

async fn stream_sse(gw: &Gateway, group: &str, topic: &str, n: usize) -> Vec<Rec> {
    let mut sse = SseClient::open(gw, group, &format!("topics={topic}")).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, data) = sse.next_raw().await;
        let rec: Rec = serde_json::from_str(&data).unwrap();
        assert_eq!(id, format!("{topic}/0/{}", rec.offset));
        out.push(rec);
    }
    out
}

async fn stream_ws(gw: &Gateway, group: &str, topic: &str, n: usize) -> Vec<Rec> {
    let url = format!("{}/v1/groups/{group}/stream?topics={topic}", gw.base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let msg =
            tokio::time::timeout(GUARD, ws.next()).await.expect("no WebSocket message").unwrap().unwrap();
        match msg {
            Message::Text(text) => out.push(serde_json::from_str(&text).unwrap()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_value_is_served_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), None).await;
    let deep = nested(100_000);

    // At the limit: accepted. Past it: refused, naming the limit, and not
    // stored (the next record gets offset 1).
    let at_limit = nested(128);
    let (status, body) =
        produce_json(&gw, "deep", format!(r#"{{"records":[{{"value":{at_limit}}}]}}"#)).await;
    assert_eq!(status, 200, "{body}");
    for depth in [129, 100_000] {
        let (status, body) = produce_json(
            &gw,
            "deep",
            format!(r#"{{"records":[{{"value":1}},{{"value":{}}}]}}"#, nested(depth)),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("records[1].value: JSON nested deeper than 128 levels"), "{body}");
    }
    // A raw body takes any bytes, this one too.
    let (status, body) = produce_raw(&gw, "deep", "", deep.clone().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""offset":1"#), "{body}");
    let (status, body) = produce_json(&gw, "deep", r#"{"records":[{"value":{"after":true}}]}"#.into()).await;
    assert_eq!(status, 200, "{body}");

    let check = |path: &str, recs: &[Rec]| {
        let got: Vec<(u64, bool, Vec<u8>)> =
            recs.iter().map(|r| (r.offset, r.value().0, r.value().1)).collect();
        let want = vec![
            (0, true, at_limit.clone().into_bytes()),
            (1, true, deep.clone().into_bytes()),
            (2, true, br#"{"after":true}"#.to_vec()),
        ];
        assert!(got == want, "{path} served something else");
    };
    check("partition fetch", &fetch_partition(&gw, "deep", 3).await);
    check("group fetch", &fetch_group(&gw, "g", "deep").await);
    // Fetched again: the deep record does not stop anything.
    check("group fetch again", &fetch_group(&gw, "g", "deep").await);
    check("SSE", &stream_sse(&gw, "s", "deep", 3).await);
    check("WebSocket", &stream_ws(&gw, "w", "deep", 3).await);
    assert_eq!(gw.metric("sluice_panics_total").await, 0);
}

/// JSON text without the whitespace between tokens.
fn tokens(text: &[u8]) -> Vec<u8> {
    json_bytes(text)
        .filter(|&(b, structural)| !(structural && b.is_ascii_whitespace()))
        .map(|(b, _)| b)
        .collect()
}

/// Every panic message of this process since the hook was installed.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Wraps sluice's own panic hook (log + `sluice_panics_total`) with one
/// that records each panic for the test to fail on.
fn record_panics() {
    sluice_gateway::metrics::install_panic_hook();
    let sluice_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // sluice's hook logs through tracing, which has no subscriber here.
        eprintln!("{info}");
        PANICS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(info.to_string());
        sluice_hook(info);
    }));
}

/// One produced record and what must come back.
struct Case {
    /// The request body and its Content-Type.
    body: Vec<u8>,
    json: bool,
    query: &'static str,
    key: Option<Vec<u8>>,
    /// (served as `value`, the value's text or bytes).
    value: (bool, Vec<u8>),
    headers: BTreeMap<String, String>,
}

fn json_case(value: &str, key: Option<&[u8]>, headers: &[(&str, &str)]) -> Case {
    let mut rec = format!(r#"{{"value":{value}"#);
    match key.map(std::str::from_utf8) {
        None => {}
        Some(Ok(k)) => rec.push_str(&format!(r#","key":{}"#, serde_json::to_string(k).unwrap())),
        Some(Err(_)) => rec.push_str(&format!(r#","key_b64":"{}""#, B64.encode(key.unwrap()))),
    }
    let headers: BTreeMap<String, String> = headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    rec.push_str(&format!(r#","headers":{}}}"#, serde_json::to_string(&headers).unwrap()));
    Case {
        body: format!(r#"{{"records":[{rec}]}}"#).into_bytes(),
        json: true,
        query: "",
        key: key.map(<[u8]>::to_vec),
        value: (true, value.trim().as_bytes().to_vec()),
        headers,
    }
}

fn raw_case(bytes: &[u8], query: &'static str, key: Option<&str>, served: (bool, &[u8])) -> Case {
    Case {
        body: bytes.to_vec(),
        json: false,
        query,
        key: key.map(|k| k.as_bytes().to_vec()),
        value: (served.0, served.1.to_vec()),
        headers: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_and_nothing_panics() {
    record_panics();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("d");
    let overrides = sluice_gateway::run::Overrides {
        data_dir: Some(data_dir.clone()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        mqtt_listen: Some("127.0.0.1:0".parse().unwrap()),
        accept_data_loss: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = sluice_config::Config::default();
    let server = tokio::spawn(sluice_gateway::run::run(config, None, overrides, async move {
        let _ = stopped.await;
    }));
    let gw = Gateway::attach(&data_dir).await;

    let deep = nested(100_000);
    let cases = [
        json_case("null", None, &[]),
        json_case("true", Some(b"k"), &[("h", "v"), ("é", "ü\u{0}")]),
        json_case("-1.5e300", Some(&[0xff, 0x00, 0x80]), &[]),
        json_case(r#""text with \"quotes\", \\, \u0000 and \ud83d\ude00""#, Some(b""), &[]),
        json_case("{\r\n  \"a\": [1, {\"b\": null}],\n\t\"c\": \"]]}}\"\n}", None, &[("", "")]),
        json_case(&nested(128), None, &[]),
        raw_case(&[0xff, 0xfe, 0x00], "", None, (false, &[0xff, 0xfe, 0x00])),
        raw_case(b"", "?key=dev-1", Some("dev-1"), (false, b"")),
        raw_case(b"plain text", "?key=%C3%A9", Some("\u{e9}"), (false, b"plain text")),
        // JSON in a raw body is served as JSON (its text, without the
        // whitespace around it).
        raw_case(b" {\"a\":1}\n", "", None, (true, b"{\"a\":1}")),
        raw_case(b"[1,2", "", None, (false, b"[1,2")),
        raw_case(deep.as_bytes(), "", None, (true, deep.as_bytes())),
    ];
    for (i, c) in cases.iter().enumerate() {
        let (status, body) = if c.json {
            produce_json(&gw, "rt", String::from_utf8(c.body.clone()).unwrap()).await
        } else {
            produce_raw(&gw, "rt", c.query, c.body.clone()).await
        };
        assert_eq!(status, 200, "case {i}: {body}");
        assert!(body.contains(&format!(r#""offset":{i}"#)), "case {i}: {body}");
    }
    // Bad bodies are answered 400 with a JSON error, and store nothing.
    for bad in [
        "",
        "{",
        r#"{"records":[]}"#,
        r#"{"records":[{"value":1,"value_b64":"AA=="}]}"#,
        r#"{"records":[{"value_b64":"not base64!"}]}"#,
        r#"{"records":[{"key":"a","key_b64":"AA==","value":1}]}"#,
        r#"{"records":[{"value":1,"headers":{"h":1}}]}"#,
        r#"{"records":[{"value":[1,}]}"#,
        "{\"records\":[{\"value\":\"\u{0}\"}]}",
    ] {
        let (status, body) = produce_json(&gw, "rt", bad.to_owned()).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].is_string(), "{bad:?}: {body}");
    }

    let n = cases.len();
    // `exact`: a JSON value's text comes back byte for byte. Over SSE its
    // line breaks are the event's line breaks, which the SSE format may
    // change (`\r\n` inside a value arrives as two line ends): there the
    // same JSON value, whitespace between tokens aside, is what is sent.
    let check = |path: &str, recs: &[Rec], exact: bool| {
        assert_eq!(recs.len(), n, "{path}");
        for (i, (c, r)) in cases.iter().zip(recs).enumerate() {
            assert_eq!(r.offset, i as u64, "{path}");
            assert_eq!(r.key(), c.key, "{path}: key of case {i}");
            let (json, value) = r.value();
            let same = if exact || !json { value == c.value.1 } else { tokens(&value) == tokens(&c.value.1) };
            assert!(
                json == c.value.0 && same,
                "{path}: value of case {i}: {:?}",
                String::from_utf8_lossy(&value)
            );
            assert_eq!(r.headers, c.headers, "{path}: headers of case {i}");
        }
    };
    check("partition fetch", &fetch_partition(&gw, "rt", n).await, true);
    check("group fetch", &fetch_group(&gw, "g", "rt").await, true);
    check("SSE", &stream_sse(&gw, "s", "rt", n).await, false);
    check("WebSocket", &stream_ws(&gw, "w", "rt", n).await, true);
    assert_eq!(gw.metric("sluice_panics_total").await, 0);

    stop.send(()).unwrap();
    tokio::time::timeout(GUARD, server).await.expect("sluice did not stop").unwrap().unwrap();
    let panics = PANICS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(panics.is_empty(), "panics while serving: {panics:#?}");
}
