//! MQTT authentication and per-user publish filters, against the real
//! binary on 127.0.0.1:0 with rumqttc clients; the password hash comes from
//! `sluice hash-password` itself.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{read_n, try_client, Client};
use common::Gateway;
use rumqttc::{LastWill, MqttOptions, Packet, QoS};
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

/// Sets credentials on the client options.
fn login(user: &'static str, password: &'static str) -> impl FnOnce(&mut MqttOptions) {
    move |o| {
        o.set_credentials(user, password);
    }
}

fn config(extra_mqtt: &str, hash: &str) -> String {
    format!(
        "[mqtt]\n{extra_mqtt}\n[[mqtt.users]]\nname = \"sensor\"\npassword_hash = \"{hash}\"\n\
         publish = [\"plant/#\"]\n"
    )
}

/// A gateway with the user `sensor` (filters `plant/#`, password
/// `password`) and `extra_mqtt` lines in `[mqtt]`.
async fn gateway(extra_mqtt: &str, password: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let text = config(extra_mqtt, &hash_password(password));
    let gw = Gateway::start(&dir.path().join("d"), Some(&text)).await;
    (dir, gw)
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
    let (_dir, gw) = gateway("", "s3cret pass").await;

    // No credentials: CONNACK "not authorized". (The gateway's own
    // readiness probe connects without credentials too.)
    let no_credentials = "sluice_mqtt_connect_refused_total{reason=\"no_credentials\"}";
    let before = gw.metric(no_credentials).await;
    let err = try_client(&gw, "anon", |_| {}).await.expect_err("anonymous refused");
    assert!(err.contains("NotAuthorized"), "{err}");
    // Unknown user: CONNACK "bad user name or password".
    let err = try_client(&gw, "who", login("nobody", "s3cret pass")).await.expect_err("unknown refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");
    // Wrong password: refused (the first check closes the connection; the
    // same password again is answered from the cache with a CONNACK code).
    try_client(&gw, "bad", login("sensor", "wrong")).await.expect_err("wrong password refused");
    let err = try_client(&gw, "bad", login("sensor", "wrong")).await.expect_err("wrong password refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");

    // The right password: in, and its in-filter publishes are stored while
    // the one outside its filters is not, on the same connection.
    let mut c = try_client(&gw, "dev-1", login("sensor", "s3cret pass")).await.expect("accepted");
    publish_acked(&mut c, &[("plant/dev-1/temp", "1"), ("secret/x", "2"), ("plant/dev-1/temp", "3")]).await;
    let plant = read_n(&gw, "plant", 0, 2).await;
    let values: Vec<_> = plant.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, [1, 3]);
    let (status, _) = gw.get_json("/v1/topics/secret/partitions/0/records").await;
    assert_eq!(status, 404, "the refused publish created its topic");
    assert_eq!(gw.metric("sluice_mqtt_dropped_total{reason=\"not_allowed\"}").await, 1);
    assert_eq!(gw.metric(no_credentials).await, before + 1);
    // A cached second attempt with the same password connects at once.
    try_client(&gw, "dev-2", login("sensor", "s3cret pass")).await.expect("accepted from cache");
}

#[tokio::test]
async fn anonymous_clients_only_when_allowed_and_within_their_filters() {
    let (_dir, gw) = gateway("allow_anonymous = true\nanonymous_publish = [\"public/#\"]", "pw-1234").await;
    let mut c = try_client(&gw, "anon", |_| {}).await.expect("anonymous allowed");
    publish_acked(&mut c, &[("plant/x", "1"), ("public/x", "2")]).await;
    let public = read_n(&gw, "public", 0, 1).await;
    assert_eq!(public[0]["value"], 2);
    let (status, _) = gw.get_json("/v1/topics/plant/partitions/0/records").await;
    assert_eq!(status, 404, "anonymous publish outside anonymous_publish was stored");
    // Users still need the right password.
    let mut u = try_client(&gw, "u", login("sensor", "pw-1234")).await.expect("user accepted");
    publish_acked(&mut u, &[("plant/y", "3")]).await;
    assert_eq!(read_n(&gw, "plant", 0, 1).await[0]["value"], 3);
    try_client(&gw, "u2", login("sensor", "nope")).await.expect_err("wrong password refused");
}

