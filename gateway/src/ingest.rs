//! The ingest pipeline: bounded per-service queues ordered by the weighted
//! scheduler, one writer thread that appends jobs in that order, and two
//! durability lanes that make them durable.
//!
//! ```text
//! HTTP / MQTT ──submit──► Scheduler<Job> (pending bytes bounded per service)
//!                              │ writer thread: pop by priority, append
//!                              ▼
//!                     store (batches in memory) ──► sync lane (sync and express jobs):
//!                              │                     group commit of just their partitions,
//!                              │                     taking all that queued during the last sync
//!                              └──────────────────► bulk lane: every flush_interval, paced
//!                                                    writeback of everything, then a checkpoint
//!                                                    every checkpoint_interval
//! ```
//!
//! The lanes are separate threads over separate files, so an alarm's
//! `fdatasync` never waits for a flood's writeback (beyond one
//! `writeback_step` the device may be busy with). When buffered services
//! have more than `max_dirty` bytes not yet durable, the writer serves only
//! `sync` and express services until the bulk lane catches up: the flood
//! waits in its own queue (HTTP 429, MQTT not read), nobody else does.
//! Consumers are woken when records become durable (they cannot see them
//! before). All threads block on the disk, so none runs on the reactor.

use crate::services::Services;
use crate::topics::Topic;
use sluice_store::scheduler::{Mode, Scheduler, ServiceClass, ServiceId};
use sluice_store::{Offset, PartitionId, Record, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The scheduler mode a configuration asks for.
pub fn scheduler_mode(config: &sluice_config::Config) -> Mode {
    match config.scheduler.mode {
        sluice_config::SchedulerMode::Weighted => Mode::Weighted,
        sluice_config::SchedulerMode::Fifo => Mode::Fifo,
    }
}

/// Records bound for one partition inside a job.
#[derive(Debug)]
pub struct PartBatch {
    /// Target partition.
    pub partition: PartitionId,
    /// The records, in input order.
    pub records: Vec<Record>,
    /// Position of each record in the request, to answer in input order.
    pub input_index: Vec<usize>,
}

/// What the writer reports back once a job is appended.
#[derive(Debug)]
pub struct Appended {
    /// (partition, offset) per input record, in input order.
    pub offsets: Vec<(PartitionId, Offset)>,
    /// For `sync` jobs: resolves once the records are on disk.
    pub durable: Option<oneshot::Receiver<Result<(), IngestError>>>,
}

/// One unit of ingest work: records of one request for one topic.
#[derive(Debug)]
pub struct Job {
    /// Destination topic.
    pub topic: Arc<Topic>,
    /// Records grouped by partition.
    pub parts: Vec<PartBatch>,
    /// Service whose queue and budget the job uses.
    pub service: ServiceId,
    /// Encoded bytes (the scheduler cost and the pending-bytes charge).
    pub cost: u64,
    /// Answer only after a flush.
    pub sync: bool,
    /// When the job was queued.
    pub enqueued: Instant,
    /// Where to answer; `None` for fire-and-forget sources.
    pub reply: Option<oneshot::Sender<Result<Appended, IngestError>>>,
}

impl Job {
    /// Groups `records` by partition (key hash or round-robin) into a job.
    pub fn new(
        topic: Arc<Topic>,
        service: ServiceId,
        records: Vec<Record>,
        sync: bool,
        reply: Option<oneshot::Sender<Result<Appended, IngestError>>>,
    ) -> Job {
        let mut parts: Vec<PartBatch> = Vec::new();
        let mut cost = 0u64;
        for (i, rec) in records.into_iter().enumerate() {
            cost += rec.encoded_len() as u64;
            let partition = topic.partition_for(rec.key.as_deref());
            let part = match parts.iter_mut().position(|p| p.partition == partition) {
                Some(at) => &mut parts[at],
                None => {
                    parts.push(PartBatch { partition, records: Vec::new(), input_index: Vec::new() });
                    let last = parts.len() - 1;
                    &mut parts[last]
                }
            };
            part.records.push(rec);
            part.input_index.push(i);
        }
        Job { topic, parts, service, cost, sync, enqueued: Instant::now(), reply }
    }

    /// Records in the job.
    pub fn record_count(&self) -> usize {
        self.parts.iter().map(|p| p.records.len()).sum()
    }
}

/// Why accepted work failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The store refused the append or the flush.
    #[error("storage failed: {message}")]
    Storage {
        /// What the store said.
        message: String,
        /// True when the disk is full.
        disk_full: bool,
    },
    /// The gateway is shutting down and stopped accepting work.
    #[error("sluice is shutting down")]
    ShuttingDown,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The service's pending queue is full.
    Full {
        /// Bytes already pending.
        pending: u64,
        /// The limit.
        limit: u64,
    },
    /// Shutting down.
    ShuttingDown,
}

