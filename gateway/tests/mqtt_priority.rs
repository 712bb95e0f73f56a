//! Live MQTT subscribers get the services' priority: a subscriber that
//! cannot keep up with a bulk flood still gets its alarms before the bulk
//! backlog, with bulk at QoS 1 (sluice's own in-flight window) and at QoS 0
//! (what the sockets hold), and loses nothing while its queue has room.
//! Behaviour, not timing: the subscriber is paused while the backlog and
//! the alarms arrive, and the order it then receives them in is checked.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::client;
use common::{service_topics, Gateway};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::time::Duration;

/// Alarms express, bulk weight 1 (MQTT `alarms/...` and `bulk/...` route to
/// the topics of the same name, by their first level).
fn config(extra: &str) -> String {
    let mut c = service_topics(&[("alarms", "express = true"), ("bulk", "weight = 1")]);
    c.push_str(extra);
    c
}

/// A subscriber whose event loop is driven by the test: it reads nothing
/// while the test does not poll it.
async fn subscriber(gw: &Gateway, id: &str, subs: &[(&str, QoS)], clean: bool) -> (AsyncClient, EventLoop) {
    let addr: std::net::SocketAddr = gw.mqtt.as_ref().unwrap().parse().unwrap();
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(120));
    opts.set_clean_session(clean);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    for (filter, qos) in subs {
        client.subscribe(*filter, *qos).await.unwrap();
    }
    let mut acked = 0;
    while acked < subs.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await.unwrap().unwrap();
        if let Event::Incoming(Packet::SubAck(_)) = event {
            acked += 1;
        }
    }
    (client, eventloop)
}

/// Publishes `n` messages to `topic` at `qos` from one connection and
/// waits until sluice read them all (every PUBACK for QoS 1; for QoS 0,
/// the PUBACK of a QoS 1 marker `{topic}/end` published after them).
async fn publish(gw: &Gateway, id: &str, topic: &str, n: usize, qos: QoS, size: usize) {
    let (c, task, mut rx) = client(gw, id).await;
    let mut acked = 0;
    let mut expected = 0;
    for i in 0..n {
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(size, b'.');
        c.publish(topic, qos, false, payload).await.unwrap();
        if qos == QoS::AtLeastOnce {
            expected += 1;
        }
        if i % 50 == 49 || i + 1 == n {
            if i + 1 == n && qos == QoS::AtMostOnce {
                c.publish(format!("{topic}/end"), QoS::AtLeastOnce, false, "end").await.unwrap();
                expected += 1;
            }
            // Keep the publisher's window short: wait for the acks so far.
            while acked < expected {
                let p = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.unwrap();
                if let Some(Packet::PubAck(_)) = p {
                    acked += 1;
                }
            }
        }
    }
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// Polls the subscriber until `n` publishes arrived, or none for 5 s.
async fn receive_publishes(eventloop: &mut EventLoop, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await else { break };
        if let Event::Incoming(Packet::Publish(p)) = event.unwrap() {
            if std::env::var("DEBUG_ORDER").is_ok() {
                eprintln!("{} {}", p.topic, String::from_utf8_lossy(&p.payload[..8.min(p.payload.len())]));
            }
            got.push(p);
        }
    }
    got
}

/// Polls the subscriber until `n` publishes arrived, or none for 5 s;
/// their topics in order.
async fn receive(eventloop: &mut EventLoop, n: usize) -> Vec<String> {
    receive_publishes(eventloop, n).await.into_iter().map(|p| p.topic.to_string()).collect()
}

fn count(topics: &[String], prefix: &str) -> usize {
    topics.iter().filter(|t| t.starts_with(prefix)).count()
}

