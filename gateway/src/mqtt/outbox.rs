//! What the front sends one client, in priority order: the outgoing half of
//! a connection (see [`super::front`] for the whole picture).
//!
//! rumqttd's router serves each connection first in, first out, and holds
//! QoS 1 publishes back once the connection's in-flight window is full: a
//! live subscriber that cannot keep up with a bulk flood got its alarms
//! after the whole backlog (seconds), or not at all with bulk at QoS 1 (the
//! window stayed full of bulk). So the front takes the broker's packets as
//! fast as they come and decides itself what the client gets next:
//!
//! - **Control packets first** (CONNACK, SUBACK, PINGRESP, the
//!   acknowledgements of the client's publishes), in the order they came.
//! - **Publishes by the priority of their service**: each PUBLISH the
//!   broker sends is queued under the service that owns the log topic its
//!   MQTT topic routes to (`[[route]]` or `mqtt.unrouted`; the default
//!   service otherwise), in one [`Scheduler`] per connection, the same
//!   scheduler as everywhere else: express first within
//!   `express_max_share`, then deficit round robin by weight, in bytes.
//!   Order is kept within a service, so within each MQTT topic.
//! - **The decision is taken as late as possible.** The writer takes a few
//!   KiB at a time ([`WRITE_BATCH`]) and only when the socket takes them,
//!   so an alarm that arrives while bulk waits is written next.
//! - **QoS 1 is delivered by sluice** (clean sessions): the front
//!   acknowledges each QoS 1 publish to the broker as it reads it, so the
//!   broker's window never fills, and sends it to the client under a packet
//!   id of its own, within a window of its own ([`Window`]) that is sized
//!   in time: about what the client acknowledges in
//!   `mqtt.delivery_target_delay` plus its lowest acknowledgement delay
//!   (the round trip), learned from its PUBACKs, at least [`MIN_WINDOW`],
//!   at most `mqtt.max_inflight` and the client's MQTT 5 receive maximum.
//!   A publish waiting for the window holds back everything behind it, so
//!   the window (not the socket) is what sits in front of an alarm. The
//!   client's PUBACKs of these ids end at the front.
//! - **Bounded memory, stated policy.** At most `mqtt.delivery_queue`
//!   bytes of publishes wait per connection; past that the oldest publish
//!   of the lowest-priority service (weighted before express, lowest weight
//!   first) is dropped and counted in
//!   `sluice_mqtt_delivery_dropped_total{service}`: like Mosquitto's
//!   `max_queued_messages` and like rumqttd's own segments for a slow
//!   reader, a subscriber that stays behind loses its oldest bulk, and its
//!   alarms stay fresh.
//! - **Persistent sessions** (3.1.1 clean session 0, MQTT 5 session
//!   expiry) are sluice's, served from the log ([`super::sessions`]): their
//!   reader queues what the client's subscriptions match with
//!   [`Outbox::publish_from_log`], about a window ahead of the client's
//!   acknowledgements, ordered here like the rest; such publishes are never
//!   dropped for room (the log holds them), and the outbox tells the reader
//!   which ones the client has ([`Outbox::take_log_done`]).
//! - **MQTT 5 topic aliases from the broker** tie a publish to an earlier
//!   one; a connection that gets one is served in arrival order from then
//!   on (rumqttd sends them only to clients that set a topic alias
//!   maximum).
//!
//! QoS 0 has no acknowledgement: what sits in front of a QoS 0 alarm is
//! what the socket buffers hold (sluice's send buffer and the client's
//! receive buffer, outside sluice's reach), plus the QoS 1 window.
//!
//! QoS 2 never reaches a subscriber: the front hands the broker every QoS 2
//! publish as QoS 1 (it completes QoS 2 toward publishers itself), so the
//! broker delivers at most QoS 1. A QoS 2 publish would pass as is.

