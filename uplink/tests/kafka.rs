//! The Kafka sink against a real Kafka-protocol broker (tansu 0.6, sqlite
//! storage), read back with an independent client: confluent-kafka
//! (librdkafka) through `deploy/kafka-check.py`. See `common` for where the
//! peers come from; a missing peer fails the test with the install command.

mod common;

use std::time::{Duration, Instant};

use common::tansu::Tansu;
use common::tls::{Certs, TlsFront};
use common::{assert_same, batch, read_all, read_all_with, read_topic, watermarks, Consumed};
use sluice_config::{Compression, SaslMechanism, UplinkConfig, UplinkKind, UplinkSasl, UplinkTls};
use sluice_uplink::kafka::{KafkaSink, KafkaSinkOptions};
use sluice_uplink::{Batch, OutRecord, Sink, SinkError};

/// Failure guard for one send (the sink bounds itself at 60s).
const SEND_GUARD: Duration = Duration::from_secs(120);

fn uplink(brokers: &[String]) -> UplinkConfig {
    UplinkConfig::new("central", UplinkKind::Kafka, brokers.to_vec())
}

async fn send(sink: &mut KafkaSink, batch: &Batch) -> Result<(), SinkError> {
    tokio::time::timeout(SEND_GUARD, sink.send(batch))
        .await
        .expect("send returned within the guard (no hang)")
}

/// Sends `batches` in order; each must succeed.
async fn send_all(sink: &mut KafkaSink, batches: &[Batch]) {
    for b in batches {
        if let Err(e) = send(sink, b).await {
            panic!("send of {} partition {} failed: {e}", b.topic, b.partition);
        }
    }
}

/// The value of header `name` of a consumed record.
fn header<'a>(c: &'a Consumed, name: &str) -> &'a [u8] {
    c.headers.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..]).expect("header")
}

/// Asserts every record of `batches` was read back from remote partition
/// `local partition mod remote_partitions`, in the order sent, and nothing
/// else was read.
#[track_caller]
fn assert_delivered(batches: &[Batch], got: &[Consumed], remote_partitions: u32) {
    let total: usize = batches.iter().map(|b| b.records.len()).sum();
    assert_eq!(got.len(), total, "records read back");
    let mut locals: Vec<u32> = batches.iter().map(|b| b.partition).collect();
    locals.sort_unstable();
    locals.dedup();
    for local in locals {
        let sent: Vec<&OutRecord> =
            batches.iter().filter(|b| b.partition == local).flat_map(|b| &b.records).collect();
        let mine: Vec<&Consumed> =
            got.iter().filter(|c| header(c, "sluice.partition") == local.to_string().as_bytes()).collect();
        let remote = i32::try_from(local % remote_partitions).expect("partition");
        assert!(mine.iter().all(|c| c.partition == remote), "local partition {local} lands on {remote}");
        assert_same(&sent, &mine);
    }
}

#[tokio::test]
async fn creates_the_topic_and_every_record_reads_back_in_order() {
    let tansu = Tansu::start();
    let mut sink = KafkaSink::new(&uplink(&[tansu.bootstrap()]), "pi-01");
    let topic = "edge.pi-01.telemetry";
    let mut batches = Vec::new();
    for round in 0..3 {
        for p in 0..3 {
            batches.push(batch("telemetry", topic, p, 3, round * 10..round * 10 + 10));
        }
    }
    send_all(&mut sink, &batches).await;
    let got = read_all(&tansu.bootstrap(), topic, 90).await;
    assert_delivered(&batches, &got, 3);
    // Created with the local partition count: local partition p is remote p.
    let mut partitions: Vec<i32> = got.iter().map(|c| c.partition).collect();
    partitions.dedup();
    assert_eq!(partitions, [0, 1, 2]);
}

/// Sends 2 batches of 2 partitions with `compression`; confluent-kafka
/// decompresses them.
async fn round_trip(compression: Compression) {
    let tansu = Tansu::start();
    let mut config = uplink(&[tansu.bootstrap()]);
    config.compression = compression;
    let mut sink = KafkaSink::new(&config, "pi-01");
    let topic = format!("edge.pi-01.{}", compression.as_str());
    let batches: Vec<Batch> = (0..2)
        .flat_map(|round| (0..2).map(move |p| (round, p)))
        .map(|(round, p)| batch("telemetry", &topic, p, 2, round * 25..round * 25 + 25))
        .collect();
    send_all(&mut sink, &batches).await;
    let got = read_all(&tansu.bootstrap(), &topic, 100).await;
    assert_delivered(&batches, &got, 2);
}

#[tokio::test]
async fn lz4_round_trips() {
    round_trip(Compression::Lz4).await;
}

#[tokio::test]
async fn gzip_round_trips() {
    round_trip(Compression::Gzip).await;
}

#[tokio::test]
async fn zstd_round_trips() {
    round_trip(Compression::Zstd).await;
}

