//! Persistent MQTT sessions, kept by sluice and served from the log.
//!
//! rumqttd keeps a persistent session (3.1.1 clean session 0, MQTT 5
//! session expiry) in memory, delivers its queue first in, first out, and
//! loses it when sluice restarts. Every publish sluice stores is already in
//! the log, so a persistent session is a reader of the log instead, like a
//! consumer group:
//!
//! - **What is kept** (in the store's metadata, so it survives a restart
//!   and a power cut): the session's subscriptions and expiry (state key
//!   `mqtt.session/<client id>`, written before the SUBACK), and its place
//!   in each partition its subscriptions can match (the positions of the
//!   consumer group `mqtt:<client id>`, committed every second and when
//!   the connection ends: after a crash, up to a second of acknowledged
//!   deliveries come again, as MQTT's at-least-once allows).
//! - **The broker gets a clean session** for the same client id: it
//!   serves retained messages at subscription time and publishes that are
//!   not stored (`mqtt.unrouted = "drop"`, `$share` subscriptions), live
//!   only; its deliveries of stored publishes to the session are dropped by
//!   the front.
//! - **Delivery** ([`Reader`]): while the client is connected, a task reads
//!   the partitions its subscriptions can match from the session's place,
//!   in priority order (the group fetch: express first within
//!   `express_max_share`, then by weight), keeps only the records of MQTT
//!   publishes whose topic one of its subscriptions matches, and queues
//!   them in the connection's outbox at min(publish QoS, subscription QoS,
//!   1), only about a window ahead of what the client acknowledged. What
//!   was published while the client was away is delivered the same way
//!   when it comes back, alarms first; a record sent before and not
//!   acknowledged comes again with DUP 1.
//! - **Limits**: what is delivered from the log is what is stored, as
//!   stored (the MQTT topic and payload; MQTT 5 properties and RETAIN are
//!   not kept), within the topics' retention; No Local does not apply to
//!   it; a session away for longer than its expiry (`mqtt.session_expiry`
//!   at most) is forgotten.

use super::interest::Subs;
use super::outbox::{LogPos, Outbox};
use super::packet;
use super::route::Router;
use crate::delivery::{group_fetch_from, GroupRecord, Positions, Rounds};
use crate::state::Shared;
use crate::topics::Topic;
use serde::{Deserialize, Serialize};
use sluice_store::{Offset, PartitionId, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// State keys of persistent sessions start with this.
const STATE_PREFIX: &str = "mqtt.session/";
/// Most log-served publishes queued per session beyond its QoS 1 window:
/// what waits in the outbox is ordered there, but what is still in the
/// log is ordered by the group fetch, which sees an alarm as soon as it is
/// stored; so little waits in the outbox.
const AHEAD: usize = 4;
/// How often the session's place is committed while connected.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often a session's reader wakes when nothing else wakes it (an
/// append to any topic does, and a new subscription or topic is looked
/// for then).
const POLL: Duration = Duration::from_secs(5);

/// One subscription of a persistent session, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredSub {
    pub(super) filter: String,
    pub(super) qos: u8,
    #[serde(default)]
    pub(super) no_local: bool,
}

/// A persistent session, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) subs: Vec<StoredSub>,
    /// Seconds the session is kept while its client is away.
    pub(super) expiry_s: u64,
    /// When its last connection ended (ms since the epoch); `None` while
    /// connected.
    #[serde(default)]
    pub(super) away_since_ms: Option<i64>,
    /// Per partition (topic, partition, offset): the offset after the last
    /// record sent to the client; records before it come again with DUP.
    #[serde(default)]
    pub(super) sent: Vec<(String, u32, u64)>,
    /// Records sent at QoS 1 and not acknowledged when the last connection
    /// ended (topic, partition, offset, packet id): sent again with the
    /// same packet id (MQTT-4.4.0-1).
    #[serde(default)]
    pub(super) unacked: Vec<(String, u32, u64, u16)>,
    /// The user that made it: another user's connection with the same
    /// client id gets a new session.
    #[serde(default)]
    pub(super) user: Option<String>,
}

/// The consumer group that holds a session's place in the log (HTTP group
/// names cannot hold a `:`).
pub(crate) fn group(client_id: &str) -> String {
    format!("mqtt:{}", client_id.replace('\0', "\u{fffd}"))
}

