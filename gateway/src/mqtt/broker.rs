//! Starting the embedded rumqttd broker from sluice's configuration.
//!
//! sluice does not use `rumqttd::Broker::start`: it starts the router and
//! one `rumqttd::Server` per listener itself, so each listener decodes
//! through [`Guarded`] (authentication and publish permissions).

use super::auth::Guard;
use super::guarded::Guarded;
use super::ingest::IngestLoop;
use super::MqttStats;
use crate::state::Shared;
use anyhow::Context as _;
use sluice_config::MqttConfig;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// rumqttd keeps every publish of a subscription filter in in-memory
/// segments; sluice's ingest link reads them as they arrive, so a few small
/// segments suffice. Size: 1 MiB or 4 payloads, whichever is larger.
pub(super) fn segment_size(max_payload: u64) -> usize {
    usize::try_from((4 * max_payload).max(1 << 20)).unwrap_or(usize::MAX)
}

/// Segments kept per filter (memory bound: this x [`segment_size`]).
const SEGMENT_COUNT: usize = 3;

/// The running MQTT side.
#[derive(Debug)]
pub struct MqttHandle {
    /// Address of the MQTT 3.1.1 listener.
    pub addr: SocketAddr,
    /// Address of the MQTT 5 listener, if configured.
    pub addr_v5: Option<SocketAddr>,
    /// Whether both listeners speak TLS (`[mqtt.tls]`).
    pub tls: bool,
    stop: Arc<AtomicBool>,
    ingest: JoinHandle<()>,
}

impl MqttHandle {
    /// Stops reading from the broker after draining what it already
    /// delivered. The broker itself keeps running until the process exits.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        if self.ingest.join().is_err() {
            tracing::error!("MQTT ingest thread panicked");
        }
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
        max_payload_size: usize::try_from(mqtt.max_payload.as_u64()).unwrap_or(usize::MAX),
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
            // One more than the listeners accept: the ingest link.
            max_connections: mqtt.max_connections as usize + 1,
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

/// Starts rumqttd and the ingest link; returns once the listeners accept
/// connections.
pub fn start(shared: &Shared, stats: Arc<MqttStats>) -> anyhow::Result<MqttHandle> {
    let mqtt = &shared.config.mqtt;
    // With TLS, sluice owns the public listeners and the broker listens on
    // loopback behind them (see tls_front).
    let fronts = super::tls_front::TlsFronts::bind(mqtt, stats.tls.clone())?;
    let (addr, addr_v5, public) = match &fronts {
        Some(fronts) => {
            let broker = fronts.broker_addrs()?;
            (broker[0], broker.get(1).copied(), fronts.addrs()?)
        }
        None => {
            let addr = reserve(mqtt.listen, "mqtt.listen")?;
            let addr_v5 = mqtt.listen_v5.map(|a| reserve(a, "mqtt.listen_v5")).transpose()?;
            (addr, addr_v5, std::iter::once(addr).chain(addr_v5).collect::<Vec<_>>())
        }
    };
    let _ = stats.ports.set(public.iter().map(|a| a.port()).collect());
    let guard = Guard::new(mqtt, stats.clone()).context("cannot start the MQTT password checker")?;
    if !guard.authenticates() {
        for a in public.iter().filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(listen = %a, "MQTT listener without authentication: any client that reaches it may publish and subscribe; configure [[mqtt.users]]");
        }
    }
    let mut config = rumqttd_config(mqtt, addr, addr_v5);
    let router_tx = rumqttd::Router::new(config.id, config.router.clone()).spawn();
    let (mut link_tx, link_rx, _ack) = rumqttd::local::LinkBuilder::new("sluice-ingest", router_tx.clone())
        .build()
        .context("cannot attach to the embedded broker")?;
    link_tx.subscribe("#").context("cannot subscribe the ingest link")?;
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
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let lp = IngestLoop::new(shared.clone(), stats, link_rx, stop.clone());
        std::thread::Builder::new().name("sluice-mqtt-in".into()).spawn(move || lp.run())?
    };
    wait_listening(addr, false)?;
    if let Some(a) = addr_v5 {
        wait_listening(a, true)?;
    }
    let tls = fronts.is_some();
    if let Some(fronts) = fronts {
        fronts.serve(&std::iter::once(addr).chain(addr_v5).collect::<Vec<_>>())?;
    }
    Ok(MqttHandle { addr: public[0], addr_v5: public.get(1).copied(), tls, stop, ingest })
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
