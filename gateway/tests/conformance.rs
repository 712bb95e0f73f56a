//! MQTT conformance suite, written from the MQTT 3.1.1 (OASIS, 2014) and
//! MQTT 5.0 (OASIS, 2019) specifications. Every case runs against sluice
//! (the real binary, one gateway per case) and against Mosquitto 2.0 from
//! Debian as the reference, over a raw socket ([`wire`]) so that flags,
//! packet ids and reason codes are checked byte for byte.
//!
//! Test names read `<case>::<version>::<broker>`; each case's doc names the
//! normative statements it checks (`MQTT-x.y.z-n`, 3.1.1 numbering unless
//! marked "v5"). Where Mosquitto deviates from the specification, the spec
//! wins: the case lists the deviation, and the Mosquitto test asserts that
//! the deviation is still there (so a fixed Mosquitto shows up as a failing
//! reference, not as silence).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../uplink/tests/common/mosquitto.rs"]
mod mosquitto;
#[path = "conformance/wire.rs"]
mod wire;

use common::Gateway;
use mosquitto::Mosquitto;
use std::time::Duration;
use wire::{ack, publish, subscribe, unsubscribe, Conn, Connect, Gone, Packet, Version, Will};

/// Wait for a packet that must come (a failure guard, not a measurement).
const SOON: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched.
const QUIET: Duration = Duration::from_millis(1000);

/// The broker under test.
#[allow(dead_code)] // the TempDirs are held, not read
enum Broker {
    Sluice(Gateway, tempfile::TempDir),
    Mosquitto(Mosquitto, tempfile::TempDir),
}

/// What a case needs configured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Anonymous clients may publish and subscribe anywhere.
    Open,
    /// Anonymous clients may publish and subscribe under `open/#` only.
    Acl,
}

impl Broker {
    async fn start(mosquitto: bool, setup: Setup) -> Broker {
        if mosquitto {
            let mut extra = String::from("max_queued_messages 1000\n");
            let dir = tempfile::tempdir().unwrap();
            if setup == Setup::Acl {
                let acl = dir.path().join("acl");
                std::fs::write(&acl, "topic readwrite open/#\n").unwrap();
                extra += &format!("acl_file {}\n", acl.display());
            }
            return Broker::Mosquitto(Mosquitto::start_on(mosquitto::free_port(), &extra), dir);
        }
        let dir = tempfile::tempdir().unwrap();
        let config = match setup {
            Setup::Open => None,
            Setup::Acl => {
                Some("[mqtt]\nanonymous_publish = [\"open/#\"]\nanonymous_subscribe = [\"open/#\"]\n")
            }
        };
        let gw = Gateway::start(&dir.path().join("d"), config).await;
        Broker::Sluice(gw, dir)
    }

    fn addr(&self) -> String {
        match self {
            Broker::Sluice(gw, _) => gw.mqtt.clone().unwrap(),
            Broker::Mosquitto(m, _) => m.addr(),
        }
    }
}

/// Fails the case with a message unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

type Outcome = Result<(), String>;

/// Runs `case` against one broker. `deviates`: the broker is known to
/// break the statement under test (listed in the README), and the case
/// must fail on it, so that a fix shows up as a failing reference.
async fn run<F, Fut>(mosquitto: bool, setup: Setup, v: Version, deviates: bool, case: F)
where
    F: FnOnce(String, Version) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let broker = Broker::start(mosquitto, setup).await;
    let name = if mosquitto { "Mosquitto" } else { "sluice" };
    let outcome = case(broker.addr(), v).await;
    match (outcome, deviates) {
        (Ok(()), false) => {}
        (Err(e), false) => panic!("{name} breaks the case: {e}"),
        (Err(e), true) => eprintln!("{name} deviates from the specification, as known: {e}"),
        (Ok(()), true) => panic!("{name} passes a case it was known to fail: update the deviation list"),
    }
    drop(broker);
}

/// One test per (version, broker): `case!(name, setup, [V311, V5])`, with
/// `mosquitto_deviates = [..]` / `sluice_deviates = [..]` naming the
/// versions where that broker is known to fail the case.
macro_rules! case {
    ($name:ident, $setup:expr, [$($v:ident),+]) => {
        case!($name, $setup, [$($v),+], mosquitto_deviates = [], sluice_deviates = []);
    };
    ($name:ident, $setup:expr, [$($v:ident),+], mosquitto_deviates = [$($d:ident),*]) => {
        case!($name, $setup, [$($v),+], mosquitto_deviates = [$($d),*], sluice_deviates = []);
    };
    ($name:ident, $setup:expr, [$($v:ident),+], sluice_deviates = [$($s:ident),*]) => {
        case!($name, $setup, [$($v),+], mosquitto_deviates = [], sluice_deviates = [$($s),*]);
    };
    (
        $name:ident, $setup:expr, [$($v:ident),+],
        mosquitto_deviates = [$($d:ident),*], sluice_deviates = [$($s:ident),*]
    ) => {
        mod $name {
            const MOSQUITTO_DEVIATES: &[super::Version] = &[$(super::Version::$d),*];
            const SLUICE_DEVIATES: &[super::Version] = &[$(super::Version::$s),*];
            $(
                #[allow(non_snake_case)]
                mod $v {
                    use super::super::*;
                    #[tokio::test]
                    async fn sluice() {
                        let deviates = super::SLUICE_DEVIATES.contains(&Version::$v);
                        run(false, $setup, Version::$v, deviates, super::super::$name).await;
                    }
                    #[tokio::test]
                    async fn mosquitto() {
                        let deviates = super::MOSQUITTO_DEVIATES.contains(&Version::$v);
                        run(true, $setup, Version::$v, deviates, super::super::$name).await;
                    }
                }
            )+
        }
    };
}

