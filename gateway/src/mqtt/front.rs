//! sluice's MQTT front: it owns the public MQTT listeners (plain or TLS)
//! and stands between each client and the embedded broker, which listens
//! on loopback only.
//!
//! Why: rumqttd acknowledges a QoS 1 publish when its router receives it,
//! and the router's in-memory log can drop publishes before a reader of it
//! sees them (measured: 22.5% of acknowledged publishes lost with 100
//! connections at full speed, through a `#` subscription). Here sluice
//! reads every PUBLISH itself, queues it for the log, and sends the PUBACK
//! (PUBREC for QoS 2) itself, in the order the publishes came in, once the
//! records are appended, or durable for a `sync` service. The broker gets
//! each publish as well, for live subscribers and retained messages; its
//! own acknowledgements are dropped on the way back.
//!
//! ```text
//! client ──► reader ──PUBLISH──► Intake (queues, scheduler) ──► writer thread
//!              │   └─ack batch─► acker: waits for stored, in order ──┐
//!              └─every packet (QoS 2 as QoS 1)─► broker (loopback)   │
//! client ◄── writer ◄── outbox ◄── broker's packets (minus its PUBACKs)─┘
//! ```
//!
//! What goes back to a client goes through its [`Outbox`]: control
//! packets first, publishes in the priority of their services, QoS 1
//! delivered by sluice within a window sized in time (see [`super::outbox`]
//! for the design and its limits). The client's PUBACKs of sluice's packet
//! ids end at the front; the broker's QoS 1 publishes are acknowledged to it
//! as they are read (every session at the broker is clean). Whatever the broker sends is read at once, so its
//! per-connection queue (first in, first out) stays empty.
//!
//! Per connection:
//! - the CONNECT decides the broker listener (3.1.1 or 5: both protocol
//!   versions on every public port); keep-alive 0 ("no keep-alive", which
//!   MQTT allows and rumqttd refuses) reaches the broker as 65535 s;
//! - nothing after the CONNECT is read before the broker's CONNACK, so
//!   publishes are checked against the publish filters of the user the
//!   broker authenticated;
//! - QoS 2 is completed by sluice (PUBREC once stored, PUBCOMP on PUBREL);
//!   a re-sent QoS 2 publish whose PUBREL is pending is not stored twice;
//! - publishes outside the user's filters are neither stored nor passed
//!   on: MQTT 5 gets reason 0x87, 3.1.1 a PUBACK (MQTT-3.3.5-2), counted;
//! - subscriptions outside the user's subscribe filters, and to `$`
//!   filters (rumqttd would close the connection), are taken out of the
//!   SUBSCRIBE and answered 0x80 (MQTT 5: 0x87) in the SUBACK;
//! - UNSUBSCRIBE is answered by sluice with one UNSUBACK, once the broker
//!   processed it (rumqttd answers per removed filter, and not at all for
//!   a filter that was not subscribed);
//! - an unsupported protocol level gets CONNACK 0x01, a PUBLISH topic with
//!   a wildcard closes the connection (MQTT-3.1.2-2, MQTT-3.3.2-2);
//! - when the connection ends without DISCONNECT, its will message is
//!   stored (the broker publishes it to live subscribers);
//! - a persistent session (3.1.1 clean session 0, MQTT 5 session expiry)
//!   is sluice's, served from the log ([`super::sessions`]): the broker
//!   gets the CONNECT with clean session 1, the client a CONNACK with
//!   session present when sluice kept its session, and the broker's
//!   deliveries of stored publishes to it are dropped (the log delivers
//!   them, in priority order, also after a restart);
//! - before the end of a connection (DISCONNECT or close) reaches the
//!   broker, the front sends it a PINGREQ and waits for the PINGRESP (at
//!   most 2 s): rumqttd drops the publishes it reads in one batch with the
//!   end of a connection, so a publisher that disconnected right after its
//!   PUBACKs lost its last publishes for live subscribers (measured: 31 to
//!   68 of a burst of 3000).

use super::auth::{Acl, Guard};
use super::ingest::{Gather, Intake, NotStored, Pending, Refused};
use super::interest::{Delivery, Sub, Subs};
use super::outbox::{self, Next, Outbox, Setup, WRITE_BATCH};
use super::packet::{self, kind, reason, PacketError};
use super::route::Drop;
use super::sessions::{Reader, Sessions, Stop, Stored, StoredSub};
use crate::listener::{Gate, ListenerStats, TlsListener};
use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use sluice_config::MqttConfig;
use sluice_store::scheduler::ServiceId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a client has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to answer a CONNECT (password checks
/// included).
const CONNACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes gathered into one set of jobs, at most (bytes).
const MAX_GATHER: u64 = 256 << 10;
/// Batches of publishes awaiting their acknowledgements per connection;
/// when full, the connection is not read (bounds memory per connection).
const ACK_WINDOW: usize = 16;
/// Read buffer per direction of a connection, to start with: small, so
/// thousands of idle sensors cost little; it doubles while reads fill it,
/// up to [`READ_MAX`].
const READ_BUF: usize = 2 << 10;
/// Largest read buffer growth step.
const READ_MAX: usize = 64 << 10;

/// Reads into `buf`, making room first: as much again as the buffer holds
/// (between [`READ_BUF`] and [`READ_MAX`]) when less than a quarter of that
/// is free.
async fn read_more<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    let step = buf.capacity().clamp(READ_BUF, READ_MAX);
    if buf.capacity() - buf.len() < step / 4 {
        buf.reserve(step);
    }
    rd.read_buf(buf).await
}

/// What the front needs to serve connections.
#[derive(Debug)]
pub(super) struct Front {
    pub(super) intake: Intake,
    pub(super) guard: Arc<Guard>,
    /// Loopback listener of the broker for MQTT 3.1 / 3.1.1.
    pub(super) broker_v4: SocketAddr,
    /// Loopback listener of the broker for MQTT 5.
    pub(super) broker_v5: SocketAddr,
    /// Largest remaining length accepted from a client.
    pub(super) max_packet: usize,
    /// What live subscribers could want: the broker gets only that.
    pub(super) interest: super::interest::Interest,
    /// Numbers connections, for the origin in payload trailers.
    pub(super) connections: std::sync::atomic::AtomicU64,
    /// Persistent sessions, served from the log.
    pub(super) sessions: Arc<Sessions>,
}

