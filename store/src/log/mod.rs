//! The durable topic log on sled.
//!
//! # On-disk format
//!
//! One sled database in the data directory holds:
//!
//! | tree                     | key                                             | value |
//! |--------------------------|-------------------------------------------------|-------|
//! | `meta`                   | `format`                                        | `sluice-store/2` |
//! | `meta`                   | `topic/<topic>`                                 | JSON `{"partitions": N, "service": "name"}` |
//! | `meta`                   | `start/<topic>/<partition u32 BE>`              | u64 BE: first offset not deleted by retention or eviction |
//! | `meta`                   | `next/<topic>/<partition u32 BE>`               | u64 BE: lowest next offset, set when a data loss was accepted |
//! | `log/<topic>/<partition>`| offset u64 BE of the chunk's first record       | a chunk: the records of one append (see [`chunk`]), each encoded as in [`crate::record`] |
//! | `groups`                 | `<group> 0x00 <topic> 0x00 <partition u32 BE>`  | u64 BE committed offset (next to read) |
//! | `cursors`                | `<uplink> 0x00 <topic> 0x00 <partition u32 BE>` | u64 BE next offset to forward (set after the central side acknowledged) |
//!
//! Next to sled's files, `sluice-watermarks` records the flushed high
//! watermark of every partition (see `watermarks.rs`); `open` refuses a log
//! that recovered less, unless [`StoreOptions::accept_data_loss`] is set.
//!
//! Names cannot contain `0x00` or `/` ambiguity matters only for `log/`
//! trees, whose names are never parsed back.
//!
//! Offsets are never reused: on open, a partition's next offset is the
//! larger of its last stored offset + 1 and its recorded start offset, and
//! the start offset is written before records are deleted.
//!
//! # Durability
//!
//! Appends land in sled's in-memory log; [`Store::flush`] writes and syncs
//! them. sled recovers a prefix of its log after a crash, so a flushed
//! record implies every earlier write is there too. The gateway calls
//! `flush` in group commits for `sync` services and on a timer for
//! `buffered` ones; sled's own background flusher is turned off so those are
//! the only disk writes (SD cards wear out).

pub mod chunk;
mod durable;
mod partition;
mod recover;
mod retention;
mod watermarks;

pub use retention::{EvictionPolicy, RetentionReport};

use crate::error::{LostRange, StoreError};
use crate::record::{Offset, PartitionId, Record, StoredRecord};
use partition::Partition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const FORMAT: &str = "sluice-store/2";

/// How long `open` waits for another holder of the directory's lock.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Directory of the sled database (created if missing).
    pub path: PathBuf,
    /// sled page cache size in bytes; RSS grows to a few times this.
    pub cache_capacity: u64,
    /// Open even when the log recovered less than was flushed (or the
    /// watermark file is damaged): the missing offsets are skipped, never
    /// reused, and listed by [`Store::accepted_loss`]. Without it such a
    /// store is refused with [`StoreError::DataLoss`].
    pub accept_data_loss: bool,
}

impl StoreOptions {
    /// Options for `path` with the default cache and no data loss accepted.
    pub fn new(path: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions { path: path.into(), cache_capacity: 16 << 20, accept_data_loss: false }
    }
}

/// Retention of one topic; `None` keeps forever (within the disk budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are deleted.
    pub max_age: Option<Duration>,
    /// The topic keeps at most this many bytes, split evenly over its
    /// partitions; the oldest records go first.
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
    /// Records below this offset are flushed: they survive a crash. Records
    /// between it and the high watermark may still be lost (and their
    /// offsets handed out again), so what leaves the node (the uplink)
    /// stops here.
    pub flushed: Offset,
    /// Records stored.
    pub records: u64,
    /// Encoded bytes stored.
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
    /// Records from the requested offset on (or from the log start when the
    /// requested offset was already deleted).
    pub records: Vec<StoredRecord>,
    /// Next offset to be written.
    pub high_watermark: Offset,
    /// First offset still stored.
    pub log_start: Offset,
}