// ---------------------------------------------------------------- helpers

async fn accepted(addr: &str, v: Version, id: &str) -> Conn {
    Conn::accepted(addr, v, &Connect::new(id)).await
}

/// SUBSCRIBE and its SUBACK's return codes.
async fn sub(c: &mut Conn, pkid: u16, filters: &[(&str, u8)]) -> Result<Vec<u8>, String> {
    c.send(&subscribe(c.v, pkid, filters)).await;
    match c
        .expect(SOON, |p| matches!(p, Packet::SubAck { .. }))
        .await
        .map_err(|e| format!("no SUBACK: {e}"))?
    {
        Packet::SubAck { pkid: got, codes } => {
            check!(got == pkid, "SUBACK packet id {got}, SUBSCRIBE had {pkid} (MQTT-3.8.4-2)");
            check!(
                codes.len() == filters.len(),
                "SUBACK has {} return codes for {} filters (MQTT-3.8.4-5): {codes:?}",
                codes.len(),
                filters.len()
            );
            Ok(codes)
        }
        _ => unreachable!(),
    }
}

/// A QoS 1 PUBLISH and its PUBACK's reason code.
async fn publish1(c: &mut Conn, topic: &str, payload: &[u8], retain: bool, pkid: u16) -> Result<u8, String> {
    c.send(&publish(c.v, topic, payload, 1, retain, pkid)).await;
    match c
        .expect(SOON, |p| matches!(p, Packet::PubAck { .. }))
        .await
        .map_err(|e| format!("no PUBACK: {e}"))?
    {
        Packet::PubAck { pkid: got, reason } => {
            check!(got == pkid, "PUBACK packet id {got}, PUBLISH had {pkid} (MQTT-2.3.1-6)");
            Ok(reason)
        }
        _ => unreachable!(),
    }
}

/// The next PUBLISH to `c`, acknowledged if QoS 1.
async fn delivered(c: &mut Conn, wait: Duration) -> Result<Packet, String> {
    let p = c
        .expect(wait, |p| matches!(p, Packet::Publish { .. }))
        .await
        .map_err(|e| format!("no delivery: {e}"))?;
    if let Packet::Publish { qos: 1, pkid, .. } = p {
        c.send(&ack(0x40, pkid)).await;
    }
    Ok(p)
}

/// Publishes `c` receives within [`QUIET`] (QoS 1 acknowledged).
async fn nothing_delivered(c: &mut Conn, what: &str) -> Outcome {
    match delivered(c, QUIET).await {
        Ok(p) => Err(format!("{what}, but got {p:?}")),
        Err(_) => Ok(()),
    }
}

fn payload_of(p: &Packet) -> &[u8] {
    match p {
        Packet::Publish { payload, .. } => payload,
        _ => &[],
    }
}

// ---------------------------------------------------------------- CONNECT

/// MQTT-3.2.2-1 / v5 MQTT-3.2.2-2: a clean session is accepted with
/// CONNACK 0 and session present 0.
async fn connack_0_and_no_session_present_for_a_clean_session(addr: String, v: Version) -> Outcome {
    let (_c, answer) = Conn::connect(&addr, v, &Connect::new("clean-1")).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { session_present: false, code: 0, .. })),
        "CONNACK accepted without session present, got {answer:?}"
    );
    Ok(())
}
case!(connack_0_and_no_session_present_for_a_clean_session, Setup::Open, [V311, V5]);

/// MQTT-3.1.2-2: an unsupported protocol level gets CONNACK 0x01, then the
/// connection is closed.
async fn unsupported_protocol_level_gets_connack_1_and_close_3_1_2_2(addr: String, v: Version) -> Outcome {
    let c = Connect { level: Some(6), ..Connect::new("level-6") };
    let (mut conn, answer) = Conn::connect(&addr, v, &c).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { code: 0x01, .. })),
        "CONNACK 0x01 for protocol level 6, got {answer:?}"
    );
    check!(conn.closed_within(SOON).await, "connection still open after CONNACK 0x01");
    Ok(())
}
case!(unsupported_protocol_level_gets_connack_1_and_close_3_1_2_2, Setup::Open, [V311]);

/// MQTT-3.1.3-6, MQTT-3.1.3-7 (v5: 3.2.2.3.7 Assigned Client Identifier):
/// a zero-length client id with a clean session is accepted (MQTT 5
/// answers with the identifier it assigned), and the session works.
async fn zero_length_client_id_is_accepted_with_a_clean_session_3_1_3_6(addr: String, v: Version) -> Outcome {
    let (mut c, answer) = Conn::connect(&addr, v, &Connect::new("")).await;
    match answer {
        Ok(Packet::ConnAck { code: 0, assigned_id, .. }) => {
            if v == Version::V5 {
                check!(
                    assigned_id.as_deref().is_some_and(|id| !id.is_empty()),
                    "MQTT 5 CONNACK must carry an Assigned Client Identifier, got {assigned_id:?}"
                );
            }
        }
        other => return Err(format!("CONNACK 0 for an empty client id, got {other:?}")),
    }
    check!(sub(&mut c, 1, &[("zero/id", 1)]).await?[0] <= 1, "subscription refused");
    check!(publish1(&mut c, "zero/id", b"x", false, 2).await? == 0, "PUBACK not a success");
    let p = delivered(&mut c, SOON).await?;
    check!(payload_of(&p) == b"x", "own publish back: {p:?}");
    Ok(())
}
case!(zero_length_client_id_is_accepted_with_a_clean_session_3_1_3_6, Setup::Open, [V311, V5]);