/// How often sessions whose clients stayed away too long are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Forgets expired persistent sessions, at start and every minute.
pub(super) fn expire_sessions(front: Arc<Front>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let f = front.clone();
            let _ = tokio::task::spawn_blocking(move || f.sessions.expire(f.intake.shared())).await;
            tokio::select! {
                _ = tokio::time::sleep(EXPIRE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// The bound public listeners, before they serve.
#[derive(Debug)]
pub(super) struct Listeners {
    tls: Option<TlsListener>,
    listeners: Vec<std::net::TcpListener>,
    gate: Gate,
}

impl Listeners {
    /// Binds `mqtt.listen` (and `listen_v5`), and reads the TLS files when
    /// `[mqtt.tls]` is configured.
    pub(super) fn bind(mqtt: &MqttConfig, stats: Arc<ListenerStats>) -> anyhow::Result<Listeners> {
        let tls = mqtt.tls.as_ref().map(|tls| TlsListener::new(tls, "mqtt.tls", &[b"mqtt"])).transpose()?;
        let mut listeners = vec![bind(mqtt.listen, "mqtt.listen")?];
        if let Some(v5) = mqtt.listen_v5 {
            listeners.push(bind(v5, "mqtt.listen_v5")?);
        }
        Ok(Listeners { tls, listeners, gate: Gate::new(mqtt.max_connections, stats) })
    }

    /// Whether the listeners speak TLS.
    pub(super) fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Their TLS (shared with the listeners: a reload reaches them).
    pub(super) fn tls_listener(&self) -> Option<TlsListener> {
        self.tls.clone()
    }

    /// The public addresses: `listen`, then `listen_v5` if configured.
    pub(super) fn addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|l| Ok(l.local_addr()?)).collect()
    }

    /// Serves every listener until `stop` turns true.
    pub(super) fn serve(self, front: Arc<Front>, stop: &watch::Receiver<bool>) -> anyhow::Result<()> {
        for listener in self.listeners {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            let (tls, gate, front, stop) = (self.tls.clone(), self.gate.clone(), front.clone(), stop.clone());
            tokio::spawn(accept_loop(listener, tls, gate, front, stop));
        }
        Ok(())
    }
}

fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for MQTT on {addr} ({field})"))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsListener>,
    gate: Gate,
    front: Arc<Front>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer, admitted) = tokio::select! {
            accepted = gate.accept(&listener, "mqtt.max_connections") => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tls, stats, front) = (tls.clone(), gate.stats().clone(), front.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            let _ = tcp.set_nodelay(true);
            // A handle on the same socket, to size its send buffer.
            let sock = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok().map(socket2::Socket::from);
            if let Some(sock) = &sock {
                // Small from the start (Linux would grow it to MiBs): what
                // waits for the client waits in its outbox, in order.
                let _ = sock.set_send_buffer_size(SendBuffer::START);
            }
            let result = match tls {
                Some(tls) => match tls.accept(tcp, peer, &stats).await {
                    Some(stream) => session(stream, &front, sock).await,
                    None => return,
                },
                None => session(tcp, &front, sock).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "MQTT connection ended");
            }
        });
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
}

/// QoS 2 packet ids answered with PUBREC and awaiting PUBREL; shared with
/// the acker, which closes an exchange whose PUBREC says failure.
type Qos2 = Arc<Mutex<HashSet<u16>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Filters kept per SUBSCRIBE packet id (see [`Conn::subscribe`]).
type Subacks = Arc<Mutex<HashMap<u16, Vec<bool>>>>;

/// How an acknowledgement is decided.
#[derive(Debug, Clone)]
enum Status {
    /// At once, with this reason code (0: success).
    Now(u8),
    /// At once, these bytes (a SUBACK sluice answers itself).
    Packet(Bytes),
    /// When group `n` of the batch is stored (or not).
    Group(usize),
}

#[derive(Debug)]
struct Ack {
    kind: u8,
    pkid: u16,
    status: Status,
}

/// The acknowledgements of one read, and the groups they wait for.
#[derive(Debug)]
struct AckBatch {
    acks: Vec<Ack>,
    groups: Vec<Result<Pending, Refused>>,
}

/// How the client's side ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// DISCONNECT: no will (unless MQTT 5 reason 0x04 asks for it); an
    /// MQTT 5 one may change the session's expiry (3.14.2.2.2).
    Disconnect { with_will: bool, session_expiry: Option<u32> },
    /// The client closed, the broker closed, or an error: the will applies.
    Lost,
}

