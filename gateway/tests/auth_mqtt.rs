//! MQTT authentication and per-user publish filters, against the real
//! binary on 127.0.0.1:0 with rumqttc clients; the password hash comes from
//! `sluice hash-password` itself.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{read_n, try_client, Client};
use common::Gateway;
use rumqttc::{Packet, QoS};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `sluice hash-password` with the password on standard input.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hash-password failed");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    hash
}

fn config(extra_mqtt: &str, hash: &str) -> String {
    format!(
        "[mqtt]\n{extra_mqtt}\n[[mqtt.users]]\nname = \"sensor\"\npassword_hash = \"{hash}\"\n\
         publish = [\"plant/#\"]\n"
    )
}

/// Publishes QoS 1 messages and waits for every PUBACK.
async fn publish_acked(c: &mut Client, msgs: &[(&str, &str)]) {
    for (topic, payload) in msgs {
        c.0.publish(*topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.unwrap();
    }
    let mut acks = 0;
    while acks < msgs.len() {
        let p = tokio::time::timeout(Duration::from_secs(30), c.2.recv()).await.unwrap().unwrap();
        if let Packet::PubAck(_) = p {
            acks += 1;
        }
    }
}

#[tokio::test]
async fn users_are_authenticated_and_publishes_outside_their_filters_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password("s3cret pass");
    let gw = Gateway::start(&dir.path().join("d"), Some(&config("", &hash))).await;

    // No credentials: CONNACK "not authorized". (The gateway's own
    // readiness probe connects without credentials too.)
    let no_credentials = "sluice_mqtt_connect_refused_total{reason=\"no_credentials\"}";
    let before = gw.metric(no_credentials).await;
    let err = try_client(&gw, "anon", None).await.expect_err("anonymous refused");
    assert!(err.contains("NotAuthorized"), "{err}");
    // Unknown user: CONNACK "bad user name or password".
    let err = try_client(&gw, "who", Some(("nobody", "s3cret pass"))).await.expect_err("unknown refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");
    // Wrong password: refused (the first check closes the connection; the
    // same password again is answered from the cache with a CONNACK code).
    try_client(&gw, "bad", Some(("sensor", "wrong"))).await.expect_err("wrong password refused");
    let err = try_client(&gw, "bad", Some(("sensor", "wrong"))).await.expect_err("wrong password refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");

    // The right password: in, and its in-filter publishes are stored while
    // the one outside its filters is not, on the same connection.
    let mut c = try_client(&gw, "dev-1", Some(("sensor", "s3cret pass"))).await.expect("accepted");
    publish_acked(&mut c, &[("plant/dev-1/temp", "1"), ("secret/x", "2"), ("plant/dev-1/temp", "3")]).await;
    let plant = read_n(&gw, "plant", 0, 2).await;
    let values: Vec<_> = plant.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, [1, 3]);
    let (status, _) = gw.get_json("/v1/topics/secret/partitions/0/records").await;
    assert_eq!(status, 404, "the refused publish created its topic");
    assert_eq!(gw.metric("sluice_mqtt_dropped_total{reason=\"not_allowed\"}").await, 1);
    assert_eq!(gw.metric(no_credentials).await, before + 1);
    // A cached second attempt with the same password connects at once.
    try_client(&gw, "dev-2", Some(("sensor", "s3cret pass"))).await.expect("accepted from cache");
}

#[tokio::test]
async fn anonymous_clients_only_when_allowed_and_within_their_filters() {
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password("pw-1234");
    let text = config("allow_anonymous = true\nanonymous_publish = [\"public/#\"]", &hash);
    let gw = Gateway::start(&dir.path().join("d"), Some(&text)).await;
    let mut c = try_client(&gw, "anon", None).await.expect("anonymous allowed");
    publish_acked(&mut c, &[("plant/x", "1"), ("public/x", "2")]).await;
    let public = read_n(&gw, "public", 0, 1).await;
    assert_eq!(public[0]["value"], 2);
    let (status, _) = gw.get_json("/v1/topics/plant/partitions/0/records").await;
    assert_eq!(status, 404, "anonymous publish outside anonymous_publish was stored");
    // Users still need the right password.
    let mut u = try_client(&gw, "u", Some(("sensor", "pw-1234"))).await.expect("user accepted");
    publish_acked(&mut u, &[("plant/y", "3")]).await;
    assert_eq!(read_n(&gw, "plant", 0, 1).await[0]["value"], 3);
    try_client(&gw, "u2", Some(("sensor", "nope"))).await.expect_err("wrong password refused");
}