/// MQTT-3.1.3-8: a zero-length client id without a clean session gets
/// CONNACK 0x02 (identifier rejected), then the connection is closed.
async fn zero_length_client_id_without_clean_session_gets_connack_2_3_1_3_8(
    addr: String,
    v: Version,
) -> Outcome {
    let (mut c, answer) = Conn::connect(&addr, v, &Connect { clean: false, ..Connect::new("") }).await;
    check!(matches!(answer, Ok(Packet::ConnAck { code: 0x02, .. })), "CONNACK 0x02, got {answer:?}");
    check!(c.closed_within(SOON).await, "connection still open after CONNACK 0x02");
    Ok(())
}
case!(zero_length_client_id_without_clean_session_gets_connack_2_3_1_3_8, Setup::Open, [V311]);

/// MQTT-3.1.0-1: the first packet must be CONNECT; anything else closes
/// the connection (and is not answered).
async fn a_first_packet_other_than_connect_closes_the_connection_3_1_0_1(
    addr: String,
    v: Version,
) -> Outcome {
    let mut c = Conn::open(&addr, v).await;
    c.send(&wire::PINGREQ).await;
    match c.recv(SOON).await {
        Err(Gone::Closed) => Ok(()),
        other => Err(format!("closed without an answer, got {other:?}")),
    }
}
case!(a_first_packet_other_than_connect_closes_the_connection_3_1_0_1, Setup::Open, [V311, V5]);

/// MQTT-3.1.0-2: a second CONNECT is a protocol violation; the server
/// closes the connection (v5: after an optional DISCONNECT).
async fn a_second_connect_closes_the_connection_3_1_0_2(addr: String, v: Version) -> Outcome {
    let mut c = accepted(&addr, v, "twice").await;
    c.send(&wire::connect(v, &Connect::new("twice"))).await;
    check!(c.closed_within(SOON).await, "connection still open after a second CONNECT");
    Ok(())
}
case!(a_second_connect_closes_the_connection_3_1_0_2, Setup::Open, [V311, V5]);

/// MQTT-3.1.4-2: a CONNECT with the client id of a connected client
/// disconnects the existing client.
async fn a_second_client_with_the_same_id_takes_over_3_1_4_2(addr: String, v: Version) -> Outcome {
    let mut first = accepted(&addr, v, "same-id").await;
    let mut second = accepted(&addr, v, "same-id").await;
    check!(first.closed_within(SOON).await, "the first connection stayed open");
    second.send(&wire::PINGREQ).await;
    let pong = second.recv(SOON).await;
    check!(pong == Ok(Packet::PingResp), "the new connection answers PINGREQ, got {pong:?}");
    Ok(())
}
case!(a_second_client_with_the_same_id_takes_over_3_1_4_2, Setup::Open, [V311, V5]);

// ------------------------------------------------------------- keep-alive

/// MQTT-3.1.2-24 (v5 MQTT-3.1.2-22): with keep-alive 1 s and no packets,
/// the server closes the connection within 1.5 keep-alive periods (checked
/// with slack: open after 0.8 s, closed by 4 s). Mosquitto 2.0.11 closes
/// after about 4.6 s.
async fn keep_alive_expiry_closes_the_connection_3_1_2_24(addr: String, v: Version) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &Connect { keep_alive: 1, ..Connect::new("ka-1") }).await;
    check!(!c.closed_within(Duration::from_millis(800)).await, "closed before the keep-alive period ended");
    check!(c.closed_within(Duration::from_millis(3200)).await, "still open 4 s after the last packet");
    Ok(())
}
case!(
    keep_alive_expiry_closes_the_connection_3_1_2_24,
    Setup::Open,
    [V311, V5],
    mosquitto_deviates = [V311, V5]
);

/// 3.1.2.10 (v5 3.1.2.10): keep-alive 0 turns the mechanism off: an idle
/// connection stays open (watched for 4 s) and PINGREQ gets PINGRESP
/// (MQTT-3.12.4-1).
async fn keep_alive_0_turns_the_timeout_off_3_1_2_10(addr: String, v: Version) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &Connect { keep_alive: 0, ..Connect::new("ka-0") }).await;
    check!(!c.closed_within(Duration::from_secs(4)).await, "an idle keep-alive 0 connection was closed");
    c.send(&wire::PINGREQ).await;
    let pong = c.recv(SOON).await;
    check!(pong == Ok(Packet::PingResp), "PINGRESP, got {pong:?}");
    Ok(())
}
case!(keep_alive_0_turns_the_timeout_off_3_1_2_10, Setup::Open, [V311, V5]);

// ------------------------------------------------------------ QoS flows

