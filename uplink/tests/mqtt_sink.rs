//! The MQTT sink against a real Mosquitto broker, with a real
//! `mosquitto_sub` (MQTT 5) reading what arrived. Both come from Debian's
//! packages, installed by deploy/install-test-peers.sh; without them these
//! tests fail, they never skip.
#![allow(clippy::unwrap_used)]

#[path = "common/mosquitto.rs"]
mod mosquitto;
#[allow(dead_code)]
#[path = "common/tls.rs"]
mod tls;

use mosquitto::{free_port, Message, Mosquitto, Subscriber, GUARD};
use sluice_config::{UplinkConfig, UplinkKind, UplinkTls};
use sluice_uplink::mqtt::{MqttSink, MqttSinkOptions};
use sluice_uplink::{Batch, OutRecord, Sink};
use std::time::{Duration, Instant};

const PROBE_TOPIC: &str = "edge/probe";

fn sink(brokers: Vec<String>, options: MqttSinkOptions) -> MqttSink {
    let config = UplinkConfig::new("central", UplinkKind::Mqtt, brokers);
    MqttSink::with_options(&config, "pi-01", options).unwrap()
}

/// Records `first..first+n` of partition 0 of `alarms`, with keys of every
/// kind (text, none, binary), JSON and binary values, and the provenance
/// headers the worker adds.
fn batch(remote_topic: &str, first: u64, n: u64) -> Batch {
    let records = (first..first + n)
        .map(|off| {
            let key = match off % 3 {
                0 => Some(format!("dev-{off}").into_bytes()),
                1 => None,
                _ => Some(vec![0xff, off as u8]),
            };
            let value = if off % 2 == 0 {
                format!("{{\"n\":{off}}}").into_bytes()
            } else {
                vec![0, 1, 0xff, off as u8]
            };
            let mut headers = vec![("h".to_owned(), format!("v{off}").into_bytes())];
            headers.extend([
                ("sluice.node".to_owned(), b"pi-01".to_vec()),
                ("sluice.service".to_owned(), b"alarms".to_vec()),
                ("sluice.topic".to_owned(), b"alarms".to_vec()),
                ("sluice.partition".to_owned(), b"0".to_vec()),
                ("sluice.offset".to_owned(), off.to_string().into_bytes()),
            ]);
            OutRecord { offset: off, key, value, headers, timestamp_ms: 1_700_000_000_000 + off as i64 }
        })
        .collect();
    Batch {
        topic: "alarms".to_owned(),
        partition: 0,
        partitions: 1,
        remote_topic: remote_topic.to_owned(),
        service: "alarms".to_owned(),
        records,
    }
}

/// What mosquitto_sub must print for a record of [`batch`].
fn expected(topic: &str, r: &OutRecord) -> Message {
    let mut properties: Vec<(String, String)> =
        r.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap())).collect();
    match &r.key {
        Some(k) if k[0] == 0xff => properties.push(("sluice.key_b64".to_owned(), b64(k))),
        Some(k) => properties.push(("sluice.key".to_owned(), String::from_utf8(k.clone()).unwrap())),
        None => {}
    }
    properties.push(("sluice.timestamp".to_owned(), r.timestamp_ms.to_string()));
    Message { topic: topic.to_owned(), payload: r.value.clone(), properties }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Sends probe records until the subscriber shows one, so the records that
/// follow cannot be published before its subscription is in place.
async fn wait_subscribed(sink: &mut MqttSink, sub: &Subscriber) {
    let deadline = Instant::now() + GUARD;
    loop {
        sink.send(&batch(PROBE_TOPIC, 0, 1)).await.unwrap();
        if let Some(m) = sub.next_within(Duration::from_millis(200)) {
            assert_eq!(m.topic, PROBE_TOPIC);
            return;
        }
        assert!(Instant::now() < deadline, "mosquitto_sub never received a probe");
    }
}

