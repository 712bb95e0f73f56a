//! Starting the embedded rumqttd broker and sluice's front from the
//! configuration.
//!
//! sluice does not use `rumqttd::Broker::start`: it starts the router and
//! one `rumqttd::Server` per protocol version itself, on loopback ports,
//! so each decodes through [`Guarded`] (authentication, and publish
//! permissions for anything that reaches the broker without the front).
//! The public listeners belong to the front ([`super::front`]).

use super::auth::Guard;
use super::front::{Front, Listeners};
use super::guarded::Guarded;
use super::ingest::Intake;
use super::MqttStats;
use crate::state::Shared;
use anyhow::Context as _;
use sluice_config::MqttConfig;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// rumqttd keeps every publish of a subscription filter in in-memory
/// segments for live subscribers (sluice stores publishes through its
/// front, not from these), so a few small segments suffice. Size: 1 MiB or
/// 4 payloads, whichever is larger.
pub(super) fn segment_size(max_payload: u64) -> usize {
    usize::try_from((4 * max_payload).max(1 << 20)).unwrap_or(usize::MAX)
}

/// Segments kept per filter (memory bound: this x [`segment_size`]).
const SEGMENT_COUNT: usize = 3;

/// The running MQTT side.
#[derive(Debug)]
pub struct MqttHandle {
    /// Address of the public MQTT listener (3.1.1 and 5).
    pub addr: SocketAddr,
    /// Address of the second public listener (`mqtt.listen_v5`), if
    /// configured; it serves both protocol versions too.
    pub addr_v5: Option<SocketAddr>,
    /// Whether the public listeners speak TLS (`[mqtt.tls]`).
    pub tls: bool,
    stop: watch::Sender<bool>,
}

impl MqttHandle {
    /// Stops accepting connections. Open connections go on until the
    /// process exits; what they publish after the ingest pipeline closed is
    /// not acknowledged. The broker itself keeps running until then.
    pub fn stop(self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves port 0 to a free port (rumqttd binds inside its own threads
/// and cannot report the port it got) and checks the address is free.
pub fn reserve(addr: SocketAddr, field: &str) -> anyhow::Result<SocketAddr> {
    let probe =
        TcpListener::bind(addr).with_context(|| format!("cannot listen for MQTT on {addr} ({field})"))?;
    Ok(probe.local_addr()?)
}

fn server(name: &str, listen: SocketAddr, mqtt: &MqttConfig) -> rumqttd::ServerSettings {
    // Anonymous access: rumqttd's auth hook would refuse clients without a
    // username, so none is installed.
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        // The front enforces the limit; the broker gets what it passed.
        // Room for the trailer the front appends to every payload.
        max_payload_size: max_packet(mqtt) + super::packet::TRAILER,
        max_inflight_count: mqtt.max_inflight as usize,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    rumqttd::ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

/// The rumqttd settings sluice runs its embedded broker with, from the
/// `[mqtt]` section: the MQTT 3.1.1 listener on `addr`, optionally an
/// MQTT 5 one on `addr_v5`, small in-memory segments. One place, so
/// `sluice bench rumqttd` runs stock rumqttd with exactly these settings.
pub fn rumqttd_config(mqtt: &MqttConfig, addr: SocketAddr, addr_v5: Option<SocketAddr>) -> rumqttd::Config {
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // Room for the readiness probes next to the front's connections.
            max_connections: mqtt.max_connections as usize + 2,
            max_outgoing_packet_count: 200,
            max_segment_size: segment_size(mqtt.max_payload.as_u64()),
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server("mqtt-v4", addr, mqtt))])),
        v5: addr_v5.map(|a| HashMap::from([("1".to_owned(), server("mqtt-v5", a, mqtt))])),
        ..Default::default()
    }
}

/// Installs the external auth hook of `guard` on a listener (only when
/// users are configured: without a hook rumqttd lets every client in).
fn install_auth(connections: &mut rumqttd::ConnectionSettings, guard: &Arc<Guard>) {
    if guard.authenticates() {
        let guard = guard.clone();
        connections
            .set_auth_handler(move |client_id, _user, password| guard.clone().hook(client_id, password));
    }
}

/// Largest remaining length of a packet from a client: the payload limit
/// plus room for the topic and properties.
fn max_packet(mqtt: &MqttConfig) -> usize {
    usize::try_from(mqtt.max_payload.as_u64()).unwrap_or(usize::MAX).saturating_add(HEADER_ROOM)
}