pub(crate) struct Topic {
    spec: RwLock<TopicSpec>,
    partitions: Vec<Arc<Partition>>,
}

struct Inner {
    db: sled::Db,
    meta: sled::Tree,
    groups: sled::Tree,
    cursors: sled::Tree,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    total_bytes: AtomicU64,
    durable: durable::FileSync,
    watermarks: watermarks::Writer,
}

/// What all clones of a [`Store`] share: the open database, which is
/// replaced when sled fails a write (see `recover.rs`).
struct Slot {
    opts: StoreOptions,
    inner: RwLock<Option<Arc<Inner>>>,
    recovery: std::sync::Mutex<recover::Recovery>,
    accepted_loss: Vec<LostRange>,
    /// Held while a topic is created or changed, so two callers never open
    /// the same partition twice (two partition objects would hand out the
    /// same offsets).
    topic_changes: std::sync::Mutex<()>,
}

/// The topic log. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.slot.opts.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store, loading every topic it holds.
    pub fn open(opts: &StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: opts.path.clone(), source };
        let config = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        // sled recovers a log it cannot read at all as a new, empty database:
        // a log that held data but yields no format marker is damaged (or
        // not ours), not a fresh start. The marker is flushed on creation.
        let had_log = std::fs::metadata(opts.path.join("db")).is_ok_and(|m| m.len() > 0);
        // sled 0.34.7 panics on some damaged log files instead of returning
        // an error (spacejam/sled#1387): report that as a corrupt directory.
        // (Where panics abort, as in the release profile, this cannot help.)
        let open_once = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).unwrap_or_else(|panic| {
                Err(damaged(&format!("sled cannot recover its log ({})", panic_message(&*panic))))
            })
        };
        // sled's file lock outlives a dropped database for a moment (its
        // background threads hold the file), and a previous process may
        // still be exiting: wait a little before calling the directory busy.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let db = loop {
            match open_once() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other.map_err(unreadable).map_err(open_err)?,
            }
        };
        let meta = db.open_tree("meta").map_err(open_err)?;
        let groups = db.open_tree("groups").map_err(open_err)?;
        let cursors = db.open_tree("cursors").map_err(open_err)?;
        match meta.get("format").map_err(open_err)? {
            None if had_log => {
                return Err(open_err(damaged(
                    "sled's log file is not empty but holds no sluice format marker",
                )))
            }
            None => {
                meta.insert("format", FORMAT).map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
            Some(v) if v.as_ref() == FORMAT.as_bytes() => {}
            Some(v) => {
                return Err(StoreError::Format {
                    path: opts.path.clone(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: FORMAT,
                })
            }
        }
        let mut rebuild_marks = false;
        let synced = match watermarks::load(&opts.path) {
            Ok(marks) => marks.unwrap_or_default(),
            Err(detail) if opts.accept_data_loss => {
                rebuild_marks = true;
                tracing::warn!(file = %opts.path.join(watermarks::FILE_NAME).display(), %detail,
                    "damaged high-watermark file ignored (--accept-data-loss); rebuilt from the log");
                watermarks::Marks::new()
            }
            Err(detail) => {
                return Err(StoreError::Watermarks { file: opts.path.join(watermarks::FILE_NAME), detail })
            }
        };
        let inner = Inner {
            db,
            meta,
            groups,
            cursors,
            topics: RwLock::new(BTreeMap::new()),
            total_bytes: AtomicU64::new(0),
            durable: durable::FileSync::open(&opts.path).map_err(|e| open_err(sled::Error::Io(e)))?,
            watermarks: watermarks::Writer::start(&opts.path, synced.clone())
                .map_err(|e| open_err(sled::Error::Io(e)))?,
        };
        let mut store = Store {
            slot: Arc::new(Slot {
                opts: opts.clone(),
                inner: RwLock::new(Some(Arc::new(inner))),
                recovery: std::sync::Mutex::new(recover::Recovery::default()),
                accepted_loss: Vec::new(),
                topic_changes: std::sync::Mutex::new(()),
            }),
        };
        // Reading a damaged tree (a missing blob file) panics in sled too.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.load_topics())).unwrap_or_else(
            |panic| Err(open_err(damaged(&format!("sled cannot read its log ({})", panic_message(&*panic))))),
        )?;
        if rebuild_marks {
            store.inner()?.watermarks.offer(store.high_watermarks());
        }
        let lost = store.lost_against(&synced);
        if !lost.is_empty() {
            if !opts.accept_data_loss {
                return Err(StoreError::DataLoss { file: opts.path.join("db"), lost });
            }
            store.skip_lost(&lost)?;
            for l in &lost {
                tracing::warn!(topic = %l.topic, partition = l.partition, from = l.from, to = l.to,
                    "flushed records missing from the log; continuing without them (--accept-data-loss)");
            }
            // Nothing else holds the Arc yet.
            if let Some(slot) = Arc::get_mut(&mut store.slot) {
                slot.accepted_loss = lost;
            }
        }
        Ok(store)
    }

    /// What `open` found missing and skipped under
    /// [`StoreOptions::accept_data_loss`]; empty after a clean open.
    pub fn accepted_loss(&self) -> &[LostRange] {
        &self.slot.accepted_loss
    }

    /// The flushed high watermarks in `synced` that the log does not reach.
    fn lost_against(&self, synced: &watermarks::Marks) -> Vec<LostRange> {
        let topics = self.topics_snapshot_map();
        let mut lost = Vec::new();
        for ((topic, partition), &flushed) in synced {
            let recovered = topics
                .get(topic)
                .and_then(|t| t.partitions.get(*partition as usize))
                .map_or(0, |p| p.info().high_watermark.0);
            if recovered < flushed {
                lost.push(LostRange {
                    topic: topic.clone(),
                    partition: *partition,
                    from: recovered,
                    to: flushed,
                });
            }
        }
        lost
    }

    /// Moves each damaged partition's next offset past what was lost
    /// (re-creating topics whose definition was lost too, under the
    /// `default` service until the configuration says otherwise) and
    /// flushes, so the next open is clean and no offset is reused.
    fn skip_lost(&self, lost: &[LostRange]) -> Result<(), StoreError> {
        for l in lost {
            let existing = self.topic(&l.topic);
            let have = existing.as_ref().map_or(0, |t| t.spec.partitions);
            if have <= l.partition {
                let service = existing.map_or_else(|| "default".to_owned(), |t| t.spec.service);
                let spec = TopicSpec {
                    name: l.topic.clone(),
                    partitions: l.partition + 1,
                    service,
                    retention: Retention::default(),
                };
                self.ensure_topic(&spec)?;
            }
            self.partition(&l.topic, PartitionId(l.partition))?.skip_to(Offset(l.to))?;
        }
        self.flush()?;
        Ok(())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.slot.opts.path
    }

    fn load_topics(&self) -> Result<(), StoreError> {
        for item in self.inner()?.meta.scan_prefix("topic/") {
            let (k, v) = item.map_err(StoreError::io("loading topics"))?;
            let name = String::from_utf8_lossy(&k["topic/".len()..]).into_owned();
            let stored: partition::TopicMeta = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Metadata { what: format!("topic {name:?}"), detail: e.to_string() }
            })?;
            let spec = TopicSpec {
                name: name.clone(),
                partitions: stored.partitions,
                service: stored.service,
                retention: Retention::default(),
            };
            self.load_topic(spec, &[])?;
        }
        Ok(())
    }

    /// Opens `spec`'s partitions after those in `keep` (the ones of the
    /// topic being grown, still in use by appenders) and registers it.
    fn load_topic(&self, spec: TopicSpec, keep: &[Arc<Partition>]) -> Result<Arc<Topic>, StoreError> {
        let mut partitions = Vec::with_capacity(spec.partitions as usize);
        partitions.extend_from_slice(keep);
        for p in keep.len() as u32..spec.partitions {
            let inner = self.inner()?;
            let part = Partition::open(&inner.db, &inner.meta, &spec.name, PartitionId(p))?;
            inner.total_bytes.fetch_add(part.bytes(), Ordering::Relaxed);
            partitions.push(Arc::new(part));
        }
        let topic = Arc::new(Topic { spec: RwLock::new(spec.clone()), partitions });
        write(&self.inner()?.topics).insert(spec.name, topic.clone());
        Ok(topic)
    }

    /// Creates the topic, or updates an existing one: the service and
    /// retention follow `spec`, partitions may grow but never shrink.
    pub fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicInfo, StoreError> {
        let _changing = self.slot.topic_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let existing = read(&self.inner()?.topics).get(&spec.name).cloned();
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
                *write(&topic.spec) = TopicSpec { partitions, ..spec.clone() };
                self.persist_topic_meta(spec.name.as_str(), partitions, &spec.service)?;
                return Ok(self.info_of(topic));
            }
        }
        self.persist_topic_meta(&spec.name, partitions, &spec.service)?;
        let keep = existing.as_ref().map_or(&[][..], |t| &t.partitions[..]);
        let topic = self.load_topic(TopicSpec { partitions, ..spec.clone() }, keep)?;
        Ok(self.info_of(&topic))
    }

    fn persist_topic_meta(&self, name: &str, partitions: u32, service: &str) -> Result<(), StoreError> {
        let meta = partition::TopicMeta { partitions, service: service.to_owned() };
        let json = serde_json::to_vec(&meta)
            .map_err(|e| StoreError::Metadata { what: format!("topic {name:?}"), detail: e.to_string() })?;
        self.inner()?
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
        read(&self.inner()?.topics)
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownTopic(name.to_owned()))
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
        let t = self.topics_snapshot_map().get(name).cloned()?;
        Some(self.info_of(&t))
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let all: Vec<Arc<Topic>> = self.topics_snapshot();
        all.iter().map(|t| self.info_of(t)).collect()
    }

    /// Appends records to one partition; they get consecutive offsets and
    /// the first one is returned. Not durable until the next [`flush`](Self::flush).
    pub fn append(
        &self,
        topic: &str,
        partition: PartitionId,
        records: &[Record],
    ) -> Result<Offset, StoreError> {
        let part = self.partition(topic, partition)?;
        let (first, added) = part.append(records).inspect_err(|e| self.after_error(e))?;
        self.inner()?.total_bytes.fetch_add(added, Ordering::Relaxed);
        Ok(first)
    }

    /// Reads up to `max_records` records and about `max_bytes` bytes (at
    /// least one record when any is there) starting at `from`.
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

    /// Log start and high watermark of one partition.
    pub fn watermarks(&self, topic: &str, partition: PartitionId) -> Result<(Offset, Offset), StoreError> {
        let p = self.partition(topic, partition)?;
        let info = p.info();
        Ok((info.log_start, info.high_watermark))
    }

    /// Makes every write so far durable. Blocking; call it from a thread
    /// that may block. Returns bytes written.
    ///
    /// sled's `flush` writes its log with `sync_file_range` on Linux, which
    /// neither flushes the device cache nor the file size, and it never syncs
    /// the files it keeps for oversized pages (`blobs/`). So after it, the
    /// log file and any new blob files are `fdatasync`ed here, and the blob
    /// directory once a new file appeared in it.
    pub fn flush(&self) -> Result<usize, StoreError> {
        // Taken before the flush: everything below these is in it.
        let marks = self.high_watermarks();
        let inner = self.inner()?;
        let written = inner.db.flush().map_err(StoreError::io("flush")).and_then(|written| {
            inner.durable.sync().map_err(|e| StoreError::Io { op: "fsync", source: sled::Error::Io(e) })?;
            Ok(written)
        });
        drop(inner);
        let written = written.inspect_err(|e| self.after_error(e))?;
        let inner = self.inner()?;
        for ((topic, p), hw) in &marks {
            if let Some(part) = read(&inner.topics).get(topic).and_then(|t| t.partitions.get(*p as usize)) {
                part.flushed_up_to(Offset(*hw));
            }
        }
        inner.watermarks.offer(marks);
        Ok(written)
    }

    fn high_watermarks(&self) -> watermarks::Marks {
        let topics = self.topics_snapshot_map();
        let mut marks = watermarks::Marks::new();
        for (name, topic) in topics.iter() {
            for p in &topic.partitions {
                let info = p.info();
                if info.high_watermark.0 > 0 {
                    marks.insert((name.clone(), info.partition.0), info.high_watermark.0);
                }
            }
        }
        marks
    }

    /// Encoded bytes of all stored records (what the disk budget counts).
    pub fn total_bytes(&self) -> u64 {
        self.inner().map_or(0, |i| i.total_bytes.load(Ordering::Relaxed))
    }

    /// Bytes sled occupies on disk (includes its space amplification).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner()?.db.size_on_disk().map_err(StoreError::io("size_on_disk"))
    }

    /// Stores a consumer group's position: `offset` is the next offset the
    /// group will read. A position past the high watermark is refused, so
    /// committed offsets are never ahead of the data. Not durable until the
    /// next flush.
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        self.set_position(&self.inner()?.groups, "commit", group, topic, partition, offset)
    }

    /// A group's committed position in one partition, if any.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, StoreError> {
        self.position(&self.inner()?.groups, "reading group offset", group, topic, partition)
    }

    /// Stores an uplink's cursor: the next offset it will forward. Call it
    /// only after the central side acknowledged everything before it. Like
    /// commits, never past the high watermark; durable with the next flush.
    pub fn set_cursor(
        &self,
        uplink: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        self.set_position(&self.inner()?.cursors, "uplink cursor", uplink, topic, partition, offset)
    }

    /// An uplink's cursor in one partition, if any.
    pub fn cursor(
        &self,
        uplink: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, StoreError> {
        self.position(&self.inner()?.cursors, "reading uplink cursor", uplink, topic, partition)
    }

    /// Positions (consumer groups and uplink cursors) share one layout:
    /// `<owner> 0x00 <topic> 0x00 <partition u32 BE>` -> u64 BE.
    fn set_position(
        &self,
        tree: &sled::Tree,
        op: &'static str,
        owner: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), StoreError> {
        let (_, hw) = self.watermarks(topic, partition)?;
        if offset > hw {
            return Err(StoreError::CommitPastEnd {
                topic: topic.to_owned(),
                partition: partition.0,
                offset: offset.0,
                high_watermark: hw.0,
            });
        }
        tree.insert(position_key(owner, topic, partition), &offset.0.to_be_bytes())
            .map_err(StoreError::io(op))?;
        Ok(())
    }

    fn position(
        &self,
        tree: &sled::Tree,
        op: &'static str,
        owner: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, StoreError> {
        let v = tree.get(position_key(owner, topic, partition)).map_err(StoreError::io(op))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(|b| Offset(u64::from_be_bytes(b))))
    }

    pub(crate) fn topics_snapshot(&self) -> Vec<Arc<Topic>> {
        self.topics_snapshot_map().into_values().collect()
    }

    /// The topics by name (none while the database is being reopened).
    fn topics_snapshot_map(&self) -> BTreeMap<String, Arc<Topic>> {
        self.inner().map_or_else(|_| BTreeMap::new(), |i| read(&i.topics).clone())
    }

    pub(crate) fn sub_bytes(&self, n: u64) {
        if let Ok(inner) = self.inner() {
            inner.total_bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }
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