struct Queue {
    sched: Scheduler<Job>,
    closed: bool,
}

/// Flush statistics.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flushes done.
    pub flushes: AtomicU64,
    /// Total time spent flushing, microseconds.
    pub flush_micros: AtomicU64,
    /// Flush failures.
    pub failures: AtomicU64,
    /// Jobs appended so far.
    pub appended_jobs: AtomicU64,
    /// Jobs known to be on disk (`appended_jobs` as of the start of the
    /// last successful flush).
    pub durable_jobs: AtomicU64,
}

/// Queue state of one service, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    /// Jobs queued.
    pub jobs: usize,
    /// Bytes queued.
    pub bytes: u64,
    /// Age of the oldest queued job.
    pub oldest: Option<Duration>,
}

enum FlushRequest {
    /// Make these partitions durable (and checkpoint, when asked), then
    /// answer.
    Wait {
        tx: Option<oneshot::Sender<Result<(), IngestError>>>,
        parts: Vec<(Arc<Topic>, PartitionId)>,
        checkpoint: bool,
        /// The produce this makes durable: its service and when it was
        /// queued (the ingest-to-durable histogram).
        timing: Option<(ServiceId, Instant)>,
    },
    Shutdown,
}

/// Handle to the pipeline, shared by the HTTP (and MQTT) front ends.
#[derive(Debug)]
pub struct Ingest {
    queue: Mutex<Queue>,
    wake: Condvar,
    services: Arc<Services>,
    flush_tx: Mutex<mpsc::Sender<FlushRequest>>,
    dirty: Arc<AtomicBool>,
    /// Bytes buffered jobs appended that are not durable yet (approximate:
    /// reset from the store after each bulk flush).
    dirty_bytes: AtomicU64,
    /// Topics with buffered appends not yet durable (woken by the bulk lane).
    dirty_topics: Mutex<Vec<Arc<Topic>>>,
    /// Buffered produces appended since the bulk lane last looked: service
    /// and when each was queued (the ingest-to-durable histogram).
    pending_durable: Mutex<Vec<(ServiceId, Instant)>>,
    /// Wakes the bulk lane early (over `max_dirty`, shutdown).
    bulk_wake: Condvar,
    bulk_flag: Mutex<bool>,
    opts: IngestOptions,
    /// Flush statistics.
    pub flush_stats: Arc<FlushStats>,
    /// False once the writer thread has stopped (health check).
    pub writer_alive: AtomicBool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.sched.total_items())
            .field("closed", &self.closed)
            .finish()
    }
}

/// Timing of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Scheduler mode.
    pub mode: Mode,
    /// Express cap.
    pub express_max_share: f64,
    /// Group-commit window for sync jobs.
    pub sync_window: Duration,
    /// Background flush period for buffered jobs.
    pub flush_interval: Duration,
    /// Bulk writeback step (bytes).
    pub writeback_step: u64,
    /// Most not-yet-durable bytes of buffered services.
    pub max_dirty: u64,
    /// Metadata checkpoint period.
    pub checkpoint_interval: Duration,
}

/// The two pipeline threads; join them after [`Ingest::close`].
#[derive(Debug)]
pub struct IngestThreads {
    writer: JoinHandle<()>,
    flusher: JoinHandle<()>,
    bulk: JoinHandle<()>,
}