const ALARMS: usize = 20;
/// Alarms published into a QoS 0 flood, 50 ms apart.
const PACED_ALARMS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_bulk_flood_alarms_overtake_at_a_paused_subscriber_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let (_sub, mut events) =
        subscriber(&gw, "slow", &[("bulk/#", QoS::AtLeastOnce), ("alarms/#", QoS::AtLeastOnce)], true).await;
    // The subscriber is not reading: the bulk backlog builds in sluice.
    const BULK: usize = 3000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The operator sees the backlog per subscriber session and service.
    let lag = |what: &str, service: &str| {
        format!("sluice_mqtt_session_lag_{what}{{client_id=\"slow\",service=\"{service}\"}}")
    };
    let waiting = gw.metric(&lag("records", "bulk")).await;
    assert!(waiting > 2000, "bulk records waiting for the subscriber: {waiting}");
    let oldest = gw.metric_f64(&lag("seconds", "bulk")).await;
    assert!(oldest >= 0.5, "the oldest bulk record waited since before the alarms: {oldest} s");
    assert!(gw.metric(&lag("records", "alarms")).await > 0, "alarms wait too");
    // It resumes: what it gets first is what was in flight (sluice's QoS 1
    // window, 16 before any acknowledgement, and the one publish that waited
    // for it), then the alarms, sharing
    // with bulk by express_max_share (0.5 of the bytes: one for one here).
    let got = receive(&mut events, BULK + ALARMS).await;
    let alarms: Vec<usize> =
        got.iter().enumerate().filter(|(_, t)| t.starts_with("alarms/")).map(|(i, _)| i).collect();
    assert_eq!(alarms.len(), ALARMS, "every alarm arrives");
    assert!(
        alarms[0] <= 17 && *alarms.last().unwrap() <= 17 + 2 * ALARMS,
        "alarms overtake the bulk backlog: they came at positions {alarms:?} of {}",
        got.len()
    );
    assert_eq!(count(&got, "bulk/"), BULK, "no bulk is lost");
    assert_eq!(gw.metric("sluice_mqtt_delivery_dropped_total{service=\"bulk\"}").await, 0);
    assert_eq!(gw.metric(&lag("records", "bulk")).await, 0, "caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_bulk_flood_alarms_overtake_what_waits_in_sluice() {
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Gateway::start(&dir.path().join("d"), Some(&config("[mqtt]\ndelivery_queue = \"64MiB\"\n"))).await;
    let (_sub, mut events) =
        subscriber(&gw, "slow", &[("bulk/#", QoS::AtMostOnce), ("alarms/#", QoS::AtLeastOnce)], true).await;
    // rumqttd keeps 3 segments of 1 MiB per filter: a burst larger than
    // that loses its oldest publishes inside the broker, before sluice.
    const BULK: usize = 10_000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtMostOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // "bulk/line-1/end" is the publisher's marker, delivered too.
    let got = receive(&mut events, BULK + 1 + ALARMS).await;
    assert_eq!(count(&got, "alarms/"), ALARMS, "every alarm arrives");
    assert_eq!(count(&got, "bulk/"), BULK + 1, "no bulk is lost");
    let last_alarm = got.iter().rposition(|t| t.starts_with("alarms/")).unwrap();
    let bulk_after = got[last_alarm..].iter().filter(|t| t.starts_with("bulk/")).count();
    // Ahead of the alarms is only what the sockets held (sluice's send
    // buffer, kept small, and the subscriber's receive buffer).
    assert!(
        bulk_after > BULK / 2,
        "the alarms came before most of the backlog: {bulk_after} of {BULK} bulk publishes after the last alarm"
    );
    assert_eq!(gw.metric("sluice_mqtt_delivery_dropped_total{service=\"bulk\"}").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_bulk_is_paced_so_little_waits_in_front_of_an_alarm_at_a_slow_reader() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Gateway::start(&dir.path().join("d"), Some(&config("[mqtt]\ndelivery_queue = \"64MiB\"\n"))).await;
    let (_sub, mut events) =
        subscriber(&gw, "slow", &[("bulk/#", QoS::AtMostOnce), ("alarms/#", QoS::AtLeastOnce)], true).await;
    // A first alarm, read at once: sluice learns where the client is.
    publish(&gw, "alarm-pub-0", "alarms/line-0", 1, QoS::AtLeastOnce, 200).await;
    assert_eq!(receive(&mut events, 1).await, vec!["alarms/line-0".to_owned()]);
    // The reader takes about 1000 publishes a second; bulk comes faster.
    let bulk_read = Arc::new(AtomicUsize::new(0));
    let reader = {
        let bulk_read = bulk_read.clone();
        tokio::spawn(async move {
            // Per alarm: the bulk publishes read before it.
            let mut alarms = Vec::new();
            while alarms.len() < PACED_ALARMS {
                let Ok(event) = tokio::time::timeout(Duration::from_secs(30), events.poll()).await else {
                    break;
                };
                if let Event::Incoming(Packet::Publish(p)) = event.unwrap() {
                    if p.topic.starts_with("alarms/") {
                        let n: usize = String::from_utf8_lossy(&p.payload[..8]).parse().unwrap();
                        alarms.push((n, bulk_read.load(Ordering::SeqCst)));
                    } else {
                        bulk_read.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            alarms
        })
    };
    // Alarms every 50 ms, from before the flood to well into it; for
    // each, how much bulk the reader had when it was published.
    let alarms = {
        let bulk_read = bulk_read.clone();
        let (alarm, task, mut acks) = client(&gw, "alarm-pub").await;
        tokio::spawn(async move {
            let mut published = Vec::new();
            for i in 0..PACED_ALARMS {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut payload = format!("{i:08}").into_bytes();
                payload.resize(200, b'.');
                let before = bulk_read.load(Ordering::SeqCst);
                alarm.publish("alarms/line-1", QoS::AtLeastOnce, false, payload).await.unwrap();
                loop {
                    let p = tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.unwrap();
                    if let Some(Packet::PubAck(_)) = p {
                        break;
                    }
                }
                published.push((std::time::Instant::now(), before));
            }
            alarm.disconnect().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            published
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    const BULK: usize = 8000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtMostOnce, 200).await;
    // From here the broker has handed sluice the backlog (give it a moment).
    let flood = std::time::Instant::now() + Duration::from_millis(300);
    let published = alarms.await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(got.len(), PACED_ALARMS, "every alarm arrives: {got:?}");
    let read = bulk_read.load(Ordering::SeqCst);
    assert!(read < BULK, "the backlog outlasted the alarms: {read} of {BULK} read");
    // In front of each alarm published into the backlog: what the reader
    // read between its publish and its arrival. Unpaced, that is what the
    // sockets and the client hold (hundreds of these publishes); paced,
    // the target delay's worth plus what the estimate is off by between
    // acknowledgements.
    let waited: Vec<usize> = got
        .iter()
        .filter(|(n, _)| published[*n].0 > flood)
        .map(|(n, at)| at - published[*n].1.min(*at))
        .collect();
    eprintln!("bulk read before each alarm during the flood: {waited:?}");
    assert!(waited.len() >= 10, "alarms during the flood: {waited:?} of {published:?}");
    let mut sorted = waited.clone();
    sorted.sort_unstable();
    assert!(sorted[sorted.len() / 2] <= 60, "bulk read before each alarm: {waited:?}");
    assert!(*sorted.last().unwrap() <= 150, "bulk read before each alarm: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscriber_queue_drops_the_oldest_bulk_and_keeps_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Gateway::start(&dir.path().join("d"), Some(&config("[mqtt]\ndelivery_queue = \"64KiB\"\n"))).await;
    let (_sub, mut events) =
        subscriber(&gw, "slow", &[("bulk/#", QoS::AtLeastOnce), ("alarms/#", QoS::AtLeastOnce)], true).await;
    const BULK: usize = 2000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dropped = gw.metric("sluice_mqtt_delivery_dropped_total{service=\"bulk\"}").await as usize;
    assert!(dropped > BULK / 2, "64 KiB hold about 300 publishes of 200 bytes; dropped {dropped}");
    let got = receive(&mut events, BULK - dropped + ALARMS).await;
    assert_eq!(count(&got, "alarms/"), ALARMS, "no alarm is dropped");
    assert_eq!(count(&got, "bulk/"), BULK - dropped, "what was not dropped arrives");
    assert_eq!(gw.metric("sluice_mqtt_delivery_dropped_total{service=\"alarms\"}").await, 0);
}

/// Connects `id` with a persistent session, without subscribing: whether
/// the CONNACK said its session was there.
async fn resume(gw: &Gateway, id: &str) -> (AsyncClient, EventLoop, bool) {
    let (client, mut events) = subscriber(gw, id, &[], false).await;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.poll()).await.unwrap().unwrap();
        if let Event::Incoming(Packet::ConnAck(ack)) = event {
            return (client, events, ack.session_present);
        }
    }
}

/// Sends DISCONNECT and drops the connection (rumqttc reconnects when
/// polled after a disconnect: its event loop is not polled again).
async fn leave(client: AsyncClient, mut events: EventLoop) {
    client.disconnect().await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    drop(events);
    // The front has seen the end of the connection, and the session saved.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Subscribes `id` with a persistent session to bulk and alarms, then
/// disconnects.
async fn subscribe_and_leave(gw: &Gateway, id: &str) {
    let (client, events) =
        subscriber(gw, id, &[("bulk/#", QoS::AtLeastOnce), ("alarms/#", QoS::AtLeastOnce)], false).await;
    leave(client, events).await;
}

/// The payload numbers of the publishes to topics starting with `prefix`.
fn numbers(got: &[rumqttc::Publish], prefix: &str) -> Vec<usize> {
    got.iter()
        .filter(|p| p.topic.starts_with(prefix))
        .map(|p| String::from_utf8_lossy(&p.payload[..8]).parse().unwrap())
        .collect()
}

fn alarm_positions(got: &[rumqttc::Publish]) -> Vec<usize> {
    got.iter().enumerate().filter(|(_, p)| p.topic.starts_with("alarms/")).map(|(i, _)| i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_persistent_subscriber_gets_alarms_first_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    let (_sub, mut events) =
        subscriber(&gw, "keeper", &[("bulk/#", QoS::AtLeastOnce), ("alarms/#", QoS::AtLeastOnce)], false)
            .await;
    const BULK: usize = 2000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // It resumes: first what was in flight (the QoS 1 window, 16 before any
    // acknowledgement) and the few queued behind it (4), then the alarms,
    // sharing with bulk by express_max_share (one for one here).
    let got = receive_publishes(&mut events, BULK + ALARMS).await;
    let alarms = alarm_positions(&got);
    assert_eq!(alarms.len(), ALARMS, "every alarm arrives");
    assert!(
        *alarms.last().unwrap() <= 16 + 4 + 2 * ALARMS,
        "alarms overtake the bulk backlog: they came at positions {alarms:?} of {}",
        got.len()
    );
    assert_eq!(numbers(&got, "bulk/"), (0..BULK).collect::<Vec<_>>(), "all bulk, in order");
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce && !p.dup));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_away_during_a_flood_gets_everything_alarms_first() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    subscribe_and_leave(&gw, "keeper").await;
    const BULK: usize = 3000;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtLeastOnce, 200).await;
    publish(&gw, "zero-pub", "bulk/zero", 5, QoS::AtMostOnce, 200).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    // While it is away, its place in the log shows as a consumer group
    // (lag counts durable records).
    gw.settle("bulk").await;
    let lag =
        gw.metric("sluice_group_lag_records{group=\"mqtt:keeper\",topic=\"bulk\",partition=\"0\"}").await;
    assert!(lag >= BULK as u64, "the session's backlog is visible: {lag}");
    let (_c, mut events, present) = resume(&gw, "keeper").await;
    assert!(present, "the session was kept");
    // Bulk, the QoS 0 ones and their QoS 1 end marker, the alarms.
    let got = receive_publishes(&mut events, BULK + 5 + 1 + ALARMS).await;
    let alarms = alarm_positions(&got);
    assert_eq!(alarms.len(), ALARMS, "every alarm arrives");
    assert!(
        *alarms.last().unwrap() <= 2 * ALARMS + 2,
        "the alarms come first (sharing with bulk by express_max_share): positions {alarms:?}"
    );
    let line = got.iter().filter(|p| p.topic == "bulk/line-1").map(|p| p.qos).collect::<Vec<_>>();
    assert_eq!(line.len(), BULK, "every bulk record");
    assert!(line.iter().all(|q| *q == QoS::AtLeastOnce));
    assert_eq!(numbers(&got, "bulk/line-1"), (0..BULK).collect::<Vec<_>>(), "in order");
    let zero: Vec<_> = got.iter().filter(|p| p.topic == "bulk/zero").collect();
    assert_eq!(zero.len(), 5, "QoS 0 publishes are kept too");
    assert!(zero.iter().all(|p| p.qos == QoS::AtMostOnce), "and delivered at QoS 0");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lag =
        gw.metric("sluice_group_lag_records{group=\"mqtt:keeper\",topic=\"bulk\",partition=\"0\"}").await;
    assert_eq!(lag, 0, "acknowledged deliveries move the session's place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_survives_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config(""))).await;
    subscribe_and_leave(&gw, "keeper").await;
    const BULK: usize = 500;
    publish(&gw, "bulk-pub", "bulk/line-1", BULK, QoS::AtLeastOnce, 200).await;
    publish(&gw, "alarm-pub", "alarms/line-1", ALARMS, QoS::AtLeastOnce, 200).await;
    let gw = gw.restart().await;
    let (c, mut events, present) = resume(&gw, "keeper").await;
    assert!(present, "the session outlives a restart");
    let got = receive_publishes(&mut events, BULK + ALARMS).await;
    let alarms = alarm_positions(&got);
    assert_eq!(alarms.len(), ALARMS, "every alarm arrives after the restart");
    assert!(*alarms.last().unwrap() <= 2 * ALARMS + 2, "alarms first: {alarms:?}");
    assert_eq!(numbers(&got, "bulk/"), (0..BULK).collect::<Vec<_>>(), "all bulk, in order");
    // Acknowledged, then away again, then a power cut: what came meanwhile
    // is there (with at most what was acknowledged in the last second
    // again).
    tokio::time::sleep(Duration::from_millis(300)).await;
    leave(c, events).await;
    publish(&gw, "alarm-pub", "alarms/line-2", ALARMS, QoS::AtLeastOnce, 200).await;
    // Acknowledged buffered records are durable within flush_interval
    // (the durability contract): the crash comes after that.
    gw.settle("alarms").await;
    let gw = gw.crash_and_restart().await;
    let (_c, mut events, present) = resume(&gw, "keeper").await;
    assert!(present, "the session outlives a crash");
    let got = receive_publishes(&mut events, ALARMS).await;
    assert_eq!(numbers(&got, "alarms/line-2"), (0..ALARMS).collect::<Vec<_>>(), "what came while away");
    assert!(
        numbers(&got, "alarms/line-1").is_empty() && numbers(&got, "bulk/").is_empty(),
        "nothing old again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_away_longer_than_its_expiry_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config("[mqtt]\nsession_expiry = \"1s\"\n"))).await;
    subscribe_and_leave(&gw, "short").await;
    publish(&gw, "alarm-pub", "alarms/line-1", 1, QoS::AtLeastOnce, 200).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, mut events, present) = resume(&gw, "short").await;
    assert!(!present, "the session expired");
    assert!(receive(&mut events, 1).await.is_empty(), "nothing is delivered to a new session");
}
