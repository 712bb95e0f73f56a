//! The HTTP sink against a real HTTP server (axum on 127.0.0.1) standing in
//! for the central side: it gunzips the body, parses the JSON lines and
//! keeps them.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "common/tls.rs"]
mod tls;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use sluice_config::{UplinkConfig, UplinkKind, UplinkTls};
use sluice_uplink::http::{HttpSink, HttpSinkOptions};
use sluice_uplink::{Batch, OutRecord, Sink};
use std::collections::HashSet;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Failure guard only: a healthy run answers in milliseconds.
const GUARD: Duration = Duration::from_secs(30);

/// One request as the central side saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    lines: Vec<Value>,
}

#[derive(Clone)]
struct Central {
    received: Arc<Mutex<Vec<Received>>>,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    /// Status to answer with.
    status: Arc<AtomicU16>,
}

/// The test's central HTTP server.
struct Server {
    addr: SocketAddr,
    central: Central,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        Server::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(addr: SocketAddr) -> Server {
        let central = Central {
            received: Arc::default(),
            peers: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let app = Router::new().route("/ingest", post(ingest)).with_state(central.clone());
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server { addr, central, stop: Some(stop), task }
    }

    fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.central.received.lock().unwrap().clone()
    }

    /// Stops accepting, closes idle connections, and waits until done.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(GUARD, &mut self.task).await.expect("server did not stop").unwrap();
    }
}