use super::packet;
use crate::services::Services;
use bytes::{Bytes, BytesMut};
use sluice_store::scheduler::{Mode, Scheduler, ServiceClass, ServiceId};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes the writer takes per decision: small, so what arrives meanwhile
/// is ordered with the rest, large enough to keep system calls few.
pub(super) const WRITE_BATCH: usize = 8 << 10;
/// Smallest QoS 1 window toward a client.
pub(super) const MIN_WINDOW: usize = 2;
/// The window a connection starts with, before any acknowledgement.
const START_WINDOW: usize = 16;
/// How often the window is resized from the acknowledgements.
const MEASURE_EVERY: Duration = Duration::from_millis(50);
/// How often service weights are re-read (they change at run time).
const CLASSES_EVERY: Duration = Duration::from_secs(1);

/// What the writer sends next.
#[derive(Debug)]
pub(super) enum Next {
    /// These bytes.
    Bytes(BytesMut),
    /// Close the connection (after what was taken before).
    Close,
    /// Nothing yet.
    Wait,
    /// The connection is over.
    Done,
}

/// Where a publish served from the log (persistent sessions) was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct LogPos {
    pub(super) topic: Arc<str>,
    pub(super) partition: sluice_store::PartitionId,
    pub(super) offset: sluice_store::Offset,
}

/// One queued publish.
#[derive(Debug)]
struct Queued {
    frame: Bytes,
    /// Where its packet id is, when it is a QoS 1 publish sluice delivers.
    own_pkid_at: Option<usize>,
    /// Served from the log: where it was read (reported back once the
    /// client has it), never dropped for room.
    from_log: Option<LogPos>,
    /// The packet id it had when it was sent before (a re-send).
    prefer_pkid: Option<u16>,
    /// Its service, and when it was queued (the delivery histogram).
    service: ServiceId,
    queued: Instant,
}

/// The QoS 1 window toward the client.
#[derive(Debug)]
pub(super) struct Window {
    /// Packet ids in flight, and when each was sent.
    inflight: HashMap<u16, Instant>,
    next_pkid: u16,
    size: usize,
    max: usize,
    target: Duration,
    /// Acknowledgements since `since`.
    acked: u64,
    since: Instant,
    /// The window was full at some point since `since`.
    limited: bool,
    /// Lowest acknowledgement delay seen on the connection: its round trip
    /// plus one publish's processing. Kept for the connection's life: under
    /// a standing backlog every later delay includes the window itself,
    /// and taking that for the round trip would grow the window without
    /// end.
    min_delay: Option<Duration>,
}

impl Window {
    pub(super) fn new(target: Duration, max: usize, now: Instant) -> Window {
        let max = max.max(MIN_WINDOW);
        Window {
            inflight: HashMap::new(),
            next_pkid: 1,
            size: START_WINDOW.min(max),
            max,
            target,
            acked: 0,
            since: now,
            limited: false,
            min_delay: None,
        }
    }

    /// The current size.
    fn size(&self) -> usize {
        self.size
    }

    fn full(&self) -> bool {
        self.inflight.len() >= self.size
    }

    /// A free packet id, now in flight: `prefer` when it is free (a
    /// re-send keeps its packet id, MQTT-4.4.0-1).
    fn take_pkid(&mut self, prefer: Option<u16>, now: Instant) -> u16 {
        if let Some(p) = prefer.filter(|p| *p != 0) {
            if let std::collections::hash_map::Entry::Vacant(e) = self.inflight.entry(p) {
                e.insert(now);
                return p;
            }
        }
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.inflight.entry(pkid) {
                e.insert(now);
                return pkid;
            }
        }
    }

    /// The client acknowledged `pkid`; false when it is not one of ours.
    pub(super) fn ack(&mut self, pkid: u16, now: Instant) -> bool {
        let Some(sent) = self.inflight.remove(&pkid) else { return false };
        let delay = now.saturating_duration_since(sent);
        if self.min_delay.is_none_or(|d| delay < d) {
            self.min_delay = Some(delay);
        }
        self.acked += 1;
        self.resize(now);
        true
    }

    /// Every [`MEASURE_EVERY`] while the window held publishes back: the
    /// size becomes what the client acknowledged per second times (the
    /// target delay + its round trip).
    fn resize(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < MEASURE_EVERY {
            return;
        }
        if self.limited && self.acked > 0 {
            let rate = self.acked as f64 / elapsed.as_secs_f64();
            let rtt = self.min_delay.unwrap_or(Duration::ZERO);
            let want = (rate * (self.target + rtt).as_secs_f64()).ceil() as usize;
            self.size = want.clamp(MIN_WINDOW, self.max);
        }
        self.acked = 0;
        self.limited = false;
        self.since = now;
    }
}