/// MQTT-4.3.1 (QoS 0 delivered at most once) and MQTT-3.8.4-6 (delivered
/// at the minimum of the publish and the granted QoS).
async fn qos0_is_delivered_at_qos0_4_3_1(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "q0-sub").await;
    sub(&mut s, 1, &[("q0/t", 1)]).await?;
    let mut p = accepted(&addr, v, "q0-pub").await;
    p.send(&publish(v, "q0/t", b"zero", 0, false, 0)).await;
    let got = delivered(&mut s, SOON).await?;
    check!(
        matches!(&got, Packet::Publish { qos: 0, payload, retain: false, .. } if payload == b"zero"),
        "QoS 0 publish delivered at QoS 0, got {got:?}"
    );
    nothing_delivered(&mut s, "delivered once").await
}
case!(qos0_is_delivered_at_qos0_4_3_1, Setup::Open, [V311, V5]);

/// MQTT-4.3.2-2 and MQTT-2.3.1-6 (PUBACK with the PUBLISH's packet id),
/// MQTT-2.3.1-1 (a QoS 1 delivery carries a non-zero packet id).
async fn qos1_is_acknowledged_and_delivered_4_3_2(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "q1-sub").await;
    sub(&mut s, 1, &[("q1/t", 1)]).await?;
    let mut p = accepted(&addr, v, "q1-pub").await;
    check!(publish1(&mut p, "q1/t", b"one", false, 0x1234).await? == 0, "PUBACK reason success");
    let got = delivered(&mut s, SOON).await?;
    check!(
        matches!(&got, Packet::Publish { qos: 1, pkid, payload, .. } if *pkid != 0 && payload == b"one"),
        "QoS 1 delivery with a packet id, got {got:?}"
    );
    nothing_delivered(&mut s, "one delivery of an acknowledged QoS 1 publish").await
}
case!(qos1_is_acknowledged_and_delivered_4_3_2, Setup::Open, [V311, V5]);

/// MQTT-4.3.3-2 (PUBREC, then PUBCOMP for the PUBREL, same packet id) and
/// MQTT-3.8.4-6: a subscriber delivered at the QoS it was granted, with
/// the full QoS 2 exchange when granted 2, and exactly one delivery.
async fn qos2_is_received_and_delivered_exactly_once_4_3_3(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "q2-sub").await;
    let granted = sub(&mut s, 1, &[("q2/t", 2)]).await?[0];
    check!(granted <= 2, "subscription refused: {granted:#x}");
    let mut p = accepted(&addr, v, "q2-pub").await;
    p.send(&publish(v, "q2/t", b"two", 2, false, 77)).await;
    let rec = p.expect(SOON, |p| matches!(p, Packet::PubRec { .. })).await?;
    check!(matches!(rec, Packet::PubRec { pkid: 77, reason: 0 }), "PUBREC 77, got {rec:?}");
    p.send(&ack(0x62, 77)).await;
    let comp = p.expect(SOON, |p| matches!(p, Packet::PubComp { .. })).await?;
    check!(comp == Packet::PubComp { pkid: 77 }, "PUBCOMP 77, got {comp:?}");

    let got = s.expect(SOON, |p| matches!(p, Packet::Publish { .. })).await?;
    let Packet::Publish { qos, pkid, payload, .. } = &got else { unreachable!() };
    check!(payload == b"two" && *qos == granted, "delivered at the granted QoS {granted}, got {got:?}");
    match qos {
        2 => {
            s.send(&ack(0x50, *pkid)).await;
            let rel = s.expect(SOON, |p| matches!(p, Packet::PubRel { .. })).await?;
            check!(rel == Packet::PubRel { pkid: *pkid }, "PUBREL {pkid}, got {rel:?}");
            s.send(&ack(0x70, *pkid)).await;
        }
        1 => s.send(&ack(0x40, *pkid)).await,
        _ => {}
    }
    nothing_delivered(&mut s, "exactly one delivery").await
}
case!(qos2_is_received_and_delivered_exactly_once_4_3_3, Setup::Open, [V311, V5]);

/// MQTT-3.8.4-6: delivered QoS is the minimum of the publish's and the
/// subscription's.
async fn delivery_qos_is_the_minimum_of_publish_and_subscription_3_8_4_6(
    addr: String,
    v: Version,
) -> Outcome {
    let mut s = accepted(&addr, v, "min-sub").await;
    sub(&mut s, 1, &[("min/zero", 0), ("min/one", 1)]).await?;
    let mut p = accepted(&addr, v, "min-pub").await;
    publish1(&mut p, "min/zero", b"a", false, 1).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(matches!(got, Packet::Publish { qos: 0, .. }), "QoS 1 publish to a QoS 0 subscription: {got:?}");
    p.send(&publish(v, "min/one", b"b", 0, false, 0)).await;
    let got = delivered(&mut s, SOON).await?;
    check!(matches!(got, Packet::Publish { qos: 0, .. }), "QoS 0 publish to a QoS 1 subscription: {got:?}");
    Ok(())
}
case!(delivery_qos_is_the_minimum_of_publish_and_subscription_3_8_4_6, Setup::Open, [V311, V5]);

// --------------------------------------------------------------- retained