async fn session<S>(stream: S, front: &Arc<Front>, sock: Option<socket2::Socket>) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut rd, &mut buf, front.max_packet))
        .await
        .map_err(|_| SessionError::ConnectTimeout(CONNECT_TIMEOUT))??
        .ok_or(SessionError::Protocol("closed before CONNECT"))?;
    if packet::kind_of(&first) != kind::CONNECT {
        return Err(SessionError::Protocol("first packet is not CONNECT"));
    }
    let mut connect = packet::connect(&first)?;
    if connect.client_id.is_empty() {
        // The broker assigns an MQTT 5 client an id: nothing to resume by.
        connect.persistent = false;
    }
    if !(3..=5).contains(&connect.level) {
        // MQTT-3.1.2-2: CONNACK 0x01 "unacceptable protocol level", then
        // the connection is closed.
        let mut wr = wr;
        wr.write_all(&[kind::CONNACK << 4, 2, 0, 1]).await?;
        let _ = wr.shutdown().await;
        return Err(SessionError::Protocol("unsupported MQTT protocol level"));
    }
    if !connect.v5() && !connect.clean && connect.client_id.is_empty() {
        // MQTT-3.1.3-8: a persistent session needs a client id; CONNACK
        // 0x02 "identifier rejected" (the broker, which gets a clean
        // session, would accept it).
        let mut wr = wr;
        wr.write_all(&[kind::CONNACK << 4, 2, 0, 2]).await?;
        let _ = wr.shutdown().await;
        return Err(SessionError::Protocol("empty client id with a persistent session"));
    }
    let backend = TcpStream::connect(if connect.v5() { front.broker_v5 } else { front.broker_v4 }).await?;
    let _ = backend.set_nodelay(true);
    let (br, bw) = backend.into_split();
    let origin = front.connections.fetch_add(1, Ordering::Relaxed);
    let shared = front.intake.shared().clone();
    // sluice keeps persistent sessions (served from the log); the broker
    // gets a clean one (below, once the CONNECT is accepted).
    let persistent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hello = BytesMut::from(&first[..]);
    packet::connect_clean(&mut hello, &connect);
    if connect.keep_alive == 0 {
        // rumqttd refuses keep-alive 0; the longest one it accepts is the
        // closest thing to "none".
        hello[connect.keep_alive_at..connect.keep_alive_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    }
    let hello = match &connect.will {
        // The broker publishes the will: with a trailer, like every
        // publish it gets.
        Some(will) => packet::connect_with_will_trailer(
            &hello,
            will.end,
            will.payload.len(),
            &packet::trailer(will.qos, origin),
        ),
        None => hello.freeze(),
    };
    let mut bw = BrokerWriter::spawn(bw);
    bw.write(hello).await?;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mqtt = &shared.config.mqtt;
    let outbox = Arc::new(Outbox::new(
        shared.services.clone(),
        Setup {
            mode: shared.ingest_mode(),
            express_max_share: shared.config.scheduler.express_max_share,
            limit: mqtt.delivery_queue.as_u64(),
            target: mqtt.delivery_target_delay,
            max_window: (mqtt.max_inflight as usize).min(usize::from(connect.receive_max)),
            own_qos1: true,
        },
    ));
    let (connack_tx, connack_rx) = oneshot::channel();
    let subacks = Arc::new(Mutex::new(HashMap::new()));
    let pings = Arc::new(Pings::default());
    let subs = Arc::new(Subs::default());
    let writer =
        tokio::spawn(write_loop(wr, outbox.clone(), stop_tx.clone(), (sock, mqtt.delivery_target_delay)));
    let from_broker = tokio::spawn(broker_loop(
        br,
        (outbox.clone(), bw.acks.clone()),
        connack_tx,
        stop_tx.clone(),
        (front.clone(), connect.level, subacks.clone(), pings.clone()),
        (subs.clone(), origin, persistent.clone()),
    ));
    let connack = match tokio::time::timeout(CONNACK_TIMEOUT, connack_rx).await {
        Ok(Ok(Some(connack))) => Some(connack),
        _ => None,
    };
    // The session is this connection's from here until its reader saved
    // it: the broker already ended an older connection of the client id,
    // whose reader saves first; a clean connection waits the same way.
    let held = match connack {
        Some(_) => tokio::time::timeout(CONNACK_TIMEOUT, front.sessions.hold(&connect.client_id)).await.ok(),
        None => None,
    };
    let (Some(connack), Some(held)) = (connack, held) else {
        // The broker's CONNACK (a refusal) is on its way to the client; the
        // broker closes the connection, which ends both tasks. (Or the
        // session stayed held by another connection: closed, the client
        // connects again.)
        bw.close().await;
        let _ = tokio::time::timeout(CONNACK_TIMEOUT, from_broker).await;
        outbox.finish();
        let _ = writer.await;
        return Ok(());
    };
    let (acks_tx, acks_rx) = mpsc::channel::<AckBatch>(ACK_WINDOW);
    let qos2: Qos2 = Arc::new(Mutex::new(HashSet::new()));
    let acker = tokio::spawn(ack_loop(
        acks_rx,
        outbox.clone(),
        front.clone(),
        (connect.v5(), qos2.clone()),
        stop_tx.clone(),
    ));
    let (acl, subscribe_acl) = front.guard.acls_for(connect.username.as_deref());
    // A reload that removes this connection's user closes it.
    let removed_watch = match connect
        .username
        .clone()
        .filter(|u| !u.is_empty() && front.guard.authenticates())
    {
        Some(user) => {
            let (guard, stop) = (front.guard.clone(), stop_tx.clone());
            let mut generation = guard.watch_users();
            Some(tokio::spawn(async move {
                while generation.changed().await.is_ok() {
                    if !guard.has_user(&user) {
                        guard.stats.closed_removed_user.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(
                            user,
                            "MQTT user removed by a configuration reload: closing its connection"
                        );
                        let _ = stop.send(true);
                        break;
                    }
                }
            }))
        }
        None => None,
    };
    let mut conn = Conn {
        front: front.clone(),
        level: connect.level,
        acl,
        subscribe_acl,
        subacks,
        user: connect.username.clone(),
        aliases: HashMap::new(),
        qos2: qos2.clone(),
        outbox: outbox.clone(),
        pings: pings.clone(),
        subs: subs.clone(),
        origin,
        client_id: connect.client_id.clone(),
        session: None,
        zero_expiry: connect.v5() && connect.session_expiry.unwrap_or(0) == 0,
    };
    let (reader_stop, reader_stopped) = watch::channel(None);
    // What was stored of the session, unless it expired, the client starts
    // clean (MQTT-3.1.2-6), or another user made it.
    let mut stored = front.sessions.read(&shared, &connect.client_id);
    let discard = stored
        .as_ref()
        .is_some_and(|s| connect.clean || super::sessions::is_expired(s) || s.user != connect.username);
    if discard {
        front.sessions.discard(&shared, &connect.client_id).await;
        stored = None;
    }
    // MQTT 5 clean start 0 without expiry resumes a stored session, which
    // ends with this connection.
    let keep = connect.persistent || (connect.v5() && stored.is_some());
    let present = keep && stored.is_some();
    persistent.store(keep, Ordering::Release);
    // Nothing after the CONNECT was read yet: the CONNACK goes first.
    outbox.control(if present { packet::connack_session_present(&connack) } else { connack });
    let reader = if keep {
        // Kept for at most `mqtt.session_expiry` once the connection ends.
        let cap = mqtt.session_expiry.as_secs();
        let expiry_s = match connect.session_expiry {
            _ if !connect.persistent => 0,
            Some(e) => u64::from(e).min(cap),
            None => cap,
        };
        let mut stored = stored.unwrap_or_default();
        stored.expiry_s = expiry_s;
        stored.away_since_ms = None;
        stored.user.clone_from(&connect.username);
        // Subscriptions the user may no longer make (a reload) are dropped.
        stored.subs.retain(|s| conn.subscribe_acl.as_ref().is_none_or(|acl| acl.covers(&s.filter)));
        for s in &stored.subs {
            subs.set(Sub { filter: s.filter.as_str().into(), qos: s.qos, no_local: s.no_local });
            front.interest.add(&s.filter, true);
        }
        if !stored.subs.is_empty() {
            front.intake.stats().track_session(origin, &connect.client_id, &outbox);
        }
        front.sessions.save(&shared, &connect.client_id, &stored).await;
        conn.session = Some(stored.clone());
        let reader = Reader {
            shared: shared.clone(),
            sessions: front.sessions.clone(),
            router: front.intake.router().clone(),
            client_id: connect.client_id.clone(),
            level: connect.level,
            subs: subs.clone(),
            outbox: outbox.clone(),
        };
        Some(tokio::spawn(reader.run(held, stored, reader_stopped)))
    } else {
        front.sessions.release(&connect.client_id, held);
        None
    };
    let ending = conn.pump(&mut rd, &mut buf, &mut bw, &acks_tx, &mut stop_rx).await;
    if let Some(w) = removed_watch {
        w.abort();
    }
    let will_applies = match &ending {
        Ok(Ending::Disconnect { with_will, .. }) => *with_will,
        Ok(Ending::Lost) | Err(_) => true,
    };
    if let (true, Some(will)) = (will_applies, &connect.will) {
        conn.store_will(will, &acks_tx).await;
    }
    drop(acks_tx);
    // Everything read so far is stored or refused before the broker hears
    // that the client is gone.
    let _ = acker.await;
    // The session's reader stops queueing, commits its place, stores what
    // was sent (and the expiry the DISCONNECT set, capped as at CONNECT)
    // and lets go of the session (a newer connection waits).
    let expiry_s = match &ending {
        Ok(Ending::Disconnect { session_expiry: Some(e), .. }) => {
            Some(u64::from(*e).min(mqtt.session_expiry.as_secs()))
        }
        _ => None,
    };
    let _ = reader_stop.send(Some(Stop { expiry_s }));
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    if !matches!(ending, Ok(Ending::Disconnect { .. })) && !from_broker.is_finished() {
        bw.barrier(&pings).await;
    }
    bw.close().await;
    let _ = stop_tx.send(true);
    let _ = from_broker.await;
    outbox.finish();
    let _ = writer.await;
    for f in subs.filters() {
        front.interest.remove(&f, keep);
    }
    front.intake.stats().untrack_session(origin);
    ending.map(|_| ())
}

