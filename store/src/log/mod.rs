//! The durable topic log: records in per-partition segment files, metadata
//! in sled.
//!
//! # On-disk layout
//!
//! ```text
//! <path>/                 sled: topic catalog, segment catalog, sparse
//!                         offset index, checkpoints, group offsets, uplink
//!                         cursors, atomic-commit state (see `meta.rs`)
//! <path>/segments/<topic>-<partition>/<base offset>.log
//!                         CRC32C-framed batches (see `segment.rs`)
//! ```
//!
//! The sled format marker is `sluice-store/3`. A directory written by
//! `sluice-store/2` (records inside sled) is migrated when opened: every
//! partition's records are copied into segments with their offsets, then
//! the marker changes and the old trees are dropped, in that order, so a
//! crash during the migration leaves a format-2 directory that migrates
//! again (see `migrate.rs`).
//!
//! # Durability
//!
//! [`Store::append`] only builds batches in memory; nothing is visible to
//! readers until it is durable. Three ways make it durable:
//!
//! - [`Store::sync_partitions`]: the given partitions only (the `sync` and
//!   express lane): write out and `fdatasync` their active segments. Other
//!   partitions' buffered bytes are not touched, so an alarm's commit does
//!   not carry a flood.
//! - [`Store::flush_paced`]: the bulk lane: write out and sync every dirty
//!   partition, with writeback paced by `sync_file_range` in steps.
//! - [`Store::flush`]: everything, then a checkpoint.
//!
//! Every read stops at the partition's durable end (`flushed`), as a Kafka
//! consumer stops at the high watermark. A [`Store::checkpoint`] records
//! each partition's durable position in sled and flushes sled; recovery
//! scans only what was written after it (verifying CRCs, cutting a torn
//! tail, rebuilding index entries). Offsets are never reused: a deleted
//! segment's successor keeps the numbering, and the active segment is never
//! deleted.

pub mod chunk;
mod durable;
pub mod fs;
mod meta;
mod migrate;
mod partition;
mod retention;
pub mod segment;

pub use partition::SegmentLimits;
pub use retention::{EvictionPolicy, RetentionReport};

use crate::error::{LostRange, StoreError};
use crate::record::{Offset, PartitionId, Record, StoredRecord};
use fs::Fs;
use meta::Meta;
use partition::Partition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const FORMAT: &str = "sluice-store/3";
const FORMAT_V2: &str = "sluice-store/2";

/// How long `open` waits for another holder of the directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Directory of the store (created if missing).
    pub path: PathBuf,
    /// sled page cache size in bytes (metadata only; RSS grows to a few
    /// times this).
    pub cache_capacity: u64,
    /// Open even when records that a checkpoint recorded as durable are
    /// missing or damaged: the missing offsets are skipped, never reused,
    /// and listed by [`Store::accepted_loss`]. Without it such a store is
    /// refused with [`StoreError::DataLoss`].
    pub accept_data_loss: bool,
    /// When segments are rolled.
    pub segments: SegmentLimits,
    /// The file layer under the segments (a test layer in the power-cut
    /// test).
    pub fs: Arc<dyn Fs>,
}

impl StoreOptions {
    /// Options for `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            path: path.into(),
            cache_capacity: 4 << 20,
            accept_data_loss: false,
            segments: SegmentLimits::default(),
            fs: Arc::new(fs::RealFs),
        }
    }
}

/// Retention of one topic; `None` keeps forever (within the disk budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest record is older than this are deleted.
    pub max_age: Option<Duration>,
    /// The topic keeps at most about this many bytes, split evenly over its
    /// partitions; the oldest segments go first.
    pub max_bytes: Option<u64>,
}

/// What a topic is: shape, owning service and retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name (validated by the caller).
    pub name: String,
    /// Partition count (at least 1).
    pub partitions: u32,
    /// Name of the service that owns the topic.
    pub service: String,
    /// Retention limits.
    pub retention: Retention,
}

