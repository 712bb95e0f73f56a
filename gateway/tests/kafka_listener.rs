//! The Kafka-protocol listener with real clients on 127.0.0.1: confluent-kafka
//! (current librdkafka) through gateway/tests/kafka/driver.py, kcat (Debian's
//! older librdkafka), and raw frames encoded with the kafka-protocol crate
//! for what clients do not expose (ApiVersions too new, bad frames, the
//! priority order of one Fetch).

#![allow(clippy::unwrap_used)]

#[allow(dead_code, unreachable_pub)]
#[path = "../../uplink/tests/common/tls.rs"]
mod certs;
mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Gateway;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Failure guard for waiting on clients (not a speed expectation).
const GUARD: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    let path = std::env::var_os("SLUICE_PYTHON").filter(|p| !p.is_empty()).map_or_else(
        || PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/sluice/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no python with confluent-kafka at {}: run deploy/install-test-peers.sh",
        path.display()
    );
    path
}

fn driver_cmd(bootstrap: &str, args: &[&str]) -> Command {
    script_cmd("driver.py", bootstrap, args)
}

/// `gateway/tests/kafka/{name}` with the venv's python: `args[0]` is the
/// command, then `--bootstrap`, then the rest.
fn script_cmd(name: &str, bootstrap: &str, args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka").join(name);
    let mut cmd = Command::new(python());
    cmd.arg(script).args(&args[..1]).args(["--bootstrap", bootstrap]).args(&args[1..]);
    cmd
}

/// Runs a driver command to the end: its JSON lines and exit status.
async fn driver(bootstrap: &str, args: &[&str]) -> (Vec<Value>, i32) {
    run_script("driver.py", bootstrap, args).await
}

async fn run_script(name: &str, bootstrap: &str, args: &[&str]) -> (Vec<Value>, i32) {
    let mut cmd = script_cmd(name, bootstrap, args);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run driver.py");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.is_empty() {
        eprintln!("driver.py {args:?} stderr: {stderr}");
    }
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (lines, output.status.code().unwrap_or(-1))
}

fn kafka_addr(gw: &Gateway) -> String {
    gw.listen["kafka"].as_str().expect("listen.json has the kafka address").to_owned()
}

fn config(extra: &str) -> String {
    format!("[kafka]\nlisten = \"127.0.0.1:0\"\n{extra}")
}