#[tokio::test]
async fn will_messages_outside_the_users_filters_are_removed() {
    let (_dir, gw) = gateway("", "pw-will").await;
    let with_will = |topic: &'static str, payload: &'static str| {
        move |o: &mut MqttOptions| {
            o.set_credentials("sensor", "pw-will");
            o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
        }
    };
    let denied = try_client(&gw, "will-b", with_will("secret/will", "gone-b")).await.expect("accepted");
    assert_eq!(gw.metric("sluice_mqtt_dropped_total{reason=\"not_allowed\"}").await, 1);
    let allowed = try_client(&gw, "will-a", with_will("plant/will", "gone-a")).await.expect("accepted");
    // Closing the sockets without DISCONNECT makes the broker publish the
    // wills: the denied one first.
    denied.1.abort();
    let _ = denied.1.await;
    allowed.1.abort();
    let plant = read_n(&gw, "plant", 0, 1).await;
    assert_eq!(plant[0]["value_b64"], "Z29uZS1h", "{plant:?}");
    let (status, _) = gw.get_json("/v1/topics/secret/partitions/0/records").await;
    assert_eq!(status, 404, "a will outside the user's filters was stored");
}

/// `mosquitto_pub` (Debian's mosquitto-clients) over MQTT 5; exit status
/// and standard error.
fn mosquitto_pub_v5(addr: &str, args: &[&str]) -> (i32, String) {
    let a: std::net::SocketAddr = addr.parse().unwrap();
    let out = Command::new("mosquitto_pub")
        .args(["-V", "mqttv5", "-h", &a.ip().to_string(), "-p", &a.port().to_string(), "-q", "1"])
        .args(args)
        .output()
        .expect("mosquitto_pub is installed (deploy/install-test-peers.sh)");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn mqtt5_clients_get_mqtt5_reason_codes_and_the_same_filters() {
    let (_dir, gw) = gateway("listen_v5 = \"127.0.0.1:0\"", "pw-five").await;
    let v5 = gw.mqtt_v5.clone().expect("MQTT 5 listener");
    let (code, err) = mosquitto_pub_v5(&v5, &["-t", "plant/a", "-m", "1"]);
    assert!(code != 0 && err.contains("Not authorized"), "{code}: {err}");
    let (code, err) = mosquitto_pub_v5(&v5, &["-u", "nobody", "-P", "x", "-t", "plant/a", "-m", "1"]);
    assert!(code != 0 && err.contains("Bad User Name or Password"), "{code}: {err}");
    let login = ["-u", "sensor", "-P", "pw-five"];
    for (topic, value) in [("secret/a", "1"), ("plant/a", "2")] {
        let args = [&login[..], &["-t", topic, "-m", value]].concat();
        let (code, err) = mosquitto_pub_v5(&v5, &args);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(read_n(&gw, "plant", 0, 1).await[0]["value"], 2);
    let (status, _) = gw.get_json("/v1/topics/secret/partitions/0/records").await;
    assert_eq!(status, 404);
    assert_eq!(gw.metric("sluice_mqtt_dropped_total{reason=\"not_allowed\"}").await, 1);
}

#[tokio::test]
async fn subscriptions_outside_the_subscribe_filters_are_refused_in_the_suback() {
    use rumqttc::{SubscribeFilter, SubscribeReasonCode};
    let dir = tempfile::tempdir().unwrap();
    let text = "[mqtt]\nanonymous_subscribe = [\"plant/+/temp\", \"public/#\"]\n";
    let gw = Gateway::start(&dir.path().join("d"), Some(text)).await;
    let mut sub = try_client(&gw, "reader", |_| {}).await.unwrap();
    let filters = ["public/#", "plant/#", "plant/x/temp", "#"];
    sub.0
        .subscribe_many(filters.iter().map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce)))
        .await
        .unwrap();
    let codes = loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.2.recv()).await.unwrap().unwrap() {
            Packet::SubAck(ack) => break ack.return_codes,
            _ => continue,
        }
    };
    // MQTT-3.9.3: one return code per filter, in order; 0x80 is failure.
    assert_eq!(codes.len(), 4, "{codes:?}");
    assert!(matches!(codes[0], SubscribeReasonCode::Success(_)), "{codes:?}");
    assert_eq!(codes[1], SubscribeReasonCode::Failure, "a wildcard reaching beyond the filters");
    assert!(matches!(codes[2], SubscribeReasonCode::Success(_)), "{codes:?}");
    assert_eq!(codes[3], SubscribeReasonCode::Failure);
    assert_eq!(gw.metric("sluice_mqtt_subscribe_refused_total").await, 2);

    // Only what was granted is delivered.
    let mut publisher = try_client(&gw, "writer", |_| {}).await.unwrap();
    publish_acked(
        &mut publisher,
        &[("plant/x/secret", "no"), ("plant/x/temp", "yes"), ("public/a", "yes too")],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Packet::Publish(p) =
            tokio::time::timeout(Duration::from_secs(30), sub.2.recv()).await.unwrap().unwrap()
        {
            got.push(p.topic.clone());
        }
    }
    assert_eq!(got, ["plant/x/temp", "public/a"]);

    // A SUBSCRIBE with nothing allowed is answered by sluice alone.
    sub.0.subscribe("secret/#", QoS::AtMostOnce).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.2.recv()).await.unwrap().unwrap() {
            Packet::SubAck(ack) => break assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure]),
            Packet::Publish(p) => panic!("unexpected delivery on {:?}", p.topic),
            _ => continue,
        }
    }
    assert_eq!(gw.metric("sluice_mqtt_subscribe_refused_total").await, 3);
}