/// Reads until one whole frame is buffered; `None` on a clean EOF.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, SessionError> {
    loop {
        if let Some(frame) = packet::next_frame(buf, max)? {
            return Ok(Some(frame));
        }
        if read_more(rd, buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The client-to-broker side of one connection.
struct Conn {
    front: Arc<Front>,
    level: u8,
    acl: Option<Arc<Acl>>,
    /// Subscribe filters; `None` allows every subscription.
    subscribe_acl: Option<Arc<Acl>>,
    /// SUBSCRIBEs passed on without some of their filters: which were kept,
    /// by packet id, for the broker loop to merge the SUBACK.
    subacks: Subacks,
    user: Option<String>,
    /// MQTT 5 topic aliases the client set up.
    aliases: HashMap<u16, Bytes>,
    /// QoS 2 packet ids stored and answered with PUBREC, awaiting PUBREL.
    qos2: Qos2,
    /// What goes back to the client (it takes the PUBACKs of sluice's own
    /// QoS 1 deliveries).
    outbox: Arc<Outbox>,
    /// sluice's own pings of the broker.
    pings: Arc<Pings>,
    /// This session's subscriptions (their filters are counted in the
    /// front's [`Interest`](super::interest::Interest)).
    subs: Arc<Subs>,
    /// This connection's number, in the trailer of what it publishes.
    origin: u64,
    /// Its client id, for the per-session lag metrics.
    client_id: String,
    /// A persistent session: as stored (its subscriptions are saved before
    /// the broker gets the SUBSCRIBE, so before the SUBACK).
    session: Option<Stored>,
    /// An MQTT 5 CONNECT without a session expiry: a DISCONNECT may not
    /// set one.
    zero_expiry: bool,
}

impl Conn {
    fn v5(&self) -> bool {
        self.level == 5
    }

    async fn pump<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        bw: &mut BrokerWriter,
        acks_tx: &mpsc::Sender<AckBatch>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ending, SessionError> {
        let max = self.front.max_packet;
        loop {
            let mut gather = Gather::default();
            let mut to_broker = BytesMut::new();
            let mut acks = Vec::new();
            let mut ending = None;
            let mut disconnect = None;
            let mut more = false;
            let mut save_session = false;
            while !more {
                more = gather.bytes() >= MAX_GATHER;
                let Some(frame) = packet::next_frame(buf, max)? else { break };
                match packet::kind_of(&frame) {
                    kind::PUBLISH => self.publish(&frame, &mut gather, &mut to_broker, &mut acks)?,
                    kind::PUBREL => {
                        let pkid = packet::pkid_of(&frame).ok_or(SessionError::Protocol("short PUBREL"))?;
                        let code = if lock(&self.qos2).remove(&pkid) { 0 } else { reason::PKID_NOT_FOUND };
                        acks.push(Ack { kind: kind::PUBCOMP, pkid, status: Status::Now(code) });
                    }
                    kind::SUBSCRIBE => save_session |= self.subscribe(&frame, &mut to_broker, &mut acks)?,
                    kind::UNSUBSCRIBE => {
                        // The UNSUBACK goes out once the broker processed
                        // the UNSUBSCRIBE: after it, nothing more is
                        // delivered for those filters (MQTT-3.10.4-1).
                        let unsub = packet::unsubscribe(&frame, self.level)?;
                        for f in &unsub.filters {
                            let f = String::from_utf8_lossy(f);
                            if self.subs.remove(&f) {
                                self.front.interest.remove(&f, self.session.is_some());
                                save_session = true;
                            }
                        }
                        let unsuback = unsub.unsuback(self.level);
                        to_broker.extend_from_slice(&frame);
                        to_broker.extend_from_slice(&[kind::PINGREQ << 4, 0]);
                        self.pings.sent(Some(unsuback));
                    }
                    kind::PUBACK => {
                        // sluice's own QoS 1 deliveries end here.
                        let pkid = packet::pkid_of(&frame);
                        if !pkid.is_some_and(|pkid| self.outbox.acked(pkid)) {
                            to_broker.extend_from_slice(&frame);
                        }
                    }
                    kind::CONNECT => return Err(SessionError::Protocol("second CONNECT")),
                    kind::DISCONNECT => {
                        // MQTT 5 reason 0x04: "disconnect with will message".
                        let with_will = self.v5() && packet::disconnect_reason(&frame) == 0x04;
                        let session_expiry =
                            if self.v5() { packet::disconnect_session_expiry(&frame)? } else { None };
                        if self.zero_expiry && session_expiry.is_some_and(|e| e > 0) {
                            // Not a valid DISCONNECT: the will applies.
                            return Err(SessionError::Protocol(
                                "DISCONNECT sets a session expiry after CONNECT set none (MQTT-3.14.2-2)",
                            ));
                        }
                        // The broker's session is always clean: it does
                        // not get the expiry.
                        disconnect = Some(match (session_expiry, packet::disconnect_reason(&frame)) {
                            (None, _) => frame,
                            (Some(_), 0) => Bytes::from_static(&[kind::DISCONNECT << 4, 0]),
                            (Some(_), code) => Bytes::copy_from_slice(&[kind::DISCONNECT << 4, 2, code, 0]),
                        });
                        ending = Some(Ending::Disconnect { with_will, session_expiry });
                        break;
                    }
                    _ => to_broker.extend_from_slice(&frame),
                }
            }
            if !gather.is_empty() || !acks.is_empty() {
                let groups = self.front.intake.submit(gather).await;
                if acks_tx.send(AckBatch { acks, groups }).await.is_err() {
                    return Ok(Ending::Lost);
                }
            }
            if save_session {
                // Durable before the broker answers the SUBSCRIBE.
                if self.session.is_some() {
                    let subs = self
                        .subs
                        .all()
                        .into_iter()
                        .map(|s| StoredSub { filter: s.filter.into(), qos: s.qos, no_local: s.no_local })
                        .collect();
                    self.front.sessions.save_subs(self.front.intake.shared(), &self.client_id, subs).await;
                }
            }
            if !to_broker.is_empty() {
                bw.write(to_broker.freeze()).await?;
            }
            if let Some(frame) = disconnect {
                // The broker drops publishes it read together with the end
                // of the connection: they reach it first.
                bw.barrier(&self.pings).await;
                bw.write(frame).await?;
            }
            if let Some(ending) = ending {
                return Ok(ending);
            }
            if more {
                // The gather filled up: the rest of the buffer first.
                continue;
            }
            tokio::select! {
                n = read_more(rd, buf) => if n? == 0 { return Ok(Ending::Lost) },
                _ = stop.wait_for(|s| *s) => return Ok(Ending::Lost),
            }
        }
    }

    fn publish(
        &mut self,
        frame: &Bytes,
        gather: &mut Gather,
        to_broker: &mut BytesMut,
        acks: &mut Vec<Ack>,
    ) -> Result<(), SessionError> {
        let p = packet::publish(frame, self.level)?;
        let topic = match p.alias {
            Some(a) if p.topic.is_empty() => {
                self.aliases.get(&a).cloned().ok_or(SessionError::Protocol("unknown topic alias"))?
            }
            Some(0) => return Err(SessionError::Protocol("topic alias 0")),
            Some(a) => {
                // A copy: a slice would keep the whole read buffer alive.
                let topic = Bytes::copy_from_slice(&p.topic);
                self.aliases.insert(a, topic.clone());
                topic
            }
            None => p.topic.clone(),
        };
        if topic.is_empty() {
            return Err(SessionError::Protocol("PUBLISH without topic"));
        }
        if topic.iter().any(|b| matches!(b, b'+' | b'#')) {
            return Err(SessionError::Protocol("PUBLISH topic name with a wildcard (MQTT-3.3.2-2)"));
        }
        let ack_kind = match p.qos {
            1 => Some(kind::PUBACK),
            2 => Some(kind::PUBREC),
            _ => None,
        };
        if p.qos == 2 && lock(&self.qos2).contains(&p.pkid) {
            // A re-send of a publish already stored: answer again, store once.
            acks.push(Ack { kind: kind::PUBREC, pkid: p.pkid, status: Status::Now(0) });
            return Ok(());
        }
        let allowed =
            self.acl.as_ref().is_none_or(|acl| std::str::from_utf8(&topic).is_ok_and(|t| acl.allows(t)));
        if !allowed {
            self.front.guard.not_allowed(self.user.as_deref(), "publish", &topic);
            if let Some(kind) = ack_kind {
                // 3.1.1 has no negative acknowledgement: the code is written
                // for MQTT 5 only (MQTT-3.3.5-2).
                acks.push(Ack { kind, pkid: p.pkid, status: Status::Now(reason::NOT_AUTHORIZED) });
                if p.qos == 2 && !self.v5() {
                    lock(&self.qos2).insert(p.pkid);
                }
            }
            return Ok(());
        }
        let added = self.front.intake.add(gather, &topic, &p.payload, p.qos);
        let stored = added.is_ok();
        let status = match added {
            Ok(group) => Status::Group(group),
            // Not for the log, but still for live subscribers.
            Err(Drop::Unrouted) => Status::Now(reason::NO_MATCHING_SUBSCRIBERS),
            Err(Drop::InvalidTopic) => Status::Now(reason::TOPIC_NAME_INVALID),
        };
        if let Some(kind) = ack_kind {
            // A QoS 2 exchange stays open (until PUBREL) unless its PUBREC
            // says failure; the acker closes it when a stored-or-not answer
            // turns out a failure.
            let failed_now = matches!(status, Status::Now(code) if code >= 0x80 && self.v5());
            if p.qos == 2 && !failed_now {
                lock(&self.qos2).insert(p.pkid);
            }
            acks.push(Ack { kind, pkid: p.pkid, status });
        }
        // Live subscribers and retained messages are the broker's: it gets
        // what a subscription could match, every retained publish, and
        // every publish with a topic alias (it must learn the alias).
        let retain = frame[0] & 0x01 == 0x01;
        let wanted = retain
            || p.alias.is_some()
            || std::str::from_utf8(&topic).map_or(true, |t| self.front.interest.wanted(t, stored));
        if !wanted {
            return Ok(());
        }
        // sluice completes the QoS 2 exchange; the broker gets QoS 1. A
        // zero-byte retained publish clears the retained message: it goes
        // without a trailer (the broker must see it empty).
        let trailer = packet::trailer(p.qos, self.origin);
        let clears = retain && p.payload.is_empty();
        to_broker.extend_from_slice(&packet::publish_with_trailer(
            frame,
            p.qos,
            if clears { &[] } else { &trailer },
        ));
        Ok(())
    }

    /// Passes a SUBSCRIBE on with only the filters the user may subscribe
    /// to; the others get SUBACK 0x80 (MQTT 5: 0x87), counted. True when a
    /// persistent session's subscriptions changed.
    fn subscribe(
        &mut self,
        frame: &Bytes,
        to_broker: &mut BytesMut,
        acks: &mut Vec<Ack>,
    ) -> Result<bool, SessionError> {
        let sub = packet::subscribe(frame, self.level)?;
        // rumqttd closes the connection on a `$` filter other than
        // `$share/...` (and matches no topic starting with `$`): such
        // filters are refused here, like those outside the user's.
        let servable = |f: &str| !f.starts_with('$') || f.starts_with("$share/");
        let acl = self.subscribe_acl.as_ref();
        let keep: Vec<bool> = sub
            .filters
            .iter()
            .map(|(f, _)| {
                std::str::from_utf8(f).is_ok_and(|f| servable(f) && acl.is_none_or(|acl| acl.covers(f)))
            })
            .collect();
        let persistent = self.session.is_some();
        let shared = self.front.intake.shared();
        let router = self.front.intake.router();
        let before = persistent.then(|| super::sessions::candidates(shared, router, &self.filters()));
        for ((f, options), _) in sub.filters.iter().zip(&keep).filter(|(_, k)| **k) {
            if let Ok(f) = std::str::from_utf8(f) {
                let sub = Sub {
                    filter: f.into(),
                    qos: (options & 0x03).min(1),
                    no_local: self.v5() && options & 0x04 != 0,
                };
                // Subscribing again replaces a subscription: counted once.
                if self.subs.set(sub) {
                    self.front.interest.add(f, persistent);
                    self.front.intake.stats().track_session(self.origin, &self.client_id, &self.outbox);
                }
            }
        }
        if let Some(before) = before {
            // What the new subscriptions bring in starts at the end of the
            // log, committed before the SUBACK.
            let after = super::sessions::candidates(shared, router, &self.filters());
            super::sessions::start_new_partitions(shared, &self.client_id, &before, &after);
        }
        let changed = persistent && keep.iter().any(|k| *k);
        let refused = keep.iter().filter(|k| !**k).count();
        if refused == 0 {
            sub.encode_kept(&keep, to_broker);
            return Ok(changed);
        }
        let stats = self.front.intake.stats();
        stats.subscribe_refused.fetch_add(refused as u64, Ordering::Relaxed);
        for (f, _) in sub.filters.iter().zip(&keep).filter(|(_, k)| !**k).map(|(f, _)| f) {
            tracing::info!(user = self.user.as_deref().unwrap_or("<anonymous>"), filter = %String::from_utf8_lossy(f),
                "MQTT subscription outside the user's subscribe filters (or to a `$` topic): refused");
        }
        let code = if self.v5() { reason::NOT_AUTHORIZED } else { 0x80 };
        if refused == keep.len() {
            let mut out = BytesMut::new();
            packet::suback(&mut out, sub.pkid, self.v5(), &vec![code; refused]);
            acks.push(Ack { kind: kind::SUBACK, pkid: sub.pkid, status: Status::Packet(out.freeze()) });
        } else {
            self.subacks.lock().unwrap_or_else(PoisonError::into_inner).insert(sub.pkid, keep.clone());
            sub.encode_kept(&keep, to_broker);
        }
        Ok(changed)
    }

    fn filters(&self) -> Vec<String> {
        self.subs.filters().iter().map(|f| f.to_string()).collect()
    }

    /// Stores the will message (the connection ended without DISCONNECT).
    async fn store_will(&mut self, will: &packet::Will, acks_tx: &mpsc::Sender<AckBatch>) {
        let allowed =
            self.acl.as_ref().is_none_or(|acl| std::str::from_utf8(&will.topic).is_ok_and(|t| acl.allows(t)));
        if !allowed {
            self.front.guard.not_allowed(self.user.as_deref(), "will message", &will.topic);
            return;
        }
        let mut gather = Gather::default();
        if self.front.intake.add(&mut gather, &will.topic, &will.payload, will.qos).is_ok() {
            let groups = self.front.intake.submit(gather).await;
            let _ = acks_tx.send(AckBatch { acks: Vec::new(), groups }).await;
        }
    }
}

/// Sends the acknowledgements of each batch, in order, once its groups are
/// stored; counts what was stored and what was not.
async fn ack_loop(
    mut rx: mpsc::Receiver<AckBatch>,
    out: Arc<Outbox>,
    front: Arc<Front>,
    (v5, qos2): (bool, Qos2),
    stop: Arc<watch::Sender<bool>>,
) {
    let services = &front.intake.shared().services;
    while let Some(batch) = rx.recv().await {
        // Per group: None = stored, Some((code, transient)) = not stored.
        let mut outcome = Vec::with_capacity(batch.groups.len());
        for group in batch.groups {
            outcome.push(match group {
                Ok(pending) => settle(pending, services).await.map_err(|()| (reason::UNSPECIFIED, true)),
                Err(Refused::InvalidTopic) => Err((reason::TOPIC_NAME_INVALID, false)),
                Err(Refused::StoreFailed) => Err((reason::UNSPECIFIED, true)),
                Err(Refused::ShuttingDown) => Err((reason::SERVER_BUSY, true)),
                Err(Refused::Policy) => Err((reason::QUOTA_EXCEEDED, false)),
            });
        }
        let mut bytes = BytesMut::with_capacity(batch.acks.len() * 4);
        let mut close = false;
        for ack in &batch.acks {
            let code = match &ack.status {
                Status::Now(code) => *code,
                Status::Packet(packet) => {
                    bytes.extend_from_slice(packet);
                    continue;
                }
                Status::Group(g) => match outcome[*g] {
                    Ok(service) => {
                        services.by_id(service).counters.mqtt_acked.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                    // 3.1.1 cannot say "not stored": close the connection,
                    // the client sends the publish again when it reconnects.
                    Err((_, true)) if !v5 => {
                        close = true;
                        break;
                    }
                    Err((code, _)) => code,
                },
            };
            if ack.kind == kind::PUBREC && code >= 0x80 && v5 {
                // MQTT 5: a failed PUBREC ends the exchange; the id is free.
                lock(&qos2).remove(&ack.pkid);
            }
            packet::ack(&mut bytes, ack.kind, ack.pkid, v5, code);
        }
        if !bytes.is_empty() {
            out.control(bytes.freeze());
        }
        if close {
            out.close();
            let _ = stop.send(true);
            // What is still queued is counted as it completes, not acked.
            while let Some(batch) = rx.recv().await {
                for pending in batch.groups.into_iter().flatten() {
                    let _ = settle(pending, services).await;
                }
            }
            break;
        }
    }
}

/// Waits for a queued group to be stored and counts the outcome in its
/// service's counters; `Ok` names the service, `Err` means not stored.
async fn settle(mut pending: Pending, services: &crate::services::Services) -> Result<ServiceId, ()> {
    let counters = &services.by_id(pending.service).counters;
    match pending.stored().await {
        Ok(()) => {
            counters.mqtt_stored.fetch_add(pending.records, Ordering::Relaxed);
            Ok(pending.service)
        }
        Err(NotStored::Evicted) => {
            counters.mqtt_dropped_full.fetch_add(pending.records, Ordering::Relaxed);
            Err(())
        }
        Err(NotStored::Failed(e)) => {
            counters.mqtt_failed.fetch_add(pending.records, Ordering::Relaxed);
            if pending.acked {
                tracing::warn!(error = %e, records = pending.records, "MQTT publishes not stored: not acknowledged");
            }
            Err(())
        }
    }
}

/// Broker to client: everything but the broker's acknowledgements of the
/// client's publishes (sluice sends its own), into the client's outbox:
/// publishes under the service of their topic, the rest as control packets.
/// QoS 1 publishes sluice delivers itself are acknowledged to the broker at
/// once. Hands an accepted CONNACK to the session (it sets session present).
async fn broker_loop(
    mut br: tokio::net::tcp::OwnedReadHalf,
    (out, acks): (Arc<Outbox>, mpsc::UnboundedSender<Bytes>),
    connack: oneshot::Sender<Option<Bytes>>,
    stop: Arc<watch::Sender<bool>>,
    (front, level, subacks, pings): (Arc<Front>, u8, Subacks, Arc<Pings>),
    (subs, origin, persistent): (Arc<Subs>, u64, Arc<std::sync::atomic::AtomicBool>),
) {
    let max = front.max_packet;
    let mut connack = Some(connack);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut stop_rx = stop.subscribe();
    let own_qos1 = out.owns_qos1();
    // MQTT topic -> service, for the topics this connection gets.
    let mut services: HashMap<Bytes, ServiceId> = HashMap::new();
    let mut in_order = false;
    loop {
        let mut chunk = BytesMut::new();
        let mut to_broker = BytesMut::new();
        loop {
            match packet::next_frame(&mut buf, max.saturating_mul(2)) {
                Ok(Some(frame)) => match packet::kind_of(&frame) {
                    kind::PUBLISH => {
                        if !in_order && outbox::has_alias(&frame, level) {
                            in_order = true;
                            out.arrival_order();
                        }
                        let qos = (frame[0] >> 1) & 0x03;
                        let pkid = packet::publish_pkid_at(&frame)
                            .filter(|_| qos > 0)
                            .map(|at| u16::from_be_bytes([frame[at], frame[at + 1]]));
                        if let (Some(pkid), true) = (pkid, own_qos1) {
                            packet::ack(&mut to_broker, kind::PUBACK, pkid, level == 5, 0);
                        }
                        let topic = packet::publish(&frame, level).map(|p| p.topic).unwrap_or_default();
                        // A persistent session gets stored publishes from
                        // the log; retained ones (at subscription time)
                        // from the broker.
                        let retained = frame[0] & 0x01 == 0x01;
                        if persistent.load(Ordering::Acquire)
                            && !retained
                            && front.intake.stored(&topic)
                            && std::str::from_utf8(&topic).is_ok_and(|t| subs.log_qos(t).is_some())
                        {
                            continue;
                        }
                        // Not for this client (No Local): a QoS 1 one was
                        // acknowledged to the broker above.
                        let Some(frame) = deliverable(&frame, qos, &topic, (&subs, origin)) else {
                            continue;
                        };
                        let frame = frame.freeze();
                        let service = match services.get(&topic) {
                            Some(s) => *s,
                            None => {
                                let s = front.intake.service_for(&topic);
                                if services.len() >= SERVICE_CACHE {
                                    services.clear();
                                }
                                services.insert(Bytes::copy_from_slice(&topic), s);
                                s
                            }
                        };
                        if !chunk.is_empty() {
                            out.control(chunk.split().freeze());
                        }
                        out.publish(frame, service);
                    }
                    kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {}
                    kind::PINGRESP => match pings.answer() {
                        Some(then) => chunk.extend_from_slice(&then.unwrap_or_default()),
                        None => chunk.extend_from_slice(&frame),
                    },
                    // The front answers UNSUBSCRIBE itself: rumqttd sends
                    // one UNSUBACK per filter it removed and none for a
                    // filter not subscribed (MQTT-3.10.4-4, -5).
                    kind::UNSUBACK => {}
                    kind::SUBACK => {
                        let keep = packet::pkid_of(&frame).and_then(|pkid| {
                            subacks.lock().unwrap_or_else(PoisonError::into_inner).remove(&pkid)
                        });
                        let refused = if level == 5 { reason::NOT_AUTHORIZED } else { 0x80 };
                        match keep.map(|keep| packet::merge_suback(&frame, level, &keep, refused)) {
                            None => chunk.extend_from_slice(&frame),
                            Some(Ok(merged)) => chunk.extend_from_slice(&merged),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "unexpected SUBACK from the embedded MQTT broker")
                            }
                        }
                    }
                    kind::CONNACK => {
                        // Accepted: the session decides session present and
                        // queues it; refused: to the client as it is.
                        let accepted = packet::connack_code(&frame) == Some(0);
                        if !accepted {
                            chunk.extend_from_slice(&frame);
                        }
                        if let Some(tx) = connack.take() {
                            let _ = tx.send(accepted.then_some(frame));
                        }
                    }
                    _ => chunk.extend_from_slice(&frame),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "unexpected bytes from the embedded MQTT broker");
                    let _ = stop.send(true);
                    return;
                }
            }
        }
        if !to_broker.is_empty() {
            let _ = acks.send(to_broker.freeze());
        }
        if !chunk.is_empty() {
            out.control(chunk.freeze());
        }
        tokio::select! {
            n = read_more(&mut br, &mut buf) => if !matches!(n, Ok(n) if n > 0) { break },
            _ = stop_rx.wait_for(|s| *s) => break,
        }
    }
    let _ = stop.send(true);
}