async fn http_values(gw: &Gateway, topic: &str, partition: u32) -> Vec<Value> {
    let (status, body) = gw
        .get_json(&format!("/v1/topics/{topic}/partitions/{partition}/records?offset=0&max_records=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_with_each_acks_setting_is_readable_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&common::service_topics(&[
        ("alarms", "express = true\ndurability = \"sync\""),
        ("telemetry", "weight = 4"),
    ]));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    for (acks, topic) in [("0", "telemetry"), ("1", "telemetry"), ("all", "alarms")] {
        let value = format!("{{\"acks\":\"{acks}\",\"i\":{{i}}}}");
        let (lines, status) = driver(
            &addr,
            &[
                "produce", "--topic", topic, "--count", "20", "--acks", acks, "--key", "dev-{i}", "--value",
                &value, "--header", "h=1",
            ],
        )
        .await;
        assert_eq!(status, 0, "produce acks={acks}: {lines:?}");
        assert_eq!(lines.len(), 20);
        if acks != "0" {
            let mut offsets: Vec<i64> = lines.iter().map(|l| l["offset"].as_i64().unwrap()).collect();
            offsets.sort_unstable();
            assert!(offsets.iter().all(|&o| o >= 0), "acks={acks} got offsets {offsets:?}");
        }
    }
    // acks=0 records are not acknowledged: wait until all 40 are readable.
    let deadline = Instant::now() + GUARD;
    let telemetry = loop {
        let recs = http_values(&gw, "telemetry", 0).await;
        if recs.len() >= 40 || Instant::now() > deadline {
            break recs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(telemetry.len(), 40);
    assert_eq!(telemetry.iter().filter(|r| r["value"]["acks"] == "0").count(), 20);
    assert_eq!(telemetry[20]["value"], json!({"acks": "1", "i": 0}));
    // acks=all on a sync service: readable (durable) once acknowledged.
    let alarms = http_values(&gw, "alarms", 0).await;
    assert_eq!(alarms.len(), 20);
    assert_eq!(alarms[3]["key"], "dev-3");
    assert_eq!(alarms[3]["headers"], json!({"h": "1"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_records_are_consumed_from_earliest_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let addr = kafka_addr(&gw);
    let records: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("k{i}"), "value": {"n": i}, "headers": {"src": "http"}}))
        .collect();
    let (status, body) = gw.post_json("/v1/topics/events/records", &json!({ "records": records })).await;
    assert_eq!(status, 200, "{body}");
    let (lines, status) = driver(&addr, &["consume", "--topic", "events", "--count", "5"]).await;
    assert_eq!(status, 0, "{lines:?}");
    let got: Vec<(i64, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["offset"].as_i64().unwrap(),
                l["key"].as_str().unwrap().into(),
                l["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(i64, String, String)> =
        (0..5).map(|i| (i, format!("k{i}"), format!("{{\"n\":{i}}}"))).collect();
    assert_eq!(got, want);
    assert_eq!(lines[0]["headers"], json!([["src", "http"]]));
    assert!(lines[0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    // What the fetches handed out is in the delivery-age histogram.
    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let delivered: u64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_delivery_age_seconds_count{") && l.contains("path=\"kafka\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(delivered >= 5, "{metrics}");

    // From latest: the consumer starts at the end it found. sluice cannot
    // see when the client has its position, so records are written one by
    // one until the first arrives; from then on nothing may be skipped.
    let mut child = driver_cmd(&addr, &["consume", "--topic", "events", "--count", "3", "--start", "latest"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let deadline = Instant::now() + GUARD;
    let mut n = 5;
    let first = loop {
        assert!(Instant::now() < deadline, "the latest consumer got nothing");
        let body = json!({ "records": [{"value": {"n": n}}] });
        assert_eq!(gw.post_json("/v1/topics/events/records", &body).await.0, 200);
        n += 1;
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
    };
    let first_offset = first["offset"].as_i64().unwrap();
    assert!(first_offset >= 5, "latest must not return records written before it: {first}");
    for _ in 0..2 {
        let body = json!({ "records": [{"value": {"n": n}}] });
        assert_eq!(gw.post_json("/v1/topics/events/records", &body).await.0, 200);
        n += 1;
    }
    let rest: Vec<i64> =
        (0..2).map(|_| lines.recv_timeout(GUARD).expect("next record")["offset"].as_i64().unwrap()).collect();
    assert_eq!(rest, [first_offset + 1, first_offset + 2]);
    assert!(tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap().success());
}

/// The JSON lines a child prints, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("JSON line"));
        }
    });
    rx
}

/// One consumer-group member process.
struct Member {
    child: Child,
    stdin: ChildStdin,
}

fn spawn_member(addr: &str, group: &str, name: &str, events: mpsc::Sender<Value>) -> Member {
    let mut child = driver_cmd(addr, &["member", "--group", group, "--topics", "metrics", "--name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = events.send(serde_json::from_str(&line).expect("JSON line"));
        }
    });
    let stdin = child.stdin.take().unwrap();
    Member { child, stdin }
}

/// Collects events until every partition of `metrics` (3) is assigned to
/// exactly the members in `names`, one each at most 2 apart.
fn wait_assignment(events: &mpsc::Receiver<Value>, names: &[&str], seen: &mut Vec<Value>) {
    let deadline = Instant::now() + GUARD;
    let mut latest: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = events.recv_timeout(left).expect("members did not settle on an assignment");
        if ev["event"] == "assigned" {
            latest.insert(
                ev["name"].as_str().unwrap().to_owned(),
                ev["partitions"].as_array().unwrap().clone(),
            );
        } else if ev["event"] == "revoked" {
            latest.remove(ev["name"].as_str().unwrap());
        }
        seen.push(ev);
        let mut all: Vec<Value> =
            names.iter().flat_map(|n| latest.get(*n).cloned().unwrap_or_default()).collect();
        all.sort_by_key(|p| p[1].as_i64());
        let complete = all.len() == 3 && all.iter().enumerate().all(|(i, p)| p[1] == json!(i));
        if complete && names.iter().all(|n| latest.get(*n).is_some_and(|p| !p.is_empty())) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_group_rebalances_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("[[topic]]\nname = \"metrics\"\npartitions = 3\n");
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let (tx, events) = mpsc::channel();
    let mut members: Vec<Member> =
        ["a", "b", "c"].iter().map(|n| spawn_member(&addr, "g1", n, tx.clone())).collect();
    let mut seen = Vec::new();
    wait_assignment(&events, &["a", "b", "c"], &mut seen);
    // 30 records over the 3 partitions, all consumed and committed.
    let records: Vec<Value> = (0..30).map(|i| json!({"key": format!("dev-{i}"), "value": i})).collect();
    let (status, _) = gw.post_json("/v1/topics/metrics/records", &json!({ "records": records })).await;
    assert_eq!(status, 200);
    let consumed = |seen: &Vec<Value>| seen.iter().filter(|e| e["event"] == "record").count();
    let deadline = Instant::now() + GUARD;
    while consumed(&seen) < 30 {
        let ev = events.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("records");
        seen.push(ev);
    }
    // c leaves: a and b take over its partitions.
    writeln!(members[2].stdin, "leave").unwrap();
    wait_assignment(&events, &["a", "b"], &mut seen);
    assert!(seen.iter().any(|e| e["event"] == "left" && e["name"] == "c"), "c left with LeaveGroup");
    // Admin tools see the group (ListGroups, DescribeGroups) and create topics.
    let (admin, status) =
        driver(&addr, &["admin", "--group", "g1", "--topic", "made", "--partitions", "3"]).await;
    assert_eq!(status, 0, "{admin:?}");
    assert_eq!(admin[0], json!({"created": "made"}));
    assert!(admin[1]["groups"].as_array().unwrap().iter().any(|g| g[0] == "g1"), "{admin:?}");
    assert_eq!(admin[2]["members"], json!(["a", "b"]), "{admin:?}");
    assert!(admin[2]["state"].as_str().unwrap().contains("STABLE"), "{admin:?}");
    let (_, topics) = gw.get_json("/v1/topics").await;
    let made = topics["topics"].as_array().unwrap().iter().find(|t| t["name"] == "made").expect("created");
    assert_eq!(made["partitions"].as_array().unwrap().len(), 3);
    let more: Vec<Value> = (30..45).map(|i| json!({"key": format!("dev-{i}"), "value": i})).collect();
    let (status, _) = gw.post_json("/v1/topics/metrics/records", &json!({ "records": more })).await;
    assert_eq!(status, 200);
    while consumed(&seen) < 45 {
        let ev =
            events.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("more records");
        seen.push(ev);
    }
    let mut values: Vec<i64> = seen
        .iter()
        .filter(|e| e["event"] == "record")
        .map(|e| e["value"].as_str().unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..45).collect::<Vec<_>>(), "each record once");
    for m in &mut members[..2] {
        writeln!(m.stdin, "leave").unwrap();
    }
    for mut m in members {
        assert!(m.child.wait().unwrap().success());
    }
    // The commits are sluice's group offsets, visible over HTTP.
    let (_, offsets) = gw.get_json("/v1/groups/g1/offsets?topics=metrics").await;
    let lag: i64 = offsets["offsets"].as_array().unwrap().iter().map(|o| o["lag"].as_i64().unwrap()).sum();
    assert_eq!(lag, 0, "{offsets}");

    // After a restart the group resumes from its commits.
    let gw = gw.restart().await;
    let addr = kafka_addr(&gw);
    let last: Vec<Value> = (45..48).map(|i| json!({"key": format!("dev-{i}"), "value": i})).collect();
    let (status, _) = gw.post_json("/v1/topics/metrics/records", &json!({ "records": last })).await;
    assert_eq!(status, 200);
    let (lines, status) =
        driver(&addr, &["consume", "--topic", "metrics", "--group", "g1", "--count", "3"]).await;
    assert_eq!(status, 0, "{lines:?}");
    let mut values: Vec<&str> = lines.iter().map(|l| l["value"].as_str().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, ["45", "46", "47"]);
}

/// Runs kcat (Debian's, librdkafka 2.0.2) with `args`, `input` on its stdin.
fn kcat(args: Vec<String>, input: &'static str) -> tokio::task::JoinHandle<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kcat")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat (Debian package kcat; deploy/install-test-peers.sh installs it)");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kcat_produces_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let addr = kafka_addr(&gw);
    let produced = kcat(
        vec!["-b".into(), addr.clone(), "-P".into(), "-t".into(), "lines".into(), "-K".into(), ":".into()],
        "k1:one\nk2:two\nk3:three\n",
    )
    .await
    .unwrap();
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    // Readable once durable (store.flush_interval for a buffered service).
    let deadline = Instant::now() + GUARD;
    let recs = loop {
        let recs = http_values(&gw, "lines", 0).await;
        if recs.len() >= 3 || Instant::now() > deadline {
            break recs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), r["value_b64"].as_str().or(r["value"].as_str()).unwrap()))
        .collect();
    assert_eq!(got.len(), 3, "{recs:?}");
    let args = ["-b", &addr, "-C", "-t", "lines", "-o", "beginning", "-c", "3", "-e", "-f", "%k=%s@%o\n"];
    let consumed = kcat(args.iter().map(|s| s.to_string()).collect(), "").await.unwrap();
    assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
    assert_eq!(String::from_utf8(consumed.stdout).unwrap(), "k1=one@0\nk2=two@1\nk3=three@2\n");
}

/// A blocking raw Kafka connection.
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: &str) -> Raw {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(GUARD)).unwrap();
        Raw(tcp)
    }

    fn send<R: Encodable + HeaderVersion>(&mut self, key: ApiKey, version: i16, corr: i32, req: &R) {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_static_str("raw")));
        header.encode(&mut buf, R::header_version(version)).unwrap();
        req.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.0.write_all(&buf).unwrap();
    }

    /// The next response frame (without the length), or `None` when sluice
    /// closed the connection.
    fn recv(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    fn api_versions(&mut self, version: i16) -> ApiVersionsResponse {
        let req = ApiVersionsRequest::default();
        self.send(ApiKey::ApiVersions, version, 9, &req);
        let mut body = self.recv().expect("ApiVersions answer");
        assert_eq!(body.get_i32(), 9, "correlation id");
        ApiVersionsResponse::decode(&mut body, version).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config("max_request = \"64KiB\"\n"))).await;
    let addr = kafka_addr(&gw);
    let handle = tokio::task::spawn_blocking(move || {
        let mut good = Raw::connect(&addr);
        let v = good.api_versions(3);
        assert_eq!(v.error_code, 0);
        assert!(v.api_keys.iter().any(|k| k.api_key == ApiKey::Fetch as i16));
        // Too new: UNSUPPORTED_VERSION in a version 0 body, listing what works.
        let mut raw = Raw::connect(&addr);
        let mut frame = BytesMut::new();
        frame.put_i32(12);
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(99);
        frame.put_i32(7);
        frame.put_i16(-1);
        frame.put_i16(0);
        raw.0.write_all(&frame).unwrap();
        let mut body = raw.recv().expect("answered");
        assert_eq!(body.get_i32(), 7);
        let v0 = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(v0.error_code, 35);
        assert!(v0.api_keys.iter().any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 3));
        // The same connection still serves requests.
        assert_eq!(raw.api_versions(0).error_code, 0);
        // A Produce whose body is garbage: closed.
        let mut bad = Raw::connect(&addr);
        let mut frame = BytesMut::new();
        frame.put_i32(20);
        frame.put_i16(ApiKey::Produce as i16);
        frame.put_i16(9);
        frame.put_i32(1);
        frame.put_slice(&[0xff; 12]);
        bad.0.write_all(&frame).unwrap();
        assert!(bad.recv().is_none(), "malformed produce closes the connection");
        // An oversized frame and an unknown API key: closed.
        let mut big = Raw::connect(&addr);
        big.0.write_all(&(1i32 << 30).to_be_bytes()).unwrap();
        assert!(big.recv().is_none());
        let mut unknown = Raw::connect(&addr);
        unknown.0.write_all(&[0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1]).unwrap();
        assert!(unknown.recv().is_none());
        // The first connection never noticed.
        assert_eq!(good.api_versions(3).error_code, 0);
    });
    handle.await.unwrap();
    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for (kind, n) in [("malformed", 1), ("oversized", 1), ("unsupported", 2)] {
        let line = format!("sluice_kafka_protocol_errors_total{{kind=\"{kind}\"}} {n}");
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_fetch_fills_its_budget_in_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&common::service_topics(&[
        ("alarms", "express = true\ndurability = \"sync\""),
        ("bulk", "weight = 1"),
    ]));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let blob = "x".repeat(1000);
    let bulk: Vec<Value> = (0..200).map(|i| json!({"value": format!("{i}{blob}")})).collect();
    assert_eq!(gw.post_json("/v1/topics/bulk/records", &json!({ "records": bulk })).await.0, 200);
    let alarms: Vec<Value> = (0..5).map(|i| json!({"value": {"alarm": i}})).collect();
    assert_eq!(gw.post_json("/v1/topics/alarms/records", &json!({ "records": alarms })).await.0, 200);
    // Buffered bulk records become readable within store.flush_interval.
    let deadline = Instant::now() + GUARD;
    while http_values(&gw, "bulk", 0).await.len() < 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetched = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&addr);
        let part = |t: &str| {
            FetchTopic::default().with_topic(TopicName(StrBytes::from_string(t.to_owned()))).with_partitions(
                vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)],
            )
        };
        // Bulk first in the request, and a budget of about 20 bulk records.
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(20_000)
            .with_topics(vec![part("bulk"), part("alarms")]);
        raw.send(ApiKey::Fetch, 12, 3, &req);
        let mut body = raw.recv().expect("fetch answer");
        let header = ResponseHeader::decode(&mut body, FetchResponse::header_version(12)).unwrap();
        assert_eq!(header.correlation_id, 3);
        let resp = FetchResponse::decode(&mut body, 12).unwrap();
        resp.responses
            .into_iter()
            .map(|t| {
                let mut records = t.partitions[0].records.clone().unwrap_or_default();
                let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
                (t.topic.0.to_string(), sets.iter().map(|s| s.records.len()).sum::<usize>())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(fetched[1], ("alarms".to_owned(), 5), "every alarm fits: {fetched:?}");
    let (name, bulk_n) = &fetched[0];
    assert_eq!(name, "bulk");
    assert!(*bulk_n >= 1 && *bulk_n <= 20, "bulk takes the rest of the budget: {fetched:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_python_codec_produces_compressed_and_consumes_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&common::service_topics(&[("alarms", "express = true\ndurability = \"sync\"")]));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let mut expected = Vec::new();
    for (acks, compression) in [("1", "gzip"), ("all", "none"), ("0", "none")] {
        let args =
            ["produce", "--topic", "alarms", "--count", "10", "--acks", acks, "--compression", compression];
        let (lines, status) = run_script("kafka_python.py", &addr, &args).await;
        assert_eq!(status, 0, "kafka-python acks={acks} {compression}: {lines:?}");
        assert_eq!(lines.len(), 10);
        expected.extend((0..10).map(|i| format!("kp-{i}")));
    }
    // acks=0 is not acknowledged: wait until every record is readable.
    let deadline = Instant::now() + GUARD;
    while http_values(&gw, "alarms", 0).await.len() < 30 {
        assert!(Instant::now() < deadline, "records produced by kafka-python never became readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recs = http_values(&gw, "alarms", 0).await;
    assert_eq!(recs[0]["key"], "k0");
    assert_eq!(recs[0]["headers"], json!({"via": "kafka-python"}));
    let (lines, status) =
        run_script("kafka_python.py", &addr, &["consume", "--topic", "alarms", "--count", "30"]).await;
    assert_eq!(status, 0, "{lines:?}");
    let values: Vec<String> = lines.iter().map(|l| l["value"].as_str().unwrap().to_owned()).collect();
    assert_eq!(values, expected);
    assert_eq!(lines[29]["headers"], json!([["via", "kafka-python"]]));
    let (_, offsets) = gw.get_json("/v1/groups/kafka-python/offsets?topics=alarms").await;
    assert_eq!(offsets["offsets"][0]["committed"], 30, "{offsets}");
}

/// One idempotent Produce v9 of `values` to partition 0 of `topic`; the
/// partition's (error code, base offset).
fn produce_idempotent(raw: &mut Raw, topic: &str, pid: i64, first_seq: i32, values: &[&str]) -> (i16, i64) {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: first_seq + i as i32,
            timestamp: 0,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .unwrap();
    let data =
        produce_request::PartitionProduceData::default().with_index(0).with_records(Some(batch.freeze()));
    let req = ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![data])]);
    raw.send(ApiKey::Produce, 9, 5, &req);
    let mut body = raw.recv().expect("produce answer");
    let header = ResponseHeader::decode(&mut body, ProduceResponse::header_version(9)).unwrap();
    assert_eq!(header.correlation_id, 5);
    let resp = ProduceResponse::decode(&mut body, 9).unwrap();
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_retries_keep_their_offsets_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&common::service_topics(&[("alarms", "express = true\ndurability = \"sync\"")]));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&addr);
        raw.send(
            ApiKey::InitProducerId,
            4,
            4,
            &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000),
        );
        let mut body = raw.recv().expect("InitProducerId answer");
        let _ = ResponseHeader::decode(&mut body, InitProducerIdResponse::header_version(4)).unwrap();
        let init = InitProducerIdResponse::decode(&mut body, 4).unwrap();
        assert_eq!((init.error_code, init.producer_epoch), (0, 0));
        let pid = init.producer_id.0;
        assert!(pid >= 0);
        assert_eq!(produce_idempotent(&mut raw, "alarms", pid, 0, &["a", "b"]), (0, 0));
        assert_eq!(produce_idempotent(&mut raw, "alarms", pid, 2, &["c"]), (0, 2));
        // The first batch retried: its original offset, not stored again.
        assert_eq!(produce_idempotent(&mut raw, "alarms", pid, 0, &["a", "b"]), (0, 0));
        // A gap in the sequence: OUT_OF_ORDER_SEQUENCE_NUMBER.
        assert_eq!(produce_idempotent(&mut raw, "alarms", pid, 7, &["x"]).0, 45);
        assert_eq!(produce_idempotent(&mut raw, "alarms", pid, 3, &["d"]), (0, 3));
    })
    .await
    .unwrap();
    let values: Vec<Value> =
        http_values(&gw, "alarms", 0).await.iter().map(|r| r["value_b64"].clone()).collect();
    assert_eq!(values, [json!("YQ=="), json!("Yg=="), json!("Yw=="), json!("ZA==")], "a b c d once each");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_needs_a_trusted_client_certificate() {
    let certs = certs::Certs::make();
    let path = |name: &str| certs.path(name).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "[kafka.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nhandshake_timeout = \"2s\"\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem")
    ));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    assert_eq!(gw.listen["tls"]["kafka"], true);
    let addr = kafka_addr(&gw);
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let tls = ["--ca", &ca, "--cert", &cert, "--cert-key", &key];
    let produce = [&["produce", "--topic", "secure", "--count", "3", "--acks", "all"][..], &tls].concat();
    let (lines, status) = driver(&addr, &produce).await;
    assert_eq!(status, 0, "{lines:?}");
    let consume = [&["consume", "--topic", "secure", "--count", "3"][..], &tls].concat();
    let (lines, status) = driver(&addr, &consume).await;
    assert_eq!(status, 0, "{lines:?}");
    assert_eq!(lines.iter().map(|l| l["value"].as_str().unwrap()).collect::<Vec<_>>(), ["v0", "v1", "v2"]);
    // Without a client certificate the handshake fails and nothing is stored.
    let no_cert = ["produce", "--topic", "secure", "--count", "1", "--ca", &ca, "--timeout", "3"];
    let (lines, status) = driver(&addr, &no_cert).await;
    assert_ne!(status, 0, "{lines:?}");
    assert_eq!(http_values(&gw, "secure", 0).await.len(), 3);
    assert!(gw.metric("sluice_kafka_tls_handshake_failures_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_over_its_rate_is_throttled_while_others_flow() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&common::service_topics(&[
        ("slow", "max_records_per_sec = 50\nrate_burst = \"1s\""),
        ("fast", "weight = 1"),
    ]));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    // 300 records in batches of 10 at 50/s with a burst of 50: at least
    // 5 s, whatever the machine.
    let slow_args = ["produce", "--topic", "slow", "--count", "300", "--acks", "1", "--batch", "10"];
    let mut slow = driver_cmd(&addr, &slow_args).stdout(Stdio::piped()).spawn().unwrap();
    let slow_lines = lines_of(slow.stdout.take().unwrap());
    let (lines, status) =
        driver(&addr, &["produce", "--topic", "fast", "--count", "50", "--acks", "1"]).await;
    assert_eq!(status, 0, "{lines:?}");
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the fast service's producer finished while the slow one waits"
    );
    let status = tokio::task::spawn_blocking(move || slow.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let delivered: Vec<Value> = slow_lines.iter().collect();
    assert_eq!(delivered.len(), 300);
    assert!(delivered.iter().all(|l| l["error"].is_null()), "throttled, not refused");
    // Acknowledged on append; readable once durable (store.flush_interval).
    let deadline = Instant::now() + GUARD;
    while http_values(&gw, "slow", 0).await.len() < 300 {
        assert!(Instant::now() < deadline, "acknowledged records never became readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.metric("sluice_kafka_produce_throttled_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_finds_earliest_latest_and_by_timestamp() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let addr = kafka_addr(&gw);
    let mut stamps = Vec::new();
    for i in 0..3 {
        let body = json!({ "records": [{"value": i}] });
        assert_eq!(gw.post_json("/v1/topics/times/records", &body).await.0, 200);
        // Each record accepted in a later millisecond than the one before.
        let deadline = Instant::now() + GUARD;
        let recs = loop {
            let recs = http_values(&gw, "times", 0).await;
            if recs.len() > i || Instant::now() > deadline {
                break recs;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        stamps.push(recs[i]["timestamp"].as_i64().unwrap());
        while sluice_gateway::now_ms() <= stamps[i] {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let queries = [-2, -1, stamps[1], stamps[2] + 1];
    let answers = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&addr);
        let partitions = queries
            .iter()
            .map(|&ts| ListOffsetsPartition::default().with_partition_index(0).with_timestamp(ts))
            .collect();
        let topic = ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("times")))
            .with_partitions(partitions);
        raw.send(ApiKey::ListOffsets, 7, 8, &ListOffsetsRequest::default().with_topics(vec![topic]));
        let mut body = raw.recv().expect("ListOffsets answer");
        let _ = ResponseHeader::decode(&mut body, ListOffsetsResponse::header_version(7)).unwrap();
        let resp = ListOffsetsResponse::decode(&mut body, 7).unwrap();
        resp.topics[0].partitions.iter().map(|p| (p.error_code, p.offset)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(answers, [(0, 0), (0, 3), (0, 1), (0, -1)]);
}

/// Runs `sluice <command> [args]` with `password` on standard input; its
/// one line of output.
fn sluice_secret(command: &str, args: &[&str], password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg(command)
        .args(args)
        .env("SLUICE_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sluice {command} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A `[[kafka.users]]` entry with PLAIN (argon2id) and both SCRAM
/// credentials of `password`, made by the CLI.
fn kafka_user(name: &str, password: &str, extra: &str) -> String {
    let hash = sluice_secret("hash-password", &[], password);
    let s256 = sluice_secret("scram-credential", &["--mechanism", "SCRAM-SHA-256"], password);
    let s512 = sluice_secret(
        "scram-credential",
        &["--mechanism", "SCRAM-SHA-512", "--iterations", "8192"],
        password,
    );
    assert!(s256.starts_with("SCRAM-SHA-256$4096:"), "{s256}");
    assert!(s512.starts_with("SCRAM-SHA-512$8192:"), "{s512}");
    format!(
        "[[kafka.users]]\nname = {name:?}\npassword_hash = {hash:?}\nscram_sha_256 = {s256:?}\n\
         scram_sha_512 = {s512:?}\n{extra}\n"
    )
}

const SASL_ALL: &str = "sasl = [\"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\"]\n";

fn sasl_args<'a>(mechanism: &'a str, user: &'a str, password: &'a str) -> [&'a str; 6] {
    ["--sasl", mechanism, "--user", user, "--password", password]
}

/// Delivery lines of a driver run (without its client error lines).
fn delivered(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("client_error").is_none()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_plain_and_scram_produce_and_consume_and_bad_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!("{SASL_ALL}{}", kafka_user("app", "app-secret", "")));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let topic = format!("t-{}", mechanism.to_lowercase());
        let sasl = sasl_args(mechanism, "app", "app-secret");
        let produce = [&["produce", "--topic", &topic, "--count", "3", "--acks", "all"][..], &sasl].concat();
        let (lines, status) = driver(&addr, &produce).await;
        assert_eq!(status, 0, "{mechanism} produce: {lines:?}");
        assert_eq!(delivered(&lines).len(), 3, "{lines:?}");
        let consume = [&["consume", "--topic", &topic, "--count", "3"][..], &sasl].concat();
        let (lines, status) = driver(&addr, &consume).await;
        assert_eq!(status, 0, "{mechanism} consume: {lines:?}");
        let values: Vec<&str> = delivered(&lines).iter().map(|l| l["value"].as_str().unwrap()).collect();
        assert_eq!(values, ["v0", "v1", "v2"], "{mechanism}");
    }
    assert!(gw.metric("sluice_kafka_sasl_authentications_total{result=\"ok\"}").await >= 6);
    // A wrong password: refused with SASL_AUTHENTICATION_FAILED and the reason.
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        let sasl = sasl_args(mechanism, "app", "wrong");
        let args = [&["produce", "--topic", "t-plain", "--count", "1", "--timeout", "3"][..], &sasl].concat();
        let (lines, status) = driver(&addr, &args).await;
        assert_ne!(status, 0, "{lines:?}");
        let errors: Vec<&str> = lines.iter().filter_map(|l| l["client_error"].as_str()).collect();
        assert!(
            errors.iter().any(|e| e.contains("SASL authentication error: Authentication failed")),
            "{mechanism}: {errors:?}"
        );
    }
    let (lines, status) = driver(
        &addr,
        &[
            &["produce", "--topic", "t-plain", "--count", "1", "--timeout", "3"][..],
            &sasl_args("PLAIN", "nobody", "x"),
        ]
        .concat(),
    )
    .await;
    assert_ne!(status, 0, "unknown user: {lines:?}");
    assert!(gw.metric("sluice_kafka_sasl_authentications_total{result=\"failed\"}").await >= 3);
    gw.settle("t-plain").await;
    assert_eq!(http_values(&gw, "t-plain", 0).await.len(), 3, "nothing stored by refused clients");
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_requires_authentication_first_and_kcat_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!("{SASL_ALL}{}", kafka_user("app", "app-secret", "")));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let a = addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&a);
        let v = raw.api_versions(3);
        for key in [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate] {
            assert!(v.api_keys.iter().any(|k| k.api_key == key as i16), "{key:?} advertised");
        }
        // Metadata before authenticating: closed without an answer.
        raw.send(ApiKey::Metadata, 12, 2, &MetadataRequest::default());
        assert!(raw.recv().is_none(), "closed");
        // A mechanism not offered: UNSUPPORTED_SASL_MECHANISM, listing those that are.
        let mut raw = Raw::connect(&a);
        let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI"));
        raw.send(ApiKey::SaslHandshake, 1, 3, &req);
        let mut body = raw.recv().expect("answered");
        assert_eq!(body.get_i32(), 3);
        let resp = SaslHandshakeResponse::decode(&mut body, 1).unwrap();
        assert_eq!(resp.error_code, 33);
        let names: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
        assert!(raw.recv().is_none(), "closed after the answer");
        // PLAIN by hand: the right password, then Metadata is served.
        let mut raw = Raw::connect(&a);
        let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        raw.send(ApiKey::SaslHandshake, 1, 4, &req);
        raw.recv().expect("handshake answered");
        let req =
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0app\0app-secret"));
        raw.send(ApiKey::SaslAuthenticate, 2, 5, &req);
        let mut body = raw.recv().expect("authenticate answered");
        assert_eq!(body.get_i32(), 5);
        body.get_u8(); // (v2: the flexible header's tagged fields)
        let resp = SaslAuthenticateResponse::decode(&mut body, 2).unwrap();
        assert_eq!((resp.error_code, resp.error_message), (0, None));
        raw.send(ApiKey::Metadata, 1, 6, &MetadataRequest::default());
        assert!(raw.recv().is_some(), "served once authenticated");
    })
    .await
    .unwrap();
    assert_eq!(gw.metric("sluice_kafka_connections_closed_total{reason=\"unauthenticated\"}").await, 1);
    // kcat (Debian's librdkafka) with SCRAM-SHA-512.
    let kcat = |extra: &[&str], input: &'static str| {
        let mut args: Vec<String> = [
            "-b",
            &addr,
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanisms=SCRAM-SHA-512",
            "-X",
            "sasl.username=app",
            "-X",
            "sasl.password=app-secret",
            "-t",
            "k",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        kcat(args, input)
    };
    let produced = kcat(&["-P"], "one\ntwo\n").await.unwrap();
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    gw.settle("k").await;
    let consumed = kcat(&["-C", "-o", "beginning", "-c", "2", "-e", "-f", "%s\n"], "").await.unwrap();
    assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
    assert_eq!(String::from_utf8(consumed.stdout).unwrap(), "one\ntwo\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_users_topics_are_enforced_and_reload_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let writer = kafka_user("writer", "w-secret", "produce = [\"plant.*\"]\nconsume = []");
    let reader = kafka_user("reader", "r-secret", "produce = []\nconsume = [\"plant.*\"]");
    let cfg = config(&format!("{SASL_ALL}{writer}{reader}"));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let as_writer = sasl_args("SCRAM-SHA-256", "writer", "w-secret");
    let as_reader = sasl_args("SCRAM-SHA-512", "reader", "r-secret");
    let produce = |topic: &'static str, sasl: [&'static str; 6]| {
        let addr = addr.clone();
        async move {
            let args =
                [&["produce", "--topic", topic, "--count", "2", "--timeout", "10"][..], &sasl].concat();
            driver(&addr, &args).await
        }
    };
    let (lines, status) = produce("plant.temp", as_writer).await;
    assert_eq!(status, 0, "{lines:?}");
    // Outside the user's produce topics: TOPIC_AUTHORIZATION_FAILED, not stored.
    let (lines, status) = produce("secret", as_writer).await;
    assert_ne!(status, 0);
    assert!(
        delivered(&lines).iter().all(|l| l["error"].as_str().unwrap().contains("Topic authorization failed")),
        "{lines:?}"
    );
    let (lines, status) = produce("plant.temp", as_reader).await;
    assert_ne!(status, 0, "a consume-only user cannot produce: {lines:?}");
    gw.produce("secret", &[json!("s")]).await;
    // The reader consumes plant.* and is refused elsewhere.
    let consume = [&["consume", "--topic", "plant.temp", "--count", "2"][..], &as_reader].concat();
    let (lines, status) = driver(&addr, &consume).await;
    assert_eq!(status, 0, "{lines:?}");
    let consume =
        [&["consume", "--topic", "secret", "--count", "1", "--timeout", "10"][..], &as_reader].concat();
    let (lines, status) = driver(&addr, &consume).await;
    assert_ne!(status, 0, "{lines:?}");
    assert!(gw.metric("sluice_kafka_not_authorized_total").await >= 2);
    gw.settle("plant.temp").await;
    gw.settle("secret").await;
    assert_eq!(http_values(&gw, "plant.temp", 0).await.len(), 2);
    assert_eq!(http_values(&gw, "secret", 0).await.len(), 1);

    // A raw authenticated connection of the reader stays open across a
    // reload that removes the writer and lets the reader produce.
    let a = addr.clone();
    let mut raw = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&a);
        let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        raw.send(ApiKey::SaslHandshake, 0, 1, &req);
        raw.recv().expect("handshake answered");
        // Version 0: bare tokens.
        let token = b"\0reader\0r-secret";
        raw.0.write_all(&(token.len() as i32).to_be_bytes()).unwrap();
        raw.0.write_all(token).unwrap();
        assert_eq!(raw.recv().expect("empty token back").len(), 0);
        raw
    })
    .await
    .unwrap();
    let reader2 = kafka_user("reader", "r-secret", "produce = [\"plant.*\"]\nconsume = [\"plant.*\"]");
    std::fs::write(gw.config_path().unwrap(), config(&format!("{SASL_ALL}{reader2}"))).unwrap();
    let (status, body) = gw.post_json("/v1/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (lines, status) = produce("plant.temp", as_reader).await;
    assert_eq!(status, 0, "the reader may produce now: {lines:?}");
    let (lines, status) = produce("plant.temp", as_writer).await;
    assert_ne!(status, 0, "the writer is gone: {lines:?}");
    raw = tokio::task::spawn_blocking(move || {
        raw.send(ApiKey::Metadata, 1, 2, &MetadataRequest::default().with_topics(None));
        let mut body = raw.recv().expect("still served after the reload");
        assert_eq!(body.get_i32(), 2);
        let meta = MetadataResponse::decode(&mut body, 1).unwrap();
        let names: Vec<&str> = meta.topics.iter().map(|t| t.name.as_ref().unwrap().0.as_str()).collect();
        assert_eq!(names, ["plant.temp"], "only the topics the user may see");
        raw
    })
    .await
    .unwrap();
    // SIGHUP works the same: the reader is removed, its connection closes.
    std::fs::write(gw.config_path().unwrap(), config(&format!("{SASL_ALL}{writer}"))).unwrap();
    gw.signal("HUP");
    let (lines, status) = produce("plant.temp", as_writer).await;
    assert_eq!(status, 0, "the writer is back after SIGHUP: {lines:?}");
    tokio::task::spawn_blocking(move || {
        raw.send(ApiKey::Metadata, 1, 3, &MetadataRequest::default());
        assert!(raw.recv().is_none(), "a removed user's connection is closed");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_over_tls() {
    let certs = certs::Certs::make();
    let path = |name: &str| certs.path(name).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "sasl = [\"SCRAM-SHA-512\"]\n{}[kafka.tls]\ncert = {:?}\nkey = {:?}\n",
        kafka_user("app", "app-secret", ""),
        path("server.pem"),
        path("server.key"),
    ));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let ca = path("ca.pem");
    let sasl = sasl_args("SCRAM-SHA-512", "app", "app-secret");
    let produce =
        [&["produce", "--topic", "secure", "--count", "3", "--acks", "all", "--ca", &ca][..], &sasl].concat();
    let (lines, status) = driver(&addr, &produce).await;
    assert_eq!(status, 0, "SASL_SSL produce: {lines:?}");
    let consume = [&["consume", "--topic", "secure", "--count", "3", "--ca", &ca][..], &sasl].concat();
    let (lines, status) = driver(&addr, &consume).await;
    assert_eq!(status, 0, "SASL_SSL consume: {lines:?}");
    assert_eq!(delivered(&lines).len(), 3);
    // PLAIN is not offered here.
    let plain = sasl_args("PLAIN", "app", "app-secret");
    let args = [&["produce", "--topic", "secure", "--count", "1", "--timeout", "3", "--ca", &ca][..], &plain]
        .concat();
    let (lines, status) = driver(&addr, &args).await;
    assert_ne!(status, 0, "{lines:?}");
    assert!(
        lines.iter().filter_map(|l| l["client_error"].as_str()).any(|e| e.contains("PLAIN")),
        "{lines:?}"
    );
}

/// ApiVersions on a fresh connection; `None` when sluice closes it first
/// (refused at accept).
fn try_api_versions(addr: &str) -> Option<(Raw, ApiVersionsResponse)> {
    let mut raw = Raw::connect(addr);
    raw.0.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.send(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    let mut body = raw.recv()?;
    assert_eq!(body.get_i32(), 1);
    let v = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    Some((raw, v))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_closed_after_the_write_timeout_and_idle_ones_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("max_connections = 1\nwrite_timeout = \"1s\"\nidle_timeout = \"2s\"\n");
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    // 4 MiB of records, so that fetch answers fill the socket buffers.
    let blob = "x".repeat(64 * 1024);
    for _ in 0..4 {
        let records: Vec<Value> = (0..16).map(|_| json!({ "value": blob })).collect();
        let (status, body) = gw.post_json("/v1/topics/big/records", &json!({ "records": records })).await;
        assert_eq!(status, 200, "{body}");
    }
    let deadline = Instant::now() + GUARD;
    loop {
        let (_, body) = gw.get_json("/v1/topics/big/partitions/0/records?offset=0&max_records=1").await;
        if body["high_watermark"] == 64 {
            break;
        }
        assert!(Instant::now() < deadline, "the records never became readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = addr.clone();
    let (stuck_for, probe) = tokio::task::spawn_blocking(move || {
        // Admitted (answered) first: the slot is its.
        let (stuck, _) = (0..50)
            .find_map(|_| {
                try_api_versions(&a).or_else(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                })
            })
            .expect("a free slot");
        let fetch = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("big")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(8 << 20)])]);
        // Requests for ~800 MiB of answers (more than any socket buffers
        // hold); not one byte is read back. sluice stops reading requests
        // once 16 wait, so the last sends may block: a thread does them.
        let mut sender = Raw(stuck.0.try_clone().unwrap());
        let send = std::thread::spawn(move || {
            for corr in 0..200 {
                sender.send(ApiKey::Fetch, 12, corr, &fetch);
            }
        });
        let start = Instant::now();
        // The only slot is taken: others are closed at accept until the
        // write timeout frees it.
        loop {
            if let Some(probe) = try_api_versions(&a) {
                let _ = send.join();
                return (start.elapsed(), (stuck, probe));
            }
            assert!(start.elapsed() < GUARD, "the slot was never freed");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert!(stuck_for >= Duration::from_millis(900), "freed after {stuck_for:?}, before the write timeout");
    assert_eq!(gw.metric("sluice_kafka_connections_closed_total{reason=\"write_timeout\"}").await, 1);
    assert!(gw.metric("sluice_kafka_connections_refused_total").await >= 1);
    // The probe connection now sends nothing: closed after idle_timeout.
    let (_stuck, (mut probe, v)) = probe;
    assert_eq!(v.error_code, 0);
    let idle = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        assert!(probe.recv().is_none(), "closed by sluice");
        start.elapsed()
    })
    .await
    .unwrap();
    assert!(idle >= Duration::from_millis(1500) && idle < GUARD, "idle close after {idle:?}");
    assert_eq!(gw.metric("sluice_kafka_connections_closed_total{reason=\"idle\"}").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_configs_shows_sluice_settings_under_kafka_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[store]\nsegment_bytes = \"8MiB\"\n{}\
         [[topic]]\nname = \"kept\"\nservice = \"alarms\"\npartitions = 2\n\
         retention = {{ max_age = \"7d\", max_bytes = \"1GiB\" }}\n",
        config("max_request = \"2MiB\"\nidle_timeout = \"5m\"\n"),
        common::service_topics(&[("alarms", "express = true\ndurability = \"sync\"\nweight = 7")]),
    );
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    let addr = kafka_addr(&gw);
    let (lines, status) = driver(&addr, &["describe-configs", "--topics", "kept,alarms,nope"]).await;
    assert_eq!(status, 0, "{lines:?}");
    let find = |name: &str| {
        lines.iter().find(|l| l["resource"] == name).unwrap_or_else(|| panic!("{name}: {lines:?}"))
    };
    let kept = &find("kept")["configs"];
    assert_eq!(kept["retention.ms"], (7 * 86_400_000i64).to_string());
    assert_eq!(kept["retention.bytes"], (1i64 << 29).to_string(), "1GiB over 2 partitions, per partition");
    assert_eq!(kept["segment.bytes"], (8i64 << 20).to_string());
    assert_eq!(kept["max.message.bytes"], (2i64 << 20).to_string());
    assert_eq!(kept["cleanup.policy"], "delete");
    assert_eq!(kept["sluice.service"], "alarms");
    assert_eq!(kept["sluice.durability"], "sync");
    assert_eq!(kept["sluice.express"], "true");
    assert_eq!(kept["sluice.weight"], "7");
    assert_eq!(find("kept")["read_only"], json!([true]));
    assert_eq!(find("alarms")["configs"]["retention.ms"], "-1", "no retention configured");
    assert!(find("nope")["error"].as_str().unwrap().contains("UNKNOWN_TOPIC_OR_PART"), "{lines:?}");
    let broker = &find("0")["configs"];
    assert_eq!(broker["connections.max.idle.ms"], "300000");
    assert_eq!(broker["message.max.bytes"], (2i64 << 20).to_string());
    assert_eq!(broker["auto.create.topics.enable"], "true");
    assert_eq!(broker["log.segment.bytes"], (8i64 << 20).to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_header_names_keep_every_value_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let addr = kafka_addr(&gw);
    let produce = [
        "produce", "--topic", "hdr", "--acks", "all", "--header", "h=1", "--header", "g=x", "--header", "h=2",
    ];
    let (lines, status) = driver(&addr, &produce).await;
    assert_eq!(status, 0, "{lines:?}");
    // Over HTTP: the simple form keeps the last value, header_list all of them.
    gw.settle("hdr").await;
    let recs = http_values(&gw, "hdr", 0).await;
    assert_eq!(recs[0]["headers"], json!({"g": "x", "h": "2"}));
    assert_eq!(
        recs[0]["header_list"],
        json!([{"name": "h", "value": "1"}, {"name": "g", "value": "x"}, {"name": "h", "value": "2"}])
    );
    // Over Kafka: a consumer gets them all, in order.
    let (lines, status) = driver(&addr, &["consume", "--topic", "hdr", "--count", "1"]).await;
    assert_eq!(status, 0, "{lines:?}");
    assert_eq!(lines[0]["headers"], json!([["h", "1"], ["g", "x"], ["h", "2"]]));
    // And an HTTP producer's repeated and binary headers reach Kafka consumers.
    let body = json!({"records": [{"value": "v", "header_list": [{"name": "b", "value_b64": "AP8="}, {"name": "b", "value": "t"}]}]});
    let (status, body) = gw.post_json("/v1/topics/hdr/records", &body).await;
    assert_eq!(status, 200, "{body}");
    gw.settle("hdr").await;
    let (lines, status) = driver(&addr, &["consume", "--topic", "hdr", "--count", "2"]).await;
    assert_eq!(status, 0, "{lines:?}");
    assert_eq!(
        lines[1]["headers"],
        json!([["b", "\u{0}\u{fffd}"], ["b", "t"]]),
        "binary value shown lossily by the driver"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_longer_than_the_idle_timeout_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config("idle_timeout = \"300ms\"\n"))).await;
    gw.produce("quiet", &[json!(1)]).await;
    gw.settle("quiet").await;
    let addr = kafka_addr(&gw);
    let waited = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(&addr);
        // At the end of the partition: the fetch waits its full max_wait_ms.
        let fetch = FetchRequest::default()
            .with_max_wait_ms(1500)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("quiet")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(1)
                    .with_partition_max_bytes(1 << 20)])]);
        let start = Instant::now();
        raw.send(ApiKey::Fetch, 12, 5, &fetch);
        assert!(raw.recv().is_some(), "answered, not closed as idle");
        let waited = start.elapsed();
        // Then idle for real: closed.
        assert!(raw.recv().is_none());
        waited
    })
    .await
    .unwrap();
    assert!(waited >= Duration::from_millis(1400), "the fetch long-polled ({waited:?})");
    assert_eq!(gw.metric("sluice_kafka_connections_closed_total{reason=\"idle\"}").await, 1);
}