/// SIGHUP reloads the MQTT users and the HTTP tokens: a new user connects,
/// a changed password takes effect, a removed user's open connection is
/// closed (counted) while another user's stays up; a new HTTP token works
/// and the old one is refused; a reload that would switch MQTT
/// authentication off is refused and the users in force stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_users_and_tokens_and_closes_removed_users() {
    let dir = tempfile::tempdir().unwrap();
    let (old_hash, new_hash) = (hash_password("password"), hash_password("rotated"));
    let (token_a, token_b) = ("a".repeat(32), "b".repeat(32));
    let users = |users: &[(&str, &str)], token: &str| {
        let mut text = format!("[[http.tokens]]\ntoken = \"{token}\"\nadmin = true\n");
        for (name, hash) in users {
            text.push_str(&format!(
                "[[mqtt.users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\npublish = [\"plant/#\"]\n"
            ));
        }
        text
    };
    let gw = Gateway::start(
        &dir.path().join("d"),
        Some(&users(&[("sensor", &old_hash), ("gone", &old_hash)], &token_a)),
    )
    .await;
    let mut stays = try_client(&gw, "stays", login("sensor", "password")).await.unwrap();
    let mut leaves = try_client(&gw, "leaves", login("gone", "password")).await.unwrap();
    assert!(try_client(&gw, "new", login("newcomer", "rotated")).await.is_err(), "unknown user refused");

    // Reload: "gone" removed, "sensor" gets a new password, "newcomer" added;
    // the HTTP token changes.
    std::fs::write(
        gw.config_path().unwrap(),
        users(&[("sensor", &new_hash), ("newcomer", &new_hash)], &token_b),
    )
    .unwrap();
    gw.signal("HUP");
    // The removed user's connection ends.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(p) = leaves.2.recv().await {
            let _ = p;
        }
    })
    .await;
    assert!(closed.is_ok(), "the removed user's connection stayed open");
    let _ = leaves.1.await;
    // The new user and the new password work, the old password does not.
    try_client(&gw, "new", login("newcomer", "rotated")).await.unwrap();
    try_client(&gw, "rotated", login("sensor", "rotated")).await.unwrap();
    assert!(try_client(&gw, "old-pw", login("sensor", "password")).await.is_err(), "old password refused");
    // The other user's connection stayed up through the reload.
    publish_acked(&mut stays, &[("plant/a", "1")]).await;
    // HTTP: the new token works, the old one is refused.
    let status = |token: String| {
        let req = gw.http.get(gw.url("/v1/services")).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token_b.clone()).await, 200);
    assert_eq!(status(token_a.clone()).await, 401);
    let metrics =
        gw.http.get(gw.url("/metrics")).bearer_auth(&token_b).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sluice_mqtt_closed_removed_user_total 1"), "{metrics}");

    // Switching authentication off needs a restart: refused, users stay.
    std::fs::write(gw.config_path().unwrap(), users(&[], &token_b)).unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(try_client(&gw, "anon", |_| {}).await.is_err(), "anonymous still refused");
    try_client(&gw, "still", login("newcomer", "rotated")).await.unwrap();
}