/// MQTT-3.3.1-5 (stored, replacing the previous one), MQTT-3.3.1-6 and -8
/// (sent to a new subscription with RETAIN 1), MQTT-3.3.1-9 (RETAIN 0 to
/// an existing subscription), MQTT-3.3.1-10/-11 (a zero-byte retained
/// publish clears it).
async fn retained_messages_are_set_replaced_and_cleared_3_3_1_5(addr: String, v: Version) -> Outcome {
    let mut p = accepted(&addr, v, "ret-pub").await;
    publish1(&mut p, "ret/t", b"first", true, 1).await?;
    publish1(&mut p, "ret/t", b"second", true, 2).await?;

    let mut s = accepted(&addr, v, "ret-sub").await;
    sub(&mut s, 1, &[("ret/#", 1)]).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(
        matches!(&got, Packet::Publish { retain: true, payload, .. } if payload == b"second"),
        "the replaced retained message with RETAIN 1, got {got:?}"
    );
    nothing_delivered(&mut s, "only the latest retained message").await?;

    publish1(&mut p, "ret/t", b"live", true, 3).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(
        matches!(&got, Packet::Publish { retain: false, payload, .. } if payload == b"live"),
        "a live retained publish to an existing subscription has RETAIN 0, got {got:?}"
    );

    publish1(&mut p, "ret/t", b"", true, 4).await?;
    let _ = delivered(&mut s, SOON).await?; // the zero-byte publish, as normal
    let mut late = accepted(&addr, v, "ret-late").await;
    sub(&mut late, 1, &[("ret/#", 1)]).await?;
    nothing_delivered(&mut late, "no retained message after a zero-byte retained publish").await
}
case!(retained_messages_are_set_replaced_and_cleared_3_3_1_5, Setup::Open, [V311, V5]);

// ------------------------------------------------------------------ wills

fn with_will(id: &str, keep_alive: u16) -> Connect {
    Connect {
        keep_alive,
        will: Some(Will { topic: "will/t".into(), payload: b"gone".to_vec(), qos: 1, retain: false }),
        ..Connect::new(id)
    }
}

async fn will_watcher(addr: &str, v: Version) -> Result<Conn, String> {
    let mut s = accepted(addr, v, "will-watch").await;
    sub(&mut s, 1, &[("will/#", 1)]).await?;
    Ok(s)
}

/// MQTT-3.1.2-8: the will is published when the network connection closes
/// without a DISCONNECT.
async fn the_will_is_published_when_the_socket_is_lost_3_1_2_8(addr: String, v: Version) -> Outcome {
    let mut s = will_watcher(&addr, v).await?;
    let w = Conn::accepted(&addr, v, &with_will("willing", 60)).await;
    drop(w);
    let got = delivered(&mut s, SOON).await?;
    check!(payload_of(&got) == b"gone", "the will, got {got:?}");
    Ok(())
}
case!(the_will_is_published_when_the_socket_is_lost_3_1_2_8, Setup::Open, [V311, V5]);

/// MQTT-3.1.2-8 with MQTT-3.1.2-24: a keep-alive expiry publishes the will.
async fn the_will_is_published_on_keep_alive_expiry_3_1_2_8(addr: String, v: Version) -> Outcome {
    let mut s = will_watcher(&addr, v).await?;
    let _w = Conn::accepted(&addr, v, &with_will("silent", 1)).await;
    let got = delivered(&mut s, SOON).await?;
    check!(payload_of(&got) == b"gone", "the will, got {got:?}");
    Ok(())
}
case!(the_will_is_published_on_keep_alive_expiry_3_1_2_8, Setup::Open, [V311, V5]);

/// MQTT-3.1.2-10 (v5 3.14.4): after a DISCONNECT (reason 0) the will is
/// discarded, not published.
async fn no_will_after_disconnect_3_1_2_10(addr: String, v: Version) -> Outcome {
    let mut s = will_watcher(&addr, v).await?;
    let mut w = Conn::accepted(&addr, v, &with_will("polite", 60)).await;
    w.send(&wire::DISCONNECT).await;
    check!(w.closed_within(SOON).await, "the server closes the connection after DISCONNECT");
    nothing_delivered(&mut s, "no will after DISCONNECT").await
}
case!(no_will_after_disconnect_3_1_2_10, Setup::Open, [V311, V5]);

// ---------------------------------------------------------- subscriptions

/// MQTT-3.3.5-1: overlapping subscriptions deliver the message at the
/// highest QoS of those that match (3.1.1 allows a copy per subscription).
async fn overlapping_subscriptions_deliver_at_the_highest_qos_3_3_5_1(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "overlap").await;
    sub(&mut s, 1, &[("ov/#", 0), ("ov/t", 1)]).await?;
    let mut p = accepted(&addr, v, "ov-pub").await;
    publish1(&mut p, "ov/t", b"both", false, 1).await?;
    let mut copies = vec![delivered(&mut s, SOON).await?];
    while let Ok(p) = delivered(&mut s, QUIET).await {
        copies.push(p);
    }
    check!(
        copies.iter().any(|p| matches!(p, Packet::Publish { qos: 1, .. })),
        "a copy at QoS 1, got {copies:?}"
    );
    check!(copies.len() <= 2, "at most one copy per subscription, got {copies:?}");
    Ok(())
}
case!(overlapping_subscriptions_deliver_at_the_highest_qos_3_3_5_1, Setup::Open, [V311, V5]);

