//! The status page (`GET /`) and its feeds (`/v1/status`,
//! `/v1/status/stream`), against the real binary on 127.0.0.1:0. The page
//! itself is checked in a real browser: Debian's headless chromium driven by
//! playwright-core from Node.js (gateway/tests/browser/status_page.cjs),
//! both installed by deploy/install-test-peers.sh and found through
//! `SLUICE_CHROMIUM`, `SLUICE_NODE` and `SLUICE_NODE_MODULES` (set by
//! deploy/test.sh), else their default places. When they are missing the
//! browser tests fail and say so; they are never skipped.
#![cfg(feature = "status-page")]
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
const METRICS: &str = "metrics-token-0123456789";
const PRODUCER: &str = "producer-token-0123456789";

/// Three services of different priority, a topic each.
fn services() -> String {
    common::service_topics(&[
        ("alarms", "express = true\ndurability = \"sync\""),
        ("telemetry", "weight = 4"),
        ("bulk", "weight = 1"),
    ])
}

fn tokens() -> String {
    format!(
        "[[http.tokens]]\ntoken = \"{ADMIN}\"\nadmin = true\n\
         [[http.tokens]]\ntoken = \"{METRICS}\"\nmetrics = true\n\
         [[http.tokens]]\ntoken = \"{PRODUCER}\"\nservices = [\"*\"]\nproduce = true\n"
    )
}

/// Where the browser test's peers are.
struct Peers {
    node: PathBuf,
    chromium: PathBuf,
    modules: PathBuf,
}

const INSTALL: &str = "run deploy/install-test-peers.sh (Debian's chromium, Node.js and \
                       playwright-core from npm), or point SLUICE_CHROMIUM, SLUICE_NODE and \
                       SLUICE_NODE_MODULES at them";

fn peers() -> Peers {
    let cache = std::env::var_os("SLUICE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/sluice")
    });
    let modules =
        std::env::var_os("SLUICE_NODE_MODULES").map_or_else(|| cache.join("npm/node_modules"), PathBuf::from);
    let node = std::env::var_os("SLUICE_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let chromium = std::env::var_os("SLUICE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| {
        // Debian's /usr/bin/chromium is a shell wrapper around this.
        let direct = Path::new("/usr/lib/chromium/chromium");
        if direct.exists() {
            direct.to_owned()
        } else {
            PathBuf::from("chromium")
        }
    });
    let node_ok = Command::new(&node).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(node_ok, "Node.js ({}) does not run: {INSTALL}", node.display());
    let chromium_ok = Command::new(&chromium).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(chromium_ok, "chromium ({}) does not run: {INSTALL}", chromium.display());
    assert!(
        modules.join("playwright-core/package.json").exists(),
        "playwright-core is not in {}: {INSTALL}",
        modules.display()
    );
    Peers { node, chromium, modules }
}

