//! The limits of the HTTP listener, through the `sluice` binary with raw
//! TCP clients: headers dribbled byte by byte are cut off by
//! `http.header_timeout`, a body trickled after complete headers is
//! answered 408 by `http.body_timeout`, silent and idle keep-alive connections by
//! `http.idle_timeout`, a long-poll longer than both is not, and
//! `http.max_connections` closes connections over the limit while the
//! others are served. Only lower bounds of time are asserted (a timer may
//! fire late on a busy machine, never early).
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Failure guard for waits (not a measurement).
const GUARD: Duration = Duration::from_secs(30);
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n";

fn connect(gw: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(gw.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream
}

/// Reads one `/healthz` answer (the body is the last thing sent).
fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") && !answer.ends_with(b"}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits until the server closes `stream` (EOF or reset).
fn wait_closed(stream: &mut TcpStream) {
    loop {
        match stream.read(&mut [0u8; 256]) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("connection still open after {GUARD:?}")
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_but_long_polls_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[http]\nheader_timeout = \"1s\"\nidle_timeout = \"3s\"\n";
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;

    // Slowloris: a header line, then one byte every 100 ms, never the end.
    let mut slow = connect(&gw);
    let start = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let dribbled = loop {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"X").is_err() {
            break start.elapsed();
        }
        assert!(start.elapsed() < GUARD, "dribbling client never disconnected");
    };
    assert!(dribbled >= Duration::from_secs(1), "cut off before header_timeout: {dribbled:?}");
    assert_eq!(gw.metric("sluice_http_header_timeouts_total").await, 1);

    // Connects and sends nothing. (Times are taken before the server's
    // timer can start, so they are lower bounds of what it waited.)
    let start = Instant::now();
    let mut silent = connect(&gw);
    wait_closed(&mut silent);
    assert!(start.elapsed() >= Duration::from_secs(3));
    // Keep-alive connection idle after one request.
    let mut idle = connect(&gw);
    let start = Instant::now();
    idle.write_all(REQUEST).unwrap();
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));
    wait_closed(&mut idle);
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert!(gw.metric("sluice_http_idle_timeouts_total").await >= 2);

    // A long-poll of 4 s outlives both timeouts and answers normally, and
    // its connection serves the next request.
    let mut poll = connect(&gw);
    gw.produce("t", &[serde_json::json!(1)]).await;
    let start = Instant::now();
    poll.write_all(
        b"GET /v1/topics/t/partitions/0/records?offset=1&wait_ms=4000 HTTP/1.1\r\nHost: s\r\n\r\n",
    )
    .unwrap();
    let answer = read_answer(&mut poll);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(start.elapsed() >= Duration::from_secs(4));
    poll.write_all(REQUEST).unwrap();
    assert!(read_answer(&mut poll).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_answered_408_after_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[http]\nbody_timeout = \"1s\"\nheader_timeout = \"10s\"\n";
    let gw = Gateway::start(&dir.path().join("d"), Some(cfg)).await;

    // Complete headers, then one body byte every 100 ms, never the end.
    let mut slow = connect(&gw);
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let start = Instant::now();
    slow.write_all(
        b"POST /v1/topics/t/records HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"}") {
        assert!(
            start.elapsed() < GUARD,
            "no answer to a trickled body: {}",
            String::from_utf8_lossy(&answer)
        );
        // The server may stop reading once it answered.
        let _ = slow.write_all(b" ");
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) => panic!("connection failed before the answer: {e}"),
        }
    }
    let answered = start.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body not complete within http.body_timeout (1s)"}"#),
        "{answer}"
    );
    assert!(answered >= Duration::from_secs(1), "answered before body_timeout: {answered:?}");
    // The rest of the body was never read: the connection is not reused.
    slow.set_read_timeout(Some(GUARD)).unwrap();
    wait_closed(&mut slow);
    assert_eq!(gw.metric("sluice_http_body_timeouts_total").await, 1);
    assert_eq!(gw.metric("sluice_http_header_timeouts_total").await, 0);

    // A body sent in pieces that ends in time is served.
    let mut ok = connect(&gw);
    let body = br#"{"records":[{"value":1}]}"#;
    ok.write_all(
        format!("POST /v1/topics/t/records HTTP/1.1\r\nHost: s\r\nContent-Length: {}\r\n\r\n", body.len())
            .as_bytes(),
    )
    .unwrap();
    for piece in body.chunks(10) {
        std::thread::sleep(Duration::from_millis(100));
        ok.write_all(piece).unwrap();
    }
    let answer = read_answer(&mut ok);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(gw.metric("sluice_http_body_timeouts_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_and_others_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some("[http]\nmax_connections = 2\n")).await;
    // A client without keep-alive, so only the scrape itself is open.
    gw.http = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(GUARD).build().unwrap();
    let deadline = Instant::now() + GUARD;
    while gw.metric("sluice_http_connections").await != 1 {
        assert!(Instant::now() < deadline, "the harness's connections never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Hold connections until one is refused. A refusal while fewer than 2
    // are held can only be an earlier connection the server has not seen
    // close yet: try again.
    let mut held = Vec::new();
    let deadline = Instant::now() + GUARD;
    loop {
        let mut c = connect(&gw);
        let _ = c.write_all(REQUEST);
        let answer = read_answer(&mut c);
        if answer.starts_with("HTTP/1.1 200") {
            held.push(c);
            assert!(held.len() <= 2, "more than max_connections served at once");
        } else if held.len() == 2 {
            assert!(answer.is_empty(), "connection over the limit got {answer}");
            break;
        } else {
            assert!(Instant::now() < deadline, "refused with only {} connections held", held.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Once one closes, new connections are served again.
    drop(held.pop());
    let deadline = Instant::now() + GUARD;
    let refused = loop {
        if let Ok(r) = gw.http.get(gw.url("/metrics")).send().await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never served again after a connection closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = refused.lines().find(|l| l.starts_with("sluice_http_connections_refused_total ")).unwrap();
    assert_ne!(line, "sluice_http_connections_refused_total 0");
    // The held connection is still served.
    held[0].write_all(REQUEST).unwrap();
    assert!(read_answer(&mut held[0]).starts_with("HTTP/1.1 200"));
}

/// Plain MQTT: rumqttd's router refuses connections past
/// mqtt.max_connections (sluice gives it one more for its ingest link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_max_connections_is_enforced_by_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some("[mqtt]\nmax_connections = 2\n")).await;
    let addr: std::net::SocketAddr = gw.mqtt.clone().unwrap().parse().unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut opts = rumqttc::MqttOptions::new(format!("c{i}"), addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
        let connected = tokio::time::timeout(GUARD, async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .expect("no answer to CONNECT");
        clients.push((client, events, connected));
    }
    let connected: Vec<bool> = clients.iter().map(|c| c.2).collect();
    assert_eq!(connected, [true, true, false]);
}