/// MQTT-4.7.2-1: topic filters starting with a wildcard do not match topic
/// names starting with `$`; a filter starting with `$` does, unless the
/// server refuses it (3.9.3: it may refuse any subscription; sluice does,
/// as the embedded broker serves no `$` topics).
async fn dollar_topics_are_not_matched_by_leading_wildcards_4_7_2_1(addr: String, v: Version) -> Outcome {
    let mut all = accepted(&addr, v, "wild").await;
    sub(&mut all, 1, &[("#", 1), ("+/x", 1)]).await?;
    let mut dollar = accepted(&addr, v, "dollar").await;
    let granted = sub(&mut dollar, 1, &[("$conf/#", 1)]).await?[0];
    check!(granted <= 1 || granted == 0x80 || granted == 0x87, "SUBACK code {granted:#x}");
    let mut p = accepted(&addr, v, "dollar-pub").await;
    publish1(&mut p, "$conf/x", b"dollar", false, 1).await?;
    publish1(&mut p, "conf/x", b"plain", false, 2).await?;
    if granted <= 1 {
        let got = delivered(&mut dollar, SOON).await?;
        check!(payload_of(&got) == b"dollar", "`$conf/#` matches `$conf/x`, got {got:?}");
    }
    let mut seen = Vec::new();
    while let Ok(p) = delivered(&mut all, QUIET).await {
        seen.push(p);
    }
    check!(seen.iter().any(|p| payload_of(p) == b"plain"), "`#` matches `conf/x`, got {seen:?}");
    check!(!seen.iter().any(|p| payload_of(p) == b"dollar"), "`#` or `+/x` matched `$conf/x`: {seen:?}");
    Ok(())
}
case!(dollar_topics_are_not_matched_by_leading_wildcards_4_7_2_1, Setup::Open, [V311, V5]);

/// MQTT-3.10.4-4 (UNSUBACK with the packet id), MQTT-3.10.4-1 (no new
/// deliveries), MQTT-3.10.4-5 (UNSUBACK even for a filter not subscribed).
async fn unsubscribe_is_acknowledged_and_ends_delivery_3_10_4_4(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "unsub").await;
    sub(&mut s, 1, &[("un/t", 1)]).await?;
    s.send(&unsubscribe(v, 9, &["un/t"])).await;
    let got = s.expect(SOON, |p| matches!(p, Packet::UnsubAck { .. })).await?;
    check!(got == Packet::UnsubAck { pkid: 9 }, "UNSUBACK 9, got {got:?}");
    s.send(&unsubscribe(v, 10, &["never/subscribed"])).await;
    let got = s.expect(SOON, |p| matches!(p, Packet::UnsubAck { .. })).await?;
    check!(got == Packet::UnsubAck { pkid: 10 }, "UNSUBACK 10, got {got:?}");
    let mut p = accepted(&addr, v, "unsub-pub").await;
    publish1(&mut p, "un/t", b"after", false, 1).await?;
    nothing_delivered(&mut s, "nothing after UNSUBSCRIBE").await
}
case!(unsubscribe_is_acknowledged_and_ends_delivery_3_10_4_4, Setup::Open, [V311, V5]);

/// MQTT-3.8.4-3: subscribing again to the same filter replaces the
/// subscription (its new QoS applies; one copy per message).
async fn a_repeated_subscription_replaces_the_first_3_8_4_3(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "resub").await;
    sub(&mut s, 1, &[("re/t", 0)]).await?;
    sub(&mut s, 2, &[("re/t", 1)]).await?;
    let mut p = accepted(&addr, v, "resub-pub").await;
    publish1(&mut p, "re/t", b"once", false, 1).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(matches!(got, Packet::Publish { qos: 1, .. }), "delivered at the new QoS 1, got {got:?}");
    nothing_delivered(&mut s, "one copy for a replaced subscription").await
}
case!(a_repeated_subscription_replaces_the_first_3_8_4_3, Setup::Open, [V311, V5]);

/// 3.9.3 (0x80 Failure; v5: 0x87 Not authorized) and MQTT-3.8.4-5 (one
/// return code per filter, in order): filters outside what the client may
/// read are refused, the others granted; a wildcard that could match
/// outside is refused; nothing outside is delivered. Mosquitto 2.0.11
/// deviates: it grants every subscription and filters at delivery, so the
/// client never learns its subscription is useless.
async fn subscriptions_outside_the_acl_are_refused_in_the_suback_3_9_3(addr: String, v: Version) -> Outcome {
    let refused = if v == Version::V5 { 0x87 } else { 0x80 };
    let mut s = accepted(&addr, v, "acl-sub").await;
    let codes = sub(&mut s, 1, &[("open/a", 1), ("secret/b", 1), ("open/#", 0), ("+/b", 1)]).await?;
    check!(
        codes[0] <= 1 && codes[1] == refused && codes[2] == 0 && codes[3] == refused,
        "SUBACK [granted, {refused:#x}, 0, {refused:#x}], got {codes:02x?}"
    );
    let mut p = accepted(&addr, v, "acl-pub").await;
    publish1(&mut p, "open/b", b"allowed", false, 1).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(payload_of(&got) == b"allowed", "the granted filter delivers, got {got:?}");
    Ok(())
}
case!(
    subscriptions_outside_the_acl_are_refused_in_the_suback_3_9_3,
    Setup::Acl,
    [V311, V5],
    mosquitto_deviates = [V311, V5]
);