/// Runs the browser driver with `scenario`; returns what it printed.
async fn drive(gw: &Gateway, scenario: &str, extra: &[(&str, &str)]) -> Value {
    let peers = peers();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.cjs");
    let mut cmd = Command::new(&peers.node);
    cmd.arg(script)
        .env("SLUICE_BASE", &gw.base)
        .env("SLUICE_SCENARIO", scenario)
        .env("SLUICE_CHROMIUM", &peers.chromium)
        .env("SLUICE_NODE_MODULES", &peers.modules)
        .env("SLUICE_SERVICES", "alarms,telemetry,bulk,default")
        .env("SLUICE_TOPICS", "alarms,telemetry,bulk")
        .env("SLUICE_WATCH", "telemetry")
        .envs(extra.iter().copied());
    // Every wait in the driver is bounded (30 s), so it ends by itself.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser scenario {scenario} failed: {stderr}\n{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Produces to telemetry, alarms and bulk every 50 ms until dropped.
struct Load(Arc<AtomicBool>);

impl Load {
    fn start(gw: &Gateway, token: Option<&str>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (http, base, token, flag) =
            (gw.http.clone(), gw.base.clone(), token.map(str::to_owned), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for topic in ["telemetry", "telemetry", "bulk", "alarms"] {
                    let body = json!({ "records": [{ "value": { "n": n, "pad": "x".repeat(200) } }] });
                    let mut req = http.post(format!("{base}/v1/topics/{topic}/records")).json(&body);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    let _ = req.send().await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Load(stop)
    }

    /// Besides the steady load, three producers flooding bulk and
    /// telemetry with batches of 50 records of 1 KiB (for the screenshot).
    fn flood(self, gw: &Gateway) -> Load {
        for topic in ["bulk", "bulk", "telemetry"] {
            let (http, base, flag) = (gw.http.clone(), gw.base.clone(), self.0.clone());
            tokio::spawn(async move {
                let records: Vec<Value> =
                    (0..50).map(|i| json!({ "value": { "i": i, "pad": "y".repeat(1024) } })).collect();
                let body = json!({ "records": records });
                while !flag.load(Ordering::Relaxed) {
                    let r = http.post(format!("{base}/v1/topics/{topic}/records")).json(&body).send().await;
                    if r.map_or(true, |r| r.status() == 429) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        }
        self
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A central HTTP endpoint that takes every batch; its address.
async fn http_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new().route("/ingest", axum::routing::post(|_: axum::body::Bytes| async {}));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn weight_of(gw: &Gateway, service: &str, token: Option<&str>) -> u64 {
    let mut req = gw.http.get(gw.url("/v1/services"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body: Value = req.send().await.unwrap().json().await.unwrap();
    body["services"].as_array().unwrap().iter().find(|s| s["name"] == service).unwrap()["weight"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_shows_live_state_and_changes_a_weight() {
    let dir = tempfile::tempdir().unwrap();
    // SLUICE_STATUS_SCREENSHOT=path saves the page under a flood, with an
    // HTTP uplink capped at 4 MiB/s (the README's picture).
    let shot = std::env::var("SLUICE_STATUS_SCREENSHOT").ok();
    let mut config = services();
    if shot.is_some() {
        config.push_str(&format!(
            "[[uplink]]\nname = \"central\"\nkind = \"http\"\nbrokers = [\"http://{}/ingest\"]\n\
             max_bytes_per_sec = \"4MiB\"\n",
            http_sink().await
        ));
    }
    let gw = Gateway::start(&dir.path().join("d"), Some(&config)).await;
    gw.produce("telemetry", &[json!({"first": true})]).await;
    let commit = json!({"offsets": [{"topic": "telemetry", "partition": 0, "offset": 1}]});
    assert_eq!(gw.post_json("/v1/groups/g1/commit", &commit).await.0, 200);
    let mut load = Load::start(&gw, None);
    let mut extra = vec![("SLUICE_WEIGHT", "bulk=7"), ("SLUICE_GROUP_ROW", "g1/telemetry/0")];
    if let Some(path) = &shot {
        load = load.flood(&gw);
        extra.push(("SLUICE_SCREENSHOT", path));
        extra.push(("SLUICE_SCREENSHOT_WAIT_MS", "20000"));
    }
    let seen = drive(&gw, "open", &extra).await;
    drop(load);
    let counts = seen["records_in"].as_array().unwrap();
    assert!(counts[1].as_u64() > counts[0].as_u64(), "{seen}");
    assert_eq!(weight_of(&gw, "bulk", None).await, 7, "the weight set in the page applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_asks_for_a_token_and_honours_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&format!("{}{}", services(), tokens()))).await;
    let _load = Load::start(&gw, Some(PRODUCER));
    let seen = drive(
        &gw,
        "tokens",
        &[("SLUICE_WEIGHT", "alarms=3"), ("SLUICE_METRICS_TOKEN", METRICS), ("SLUICE_ADMIN_TOKEN", ADMIN)],
    )
    .await;
    assert!(seen["console_errors"].as_array().unwrap().is_empty(), "{seen}");
    assert_eq!(weight_of(&gw, "alarms", Some(ADMIN)).await, 3, "the weight set in the page applies");
}

/// The first line of the feed, read with `token`.
async fn first_line(gw: &Gateway, token: Option<&str>) -> (u16, Value) {
    let mut req = gw.http.get(gw.url("/v1/status/stream?interval_ms=200"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, resp.json().await.unwrap_or(Value::Null));
    }
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        let chunk = resp.chunk().await.unwrap().expect("the feed goes on");
        buf.extend_from_slice(&chunk);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap();
    (status, serde_json::from_slice(line).unwrap())
}

#[tokio::test]
async fn feed_follows_the_token_rules_and_the_page_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&format!("{}{}", services(), tokens()))).await;

    // The page holds no data: it loads without a token, with a strict CSP.
    let page = gw.http.get(gw.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>sluice status</title>"));

    assert_eq!(first_line(&gw, None).await.0, 401);
    assert_eq!(first_line(&gw, Some("not-a-token-0123456789")).await.0, 401);
    assert_eq!(first_line(&gw, Some(PRODUCER)).await.0, 403);
    let (status, snap) = first_line(&gw, Some(METRICS)).await;
    assert_eq!(status, 200);
    assert_eq!(snap["can_admin"], false);
    let (_, snap) = first_line(&gw, Some(ADMIN)).await;
    assert_eq!(snap["can_admin"], true);
    let names: Vec<_> = snap["services"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect();
    for name in ["alarms", "telemetry", "bulk"] {
        assert!(names.contains(&json!(name)), "{snap}");
    }
    for (path, status) in [("/v1/status", 401), ("/v1/status?x=1", 401)] {
        assert_eq!(gw.http.get(gw.url(path)).send().await.unwrap().status().as_u16(), status);
    }
    let one = gw.http.get(gw.url("/v1/status")).bearer_auth(METRICS).send().await.unwrap();
    assert_eq!(one.status(), 200);
}

#[tokio::test]
async fn feed_sends_a_snapshot_per_interval_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some(&services())).await;
    gw.produce("telemetry", &[json!({"a": 1}), json!({"a": 2})]).await;
    let (status, _) = gw
        .post_json(
            "/v1/groups/g1/commit",
            &json!({"offsets": [{"topic": "telemetry", "partition": 0, "offset": 1}]}),
        )
        .await;
    assert_eq!(status, 200);

    let mut resp = gw.http.get(gw.url("/v1/status/stream?interval_ms=200")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    while text.matches('\n').count() < 3 {
        let chunk = resp.chunk().await.unwrap().expect("the feed goes on");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let snaps: Vec<Value> = text.lines().take(3).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(snaps[0]["time_ms"].as_u64() < snaps[2]["time_ms"].as_u64());
    let snap = &snaps[2];
    assert_eq!(snap["can_admin"], true, "no tokens configured: everything is allowed");
    let telemetry = snap["services"].as_array().unwrap().iter().find(|s| s["name"] == "telemetry").unwrap();
    assert_eq!(telemetry["records_in"], 2);
    assert!(telemetry["bytes_in"].as_u64().unwrap() > 0);
    assert_eq!(telemetry["weight"], 4);
    let topic = snap["topics"].as_array().unwrap().iter().find(|t| t["name"] == "telemetry").unwrap();
    assert_eq!(topic["partitions"][0]["high_watermark"], 2);
    assert_eq!(snap["uplinks"], json!([]));
    let mut groups = snap["groups"].clone();
    let lag_seconds = groups[0].as_object_mut().unwrap().remove("lag_seconds").unwrap();
    assert!(lag_seconds.as_f64().unwrap() > 0.0, "the uncommitted record has an age: {snap}");
    assert_eq!(
        groups,
        json!([{"group": "g1", "topic": "telemetry", "partition": 0, "committed": 1, "durable": 2, "lag_records": 1}])
    );
    assert!(snap["store"]["max_bytes"].as_u64().unwrap() > 0);

    for bad in ["interval_ms=10", "interval_ms=x", "every=1"] {
        let r = gw.http.get(gw.url(&format!("/v1/status/stream?{bad}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // An open feed does not hold up a graceful stop.
    gw.terminate();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the feed ended with the gateway");
}
