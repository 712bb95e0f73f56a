//! One partition: a sled tree of record chunks keyed by the big-endian
//! offset of their first record, plus the in-memory watermarks and size
//! counters that make appends and budget checks O(1).
//!
//! An append of N records is one chunk (split at [`MAX_CHUNK_BYTES`]): one
//! sled key instead of N, which is what makes group commits cheap (sled's
//! per-key cost and its write amplification are paid per chunk). The chunk
//! format is in [`super::chunk`].
//!
//! Retention deletes record by record logically (the log start moves); a
//! chunk is removed once all its records are below the log start, and reads
//! skip the deleted head of a partly deleted chunk.

use super::chunk::{self, KEY_LEN};
use super::{PartitionInfo, ReadResult};
use crate::error::StoreError;
use crate::record::{Offset, PartitionId, Record, StoredRecord};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Topic metadata as stored under `meta/topic/<name>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TopicMeta {
    pub(super) partitions: u32,
    pub(super) service: String,
}

/// Largest chunk an append writes (more records make several chunks).
pub(super) const MAX_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy)]
struct State {
    log_start: Offset,
    next: Offset,
    records: u64,
    bytes: u64,
}

pub(crate) struct Partition {
    topic: String,
    id: PartitionId,
    tree: sled::Tree,
    meta: sled::Tree,
    state: Mutex<State>,
    /// Next offset not known to be flushed (see `PartitionInfo::flushed`).
    flushed: AtomicU64,
}

impl Partition {
    pub(super) fn open(
        db: &sled::Db,
        meta: &sled::Tree,
        topic: &str,
        id: PartitionId,
    ) -> Result<Partition, StoreError> {
        let tree =
            db.open_tree(format!("log/{topic}/{}", id.0)).map_err(StoreError::io("opening partition"))?;
        let log_start = read_offset(meta, &start_key(topic, id), "log start", topic, id)?;
        let floor = read_offset(meta, &floor_key(topic, id), "accepted data loss", topic, id)?;
        // A crash between recording a new log start and deleting the chunks
        // below it leaves stragglers: finish the deletion now.
        let mut stale = sled::Batch::default();
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut last = None;
        for item in tree.iter() {
            let (k, v) = item.map_err(StoreError::io("scanning partition"))?;
            let first = decode_offset(&k);
            let recs = chunk::decode(first, &v).map_err(|source| StoreError::Corrupt {
                topic: topic.to_owned(),
                partition: id.0,
                offset: first.0,
                source,
            })?;
            let Some(&(chunk_last, _)) = recs.last() else { continue };
            if chunk_last < log_start {
                stale.remove(k);
                continue;
            }
            for (o, r) in &recs {
                if *o >= log_start {
                    records += 1;
                    bytes += KEY_LEN + r.len() as u64;
                }
            }
            last = Some(chunk_last);
        }
        tree.apply_batch(stale).map_err(StoreError::io("opening partition"))?;
        let next = match last {
            Some(o) => Offset(o.0 + 1).max(log_start),
            None => log_start,
        }
        .max(floor);
        Ok(Partition {
            topic: topic.to_owned(),
            id,
            tree,
            meta: meta.clone(),
            state: Mutex::new(State { log_start, next, records, bytes }),
            // What sled recovered is on disk.
            flushed: AtomicU64::new(next.0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn info(&self) -> PartitionInfo {
        let s = *self.state();
        PartitionInfo {
            partition: self.id,
            log_start: s.log_start,
            high_watermark: s.next,
            flushed: Offset(self.flushed.load(Ordering::Acquire).min(s.next.0)),
            records: s.records,
            bytes: s.bytes,
        }
    }

    /// A flush that started when the high watermark was `hw` succeeded.
    pub(super) fn flushed_up_to(&self, hw: Offset) {
        self.flushed.fetch_max(hw.0, Ordering::AcqRel);
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.state().bytes
    }

    /// Appends atomically (one sled batch); returns the first offset and the
    /// bytes added.
    pub(super) fn append(&self, records: &[Record]) -> Result<(Offset, u64), StoreError> {
        let mut state = self.state();
        let first = state.next;
        let mut chunks: Vec<([u8; 8], Vec<u8>)> = Vec::new();
        let mut added = 0u64;
        let (mut at, mut chunk_start, mut chunk_bytes) = (0usize, 0usize, 0usize);
        while at <= records.len() {
            let full = at == records.len()
                || (at > chunk_start && chunk_bytes + records[at].encoded_len() > MAX_CHUNK_BYTES);
            if full && at > chunk_start {
                let mut buf = Vec::with_capacity(chunk_bytes + 5);
                added += chunk::encode(&records[chunk_start..at], &mut buf);
                chunks.push((offset_key(Offset(first.0 + chunk_start as u64)), buf));
                chunk_start = at;
                chunk_bytes = 0;
            }
            if at == records.len() {
                break;
            }
            chunk_bytes += records[at].encoded_len() + 4;
            at += 1;
        }
        // One chunk is one key, atomic by itself; sled's `apply_batch`
        // seals and writes its I/O buffer around every batch, which costs
        // two small synchronous writes, so it is kept for multi-chunk appends.
        if chunks.len() == 1 {
            let (k, v) = chunks.remove(0);
            self.tree.insert(k, v).map_err(StoreError::io("append"))?;
        } else if !chunks.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in chunks {
                batch.insert(&k, v);
            }
            self.tree.apply_batch(batch).map_err(StoreError::io("append"))?;
        }
        state.next = Offset(first.0 + records.len() as u64);
        state.records += records.len() as u64;
        state.bytes += added;
        Ok((first, added))
    }

    /// After an accepted data loss: the next offset becomes at least `to`,
    /// recorded in the metadata so the lost offsets are never handed out
    /// again (flushed with the next flush).
    pub(super) fn skip_to(&self, to: Offset) -> Result<(), StoreError> {
        let mut state = self.state();
        if to > state.next {
            self.meta
                .insert(floor_key(&self.topic, self.id), &to.0.to_be_bytes())
                .map_err(StoreError::io("recording accepted data loss"))?;
            state.next = to;
        }
        Ok(())
    }

    pub(super) fn read(
        &self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, StoreError> {
        let State { log_start, next, .. } = *self.state();
        let from = from.max(log_start);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        if from < next && max_records > 0 {
            'chunks: for item in self.tree.range(self.chunk_key_at(from)?..offset_key(next)) {
                let (k, v) = item.map_err(StoreError::io("read"))?;
                for (offset, raw) in self.records_of(&k, &v)? {
                    if offset < from {
                        continue;
                    }
                    if offset >= next || (!records.is_empty() && bytes + raw.len() > max_bytes) {
                        break 'chunks;
                    }
                    let record = Record::decode(raw).map_err(|source| self.corrupt(offset, source))?;
                    bytes += raw.len();
                    records.push(StoredRecord { offset, record });
                    if records.len() >= max_records {
                        break 'chunks;
                    }
                }
            }
        }
        Ok(ReadResult { records, high_watermark: next, log_start })
    }

    /// Key of the chunk holding `offset` (or `offset` itself when no chunk
    /// starts at or before it).
    fn chunk_key_at(&self, offset: Offset) -> Result<[u8; 8], StoreError> {
        match self.tree.range(..=offset_key(offset)).next_back() {
            Some(item) => {
                let (k, _) = item.map_err(StoreError::io("read"))?;
                Ok(offset_key(decode_offset(&k)))
            }
            None => Ok(offset_key(offset)),
        }
    }

    fn records_of<'v>(&self, k: &[u8], v: &'v [u8]) -> Result<Vec<(Offset, &'v [u8])>, StoreError> {
        let first = decode_offset(k);
        chunk::decode(first, v).map_err(|source| self.corrupt(first, source))
    }

    fn corrupt(&self, offset: Offset, source: crate::error::CorruptRecord) -> StoreError {
        StoreError::Corrupt { topic: self.topic.clone(), partition: self.id.0, offset: offset.0, source }
    }

    /// Timestamp of the oldest stored record.
    pub(crate) fn oldest_timestamp(&self) -> Result<Option<i64>, StoreError> {
        let State { log_start, next, .. } = *self.state();
        for item in self.tree.range(self.chunk_key_at(log_start)?..offset_key(next)) {
            let (k, v) = item.map_err(StoreError::io("reading oldest record"))?;
            if let Some((offset, raw)) = self.records_of(&k, &v)?.into_iter().find(|(o, _)| *o >= log_start) {
                return Record::decode_timestamp(raw)
                    .map(Some)
                    .map_err(|source| self.corrupt(offset, source));
            }
        }
        Ok(None)
    }

    /// Deletes the oldest records, at most `limit` of them, while
    /// `delete(timestamp, bytes_left_in_partition, bytes_freed_so_far,
    /// size_of_this_record)` says so. Returns (records, bytes) deleted.
    pub(crate) fn delete_oldest(
        &self,
        limit: usize,
        mut delete: impl FnMut(i64, u64, u64, u64) -> bool,
    ) -> Result<(u64, u64), StoreError> {
        let mut state = self.state();
        let mut deleted = 0u64;
        let mut freed = 0u64;
        let mut new_start = state.log_start;
        // Chunks whose every record falls below the new log start.
        let mut doomed = Vec::new();
        'chunks: for item in self.tree.range(self.chunk_key_at(state.log_start)?..offset_key(state.next)) {
            let (k, v) = item.map_err(StoreError::io("retention scan"))?;
            let recs = self.records_of(&k, &v)?;
            let mut whole = true;
            for (offset, raw) in &recs {
                if *offset < state.log_start {
                    continue;
                }
                let ts = Record::decode_timestamp(raw).unwrap_or(i64::MIN);
                let size = KEY_LEN + raw.len() as u64;
                if deleted as usize >= limit || !delete(ts, state.bytes - freed, freed, size) {
                    whole = false;
                    break;
                }
                freed += size;
                deleted += 1;
                new_start = offset.next();
            }
            if !whole {
                break 'chunks;
            }
            doomed.push(k);
        }
        if deleted == 0 {
            return Ok((0, 0));
        }
        // Record the new start first: a crash in between leaves stragglers
        // that `open` removes, never a reused offset.
        self.meta
            .insert(start_key(&self.topic, self.id), &new_start.0.to_be_bytes())
            .map_err(StoreError::io("recording log start"))?;
        let mut batch = sled::Batch::default();
        for k in &doomed {
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(StoreError::io("deleting records"))?;
        state.log_start = new_start;
        state.records -= deleted;
        state.bytes -= freed;
        Ok((deleted, freed))
    }
}

fn start_key(topic: &str, id: PartitionId) -> Vec<u8> {
    let mut k = format!("start/{topic}/").into_bytes();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn floor_key(topic: &str, id: PartitionId) -> Vec<u8> {
    let mut k = format!("next/{topic}/").into_bytes();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// A u64 BE offset stored in `meta` under `key` (0 when absent).
fn read_offset(
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

fn offset_key(o: Offset) -> [u8; 8] {
    o.0.to_be_bytes()
}

fn decode_offset(k: &[u8]) -> Offset {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    Offset(u64::from_be_bytes(b))
}