/// v5 3.4.2.1: a publish the client may not make gets PUBACK 0x87 (Not
/// authorized); MQTT 3.1.1 has no such code and acknowledges it
/// (MQTT-3.3.5-2). Either way it reaches no subscriber.
async fn a_denied_publish_is_not_authorized_and_not_delivered_3_3_5_2(addr: String, v: Version) -> Outcome {
    let mut s = accepted(&addr, v, "deny-sub").await;
    sub(&mut s, 1, &[("open/#", 1)]).await?;
    let mut p = accepted(&addr, v, "deny-pub").await;
    let reason = publish1(&mut p, "secret/x", b"no", false, 1).await?;
    let want = if v == Version::V5 { 0x87 } else { 0 };
    check!(reason == want, "PUBACK reason {want:#x}, got {reason:#x}");
    publish1(&mut p, "open/x", b"yes", false, 2).await?;
    let got = delivered(&mut s, SOON).await?;
    check!(payload_of(&got) == b"yes", "only the allowed publish, got {got:?}");
    Ok(())
}
case!(a_denied_publish_is_not_authorized_and_not_delivered_3_3_5_2, Setup::Acl, [V311, V5]);

// -------------------------------------------------------------- sessions

fn persistent(id: &str) -> Connect {
    // MQTT 5 ends a session at disconnect unless it has an expiry interval.
    Connect { clean: false, session_expiry: Some(300), ..Connect::new(id) }
}

/// MQTT-3.1.2-4, MQTT-3.2.2-2 (session present 1), MQTT-3.1.2-5 (QoS 1
/// messages for the subscriptions are kept while disconnected): a
/// persistent session keeps its subscriptions and gets what was published
/// while it was away.
async fn a_persistent_session_keeps_subscriptions_and_queued_qos1_3_1_2_5(
    addr: String,
    v: Version,
) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &persistent("keeper")).await;
    sub(&mut c, 1, &[("away/t", 1)]).await?;
    c.send(&wire::DISCONNECT).await;
    check!(c.closed_within(SOON).await, "closed after DISCONNECT");
    let mut p = accepted(&addr, v, "away-pub").await;
    publish1(&mut p, "away/t", b"while away", false, 1).await?;
    let (mut c, answer) = Conn::connect(&addr, v, &persistent("keeper")).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { code: 0, session_present: true, .. })),
        "CONNACK with session present, got {answer:?}"
    );
    let got = delivered(&mut c, SOON).await?;
    check!(payload_of(&got) == b"while away", "the message published while away, got {got:?}");
    Ok(())
}
case!(a_persistent_session_keeps_subscriptions_and_queued_qos1_3_1_2_5, Setup::Open, [V311, V5]);

/// MQTT-4.4.0-1 (v5 MQTT-4.4.0-1), MQTT-3.3.1-1: a QoS 1 delivery not
/// acknowledged before the connection dropped is sent again, with DUP 1
/// and its original packet id, when the persistent session reconnects.
async fn unacknowledged_qos1_is_resent_with_dup_on_reconnect_4_4_0_1(addr: String, v: Version) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &persistent("forgetful")).await;
    sub(&mut c, 1, &[("dup/t", 1)]).await?;
    let mut p = accepted(&addr, v, "dup-pub").await;
    publish1(&mut p, "dup/t", b"again", false, 1).await?;
    let first = c.expect(SOON, |p| matches!(p, Packet::Publish { .. })).await?;
    check!(matches!(first, Packet::Publish { qos: 1, dup: false, .. }), "first delivery, got {first:?}");
    let Packet::Publish { pkid: first_pkid, .. } = first else { unreachable!() };
    drop(c); // no PUBACK, no DISCONNECT
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, answer) = Conn::connect(&addr, v, &persistent("forgetful")).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { code: 0, session_present: true, .. })),
        "CONNACK with session present, got {answer:?}"
    );
    let again = delivered(&mut c, SOON).await?;
    check!(
        matches!(&again, Packet::Publish { qos: 1, dup: true, payload, pkid, .. } if payload == b"again" && *pkid == first_pkid),
        "the unacknowledged publish again with DUP 1 and its packet id {first_pkid}, got {again:?}"
    );
    Ok(())
}
case!(unacknowledged_qos1_is_resent_with_dup_on_reconnect_4_4_0_1, Setup::Open, [V311, V5]);

/// MQTT-3.1.2-6, MQTT-3.2.2-1: a clean session discards the previous
/// session: no session present, no subscriptions, nothing queued.
async fn a_clean_session_discards_the_previous_session_3_1_2_6(addr: String, v: Version) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &persistent("fresh")).await;
    sub(&mut c, 1, &[("fresh/t", 1)]).await?;
    c.send(&wire::DISCONNECT).await;
    check!(c.closed_within(SOON).await, "closed after DISCONNECT");
    let mut p = accepted(&addr, v, "fresh-pub").await;
    publish1(&mut p, "fresh/t", b"queued", false, 1).await?;
    let (mut c, answer) = Conn::connect(&addr, v, &Connect::new("fresh")).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { code: 0, session_present: false, .. })),
        "CONNACK without session present, got {answer:?}"
    );
    publish1(&mut p, "fresh/t", b"later", false, 2).await?;
    nothing_delivered(&mut c, "nothing for the discarded session").await
}
case!(a_clean_session_discards_the_previous_session_3_1_2_6, Setup::Open, [V311, V5]);