/// Room for a PUBLISH's topic (at most 64 KiB) and properties.
const HEADER_ROOM: usize = (64 << 10) + 256;

/// Starts rumqttd on loopback and sluice's front on the public addresses;
/// returns once both accept connections.
pub fn start(shared: &Shared, stats: Arc<MqttStats>) -> anyhow::Result<MqttHandle> {
    let mqtt = &shared.config.mqtt;
    let listeners = Listeners::bind(mqtt, stats.listener.clone())?;
    let public = listeners.addrs()?;
    if let Some(tls) = listeners.tls_listener() {
        shared.tls_listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tls);
    }
    let _ = stats.ports.set(public.iter().map(|a| a.port()).collect());
    let guard = Guard::new(mqtt, stats.clone()).context("cannot start the MQTT password checker")?;
    let _ = shared.mqtt_guard.set(guard.clone());
    if !guard.authenticates() {
        for a in public.iter().filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(listen = %a, "MQTT listener without authentication: any client that reaches it may publish and subscribe; configure [[mqtt.users]]");
        }
    }
    let router_tx = {
        let config = rumqttd_config(mqtt, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), None);
        rumqttd::Router::new(config.id, config.router).spawn()
    };
    // One listener after the other, each on a port nobody holds right now:
    // rumqttd binds by address, so a port chosen here can still be taken
    // by someone else before it binds; then it is chosen again.
    let run = |settings: rumqttd::ServerSettings, v5: bool, failed: Sender<String>| {
        let router_tx = router_tx.clone();
        let guard = guard.clone();
        let name = settings.name.clone();
        std::thread::Builder::new().name(name.clone()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = failed.send(format!("cannot start its runtime: {e}"));
                    return;
                }
            };
            let result = runtime.block_on(async move {
                if v5 {
                    let p = Guarded::new(rumqttd::protocol::v5::V5, guard);
                    rumqttd::Server::new(settings, router_tx, p).start(rumqttd::LinkType::Remote).await
                } else {
                    let p = Guarded::new(rumqttd::protocol::v4::V4, guard);
                    rumqttd::Server::new(settings, router_tx, p).start(rumqttd::LinkType::Remote).await
                }
            });
            if let Err(e) = result {
                tracing::error!(error = %e, listener = name, "embedded MQTT listener stopped");
                let _ = failed.send(e.to_string());
            }
        })
    };
    let broker_v4 = spawn_listener(mqtt, false, &guard, &run)?;
    let broker_v5 = spawn_listener(mqtt, true, &guard, &run)?;
    let front = Arc::new(Front {
        intake: Intake::new(shared.clone(), stats),
        guard,
        broker_v4,
        broker_v5,
        max_packet: max_packet(mqtt),
        interest: Default::default(),
        connections: Default::default(),
        sessions: Default::default(),
    });
    let (stop, stopped) = watch::channel(false);
    super::front::expire_sessions(front.clone(), stopped.clone());
    let tls = listeners.tls();
    listeners.serve(front, &stopped)?;
    Ok(MqttHandle { addr: public[0], addr_v5: public.get(1).copied(), tls, stop })
}

/// Bind attempts for one embedded listener before giving up.
const BIND_ATTEMPTS: u32 = 5;

