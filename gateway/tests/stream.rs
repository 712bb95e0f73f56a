//! `GET /v1/groups/{group}/stream` over Server-Sent Events and WebSocket,
//! against the real binary on 127.0.0.1:0. No timing assertions: timeouts
//! only turn a hang into a failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::sse::{place, Place, SseClient};
use common::{positions_after, Gateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// How long to wait for something that must happen before calling it a hang.
const GUARD: Duration = Duration::from_secs(60);

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
[[topic]]
name = "one"
service = "logs"
"#;

/// Low-priority flood first, then telemetry, then alarms (oldest first).
async fn produce_mixed(gw: &Gateway) {
    let filler = "x".repeat(100);
    let logs: Vec<Value> = (0..40).map(|i| json!(format!("log-{i}-{filler}"))).collect();
    let tele: Vec<Value> = (0..40).map(|i| json!(format!("tel-{i}-{filler}"))).collect();
    let alarms: Vec<Value> = (0..4).map(|i| json!(format!("alarm-{i}-{filler}"))).collect();
    gw.produce("logs", &logs).await;
    gw.produce("telemetry", &tele).await;
    gw.produce("alarms", &alarms).await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(gw: &Gateway, group: &str, query: &str) -> String {
    format!("{}/v1/groups/{group}/stream?{query}", gw.base.replacen("http://", "ws://", 1))
}

async fn ws_open(gw: &Gateway, group: &str, query: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(ws_url(gw, group, query)).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text message as JSON (pings and pongs skipped).
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("no WebSocket message in time")
            .expect("WebSocket ended")
            .unwrap();
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

async fn ws_records(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = ws_next(ws).await;
        assert!(r.get("offset").is_some(), "expected a record, got {r}");
        out.push(r);
    }
    out
}

async fn ws_send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test]
async fn sse_streams_in_priority_order_and_resumes_from_commits() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    produce_mixed(&gw).await;

    let query = "topics=logs,telemetry,alarms";
    let mut sse = SseClient::open(&gw, "edge", query).await;
    let first = sse.records(20).await;
    let topics: Vec<&str> = first.iter().map(|r| r["topic"].as_str().unwrap()).collect();
    assert_eq!(topics[0], "alarms", "express first: {topics:?}");
    assert_eq!(topics.iter().filter(|t| **t == "alarms").count(), 4, "{topics:?}");
    let tel = topics.iter().filter(|t| **t == "telemetry").count();
    let log = topics.iter().filter(|t| **t == "logs").count();
    assert!(tel >= 3 * log, "weight 4 vs 1 among the rest: {tel} telemetry, {log} logs");
    assert!(first[0]["value"].as_str().unwrap().starts_with("alarm-0-"));
    assert!(first[0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(first[0]["headers"], json!({}));
    // The same order as the request/response group fetch.
    let (status, fetched) = gw
        .post_json(
            "/v1/groups/edge/fetch",
            &json!({ "topics": ["logs", "telemetry", "alarms"], "max_records": 20 }),
        )
        .await;
    assert_eq!(status, 200, "{fetched}");
    let fetched: Vec<Place> = fetched["records"].as_array().unwrap().iter().map(place).collect();
    assert_eq!(first.iter().map(place).collect::<Vec<_>>(), fetched);

    // Commit the first 10, disconnect, reconnect: the 10 are not sent again,
    // the other 10 sent before are.
    gw.commit("edge", &first[..10]).await;
    drop(sse);
    let mut sse = SseClient::open(&gw, "edge", query).await;
    let rest = sse.records(84 - 10).await;
    let rest_places: BTreeSet<Place> = rest.iter().map(place).collect();
    assert_eq!(rest_places.len(), 74, "no duplicates");
    assert!(first[..10].iter().all(|r| !rest_places.contains(&place(r))), "committed ones are not resent");
    assert!(first[10..].iter().all(|r| rest_places.contains(&place(r))), "uncommitted ones are resent");

    // Everything was sent; a new record is pushed as the very next event.
    gw.produce("telemetry", &[json!("late")]).await;
    let (_, late) = sse.next().await;
    assert_eq!(late["value"], "late");
    assert_eq!(late["topic"], "telemetry");
}

#[tokio::test]
async fn sse_window_opens_on_http_commit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    gw.produce("one", &(0..20).map(|i| json!(i)).collect::<Vec<_>>()).await;
    let mut sse = SseClient::open(&gw, "g", "topics=one&max_unacked=5").await;
    let got = sse.records(5).await;
    assert_eq!(got.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    // Committing two records lets exactly the next ones through.
    let (status, body) = gw
        .post_json(
            "/v1/groups/g/commit",
            &json!({ "offsets": [{ "topic": "one", "partition": 0, "offset": 2 }] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let more = sse.records(2).await;
    assert_eq!(more.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![5, 6]);
}

#[tokio::test]
async fn websocket_acks_commit_bound_the_window_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    gw.produce("one", &(0..20).map(|i| json!(i)).collect::<Vec<_>>()).await;

    let mut ws = ws_open(&gw, "w", "topics=one&max_unacked=5").await;
    let got = ws_records(&mut ws, 5).await;
    assert_eq!(got.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(got[0]["topic"], "one");
    assert_eq!(got[0]["value"], 0);
    // The server answers messages in order and sends records in between
    // only when the window allows: the answer to this empty ack comes
    // right after the 5, so no 6th record was sent.
    ws_send(&mut ws, &json!({ "ack": [] })).await;
    let reply = ws_next(&mut ws).await;
    assert!(reply["error"].as_str().unwrap().contains("at least one"), "{reply}");

    // An ack past the end is refused; the socket stays open.
    ws_send(&mut ws, &json!({ "ack": [{ "topic": "one", "partition": 0, "offset": 99 }] })).await;
    let reply = ws_next(&mut ws).await;
    assert!(reply["error"].as_str().unwrap().contains("high watermark"), "{reply}");
    ws_send(&mut ws, &json!({ "nack": 1 })).await;
    let reply = ws_next(&mut ws).await;
    assert!(reply["error"].as_str().unwrap().contains("nack"), "{reply}");

    // Acking two opens the window by two.
    ws_send(&mut ws, &json!({ "ack": [{ "topic": "one", "partition": 0, "offset": 2 }] })).await;
    assert_eq!(ws_next(&mut ws).await, json!({ "committed": 1 }));
    let more = ws_records(&mut ws, 2).await;
    assert_eq!(more.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![5, 6]);
    ws_send(&mut ws, &json!({ "ack": [] })).await;
    assert!(ws_next(&mut ws).await.get("error").is_some(), "still exactly 5 outstanding");

    // The ack is the group's commit.
    let (_, offsets) = gw.get_json("/v1/groups/w/offsets?topics=one").await;
    assert_eq!(offsets["offsets"][0]["committed"], 2);

    // Reconnect: resumes after the ack, sends 2..6 again.
    ws.close(None).await.unwrap();
    let mut ws = ws_open(&gw, "w", "topics=one&max_unacked=100").await;
    let again = ws_records(&mut ws, 18).await;
    assert_eq!(
        again.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(),
        (2..20).collect::<Vec<_>>()
    );
    // New records are pushed.
    gw.produce("one", &[json!("late")]).await;
    let late = ws_next(&mut ws).await;
    assert_eq!((late["offset"].as_u64(), late["value"].as_str()), (Some(20), Some("late")));
}

#[tokio::test]
async fn websocket_streams_in_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    produce_mixed(&gw).await;
    let mut ws = ws_open(&gw, "edge", "topics=logs,telemetry,alarms").await;
    let all = ws_records(&mut ws, 84).await;
    assert_eq!(all[0]["topic"], "alarms");
    assert!(all[..20].iter().filter(|r| r["topic"] == "alarms").count() == 4);
    ws_send(&mut ws, &json!({ "ack": positions_after(&all) })).await;
    assert_eq!(ws_next(&mut ws).await, json!({ "committed": 4 }));
    let (_, lag) = gw.get_json("/v1/groups/edge/offsets?topics=alarms,telemetry,logs").await;
    assert!(lag["offsets"].as_array().unwrap().iter().all(|o| o["lag"] == 0), "{lag}");
}

async fn expect_error(resp: reqwest::Response, status: u16, needle: &str) {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {body}"));
    assert_eq!(got, status, "{msg}");
    assert!(msg.contains(needle), "error {msg:?} should mention {needle:?}");
}

#[tokio::test]
async fn bad_stream_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    let get = |path: &str| gw.http.get(gw.url(path)).header("accept", "text/event-stream").send();
    expect_error(get("/v1/groups/g/stream?topics=alarms,nope").await.unwrap(), 404, "\"nope\"").await;
    expect_error(get("/v1/groups/g/stream").await.unwrap(), 400, "topics").await;
    expect_error(get("/v1/groups/g/stream?topics=").await.unwrap(), 400, "topics").await;
    expect_error(get("/v1/groups/g/stream?topics=bad%20name").await.unwrap(), 400, "invalid topic name")
        .await;
    expect_error(get("/v1/groups/bad%20group/stream?topics=alarms").await.unwrap(), 400, "group").await;
    expect_error(get("/v1/groups/g/stream?topics=alarms&max_unacked=0").await.unwrap(), 400, "max_unacked")
        .await;
    expect_error(
        get("/v1/groups/g/stream?topics=alarms&max_unacked=10001").await.unwrap(),
        400,
        "max_unacked",
    )
    .await;
    expect_error(get("/v1/groups/g/stream?topics=alarms&topic=x").await.unwrap(), 400, "\"topic\"").await;

    // Before upgrading, too: the handshake gets the JSON error.
    let err = tokio_tungstenite::connect_async(ws_url(&gw, "g", "topics=nope")).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 404);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains("\"nope\""), "{body}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    let err = tokio_tungstenite::connect_async(ws_url(&gw, "g", "max_unacked=3")).await.unwrap_err();
    assert!(matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400), "{err:?}");
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_the_gateway_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    gw.produce("alarms", &[json!("a")]).await;
    let mut sse = SseClient::open(&gw, "g", "topics=alarms").await;
    assert_eq!(sse.records(1).await[0]["value"], "a");
    let mut ws = ws_open(&gw, "g", "topics=alarms").await;
    assert_eq!(ws_records(&mut ws, 1).await[0]["value"], "a");
    // A client that went away mid-stream must not hold anything up either.
    let gone = SseClient::open(&gw, "g2", "topics=alarms").await;
    drop(gone);
    // Both streams are now idle, waiting for data.
    gw.terminate();
    assert!(sse.ended().await);
    let end = tokio::time::timeout(GUARD, ws.next()).await.expect("WebSocket did not end");
    match end {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        None | Some(Err(_)) | Some(Ok(Message::Close(None))) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// A window of three records still shares by weight: the stream's batches
/// continue the weighted rounds instead of restarting them (which gave
/// every small batch to the heaviest service while it had a backlog).
#[tokio::test]
async fn small_window_shares_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    let values: Vec<Value> = (0..80).map(|i| json!(format!("record-{i}"))).collect();
    gw.produce("logs", &values).await;
    gw.produce("telemetry", &values).await;
    let mut sse = SseClient::open(&gw, "paged", "topics=logs,telemetry&max_unacked=3").await;
    let mut logs = 0;
    for _ in 0..20 {
        let got = sse.records(3).await;
        logs += got.iter().filter(|r| r["topic"] == "logs").count();
        gw.commit("paged", &got).await;
    }
    // Weight 1 of 5: 12 of 60, give or take the rounds cut by the window.
    assert!((8..=16).contains(&logs), "logs got {logs} of 60 deliveries, expected about 12");
}

/// The push window is sized in time: a consumer that goes through about
/// 200 records per commit gets a window of about that many (plus the
/// 10 ms target delay's worth), not `max_unacked` (1000), so an alarm
/// produced into a bulk backlog reaches it after about one commit's worth
/// of bulk. The consumer keeps its pace: every cycle gets its 200 records.
#[tokio::test]
async fn sse_window_follows_the_consumer_so_alarms_overtake_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    for chunk in 0..12 {
        let values: Vec<Value> = (0..500).map(|i| json!(format!("bulk-{}", chunk * 500 + i))).collect();
        gw.produce("logs", &values).await;
    }
    let mut sse = SseClient::open(&gw, "slow", "topics=alarms,logs").await;
    for _ in 0..12 {
        let got = sse.records(200).await;
        assert!(got.iter().all(|r| r["topic"] == "logs"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        gw.commit("slow", &got).await;
    }
    gw.produce("alarms", &[json!("fire")]).await;
    let mut before = 0;
    let mut page = Vec::new();
    loop {
        let (_, r) = sse.next().await;
        if r["topic"] == "alarms" {
            break;
        }
        before += 1;
        page.push(r);
        if page.len() == 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gw.commit("slow", &page).await;
            page.clear();
        }
        assert!(before < 3600, "the alarm never came");
    }
    // With a fixed window of 1000, 800 to 1000 bulk records came first.
    assert!(before < 500, "{before} bulk records came before the alarm");
}

/// `{"processed": [...]}` frees the WebSocket stream's window without a
/// durable commit.
#[tokio::test]
async fn websocket_processed_moves_the_window_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(PRIORITY_CONFIG)).await;
    gw.produce("one", &(0..20).map(|i| json!(i)).collect::<Vec<_>>()).await;
    let mut ws = ws_open(&gw, "p", "topics=one&max_unacked=5").await;
    let got = ws_records(&mut ws, 5).await;
    assert_eq!(got.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    ws_send(&mut ws, &json!({ "processed": [{ "topic": "one", "partition": 0, "offset": 2 }] })).await;
    assert_eq!(ws_next(&mut ws).await, json!({ "processed": 1 }));
    let more = ws_records(&mut ws, 2).await;
    assert_eq!(more.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![5, 6]);
    let (_, offsets) = gw.get_json("/v1/groups/p/offsets?topics=one").await;
    assert!(offsets["offsets"][0]["committed"].is_null(), "nothing committed: {offsets}");
}
