//! A metered link from the `sluice` binary to a central HTTP endpoint: with
//! a daily budget of about a tenth of the stored bulk backlog, bulk stops
//! when only the reserve is left, every alarm produced afterwards still goes
//! up, the bytes the central side received never exceed the budget, and what
//! was spent survives a kill -9.
#![allow(clippy::unwrap_used, dead_code)]

mod common;

use common::Gateway;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BUDGET: u64 = 40 * 1024;
const RESERVE: f64 = 0.25;
const BULK: usize = 2000;
const ALARMS: usize = 20;

#[derive(Default)]
struct Received {
    /// Request body bytes as they came over the wire (gzip).
    wire_bytes: u64,
    /// (local topic, offset) of every record.
    records: Vec<(String, u64)>,
}

/// A central HTTP endpoint that counts what it receives.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
                let mut s = state.lock().unwrap();
                s.wire_bytes += body.len() as u64;
                for line in text.lines() {
                    let v: Value = serde_json::from_str(line).unwrap();
                    let topic = v["headers"]["sluice.topic"].as_str().unwrap().to_owned();
                    s.records.push((topic, v["offset"].as_u64().unwrap()));
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn config(url: &str) -> String {
    format!(
        r#"
[node]
id = "pi-01"
[[service]]
name = "alarms"
express = true
durability = "sync"
[[service]]
name = "bulk"
weight = 1
[[topic]]
name = "alarms"
service = "alarms"
[[topic]]
name = "bulk"
service = "bulk"
[[uplink]]
name = "central"
kind = "http"
brokers = ["{url}"]
linger = "1ms"
batch_max_bytes = "16KiB"
budget = {{ bytes = "{BUDGET}B", period = "1d", reserve = {RESERVE} }}
"#
    )
}

async fn budget(gw: &Gateway) -> Value {
    let (_, u) = gw.get_json("/v1/uplinks").await;
    u["uplinks"][0].clone()
}

fn day() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400
}

fn count(got: &Mutex<Received>, topic: &str) -> usize {
    let g = got.lock().unwrap();
    let mut offsets: Vec<u64> = g.records.iter().filter(|(t, _)| t == topic).map(|(_, o)| *o).collect();
    offsets.sort_unstable();
    offsets.dedup();
    offsets.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_a_tenth_of_the_backlog_stops_bulk_and_carries_every_alarm() {
    let first_day = day();
    let (url, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut gw = Gateway::start(&data_dir, Some(&config(&url))).await;

    // A bulk backlog of ~10x the budget (values of 180 B).
    let filler = "x".repeat(180);
    for chunk in 0..BULK / 100 {
        let values: Vec<Value> = (0..100).map(|i| json!({ "n": chunk * 100 + i, "fill": filler })).collect();
        gw.produce("bulk", &values).await;
    }
    // Bulk goes until only the reserve (and less than one more bulk
    // record) is left.
    let reserve = (BUDGET as f64 * RESERVE) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = budget(&gw).await;
        let left = u["budget"]["left_bytes"].as_u64().unwrap();
        if left < reserve + 600 && u["in_flight"] == 0 {
            assert_eq!(u["budget"]["bulk_open"], false, "{u}");
            break;
        }
        assert!(Instant::now() < deadline, "bulk never used its share of the budget: {u}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bulk_sent = count(&got, "bulk");
    assert!(bulk_sent > 0 && bulk_sent < BULK / 5, "{bulk_sent} bulk records sent on a tenth of the budget");

    // Alarms still go: from the reserve.
    for i in 0..ALARMS {
        gw.produce("alarms", &[json!({ "alarm": i, "level": 2 })]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&got, "alarms") < ALARMS {
        assert!(
            Instant::now() < deadline,
            "{} of {ALARMS} alarms arrived: {}",
            count(&got, "alarms"),
            budget(&gw).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = budget(&gw).await;
    assert_eq!(u["services"]["bulk"]["lag_records"].as_u64().unwrap(), (BULK - bulk_sent) as u64, "{u}");
    assert!(u["eta_seconds"].as_f64().unwrap() > 0.0, "{u}");
    let used = u["budget"]["used_bytes"].as_u64().unwrap();
    assert!(used <= BUDGET, "{u}");
    assert_eq!(gw.metric("sluice_uplink_budget_bytes{uplink=\"central\"}").await, BUDGET);

    // A kill -9: the restarted uplink starts from at least what was spent.
    gw.kill9();
    let gw = Gateway::start(&data_dir, Some(&config(&url))).await;
    let after = budget(&gw).await["budget"]["used_bytes"].as_u64().unwrap();
    assert!(after >= used && after <= BUDGET, "spent {used} before the kill, {after} after");
    gw.produce("alarms", &[json!({ "alarm": "after restart" })]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&got, "alarms") < ALARMS + 1 {
        assert!(
            Instant::now() < deadline,
            "the alarm after the restart did not arrive: {}",
            budget(&gw).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&got, "bulk"), bulk_sent, "bulk went on after the restart");

    // What came over the wire never exceeded the budget (per day: a test
    // that runs across midnight UTC has two).
    let days = day() - first_day + 1;
    let wire = got.lock().unwrap().wire_bytes;
    assert!(wire <= BUDGET * days, "{wire} bytes received on a budget of {BUDGET}");
    eprintln!(
        "metered link: budget {BUDGET} B, {bulk_sent} of {BULK} bulk records and {} alarms sent, {wire} B on the wire, \
         {after} B charged",
        ALARMS + 1
    );
}