/// The next message that is not a probe.
fn next_record(sub: &Subscriber) -> Message {
    loop {
        let m = sub.next();
        if m.topic != PROBE_TOPIC {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_in_order_with_its_properties() {
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "edge/#");
    let mut sink = sink(vec![broker.addr()], MqttSinkOptions::default());
    assert_eq!(sink.client_id(), "sluice-pi-01-central");
    wait_subscribed(&mut sink, &sub).await;

    // More records than the broker lets be in flight at once (Mosquitto's
    // default is 20), so packet ids are reused within one batch.
    let topic = "edge/pi-01/alarms";
    let batches = [batch(topic, 0, 250), batch(topic, 250, 50)];
    for b in &batches {
        sink.send(b).await.unwrap();
    }
    for r in batches.iter().flat_map(|b| &b.records) {
        assert_eq!(next_record(&sub), expected(topic, r), "record at offset {}", r.offset);
    }
    // MQTT 5 ("p5"), under the documented client id.
    assert!(broker.log().contains("as sluice-pi-01-central (p5"), "{}", broker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_fails_the_send_and_a_restarted_one_takes_the_next() {
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let options = MqttSinkOptions { ack_timeout: Duration::from_secs(600), ..MqttSinkOptions::default() };
    let mut sink = sink(vec![broker.addr()], options);
    sink.send(&batch("edge/x", 0, 3)).await.unwrap();

    // Killed with a batch in flight: the frozen broker holds the publishes
    // unanswered until it dies, so the send fails on the lost connection
    // (the ack timeout is far longer than the guard).
    broker.freeze(true);
    let in_flight = batch("edge/x", 3, 3);
    let err = {
        let mut send = std::pin::pin!(sink.send(&in_flight));
        tokio::select! {
            biased;
            r = &mut send => panic!("a frozen broker acknowledged a batch: {r:?}"),
            // One poll: the sink checked its connection and queued the records.
            () = std::future::ready(()) => {}
        }
        broker.kill();
        tokio::time::timeout(GUARD, send)
            .await
            .expect("send must fail, not hang, when the broker dies")
            .unwrap_err()
    };
    assert!(err.0.contains("connection lost") && err.0.contains(&format!("127.0.0.1:{port}")), "{err}");

    // While it is down, sends fail fast, naming the broker.
    let err = tokio::time::timeout(GUARD, sink.send(&batch("edge/x", 3, 3)))
        .await
        .expect("send must fail, not hang, when the broker is gone")
        .unwrap_err();
    assert!(err.0.contains(&format!("cannot connect to any MQTT broker: 127.0.0.1:{port}")), "{err}");

    // The worker resets the sink after an error; the next send reconnects.
    let broker = Mosquitto::start_on(port, "");
    let sub = Subscriber::start(port, "edge/#");
    sink.reset();
    wait_subscribed(&mut sink, &sub).await;
    let again = batch("edge/x", 3, 3);
    sink.send(&again).await.unwrap();
    for r in &again.records {
        assert_eq!(next_record(&sub), expected("edge/x", r));
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_broker_times_out_instead_of_hanging() {
    let broker = Mosquitto::start();
    // A frozen broker never answers, so any ack timeout ends in an error;
    // a short one keeps the test short.
    let options = MqttSinkOptions { ack_timeout: Duration::from_secs(1), ..MqttSinkOptions::default() };
    let sink = sink(vec![broker.addr()], options);
    sink.send(&batch("edge/x", 0, 2)).await.unwrap();

    broker.freeze(true);
    let err = tokio::time::timeout(GUARD, sink.send(&batch("edge/x", 2, 2)))
        .await
        .expect("send must time out, not hang, when the broker stops answering")
        .unwrap_err();
    assert!(err.0.contains("no PUBACK within"), "{err}");
    assert!(err.0.contains("0 of 2 records acknowledged"), "{err}");

    broker.freeze(false);
    sink.reset();
    sink.send(&batch("edge/x", 2, 2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_first_broker_fails_over_to_the_next() {
    let broker = Mosquitto::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let mut sink = sink(vec![dead, broker.addr()], MqttSinkOptions::default());
    let sub = Subscriber::start(broker.port, "edge/#");
    wait_subscribed(&mut sink, &sub).await;
    let b = batch("edge/y", 0, 5);
    sink.send(&b).await.unwrap();
    for r in &b.records {
        assert_eq!(next_record(&sub), expected("edge/y", r));
    }

    // Every broker down: one error naming each.
    let config = UplinkConfig::new("central", UplinkKind::Mqtt, vec![format!("127.0.0.1:{}", free_port())]);
    let lonely = MqttSink::new(&config, "pi-01").unwrap();
    let err = tokio::time::timeout(GUARD, lonely.send(&b)).await.unwrap().unwrap_err();
    assert!(
        err.0.contains("cannot connect to any MQTT broker") && err.0.contains(&config.brokers[0]),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publish_fails_the_batch() {
    // Mosquitto answers an unauthorized MQTT 5 publish with PUBACK reason
    // "not authorized" (135).
    let acl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(acl.path(), "topic readwrite edge/#\n").unwrap();
    // Started as root, Mosquitto reads the ACL file as the mosquitto user.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(acl.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Mosquitto::start_on(free_port(), &format!("acl_file {}", acl.path().display()));
    let sink = sink(vec![broker.addr()], MqttSinkOptions::default());
    sink.send(&batch("edge/ok", 0, 2)).await.unwrap();
    let err = sink.send(&batch("denied/x", 5, 2)).await.unwrap_err();
    assert!(err.0.contains("NotAuthorized") && err.0.contains("offset 5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_topic_is_refused_before_publishing() {
    let broker = Mosquitto::start();
    let sink = sink(vec![broker.addr()], MqttSinkOptions::default());
    let err = sink.send(&batch("edge/+/x", 0, 1)).await.unwrap_err();
    assert!(err.0.contains("wildcard"), "{err}");
}

#[tokio::test]
async fn reset_and_drop_end_the_event_loop_task() {
    let broker = Mosquitto::start();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let settled = || async {
        for _ in 0..10_000 {
            if metrics.num_alive_tasks() == baseline {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    };

    let sink = sink(vec![broker.addr()], MqttSinkOptions::default());
    sink.send(&batch("edge/z", 0, 1)).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), baseline + 1);
    sink.reset();
    assert!(settled().await, "reset left {} tasks alive", metrics.num_alive_tasks() - baseline);

    sink.send(&batch("edge/z", 1, 1)).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), baseline + 1);
    drop(sink);
    assert!(settled().await, "drop left {} tasks alive", metrics.num_alive_tasks() - baseline);
}

/// Mosquitto with a TLS listener that requires client certificates signed
/// by the test CA (and a plain one for the subscriber): the sink delivers
/// with the CA and its client certificate; trusting another CA, or
/// presenting no certificate, fails with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_delivers_and_failures_say_why() {
    let certs = tls::Certs::make();
    // Mosquitto started as root runs as the `mosquitto` user: let it read them.
    use std::os::unix::fs::PermissionsExt as _;
    for (name, mode) in [("", 0o755), ("server.key", 0o644)] {
        std::fs::set_permissions(certs.path(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let path = |name: &str| certs.path(name).display().to_string();
    let (tls_port, plain_port) = (free_port(), free_port());
    let extra = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nlistener {plain_port} 127.0.0.1\n",
        path("ca.pem"),
        path("server.pem"),
        path("server.key")
    );
    let broker = Mosquitto::start_on(tls_port, &extra);
    let sub = Subscriber::start(plain_port, "edge/#");
    let tls_sink = |tls: UplinkTls| {
        let mut config = UplinkConfig::new("central", UplinkKind::Mqtt, vec![broker.addr()]);
        config.tls = Some(tls);
        MqttSink::with_options(&config, "pi-01", MqttSinkOptions::default()).unwrap()
    };
    let mut sink = tls_sink(UplinkTls {
        ca: Some(certs.path("ca.pem")),
        cert: Some(certs.path("client.pem")),
        key: Some(certs.path("client.key")),
    });
    wait_subscribed(&mut sink, &sub).await;
    let topic = "edge/pi-01/alarms";
    let b = batch(topic, 0, 20);
    sink.send(&b).await.unwrap();
    for r in &b.records {
        assert_eq!(next_record(&sub), expected(topic, r), "record at offset {}", r.offset);
    }

    let untrusting = tls_sink(UplinkTls { ca: Some(certs.path("other-ca.pem")), cert: None, key: None });
    let err = untrusting.send(&batch(topic, 20, 1)).await.expect_err("server certificate not trusted");
    assert!(err.to_string().contains(&broker.addr()), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let anonymous = tls_sink(UplinkTls { ca: Some(certs.path("ca.pem")), cert: None, key: None });
    let err = anonymous.send(&batch(topic, 20, 1)).await.expect_err("no client certificate");
    assert!(err.to_string().starts_with("cannot connect to any MQTT broker"), "{err}");
}

#[test]
fn unusable_tls_files_are_refused_when_the_sink_is_made() {
    let mut config = UplinkConfig::new("central", UplinkKind::Mqtt, vec!["127.0.0.1:1".into()]);
    config.tls = Some(UplinkTls { ca: Some("/nonexistent/ca.pem".into()), cert: None, key: None });
    let err = MqttSink::new(&config, "pi-01").expect_err("missing CA file");
    assert!(
        err.to_string().starts_with("uplink[\"central\"].tls.ca /nonexistent/ca.pem: cannot read"),
        "{err}"
    );
}