/// Starts one embedded rumqttd listener (MQTT 3.1.1 or 5) on a free
/// loopback port and returns its address once it answers a CONNECT;
/// `run` starts the listener's thread, which reports on the sender when
/// it stops.
fn spawn_listener(
    mqtt: &MqttConfig,
    v5: bool,
    guard: &Arc<Guard>,
    run: &dyn Fn(
        rumqttd::ServerSettings,
        bool,
        Sender<String>,
    ) -> std::io::Result<std::thread::JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let name = if v5 { "mqtt-v5" } else { "mqtt-v4" };
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let addr = reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), name)?;
        let mut settings = server(name, addr, mqtt);
        install_auth(&mut settings.connections, guard);
        let (failed_tx, failed) = std::sync::mpsc::channel::<String>();
        run(settings, v5, failed_tx)?;
        match wait_ready(addr, v5, Some(&failed)) {
            Ok(()) => return Ok(addr),
            Err(e) => {
                tracing::warn!(listener = name, %addr, error = %e, "embedded MQTT listener did not start; trying another port");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
        .with_context(|| format!("the embedded MQTT broker ({name}) could not listen on loopback"))
}

/// rumqttd reports a failed bind only in its logs: wait until it answers
/// an MQTT CONNECT.
pub fn wait_listening(addr: SocketAddr, v5: bool) -> anyhow::Result<()> {
    wait_ready(addr, v5, None)
}

/// [`wait_listening`], giving up early when the listener's thread reports
/// on `failed` that it stopped (a port taken in the meantime).
fn wait_ready(addr: SocketAddr, v5: bool, failed: Option<&Receiver<String>>) -> anyhow::Result<()> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        // A fresh client id per attempt: rumqttd 0.20 panics (and poisons
        // the listener) when a client id comes back after a connection of
        // that id failed half-way, and the two listeners share one router.
        let id = format!("sluice-readiness-probe-{}-{attempt}", target.port());
        let answered = probe(target, v5, &id).is_ok();
        // Asked after the probe: whatever answered it, a listener that
        // reported its bind failed is not the one that did.
        if let Some(Ok(why)) = failed.map(Receiver::try_recv) {
            anyhow::bail!("the embedded MQTT listener on {addr} stopped: {why}");
        }
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the embedded MQTT broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One MQTT CONNECT / CONNACK / DISCONNECT exchange (clean session, client
/// id `id`).
fn probe(target: SocketAddr, v5: bool, id: &str) -> std::io::Result<()> {
    let id = id.as_bytes();
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, 0x02, 0, 10];
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream.write_all(&packet)?;
    let mut ack = [0u8; 2];
    stream.read_exact(&mut ack)?;
    if ack[0] != 0x20 {
        return Err(std::io::Error::other("not a CONNACK"));
    }
    let mut rest = vec![0u8; usize::from(ack[1])];
    stream.read_exact(&mut rest)?;
    stream.write_all(if v5 { &[0xE0, 0x01, 0x00] } else { &[0xE0, 0x00] })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A listener whose port was taken before it bound is started again on
    /// another port, and the address returned is the one that answers.
    #[test]
    fn a_listener_that_cannot_bind_is_started_on_another_port() {
        let mqtt = MqttConfig::default();
        let guard = Guard::new(&mqtt, Arc::default()).expect("guard");
        let tried = Mutex::new(Vec::new());
        let run = |settings: rumqttd::ServerSettings, _v5: bool, failed: Sender<String>| {
            let first = {
                let mut tried = tried.lock().expect("lock");
                tried.push(settings.listen);
                tried.len() == 1
            };
            std::thread::Builder::new().spawn(move || {
                if first {
                    let _ = failed.send("I/O Address already in use (os error 98)".to_owned());
                    return;
                }
                // Answers one CONNECT with a CONNACK, like rumqttd.
                let listener = TcpListener::bind(settings.listen).expect("bind");
                let (mut stream, _) = listener.accept().expect("accept");
                let mut connect = [0u8; 2];
                stream.read_exact(&mut connect).expect("fixed header");
                let mut body = vec![0u8; usize::from(connect[1])];
                stream.read_exact(&mut body).expect("body");
                stream.write_all(&[0x20, 0x02, 0x00, 0x00]).expect("connack");
            })
        };
        let addr = spawn_listener(&mqtt, false, &guard, &run).expect("started on the second attempt");
        let tried = tried.into_inner().expect("lock");
        assert_eq!(tried.len(), 2, "one failed attempt, one that answered: {tried:?}");
        assert_eq!(addr, tried[1]);
    }

    /// A listener that never binds gives up with an error naming why.
    #[test]
    fn a_listener_that_never_binds_says_why() {
        let mqtt = MqttConfig::default();
        let guard = Guard::new(&mqtt, Arc::default()).expect("guard");
        let run = |_: rumqttd::ServerSettings, _v5: bool, failed: Sender<String>| {
            std::thread::Builder::new().spawn(move || {
                let _ = failed.send("I/O Address already in use (os error 98)".to_owned());
            })
        };
        let err = spawn_listener(&mqtt, true, &guard, &run).expect_err("no attempt can work");
        let text = format!("{err:#}");
        assert!(text.contains("mqtt-v5") && text.contains("Address already in use"), "{text}");
    }
}
