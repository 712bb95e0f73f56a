//! One partition: append-only segment files (format in [`super::segment`])
//! plus the in-memory state that makes appends O(1).
//!
//! ```text
//! append ──► open batch in memory (records framed as they come)
//!                 │ write_out: seal, pwrite at the active segment's end
//!                 ▼
//!            page cache ──► sync: fdatasync (or paced: sync_file_range
//!                           steps, then one fdatasync) ──► `flushed` moves
//! ```
//!
//! Appends only take the `state` lock; writing out and syncing take the
//! `io` lock (then `state` briefly), so a slow sync never blocks an append
//! and two write-outs never reorder batches. Reads take neither: they look
//! the segment up in `segs`, read with `pread`, and stop at `flushed`.
//!
//! Batches written but not yet synced stay in memory until their sync
//! succeeds: after a failed `fdatasync` the kernel may have dropped the
//! dirty pages, so a retry writes them again at the same positions.

use super::fs::{Fs, SegFile};
use super::meta::{self, Meta};
use super::segment::{self, Builder, Header, HEADER_LEN};
use super::{PartitionInfo, ReadResult};
use crate::error::{CorruptRecord, StoreError};
use crate::record::{Offset, PartitionId, Record, StoredRecord};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// Topic metadata as stored under `meta/topic/<name>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TopicMeta {
    pub(super) partitions: u32,
    pub(super) service: String,
}

/// Largest batch the appender builds (bigger appends make several).
pub(super) const MAX_BATCH: usize = 64 << 10;

/// Bytes between two entries of the sparse offset index.
pub(crate) const INDEX_EVERY: u64 = 64 << 10;

/// How much a read fetches from the file at once.
const READ_CHUNK: usize = 64 << 10;

/// Segment shape limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// A segment is rolled once it holds this many bytes.
    pub max_bytes: u64,
    /// A segment is rolled once its first record is this old (ms).
    pub max_age_ms: i64,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits { max_bytes: 16 << 20, max_age_ms: 3_600_000 }
    }
}

/// What the store knows of one segment.
#[derive(Debug, Clone)]
pub(crate) struct Seg {
    pub(crate) base: Offset,
    /// One past the last offset written.
    pub(crate) end: Offset,
    /// Bytes written.
    pub(crate) len: u64,
    pub(crate) first_ts: Option<i64>,
    pub(crate) max_ts: i64,
    pub(crate) file: Arc<dyn SegFile>,
    pub(crate) path: PathBuf,
}

impl Seg {
    fn records(&self) -> u64 {
        self.end.0 - self.base.0
    }
}

/// A sealed batch waiting to be written or synced.
#[derive(Debug)]
struct Batch {
    base: Offset,
    end: Offset,
    bytes: Vec<u8>,
    first_ts: i64,
    max_ts: i64,
}

#[derive(Debug)]
struct State {
    /// First offset not deleted (may sit inside the first segment).
    log_start: Offset,
    next: Offset,
    builder: Builder,
    builder_base: Offset,
    /// Sealed, not yet handed to the writer.
    sealed: Vec<Batch>,
    /// Bytes in `builder` and `sealed`.
    unwritten: u64,
}

#[derive(Debug, Default)]
pub(super) struct Io {
    /// Batches taken from `state`, in order: the first `written` are in
    /// the active segment (not yet synced), the rest still to write.
    queue: VecDeque<Batch>,
    written: usize,
    /// Durable length of the active segment.
    synced_len: u64,
    /// Position of the last sparse index entry in the active segment.
    last_index: u64,
    /// Unsynced bytes in the page cache (written, not synced).
    dirty: u64,
    /// While an atomic commit holds the partition: synced batches are not
    /// made visible (`flushed` stays) until it is done; their end is here.
    hold: bool,
    held: Option<Offset>,
}

pub(crate) struct Partition {
    pub(crate) topic: String,
    pub(crate) id: PartitionId,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    meta: Arc<Meta>,
    limits: SegmentLimits,
    state: Mutex<State>,
    io: Mutex<Io>,
    segs: RwLock<Vec<Seg>>,
    /// Next offset not yet durable: reads stop here.
    flushed: AtomicU64,
    /// Bytes in segment files (kept in step with `segs`).
    file_bytes: AtomicU64,
    /// Recent read positions: (offset of a batch start, segment base, position).
    hints: Mutex<VecDeque<(u64, u64, u64)>>,
    /// What a checkpoint records: (active segment base, synced length,
    /// durable end, newest timestamp of the active segment). Kept apart
    /// from `io` so a checkpoint never waits for a paced bulk writeback.
    ckpt: Mutex<[u64; 4]>,
    /// Wall-clock time (ms) the active segment was started (age rolls).
    active_since: AtomicU64,
}

/// What recovery found in one partition.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Bytes cut off torn tails.
    pub(crate) truncated: u64,
    /// Damaged ranges (file, from, to) in sealed segments.
    pub(crate) damaged: Vec<(PathBuf, u64, u64)>,
    /// Input: verify every sealed segment's CRCs at open (with
    /// `accept_data_loss`, so damage inside a sealed segment is cut out and
    /// skipped instead of failing every read that reaches it).
    pub(crate) verify_sealed: bool,
    /// Durable offsets (from, to) the checkpoint promised that the files
    /// no longer hold.
    pub(crate) lost: Option<(u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Io { op, source: sled::Error::Io(e) }
}

