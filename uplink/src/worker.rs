//! One uplink's forwarding loop: choose the next partition by priority,
//! read a batch from its cursor, send it, move the cursor after the ack.
//!
//! - **Pipelining with order kept**: up to `max_in_flight` batches (and the
//!   sink's own limit) are in flight at once, each a task, but never two of
//!   one partition: a partition's next batch is read only after its last
//!   one was acknowledged (or failed, and is read again from the cursor).
//!   So each partition's records arrive in offset order across retries,
//!   while many partitions share the link; the drain rate is set by the
//!   link's bandwidth, not its round trip.
//! - **Batches grow while a backlog exists**: a partition with more unsent
//!   than `batch_max_bytes` is read in batches of up to
//!   `backlog_batch_max_bytes` (at most a quarter second of the bandwidth
//!   cap); after a failure it starts again at `batch_max_bytes` and doubles
//!   after each acknowledged batch, and a batch refused as too large lowers
//!   the limit to half its size. Live data goes in `batch_max_bytes`
//!   batches after `linger`.
//! - **Priority**: partitions are chosen with the weighted scheduler of
//!   `sluice-store` (express services first within their cap, then weighted
//!   shares), in two lanes: *live* partitions, whose oldest unsent record is
//!   younger than [`LIVE_AGE`], and *backlog* partitions. While both lanes
//!   have work, the live lane gets `live_share` of the bytes sent, so fresh
//!   alarms are not stuck behind hours of backlog after an outage.
//! - **At least once, cursors off the critical path**: the cursor is stored
//!   (in memory: `Store::set_cursor`) as soon as the sink acknowledged the
//!   batch, and made durable by a store flush at most every
//!   `checkpoint_interval`, requested in the background (never one device
//!   sync per batch). A crash re-sends at most what was acknowledged since
//!   the last checkpoint plus the batches in flight, per partition; the
//!   central side drops them by the provenance headers. The end of every
//!   batch handed to the sink is stored too (the "sent mark", a cursor of
//!   `<uplink>#sent`), so after a restart records below the last durable
//!   sent mark are counted as re-sent (`resent_records`, a lower bound
//!   after a crash: acknowledgements after the last checkpoint are not
//!   known).
//! - **Nothing stops a partition**: records past their service's TTL and
//!   records the sink can never carry ([`Sink::cannot_carry`]) are skipped,
//!   counted, and the cursor moves past them with the batch they were read
//!   in.