async fn ingest(
    State(central): State<Central>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    central.peers.lock().unwrap().insert(peer);
    let status = StatusCode::from_u16(central.status.load(Ordering::SeqCst)).unwrap();
    if !status.is_success() {
        return (status, "disk full on central");
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
    assert!(text.ends_with('\n'), "every line ends with a newline");
    let lines = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    central.received.lock().unwrap().push(Received { path: uri.to_string(), headers, lines });
    (StatusCode::OK, "")
}

fn sink(urls: Vec<String>, options: HttpSinkOptions) -> HttpSink {
    let config = UplinkConfig::new("central", UplinkKind::Http, urls);
    HttpSink::with_options(&config, "pi-01", options).unwrap()
}

fn record(offset: u64, key: Option<&[u8]>, value: &[u8]) -> OutRecord {
    let mut headers = vec![("trace".to_owned(), format!("t{offset}").into_bytes())];
    headers.extend([
        ("sluice.node".to_owned(), b"pi-01".to_vec()),
        ("sluice.service".to_owned(), b"alarms".to_vec()),
        ("sluice.topic".to_owned(), b"alarms".to_vec()),
        ("sluice.partition".to_owned(), b"2".to_vec()),
        ("sluice.offset".to_owned(), offset.to_string().into_bytes()),
    ]);
    OutRecord {
        offset,
        key: key.map(<[u8]>::to_vec),
        value: value.to_vec(),
        headers,
        timestamp_ms: 1_700_000_000_000 + offset as i64,
    }
}

fn batch(records: Vec<OutRecord>) -> Batch {
    Batch {
        topic: "alarms".to_owned(),
        partition: 2,
        partitions: 4,
        remote_topic: "edge.pi-01.alarms".to_owned(),
        service: "alarms".to_owned(),
        records,
    }
}

fn simple(first: u64, n: u64) -> Batch {
    batch((first..first + n).map(|o| record(o, Some(b"k"), format!("{o}").as_bytes())).collect())
}

#[tokio::test]
async fn batch_arrives_as_gzipped_json_lines() {
    let server = Server::start().await;
    let sink = sink(vec![server.url()], HttpSinkOptions::default());
    let b = batch(vec![
        record(40, Some(b"dev-1"), br#"{"t":21.5}"#),
        record(41, None, &[0, 1, 2, 0xff]),
        record(42, Some(&[0xff, 0xfe]), b"plain text"),
        // Valid JSON spread over lines stays one line of the body.
        record(43, Some(b"dev-2"), b"{\n  \"a\": [1,\n 2],\r\n  \"s\": \"x\\ny\"\n}\n"),
        record(44, Some(b""), b"null"),
    ]);
    sink.send(&b).await.unwrap();

    let got = server.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.path, "/ingest");
    assert_eq!(req.headers["content-type"], "application/x-ndjson");
    assert_eq!(req.headers["content-encoding"], "gzip");
    assert_eq!(req.headers["x-sluice-node"], "pi-01");
    let provenance = |offset: u64| {
        json!({
            "trace": format!("t{offset}"),
            "sluice.node": "pi-01",
            "sluice.service": "alarms",
            "sluice.topic": "alarms",
            "sluice.partition": "2",
            "sluice.offset": offset.to_string(),
        })
    };
    let line = |offset: u64, rest: Value| {
        let mut v = json!({
            "topic": "edge.pi-01.alarms",
            "headers": provenance(offset),
            "timestamp": 1_700_000_000_000u64 + offset,
            "partition": 2,
            "offset": offset,
        });
        v.as_object_mut().unwrap().extend(rest.as_object().unwrap().clone());
        v
    };
    let want = vec![
        line(40, json!({"key": "dev-1", "value": {"t": 21.5}})),
        line(41, json!({"key": null, "value_b64": "AAEC/w=="})),
        line(42, json!({"key": null, "key_b64": "//4=", "value_b64": "cGxhaW4gdGV4dA=="})),
        line(43, json!({"key": "dev-2", "value": {"a": [1, 2], "s": "x\ny"}})),
        line(44, json!({"key": "", "value": null})),
    ];
    assert_eq!(req.lines, want);
    server.stop().await;
}

#[tokio::test]
async fn batches_share_one_keep_alive_connection() {
    let server = Server::start().await;
    let sink = sink(vec![server.url()], HttpSinkOptions::default());
    for i in 0..3 {
        sink.send(&simple(i * 10, 10)).await.unwrap();
    }
    assert_eq!(server.received().len(), 3);
    assert_eq!(server.central.peers.lock().unwrap().len(), 1, "one connection for three batches");
    server.stop().await;
}

#[tokio::test]
async fn error_status_fails_with_url_status_and_body() {
    let server = Server::start().await;
    let sink = sink(vec![server.url()], HttpSinkOptions::default());
    server.central.status.store(500, Ordering::SeqCst);
    let err = sink.send(&simple(0, 2)).await.unwrap_err();
    assert!(err.0.contains(&server.url()), "{err}");
    assert!(err.0.contains("500"), "{err}");
    assert!(err.0.contains("disk full on central"), "{err}");
    assert!(server.received().is_empty());

    server.central.status.store(200, Ordering::SeqCst);
    sink.reset();
    sink.send(&simple(0, 2)).await.unwrap();
    assert_eq!(server.received().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn unreachable_server_is_an_error_not_a_hang() {
    // A port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let url = format!("http://{addr}/ingest");
    let sink = sink(vec![url.clone()], HttpSinkOptions::default());
    let err = tokio::time::timeout(GUARD, sink.send(&simple(0, 1))).await.expect("send hung").unwrap_err();
    assert!(err.0.contains(&url), "{err}");
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts connections, reads requests, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    // A server that never answers fails any response timeout; a short one
    // keeps the test short.
    let options = HttpSinkOptions { response_timeout: Duration::from_secs(1), ..HttpSinkOptions::default() };
    let sink = sink(vec![format!("http://{addr}/ingest")], options);
    let err = tokio::time::timeout(GUARD, sink.send(&simple(0, 1))).await.expect("send hung").unwrap_err();
    assert!(err.0.contains("no answer within"), "{err}");
    silent.abort();
}

#[tokio::test]
async fn restarted_server_is_reached_on_a_fresh_connection() {
    let server = Server::start().await;
    let addr = server.addr;
    let sink = sink(vec![server.url()], HttpSinkOptions::default());
    sink.send(&simple(0, 1)).await.unwrap();
    // The server goes away, closing the idle keep-alive connection...
    server.stop().await;
    let err = tokio::time::timeout(GUARD, sink.send(&simple(1, 1))).await.expect("send hung").unwrap_err();
    assert!(err.0.contains("cannot connect"), "{err}");
    // ...and comes back on the same port.
    let server = Server::start_on(addr).await;
    sink.reset();
    sink.send(&simple(1, 1)).await.unwrap();
    assert_eq!(server.received()[0].lines[0]["offset"], 1);
    server.stop().await;
}

#[tokio::test]
async fn stale_keep_alive_connection_is_replaced_without_an_error() {
    let server = Server::start().await;
    let addr = server.addr;
    let sink = sink(vec![server.url()], HttpSinkOptions::default());
    sink.send(&simple(0, 1)).await.unwrap();
    // Server restarts between two batches: the sink's pooled connection is
    // dead, the next send must still succeed on its first try.
    server.stop().await;
    let server = Server::start_on(addr).await;
    sink.send(&simple(1, 1)).await.unwrap();
    assert_eq!(server.received().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn unreachable_first_url_fails_over_to_the_next() {
    let server = Server::start().await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let sink = sink(vec![format!("http://{dead}/ingest"), server.url()], HttpSinkOptions::default());
    sink.send(&simple(0, 3)).await.unwrap();
    assert_eq!(server.received()[0].lines.len(), 3);
    server.stop().await;
}

#[test]
fn bad_urls_and_tls_files_are_refused_up_front() {
    let config = |url: &str| UplinkConfig::new("central", UplinkKind::Http, vec![url.to_owned()]);
    let err = HttpSink::new(&config("central:8080"), "pi-01").unwrap_err();
    assert!(err.0.contains("http://"), "{err}");
    let err = HttpSink::new(&UplinkConfig::new("central", UplinkKind::Http, vec![]), "pi-01").unwrap_err();
    assert!(err.0.contains("brokers"), "{err}");
    let mut https = config("https://central.example/ingest");
    https.tls = Some(UplinkTls { ca: Some("/nonexistent/ca.pem".into()), cert: None, key: None });
    let err = HttpSink::new(&https, "pi-01").unwrap_err();
    assert!(err.0.starts_with("uplink[\"central\"].tls.ca /nonexistent/ca.pem: cannot read"), "{err}");
}

/// https:// through a TLS front that requires client certificates: the
/// batch arrives with the CA and a client certificate; a sink that trusts
/// another CA fails naming the URL and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_client_certificate_delivers_and_an_untrusted_server_fails() {
    let certs = tls::Certs::make();
    let server = Server::start().await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/ingest", front.local_addr().unwrap());
    let _front = tls::TlsFront::spawn(front, &certs, server.addr.port());
    let tls_sink = |tls: UplinkTls| {
        let mut config = UplinkConfig::new("central", UplinkKind::Http, vec![url.clone()]);
        config.tls = Some(tls);
        HttpSink::with_options(&config, "pi-01", HttpSinkOptions::default()).unwrap()
    };
    let sink = tls_sink(UplinkTls {
        ca: Some(certs.path("ca.pem")),
        cert: Some(certs.path("client.pem")),
        key: Some(certs.path("client.key")),
    });
    sink.send(&simple(0, 3)).await.unwrap();
    sink.send(&simple(3, 2)).await.unwrap();
    let received = server.received();
    let offsets: Vec<u64> =
        received.iter().flat_map(|r| &r.lines).map(|l| l["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    assert_eq!(server.central.peers.lock().unwrap().len(), 1, "both batches on one TLS connection");

    let untrusting = tls_sink(UplinkTls { ca: Some(certs.path("other-ca.pem")), cert: None, key: None });
    let err = untrusting.send(&simple(5, 1)).await.unwrap_err();
    assert!(err.0.contains(&format!("TLS handshake with {url} failed")), "{err}");
    assert!(err.0.contains("UnknownIssuer"), "{err}");
    server.stop().await;
}