#[derive(Debug)]
struct State {
    control: VecDeque<Option<Bytes>>,
    sched: Scheduler<Queued>,
    /// A publish taken from the scheduler that waits for the window.
    held: Option<Queued>,
    /// Bytes of queued publishes (scheduler and held).
    bytes: u64,
    limit: u64,
    /// QoS 1 publishes are delivered by sluice (clean session).
    own_qos1: bool,
    window: Window,
    classes_at: Instant,
    /// Publishes to this connection are over (the broker side ended).
    done: bool,
    /// Log-served publishes sent at QoS 1, by packet id, until acknowledged.
    log_inflight: HashMap<u16, LogPos>,
    /// Log-served publishes the client has: acknowledged (QoS 1) or
    /// written (QoS 0); taken by the session's reader.
    log_done: Vec<LogPos>,
    /// Log-served publishes queued or in flight.
    log_pending: usize,
    /// Per partition, the offset after the last log-served publish written
    /// (what a later connection re-sends with DUP).
    log_sent: HashMap<(Arc<str>, sluice_store::PartitionId), sluice_store::Offset>,
}

/// The outgoing half of one connection, shared by the broker loop and the
/// acker (which queue), the client reader (which reports PUBACKs) and the
/// writer (which takes).
#[derive(Debug)]
pub(super) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// Wakes a persistent session's log reader: the client has more.
    log_wake: Notify,
    services: Arc<Services>,
}

/// How one connection's outbox is set up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Setup {
    /// Scheduler mode and express share.
    pub(super) mode: Mode,
    pub(super) express_max_share: f64,
    /// `mqtt.delivery_queue`.
    pub(super) limit: u64,
    /// `mqtt.delivery_target_delay`.
    pub(super) target: Duration,
    /// min(`mqtt.max_inflight`, the client's receive maximum).
    pub(super) max_window: usize,
    /// sluice delivers QoS 1 (every session: the broker's are clean).
    pub(super) own_qos1: bool,
}

