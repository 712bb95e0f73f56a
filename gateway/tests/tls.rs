//! TLS on sluice's own listeners, end to end through the `sluice` binary:
//! MQTT 3.1.1 and MQTT 5 over TLS with client certificates (rumqttc and
//! mosquitto_pub), HTTPS for the API (reqwest with rustls), and the checks
//! of the certificate files. Certificates are made per test with the
//! `openssl` command (deploy/install-test-peers.sh installs it).
#![allow(clippy::unwrap_used)]

#[allow(dead_code, unreachable_pub)]
#[path = "../../uplink/tests/common/tls.rs"]
mod certs;
mod common;

use certs::Certs;
use common::{sluice, Gateway};
use rumqttc::{Event, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failure guard for waits (not a measurement).
const GUARD: Duration = Duration::from_secs(30);

fn tls_config(certs: &Certs, client_ca: bool) -> String {
    let path = |name: &str| certs.path(name).display().to_string();
    let client_ca = if client_ca { format!("client_ca = {:?}\n", path("ca.pem")) } else { String::new() };
    format!(
        "cert = {:?}\nkey = {:?}\n{client_ca}handshake_timeout = \"1s\"\n",
        path("server.pem"),
        path("server.key")
    )
}

/// A rustls client trusting `ca`, presenting the test client certificate
/// when `client_cert`.
fn client_tls(certs: &Certs, ca: &str, client_cert: bool) -> TlsConfiguration {
    let tls = sluice_config::UplinkTls {
        ca: Some(certs.path(ca)),
        cert: client_cert.then(|| certs.path("client.pem")),
        key: client_cert.then(|| certs.path("client.key")),
    };
    TlsConfiguration::Rustls(Arc::new(sluice_config::tls::client_config(&tls, "test").unwrap()))
}

/// Connects over TLS and publishes one QoS 1 message; the error of the
/// first failed poll otherwise.
async fn publish_v4(addr: &str, id: &str, tls: TlsConfiguration, topic: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5)).set_transport(Transport::tls_with_config(tls));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client.publish(topic, QoS::AtLeastOnce, false, b"{\"t\":1}".to_vec()).await.unwrap();
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(GUARD, run).await.expect("no answer from the broker")
}