/// Snappy cannot be read back through tansu 0.6: its fetch path cannot
/// compress snappy again (`UnexpectedType("Snappy")`), so every fetch of
/// such a batch fails. What is checked: tansu decoded each snappy batch
/// into exactly its records (it stores records, not batches), so the
/// partitions' offsets advanced by the record counts.
#[tokio::test]
async fn snappy_batches_are_accepted_and_decoded_by_the_broker() {
    let tansu = Tansu::start();
    let mut config = uplink(&[tansu.bootstrap()]);
    config.compression = Compression::Snappy;
    let mut sink = KafkaSink::new(&config, "pi-01");
    let topic = "edge.pi-01.snappy";
    let batches = [batch("telemetry", topic, 0, 2, 0..25), batch("telemetry", topic, 1, 2, 0..40)];
    send_all(&mut sink, &batches).await;
    send_all(&mut sink, &[batch("telemetry", topic, 0, 2, 25..50)]).await;
    assert_eq!(watermarks(&tansu.bootstrap(), topic).await, [(0, 0, 50), (1, 0, 40)]);
}

#[tokio::test]
async fn broker_down_fails_in_bounded_time_and_a_restart_loses_nothing() {
    let mut tansu = Tansu::start();
    let mut sink = KafkaSink::new(&uplink(&[tansu.bootstrap()]), "pi-01");
    let topic = "edge.pi-01.alarms";
    let batches: Vec<Batch> = (0..3).map(|i| batch("alarms", topic, 0, 1, i * 10..i * 10 + 10)).collect();
    send_all(&mut sink, &batches[..1]).await;

    tansu.stop();
    // With a cached connection, then (after reset, as the worker does) with
    // a fresh one: both fail instead of retrying forever.
    for attempt in ["cached connection", "after reset"] {
        let started = Instant::now();
        let err = send(&mut sink, &batches[1]).await.expect_err("the broker is down");
        eprintln!("{attempt}: failed after {:?}: {err}", started.elapsed());
        let msg = err.to_string();
        assert!(msg.starts_with("kafka uplink \"central\" (brokers "), "{msg}");
        assert!(msg.contains(&tansu.bootstrap()), "names the broker: {msg}");
        sink.reset();
    }

    tansu.restart();
    send_all(&mut sink, &batches[1..]).await;
    let got = read_all(&tansu.bootstrap(), topic, 30).await;
    assert_delivered(&batches, &got, 1);
}

#[tokio::test]
async fn missing_topic_without_create_topics_is_a_clear_error() {
    let tansu = Tansu::start();
    let mut config = uplink(&[tansu.bootstrap()]);
    config.create_topics = false;
    let mut strict = KafkaSink::new(&config, "pi-01");
    let topic = "edge.pi-01.logs";
    let b = batch("logs", topic, 0, 2, 0..5);
    let err = send(&mut strict, &b).await.expect_err("the topic is missing");
    let msg = err.to_string();
    for part in [
        "kafka uplink \"central\"",
        &tansu.bootstrap(),
        "topic \"edge.pi-01.logs\" does not exist and create_topics is false",
        "create it on the cluster (with 2 partitions",
        "or set create_topics = true in uplink \"central\"",
    ] {
        assert!(msg.contains(part), "expected {part:?} in: {msg}");
    }
    assert_eq!(read_topic(&tansu.bootstrap(), topic, 0).await.status, Some(2), "the topic was not created");

    // Once the topic exists (here made by a sink that may create it), the
    // strict sink delivers.
    let mut creating = KafkaSink::new(&uplink(&[tansu.bootstrap()]), "pi-01");
    let first = batch("logs", topic, 1, 2, 0..5);
    send_all(&mut creating, std::slice::from_ref(&first)).await;
    strict.reset();
    send_all(&mut strict, std::slice::from_ref(&b)).await;
    let got = read_all(&tansu.bootstrap(), topic, 10).await;
    assert_delivered(&[first, b], &got, 2);
}

#[tokio::test]
async fn a_remote_topic_with_fewer_partitions_keeps_each_key_in_one_partition() {
    let tansu = Tansu::start();
    let topic = "edge.pi-01.shrunk";
    // Made with 2 partitions (as by another node whose topic had 2).
    let mut other = KafkaSink::new(&uplink(&[tansu.bootstrap()]), "pi-02");
    let seed = batch("telemetry", topic, 0, 2, 100..103);
    send_all(&mut other, std::slice::from_ref(&seed)).await;

    let mut sink = KafkaSink::new(&uplink(&[tansu.bootstrap()]), "pi-01");
    let batches: Vec<Batch> = (0..2)
        .flat_map(|round| (0..4).map(move |p| batch("telemetry", topic, p, 4, round * 6..round * 6 + 6)))
        .collect();
    send_all(&mut sink, &batches).await;
    let mut all = vec![seed];
    all.extend(batches);
    let got = read_all(&tansu.bootstrap(), topic, 51).await;
    // The seed batch and local partition 0 share remote partition 0; the
    // seed came first.
    let mut ordered = all.clone();
    ordered.sort_by_key(|b| b.partition);
    assert_delivered(&ordered, &got, 2);
}