impl Outbox {
    pub(super) fn new(services: Arc<Services>, setup: Setup) -> Outbox {
        let mut sched = Scheduler::new(setup.mode, setup.express_max_share);
        for s in services.iter() {
            sched.add_service(s.class());
        }
        let now = Instant::now();
        Outbox {
            state: Mutex::new(State {
                control: VecDeque::new(),
                sched,
                held: None,
                bytes: 0,
                limit: setup.limit,
                own_qos1: setup.own_qos1,
                window: Window::new(setup.target, setup.max_window, now),
                classes_at: now,
                done: false,
                log_inflight: HashMap::new(),
                log_done: Vec::new(),
                log_pending: 0,
                log_sent: HashMap::new(),
            }),
            wake: Notify::new(),
            log_wake: Notify::new(),
            services,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether QoS 1 publishes from the broker are sluice's to deliver.
    pub(super) fn owns_qos1(&self) -> bool {
        self.lock().own_qos1
    }

    /// Queues control bytes (sent before any publish).
    pub(super) fn control(&self, bytes: Bytes) {
        self.lock().control.push_back(Some(bytes));
        self.wake.notify_one();
    }

    /// Closes the connection once what is queued before it is written.
    pub(super) fn close(&self) {
        self.lock().control.push_back(None);
        self.wake.notify_one();
    }

    /// Nothing more will be queued: the writer ends once it sent the rest.
    pub(super) fn finish(&self) {
        self.lock().done = true;
        self.wake.notify_one();
    }

    /// From now on, publishes go in arrival order (MQTT 5 topic aliases).
    pub(super) fn arrival_order(&self) {
        self.lock().sched.set_mode(Mode::Fifo);
    }

    /// Queues a PUBLISH from the broker under `service`.
    pub(super) fn publish(&self, frame: Bytes, service: ServiceId) {
        let mut st = self.lock();
        let qos = (frame[0] >> 1) & 0x03;
        let own_pkid_at = (qos == 1 && st.own_qos1).then(|| packet::publish_pkid_at(&frame)).flatten();
        let len = frame.len() as u64;
        st.bytes += len;
        st.sched.push(
            service,
            len,
            Queued { frame, own_pkid_at, from_log: None, prefer_pkid: None, service, queued: Instant::now() },
        );
        while st.bytes > st.limit {
            if !st.evict_one(&self.services) {
                break;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Queues a publish read from the log (a persistent session's) under
    /// `service`: `frame` is built for the client (packet id 0, set when
    /// sent; its DUP flag kept). Never dropped for room: the session's
    /// reader keeps only a window's worth queued ([`Outbox::log_pending`]).
    pub(super) fn publish_from_log(&self, frame: Bytes, service: ServiceId, pos: LogPos, pkid: Option<u16>) {
        let mut st = self.lock();
        let qos = (frame[0] >> 1) & 0x03;
        let own_pkid_at = (qos == 1).then(|| packet::publish_pkid_at(&frame)).flatten();
        let len = frame.len() as u64;
        st.bytes += len;
        st.log_pending += 1;
        let queued = Queued {
            frame,
            own_pkid_at,
            from_log: Some(pos),
            prefer_pkid: pkid,
            service,
            queued: Instant::now(),
        };
        st.sched.push(service, len, queued);
        drop(st);
        self.wake.notify_one();
    }

    /// Log-served publishes queued or in flight.
    pub(super) fn log_pending(&self) -> usize {
        self.lock().log_pending
    }

    /// Log-served publishes the client has had since the last call.
    pub(super) fn take_log_done(&self) -> Vec<LogPos> {
        std::mem::take(&mut self.lock().log_done)
    }

    /// Log-served publishes sent at QoS 1 and not acknowledged, with their
    /// packet ids.
    pub(super) fn log_unacked(&self) -> Vec<(LogPos, u16)> {
        self.lock().log_inflight.iter().map(|(pkid, pos)| (pos.clone(), *pkid)).collect()
    }

    /// Per partition, the offset after the last log-served publish written.
    pub(super) fn log_sent(&self) -> HashMap<(Arc<str>, sluice_store::PartitionId), sluice_store::Offset> {
        self.lock().log_sent.clone()
    }

    /// The client acknowledged `pkid`: true when it was sluice's (the
    /// broker must not see it).
    pub(super) fn acked(&self, pkid: u16) -> bool {
        let mut st = self.lock();
        if !st.own_qos1 {
            return false;
        }
        let ours = st.window.ack(pkid, Instant::now());
        let from_log = st.log_inflight.remove(&pkid).map(|pos| {
            st.log_pending -= 1;
            st.log_done.push(pos);
        });
        drop(st);
        if from_log.is_some() {
            self.log_wake.notify_one();
        }
        if ours {
            self.wake.notify_one();
        }
        ours
    }

    /// What to write next (at most about `max` bytes of publishes).
    pub(super) fn take(&self, max: usize) -> Next {
        let mut st = self.lock();
        let mut out = BytesMut::new();
        while let Some(c) = st.control.pop_front() {
            match c {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => {
                    if out.is_empty() {
                        return Next::Close;
                    }
                    // Written first, then the close.
                    st.control.push_front(None);
                    return Next::Bytes(out);
                }
            }
        }
        let now = Instant::now();
        if now.saturating_duration_since(st.classes_at) >= CLASSES_EVERY {
            st.classes_at = now;
            for s in self.services.iter() {
                st.sched.set_class(s.id, s.class());
            }
        }
        while out.len() < max {
            let q = match st.held.take() {
                Some(q) => q,
                None => match st.sched.pop() {
                    Some((_, q)) => q,
                    None => break,
                },
            };
            if let Some(at) = q.own_pkid_at {
                if st.window.full() {
                    st.window.limited = true;
                    st.held = Some(q);
                    break;
                }
                let pkid = st.window.take_pkid(q.prefer_pkid, now);
                let start = out.len();
                out.extend_from_slice(&q.frame);
                if q.from_log.is_none() {
                    // Not a re-send of sluice's: no DUP.
                    out[start] &= !0x08;
                }
                out[start + at..start + at + 2].copy_from_slice(&pkid.to_be_bytes());
                if let Some(pos) = &q.from_log {
                    st.sent_from_log(pos);
                    st.log_inflight.insert(pkid, pos.clone());
                }
            } else {
                out.extend_from_slice(&q.frame);
                if let Some(pos) = q.from_log.clone() {
                    st.sent_from_log(&pos);
                    st.log_pending -= 1;
                    st.log_done.push(pos);
                    self.log_wake.notify_one();
                }
            }
            st.bytes -= q.frame.len() as u64;
            crate::histograms::delivered_mqtt(
                &self.services.by_id(q.service).name,
                now.saturating_duration_since(q.queued),
            );
        }
        if !out.is_empty() {
            Next::Bytes(out)
        } else if st.done {
            Next::Done
        } else {
            Next::Wait
        }
    }

    /// Per service (by name): publishes queued and not yet sent, and the
    /// age of the oldest.
    pub(super) fn lag(&self) -> Vec<(String, u64, Duration)> {
        let st = self.lock();
        let now = Instant::now();
        self.services
            .iter()
            .map(|s| {
                let held = st.held.as_ref().filter(|q| q.service == s.id);
                let records = st.sched.queued_items(s.id) as u64 + u64::from(held.is_some());
                let oldest = held
                    .or_else(|| st.sched.front(s.id))
                    .map_or(Duration::ZERO, |q| now.saturating_duration_since(q.queued));
                (s.name.to_string(), records, oldest)
            })
            .collect()
    }

    /// Waits until a log-served publish was acknowledged or written.
    pub(super) async fn log_changed(&self) {
        self.log_wake.notified().await;
    }

    /// Waits until [`Outbox::take`] may have something new.
    pub(super) async fn changed(&self) {
        self.wake.notified().await;
    }

    /// The current QoS 1 window.
    pub(super) fn window(&self) -> usize {
        self.lock().window.size()
    }
}

impl State {
    fn sent_from_log(&mut self, pos: &LogPos) {
        let next = pos.offset.next();
        let sent = self.log_sent.entry((pos.topic.clone(), pos.partition)).or_insert(next);
        *sent = (*sent).max(next);
    }

    /// Drops the oldest publish of the lowest-priority service that has
    /// one sluice may drop; false when there is none.
    fn evict_one(&mut self, services: &Services) -> bool {
        let victim = services
            .iter()
            .filter(|s| {
                self.sched.front(s.id).is_some_and(|q| {
                    // The broker's QoS 1 is the broker's to deliver:
                    // bounded by its window, not here. What the log serves
                    // stays in the log until there is room.
                    q.from_log.is_none() && (self.own_qos1 || (q.frame[0] >> 1) & 0x03 == 0)
                })
            })
            .min_by_key(|s| {
                let c: ServiceClass = self.sched.class(s.id);
                (c.express, c.weight)
            })
            .map(|s| s.id);
        let Some(id) = victim else { return false };
        let Some((_, q)) = self.sched.pop_oldest_of(id) else { return false };
        self.bytes -= q.frame.len() as u64;
        services.by_id(id).counters.mqtt_delivery_dropped.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Whether a broker PUBLISH carries an MQTT 5 topic alias.
pub(super) fn has_alias(frame: &Bytes, level: u8) -> bool {
    level == 5 && packet::publish(frame, level).is_ok_and(|p| p.alias.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::Config;

    fn services() -> Arc<Services> {
        let config = Config::from_toml_str(
            r#"
[[service]]
name = "alarms"
express = true
[[service]]
name = "bulk"
weight = 1
"#,
        )
        .expect("valid config");
        Arc::new(Services::from_config(&config))
    }

    fn publish(topic: &str, qos: u8, pkid: u16) -> Bytes {
        let mut f = BytesMut::new();
        let body = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + 3;
        f.extend_from_slice(&[0x30 | (qos << 1), body as u8]);
        f.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        f.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            f.extend_from_slice(&pkid.to_be_bytes());
        }
        f.extend_from_slice(b"abc");
        f.freeze()
    }

    fn setup(own: bool) -> Setup {
        Setup {
            mode: Mode::Weighted,
            express_max_share: 0.5,
            limit: 1 << 20,
            target: Duration::from_millis(10),
            max_window: 4,
            own_qos1: own,
        }
    }

    fn topics(bytes: &[u8]) -> Vec<(String, u16)> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = packet::next_frame(&mut buf, 1 << 20).expect("frame") {
            let p = packet::publish(&f, 4).expect("publish");
            out.push((String::from_utf8_lossy(&p.topic).into_owned(), p.pkid));
        }
        out
    }

    #[test]
    fn alarms_overtake_queued_bulk_and_the_window_holds_the_rest() {
        let (alarms, bulk) = (ServiceId(0), ServiceId(1));
        let out = Outbox::new(services(), setup(true));
        for i in 0..10 {
            out.publish(publish("bulk/x", 1, 100 + i), bulk);
        }
        let Next::Bytes(first) = out.take(1 << 20) else { panic!("bytes expected") };
        // The window (4) lets 4 bulk publishes out, under sluice's ids.
        assert_eq!(
            topics(&first),
            vec![("bulk/x".into(), 1), ("bulk/x".into(), 2), ("bulk/x".into(), 3), ("bulk/x".into(), 4)]
        );
        out.publish(publish("alarm/1", 1, 7), alarms);
        assert!(matches!(out.take(1 << 20), Next::Wait));
        assert!(out.acked(1));
        assert!(!out.acked(1), "an id is acknowledged once");
        // The one publish taken when the window was full goes first, then
        // the alarm, before the 5 bulk publishes still queued.
        let Next::Bytes(next) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(topics(&next), vec![("bulk/x".into(), 5)]);
        assert!(out.acked(2));
        let Next::Bytes(next) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(topics(&next), vec![("alarm/1".into(), 6)]);
    }

    #[test]
    fn persistent_sessions_keep_the_brokers_ids_and_qos1() {
        let out = Outbox::new(services(), setup(false));
        for i in 0..6 {
            out.publish(publish("bulk/x", 1, 100 + i), ServiceId(1));
        }
        let Next::Bytes(all) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(topics(&all).iter().map(|t| t.1).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104, 105]);
        assert!(!out.acked(100), "the broker's ids go to the broker");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_bulk_first() {
        let services = services();
        let mut s = setup(true);
        s.limit = 100;
        let out = Outbox::new(services.clone(), s);
        out.publish(publish("alarm/1", 0, 0), ServiceId(0));
        for _ in 0..20 {
            out.publish(publish("bulk/x", 0, 0), ServiceId(1));
        }
        let Next::Bytes(all) = out.take(1 << 20) else { panic!("bytes expected") };
        let got = topics(&all);
        assert_eq!(got[0].0, "alarm/1");
        assert!(got.len() < 21);
        let dropped = services.by_id(ServiceId(1)).counters.mqtt_delivery_dropped.load(Ordering::Relaxed);
        assert_eq!(dropped as usize, 21 - got.len());
        assert_eq!(services.by_id(ServiceId(0)).counters.mqtt_delivery_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn control_packets_go_first_and_close_comes_after_them() {
        let out = Outbox::new(services(), setup(true));
        out.publish(publish("bulk/x", 0, 0), ServiceId(1));
        out.control(Bytes::from_static(&[0xD0, 0]));
        out.close();
        let Next::Bytes(b) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(&b[..], &[0xD0, 0]);
        assert!(matches!(out.take(1 << 20), Next::Close));
    }

    #[test]
    fn the_window_follows_the_acknowledgement_rate() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_millis(10), 1000, t0);
        // A client acknowledging 2000/s with a window that stays full.
        let mut now = t0;
        for i in 0..400u32 {
            w.limited = true;
            let pkid = w.take_pkid(None, now);
            now += Duration::from_micros(500);
            assert!(w.ack(pkid, now), "ack {i}");
        }
        // 2000/s x (10 ms + 0.5 ms) = 21.
        assert!((19..=23).contains(&w.size()), "window {}", w.size());
        // A standing backlog: each acknowledgement now waits for the whole
        // window; the window stays put instead of growing.
        for _ in 0..400u32 {
            w.limited = true;
            let pkid = w.take_pkid(None, now);
            now += Duration::from_micros(500);
            w.ack(pkid, now + Duration::from_millis(10));
        }
        assert!((19..=23).contains(&w.size()), "window {}", w.size());
        assert_eq!(Outbox::new(services(), setup(true)).window(), 4);
    }
}