/// Watermarks and size of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: PartitionId,
    /// First offset still stored.
    pub log_start: Offset,
    /// Next offset to be written.
    pub high_watermark: Offset,
    /// Records below this offset are durable: they survive a crash. Every
    /// read stops here.
    pub flushed: Offset,
    /// Records stored.
    pub records: u64,
    /// Bytes stored (segment files, and batches not yet written).
    pub bytes: u64,
}

/// A topic and the state of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its definition.
    pub spec: TopicSpec,
    /// One entry per partition, in order.
    pub partitions: Vec<PartitionInfo>,
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Durable records from the requested offset on (or from the log start
    /// when the requested offset was already deleted).
    pub records: Vec<StoredRecord>,
    /// Next offset a reader can see: the durable end of the partition.
    pub high_watermark: Offset,
    /// First offset still stored.
    pub log_start: Offset,
}

/// Records and metadata committed as one durable step
/// ([`Store::commit_atomic`]).
#[derive(Debug, Clone, Default)]
pub struct AtomicWrite {
    /// Records to append: (topic, partition, records).
    pub records: Vec<(String, PartitionId, Vec<Record>)>,
    /// Consumer-group positions: (group, topic, partition, next offset).
    pub positions: Vec<(String, String, PartitionId, Offset)>,
    /// Free-form state (rule windows, producer state): key, value (`None`
    /// deletes).
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A state entry: key, value.
pub type StateEntry = (Vec<u8>, Vec<u8>);

pub(crate) struct Topic {
    spec: RwLock<TopicSpec>,
    partitions: Vec<Arc<Partition>>,
}

struct Slot {
    opts: StoreOptions,
    meta: Arc<Meta>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    accepted_loss: Vec<LostRange>,
    /// Held while a topic is created or changed, so two callers never open
    /// the same partition twice.
    topic_changes: Mutex<()>,
    /// Serializes checkpoints and atomic commits.
    checkpointing: Mutex<Instant>,
    /// sled's size at the last checkpoint.
    meta_bytes: AtomicU64,
    /// Next atomic commit id.
    next_commit: AtomicU64,
    /// A group offset or cursor moved since the last checkpoint.
    positions_moved: std::sync::atomic::AtomicBool,
    /// What the last checkpoint wrote (skipped when nothing moved).
    last_checkpoint: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The topic log. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Store {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.slot.opts.path).finish_non_exhaustive()
    }
}

fn open_sled(opts: &StoreOptions) -> Result<(sled::Db, bool), StoreError> {
    let open_err = |source| StoreError::Open { path: opts.path.clone(), source };
    let config = sled::Config::new()
        .path(&opts.path)
        .cache_capacity(opts.cache_capacity)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    // sled recovers a log it cannot read at all as a new, empty database:
    // a log that held data but yields no format marker is damaged (or not
    // ours), not a fresh start.
    let had_log = std::fs::metadata(opts.path.join("db")).is_ok_and(|m| m.len() > 0);
    // sled 0.34.7 panics on some damaged log files instead of returning an
    // error (spacejam/sled#1387): report that as a corrupt directory.
    let open_once = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).unwrap_or_else(|panic| {
            Err(damaged(&format!("sled cannot recover its log ({})", panic_message(&*panic))))
        })
    };
    // sled's file lock outlives a dropped database for a moment, and a
    // previous process may still be exiting: wait a little.
    let deadline = Instant::now() + LOCK_PATIENCE;
    let db = loop {
        match open_once() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other.map_err(unreadable).map_err(open_err)?,
        }
    };
    Ok((db, had_log))
}