#[tokio::test]
async fn sasl_scram_authenticates_and_a_wrong_password_fails() {
    let mut tansu = Tansu::start();
    let broker_url = format!("tcp://{}", tansu.bootstrap());
    for mechanism in ["scram256", "scram512"] {
        tansu.run(&["user", "create", "--broker", &broker_url, "--mechanism", mechanism, "edge", "s3cret"]);
    }
    tansu.restart_with(&["--authentication"]);
    let sasl_uplink = |mechanism, password: &str| {
        let mut config = uplink(&[tansu.bootstrap()]);
        config.sasl = Some(UplinkSasl {
            mechanism,
            username: "edge".into(),
            password: password.into(),
            password_file: None,
        });
        config
    };
    let topic = "edge.pi-01.secure";
    let mut sent = Vec::new();
    // Not PLAIN: tansu 0.6 offers only SCRAM (and OAUTHBEARER) and closes the
    // connection on a PLAIN handshake.
    for (i, mechanism) in [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256].into_iter().enumerate() {
        let mut sink = KafkaSink::new(&sasl_uplink(mechanism, "s3cret"), "pi-01");
        let b = batch("telemetry", topic, 0, 1, i as u64 * 5..i as u64 * 5 + 5);
        send_all(&mut sink, std::slice::from_ref(&b)).await;
        sent.push(b);
    }
    let options = ["--sasl-mechanism", "SCRAM-SHA-512", "--username", "edge", "--password", "s3cret"];
    let got = read_all_with(&tansu.bootstrap(), topic, 10, &options).await;
    assert_delivered(&sent, &got, 1);

    let mut wrong = KafkaSink::new(&sasl_uplink(SaslMechanism::ScramSha512, "guess"), "pi-01");
    let err = send(&mut wrong, &batch("telemetry", topic, 0, 1, 99..100)).await.expect_err("wrong password");
    let msg = err.to_string();
    assert!(msg.contains("cannot connect") && msg.to_lowercase().contains("sasl"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_delivers_and_an_unknown_ca_fails() {
    let certs = Certs::make();
    let front = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let front_addr = front.local_addr().expect("addr").to_string();
    // The broker tells clients to come back through the TLS front.
    let tansu = Tansu::start_with(&[], Some(front.local_addr().expect("addr").port()));
    let _front = TlsFront::spawn(front, &certs, tansu.port());
    let tls_uplink = |ca: &str, client_cert: bool| {
        let mut config = uplink(std::slice::from_ref(&front_addr));
        config.tls = Some(UplinkTls {
            ca: Some(certs.path(ca)),
            cert: client_cert.then(|| certs.path("client.pem")),
            key: client_cert.then(|| certs.path("client.key")),
        });
        config
    };
    let topic = "edge.pi-01.tls";
    let b = batch("telemetry", topic, 0, 1, 0..10);
    let mut sink = KafkaSink::new(&tls_uplink("ca.pem", true), "pi-01");
    send_all(&mut sink, std::slice::from_ref(&b)).await;
    let (ca, cert, key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key"));
    let options = [ca.to_str(), cert.to_str(), key.to_str()].map(|p| p.expect("UTF-8 path"));
    let options = ["--ca", options[0], "--cert", options[1], "--key", options[2]];
    let got = read_all_with(&front_addr, topic, 10, &options).await;
    assert_delivered(std::slice::from_ref(&b), &got, 1);

    let mut unknown_ca = KafkaSink::new(&tls_uplink("other-ca.pem", true), "pi-01");
    let err = send(&mut unknown_ca, &b).await.expect_err("the broker's CA is not trusted");
    assert!(err.to_string().contains("invalid peer certificate: UnknownIssuer"), "{err}");

    let mut no_client_cert = KafkaSink::new(&tls_uplink("ca.pem", false), "pi-01");
    let err = send(&mut no_client_cert, &b).await.expect_err("the front requires a client certificate");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn a_broker_that_never_answers_is_bounded_by_send_timeout() {
    // Accepts connections and reads nothing back: no Kafka answer ever comes.
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let options = KafkaSinkOptions { send_timeout: Duration::from_secs(2), ..KafkaSinkOptions::default() };
    let mut sink = KafkaSink::with_options(&uplink(std::slice::from_ref(&addr)), "pi-01", options);
    let err =
        send(&mut sink, &batch("alarms", "edge.pi-01.alarms", 0, 1, 0..3)).await.expect_err("no answer");
    let msg = err.to_string();
    assert!(msg.contains(&addr) && msg.contains("no answer within 2s"), "{msg}");
    hold.abort();
}