/// A delivery of the broker's to this connection's client, re-framed: the
/// payload trailer taken off, at the QoS the client is owed (the lower of
/// the publish's and the highest of its matching subscriptions',
/// MQTT-3.8.4-6; rumqttd sends the subscription's). `None` when only No
/// Local subscriptions match the client's own publish (MQTT-3.8.3-3).
fn deliverable(
    frame: &Bytes,
    broker_qos: u8,
    topic: &[u8],
    (subs, origin): (&Subs, u64),
) -> Option<BytesMut> {
    let as_sent = || Some(BytesMut::from(&frame[..]));
    let Some((published, from)) = packet::trailer_of(frame) else {
        return as_sent();
    };
    let delivery = subs.delivery(std::str::from_utf8(topic).unwrap_or(""), from == origin);
    let want = match delivery {
        Delivery::Skip => return None,
        Delivery::Granted(granted) => published.min(granted),
        Delivery::Unknown => published.min(broker_qos),
    };
    // sluice delivers QoS 1 itself, so it can add it.
    packet::strip_trailer(frame, want.min(1)).or_else(as_sent)
}

/// sluice's own PINGREQs to the broker, whose PINGRESPs end at the front.
/// The broker's router answers a PINGREQ after the packets before it, so a
/// PINGRESP also says those were processed.
#[derive(Debug, Default)]
struct Pings {
    /// Per PINGREQ of sluice's in flight, in order: what the client gets
    /// when it is answered (the UNSUBACK of an UNSUBSCRIBE before it).
    ours: Mutex<std::collections::VecDeque<Option<Bytes>>>,
    answered: tokio::sync::Notify,
}