impl Store {
    /// Opens (or creates) the store, recovering every partition.
    pub fn open(opts: &StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: opts.path.clone(), source };
        let (db, had_log) = open_sled(opts)?;
        let trees = meta::Trees::open(db, &opts.path).map_err(open_err)?;
        let mut migrate_from_v2 = false;
        match trees.meta.get("format").map_err(open_err)? {
            None if had_log => {
                return Err(open_err(damaged(
                    "sled's log file is not empty but holds no sluice format marker",
                )))
            }
            None if opts.fs.list(&opts.path.join("segments")).is_ok_and(|l| !l.is_empty()) => {
                return Err(open_err(damaged(
                    "the metadata database is missing or empty but segments/ holds partitions",
                )))
            }
            None => {
                trees.meta.insert("format", FORMAT).map_err(open_err)?;
                trees.sync().map_err(open_err)?;
            }
            Some(v) if v.as_ref() == FORMAT.as_bytes() => {}
            Some(v) if v.as_ref() == FORMAT_V2.as_bytes() => migrate_from_v2 = true,
            Some(v) => {
                return Err(StoreError::Format {
                    path: opts.path.clone(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: FORMAT,
                })
            }
        }
        let mut floors = Vec::new();
        if migrate_from_v2 {
            // Anything under segments/ is a migration a crash interrupted.
            opts.fs.remove_dir_all(&opts.path.join("segments")).map_err(|e| open_err(sled::Error::Io(e)))?;
            // Floors apply after the records below them are copied.
            for item in trees.meta.scan_prefix("next/") {
                let (k, v) = item.map_err(open_err)?;
                floors.push((k.to_vec(), v.to_vec()));
            }
            for (k, _) in &floors {
                trees.meta.remove(k).map_err(open_err)?;
            }
        }
        let mut store = Store {
            slot: Arc::new(Slot {
                opts: opts.clone(),
                meta: Arc::new(Meta::new(&opts.path, opts.cache_capacity, trees, opts.fs.clone())),
                topics: RwLock::new(BTreeMap::new()),
                accepted_loss: Vec::new(),
                topic_changes: Mutex::new(()),
                checkpointing: Mutex::new(Instant::now()),
                meta_bytes: AtomicU64::new(0),
                next_commit: AtomicU64::new(0),
                positions_moved: std::sync::atomic::AtomicBool::new(false),
                last_checkpoint: Mutex::new(Vec::new()),
            }),
        };
        let mut lost = Vec::new();
        // Reading a damaged tree panics in sled too.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.load_topics(&mut lost)))
            .unwrap_or_else(|panic| {
                Err(open_err(damaged(&format!("sled cannot read its log ({})", panic_message(&*panic)))))
            })?;
        store.slot.next_commit.store(store.slot.meta.highest_commit_id(), Ordering::Relaxed);
        if migrate_from_v2 {
            migrate::from_v2(&store, &floors)?;
        }
        if !lost.is_empty() {
            if !opts.accept_data_loss {
                let file = lost_file(&opts.path, &lost);
                return Err(StoreError::DataLoss { file, lost });
            }
            store.skip_lost(&lost)?;
            for l in &lost {
                tracing::warn!(topic = %l.topic, partition = l.partition, from = l.from, to = l.to,
                    "durable records missing from the log; continuing without them (--accept-data-loss)");
            }
            if let Some(slot) = Arc::get_mut(&mut store.slot) {
                slot.accepted_loss = lost;
            }
        }
        store.checkpoint()?;
        Ok(store)
    }

    /// What `open` found missing and skipped under
    /// [`StoreOptions::accept_data_loss`]; empty after a clean open.
    pub fn accepted_loss(&self) -> &[LostRange] {
        &self.slot.accepted_loss
    }

    /// Moves each damaged partition's next offset past what was lost, so no
    /// offset is reused.
    fn skip_lost(&self, lost: &[LostRange]) -> Result<(), StoreError> {
        for l in lost {
            if let Ok(p) = self.partition(&l.topic, PartitionId(l.partition)) {
                p.accept_damage()?;
                p.skip_to(Offset(l.to))?;
            }
        }
        Ok(())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.slot.opts.path
    }

    fn segments_root(&self) -> PathBuf {
        self.slot.opts.path.join("segments")
    }

    pub(crate) fn meta(&self) -> &Arc<Meta> {
        &self.slot.meta
    }

