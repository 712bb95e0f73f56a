//! The ingest pipeline: bounded per-service queues ordered by the weighted
//! scheduler, one writer thread that persists jobs in that order, and one
//! flusher thread that makes them durable.
//!
//! ```text
//! HTTP / MQTT ──submit──► Scheduler<Job> (pending bytes bounded per service)
//!                              │ writer thread: pop by priority, append
//!                              ▼
//!                         sled (in memory) ──► flusher thread:
//!                                               sync jobs: group commit after sync_window
//!                                               buffered: flush every flush_interval if dirty
//! ```
//!
//! Both threads block on sled, so neither runs on the async reactor.

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
    /// Answer after the next flush. `urgent` (express services) closes the
    /// group-commit window at once instead of waiting for more company.
    Wait {
        tx: oneshot::Sender<Result<(), IngestError>>,
        urgent: bool,
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
}

/// The two pipeline threads; join them after [`Ingest::close`].
#[derive(Debug)]
pub struct IngestThreads {
    writer: JoinHandle<()>,
    flusher: JoinHandle<()>,
}

impl IngestThreads {
    /// Waits until everything accepted is persisted and flushed.
    pub fn join(self) {
        if self.writer.join().is_err() {
            tracing::error!("ingest writer thread panicked");
        }
        if self.flusher.join().is_err() {
            tracing::error!("flusher thread panicked");
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
            flush_stats: Arc::new(FlushStats::default()),
            writer_alive: AtomicBool::new(true),
        });
        let flusher = {
            let (store, dirty, stats) = (store.clone(), ingest.dirty.clone(), ingest.flush_stats.clone());
            let services = ingest.services.clone();
            std::thread::Builder::new()
                .name("sluice-flusher".into())
                .spawn(move || flusher_loop(&store, &services, &flush_rx, &dirty, &stats, opts))?
        };
        let writer = {
            let ingest = ingest.clone();
            std::thread::Builder::new()
                .name("sluice-writer".into())
                .spawn(move || ingest.writer_loop(&store))?
        };
        Ok((ingest, IngestThreads { writer, flusher }))
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

    /// A receiver that resolves after the next flush has made every write
    /// so far durable (sync ingest, consumer-group commits). `urgent` skips
    /// the rest of the group-commit window.
    pub fn flush_soon(&self, urgent: bool) -> oneshot::Receiver<Result<(), IngestError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .flush_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(FlushRequest::Wait { tx, urgent });
        if let Err(mpsc::SendError(FlushRequest::Wait { tx, .. })) = sent {
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
        self.dirty.store(true, Ordering::Release);
        job.topic.notify_appended();
        let result = match failure {
            Some(err) => {
                service.counters.rejected_error.fetch_add(total as u64, Ordering::Relaxed);
                Err(err)
            }
            None => {
                service.counters.records_in.fetch_add(total as u64, Ordering::Relaxed);
                service.counters.bytes_in.fetch_add(job.cost, Ordering::Relaxed);
                let urgent = service.class().express;
                let durable = job.sync.then(|| self.flush_soon(urgent));
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

fn flusher_loop(
    store: &Store,
    services: &Services,
    rx: &mpsc::Receiver<FlushRequest>,
    dirty: &AtomicBool,
    stats: &FlushStats,
    opts: IngestOptions,
) {
    let mut waiters: Vec<oneshot::Sender<Result<(), IngestError>>> = Vec::new();
    let mut window_end = Instant::now();
    let mut last_flush = Instant::now();
    let mut shutting_down = false;
    while !shutting_down {
        let now = Instant::now();
        let deadline = if waiters.is_empty() { last_flush + opts.flush_interval } else { window_end };
        match rx.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(FlushRequest::Wait { tx, urgent }) => {
                if waiters.is_empty() {
                    window_end = Instant::now() + opts.sync_window;
                }
                if urgent {
                    window_end = Instant::now();
                }
                waiters.push(tx);
                if Instant::now() < window_end {
                    continue;
                }
            }
            Ok(FlushRequest::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => shutting_down = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Everything that queued up while we waited joins this group.
        while let Ok(req) = rx.try_recv() {
            match req {
                FlushRequest::Wait { tx, urgent } => {
                    if urgent {
                        window_end = Instant::now();
                    }
                    waiters.push(tx);
                }
                FlushRequest::Shutdown => shutting_down = true,
            }
        }
        let now = Instant::now();
        let due_sync = !waiters.is_empty() && now >= window_end;
        let due_buffered = dirty.load(Ordering::Acquire) && now >= last_flush + opts.flush_interval;
        if !(due_sync || due_buffered || shutting_down) {
            if !dirty.load(Ordering::Acquire) {
                last_flush = now;
            }
            continue;
        }
        dirty.store(false, Ordering::Release);
        let appended = stats.appended_jobs.load(Ordering::Acquire);
        let started = Instant::now();
        let result = store.flush().map(|_| ()).map_err(|e| {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "flush failed");
            IngestError::Storage { message: e.to_string(), disk_full: e.is_disk_full() }
        });
        count_discarded(store, services);
        if result.is_ok() {
            stats.durable_jobs.fetch_max(appended, Ordering::AcqRel);
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        last_flush = Instant::now();
        for tx in waiters.drain(..) {
            let _ = tx.send(result.clone());
        }
    }
}
