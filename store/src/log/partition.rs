//! One partition: a sled tree keyed by big-endian offset, plus the in-memory
//! watermarks and size counters that make appends and budget checks O(1).

use super::{PartitionInfo, ReadResult};
use crate::error::StoreError;
use crate::record::{Offset, PartitionId, Record, StoredRecord};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Topic metadata as stored under `meta/topic/<name>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TopicMeta {
    pub(super) partitions: u32,
    pub(super) service: String,
}

/// Sizes are counted as encoded record bytes plus the 8-byte key.
const KEY_LEN: u64 = 8;

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
        let start_key = start_key(topic, id);
        let log_start = match meta.get(&start_key).map_err(StoreError::io("reading log start"))? {
            Some(v) => Offset(u64::from_be_bytes(<[u8; 8]>::try_from(v.as_ref()).map_err(|_| {
                StoreError::Metadata {
                    what: format!("log start of {topic}/{}", id.0),
                    detail: "not 8 bytes".into(),
                }
            })?)),
            None => Offset(0),
        };
        // A crash between recording a new log start and deleting the records
        // below it leaves stragglers: finish the deletion now.
        let mut stale = sled::Batch::default();
        for k in tree.range(..offset_key(log_start)).keys() {
            stale.remove(k.map_err(StoreError::io("opening partition"))?);
        }
        tree.apply_batch(stale).map_err(StoreError::io("opening partition"))?;

        let (mut records, mut bytes) = (0u64, 0u64);
        let mut last = None;
        for item in tree.iter() {
            let (k, v) = item.map_err(StoreError::io("scanning partition"))?;
            records += 1;
            bytes += KEY_LEN + v.len() as u64;
            last = Some(decode_offset(&k));
        }
        let next = match last {
            Some(o) => Offset(o.0 + 1).max(log_start),
            None => log_start,
        };
        Ok(Partition {
            topic: topic.to_owned(),
            id,
            tree,
            meta: meta.clone(),
            state: Mutex::new(State { log_start, next, records, bytes }),
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
            records: s.records,
            bytes: s.bytes,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.state().bytes
    }

    /// Appends atomically (one sled batch); returns the first offset and the
    /// bytes added.
    pub(super) fn append(&self, records: &[Record]) -> Result<(Offset, u64), StoreError> {
        let mut state = self.state();
        let first = state.next;
        let mut batch = sled::Batch::default();
        let mut added = 0u64;
        let mut buf = Vec::new();
        for (i, rec) in records.iter().enumerate() {
            buf.clear();
            rec.encode_into(&mut buf);
            added += KEY_LEN + buf.len() as u64;
            batch.insert(&offset_key(Offset(first.0 + i as u64)), buf.as_slice());
        }
        self.tree.apply_batch(batch).map_err(StoreError::io("append"))?;
        state.next = Offset(first.0 + records.len() as u64);
        state.records += records.len() as u64;
        state.bytes += added;
        Ok((first, added))
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
            for item in self.tree.range(offset_key(from)..offset_key(next)) {
                let (k, v) = item.map_err(StoreError::io("read"))?;
                if !records.is_empty() && bytes + v.len() > max_bytes {
                    break;
                }
                let offset = decode_offset(&k);
                let record = Record::decode(&v).map_err(|source| StoreError::Corrupt {
                    topic: self.topic.clone(),
                    partition: self.id.0,
                    offset: offset.0,
                    source,
                })?;
                bytes += v.len();
                records.push(StoredRecord { offset, record });
                if records.len() >= max_records {
                    break;
                }
            }
        }
        Ok(ReadResult { records, high_watermark: next, log_start })
    }

    /// Timestamp of the oldest stored record.
    pub(crate) fn oldest_timestamp(&self) -> Result<Option<i64>, StoreError> {
        let start = self.state().log_start;
        match self.tree.range(offset_key(start)..).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(StoreError::io("reading oldest record"))?;
                Record::decode_timestamp(&v).map(Some).map_err(|source| StoreError::Corrupt {
                    topic: self.topic.clone(),
                    partition: self.id.0,
                    offset: decode_offset(&k).0,
                    source,
                })
            }
        }
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
        let mut doomed = Vec::new();
        let mut freed = 0u64;
        let mut new_start = state.log_start;
        for item in self.tree.range(offset_key(state.log_start)..offset_key(state.next)) {
            if doomed.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(StoreError::io("retention scan"))?;
            let ts = Record::decode_timestamp(&v).unwrap_or(i64::MIN);
            let size = KEY_LEN + v.len() as u64;
            if !delete(ts, state.bytes - freed, freed, size) {
                break;
            }
            freed += size;
            new_start = decode_offset(&k).next();
            doomed.push(k);
        }
        if doomed.is_empty() {
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
        state.records -= doomed.len() as u64;
        state.bytes -= freed;
        Ok((doomed.len() as u64, freed))
    }
}

fn start_key(topic: &str, id: PartitionId) -> Vec<u8> {
    let mut k = format!("start/{topic}/").into_bytes();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
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