impl IngestThreads {
    /// Waits until everything accepted is persisted and flushed.
    pub fn join(self) {
        if self.writer.join().is_err() {
            tracing::error!("ingest writer thread panicked");
        }
        if self.flusher.join().is_err() {
            tracing::error!("sync lane thread panicked");
        }
        if self.bulk.join().is_err() {
            tracing::error!("bulk lane thread panicked");
        }
    }
}

impl Ingest {
    /// Starts the writer and flusher threads.
    pub fn start(
        store: Store,
        services: Arc<Services>,
        opts: IngestOptions,
    ) -> std::io::Result<(Arc<Ingest>, IngestThreads)> {
        let mut sched = Scheduler::new(opts.mode, opts.express_max_share);
        for s in services.iter() {
            let id = sched.add_service(s.class());
            debug_assert_eq!(id, s.id);
        }
        let (flush_tx, flush_rx) = mpsc::channel();
        let ingest = Arc::new(Ingest {
            queue: Mutex::new(Queue { sched, closed: false }),
            wake: Condvar::new(),
            services,
            flush_tx: Mutex::new(flush_tx),
            dirty: Arc::new(AtomicBool::new(false)),
            dirty_bytes: AtomicU64::new(0),
            dirty_topics: Mutex::new(Vec::new()),
            pending_durable: Mutex::new(Vec::new()),
            bulk_wake: Condvar::new(),
            bulk_flag: Mutex::new(false),
            opts,
            flush_stats: Arc::new(FlushStats::default()),
            writer_alive: AtomicBool::new(true),
        });
        let flusher = {
            let (store, stats) = (store.clone(), ingest.flush_stats.clone());
            let services = ingest.services.clone();
            std::thread::Builder::new()
                .name("sluice-sync".into())
                .spawn(move || sync_lane(&store, &services, &flush_rx, &stats, opts))?
        };
        let bulk = {
            let (store, ingest) = (store.clone(), ingest.clone());
            std::thread::Builder::new().name("sluice-bulk".into()).spawn(move || ingest.bulk_lane(&store))?
        };
        let writer = {
            let ingest = ingest.clone();
            std::thread::Builder::new()
                .name("sluice-writer".into())
                .spawn(move || ingest.writer_loop(&store))?
        };
        Ok((ingest, IngestThreads { writer, flusher, bulk }))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job under its service's pending-bytes limit.
    pub fn submit(&self, job: Job) -> Result<(), (Rejected, Job)> {
        let service = self.services.by_id(job.service);
        let mut q = self.queue();
        if q.closed {
            return Err((Rejected::ShuttingDown, job));
        }
        if !service.try_reserve(job.cost) {
            service.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            let pending = service.pending_bytes.load(Ordering::Relaxed);
            return Err((Rejected::Full { pending, limit: service.max_pending }, job));
        }
        q.sched.push(job.service, job.cost, job);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Drops the oldest queued job of a service to make room (the
    /// `drop_oldest` policy); returns its record count.
    pub fn drop_oldest(&self, service: ServiceId) -> Option<usize> {
        let (cost, job) = self.queue().sched.pop_oldest_of(service)?;
        self.services.by_id(service).release(cost);
        Some(job.record_count())
    }

    /// A receiver that resolves once every write so far that a consumer
    /// may see, and the metadata (group offsets, cursors), are durable: a
    /// checkpoint through the sync lane (consumer-group commits). `urgent`
    /// is kept for callers; the sync lane never lingers for them.
    pub fn flush_soon(&self, _urgent: bool) -> oneshot::Receiver<Result<(), IngestError>> {
        self.request(Vec::new(), true, None)
    }

    /// Makes `parts` durable through the sync lane.
    fn sync_soon(&self, parts: Vec<(Arc<Topic>, PartitionId)>) -> oneshot::Receiver<Result<(), IngestError>> {
        self.request(parts, false, None)
    }

    fn request(
        &self,
        parts: Vec<(Arc<Topic>, PartitionId)>,
        checkpoint: bool,
        timing: Option<(ServiceId, Instant)>,
    ) -> oneshot::Receiver<Result<(), IngestError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.flush_tx.lock().unwrap_or_else(PoisonError::into_inner).send(FlushRequest::Wait {
            tx: Some(tx),
            parts,
            checkpoint,
            timing,
        });
        if let Err(mpsc::SendError(FlushRequest::Wait { tx: Some(tx), .. })) = sent {
            let _ = tx.send(Err(IngestError::ShuttingDown));
        }
        rx
    }

    /// Changes a service's class in the scheduler and the registry.
    pub fn set_class(&self, id: ServiceId, class: ServiceClass) {
        self.services.by_id(id).set_class(class);
        self.queue().sched.set_class(id, class);
    }

    /// Queue depth per service, in service-id order.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let q = self.queue();
        let now = Instant::now();
        self.services
            .iter()
            .map(|s| QueueStats {
                jobs: q.sched.queued_items(s.id),
                bytes: q.sched.queued_bytes(s.id),
                oldest: q.sched.front(s.id).map(|j| now.saturating_duration_since(j.enqueued)),
            })
            .collect()
    }

    /// Stops accepting work. The writer persists everything already queued,
    /// then the flusher flushes it, then both threads exit.
    pub fn close(&self) {
        self.queue().closed = true;
        self.wake.notify_all();
    }

    fn writer_loop(&self, store: &Store) {
        loop {
            let job = {
                let mut q = self.queue();
                loop {
                    if self.dirty_bytes.load(Ordering::Acquire) > self.opts.max_dirty && !q.closed {
                        // Buffered services wait for the bulk lane; sync and
                        // express services go on.
                        if let Some(job) = self.pop_durable_lane(&mut q) {
                            break Some(job);
                        }
                        self.kick_bulk();
                        q = self
                            .wake
                            .wait_timeout(q, Duration::from_millis(5))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        continue;
                    }
                    if let Some((_, job)) = q.sched.pop() {
                        break Some(job);
                    }
                    if q.closed {
                        break None;
                    }
                    q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            match job {
                Some(job) => self.persist(store, job),
                None => break,
            }
        }
        self.writer_alive.store(false, Ordering::Relaxed);
        let _ = self.flush_tx.lock().unwrap_or_else(PoisonError::into_inner).send(FlushRequest::Shutdown);
        self.kick_bulk();
    }

    /// The oldest job of the most important `sync` or express service with
    /// work queued (while buffered services are held back).
    fn pop_durable_lane(&self, q: &mut Queue) -> Option<Job> {
        let id = self
            .services
            .iter()
            .filter(|s| {
                (s.class().express || s.durability == sluice_config::Durability::Sync)
                    && q.sched.queued_items(s.id) > 0
            })
            .max_by_key(|s| (s.class().express, s.class().weight))
            .map(|s| s.id)?;
        q.sched.pop_oldest_of(id).map(|(_, job)| job)
    }

    /// Wakes the bulk lane now.
    fn kick_bulk(&self) {
        *self.bulk_flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.bulk_wake.notify_one();
    }

    /// The bulk lane: every `flush_interval` (or when kicked), paced
    /// writeback of every partition with buffered bytes, a checkpoint when
    /// due, and consumers woken.
    fn bulk_lane(&self, store: &Store) {
        loop {
            {
                let flag = self.bulk_flag.lock().unwrap_or_else(PoisonError::into_inner);
                let (mut flag, _) = self
                    .bulk_wake
                    .wait_timeout_while(flag, self.opts.flush_interval, |kicked| !*kicked)
                    .unwrap_or_else(PoisonError::into_inner);
                *flag = false;
            }
            let stopping = !self.writer_alive.load(Ordering::Acquire);
            let dirty = self.dirty.swap(false, Ordering::AcqRel);
            let topics =
                std::mem::take(&mut *self.dirty_topics.lock().unwrap_or_else(PoisonError::into_inner));
            if !dirty && self.dirty_bytes.load(Ordering::Acquire) > self.opts.max_dirty {
                // Never leave the writer gated on a stale count.
                self.dirty_bytes.store(store.undurable_bytes(), Ordering::Release);
                self.wake.notify_all();
            }
            if dirty || stopping {
                // Appended before the flush below starts: durable when it ends.
                let pending =
                    std::mem::take(&mut *self.pending_durable.lock().unwrap_or_else(PoisonError::into_inner));
                let appended = self.flush_stats.appended_jobs.load(Ordering::Acquire);
                let started = Instant::now();
                let result = store.flush_paced(self.opts.writeback_step, &|_| true);
                if result.is_err() {
                    // Wake them again after the next attempt.
                    let mut again = self.dirty_topics.lock().unwrap_or_else(PoisonError::into_inner);
                    for t in &topics {
                        if !again.iter().any(|u| Arc::ptr_eq(u, t)) {
                            again.push(t.clone());
                        }
                    }
                }
                match result {
                    Ok(()) => {
                        self.flush_stats.durable_jobs.fetch_max(appended, Ordering::AcqRel);
                        for (service, queued) in &pending {
                            crate::histograms::durable(&self.services.by_id(*service).name, queued.elapsed());
                        }
                    }
                    Err(e) => {
                        self.pending_durable.lock().unwrap_or_else(PoisonError::into_inner).extend(pending);
                        self.flush_stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.dirty.store(true, Ordering::Release);
                        tracing::error!(error = %e, "flush failed");
                    }
                }
                self.flush_stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.flush_stats
                    .flush_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.dirty_bytes.store(store.undurable_bytes(), Ordering::Release);
                for t in &topics {
                    t.notify_appended();
                }
                self.wake.notify_all();
            }
            if let Err(e) = store.checkpoint_if_due(self.opts.checkpoint_interval) {
                tracing::error!(error = %e, "metadata checkpoint failed");
            }
            if stopping {
                if let Err(e) = store.flush() {
                    tracing::error!(error = %e, "final flush failed");
                }
                break;
            }
        }
    }

    fn persist(&self, store: &Store, job: Job) {
        let service = self.services.by_id(job.service);
        let total = job.record_count();
        let mut offsets = vec![(PartitionId(0), Offset(0)); total];
        let mut failure = None;
        for part in &job.parts {
            match store.append(&job.topic.name, part.partition, &part.records) {
                Ok(first) => {
                    for (i, &idx) in part.input_index.iter().enumerate() {
                        offsets[idx] = (part.partition, Offset(first.0 + i as u64));
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %job.topic.name, partition = part.partition.0, error = %e, "append failed");
                    failure =
                        Some(IngestError::Storage { message: e.to_string(), disk_full: e.is_disk_full() });
                    break;
                }
            }
        }
        service.release(job.cost);
        self.flush_stats.appended_jobs.fetch_add(1, Ordering::AcqRel);
        let durable_now = job.sync || service.class().express;
        if !durable_now {
            if failure.is_none() {
                self.pending_durable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((job.service, job.enqueued));
            }
            self.dirty_bytes.fetch_add(job.cost, Ordering::AcqRel);
            let mut topics = self.dirty_topics.lock().unwrap_or_else(PoisonError::into_inner);
            if !topics.iter().any(|t| Arc::ptr_eq(t, &job.topic)) {
                topics.push(job.topic.clone());
            }
        }
        // Last: the bulk lane that sees the flag also sees the bytes and the
        // topic to wake.
        self.dirty.store(true, Ordering::Release);
        let result = match failure {
            Some(err) => {
                service.counters.rejected_error.fetch_add(total as u64, Ordering::Relaxed);
                if durable_now {
                    // Whatever was appended before the failure still goes out.
                    let parts = job.parts.iter().map(|p| (job.topic.clone(), p.partition)).collect();
                    drop(self.sync_soon(parts));
                }
                Err(err)
            }
            None => {
                service.counters.records_in.fetch_add(total as u64, Ordering::Relaxed);
                service.counters.bytes_in.fetch_add(job.cost, Ordering::Relaxed);
                // Express records are made durable at once (their own lane)
                // so consumers see them without waiting for the bulk lane.
                let durable = if durable_now {
                    let parts = job.parts.iter().map(|p| (job.topic.clone(), p.partition)).collect();
                    let synced = self.request(parts, false, Some((job.service, job.enqueued)));
                    job.sync.then_some(synced)
                } else {
                    None
                };
                Ok(Appended { offsets, durable })
            }
        };
        if let Some(reply) = job.reply {
            // The requester may have gone away; the records stay accepted.
            let _ = reply.send(result);
        }
    }
}

/// Records a failed write made the store discard (appended, never flushed:
/// buffered HTTP records and MQTT publishes inside the flush window) count
/// as storage errors of their service.
fn count_discarded(store: &Store, services: &Services) {
    for lost in store.take_discarded() {
        let service = store.topic(&lost.topic).map(|t| t.spec.service).unwrap_or_default();
        let count = lost.to - lost.from;
        tracing::error!(topic = %lost.topic, partition = lost.partition, from = lost.from, to = lost.to,
            "unflushed records lost to a failed write");
        services.resolve(&service).counters.rejected_error.fetch_add(count, Ordering::Relaxed);
    }
}

/// The sync lane: each group commit takes every request that queued while
/// the previous one was syncing (plus `sync_window` of linger, default
/// none), syncs just the partitions they touched, checkpoints when a
/// request asked for it, wakes their consumers and answers.
fn sync_lane(
    store: &Store,
    services: &Services,
    rx: &mpsc::Receiver<FlushRequest>,
    stats: &FlushStats,
    opts: IngestOptions,
) {
    let mut shutting_down = false;
    while !shutting_down {
        // (sender, wants a checkpoint)
        let mut waiters = Vec::new();
        let mut parts: Vec<(Arc<Topic>, PartitionId)> = Vec::new();
        let mut checkpoint = false;
        let mut timings: Vec<(ServiceId, Instant)> = Vec::new();
        let mut take = |req: FlushRequest, shutting_down: &mut bool| match req {
            FlushRequest::Wait { tx, parts: p, checkpoint: c, timing: t } => {
                timings.extend(t);
                waiters.extend(tx.map(|tx| (tx, c)));
                for (t, id) in p {
                    if !parts.iter().any(|(u, q)| *q == id && Arc::ptr_eq(u, &t)) {
                        parts.push((t, id));
                    }
                }
                checkpoint |= c;
            }
            FlushRequest::Shutdown => *shutting_down = true,
        };
        match rx.recv() {
            Ok(req) => take(req, &mut shutting_down),
            Err(_) => break,
        }
        if !opts.sync_window.is_zero() && !shutting_down {
            std::thread::sleep(opts.sync_window);
        }
        while let Ok(req) = rx.try_recv() {
            take(req, &mut shutting_down);
        }
        let started = Instant::now();
        let names: Vec<(String, PartitionId)> = parts.iter().map(|(t, p)| (t.name.to_string(), *p)).collect();
        let failed = |e: sluice_store::StoreError| {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "sync failed");
            IngestError::Storage { message: e.to_string(), disk_full: e.is_disk_full() }
        };
        let synced = if shutting_down { store.flush().map(|_| ()) } else { store.sync_partitions(&names) }
            .map_err(failed);
        count_discarded(store, services);
        for (t, _) in &parts {
            t.notify_appended();
        }
        if synced.is_ok() {
            for (service, queued) in timings {
                crate::histograms::durable(&services.by_id(service).name, queued.elapsed());
            }
        }
        // Sync waiters are answered before a checkpoint runs: a consumer's
        // commit never delays a producer's acknowledgement.
        let (ckpt_waiters, sync_waiters): (Vec<_>, Vec<_>) = waiters.into_iter().partition(|(_, c)| *c);
        for (tx, _) in sync_waiters {
            let _ = tx.send(synced.clone());
        }
        if !ckpt_waiters.is_empty() {
            let result = match &synced {
                Ok(()) if checkpoint && !shutting_down => store.checkpoint().map_err(failed),
                other => other.clone(),
            };
            for (tx, _) in ckpt_waiters {
                let _ = tx.send(result.clone());
            }
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}