    fn load_topics(&self, lost: &mut Vec<LostRange>) -> Result<(), StoreError> {
        let trees = self.slot.meta.trees()?;
        let mut specs = Vec::new();
        for item in trees.meta.scan_prefix("topic/") {
            let (k, v) = item.map_err(StoreError::io("loading topics"))?;
            let name = String::from_utf8_lossy(&k["topic/".len()..]).into_owned();
            let stored: partition::TopicMeta = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Metadata { what: format!("topic {name:?}"), detail: e.to_string() }
            })?;
            specs.push(TopicSpec {
                name,
                partitions: stored.partitions,
                service: stored.service,
                retention: Retention::default(),
            });
        }
        drop(trees);
        for spec in specs {
            self.load_topic(spec, &[], lost)?;
        }
        Ok(())
    }

    /// Opens `spec`'s partitions after those in `keep` (the ones of the
    /// topic being grown, still in use by appenders) and registers it.
    fn load_topic(
        &self,
        spec: TopicSpec,
        keep: &[Arc<Partition>],
        lost: &mut Vec<LostRange>,
    ) -> Result<Arc<Topic>, StoreError> {
        let mut partitions = Vec::with_capacity(spec.partitions as usize);
        partitions.extend_from_slice(keep);
        for p in keep.len() as u32..spec.partitions {
            let mut rec =
                partition::Recovered { verify_sealed: self.slot.opts.accept_data_loss, ..Default::default() };
            let part = Partition::open(
                &self.segments_root(),
                self.slot.opts.fs.clone(),
                self.slot.meta.clone(),
                self.slot.opts.segments,
                &spec.name,
                PartitionId(p),
                &mut rec,
            )?;
            for (file, from, to) in rec.damaged {
                tracing::error!(file = %file.display(), from, to, "damaged sealed segment");
                lost.push(LostRange { topic: spec.name.clone(), partition: p, from, to });
            }
            if let Some((from, to)) = rec.lost {
                lost.push(LostRange { topic: spec.name.clone(), partition: p, from, to });
            }
            partitions.push(Arc::new(part));
        }
        let topic = Arc::new(Topic { spec: RwLock::new(spec.clone()), partitions });
        write(&self.slot.topics).insert(spec.name, topic.clone());
        Ok(topic)
    }

    /// Creates the topic, or updates an existing one: the service and
    /// retention follow `spec`, partitions may grow but never shrink.
    pub fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicInfo, StoreError> {
        let _changing = self.slot.topic_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let existing = read(&self.slot.topics).get(&spec.name).cloned();
        let partitions = spec.partitions.max(1);
        if let Some(topic) = &existing {
            let have = topic.partitions.len() as u32;
            if partitions < have {
                return Err(StoreError::PartitionShrink {
                    topic: spec.name.clone(),
                    existing: have,
                    requested: partitions,
                });
            }
            if partitions == have {
                let changed = read(&topic.spec).service != spec.service;
                *write(&topic.spec) = TopicSpec { partitions, ..spec.clone() };
                if changed {
                    self.persist_topic_meta(&spec.name, partitions, &spec.service)?;
                }
                return Ok(self.info_of(topic));
            }
        }
        self.persist_topic_meta(&spec.name, partitions, &spec.service)?;
        let keep = existing.as_ref().map_or(&[][..], |t| &t.partitions[..]);
        let mut lost = Vec::new();
        let topic = self.load_topic(TopicSpec { partitions, ..spec.clone() }, keep, &mut lost)?;
        // The catalog entry is durable before anything is written to it.
        self.slot.meta.sync()?;
        Ok(self.info_of(&topic))
    }

    fn persist_topic_meta(&self, name: &str, partitions: u32, service: &str) -> Result<(), StoreError> {
        let meta = partition::TopicMeta { partitions, service: service.to_owned() };
        let json = serde_json::to_vec(&meta)
            .map_err(|e| StoreError::Metadata { what: format!("topic {name:?}"), detail: e.to_string() })?;
        self.slot
            .meta
            .trees()?
            .meta
            .insert(format!("topic/{name}"), json)
            .map_err(StoreError::io("writing topic metadata"))?;
        Ok(())
    }

    fn info_of(&self, topic: &Topic) -> TopicInfo {
        TopicInfo {
            spec: read(&topic.spec).clone(),
            partitions: topic.partitions.iter().map(|p| p.info()).collect(),
        }
    }

    pub(crate) fn topic_handle(&self, name: &str) -> Result<Arc<Topic>, StoreError> {
        read(&self.slot.topics).get(name).cloned().ok_or_else(|| StoreError::UnknownTopic(name.to_owned()))
    }

    fn partition(&self, topic: &str, partition: PartitionId) -> Result<Arc<Partition>, StoreError> {
        let t = self.topic_handle(topic)?;
        t.partitions.get(partition.0 as usize).cloned().ok_or(StoreError::UnknownPartition {
            topic: topic.to_owned(),
            partition: partition.0,
            partitions: t.partitions.len() as u32,
        })
    }

    /// One topic's definition and watermarks.
    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        let t = read(&self.slot.topics).get(name).cloned()?;
        Some(self.info_of(&t))
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.topics_snapshot().iter().map(|t| self.info_of(t)).collect()
    }

    /// Appends records to one partition; they get consecutive offsets and
    /// the first one is returned. In memory only: not durable, and not
    /// visible to readers, until a sync or flush.
    pub fn append(
        &self,
        topic: &str,
        partition: PartitionId,
        records: &[Record],
    ) -> Result<Offset, StoreError> {
        let part = self.partition(topic, partition)?;
        Ok(part.append(records).0)
    }

    /// Reads up to `max_records` durable records and about `max_bytes`
    /// bytes (at least one record when any is there) starting at `from`.
    pub fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, StoreError> {
        self.partition(topic, partition)?.read(from, max_records, max_bytes)
    }

    /// Log start and high watermark (next offset to be written) of one
    /// partition.
    pub fn watermarks(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset), StoreError> {
        let info = self.partition(topic, partition)?.info();
        Ok((info.log_start, info.high_watermark))
    }

    /// The durability lane of `sync` and express services: makes the given
    /// partitions durable (write out, `fdatasync` of their active segments),
    /// without touching any other partition's buffered bytes. Blocking.
    pub fn sync_partitions(&self, parts: &[(String, PartitionId)]) -> Result<(), StoreError> {
        let mut first_err = None;
        for (topic, p) in parts {
            match self.partition(topic, *p).and_then(|part| part.sync(None)) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic = %topic, partition = p.0, error = %e, "sync failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The bulk lane: makes every partition `include` accepts durable, with
    /// writeback paced in steps of `step` bytes. Blocking.
    pub fn flush_paced(&self, step: u64, include: &dyn Fn(&str) -> bool) -> Result<(), StoreError> {
        let mut first_err = None;
        for topic in self.topics_snapshot() {
            let name = topic.spec().name;
            if !include(&name) {
                continue;
            }
            for part in topic.partitions() {
                if part.undurable_bytes() == 0 {
                    continue;
                }
                if let Err(e) = part.sync(Some(step.max(4096))) {
                    tracing::error!(topic = %name, partition = part.id.0, error = %e, "flush failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes everything appended so far durable, then checkpoints.
    /// Blocking. Returns the bytes that were waiting.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let waiting = self.undurable_bytes();
        let r = self.flush_paced(u64::MAX, &|_| true);
        self.checkpoint()?;
        r.map(|()| waiting as usize)
    }

    /// Bytes appended and not yet durable, over all partitions.
    pub fn undurable_bytes(&self) -> u64 {
        self.topics_snapshot().iter().flat_map(|t| t.partitions().iter()).map(|p| p.undurable_bytes()).sum()
    }

    /// Records every partition's durable position and the metadata written
    /// since the last checkpoint (group offsets, cursors, index entries,
    /// sealed segments) durably: one sled flush. Recovery after a crash
    /// scans only what was written after it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_unless_unchanged(false).map(|_| ())
    }

    /// The checkpoint; with `skip_unchanged`, nothing is written when no
    /// durable position and no group offset or cursor moved since the last
    /// one (an idle node writes nothing). Returns whether it wrote.
    fn checkpoint_unless_unchanged(&self, skip_unchanged: bool) -> Result<bool, StoreError> {
        let mut last = self.slot.checkpointing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut values = Vec::new();
        for topic in self.topics_snapshot() {
            let name = topic.spec().name;
            for part in topic.partitions() {
                values.push((meta::tp_key(&name, part.id.0), part.checkpoint_value()));
            }
        }
        let positions_moved = self.slot.positions_moved.swap(false, Ordering::AcqRel);
        if skip_unchanged
            && !positions_moved
            && *self.slot.last_checkpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == values
        {
            *last = Instant::now();
            return Ok(false);
        }
        let written = self.write_checkpoint(&values);
        if written.is_err() {
            self.slot.positions_moved.store(true, Ordering::Release);
        }
        written?;
        *self.slot.last_checkpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = values;
        self.slot.meta_bytes.store(self.slot.meta.size_on_disk(), Ordering::Relaxed);
        *last = Instant::now();
        Ok(true)
    }

    fn write_checkpoint(&self, values: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let trees = self.slot.meta.trees()?;
        let mut batch = sled::Batch::default();
        for (k, v) in values {
            batch.insert(k.as_slice(), v.as_slice());
        }
        trees.checkpoints.apply_batch(batch).map_err(StoreError::io("checkpoint"))?;
        drop(trees);
        // (`Meta::sync` tells the file layer: `Fs::checkpointed`.)
        self.slot.meta.sync()?;
        Ok(())
    }

    /// A checkpoint when the last one is older than `every`.
    pub fn checkpoint_if_due(&self, every: Duration) -> Result<bool, StoreError> {
        let due = self.slot.checkpointing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed()
            >= every;
        if due {
            return self.checkpoint_unless_unchanged(true);
        }
        Ok(false)
    }

    /// Bytes the data directory holds: segment files, batches about to be
    /// written, and sled's files (as of the last checkpoint). What the disk
    /// budget counts.
    pub fn total_bytes(&self) -> u64 {
        let parts: u64 =
            self.topics_snapshot().iter().flat_map(|t| t.partitions().iter()).map(|p| p.bytes()).sum();
        parts + self.slot.meta_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the store occupies on disk (segments and sled).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.total_bytes())
    }

    /// Records a failed write discarded. The segment store keeps unwritten
    /// batches in memory until a write succeeds, so this is always empty;
    /// kept for callers that count such losses.
    pub fn take_discarded(&self) -> Vec<LostRange> {
        Vec::new()
    }

    /// Stores a consumer group's position: `offset` is the next offset the
    /// group will read. A position past the durable end is refused, so
    /// committed offsets are never ahead of the data. Durable with the next
    /// checkpoint.
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        let tree = self.slot.meta.trees()?.groups.clone();
        self.set_position(&tree, "commit", group, topic, partition, offset)
    }

    /// A group's committed position in one partition, if any.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, StoreError> {
        let tree = self.slot.meta.trees()?.groups.clone();
        position(&tree, "reading group offset", group, topic, partition)
    }

    /// Every committed consumer-group position, in key order: (group,
    /// topic, partition, next offset to read). For status views.
    pub fn group_positions(&self) -> Result<Vec<(String, String, PartitionId, Offset)>, StoreError> {
        let tree = self.slot.meta.trees()?.groups.clone();
        let mut out = Vec::new();
        for entry in tree.iter() {
            let (k, v) = entry.map_err(StoreError::io("listing group offsets"))?;
            // `<group> 0 <topic> 0 <partition u32 BE>`: names never hold a 0.
            let mut parts = k.splitn(3, |b| *b == 0);
            let (Some(group), Some(topic), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(p), Ok(o)) = (<[u8; 4]>::try_from(p), <[u8; 8]>::try_from(v.as_ref())) else {
                continue;
            };
            out.push((
                String::from_utf8_lossy(group).into_owned(),
                String::from_utf8_lossy(topic).into_owned(),
                PartitionId(u32::from_be_bytes(p)),
                Offset(u64::from_be_bytes(o)),
            ));
        }
        Ok(out)
    }

    /// Stores an uplink's cursor: the next offset it will forward. Call it
    /// only after the central side acknowledged everything before it.
    /// Recorded at once, durable with the next checkpoint (a crash re-sends
    /// at most what was acknowledged since).
    pub fn set_cursor(
        &self,
        uplink: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        let tree = self.slot.meta.trees()?.cursors.clone();
        self.set_position(&tree, "uplink cursor", uplink, topic, partition, offset)
    }

    /// An uplink's cursor in one partition, if any.
    pub fn cursor(
        &self,
        uplink: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, StoreError> {
        let tree = self.slot.meta.trees()?.cursors.clone();
        position(&tree, "reading uplink cursor", uplink, topic, partition)
    }

    fn set_position(
        &self,
        tree: &sled::Tree,
        op: &'static str,
        owner: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        let info = self.partition(topic, partition)?.info();
        if offset > info.flushed {
            return Err(StoreError::CommitPastEnd {
                topic: topic.to_owned(),
                partition: partition.0,
                offset: offset.0,
                high_watermark: info.flushed.0,
            });
        }
        self.slot.positions_moved.store(true, Ordering::Release);
        tree.insert(position_key(owner, topic, partition), &offset.0.to_be_bytes()).map_err(|e| {
            self.slot.meta.after_error();
            StoreError::Io { op, source: e }
        })?;
        Ok(())
    }

    /// Appends records, moves consumer-group positions and writes state as
    /// one durable step: after a crash either all of it is there or none.
    /// The records get their offsets in the returned order (first offset
    /// per entry of `w.records`).
    ///
    /// The partitions' pending appends are written first; the new records
    /// go out as batches flagged with a commit id and synced; then one sled
    /// transaction stores the positions, the state and "commit id done",
    /// and sled is flushed. Recovery cuts a flagged batch whose commit is
    /// not done (it is always the tail of its partition: the partitions are
    /// held for the whole step).
    pub fn commit_atomic(&self, w: &AtomicWrite) -> Result<Vec<Offset>, StoreError> {
        let _serial = self.slot.checkpointing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let meta = &self.slot.meta;
        let id = meta.highest_commit_id().max(self.slot.next_commit.load(Ordering::Relaxed)) + 1;
        self.slot.next_commit.store(id, Ordering::Relaxed);
        let mut parts: Vec<Arc<Partition>> = Vec::new();
        for (topic, p, _) in &w.records {
            let part = self.partition(topic, *p)?;
            if !parts.iter().any(|q| Arc::ptr_eq(q, &part)) {
                parts.push(part);
            }
        }
        for (_, topic, p, offset) in &w.positions {
            let info = self.partition(topic, *p)?.info();
            // A partition this commit writes: up to its new records (they
            // become durable with it); any other: up to its durable end.
            let writes = w.records.iter().any(|(t, q, _)| t == topic && q == p);
            let written = w
                .records
                .iter()
                .filter(|(t, q, _)| t == topic && q == p)
                .map(|(_, _, r)| r.len() as u64)
                .sum::<u64>();
            let limit = if writes { info.high_watermark.0 + written } else { info.flushed.0 };
            if offset.0 > limit {
                return Err(StoreError::CommitPastEnd {
                    topic: topic.clone(),
                    partition: p.0,
                    offset: offset.0,
                    high_watermark: limit,
                });
            }
        }
        // Held in a fixed order (the list order of `parts`, first use wins):
        // only this function holds several, under `_serial`.
        let mut guards: Vec<_> = parts.iter().map(|p| p.lock_io()).collect();
        let mut firsts = Vec::with_capacity(w.records.len());
        for (topic, p, records) in &w.records {
            // Held above: found among `parts` (no lookup that could fail
            // and leave the partitions held).
            let part = parts
                .iter()
                .find(|q| q.topic == *topic && q.id == *p)
                .expect("every partition of the commit was resolved above");
            firsts.push(part.append_atomic(records, id).0);
        }
        let result = (|| {
            for (part, io) in parts.iter().zip(guards.iter_mut()) {
                part.sync_io(io, None)?;
            }
            let trees = meta.trees()?;
            let mut groups = sled::Batch::default();
            for (group, topic, p, offset) in &w.positions {
                groups.insert(position_key(group, topic, *p), &offset.0.to_be_bytes());
            }
            let mut state = sled::Batch::default();
            for (k, v) in &w.state {
                match v {
                    Some(v) => state.insert(k.as_slice(), v.as_slice()),
                    None => state.remove(k.as_slice()),
                }
            }
            use sled::Transactional;
            (&trees.groups, &trees.state, &trees.atomic)
                .transaction(|(g, s, a)| {
                    g.apply_batch(&groups)?;
                    s.apply_batch(&state)?;
                    a.insert("last", &id.to_be_bytes())?;
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| StoreError::Io {
                    op: "atomic commit",
                    source: match e {
                        sled::transaction::TransactionError::Storage(e) => e,
                        sled::transaction::TransactionError::Abort(()) => {
                            sled::Error::Unsupported("aborted".into())
                        }
                    },
                })?;
            drop(trees);
            meta.sync()
        })();
        let checkpoint = match &result {
            Ok(()) => {
                meta.set_committed(id);
                true
            }
            // Batches that may be on disk stay, skipped by every reader;
            // the abort is made durable before anything after them shows.
            Err(_) => {
                meta.abort(id);
                meta.sync().is_ok()
            }
        };
        for (part, io) in parts.iter().zip(guards.iter_mut()) {
            part.publish(io, checkpoint);
        }
        drop(guards);
        result.map(|()| firsts)
    }

    /// State written by [`Self::commit_atomic`].
    pub fn state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .slot
            .meta
            .trees()?
            .state
            .get(key)
            .map_err(StoreError::io("reading state"))?
            .map(|v| v.to_vec()))
    }

    /// Every state entry (key, value) whose key starts with `prefix`, in
    /// key order.
    pub fn states(&self, prefix: &[u8]) -> Result<Vec<StateEntry>, StoreError> {
        let tree = self.slot.meta.trees()?.state.clone();
        tree.scan_prefix(prefix)
            .map(|entry| {
                let (k, v) = entry.map_err(StoreError::io("listing state"))?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Forgets every committed position of `group`. Durable with the next
    /// checkpoint.
    pub fn delete_group(&self, group: &str) -> Result<(), StoreError> {
        let tree = self.slot.meta.trees()?.groups.clone();
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for entry in tree.scan_prefix(&prefix) {
            let (k, _) = entry.map_err(StoreError::io("listing group offsets"))?;
            batch.remove(k);
        }
        self.slot.positions_moved.store(true, Ordering::Release);
        tree.apply_batch(batch).map_err(|e| {
            self.slot.meta.after_error();
            StoreError::Io { op: "deleting group offsets", source: e }
        })
    }

    pub(crate) fn topics_snapshot(&self) -> Vec<Arc<Topic>> {
        read(&self.slot.topics).values().cloned().collect()
    }
}

fn position(
    tree: &sled::Tree,
    op: &'static str,
    owner: &str,
    topic: &str,
    partition: PartitionId,
) -> Result<Option<Offset>, StoreError> {
    let v = tree.get(position_key(owner, topic, partition)).map_err(StoreError::io(op))?;
    Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(|b| Offset(u64::from_be_bytes(b))))
}

/// The segment file a loss report names: the first damaged partition's
/// directory.
fn lost_file(root: &Path, lost: &[LostRange]) -> PathBuf {
    lost.first().map_or_else(
        || root.to_owned(),
        |l| partition::partition_dir(&root.join("segments"), &l.topic, PartitionId(l.partition)),
    )
}

impl Topic {
    pub(crate) fn spec(&self) -> TopicSpec {
        read(&self.spec).clone()
    }

    pub(crate) fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

/// sled's errors for files it cannot read name a cause that misleads (a
/// garbled `conf` reads as "created using a sled version earlier than
/// 0.29"): say they are damaged and what to do.
fn unreadable(e: sled::Error) -> sled::Error {
    match e {
        sled::Error::Unsupported(why) | sled::Error::ReportableBug(why) => {
            damaged(&format!("sled cannot read its files ({why})"))
        }
        sled::Error::Corruption { .. } => damaged(&e.to_string()),
        other => other,
    }
}

/// The error for a data directory whose files cannot be trusted.
fn damaged(what: &str) -> sled::Error {
    sled::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what}: the files are damaged or not a sluice store; restore a backup or move the directory away"),
    ))
}

fn position_key(owner: &str, topic: &str, partition: PartitionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + topic.len() + 6);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.0.to_be_bytes());
    k
}

/// Lock helpers: a poisoned lock only means another thread panicked while
/// holding it; the maps stay structurally valid, so keep going.
pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