impl Pings {
    /// Counts a PINGREQ about to go to the broker; `then` is sent to the
    /// client once the broker answered it.
    fn sent(&self, then: Option<Bytes>) {
        lock(&self.ours).push_back(then);
    }

    /// A PINGRESP came: `Some` when it answers one of sluice's (with what
    /// the client is owed then), `None` when it is the client's.
    fn answer(&self) -> Option<Option<Bytes>> {
        let then = lock(&self.ours).pop_front()?;
        self.answered.notify_one();
        Some(then)
    }
}

/// How long the front waits for the broker to answer its PINGREQ.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// MQTT topics whose service a connection remembers (then it starts over).
const SERVICE_CACHE: usize = 1024;

/// The connection to the broker's write side: what the client sends
/// (bounded, so a broker that does not read holds the client back) and
/// the front's acknowledgements of the broker's QoS 1 publishes (never
/// waited for, so reading from the broker never stops on writing to it).
struct BrokerWriter {
    data: Option<mpsc::Sender<Bytes>>,
    acks: mpsc::UnboundedSender<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokerWriter {
    fn spawn(mut bw: tokio::net::tcp::OwnedWriteHalf) -> BrokerWriter {
        let (data_tx, mut data) = mpsc::channel::<Bytes>(4);
        let (acks, mut acks_rx) = mpsc::unbounded_channel::<Bytes>();
        let task = tokio::spawn(async move {
            let mut acks_open = true;
            loop {
                let bytes = tokio::select! {
                    biased;
                    a = acks_rx.recv(), if acks_open => match a {
                        Some(a) => a,
                        None => { acks_open = false; continue }
                    },
                    d = data.recv() => match d {
                        Some(d) => d,
                        None => break,
                    },
                };
                if bw.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            // What the client sent is all there; the broker hears the end.
            drop(bw);
        });
        BrokerWriter { data: Some(data_tx), acks, task }
    }

    async fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        let closed =
            || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "embedded broker connection closed");
        let Some(data) = &self.data else { return Err(closed()) };
        data.send(bytes).await.map_err(|_| closed())
    }