async fn publish_v5(addr: &str, tls: TlsConfiguration, topic: &str) {
    use rumqttc::v5::{
        mqttbytes::v5::Packet as P5, mqttbytes::QoS as Q5, AsyncClient, Event as E5, MqttOptions,
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let mut opts = MqttOptions::new("tls-v5", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5)).set_transport(Transport::tls_with_config(tls));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client.publish(topic, Q5::AtLeastOnce, false, b"{\"t\":5}".to_vec()).await.unwrap();
    let run = async {
        loop {
            if let E5::Incoming(P5::PubAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    };
    tokio::time::timeout(GUARD, run).await.expect("no PUBACK over MQTT 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_requires_a_trusted_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make();
    let cfg = format!("[mqtt]\nlisten_v5 = \"127.0.0.1:0\"\n[mqtt.tls]\n{}", tls_config(&certs, true));
    let gw = Gateway::start(&dir.path().join("d"), Some(&cfg)).await;
    assert_eq!(gw.listen["tls"], json!({"http": false, "mqtt": true, "mqtt_v5": true, "kafka": false}));
    let (mqtt, mqtt_v5) = (gw.mqtt.clone().unwrap(), gw.mqtt_v5.clone().unwrap());

    // A connection that never starts its handshake does not hold up others
    // (rumqttd's own TLS would wait for it forever) and is closed after
    // handshake_timeout.
    let opened = Instant::now();
    let mut idle = TcpStream::connect(&mqtt).unwrap();
    publish_v4(&mqtt, "tls-v4", client_tls(&certs, "ca.pem", true), "plant/dev-1/temp").await.unwrap();
    publish_v5(&mqtt_v5, client_tls(&certs, "ca.pem", true), "plant/dev-5/temp").await;
    let records = gw.wait_records("plant", 2).await;
    let keys: Vec<&str> = records.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["dev-1/temp", "dev-5/temp"]);
    idle.set_read_timeout(Some(GUARD)).unwrap();
    let closed = idle.read(&mut [0u8; 64]);
    assert!(matches!(closed, Ok(0) | Err(_)), "idle connection still open: {closed:?}");
    assert!(opened.elapsed() >= Duration::from_secs(1), "closed before handshake_timeout");

    // No client certificate: refused.
    let err = publish_v4(&mqtt, "no-cert", client_tls(&certs, "ca.pem", false), "plant/x/y").await;
    assert!(err.is_err(), "a client without certificate was let in");
    // A client that does not trust the server's CA refuses the connection.
    let err = publish_v4(&mqtt, "other-ca", client_tls(&certs, "other-ca.pem", true), "plant/x/y").await;
    assert!(err.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "{err:?}");
    assert!(gw.metric("sluice_mqtt_tls_handshake_failures_total").await >= 2);

    // The Mosquitto client over TLS with its certificate.
    let addr: SocketAddr = mqtt.parse().unwrap();
    let path = |name: &str| certs.path(name).display().to_string();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-i", "mosq-tls", "-q", "1"])
        .args(["--cafile", &path("ca.pem"), "--cert", &path("client.pem"), "--key", &path("client.key")])
        .args(["-t", "plant/mosq/temp", "-m", "{\"t\":3}"])
        .output()
        .expect("mosquitto_pub is installed (deploy/install-test-peers.sh)");
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    let records = gw.wait_records("plant", 3).await;
    assert_eq!(records[2]["key"], "mosq/temp");
    assert_eq!(gw.wait_records("plant", 3).await.len(), 3, "refused clients stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_round_trips_and_plain_http_on_the_tls_port_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make();
    let cfg = format!("[http.tls]\n{}", tls_config(&certs, false));
    let mut gw = Gateway::start_tls(&dir.path().join("d"), &cfg, &certs.path("ca.pem")).await;
    assert!(gw.base.starts_with("https://127.0.0.1:"), "{}", gw.base);
    assert_eq!(gw.listen["tls"]["http"], true);

    assert_eq!(gw.produce("demo", &[json!({"t": 21.5}), json!("x")]).await, [(0, 0), (0, 1)]);
    let records = gw.wait_records("demo", 2).await;
    assert_eq!(records[0]["value"], json!({"t": 21.5}));

    // Plain HTTP to the TLS port: the handshake fails, the connection is
    // closed, and HTTPS keeps working.
    let addr = gw.base.trim_start_matches("https://").to_owned();
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(GUARD)).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"), "served plain HTTP");
    let (status, _) = gw.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert!(gw.metric("sluice_http_tls_handshake_failures_total").await >= 1);

    // A client that does not trust the certificate gets no answer.
    let untrusting = reqwest::Client::builder()
        .use_preconfigured_tls(common::tls_client(&certs.path("other-ca.pem")))
        .build()
        .unwrap();
    let err = untrusting.get(gw.url("/healthz")).send().await.expect_err("untrusted certificate accepted");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // SIGTERM with a TLS handshake pending and a keep-alive connection open:
    // a clean exit.
    let _pending = TcpStream::connect(&addr).unwrap();
    gw.terminate();
}

/// check-config and run read every TLS file the configuration names: the
/// full example refers to files under /etc/sluice, and each missing one is
/// named; with real files in their place it passes.
#[test]
fn tls_files_are_checked_before_start() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/sluice.toml"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shipped = dir.path().join("shipped.toml");
    std::fs::write(&shipped, &example).unwrap();
    let (ok, err) = sluice(&["check-config", shipped.to_str().unwrap()]);
    assert!(!ok, "missing TLS files were accepted");
    for field in ["mqtt.tls.cert /etc/sluice/tls/server.crt", "http.tls.cert /etc/sluice/tls/server.crt"] {
        assert!(err.contains(&format!("{field}: cannot read")), "{err}");
    }
    assert!(err.contains("uplink[\"central\"].tls.ca /etc/sluice/central-ca.pem: cannot read"), "{err}");

    let certs = Certs::make();
    let real = example
        .replace("/etc/sluice/tls/server.crt", certs.path("server.pem").to_str().unwrap())
        .replace("/etc/sluice/tls/server.key", certs.path("server.key").to_str().unwrap())
        .replace("/etc/sluice/tls/ca.crt", certs.path("ca.pem").to_str().unwrap())
        .replace("/etc/sluice/central-ca.pem", certs.path("ca.pem").to_str().unwrap())
        .replace("/etc/sluice/node.pem", certs.path("client.pem").to_str().unwrap())
        .replace("/etc/sluice/node.key", certs.path("client.key").to_str().unwrap());
    let path = dir.path().join("real.toml");
    std::fs::write(&path, real).unwrap();
    let (ok, err) = sluice(&["check-config", path.to_str().unwrap()]);
    assert!(ok, "{err}");

    // A key that is not the certificate's: named, and `run` refuses too.
    let cfg = format!(
        "[http.tls]\ncert = {:?}\nkey = {:?}\n",
        certs.path("server.pem").display(),
        certs.path("client.key").display()
    );
    let path = dir.path().join("mismatch.toml");
    std::fs::write(&path, cfg).unwrap();
    let data = dir.path().join("data");
    let (ok, err) =
        sluice(&["run", "--config", path.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!ok, "started with a key that does not fit the certificate");
    assert!(err.contains("http.tls.cert") && err.contains("cannot be used together"), "{err}");
}

/// Two sluice nodes: the edge forwards over an MQTT uplink with TLS and a
/// client certificate to the central node's TLS MQTT listener, which
/// requires one; the edge's HTTP uplink to a server whose certificate it
/// does not trust reports why in `/v1/uplinks`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_over_tls_deliver_and_an_untrusted_server_shows_in_uplinks() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make();
    // The MQTT sink speaks MQTT 5: the central node's listen_v5.
    let central_cfg =
        format!("[mqtt]\nlisten_v5 = \"127.0.0.1:0\"\n[mqtt.tls]\n{}", tls_config(&certs, true));
    let central = Gateway::start(&dir.path().join("central"), Some(&central_cfg)).await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = format!("https://{}/ingest", front.local_addr().unwrap());
    // The backend port is never reached: the edge refuses the certificate.
    let _front = certs::TlsFront::spawn(front, &certs, 9);
    let path = |name: &str| certs.path(name).display().to_string();
    let edge_cfg = format!(
        "[[uplink]]\nname = \"central\"\nkind = \"mqtt\"\nbrokers = [{:?}]\nremote_topic = \"edge/{{topic}}\"\n\
         tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n\
         [[uplink]]\nname = \"untrusted\"\nkind = \"http\"\nbrokers = [{https:?}]\ntls = {{ ca = {:?} }}\n",
        central.mqtt_v5.clone().unwrap(),
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        path("other-ca.pem"),
    );
    let edge = Gateway::start(&dir.path().join("edge"), Some(&edge_cfg)).await;
    edge.produce("demo", &[json!({"t": 1}), json!({"t": 2})]).await;
    let got = central.wait_records("edge", 2).await;
    assert_eq!((&got[0]["key"], &got[1]["value"]), (&json!("demo"), &json!({"t": 2})));

    let deadline = Instant::now() + GUARD;
    loop {
        let (_, body) = edge.get_json("/v1/uplinks").await;
        let untrusted =
            body["uplinks"].as_array().unwrap().iter().find(|u| u["name"] == "untrusted").cloned();
        let error = untrusted.as_ref().and_then(|u| u["last_error"].as_str()).unwrap_or_default().to_owned();
        if error.contains(&format!("TLS handshake with {https} failed")) {
            assert!(error.contains("UnknownIssuer"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "no TLS error in /v1/uplinks: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP reloads a listener's certificate and key: new HTTPS connections
/// get the new certificate (signed by another CA) without a restart; a
/// reload naming a missing file is refused and the new certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_https_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make();
    // A second server certificate, signed by the other CA.
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(certs.path("")).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-new",
        "-subj",
        "/CN=sluice test server2",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ]
    .into_iter()
    .chain(["-nodes", "-keyout", "server2.key", "-out", "server2.csr"])
    .collect::<Vec<_>>());
    run(&[
        "x509",
        "-req",
        "-in",
        "server2.csr",
        "-CA",
        "other-ca.pem",
        "-CAkey",
        "other-ca.key",
        "-set_serial",
        "7",
        "-days",
        "2",
        "-extfile",
        "leaf.cnf",
        "-extensions",
        "server",
        "-out",
        "server2.pem",
    ]);
    let cfg = format!("[http.tls]\n{}", tls_config(&certs, false));
    let gw = Gateway::start_tls(&dir.path().join("d"), &cfg, &certs.path("ca.pem")).await;
    let client = |ca: &str| {
        reqwest::Client::builder().use_preconfigured_tls(common::tls_client(&certs.path(ca))).build().unwrap()
    };
    let (first, second) = (client("ca.pem"), client("other-ca.pem"));
    assert_eq!(first.get(gw.url("/healthz")).send().await.unwrap().status(), 200);
    assert!(second.get(gw.url("/healthz")).send().await.is_err(), "the other CA is not trusted yet");

    let path = |name: &str| certs.path(name).display().to_string();
    let reloaded = format!(
        "[http.tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"1s\"\n",
        path("server2.pem"),
        path("server2.key")
    );
    std::fs::write(gw.config_path().unwrap(), &reloaded).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + GUARD;
    // (A fresh client each time: no connection kept from before.)
    while client("other-ca.pem").get(gw.url("/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client("ca.pem").get(gw.url("/healthz")).send().await.is_err(),
        "the old certificate is still served"
    );

    // A reload naming a missing key keeps the certificate in force.
    std::fs::write(gw.config_path().unwrap(), reloaded.replace("server2.key", "missing.key")).unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client("other-ca.pem").get(gw.url("/healthz")).send().await.unwrap().status(), 200);
}