/// The directory of a partition's segments.
pub(crate) fn partition_dir(root: &Path, topic: &str, id: PartitionId) -> PathBuf {
    root.join(format!("{topic}-{}", id.0))
}

impl Partition {
    /// Opens (recovering) or creates the partition's segments.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        root: &Path,
        fs: Arc<dyn Fs>,
        meta: Arc<Meta>,
        limits: SegmentLimits,
        topic: &str,
        id: PartitionId,
        recovered: &mut Recovered,
    ) -> Result<Partition, StoreError> {
        let dir = partition_dir(root, topic, id);
        let existed = fs.list(&dir).is_ok();
        fs.create_dir_all(&dir).map_err(io_err("creating partition directory"))?;
        if !existed {
            // A new directory's entry is durable only once its parent is
            // synced (and `segments/` itself may be new).
            fs.sync_dir(root).map_err(io_err("creating partition directory"))?;
            if let Some(top) = root.parent() {
                fs.sync_dir(top).map_err(io_err("creating partition directory"))?;
            }
        }
        let trees = meta.trees()?;
        let log_start = read_offset(&trees.meta, &start_key(topic, id), "log start", topic, id)?;
        let floor = read_offset(&trees.meta, &floor_key(topic, id), "accepted data loss", topic, id)?;
        let checkpoint = trees
            .checkpoints
            .get(meta::tp_key(topic, id.0))
            .map_err(StoreError::io("reading checkpoint"))?
            .and_then(|v| {
                Some((
                    meta::val_u64(&v, 0)?,
                    meta::val_u64(&v, 1)?,
                    meta::val_u64(&v, 2)?,
                    meta::val_u64(&v, 3),
                ))
            });
        let mut bases: Vec<Offset> = fs
            .list(&dir)
            .map_err(io_err("listing segments"))?
            .iter()
            .filter_map(|n| segment::parse_file_name(n))
            .collect();
        bases.sort();
        let mut segs: Vec<Seg> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment::file_name(base));
            let next_base = bases.get(i + 1).copied();
            // Stragglers of a deletion that the metadata already recorded.
            if next_base.is_some_and(|n| n <= log_start) {
                fs.remove(&path).map_err(io_err("removing a deleted segment"))?;
                continue;
            }
            let file = fs.open(&path).map_err(io_err("opening segment"))?;
            let len = file.len().map_err(io_err("opening segment"))?;
            let sealed = trees
                .segments
                .get(meta::tp_offset_key(topic, id.0, base.0))
                .map_err(StoreError::io("reading segment catalog"))?;
            let is_last = next_base.is_none();
            let mut seg = Seg { base, end: base, len: 0, first_ts: None, max_ts: i64::MIN, file, path };
            match sealed {
                Some(v) if !is_last => {
                    let (end, bytes, first, max) = (
                        meta::val_u64(&v, 0).unwrap_or(0),
                        meta::val_u64(&v, 1).unwrap_or(0),
                        meta::val_u64(&v, 2).unwrap_or(0) as i64,
                        meta::val_u64(&v, 3).unwrap_or(0) as i64,
                    );
                    if len < bytes || recovered.verify_sealed {
                        // Cut short (or checked in full): find what is left
                        // and name the rest.
                        let (good_len, good_end, first_ts, max_ts) =
                            scan(&*seg.file, 0, base, len, topic, id, &mut |_| {}, &|_| true)?;
                        if good_len < bytes || good_end.0 < end {
                            recovered.damaged.push((seg.path.clone(), good_end.0, end));
                            if good_len < len {
                                seg.file.truncate(good_len).map_err(io_err("cutting a damaged segment"))?;
                            }
                        }
                        seg.len = good_len;
                        seg.end = good_end;
                        seg.first_ts = first_ts;
                        seg.max_ts = max_ts;
                    } else {
                        if len > bytes {
                            seg.file.truncate(bytes).map_err(io_err("truncating segment"))?;
                        }
                        seg.len = bytes;
                        seg.end = Offset(end);
                        seg.first_ts = Some(first);
                        seg.max_ts = max;
                    }
                }
                _ => {
                    // Not in the catalog (sealed after the last checkpoint)
                    // or the active one: scan from the checkpoint on.
                    let from = match checkpoint.filter(|_| !recovered.verify_sealed) {
                        Some((b, pos, end, _)) if b == base.0 && pos <= len => Some((pos, Offset(end))),
                        _ => None,
                    };
                    let index = trees.index.clone();
                    let mut add_index = |ev: ScanEvent| match ev {
                        ScanEvent::Index(off, pos) => {
                            let _ = index.insert(meta::tp_offset_key(topic, id.0, off.0), &pos.to_be_bytes());
                        }
                        ScanEvent::Abort(commit) => meta.abort(commit),
                    };
                    let (start_pos, start_end) = from.unwrap_or((0, base));
                    let (good_len, good_end, first_ts, max_ts) =
                        scan(&*seg.file, start_pos, start_end, len, topic, id, &mut add_index, &|c| {
                            meta.is_settled(c)
                        })?;
                    if good_len < len && !is_last {
                        // A sealed segment (synced before its roll) that is
                        // not whole: damage, not a torn tail.
                        recovered.damaged.push((
                            seg.path.clone(),
                            good_end.0,
                            next_base.map_or(good_end.0, |n| n.0),
                        ));
                    }
                    if good_len < len {
                        recovered.truncated += len - good_len;
                        tracing::warn!(file = %seg.path.display(), from = good_len, to = len,
                            "cutting a torn tail off a segment");
                        seg.file.truncate(good_len).map_err(io_err("truncating a torn tail"))?;
                        seg.file.sync_data().map_err(io_err("truncating a torn tail"))?;
                    }
                    seg.len = good_len;
                    seg.end = good_end;
                    // The scan saw only what came after the checkpoint: the
                    // newest timestamp before it is in the checkpoint (or,
                    // from an older checkpoint, in the batch headers).
                    seg.max_ts = if start_pos == 0 {
                        max_ts
                    } else {
                        let before = match checkpoint.and_then(|c| c.3) {
                            Some(ts) => ts as i64,
                            None => max_timestamp_before(&*seg.file, start_pos)
                                .map_err(io_err("scanning segment"))?,
                        };
                        max_ts.max(before)
                    };
                    seg.first_ts = if start_pos == 0 {
                        first_ts
                    } else {
                        first_timestamp(&*seg.file).ok().flatten().or(first_ts)
                    };
                }
            }
            segs.push(seg);
        }
        let recovered_end = segs.last().map_or(log_start, |s| s.end).max(log_start);
        // Sealed segments the catalog names whose file is gone (a missing
        // tail is found by the checkpoint comparison below).
        let prefix = meta::tp_key(topic, id.0);
        for item in trees.segments.scan_prefix(&prefix) {
            let (k, v) = item.map_err(StoreError::io("reading segment catalog"))?;
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let base = meta::key_u64(&k);
            let end = meta::val_u64(&v, 0).unwrap_or(0);
            if end <= log_start.0 || base >= recovered_end.0 || segs.iter().any(|s| s.base.0 == base) {
                continue;
            }
            let path = dir.join(segment::file_name(Offset(base)));
            tracing::error!(file = %path.display(), "a sealed segment is missing");
            recovered.damaged.push((path, base.max(log_start.0), end));
        }
        if let Some((_, _, ckpt_end, _)) = checkpoint {
            if recovered_end.0 < ckpt_end {
                recovered.lost = Some((recovered_end.0, ckpt_end));
            }
        }
        let next = recovered_end.max(floor);
        if segs.is_empty() {
            let path = dir.join(segment::file_name(next));
            let file = match fs.create(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    fs.open(&path).map_err(io_err("opening segment"))?
                }
                Err(e) => return Err(io_err("creating segment")(e)),
            };
            fs.sync_dir(&dir).map_err(io_err("creating segment"))?;
            segs.push(Seg { base: next, end: next, len: 0, first_ts: None, max_ts: i64::MIN, file, path });
        }
        let active_len = segs.last().map_or(0, |s| s.len);
        let file_bytes = segs.iter().map(|s| s.len).sum();
        let log_start = log_start.max(segs.first().map_or(next, |s| s.base));
        let ckpt_init = segs
            .last()
            .map_or([next.0, 0, next.0, i64::MIN as u64], |a| [a.base.0, a.len, a.end.0, a.max_ts as u64]);
        Ok(Partition {
            topic: topic.to_owned(),
            id,
            dir,
            fs,
            meta,
            limits,
            state: Mutex::new(State {
                log_start,
                next,
                builder: Builder::default(),
                builder_base: next,
                sealed: Vec::new(),
                unwritten: 0,
            }),
            io: Mutex::new(Io {
                synced_len: active_len,
                last_index: active_len / INDEX_EVERY * INDEX_EVERY,
                ..Io::default()
            }),
            segs: RwLock::new(segs),
            // What recovery found in the files is durable now.
            flushed: AtomicU64::new(next.0),
            file_bytes: AtomicU64::new(file_bytes),
            hints: Mutex::new(VecDeque::new()),
            ckpt: Mutex::new(ckpt_init),
            active_since: AtomicU64::new(crate::record::now_ms().max(0) as u64),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Largest batch built: [`MAX_BATCH`], or a quarter of a segment when
    /// segments are small (so retention can still delete at a fine grain).
    fn batch_limit(&self) -> usize {
        MAX_BATCH.min(usize::try_from(self.limits.max_bytes / 4).unwrap_or(MAX_BATCH).max(1024))
    }

    pub(crate) fn info(&self) -> PartitionInfo {
        let (log_start, next, unwritten) = {
            let s = self.state();
            (s.log_start, s.next, s.unwritten)
        };
        let (written, first_base, last_end) = {
            let segs = super::read(&self.segs);
            (
                segs.iter().map(Seg::records).sum::<u64>(),
                segs.first().map_or(next, |s| s.base),
                segs.last().map_or(next, |s| s.end),
            )
        };
        let records = written.saturating_sub(log_start.0.saturating_sub(first_base.0))
            + next.0.saturating_sub(last_end.0);
        PartitionInfo {
            partition: self.id,
            log_start,
            high_watermark: next,
            flushed: Offset(self.flushed.load(Ordering::Acquire).min(next.0)),
            records: records.min(next.0.saturating_sub(log_start.0)),
            bytes: self.file_bytes.load(Ordering::Relaxed) + unwritten,
        }
    }

    /// Bytes this partition takes (segments and unwritten batches).
    pub(crate) fn bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Relaxed) + self.state().unwritten
    }

    /// Appended bytes not yet durable.
    pub(crate) fn undurable_bytes(&self) -> u64 {
        // Never both locks at once here: `sync_io` takes `io`, then `state`.
        let unwritten = self.state().unwritten;
        unwritten + lock(&self.io).dirty
    }

    /// Appends; returns the first offset and the bytes added. Not durable
    /// (nor visible to readers) until a sync.
    pub(super) fn append(&self, records: &[Record]) -> (Offset, u64) {
        let mut s = self.state();
        let first = s.next;
        let mut added = 0u64;
        for r in records {
            if s.builder.count() > 0 && s.builder.len() + r.encoded_len() + 4 > self.batch_limit() {
                seal(&mut s);
            }
            if s.builder.count() == 0 {
                s.builder_base = s.next;
                added += HEADER_LEN as u64;
            }
            added += s.builder.push(r);
            s.next = s.next.next();
        }
        s.unwritten += added;
        (first, added)
    }

    /// Appends `records` as one batch marked as part of atomic commit `id`
    /// (written by [`Self::write_out`] like any other).
    pub(super) fn append_atomic(&self, records: &[Record], id: u64) -> (Offset, Offset) {
        let mut s = self.state();
        if s.builder.count() > 0 {
            seal(&mut s);
        }
        let first = s.next;
        let mut b = Builder::default();
        let mut max_ts = i64::MIN;
        for r in records {
            b.push(r);
            max_ts = max_ts.max(r.timestamp_ms);
        }
        let end = Offset(first.0 + records.len() as u64);
        let first_ts = records.first().map_or(0, |r| r.timestamp_ms);
        let bytes = b.seal(first, segment::FLAG_ATOMIC, id as i64, -1);
        s.unwritten += bytes.len() as u64;
        s.sealed.push(Batch { base: first, end, bytes, first_ts, max_ts });
        s.next = end;
        (first, end)
    }

    /// Writes everything appended so far to the active segment and syncs
    /// it. With `step`, writeback is paced: `sync_file_range` after every
    /// `step` bytes, so the final `fdatasync` (and anything that has to
    /// wait for the device meanwhile) never carries more than one step.
    /// Returns the new durable end.
    pub(super) fn sync(&self, step: Option<u64>) -> Result<Offset, StoreError> {
        let mut io = lock(&self.io);
        self.sync_io(&mut io, step)
    }

    /// The partition held for an atomic commit (see [`Self::sync_io`]).
    pub(super) fn lock_io(&self) -> MutexGuard<'_, Io> {
        let mut io = lock(&self.io);
        io.hold = true;
        io
    }

    /// Ends an atomic commit's hold: what was synced becomes visible.
    pub(super) fn publish(&self, io: &mut Io, checkpoint: bool) {
        io.hold = false;
        if let Some(end) = io.held.take() {
            self.flushed.fetch_max(end.0, Ordering::AcqRel);
            // An aborted commit whose abort is not durable stays after the
            // checkpoint position, so recovery sees (and settles) it.
            if io.written == 0 && checkpoint {
                if let Some(active) = super::read(&self.segs).last().cloned() {
                    self.set_ckpt(&active);
                }
            }
        }
    }

    /// [`Self::sync`] with the `io` lock held.
    pub(super) fn sync_io(&self, io: &mut Io, step: Option<u64>) -> Result<Offset, StoreError> {
        {
            let mut s = self.state();
            if s.builder.count() > 0 {
                seal(&mut s);
            }
            let taken: Vec<Batch> = std::mem::take(&mut s.sealed);
            io.queue.extend(taken);
        }
        if io.queue.is_empty() {
            return Ok(Offset(self.flushed.load(Ordering::Acquire)));
        }
        let mut step_start = io.synced_len;
        while io.written < io.queue.len() {
            let (base, len) = {
                let b = &io.queue[io.written];
                (b.base, b.bytes.len() as u64)
            };
            let active = super::read(&self.segs).last().cloned().ok_or_else(|| no_segment(self))?;
            let age_due = active.len > 0
                && crate::record::now_ms() - self.active_since.load(Ordering::Relaxed) as i64
                    >= self.limits.max_age_ms;
            if active.end != base || (active.len > 0 && (active.len + len > self.limits.max_bytes || age_due))
            {
                self.roll(io, base)?;
                step_start = 0;
                continue;
            }
            let pos = active.len;
            let written = {
                let b = &io.queue[io.written];
                active.file.write_all_at(pos, &b.bytes)
            };
            if let Err(e) = written {
                // Nothing counts as written past the last good batch; the
                // next attempt writes again from there.
                return Err(io_err("writing segment")(e));
            }
            let (first_ts, max_ts, end) = {
                let b = &io.queue[io.written];
                (b.first_ts, b.max_ts, b.end)
            };
            if pos >= io.last_index + INDEX_EVERY {
                io.last_index = pos;
                if let Ok(t) = self.meta.trees() {
                    let _ = t
                        .index
                        .insert(meta::tp_offset_key(&self.topic, self.id.0, base.0), &pos.to_be_bytes());
                }
            }
            {
                let mut segs = super::write(&self.segs);
                if let Some(last) = segs.last_mut() {
                    last.len = pos + len;
                    last.end = end;
                    last.first_ts.get_or_insert(first_ts);
                    last.max_ts = last.max_ts.max(max_ts);
                }
            }
            self.file_bytes.fetch_add(len, Ordering::Relaxed);
            self.state().unwritten -= len;
            io.dirty += len;
            io.written += 1;
            if let Some(step) = step {
                if pos + len - step_start >= step {
                    active.file.write_back(step_start, pos + len - step_start).map_err(|e| {
                        self.unwrite(io);
                        io_err("writing back a segment")(e)
                    })?;
                    step_start = pos + len;
                    // Let a sync waiting for the device (an alarm's commit)
                    // go before the next step.
                    std::thread::yield_now();
                }
            }
        }
        self.sync_active(io)
    }

    /// fdatasync of the active segment; on success every written batch is
    /// durable.
    fn sync_active(&self, io: &mut Io) -> Result<Offset, StoreError> {
        let active = super::read(&self.segs).last().cloned().ok_or_else(|| no_segment(self))?;
        if let Err(e) = active.file.sync_data() {
            self.unwrite(io);
            return Err(io_err("fdatasync of a segment")(e));
        }
        let end = io.queue.get(io.written.wrapping_sub(1)).map(|b| b.end);
        io.queue.drain(..io.written);
        io.written = 0;
        io.dirty = 0;
        io.synced_len = active.len;
        if let Some(end) = end {
            if io.hold {
                // Not visible, and not in a checkpoint, until the atomic
                // commit is done: recovery must see (and settle) the batch.
                io.held = Some(end);
            } else {
                self.flushed.fetch_max(end.0, Ordering::AcqRel);
                self.set_ckpt(&active);
            }
        }
        Ok(Offset(self.flushed.load(Ordering::Acquire)))
    }

    fn set_ckpt(&self, active: &Seg) {
        *lock(&self.ckpt) = [active.base.0, active.len, active.end.0, active.max_ts as u64];
    }

    /// After a failed writeback or sync: the written, unsynced batches are
    /// written again by the next attempt, at the same place.
    fn unwrite(&self, io: &mut Io) {
        let rewound: u64 = io.queue.iter().take(io.written).map(|b| b.bytes.len() as u64).sum();
        let first_base = io.queue.front().map(|b| b.base);
        {
            let mut segs = super::write(&self.segs);
            if let (Some(last), Some(base)) = (segs.last_mut(), first_base) {
                last.len = io.synced_len;
                last.end = base;
            }
        }
        self.file_bytes.fetch_sub(rewound, Ordering::Relaxed);
        self.state().unwritten += rewound;
        io.written = 0;
        io.dirty = 0;
    }

    /// Seals the active segment (syncing it first) and starts a new one at
    /// `base`.
    fn roll(&self, io: &mut Io, base: Offset) -> Result<(), StoreError> {
        if io.written > 0 {
            self.sync_active(io)?;
        }
        let active = super::read(&self.segs).last().cloned().ok_or_else(|| no_segment(self))?;
        let path = self.dir.join(segment::file_name(base));
        if active.len == 0 {
            // An empty active segment is replaced, not kept.
            self.fs.remove(&active.path).map_err(io_err("replacing an empty segment"))?;
        }
        let file = match self.fs.create(&path) {
            Ok(f) => f,
            // Left by an attempt whose directory sync failed.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = self.fs.open(&path).map_err(io_err("creating segment"))?;
                if f.len().map_err(io_err("creating segment"))? != 0 {
                    return Err(io_err("creating segment")(e));
                }
                f
            }
            Err(e) => return Err(io_err("creating segment")(e)),
        };
        // The new file's entry is durable before the catalog says the old
        // segment is sealed (a catalog entry for the last segment would
        // otherwise be trusted after a crash).
        self.fs.sync_dir(&self.dir).map_err(io_err("creating segment"))?;
        if active.len > 0 {
            let trees = self.meta.trees()?;
            trees
                .segments
                .insert(meta::tp_offset_key(&self.topic, self.id.0, active.base.0), catalog_value(&active))
                .map_err(StoreError::io("recording a sealed segment"))?;
        }
        let mut segs = super::write(&self.segs);
        if active.len == 0 {
            segs.pop();
        }
        segs.push(Seg { base, end: base, len: 0, first_ts: None, max_ts: i64::MIN, file, path });
        let new_active = segs.last().cloned();
        drop(segs);
        io.synced_len = 0;
        io.last_index = 0;
        self.active_since.store(crate::record::now_ms().max(0) as u64, Ordering::Relaxed);
        if let (Some(a), false) = (new_active, io.hold) {
            self.set_ckpt(&a);
        }
        Ok(())
    }

    /// The durable position for the checkpoint: (active segment base,
    /// synced length, durable end).
    pub(super) fn checkpoint_value(&self) -> Vec<u8> {
        let c = *lock(&self.ckpt);
        let mut v = Vec::with_capacity(32);
        for x in c {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    /// After an accepted data loss: the next offset becomes at least `to`,
    /// recorded in the metadata so the lost offsets are never handed out
    /// again; the active segment starts over at `to`.
    pub(super) fn skip_to(&self, to: Offset) -> Result<(), StoreError> {
        let mut io = lock(&self.io);
        let mut s = self.state();
        if to <= s.next {
            return Ok(());
        }
        self.meta
            .trees()?
            .meta
            .insert(floor_key(&self.topic, self.id), &to.0.to_be_bytes())
            .map_err(StoreError::io("recording accepted data loss"))?;
        if s.builder.count() > 0 {
            seal(&mut s);
        }
        s.next = to;
        s.builder_base = to;
        drop(s);
        self.roll(&mut io, to)?;
        self.flushed.fetch_max(to.0, Ordering::AcqRel);
        Ok(())
    }

    /// After an accepted data loss: the segment catalog is rewritten to
    /// what recovery found (damaged sealed segments keep their good
    /// prefix, missing ones are forgotten), so the next open is clean.
    /// Durable with the next checkpoint.
    pub(super) fn accept_damage(&self) -> Result<(), StoreError> {
        let _io = lock(&self.io);
        let trees = self.meta.trees()?;
        let segs = super::read(&self.segs);
        let sealed = &segs[..segs.len().saturating_sub(1)];
        let prefix = meta::tp_key(&self.topic, self.id.0);
        let mut batch = sled::Batch::default();
        for item in trees.segments.scan_prefix(&prefix) {
            let (k, _) = item.map_err(StoreError::io("rewriting the segment catalog"))?;
            if k.len() == prefix.len() + 8 && !sealed.iter().any(|s| s.base.0 == meta::key_u64(&k)) {
                batch.remove(k);
            }
        }
        for seg in sealed {
            batch.insert(meta::tp_offset_key(&self.topic, self.id.0, seg.base.0), catalog_value(seg));
        }
        trees.segments.apply_batch(batch).map_err(StoreError::io("rewriting the segment catalog"))
    }

    /// Reads durable records from `from` on.
    pub(super) fn read(
        &self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, StoreError> {
        let (log_start, next) = {
            let s = self.state();
            (s.log_start, s.next)
        };
        let flushed = Offset(self.flushed.load(Ordering::Acquire).min(next.0));
        let from = from.max(log_start);
        let mut records = Vec::new();
        if from < flushed && max_records > 0 {
            self.read_into(from, flushed, max_records, max_bytes, &mut records)?;
        }
        Ok(ReadResult { records, high_watermark: flushed, log_start })
    }

    fn read_into(
        &self,
        from: Offset,
        until: Offset,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<(), StoreError> {
        let segs: Vec<Seg> = {
            let all = super::read(&self.segs);
            let at = all.partition_point(|s| s.base <= from).saturating_sub(1);
            all[at..].to_vec()
        };
        let mut bytes = 0usize;
        let mut want = from;
        for seg in &segs {
            if seg.base >= until {
                break;
            }
            if seg.end <= want {
                continue;
            }
            let mut pos = self.start_position(seg, want);
            let mut buf: Vec<u8> = Vec::new();
            let mut buf_at = pos;
            loop {
                if pos >= seg.len {
                    break;
                }
                // Make sure the header is buffered, then the whole batch.
                let need_header = (pos + HEADER_LEN as u64).min(seg.len);
                if buf_at + (buf.len() as u64) < need_header || pos < buf_at {
                    buf_at = pos;
                    buf = read_exact_at(&*seg.file, pos, READ_CHUNK.min((seg.len - pos) as usize))
                        .map_err(io_err("reading segment"))?;
                }
                let off = (pos - buf_at) as usize;
                let h = segment::parse_header(&buf[off..]).map_err(|e| self.corrupt(seg, pos, want, e))?;
                let total = h.total_len();
                if h.end() <= want {
                    pos += total;
                    continue;
                }
                if off as u64 + total > buf.len() as u64 {
                    buf_at = pos;
                    buf = read_exact_at(
                        &*seg.file,
                        pos,
                        total.max(READ_CHUNK as u64).min(seg.len - pos) as usize,
                    )
                    .map_err(io_err("reading segment"))?;
                }
                let off = (pos - buf_at) as usize;
                let (h, recs) = segment::decode(&buf[off..]).map_err(|e| self.corrupt(seg, pos, want, e))?;
                let aborted =
                    h.flags & segment::FLAG_ATOMIC != 0 && self.meta.is_aborted(h.producer_id as u64);
                for (offset, raw) in recs {
                    if aborted {
                        break;
                    }
                    if offset < want {
                        continue;
                    }
                    if offset >= until
                        || out.len() >= max_records
                        || (!out.is_empty() && bytes + raw.len() > max_bytes)
                    {
                        self.remember(offset, seg, pos, h);
                        return Ok(());
                    }
                    let record = Record::decode(raw).map_err(|e| self.corrupt(seg, pos, offset, e))?;
                    bytes += raw.len();
                    out.push(StoredRecord { offset, record });
                }
                want = h.end();
                pos += total;
                if want >= until || out.len() >= max_records {
                    self.remember(want, seg, pos, h);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Where to start reading `seg` for `offset`: a remembered position, or
    /// the sparse index, or the start of the segment.
    fn start_position(&self, seg: &Seg, offset: Offset) -> u64 {
        let hint = lock(&self.hints)
            .iter()
            .filter(|(o, b, _)| *b == seg.base.0 && *o <= offset.0)
            .max_by_key(|(o, _, _)| *o)
            .map(|(o, _, p)| (*o, *p));
        let indexed = self.meta.trees().ok().and_then(|t| {
            let lo = meta::tp_offset_key(&self.topic, self.id.0, seg.base.0);
            let hi = meta::tp_offset_key(&self.topic, self.id.0, offset.0);
            let (k, v) = t.index.range(lo..=hi).next_back()?.ok()?;
            let (at, pos) = (meta::key_u64(&k), meta::val_u64(&v, 0)?);
            // An entry is trusted only when a batch starting at that offset
            // is really there (entries are written before the batch's sync
            // and may outlive it after a crash).
            let head = read_exact_at(&*seg.file, pos, HEADER_LEN).ok()?;
            (segment::parse_header(&head).ok()?.base.0 == at).then_some((at, pos))
        });
        match (hint, indexed) {
            (Some(h), Some(i)) => {
                if h.0 >= i.0 {
                    h.1
                } else {
                    i.1
                }
            }
            (Some(h), None) => h.1,
            (None, Some(i)) => i.1,
            (None, None) => 0,
        }
        .min(seg.len)
    }

    /// Remembers where the batch holding `offset` starts, for the next read.
    fn remember(&self, offset: Offset, seg: &Seg, pos: u64, h: Header) {
        let (o, p) = if offset >= h.end() { (h.end().0, pos) } else { (h.base.0, pos) };
        // `pos` is the start of the batch for a mid-batch stop, or the
        // position after it when the read ended on its boundary.
        let mut hints = lock(&self.hints);
        if hints.iter().any(|(ho, hb, _)| *ho == o && *hb == seg.base.0) {
            return;
        }
        if hints.len() >= 8 {
            hints.pop_front();
        }
        hints.push_back((o, seg.base.0, p));
    }

    fn corrupt(&self, seg: &Seg, pos: u64, offset: Offset, e: CorruptRecord) -> StoreError {
        StoreError::Corrupt {
            topic: self.topic.clone(),
            partition: self.id.0,
            offset: offset.0,
            source: CorruptRecord(format!(
                "{} at byte {pos}: {} (the segment file is damaged: restore it from a backup, or restart with \
                 --accept-data-loss to cut the damaged batches out; their offsets are not reused)",
                seg.path.display(),
                e.0
            )),
        }
    }

    /// Timestamp of the oldest stored record (first record of the first
    /// segment holding any).
    pub(crate) fn oldest_timestamp(&self) -> Option<i64> {
        super::read(&self.segs).iter().find(|s| s.len > 0).and_then(|s| s.first_ts)
    }

    /// The oldest segment, as (base, end, bytes, max timestamp, is active).
    pub(crate) fn oldest_segment(&self) -> Option<(Offset, Offset, u64, i64, bool)> {
        let segs = super::read(&self.segs);
        let n = segs.len();
        segs.iter()
            .enumerate()
            .find(|(_, s)| s.len > 0)
            .map(|(i, s)| (s.base, s.end, s.len, s.max_ts, i + 1 == n))
    }

    /// Deletes the oldest segment holding data (rolling the active one first
    /// when it is the only one): the log start moves past it, the metadata
    /// records that (durably) before the file goes. Returns (records, bytes).
    pub(crate) fn delete_oldest_segment(&self) -> Result<(u64, u64), StoreError> {
        let mut io = lock(&self.io);
        let (is_active, next_written) = {
            let segs = super::read(&self.segs);
            let Some(i) = segs.iter().position(|s| s.len > 0) else { return Ok((0, 0)) };
            (i + 1 == segs.len(), segs[i].end)
        };
        if is_active {
            // Only flushed data may go; roll so it becomes a sealed segment.
            if io.written > 0 {
                self.sync_active(&mut io)?;
            }
            self.roll(&mut io, next_written)?;
        }
        let victim = {
            let segs = super::read(&self.segs);
            let Some(i) = segs.iter().position(|s| s.len > 0) else { return Ok((0, 0)) };
            if i + 1 == segs.len() {
                return Ok((0, 0));
            }
            segs[i].clone()
        };
        let new_start = victim.end;
        let trees = self.meta.trees()?;
        let dropped_records;
        {
            let s = self.state();
            dropped_records = victim.end.0.saturating_sub(s.log_start.0.max(victim.base.0));
        }
        trees
            .meta
            .insert(start_key(&self.topic, self.id), &new_start.0.to_be_bytes())
            .map_err(StoreError::io("recording log start"))?;
        trees
            .segments
            .remove(meta::tp_offset_key(&self.topic, self.id.0, victim.base.0))
            .map_err(StoreError::io("deleting a segment"))?;
        let lo = meta::tp_offset_key(&self.topic, self.id.0, victim.base.0);
        let hi = meta::tp_offset_key(&self.topic, self.id.0, victim.end.0);
        let mut batch = sled::Batch::default();
        for item in trees.index.range(lo..hi) {
            let (k, _) = item.map_err(StoreError::io("deleting a segment"))?;
            batch.remove(k);
        }
        trees.index.apply_batch(batch).map_err(StoreError::io("deleting a segment"))?;
        drop(trees);
        // The new log start is durable before the file goes: a crash in
        // between leaves a straggler that `open` removes.
        self.meta.sync()?;
        {
            let mut s = self.state();
            s.log_start = s.log_start.max(new_start);
        }
        super::write(&self.segs).retain(|s| s.base != victim.base);
        self.file_bytes.fetch_sub(victim.len, Ordering::Relaxed);
        lock(&self.hints).retain(|(_, b, _)| *b != victim.base.0);
        self.fs.remove(&victim.path).map_err(io_err("deleting a segment"))?;
        drop(io);
        Ok((dropped_records, victim.len))
    }
}

/// A sealed segment's catalog entry: end offset, bytes, first and max
/// timestamp.
fn catalog_value(seg: &Seg) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&seg.end.0.to_be_bytes());
    v.extend_from_slice(&seg.len.to_be_bytes());
    v.extend_from_slice(&(seg.first_ts.unwrap_or(0) as u64).to_be_bytes());
    v.extend_from_slice(&(seg.max_ts as u64).to_be_bytes());
    v
}

fn seal(s: &mut State) {
    let base = s.builder_base;
    let end = s.next;
    let first_ts;
    let max_ts;
    {
        // The builder knows its timestamps only through the header it
        // writes; read them back from the sealed bytes.
        let bytes = s.builder.seal(base, 0, -1, -1);
        let h = segment::parse_header(&bytes).ok();
        first_ts = h.map_or(0, |h| h.first_ts);
        max_ts = h.map_or(0, |h| h.max_ts);
        s.sealed.push(Batch { base, end, bytes, first_ts, max_ts });
    }
    s.builder_base = end;
}

fn no_segment(p: &Partition) -> StoreError {
    StoreError::Io {
        op: "writing segment",
        source: sled::Error::Io(std::io::Error::other(format!(
            "{}/{} has no active segment",
            p.topic, p.id.0
        ))),
    }
}

fn read_exact_at(f: &dyn SegFile, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = f.read_at(pos, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Newest timestamp of the batches before `upto` (walking their headers).
fn max_timestamp_before(f: &dyn SegFile, upto: u64) -> std::io::Result<i64> {
    let mut max_ts = i64::MIN;
    let mut pos = 0;
    while pos + HEADER_LEN as u64 <= upto {
        let b = read_exact_at(f, pos, HEADER_LEN)?;
        let Ok(h) = segment::parse_header(&b) else { break };
        max_ts = max_ts.max(h.max_ts);
        pos += h.total_len();
    }
    Ok(max_ts)
}

/// First record timestamp of a segment (its first batch header).
fn first_timestamp(f: &dyn SegFile) -> std::io::Result<Option<i64>> {
    let b = read_exact_at(f, 0, HEADER_LEN)?;
    Ok(segment::parse_header(&b).ok().map(|h| h.first_ts))
}

/// Scans batches from `pos` (where offset `end` starts) up to `len`,
/// checking every CRC; returns (good length, end offset, first ts, max ts)
/// of the valid prefix. `index` is called for each batch that starts a
/// new sparse index entry.
#[allow(clippy::too_many_arguments)]
fn scan(
    f: &dyn SegFile,
    mut pos: u64,
    mut end: Offset,
    len: u64,
    topic: &str,
    id: PartitionId,
    events: &mut dyn FnMut(ScanEvent),
    keep_atomic: &dyn Fn(u64) -> bool,
) -> Result<(u64, Offset, Option<i64>, i64), StoreError> {
    // The first batch of an atomic commit that never completed, and the
    // state before it: cut there if it is the tail; if valid batches follow
    // (the commit failed and later writes went on), it was aborted.
    let mut unsettled: Option<(u64, Offset, Option<i64>, i64, u64)> = None;
    let mut first_ts = None;
    let mut max_ts = i64::MIN;
    let mut last_index = pos / INDEX_EVERY * INDEX_EVERY;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = pos;
    let _ = (topic, id);
    while pos + (HEADER_LEN as u64) <= len {
        if pos < buf_at || pos + HEADER_LEN as u64 > buf_at + buf.len() as u64 {
            buf_at = pos;
            buf = read_exact_at(f, pos, (1usize << 20).min((len - pos) as usize))
                .map_err(io_err("scanning segment"))?;
        }
        let off = (pos - buf_at) as usize;
        let Ok(h) = segment::parse_header(&buf[off..]) else { break };
        if h.base != end {
            break;
        }
        let total = h.total_len();
        if pos + total > len {
            break;
        }
        if off as u64 + total > buf.len() as u64 {
            buf_at = pos;
            buf = read_exact_at(f, pos, total.max(1 << 20).min(len - pos) as usize)
                .map_err(io_err("scanning segment"))?;
        }
        let off = (pos - buf_at) as usize;
        if segment::check_crc(&buf[off..off + total as usize]).is_err() {
            break;
        }
        let atomic = h.flags & segment::FLAG_ATOMIC != 0;
        if atomic && !keep_atomic(h.producer_id as u64) {
            if unsettled.is_none() {
                unsettled = Some((pos, end, first_ts, max_ts, h.producer_id as u64));
            }
        } else if let Some((.., id)) = unsettled.take() {
            events(ScanEvent::Abort(id));
        }
        if pos >= last_index + INDEX_EVERY {
            last_index = pos;
            events(ScanEvent::Index(h.base, pos));
        }
        first_ts.get_or_insert(h.first_ts);
        max_ts = max_ts.max(h.max_ts);
        end = h.end();
        pos += total;
    }
    if let Some((p, e, f, m, _)) = unsettled {
        return Ok((p, e, f, m));
    }
    Ok((pos.min(len), end, first_ts, max_ts))
}

/// What a recovery scan reports besides its result.
pub(crate) enum ScanEvent {
    /// A batch starting at this offset and position wants an index entry.
    Index(Offset, u64),
    /// This atomic commit failed: its batches stay, readers skip them.
    Abort(u64),
}

pub(super) fn start_key(topic: &str, id: PartitionId) -> Vec<u8> {
    let mut k = format!("start/{topic}/").into_bytes();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

pub(super) fn floor_key(topic: &str, id: PartitionId) -> Vec<u8> {
    let mut k = format!("next/{topic}/").into_bytes();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// A u64 BE offset stored in `meta` under `key` (0 when absent).
pub(super) fn read_offset(
    meta: &sled::Tree,
    key: &[u8],
    what: &str,
    topic: &str,
    id: PartitionId,
) -> Result<Offset, StoreError> {
    match meta.get(key).map_err(StoreError::io("reading partition metadata"))? {
        Some(v) => Ok(Offset(u64::from_be_bytes(<[u8; 8]>::try_from(v.as_ref()).map_err(|_| {
            StoreError::Metadata { what: format!("{what} of {topic}/{}", id.0), detail: "not 8 bytes".into() }
        })?))),
        None => Ok(Offset(0)),
    }
}
