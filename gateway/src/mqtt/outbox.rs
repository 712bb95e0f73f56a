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
//! - **QoS 0 is paced** ([`Pace`]): it has no acknowledgement, so a QoS 0
//!   flood would fill the socket buffers (sluice's send buffer, the
//!   client's receive buffer and library, outside sluice's reach) and an
//!   alarm written after it would wait for all of that. The client's
//!   PUBACKs to sluice's QoS 1 deliveries show how far it has read; QoS 0
//!   goes out at the rate it reads, about `mqtt.delivery_target_delay`
//!   ahead, and the rest waits here, in priority order. While no QoS 1
//!   delivery flows to the client there is nothing to learn from, and
//!   QoS 0 is not paced.
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
    /// Nothing yet; try again at this time at the latest (QoS 0 pacing),
    /// else when woken.
    Wait(Option<Instant>),
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

impl Queued {
    /// The publish's QoS.
    fn qos(&self) -> u8 {
        (self.frame[0] >> 1) & 0x03
    }
}

/// Priority order between services: express before weighted, then by
/// weight (for eviction, lowest first; for going by paced bulk, highest).
fn rank(class: ServiceClass) -> (bool, u32) {
    (class.express, class.weight)
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

    /// The client acknowledged `pkid`: its acknowledgement delay, or None
    /// when it is not one of ours.
    pub(super) fn ack(&mut self, pkid: u16, now: Instant) -> Option<Duration> {
        let sent = self.inflight.remove(&pkid)?;
        let delay = now.saturating_duration_since(sent);
        if self.min_delay.is_none_or(|d| delay < d) {
            self.min_delay = Some(delay);
        }
        self.acked += 1;
        self.resize(now);
        Some(delay)
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

/// Paces QoS 0 publishes by what the client shows it has consumed.
///
/// QoS 0 has no acknowledgement, so without pacing a QoS 0 flood fills the
/// socket buffers (sluice's and the client's) and whatever the client
/// library holds, and an alarm written after it waits for all of that.
/// The client's PUBACKs to sluice's QoS 1 deliveries are the evidence: the
/// acknowledgement of a publish written at byte `p` of the stream says the
/// client had read everything up to `p`. Between two acknowledgements the
/// client is assumed to go on at the rate it showed while it was busy (an
/// acknowledgement that waited longer than the connection's round trip had
/// a queue in front of it), a little faster so a client that speeds up is
/// noticed; QoS 0 publishes are written while the estimated unread bytes
/// are under what the client reads in the target delay. So what waits in
/// front of an alarm is about the target delay of the client's reading,
/// and what waits beyond that waits in the outbox, in priority order.
///
/// Without evidence there is no pacing: nothing acknowledged yet (a
/// subscriber of QoS 0 only), or no QoS 1 delivery in flight and none
/// acknowledged for [`Pace::STALE`].
#[derive(Debug)]
pub(super) struct Pace {
    target: Duration,
    /// Bytes taken for the client so far (its stream position).
    written: u64,
    /// Per QoS 1 packet id of sluice's in flight: the stream position
    /// after that publish.
    marks: HashMap<u16, u64>,
    /// The latest evidence: the client had read `.0` bytes at `.1`.
    anchor: Option<(u64, Instant)>,
    /// Bytes per second the client reads while busy; 0 until measured.
    rate: f64,
    /// Unread bytes allowed while the rate is not known yet.
    cap: u64,
    /// Where the next rate sample is measured from.
    rate_from: Option<(u64, Instant)>,
    /// When, since the anchor, a QoS 0 publish was first held back.
    limited_since: Option<Instant>,
}

impl Pace {
    /// Without a QoS 1 delivery in flight, evidence older than this is no
    /// evidence.
    const STALE: Duration = Duration::from_secs(1);
    /// How much faster than measured the client is assumed to read between
    /// acknowledgements.
    const GAIN: f64 = 1.1;
    /// Unread bytes allowed before the rate is measured.
    const START_CAP: u64 = 32 << 10;
    /// Before the rate is measured, how often the cap doubles while it
    /// holds publishes back and no acknowledgement is awaited.
    const GROW_EVERY: Duration = Duration::from_millis(100);
    /// Unread bytes always allowed: a few publishes.
    const MIN_BUDGET: f64 = 1024.0;
    /// Highest read rate assumed (bytes per second).
    const MAX_RATE: f64 = 1e10;
    /// Shortest interval a rate is measured over.
    const SAMPLE_OVER: Duration = Duration::from_millis(20);
    /// An acknowledgement this much slower than the connection's fastest
    /// one had a queue in front of it.
    const BUSY_SLACK: Duration = Duration::from_millis(1);

    pub(super) fn new(target: Duration) -> Pace {
        Pace {
            target,
            written: 0,
            marks: HashMap::new(),
            anchor: None,
            rate: 0.0,
            cap: Self::START_CAP,
            rate_from: None,
            limited_since: None,
        }
    }

    /// `n` more bytes were taken for the client.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// A QoS 1 publish under `pkid` ends at the current position.
    fn mark(&mut self, pkid: u16) {
        self.marks.insert(pkid, self.written);
    }

    /// The client acknowledged `pkid` after `delay`; `min_delay` is the
    /// connection's fastest acknowledgement (its round trip).
    fn acked(&mut self, pkid: u16, delay: Duration, min_delay: Duration, now: Instant) {
        let Some(pos) = self.marks.remove(&pkid) else { return };
        let Some((from, at)) = self.anchor else {
            self.anchor = Some((pos, now));
            return;
        };
        if pos <= from {
            return;
        }
        if delay > min_delay + Self::BUSY_SLACK {
            // Busy all along since the baseline: what it read is what it
            // can read. Measured over at least SAMPLE_OVER (acknowledgements
            // of publishes written together come together).
            let (base, since) = *self.rate_from.get_or_insert((from, at));
            let elapsed = now.saturating_duration_since(since);
            if elapsed >= Self::SAMPLE_OVER && pos > base {
                let sample = (pos - base) as f64 / elapsed.as_secs_f64();
                self.rate =
                    if self.rate > 0.0 { ((self.rate + sample) / 2.0).min(2.0 * self.rate) } else { sample };
                self.rate_from = Some((pos, now));
            }
        } else {
            self.rate_from = None;
            if self.limited_since.is_some() {
                // It read everything it was given and waited for more.
                if self.rate > 0.0 {
                    self.rate = (self.rate * 1.5).min(Self::MAX_RATE);
                } else {
                    self.cap = self.cap.saturating_mul(2);
                }
            }
        }
        self.anchor = Some((pos, now));
        self.limited_since = None;
    }

    /// Whether a QoS 0 publish may be written now; else when to ask again
    /// (an acknowledgement may open the gate earlier: it wakes the writer).
    fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        let Some((from, at)) = self.anchor else { return Ok(()) };
        let age = now.saturating_duration_since(at);
        if self.marks.is_empty() && age > Self::STALE {
            // Nothing to go on any more.
            return Ok(());
        }
        let (read, budget, next) = if self.rate > 0.0 {
            let read = from.saturating_add((self.rate * Self::GAIN * age.as_secs_f64()) as u64);
            (read, (self.rate * self.target.as_secs_f64()).max(Self::MIN_BUDGET) as u64, None)
        } else {
            // No rate yet. With an acknowledgement to wait for, it opens
            // the gate (it wakes the writer). Without one, or when it does
            // not come within STALE (a client holding its PUBACKs back),
            // the cap doubles every GROW_EVERY the gate holds publishes
            // back: a client that reads fast is slowed for moments only,
            // and one that does not is paced from its next QoS 1 delivery.
            let hold = if self.marks.is_empty() { Duration::ZERO } else { Self::STALE };
            let start = self.limited_since.unwrap_or(now) + hold;
            match now.checked_duration_since(start) {
                None => (from, self.cap, Some(start)),
                Some(grown) => {
                    let n = (grown.as_millis() / Self::GROW_EVERY.as_millis()) as u32;
                    let doublings = (n + u32::from(!hold.is_zero())).min(20);
                    (from, self.cap.saturating_mul(1 << doublings), Some(start + Self::GROW_EVERY * (n + 1)))
                }
            }
        };
        let unread = self.written.saturating_sub(read);
        if unread < budget {
            return Ok(());
        }
        self.limited_since.get_or_insert(now);
        Err(next.unwrap_or_else(|| {
            let wait = (unread - budget + 1) as f64 / (self.rate * Self::GAIN);
            now + Duration::from_secs_f64(wait.min(1.0))
        }))
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
    /// QoS 0 pacing from the client's QoS 1 acknowledgements.
    pace: Pace,
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
                pace: Pace::new(setup.target),
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
        let now = Instant::now();
        let ours = st.window.ack(pkid, now).is_some_and(|delay| {
            let min = st.window.min_delay.unwrap_or(delay);
            st.pace.acked(pkid, delay, min, now);
            true
        });
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
                Some(bytes) => {
                    st.pace.wrote(bytes.len());
                    out.extend_from_slice(&bytes);
                }
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
        let mut retry = None;
        while out.len() < max {
            let q = match st.held.take() {
                Some(q) => q,
                None => match st.sched.pop() {
                    Some((_, q)) => q,
                    None => break,
                },
            };
            if q.own_pkid_at.is_some() && st.window.full() {
                st.window.limited = true;
                st.held = Some(q);
                break;
            }
            // QoS 0 is paced, but not an express service's (alarms, held
            // to express_max_share anyway); once the connection is ending,
            // what is left goes out.
            let paced =
                q.own_pkid_at.is_none() && q.qos() == 0 && !st.done && !st.sched.class(q.service).express;
            if paced {
                if let Err(at) = st.pace.admit(now) {
                    retry = Some(at);
                    let held = st.sched.class(q.service);
                    st.held = Some(q);
                    // What is not paced (QoS 1, within the window; express
                    // QoS 0) of services of higher priority goes by the
                    // held publish (not in arrival order: MQTT 5 topic
                    // aliases need that order). Not lower ones: they
                    // would keep the gate shut by filling the window.
                    while out.len() < max && st.sched.mode() != Mode::Fifo {
                        let Some((id, qos1)) = st.unpaced_front(&self.services, held) else { break };
                        if qos1 && st.window.full() {
                            st.window.limited = true;
                            break;
                        }
                        let Some((_, q)) = st.sched.pop_oldest_of(id) else { break };
                        self.emit(&mut st, q, &mut out, now);
                    }
                    break;
                }
            }
            self.emit(&mut st, q, &mut out, now);
        }
        if !out.is_empty() {
            Next::Bytes(out)
        } else if st.done {
            Next::Done
        } else {
            Next::Wait(retry)
        }
    }

    /// Writes one publish for the client into `out`: sluice's packet id
    /// for its QoS 1, the log's bookkeeping, the delivery histogram.
    fn emit(&self, st: &mut State, q: Queued, out: &mut BytesMut, now: Instant) {
        let start = out.len();
        out.extend_from_slice(&q.frame);
        st.pace.wrote(q.frame.len());
        if let Some(at) = q.own_pkid_at {
            let pkid = st.window.take_pkid(q.prefer_pkid, now);
            st.pace.mark(pkid);
            if q.from_log.is_none() {
                // Not a re-send of sluice's: no DUP.
                out[start] &= !0x08;
            }
            out[start + at..start + at + 2].copy_from_slice(&pkid.to_be_bytes());
            if let Some(pos) = &q.from_log {
                st.sent_from_log(pos);
                st.log_inflight.insert(pkid, pos.clone());
            }
        } else if let Some(pos) = q.from_log.clone() {
            st.sent_from_log(&pos);
            st.log_pending -= 1;
            st.log_done.push(pos);
            self.log_wake.notify_one();
        }
        st.bytes -= q.frame.len() as u64;
        crate::histograms::delivered_mqtt(
            &self.services.by_id(q.service).name,
            now.saturating_duration_since(q.queued),
        );
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
    /// The highest service of higher priority than `above` (express
    /// before weighted, then by weight) whose next publish is not paced:
    /// one of sluice's QoS 1 deliveries (then true), or an express one.
    fn unpaced_front(&self, services: &Services, above: ServiceClass) -> Option<(ServiceId, bool)> {
        services
            .iter()
            .map(|s| (self.sched.class(s.id), s.id))
            .filter(|&(class, id)| {
                rank(class) > rank(above)
                    && self.sched.front(id).is_some_and(|q| q.own_pkid_at.is_some() || class.express)
            })
            .max_by_key(|&(class, _)| rank(class))
            .map(|(_, id)| (id, self.sched.front(id).is_some_and(|q| q.own_pkid_at.is_some())))
    }

    fn sent_from_log(&mut self, pos: &LogPos) {
        let next = pos.offset.next();
        let sent = self.log_sent.entry((pos.topic.clone(), pos.partition)).or_insert(next);
        *sent = (*sent).max(next);
    }

    /// Drops the oldest publish of the lowest-priority service that has
    /// one sluice may drop; false when there is none.
    fn evict_one(&mut self, services: &Services) -> bool {
        let own_qos1 = self.own_qos1;
        // The broker's QoS 1 is the broker's to deliver: bounded by its
        // window, not here. What the log serves stays in the log until
        // there is room (and is passed over: it is bounded by the reader).
        let droppable = |q: &Queued| q.from_log.is_none() && (own_qos1 || q.qos() == 0);
        let mut order: Vec<_> = services.iter().map(|s| (self.sched.class(s.id), s.id)).collect();
        order.sort_by_key(|&(class, _)| rank(class));
        for (_, id) in order {
            if let Some((_, q)) = self.sched.remove_oldest_where(id, droppable) {
                self.bytes -= q.frame.len() as u64;
                services.by_id(id).counters.mqtt_delivery_dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
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
        assert!(matches!(out.take(1 << 20), Next::Wait(None)));
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
    fn a_full_queue_drops_bulk_queued_behind_a_publish_from_the_log() {
        let services = services();
        let mut s = setup(true);
        s.limit = 200;
        let out = Outbox::new(services.clone(), s);
        // A persistent session's publish from the log heads the bulk queue;
        // the broker's QoS 0 bulk piles up behind it.
        let pos = LogPos {
            topic: "bulk".into(),
            partition: sluice_store::PartitionId(0),
            offset: sluice_store::Offset(7),
        };
        out.publish_from_log(publish("bulk/log", 1, 0), ServiceId(1), pos, None);
        for _ in 0..50 {
            out.publish(publish("bulk/x", 0, 0), ServiceId(1));
        }
        let st = out.lock();
        assert!(st.bytes <= 200, "bounded: {} bytes queued", st.bytes);
        assert_eq!(st.log_pending, 1);
        drop(st);
        let dropped = services.by_id(ServiceId(1)).counters.mqtt_delivery_dropped.load(Ordering::Relaxed);
        assert!(dropped >= 30, "dropped {dropped}");
        let Next::Bytes(all) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(topics(&all)[0].0, "bulk/log", "the publish from the log is kept, and first");
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
    fn qos0_is_not_paced_without_evidence() {
        let now = Instant::now();
        let mut p = Pace::new(Duration::from_millis(5));
        // Nothing acknowledged yet: a subscriber of QoS 0 only.
        p.wrote(10 << 20);
        assert_eq!(p.admit(now), Ok(()));
        // Acknowledged once, nothing in flight, no rate: 32 KiB beyond
        // that, doubling every 100 ms the gate holds publishes back.
        p.mark(1);
        p.acked(1, Duration::from_micros(200), Duration::from_micros(200), now);
        p.wrote(40 << 10);
        assert_eq!(p.admit(now), Err(now + Pace::GROW_EVERY));
        assert_eq!(p.admit(now + Pace::GROW_EVERY), Ok(()));
        p.wrote(40 << 10);
        let later = now + Pace::GROW_EVERY * 2;
        assert_eq!(p.admit(later), Ok(()), "128 KiB by now");
        p.wrote(10 << 20);
        assert!(p.admit(later).is_err());
        // Without QoS 1 deliveries, evidence a second old is none.
        assert_eq!(p.admit(now + Pace::STALE + Duration::from_millis(1)), Ok(()));
    }

    #[test]
    fn qos0_is_paced_at_the_rate_the_client_reads_while_busy() {
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::from_millis(5));
        let rtt = Duration::from_micros(200);
        // An alarm, read at once: the anchor.
        p.wrote(100);
        p.mark(1);
        p.acked(1, rtt, rtt, t0);
        // A flood: with no alarm in flight and no rate it goes out.
        let mut now = t0;
        for _ in 0..100 {
            assert_eq!(p.admit(now), Ok(()));
            p.wrote(200);
        }
        // An alarm goes out: now 32 KiB beyond what the client showed it
        // read are allowed until its acknowledgement.
        p.wrote(100);
        p.mark(2);
        let mut taken = 20_100;
        while p.admit(now).is_ok() {
            p.wrote(200);
            taken += 200;
        }
        assert!((Pace::START_CAP..Pace::START_CAP + 400).contains(&taken), "{taken}");
        // The acknowledgement opens the gate (it wakes the writer); if it
        // does not come within STALE, the cap starts doubling.
        assert_eq!(p.admit(now), Err(now + Pace::STALE));
        let held_back = now + Pace::STALE;
        assert_eq!(p.admit(held_back), Ok(()), "64 KiB once STALE passed without it");
        assert!(p.admit(held_back + Pace::GROW_EVERY).is_ok());
        // The client reads 200 kB/s: the alarm is acknowledged once the
        // 20 kB before it are read; it was busy.
        let busy = Duration::from_secs_f64(20_100.0 / 200_000.0);
        now += busy;
        p.wrote(100);
        p.mark(3);
        p.acked(2, busy, rtt, now);
        assert!((p.rate - 200_000.0).abs() < 5_000.0, "rate {}", p.rate);
        // 12.7 kB written after the alarm are still unread: the gate opens
        // when the client is estimated (at 1.1x its rate) to have read
        // all but MIN_BUDGET of them, about 53 ms later.
        assert!(p.admit(now).is_err());
        let Err(at) = p.admit(now) else { panic!("a time to ask again") };
        let wait = at - now;
        assert!(wait > Duration::from_millis(45) && wait < Duration::from_millis(60), "{wait:?}");
        now = at;
        assert_eq!(p.admit(now), Ok(()));
        p.wrote(200);
        while p.admit(now).is_ok() {
            p.wrote(200);
        }
        // From then on, what it reads in 10 ms (2.2 kB at 1.1x).
        now += Duration::from_millis(10);
        let mut later = 0u64;
        while p.admit(now).is_ok() {
            p.wrote(200);
            later += 200;
        }
        assert!((2000..=3000).contains(&later), "{later}");
    }

    /// An outbox whose QoS 0 bulk is held back by the pacing: an alarm
    /// acknowledged (the anchor), another in flight, bulk past the first
    /// cap.
    fn paced_bulk() -> Outbox {
        let (alarms, bulk) = (ServiceId(0), ServiceId(1));
        let out = Outbox::new(services(), setup(true));
        out.publish(publish("alarm/0", 1, 1), alarms);
        out.publish(publish("alarm/1", 1, 2), alarms);
        let Next::Bytes(first) = out.take(1 << 20) else { panic!("bytes expected") };
        assert_eq!(topics(&first).len(), 2);
        assert!(out.acked(1));
        for _ in 0..10_000 {
            out.publish(publish("bulk/x", 0, 0), bulk);
        }
        let mut sent = 0;
        loop {
            match out.take(WRITE_BATCH) {
                Next::Bytes(b) => sent += topics(&b).len(),
                Next::Wait(Some(_)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent > 100 && sent < 10_000, "paced after {sent} of 10000");
        out
    }

    #[test]
    fn a_paced_qos0_publish_lets_qos1_of_other_services_by() {
        let out = paced_bulk();
        // An alarm now goes by the bulk held back.
        out.publish(publish("alarm/2", 1, 3), ServiceId(0));
        let Next::Bytes(next) = out.take(WRITE_BATCH) else { panic!("bytes expected") };
        assert_eq!(topics(&next), vec![("alarm/2".into(), 3)]);
    }

    #[test]
    fn an_express_qos0_publish_is_not_paced_and_lower_qos1_does_not_pass_paced_bulk() {
        let out = paced_bulk();
        // Bulk at QoS 1 of the same service waits behind the held bulk, an
        // express alarm at QoS 0 does not.
        out.publish(publish("bulk/one", 1, 9), ServiceId(1));
        out.publish(publish("alarm/2", 0, 0), ServiceId(0));
        let Next::Bytes(next) = out.take(WRITE_BATCH) else { panic!("bytes expected") };
        assert_eq!(topics(&next), vec![("alarm/2".into(), 0)]);
        assert!(matches!(out.take(WRITE_BATCH), Next::Wait(Some(_))), "bulk stays paced");
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
            assert!(w.ack(pkid, now).is_some(), "ack {i}");
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