fn key(client_id: &str) -> Vec<u8> {
    format!("{STATE_PREFIX}{client_id}").into_bytes()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held while a connection owns a client id's session (from its CONNACK
/// until its reader saved the session), by a clean connection while it
/// discards one, and by the expiry sweep while it looks at one.
pub(super) type Held = tokio::sync::OwnedMutexGuard<()>;

/// The persistent sessions of the node.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    /// One lock per client id that someone holds or waits for.
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Sessions {
    /// The stored session of `client_id`, as stored (expired or not).
    pub(super) fn read(&self, shared: &Shared, client_id: &str) -> Option<Stored> {
        let raw = match shared.store.state(&key(client_id)) {
            Ok(raw) => raw?,
            Err(e) => {
                tracing::error!(client_id, error = %e, "cannot read a persistent MQTT session");
                return None;
            }
        };
        serde_json::from_slice::<Stored>(&raw)
            .inspect_err(|_| {
                tracing::warn!(client_id, "unreadable persistent MQTT session: starting a new one")
            })
            .ok()
    }

    fn save_blocking(shared: &Shared, client_id: &str, stored: &Stored) {
        let value = serde_json::to_vec(stored).expect("a session serializes");
        let write =
            sluice_store::AtomicWrite { state: vec![(key(client_id), Some(value))], ..Default::default() };
        if let Err(e) = shared.store.commit_atomic(&write) {
            tracing::error!(client_id, error = %e, "cannot store a persistent MQTT session");
        }
    }

    fn discard_blocking(shared: &Shared, client_id: &str) {
        let write = sluice_store::AtomicWrite { state: vec![(key(client_id), None)], ..Default::default() };
        let result =
            shared.store.commit_atomic(&write).and_then(|_| shared.store.delete_group(&group(client_id)));
        if let Err(e) = result {
            tracing::error!(client_id, error = %e, "cannot forget a persistent MQTT session");
        }
    }

    /// Stores `stored` durably (a metadata sync, off the runtime's threads).
    pub(super) async fn save(&self, shared: &Shared, client_id: &str, stored: &Stored) {
        let (shared, id, stored) = (shared.clone(), client_id.to_owned(), stored.clone());
        let _ = tokio::task::spawn_blocking(move || Self::save_blocking(&shared, &id, &stored)).await;
    }

    /// Forgets the session of `client_id`: its subscriptions and its place.
    pub(super) async fn discard(&self, shared: &Shared, client_id: &str) {
        let (shared, id) = (shared.clone(), client_id.to_owned());
        let _ = tokio::task::spawn_blocking(move || Self::discard_blocking(&shared, &id)).await;
    }

    /// Replaces the stored subscriptions of `client_id` (by its owner).
    pub(super) async fn save_subs(&self, shared: &Shared, client_id: &str, subs: Vec<StoredSub>) {
        if let Some(mut stored) = self.read(shared, client_id) {
            stored.subs = subs;
            self.save(shared, client_id, &stored).await;
        }
    }

    /// Forgets the sessions whose clients stayed away longer than their
    /// expiry; returns how many. Blocking: for a blocking thread.
    pub(super) fn expire(&self, shared: &Shared) -> usize {
        let now = crate::now_ms();
        let keys = match shared.store.states(STATE_PREFIX.as_bytes()) {
            Ok(all) => all.into_iter().map(|(k, _)| k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list persistent MQTT sessions");
                return 0;
            }
        };
        let mut n = 0;
        for k in keys {
            let id = String::from_utf8_lossy(&k[STATE_PREFIX.len()..]).into_owned();
            // A session somebody holds is not looked at.
            let Some(held) = self.try_hold(&id) else { continue };
            match self.read(shared, &id) {
                Some(s) if !expired(&s, now) => {
                    if s.away_since_ms.is_none() {
                        // Not held, yet marked connected: its connection
                        // was cut by a crash. Away from now on.
                        Self::save_blocking(shared, &id, &Stored { away_since_ms: Some(now), ..s });
                    }
                }
                _ => {
                    tracing::info!(client_id = id, "persistent MQTT session expired");
                    Self::discard_blocking(shared, &id);
                    n += 1;
                }
            }
            self.release(&id, held);
        }
        n
    }

    /// Waits until nobody else holds `client_id`'s session.
    pub(super) async fn hold(&self, client_id: &str) -> Held {
        let m = lock(&self.running).entry(client_id.to_owned()).or_default().clone();
        m.lock_owned().await
    }

    fn try_hold(&self, client_id: &str) -> Option<Held> {
        let m = lock(&self.running).entry(client_id.to_owned()).or_default().clone();
        m.try_lock_owned().ok()
    }

    /// Lets go of `client_id`'s session.
    pub(super) fn release(&self, client_id: &str, held: Held) {
        let mut running = lock(&self.running);
        drop(held);
        // Nobody else holds or waits for it: the entry goes.
        if running.get(client_id).is_some_and(|m| Arc::strong_count(m) == 1) {
            running.remove(client_id);
        }
    }
}

fn expired(s: &Stored, now_ms: i64) -> bool {
    let expiry_ms = i64::try_from(s.expiry_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    s.away_since_ms.is_some_and(|away| now_ms.saturating_sub(away) >= expiry_ms)
}

/// Whether a stored session is past its expiry now.
pub(super) fn is_expired(s: &Stored) -> bool {
    expired(s, crate::now_ms())
}

/// The partitions a set of subscriptions can match, and where a new
/// subscription starts reading.
pub(super) fn candidates(shared: &Shared, router: &Router, filters: &[String]) -> Vec<Arc<Topic>> {
    let all = shared.topics.all();
    let mut names: Vec<&str> = Vec::new();
    for f in filters.iter().filter(|f| super::interest::from_log(f)) {
        match router.log_topics_for(f) {
            None => return all,
            Some(n) => names.extend(n),
        }
    }
    all.into_iter().filter(|t| names.contains(&&*t.name)).collect()
}

/// A subscription was added to a persistent session: the partitions it
/// brings in start at their end (what was published before it is not
/// its), committed before the SUBACK.
pub(super) fn start_new_partitions(
    shared: &Shared,
    client_id: &str,
    before: &[Arc<Topic>],
    after: &[Arc<Topic>],
) {
    let group = group(client_id);
    for t in after.iter().filter(|t| !before.iter().any(|b| b.name == t.name)) {
        for p in 0..t.partitions {
            let p = PartitionId(p);
            let Ok((_, end)) = shared.store.watermarks(&t.name, p) else { continue };
            let _ = commit_clamped(shared, &group, &t.name, p, end);
        }
    }
}

/// Commits `offset`, or the durable end when `offset` is past it; returns
/// what was committed.
fn commit_clamped(
    shared: &Shared,
    group: &str,
    topic: &str,
    p: PartitionId,
    offset: Offset,
) -> Option<Offset> {
    let result = match shared.store.commit(group, topic, p, offset) {
        Ok(()) => Ok(offset),
        Err(StoreError::CommitPastEnd { high_watermark, .. }) => {
            shared.store.commit(group, topic, p, Offset(high_watermark)).map(|()| Offset(high_watermark))
        }
        Err(e) => Err(e),
    };
    result
        .inspect_err(|e| {
            tracing::warn!(group, topic, partition = p.0, error = %e, "cannot commit a persistent MQTT session's place");
        })
        .ok()
}

/// Serves one connection of a persistent session from the log.
pub(super) struct Reader {
    pub(super) shared: Shared,
    pub(super) sessions: Arc<Sessions>,
    pub(super) router: Router,
    pub(super) client_id: String,
    pub(super) level: u8,
    pub(super) subs: Arc<Subs>,
    pub(super) outbox: Arc<Outbox>,
}

/// Tells a session's reader to stop (the connection ended).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stop {
    /// The session expiry (seconds) an MQTT 5 DISCONNECT set, stored with
    /// the session.
    pub(super) expiry_s: Option<u64>,
}

type Tp = (Arc<str>, PartitionId);
/// Per partition, the offset after what the previous connection sent.
type Sent = HashMap<Tp, Offset>;
/// The packet ids of what the previous connection left unacknowledged.
type Pkids = HashMap<(Tp, Offset), u16>;

impl Reader {
    /// Runs until `stop` comes; then commits its place, stores what was
    /// sent and not acknowledged (for DUP and packet ids on the next
    /// connection) and the expiry the stop carries, and lets go of the session (`held`, taken when the
    /// connection was accepted; `stored` is the session as it was then).
    pub(super) async fn run(self, held: Held, stored: Stored, mut stop: watch::Receiver<Option<Stop>>) {
        let group = group(&self.client_id);
        // What the previous connection sent: re-sends below it get DUP.
        let mut sent_before: HashMap<Tp, Offset> = stored
            .sent
            .iter()
            .map(|(t, p, o)| ((Arc::from(t.as_str()), PartitionId(*p)), Offset(*o)))
            .collect();
        let pkids: HashMap<(Tp, Offset), u16> = stored
            .unacked
            .iter()
            .map(|(t, p, o, pkid)| (((Arc::from(t.as_str()), PartitionId(*p)), Offset(*o)), *pkid))
            .collect();
        let mut positions = Positions::default();
        let mut rounds = Rounds::default();
        let mut express_rounds = Rounds::default();
        let mut express: Vec<Arc<Topic>> = Vec::new();
        let mut topics: Vec<Arc<Topic>> = Vec::new();
        let mut known: BTreeSet<Tp> = BTreeSet::new();
        let mut outstanding: HashMap<Tp, BTreeSet<Offset>> = HashMap::new();
        let mut committed: HashMap<Tp, Offset> = HashMap::new();
        let mut subs_generation = u64::MAX;
        let mut topic_count = usize::MAX;
        let mut commit_at = Instant::now() + COMMIT_EVERY;
        // Something moved since the last commit.
        let mut moved = false;
        loop {
            if stop.borrow().is_some() {
                break;
            }
            for pos in self.outbox.take_log_done() {
                moved = true;
                if let Some(set) = outstanding.get_mut(&(pos.topic.clone(), pos.partition)) {
                    set.remove(&pos.offset);
                }
            }
            let (generation, count) = (self.subs.generation(), self.shared.topics.count());
            if generation != subs_generation || count != topic_count {
                (subs_generation, topic_count) = (generation, count);
                let filters: Vec<String> = self.subs.filters().iter().map(|f| f.to_string()).collect();
                topics = candidates(&self.shared, &self.router, &filters);
                express = topics
                    .iter()
                    .filter(|t| self.shared.services.resolve(&t.service).class().express)
                    .cloned()
                    .collect();
                // Partitions no longer matched start over if matched again.
                known.retain(|(name, _)| topics.iter().any(|t| t.name == *name));
                for t in &topics {
                    for p in 0..t.partitions {
                        let tp = (t.name.clone(), PartitionId(p));
                        if known.insert(tp.clone()) {
                            // Committed when the subscription came, or a
                            // topic created since: from its start.
                            let from = self.shared.store.committed(&group, &t.name, tp.1).ok().flatten();
                            positions.advance(&t.name, tp.1, from.unwrap_or(Offset(0)));
                        }
                    }
                }
            }
            if moved && Instant::now() >= commit_at {
                self.commit(&group, &topics, &positions, &outstanding, &mut committed);
                commit_at = Instant::now() + COMMIT_EVERY;
                moved = false;
            }
            // The QoS 1 window is sized in time from the client's pace.
            let limit = self.outbox.window() + AHEAD;
            let pending = self.outbox.log_pending();
            let rx = self.shared.topics.subscribe_any();
            // Express records do not wait for room: they go into the
            // outbox at once, where they pass what is queued (up to one
            // more window's worth).
            let (from, max, rounds) = if pending < limit {
                (&topics, limit - pending, &mut rounds)
            } else {
                (&express, (2 * limit).saturating_sub(pending), &mut express_rounds)
            };
            let mut read = 0;
            if max > 0 && !from.is_empty() {
                match group_fetch_from(&self.shared, from, &mut positions, rounds, max) {
                    Ok(records) => {
                        read = records.len();
                        // Skipped records move the place too.
                        moved |= read > 0;
                        for r in records {
                            self.deliver(r, (&sent_before, &pkids), &mut outstanding);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(client_id = self.client_id, error = %e, "cannot read the log for a persistent MQTT session");
                    }
                }
            }
            if read > 0 {
                // Reads are short but blocking: the runtime's other tasks
                // go between them.
                tokio::task::yield_now().await;
                continue;
            }
            let mut rx = rx;
            let wake = if moved { commit_at.min(Instant::now() + POLL) } else { Instant::now() + POLL };
            tokio::select! {
                // An append may also be a new topic or match a new
                // subscription: looked at whenever there is room.
                _ = rx.changed(), if max > 0 => {}
                _ = self.outbox.log_changed() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.wait_for(Option::is_some) => break,
            }
        }
        for pos in self.outbox.take_log_done() {
            if let Some(set) = outstanding.get_mut(&(pos.topic.clone(), pos.partition)) {
                set.remove(&pos.offset);
            }
        }
        self.commit(&group, &topics, &positions, &outstanding, &mut committed);
        for ((t, p), o) in self.outbox.log_sent() {
            let e = sent_before.entry((t, p)).or_insert(o);
            *e = (*e).max(o);
        }
        // Only what is still ahead of the session's place matters.
        let sent: Vec<(String, u32, u64)> = sent_before
            .into_iter()
            .filter(|(tp, o)| committed.get(tp).is_some_and(|c| c < o))
            .map(|((t, p), o)| (t.to_string(), p.0, o.0))
            .collect();
        let unacked = self
            .outbox
            .log_unacked()
            .into_iter()
            .map(|(pos, pkid)| (pos.topic.to_string(), pos.partition.0, pos.offset.0, pkid))
            .collect();
        // Read again: the connection stored its subscriptions meanwhile.
        if let Some(mut stored) = self.sessions.read(&self.shared, &self.client_id) {
            stored.sent = sent;
            stored.unacked = unacked;
            stored.away_since_ms = Some(crate::now_ms());
            if let Some(expiry_s) = stop.borrow().and_then(|s| s.expiry_s) {
                stored.expiry_s = expiry_s;
            }
            self.sessions.save(&self.shared, &self.client_id, &stored).await;
        }
        self.sessions.release(&self.client_id, held);
    }

    /// Queues one record for the client when a subscription matches it.
    fn deliver(
        &self,
        r: GroupRecord,
        (sent_before, pkids): (&Sent, &Pkids),
        outstanding: &mut HashMap<Tp, BTreeSet<Offset>>,
    ) {
        let header = |name: &str| r.record.record.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        // Not an MQTT publish (HTTP, Kafka, rules).
        let Some(topic) = header("mqtt.topic") else { return };
        let Some(granted) = std::str::from_utf8(topic).ok().and_then(|t| self.subs.log_qos(t)) else {
            return;
        };
        let published = header("mqtt.qos").and_then(|v| v.first()).map_or(0, |b| b.saturating_sub(b'0'));
        let qos = published.min(granted).min(1);
        let tp = (r.topic.name.clone(), r.partition);
        let offset = r.record.offset;
        let dup = sent_before.get(&tp).is_some_and(|s| offset < *s);
        let pkid = pkids.get(&(tp.clone(), offset)).copied().filter(|_| qos > 0);
        let frame = packet::publish_frame(topic, &r.record.record.value, qos, dup, self.level);
        let service = self.shared.services.resolve(&r.topic.service).id;
        outstanding.entry(tp).or_default().insert(offset);
        self.outbox.publish_from_log(
            frame,
            service,
            LogPos { topic: r.topic.name.clone(), partition: r.partition, offset },
            pkid,
        );
    }

    /// Commits, per partition, the first record the client does not have
    /// yet (or where reading goes on).
    fn commit(
        &self,
        group: &str,
        topics: &[Arc<Topic>],
        positions: &Positions,
        outstanding: &HashMap<Tp, BTreeSet<Offset>>,
        committed: &mut HashMap<Tp, Offset>,
    ) {
        for t in topics {
            for p in 0..t.partitions {
                let tp = (t.name.clone(), PartitionId(p));
                let at = outstanding
                    .get(&tp)
                    .and_then(|s| s.first().copied())
                    .unwrap_or_else(|| positions.get(&t.name, tp.1));
                if committed.get(&tp) != Some(&at) {
                    if let Some(done) = commit_clamped(&self.shared, group, &t.name, tp.1, at) {
                        committed.insert(tp, done);
                    }
                }
            }
        }
    }
}