    /// Waits until the broker processed everything written so far: rumqttd
    /// drops publishes it reads in the same batch as the end of the
    /// connection (measured: the last tens of a burst never reached live
    /// subscribers when the publisher disconnected right after its acks).
    /// Its router answers a PINGREQ after the packets before it; sluice
    /// keeps that PINGRESP. At most [`BARRIER_TIMEOUT`].
    async fn barrier(&mut self, pings: &Pings) {
        pings.sent(None);
        if self.write(Bytes::from_static(&[kind::PINGREQ << 4, 0])).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(BARRIER_TIMEOUT, pings.answered.notified()).await;
    }

    /// Sends what is queued, then closes the broker connection.
    async fn close(&mut self) {
        self.data = None;
        let _ = (&mut self.task).await;
    }
}

/// Writes what the client's outbox gives, a few KiB at a time, flushing
/// after each; ends on a close, or once the outbox is finished and empty.
/// With the client's socket at hand, its send buffer starts at 64 KiB and
/// is kept to about what the client drains in the target delay (16 KiB to
/// 4 MiB, measured while writes wait for the socket), so what waits for
/// the client waits in the outbox, in priority order.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    out: Arc<Outbox>,
    stop: Arc<watch::Sender<bool>>,
    (sock, target): (Option<socket2::Socket>, Duration),
) {
    let mut stop_rx = stop.subscribe();
    let mut sndbuf = SendBuffer::new(sock, target);
    loop {
        match out.take(WRITE_BATCH) {
            Next::Bytes(bytes) => {
                let started = std::time::Instant::now();
                if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                    let _ = stop.send(true);
                    return;
                }
                sndbuf.wrote(bytes.len(), started);
            }
            Next::Close | Next::Done => break,
            Next::Wait(retry) => {
                let paced = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = out.changed() => {}
                    // QoS 0 pacing: the client has read more by then.
                    () = paced => {}
                    // Nothing more comes once the session stops; what is
                    // queued for the client is still written.
                    _ = stop_rx.wait_for(|s| *s) => out.finish(),
                }
            }
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// Sizes a client socket's send buffer from how fast it drains.
struct SendBuffer {
    sock: Option<socket2::Socket>,
    target: Duration,
    since: std::time::Instant,
    bytes: usize,
    /// Time spent blocked in writes since `since`.
    blocked: Duration,
    size: usize,
}

impl SendBuffer {
    /// The send buffer a connection starts with.
    const START: usize = 64 << 10;
    /// Smallest send buffer set.
    const MIN: usize = 16 << 10;
    /// Largest send buffer set.
    const MAX: usize = 4 << 20;
    const EVERY: Duration = Duration::from_millis(200);

    fn new(sock: Option<socket2::Socket>, target: Duration) -> SendBuffer {
        SendBuffer {
            sock,
            target,
            since: std::time::Instant::now(),
            bytes: 0,
            blocked: Duration::ZERO,
            size: 0,
        }
    }

    fn wrote(&mut self, n: usize, started: std::time::Instant) {
        let Some(sock) = &self.sock else { return };
        let now = std::time::Instant::now();
        self.bytes += n;
        self.blocked += now.saturating_duration_since(started);
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < Self::EVERY {
            return;
        }
        // Only a socket that held the writer back tells its drain rate.
        if self.blocked * 4 >= elapsed {
            let rate = self.bytes as f64 / elapsed.as_secs_f64();
            let want = ((rate * self.target.as_secs_f64()) as usize).clamp(Self::MIN, Self::MAX);
            if want != self.size {
                self.size = want;
                let _ = sock.set_send_buffer_size(want);
            }
        }
        self.since = now;
        self.bytes = 0;
        self.blocked = Duration::ZERO;
    }
}