use crate::backoff::{Backoff, BackoffConfig};
use crate::budget::{wire_bytes, Budget, BATCH_FRAMING, RECORD_FRAMING};
use crate::sink::{Batch, OutRecord, Sink, SinkError};
use crate::status::{State, UplinkStatus};
use crate::Host;
use sluice_config::UplinkConfig;
use sluice_store::scheduler::{Mode, Scheduler, ServiceId};
use sluice_store::{now_ms, older_than_cutoff, Offset, PartitionId, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A partition whose oldest unsent record is younger than this is "live".
pub const LIVE_AGE: Duration = Duration::from_secs(2);

/// Longest wait for one batch to be acknowledged.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How soon to look again while records wait for their flush (the flusher
/// does not wake the worker; a flush takes a few ms).
const FLUSH_POLL: Duration = Duration::from_millis(5);

/// Longest wait for the last checkpoint when the worker stops.
const FINAL_CHECKPOINT: Duration = Duration::from_secs(5);

/// Batches read in one round that carried nothing to send (all skipped)
/// before the worker lets the rest of the loop run.
const MAX_EMPTY_READS: u32 = 64;

type Key = (String, u32);

#[derive(Debug)]
struct Part {
    service: String,
    partitions: u32,
    /// Next offset to forward: everything before it was acknowledged.
    cursor: Offset,
    /// A batch of this partition is in flight.
    busy: bool,
    /// More than `batch_max_bytes` is waiting.
    backlog: bool,
    /// Byte limit of this partition's next backlog batch (grows while the
    /// backlog lasts).
    grow: u64,
    /// The sent mark found at start: records below it were handed to the
    /// sink by an earlier run (a re-send if sent again).
    resend_below: Offset,
    /// The batch after the one in flight, read ahead: (its first offset,
    /// the batch, where its read ended).
    ahead: Option<(Offset, Batch, ReadEnd)>,
}

/// Byte counters of the two lanes while both have work.
#[derive(Debug, Default)]
struct LaneShare {
    live: u64,
    backlog: u64,
}

/// One batch handed to the sink.
struct Flight {
    key: Key,
    lane: usize,
    batch: Batch,
    read: ReadEnd,
    bytes: u64,
    started: Instant,
}

/// What the worker's tasks report.
enum Event {
    Sent(Box<Flight>, Result<(), SinkError>),
    Checkpoint(bool),
}

/// Cursor checkpoints: acknowledged cursors are made durable in the
/// background, at most every `checkpoint_interval`.
#[derive(Debug)]
struct Checkpoints {
    /// Cursors moved since the last checkpoint was requested.
    dirty: bool,
    /// A checkpoint is being written.
    pending: bool,
    /// When the last one was requested.
    last: Instant,
}

pub(crate) struct Worker<S> {
    config: UplinkConfig,
    node: String,
    store: Store,
    host: Arc<dyn Host>,
    sink: Arc<S>,
    status: Arc<UplinkStatus>,
    parts: BTreeMap<Key, Part>,
    services: HashMap<String, ServiceId>,
    lanes: [Scheduler<Key>; 2],
    /// Per lane, the live entries of each partition in that lane's
    /// scheduler (up to 2 while a backlog lasts, so its service stays
    /// backlogged while one batch is out).
    queued: [HashMap<Key, u32>; 2],
    share: LaneShare,
    backoff: Backoff,
    /// No new batch before this (backing off after an error).
    retry_at: Option<Instant>,
    bucket: Option<TokenBucket>,
    /// Some partition has records not flushed yet (not forwarded until
    /// they are: a crash could lose them and reuse their offsets).
    awaiting_flush: bool,
    /// Send and checkpoint tasks.
    tasks: JoinSet<Event>,
    /// Send tasks among them.
    flights: usize,
    /// The partition of each send task.
    sending: HashMap<tokio::task::Id, Key>,
    /// Most sends in flight.
    window: usize,
    /// Largest batch of a backlogged partition: `backlog_batch_max_bytes`,
    /// lowered when the central side refused a batch as too large.
    backlog_bytes: u64,
    checkpoints: Checkpoints,
    /// When the last acknowledgement came (throughput).
    last_ack: Option<Instant>,
    /// Owner name of the sent marks in the store.
    sent_owner: String,
    /// The metered link's budget.
    budget: Option<Budget>,
    /// Partitions the budget stopped in this round of `fill` (not queued
    /// again until the next round).
    held: std::collections::HashSet<Key>,
}

const LIVE: usize = 0;
const BACKLOG: usize = 1;

impl<S: Sink> Worker<S> {
    pub(crate) fn new(
        config: UplinkConfig,
        node: String,
        store: Store,
        host: Arc<dyn Host>,
        sink: S,
        status: Arc<UplinkStatus>,
    ) -> Worker<S> {
        let bucket = config.max_bytes_per_sec.map(|r| TokenBucket::new(r.as_u64()));
        let share = host.express_max_share();
        let window = (config.max_in_flight.max(1) as usize).min(sink.max_in_flight().max(1));
        let mut backlog_bytes = config.backlog_batch_bytes().as_u64();
        if let Some(cap) = config.max_bytes_per_sec {
            // A big batch under a small cap would hold the whole link (and
            // every service's turn) for seconds.
            backlog_bytes = backlog_bytes.min(cap.as_u64() / 4);
        }
        let backlog_bytes = backlog_bytes.max(config.batch_max_bytes.as_u64());
        status.update(|s| s.max_in_flight = window as u64);
        let sent_owner = format!("{}#sent", config.name);
        let checkpoint_interval = config.checkpoint_interval;
        let budget = config.budget.as_ref().map(|b| Budget::load(&config.name, b, &store, now_ms()));
        Worker {
            config,
            node,
            store,
            host,
            sink: Arc::new(sink),
            status,
            parts: BTreeMap::new(),
            services: HashMap::new(),
            lanes: [Scheduler::new(Mode::Weighted, share), Scheduler::new(Mode::Weighted, share)],
            queued: Default::default(),
            share: LaneShare::default(),
            backoff: Backoff::new(BackoffConfig::default()),
            retry_at: None,
            bucket,
            awaiting_flush: false,
            tasks: JoinSet::new(),
            flights: 0,
            sending: HashMap::new(),
            window,
            backlog_bytes,
            // The first checkpoint is due as soon as a cursor moves: a node
            // that crashes within `checkpoint_interval` of every start does
            // not re-send its whole backlog each time.
            checkpoints: Checkpoints {
                dirty: false,
                pending: false,
                last: Instant::now().checked_sub(checkpoint_interval).unwrap_or_else(Instant::now),
            },
            last_ack: None,
            sent_owner,
            budget,
            held: std::collections::HashSet::new(),
        }
    }

    /// Runs until `shutdown` turns true. Batches in flight then are
    /// abandoned (their cursors did not move: sent again after a restart),
    /// and the acknowledged cursors are made durable.
    pub(crate) async fn run(
        mut self,
        mut appended: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = self.fill();
            let wait = self.checkpoint(wait);
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => match done {
                    Ok((id, event)) => {
                        self.sending.remove(&id);
                        self.finished(event);
                    }
                    Err(e) => self.task_failed(&e),
                },
                _ = appended.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if self.checkpoints.dirty {
            match tokio::time::timeout(FINAL_CHECKPOINT, self.host.flush()).await {
                Ok(true) => self.status.update(|s| s.checkpoints += 1),
                _ => tracing::warn!(uplink = %self.config.name,
                    "last cursor checkpoint failed; a restart re-sends what was acknowledged since the previous one"),
            }
        }
    }

    /// Hands batches to the sink until the window is full or nothing is
    /// ready; returns how long to wait at most before looking again.
    fn fill(&mut self) -> Duration {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                return at - now;
            }
            self.retry_at = None;
        }
        let mut empty_reads = 0;
        self.held.clear();
        if let Some(b) = &mut self.budget {
            b.roll(now_ms());
        }
        while self.flights < self.window {
            if let Err(e) = self.refresh() {
                tracing::error!(uplink = %self.config.name, error = %e, "cannot read the log");
                return Duration::from_secs(1);
            }
            let Some((key, lane)) = self.pick() else {
                return if self.awaiting_flush { FLUSH_POLL } else { Duration::from_secs(1) };
            };
            let (batch, read) = match self.read_batch(&key) {
                Ok(Some(b)) => b,
                Ok(None) => {
                    empty_reads += 1;
                    if empty_reads >= MAX_EMPTY_READS {
                        return Duration::ZERO;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(uplink = %self.config.name, error = %e, "cannot read the log");
                    return Duration::from_secs(1);
                }
            };
            let bytes = batch.bytes();
            // Linger: a small batch of fresh records waits a little for company.
            let age = Duration::from_millis(
                u64::try_from(now_ms().saturating_sub(batch.records[0].timestamp_ms)).unwrap_or(0),
            );
            if bytes < self.config.batch_max_bytes.as_u64() / 2 && age < self.config.linger {
                let id = self.service_id(&batch.service);
                self.enqueue(lane, id, key, 1);
                return self.config.linger - age;
            }
            let Some((batch, read, bytes)) = self.spend(&key, batch, read) else {
                continue;
            };
            let (ahead_key, from) = (key.clone(), read.next);
            self.dispatch(Flight { key, lane, batch, read, bytes, started: Instant::now() });
            self.read_ahead(&ahead_key, from);
        }
        Duration::from_secs(1)
    }

    /// Starts sending one batch in its own task.
    fn dispatch(&mut self, mut flight: Flight) {
        let hold = self.bucket.as_mut().map_or(Duration::ZERO, |b| b.reserve(flight.bytes));
        if let Some(part) = self.parts.get_mut(&flight.key) {
            part.busy = true;
        }
        // The sent mark: durable with the next checkpoint, it tells the
        // next run which records were handed to the sink already.
        if let Err(e) = self.store.set_cursor(
            &self.sent_owner,
            &flight.key.0,
            PartitionId(flight.key.1),
            flight.read.next,
        ) {
            tracing::debug!(uplink = %self.config.name, error = %e, "cannot store the sent mark");
        }
        self.flights += 1;
        self.status.update(|s| s.in_flight = self.flights as u64);
        let sink = self.sink.clone();
        let key = flight.key.clone();
        let task = self.tasks.spawn(async move {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            flight.started = Instant::now();
            let result = match tokio::time::timeout(SEND_TIMEOUT, sink.send(&flight.batch)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError(format!("no acknowledgement within {}s", SEND_TIMEOUT.as_secs()))),
            };
            Event::Sent(Box::new(flight), result)
        });
        self.sending.insert(task.id(), key);
    }

    /// A task panicked (a bug in a sink): a send task's partition is free
    /// again and its batch is read again from the cursor, as after an error.
    fn task_failed(&mut self, e: &tokio::task::JoinError) {
        tracing::error!(uplink = %self.config.name, error = %e, "uplink task failed");
        match self.sending.remove(&e.id()) {
            Some(key) => {
                self.flights = self.flights.saturating_sub(1);
                self.status.update(|s| s.in_flight = self.flights as u64);
                if let Some(part) = self.parts.get_mut(&key) {
                    part.busy = false;
                    part.ahead = None;
                }
                self.sink.reset();
                self.retry_at = Some(Instant::now() + self.backoff.next_delay());
            }
            None => {
                // The checkpoint task: cursors are still to be made durable.
                self.checkpoints.pending = false;
                self.checkpoints.dirty = true;
            }
        }
    }

    fn finished(&mut self, event: Event) {
        match event {
            Event::Checkpoint(ok) => {
                self.checkpoints.pending = false;
                if ok {
                    self.status.update(|s| s.checkpoints += 1);
                } else {
                    self.checkpoints.dirty = true;
                    tracing::warn!(uplink = %self.config.name, "cursor checkpoint failed; retried");
                }
            }
            Event::Sent(flight, result) => {
                self.flights = self.flights.saturating_sub(1);
                self.status.update(|s| s.in_flight = self.flights as u64);
                if let Some(part) = self.parts.get_mut(&flight.key) {
                    part.busy = false;
                }
                match result {
                    Ok(()) => self.acknowledged(*flight),
                    Err(e) => self.failed(&flight, &e),
                }
            }
        }
    }

    /// Requests a checkpoint when cursors moved and the last one is at
    /// least `checkpoint_interval` old; returns `wait`, or less when one is
    /// due sooner.
    fn checkpoint(&mut self, wait: Duration) -> Duration {
        let c = &mut self.checkpoints;
        if !c.dirty || c.pending {
            return wait;
        }
        let due = c.last + self.config.checkpoint_interval;
        let now = Instant::now();
        if now < due {
            return wait.min(due - now);
        }
        c.dirty = false;
        c.pending = true;
        c.last = now;
        let flush = self.host.flush();
        self.tasks.spawn(async move { Event::Checkpoint(flush.await) });
        wait
    }

    fn failed(&mut self, flight: &Flight, e: &SinkError) {
        let key = &flight.key;
        self.sink.reset();
        let batch_max = self.config.batch_max_bytes.as_u64();
        if let Some(part) = self.parts.get_mut(key) {
            // Small again, then doubling back (order: the batch is read
            // again from the cursor).
            part.grow = batch_max;
            part.ahead = None;
        }
        let lower = e.0.to_ascii_lowercase();
        if flight.bytes > batch_max && (lower.contains("messagetoolarge") || lower.contains("too large")) {
            self.backlog_bytes = (flight.bytes / 2).max(batch_max);
            tracing::warn!(uplink = %self.config.name, bytes = flight.bytes, now = self.backlog_bytes,
                "the central side refused a batch as too large; backlog batches are smaller from now on");
        }
        let now = Instant::now();
        // One backoff step per outage, not one per batch that was in flight.
        if self.retry_at.is_none_or(|at| at <= now) {
            self.retry_at = Some(now + self.backoff.next_delay());
        }
        let attempts = self.backoff.attempts();
        tracing::warn!(uplink = %self.config.name, topic = %key.0, partition = key.1, attempts,
            error = %e, "forwarding failed; backing off");
        self.status.update(|s| {
            s.retries += 1;
            s.state = State::BackingOff { error: e.0.clone(), attempts };
        });
    }

    /// The sink acknowledged a batch: the cursor moves past every record
    /// read for it (in memory; durable with the next checkpoint), and the
    /// skipped ones are counted.
    fn acknowledged(&mut self, flight: Flight) {
        let Flight { key, lane, batch, read, bytes, started } = flight;
        self.skipped(&key, &batch.service, &read);
        let (cursor, resend_below) =
            self.parts.get(&key).map_or((Offset(0), Offset(0)), |p| (p.cursor, p.resend_below));
        let resent = batch.records.iter().filter(|r| r.offset < resend_below.0).count() as u64;
        let next = read.next.max(cursor);
        self.advance(&key, next);
        let stamps: Vec<i64> = batch.records.iter().map(|r| r.timestamp_ms).collect();
        self.host.acked(&self.config.name, &batch.service, &stamps);
        let (batch_max, limit) = (self.config.batch_max_bytes.as_u64(), self.backlog_bytes);
        if let Some(part) = self.parts.get_mut(&key) {
            part.grow =
                if part.backlog { part.grow.saturating_mul(2).clamp(batch_max, limit) } else { batch_max };
        }
        self.checkpoints.dirty = true;
        self.backoff.reset();
        match lane {
            LIVE => self.share.live += bytes,
            _ => self.share.backlog += bytes,
        }
        let now = Instant::now();
        let since = self.last_ack.map_or(started, |last| last.max(started));
        self.last_ack = Some(now);
        let secs = now.duration_since(since).as_secs_f64().max(1e-3);
        self.status.update(|s| {
            s.state = State::Connected;
            s.throughput_bps = if s.throughput_bps == 0.0 {
                bytes as f64 / secs
            } else {
                0.8 * s.throughput_bps + 0.2 * (bytes as f64 / secs)
            };
            s.resent_records += resent;
            let svc = s.services.entry(batch.service.clone()).or_default();
            svc.sent_records += batch.records.len() as u64;
            svc.sent_bytes += bytes;
        });
    }

    /// Counts (and logs) the records skipped in a read, once its cursor
    /// moves past them.
    fn skipped(&self, key: &Key, service: &str, read: &ReadEnd) {
        for (offset, why) in &read.unfit {
            tracing::warn!(uplink = %self.config.name, topic = %key.0, partition = key.1, offset,
                "record skipped: {why}");
        }
        if !read.expired.is_empty() || !read.unfit.is_empty() {
            self.status.update(|s| {
                let svc = s.services.entry(service.to_owned()).or_default();
                svc.ttl_skipped += read.expired.len() as u64;
                svc.unfit_skipped += read.unfit.len() as u64;
            });
        }
    }

    /// Moves a partition's cursor: at once in the store's memory, durable
    /// with the next checkpoint.
    fn advance(&mut self, key: &Key, next: Offset) {
        if let Some(p) = self.parts.get_mut(key) {
            p.cursor = next;
            self.checkpoints.dirty = true;
            if let Err(e) = self.store.set_cursor(&self.config.name, &key.0, PartitionId(key.1), next) {
                tracing::error!(uplink = %self.config.name, error = %e, "cannot store the uplink cursor");
            }
        }
    }

    /// Picks up new topics and cursors, lags, and queues partitions with
    /// unsent records in their lane.
    fn refresh(&mut self) -> Result<(), sluice_store::StoreError> {
        let now = now_ms();
        let mut lags: BTreeMap<String, crate::status::ServiceLag> = BTreeMap::new();
        let mut lost: BTreeMap<String, u64> = BTreeMap::new();
        self.awaiting_flush = false;
        for t in self.host.topics() {
            if !self.config.forwards(&t.name) {
                continue;
            }
            for p in 0..t.partitions {
                let key = (t.name.clone(), p);
                if !self.parts.contains_key(&key) {
                    let cursor =
                        self.store.cursor(&self.config.name, &t.name, PartitionId(p))?.unwrap_or(Offset(0));
                    let sent =
                        self.store.cursor(&self.sent_owner, &t.name, PartitionId(p))?.unwrap_or(Offset(0));
                    self.parts.insert(
                        key.clone(),
                        Part {
                            service: t.service.clone(),
                            partitions: t.partitions,
                            cursor,
                            busy: false,
                            backlog: false,
                            // A backlog goes in big batches from the start.
                            grow: self.backlog_bytes,
                            resend_below: sent,
                            ahead: None,
                        },
                    );
                }
                let Some(part) = self.parts.get_mut(&key) else { continue };
                part.service.clone_from(&t.service);
                part.partitions = t.partitions;
                let info = match self.store.topic(&t.name).and_then(|i| i.partitions.get(p as usize).copied())
                {
                    Some(i) => i,
                    None => continue,
                };
                if part.cursor < info.log_start {
                    // Retention or eviction deleted records before they
                    // were forwarded: count them and move on.
                    *lost.entry(t.service.clone()).or_default() += info.log_start.0 - part.cursor.0;
                    part.cursor = info.log_start;
                }
                self.awaiting_flush |= info.flushed < info.high_watermark;
                // Only flushed records leave the node.
                let lag = info.flushed.0.saturating_sub(part.cursor.0);
                let lane_entry = lags.entry(t.service.clone()).or_default();
                if lag == 0 {
                    continue;
                }
                lane_entry.lag_records += lag;
                let lag_bytes = info.bytes.saturating_mul(lag) / info.records.max(1);
                lane_entry.lag_bytes += lag_bytes;
                let oldest = self
                    .store
                    .read(&t.name, PartitionId(p), part.cursor, 1, 1)?
                    .records
                    .first()
                    .map(|r| r.record.timestamp_ms);
                let age = oldest.map(|ts| u64::try_from(now.saturating_sub(ts)).unwrap_or(0));
                if let Some(a) = age {
                    lane_entry.oldest_unsent_ms = Some(lane_entry.oldest_unsent_ms.map_or(a, |o| o.max(a)));
                }
                let lane = if age.is_some_and(|a| a > LIVE_AGE.as_millis() as u64) { BACKLOG } else { LIVE };
                // Big batches for a backlog only; fresh data goes in small
                // ones after `linger`.
                if let Some(part) = self.parts.get_mut(&key) {
                    part.backlog = lane == BACKLOG && lag_bytes > self.config.batch_max_bytes.as_u64();
                    if part.busy {
                        // Its next batch is read after this one's ack (order).
                        continue;
                    }
                }
                if self.held.contains(&key) || !self.may_send(&t.service) {
                    // A metered link: waits for its window, or the next
                    // period (its lag still shows).
                    self.queued[LIVE].remove(&key);
                    self.queued[BACKLOG].remove(&key);
                    continue;
                }
                let other = 1 - lane;
                let service = t.service.clone();
                let id = self.service_id(&service);
                // Moved lanes since it was queued: the stale entries are
                // ignored when popped.
                self.queued[other].remove(&key);
                // More than a batch to send: two entries, so the service is
                // still backlogged in the scheduler while one batch is out
                // (a service whose queue empties gives up its turn).
                let want = if lag_bytes > self.config.batch_max_bytes.as_u64() { 2 } else { 1 };
                self.enqueue(lane, id, key, want);
            }
        }
        let budget = self.budget.as_ref().map(|b| b.status(now));
        self.status.update(|s| {
            s.budget = budget;
            for (service, lag) in lags {
                let e = s.services.entry(service).or_default();
                e.lag_records = lag.lag_records;
                e.lag_bytes = lag.lag_bytes;
                e.oldest_unsent_ms = lag.oldest_unsent_ms;
            }
            for (service, n) in lost {
                s.services.entry(service).or_default().lost_before_forward += n;
            }
        });
        Ok(())
    }

    /// Whether the metered link's budget lets `service` send now (always
    /// without a budget).
    fn may_send(&self, service: &str) -> bool {
        let Some(b) = &self.budget else { return true };
        b.allowance(self.privileged(service), now_ms()) >= BATCH_FRAMING + RECORD_FRAMING
    }

    /// Whether `service` may spend the budget's reserve and send outside
    /// its windows: listed in `always`, or express when there is no list.
    fn privileged(&self, service: &str) -> bool {
        match self.budget.as_ref().and_then(|b| b.always.as_ref()) {
            Some(list) => list.iter().any(|s| s == service),
            None => self.host.class(service).express,
        }
    }

    /// Charges a batch to the metered link's budget before it is sent,
    /// cutting it to what is left; None (and the partition held until the
    /// next round) when not even one record fits or the charge cannot be
    /// stored. Returns the batch, where its read now ends, and its bytes.
    fn spend(&mut self, key: &Key, mut batch: Batch, mut read: ReadEnd) -> Option<(Batch, ReadEnd, u64)> {
        let privileged = self.privileged(&batch.service);
        let Some(budget) = &mut self.budget else {
            let bytes = batch.bytes();
            return Some((batch, read, bytes));
        };
        let allowance = budget.allowance(privileged, now_ms());
        let mut cost = BATCH_FRAMING;
        let mut fits = 0;
        for r in &batch.records {
            let one = RECORD_FRAMING + OutRecord::bytes(r);
            if cost + one > allowance {
                break;
            }
            cost += one;
            fits += 1;
        }
        if fits == 0 {
            self.held.insert(key.clone());
            if let Some(part) = self.parts.get_mut(key) {
                part.ahead = None;
            }
            return None;
        }
        if fits < batch.records.len() {
            // The rest waits for the next period (or the reserve, if the
            // service may spend it): the read ends after the last record
            // that goes.
            let next = Offset(batch.records[fits - 1].offset + 1);
            batch.records.truncate(fits);
            read.next = next;
            read.expired.retain(|o| *o < next.0);
            read.unfit.retain(|(o, _)| *o < next.0);
            self.held.insert(key.clone());
        }
        let bytes = batch.bytes();
        debug_assert_eq!(wire_bytes(batch.records.len(), bytes), cost);
        if let Err(e) = budget.charge(cost, &self.store) {
            tracing::error!(uplink = %self.config.name, error = %e,
                "cannot store what the metered link spent; not sending");
            self.held.insert(key.clone());
            if let Some(part) = self.parts.get_mut(key) {
                part.ahead = None;
            }
            return None;
        }
        Some((batch, read, bytes))
    }

    fn service_id(&mut self, service: &str) -> ServiceId {
        let class = self.host.class(service);
        match self.services.get(service) {
            Some(&id) => {
                for lane in &mut self.lanes {
                    if lane.class(id) != class {
                        lane.set_class(id, class);
                    }
                }
                id
            }
            None => {
                let id = self.lanes[LIVE].add_service(class);
                let id2 = self.lanes[BACKLOG].add_service(class);
                debug_assert_eq!(id, id2);
                self.services.insert(service.to_owned(), id);
                id
            }
        }
    }

    /// Queues `key` in `lane` until it has `want` live entries.
    fn enqueue(&mut self, lane: usize, id: ServiceId, key: Key, want: u32) {
        let have = self.queued[lane].entry(key.clone()).or_insert(0);
        while *have < want {
            *have += 1;
            self.lanes[lane].push(id, self.config.batch_max_bytes.as_u64(), key.clone());
        }
    }

    /// The next partition to send from, and its lane.
    fn pick(&mut self) -> Option<(Key, usize)> {
        loop {
            let live_ready = !self.queued[LIVE].is_empty();
            let backlog_ready = !self.queued[BACKLOG].is_empty();
            let lane = match (live_ready, backlog_ready) {
                (false, false) => return None,
                (true, false) => {
                    self.share = LaneShare::default();
                    LIVE
                }
                (false, true) => {
                    self.share = LaneShare::default();
                    BACKLOG
                }
                (true, true) => {
                    let total = (self.share.live + self.share.backlog) as f64;
                    if (self.share.live as f64) <= self.config.live_share * total {
                        LIVE
                    } else {
                        BACKLOG
                    }
                }
            };
            let (_, key) = self.lanes[lane].pop()?;
            match self.queued[lane].get_mut(&key) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    self.queued[lane].remove(&key);
                }
                // Stale: the partition moved lanes.
                None => continue,
            }
            // A batch of it is in flight: queued again after the ack.
            if self.parts.get(&key).is_some_and(|p| p.busy) {
                continue;
            }
            if self.held.contains(&key) || self.parts.get(&key).is_some_and(|p| !self.may_send(&p.service)) {
                continue;
            }
            return Some((key, lane));
        }
    }

    /// The next batch of a partition from its cursor (read ahead already,
    /// or read now), and where the read ended; leaves out records past their service's TTL and records
    /// the sink cannot carry (counted once the cursor moves past them).
    /// None when only such records were read (then counted, and the cursor
    /// moved past them, at once).
    fn read_batch(&mut self, key: &Key) -> Result<Option<(Batch, ReadEnd)>, sluice_store::StoreError> {
        let Some(part) = self.parts.get_mut(key) else { return Ok(None) };
        let cursor = part.cursor;
        if let Some((from, batch, read)) = part.ahead.take() {
            if from == cursor {
                return Ok(Some((batch, read)));
            }
        }
        let limit = if part.backlog { part.grow } else { self.config.batch_max_bytes.as_u64() };
        let Some((batch, read)) = self.read_from(key, cursor, limit)? else { return Ok(None) };
        if batch.records.is_empty() {
            self.skipped(key, &batch.service, &read);
            self.advance(key, read.next);
            return Ok(None);
        }
        Ok(Some((batch, read)))
    }

    /// Reads the batch after the one just dispatched for `key` (ending at
    /// `from`) while that one is in flight, so it is ready the moment the
    /// acknowledgement comes: reading overlaps the round trip. Only for a
    /// partition with a backlog; dropped if the cursor ends up elsewhere
    /// (a failure).
    fn read_ahead(&mut self, key: &Key, from: Offset) {
        let Some(part) = self.parts.get(key) else { return };
        if !part.backlog {
            return;
        }
        let limit =
            part.grow.saturating_mul(2).clamp(self.config.batch_max_bytes.as_u64(), self.backlog_bytes);
        match self.read_from(key, from, limit) {
            Ok(Some((batch, read))) if !batch.records.is_empty() => {
                if let Some(part) = self.parts.get_mut(key) {
                    part.ahead = Some((from, batch, read));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(uplink = %self.config.name, error = %e, "read-ahead failed"),
        }
    }

    /// Reads up to `limit` bytes of flushed records of a partition from
    /// `from`; the batch may be empty when every record read was skipped.
    /// None when nothing flushed is there.
    fn read_from(
        &self,
        key: &Key,
        from: Offset,
        limit: u64,
    ) -> Result<Option<(Batch, ReadEnd)>, sluice_store::StoreError> {
        let Some(part) = self.parts.get(key) else { return Ok(None) };
        let (service, partitions) = (part.service.clone(), part.partitions);
        let max_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut read = self.store.read(&key.0, PartitionId(key.1), from, 100_000, max_bytes)?;
        let flushed =
            self.store.topic(&key.0).and_then(|t| t.partitions.get(key.1 as usize).map(|p| p.flushed));
        read.records.retain(|r| flushed.is_some_and(|f| r.offset < f));
        if read.records.is_empty() {
            return Ok(None);
        }
        let cutoff = self.host.ttl(&service).map(|ttl| older_than_cutoff(now_ms(), ttl));
        let remote_topic = self.config.remote_topic_for(&self.node, &key.0, &service);
        let mut records = Vec::with_capacity(read.records.len());
        let (mut expired, mut unfit) = (Vec::new(), Vec::new());
        let mut last = None;
        for r in read.records {
            last = Some(r.offset);
            if cutoff.is_some_and(|c| r.record.timestamp_ms < c) {
                expired.push(r.offset.0);
                continue;
            }
            let mut headers = r.record.headers;
            headers.extend([
                ("sluice.node".to_owned(), self.node.as_bytes().to_vec()),
                ("sluice.service".to_owned(), service.as_bytes().to_vec()),
                ("sluice.topic".to_owned(), key.0.as_bytes().to_vec()),
                ("sluice.partition".to_owned(), key.1.to_string().into_bytes()),
                ("sluice.offset".to_owned(), r.offset.0.to_string().into_bytes()),
            ]);
            let record = OutRecord {
                offset: r.offset.0,
                key: r.record.key,
                value: r.record.value,
                headers,
                timestamp_ms: r.record.timestamp_ms,
            };
            match self.sink.cannot_carry(&record, &remote_topic) {
                Some(why) => unfit.push((r.offset.0, why)),
                None => records.push(record),
            }
        }
        let Some(next) = last.map(Offset::next) else { return Ok(None) };
        let read = ReadEnd { next, expired, unfit };
        let batch =
            Batch { topic: key.0.clone(), partition: key.1, partitions, remote_topic, service, records };
        Ok(Some((batch, read)))
    }
}

/// Where a read for a batch ended: the offset after its last record, and
/// the records left out of the batch.
#[derive(Debug)]
struct ReadEnd {
    next: Offset,
    /// Offsets of records past their service's TTL.
    expired: Vec<u64>,
    /// (offset, why) of records the sink cannot carry.
    unfit: Vec<(u64, String)>,
}

/// Bytes-per-second cap shared by everything one uplink sends; the
/// scheduler decides whose bytes go first, so the cap is shared by weight.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64) -> TokenBucket {
        TokenBucket { rate: rate as f64, tokens: 0.0, last: Instant::now() }
    }

    /// Takes `bytes` from the bucket and says how long their batch must
    /// wait before it is sent. A batch larger than one second's allowance
    /// waits proportionally longer; the debt is paid by the batches after
    /// it, which wait longer still.
    fn reserve(&mut self, bytes: u64) -> Duration {
        let now = Instant::now();
        // At most one second of unused allowance accumulates.
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / self.rate)
        } else {
            Duration::ZERO
        }
    }
}