/// A DISCONNECT with a Session Expiry Interval property (MQTT 5 only).
fn disconnect_with_expiry(expiry: u32) -> Vec<u8> {
    let mut d = vec![0xE0, 7, 0x00, 5, 0x11];
    d.extend_from_slice(&expiry.to_be_bytes());
    d
}

/// MQTT 5 3.14.2.2.2: the Session Expiry Interval in a DISCONNECT replaces
/// the one from the CONNECT; 0 ends the session with the connection.
async fn a_disconnect_with_session_expiry_0_ends_the_session_3_14_2_2_2(addr: String, v: Version) -> Outcome {
    let mut c = Conn::accepted(&addr, v, &persistent("short-lived")).await;
    sub(&mut c, 1, &[("short/t", 1)]).await?;
    c.send(&disconnect_with_expiry(0)).await;
    check!(c.closed_within(SOON).await, "closed after DISCONNECT");
    let mut p = accepted(&addr, v, "short-pub").await;
    publish1(&mut p, "short/t", b"nobody kept", false, 1).await?;
    let (mut c, answer) = Conn::connect(&addr, v, &persistent("short-lived")).await;
    check!(
        matches!(answer, Ok(Packet::ConnAck { code: 0, session_present: false, .. })),
        "CONNACK without session present, got {answer:?}"
    );
    nothing_delivered(&mut c, "nothing for the ended session").await
}
case!(a_disconnect_with_session_expiry_0_ends_the_session_3_14_2_2_2, Setup::Open, [V5]);

/// MQTT 5 3.14.2.2.2: a non-zero Session Expiry Interval in a DISCONNECT
/// after a CONNECT without one is a protocol error, not a valid
/// DISCONNECT: the will is published.
async fn a_disconnect_that_sets_an_expiry_the_connect_did_not_is_a_protocol_error_3_14_2_2_2(
    addr: String,
    v: Version,
) -> Outcome {
    let mut s = will_watcher(&addr, v).await?;
    let mut w = Conn::accepted(&addr, v, &with_will("late-expiry", 60)).await;
    w.send(&disconnect_with_expiry(60)).await;
    check!(w.closed_within(SOON).await, "the server closes the connection");
    let got = delivered(&mut s, SOON).await?;
    check!(payload_of(&got) == b"gone", "the will, got {got:?}");
    Ok(())
}
case!(a_disconnect_that_sets_an_expiry_the_connect_did_not_is_a_protocol_error_3_14_2_2_2, Setup::Open, [V5]);

/// MQTT 5 3.14.2.2.2: a DISCONNECT may change a non-zero expiry (here of
/// a client whose id the server assigned): a normal DISCONNECT, no will.
async fn a_disconnect_may_change_a_nonzero_session_expiry_3_14_2_2_2(addr: String, v: Version) -> Outcome {
    let mut s = will_watcher(&addr, v).await?;
    let c = Connect { session_expiry: Some(300), ..with_will("", 60) };
    let mut w = Conn::accepted(&addr, v, &c).await;
    w.send(&disconnect_with_expiry(60)).await;
    check!(w.closed_within(SOON).await, "the server closes the connection");
    nothing_delivered(&mut s, "no will after a valid DISCONNECT").await
}
case!(a_disconnect_may_change_a_nonzero_session_expiry_3_14_2_2_2, Setup::Open, [V5]);

// ------------------------------------------------------ protocol errors

/// MQTT-3.3.2-2 and MQTT-4.8.0-1 (v5: 4.13, DISCONNECT 0x90 allowed
/// first): a topic name with a wildcard is a protocol violation that
/// closes the connection.
async fn a_publish_topic_with_a_wildcard_closes_the_connection_3_3_2_2(addr: String, v: Version) -> Outcome {
    let mut c = accepted(&addr, v, "wild-pub").await;
    c.send(&publish(v, "bad/+/topic", b"x", 1, false, 1)).await;
    check!(c.closed_within(SOON).await, "still open after a PUBLISH to `bad/+/topic`");
    Ok(())
}
case!(a_publish_topic_with_a_wildcard_closes_the_connection_3_3_2_2, Setup::Open, [V311, V5]);

// --------------------------------------------------------------- MQTT 5

/// v5 MQTT-3.8.3-3: with No Local, a client's own publishes are not sent
/// back to it; other clients' are.
async fn no_local_subscriptions_skip_the_clients_own_publishes_v5_3_8_3_3(
    addr: String,
    v: Version,
) -> Outcome {
    let mut c = accepted(&addr, v, "no-local").await;
    sub(&mut c, 1, &[("nl/t", 0x01 | 0x04)]).await?;
    publish1(&mut c, "nl/t", b"mine", false, 2).await?;
    nothing_delivered(&mut c, "no copy of its own publish").await?;
    let mut other = accepted(&addr, v, "nl-other").await;
    publish1(&mut other, "nl/t", b"theirs", false, 1).await?;
    let got = delivered(&mut c, SOON).await?;
    check!(payload_of(&got) == b"theirs", "another client's publish, got {got:?}");
    Ok(())
}
case!(no_local_subscriptions_skip_the_clients_own_publishes_v5_3_8_3_3, Setup::Open, [V5]);
