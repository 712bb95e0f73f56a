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
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let broker_v4 = reserve(loopback, "mqtt.listen")?;
    let broker_v5 = reserve(loopback, "mqtt.listen_v5")?;
    let mut config = rumqttd_config(mqtt, broker_v4, Some(broker_v5));
    let router_tx = rumqttd::Router::new(config.id, config.router.clone()).spawn();
    for (mut settings, v5) in config
        .v4
        .take()
        .into_iter()
        .flat_map(HashMap::into_values)
        .map(|s| (s, false))
        .chain(config.v5.take().into_iter().flat_map(HashMap::into_values).map(|s| (s, true)))
    {
        install_auth(&mut settings.connections, &guard);
        let name = settings.name.clone();
        let router_tx = router_tx.clone();
        let guard = guard.clone();
        std::thread::Builder::new().name(name.clone()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return tracing::error!(error = %e, listener = name, "cannot start MQTT listener"),
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
            }
        })?;
    }
    wait_listening(broker_v4, false)?;
    wait_listening(broker_v5, true)?;
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

/// rumqttd reports a failed bind only in its logs: wait until it answers
/// an MQTT CONNECT.
pub fn wait_listening(addr: SocketAddr, v5: bool) -> anyhow::Result<()> {
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
        if probe(target, v5, &id).is_ok() {
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
