//! The metadata store on sled: small, rarely written, made durable at
//! checkpoints. Trees and keys (integers big-endian, `<tp>` is the topic
//! name, a 0 byte and the partition as u32):
//!
//! | tree          | key                              | value |
//! |---------------|----------------------------------|-------|
//! | `meta`        | `format`                         | `sluice-store/3` |
//! | `meta`        | `topic/<topic>`                  | JSON `{"partitions": N, "service": "name"}` |
//! | `meta`        | `start/<topic>/<partition u32>`  | u64: first offset not deleted (log start) |
//! | `meta`        | `next/<topic>/<partition u32>`   | u64: lowest next offset after an accepted data loss |
//! | `segments`    | `<tp> <base u64>`                | sealed segment: end offset u64, bytes u64, first ts i64, max ts i64 |
//! | `index`       | `<tp> <offset u64>`              | u64 file position of the batch starting at that offset (sparse: one entry per [`super::partition::INDEX_EVERY`] bytes) |
//! | `checkpoints` | `<tp>`                           | segment base u64, file position u64, end offset u64: durable at the last checkpoint; then the active segment's newest timestamp i64 (absent in older checkpoints) |
//! | `groups`      | `<group> 0 <tp>`                 | u64 committed offset (next to read) |
//! | `cursors`     | `<uplink> 0 <tp>`                | u64 next offset to forward |
//! | `atomic`      | `last`                           | u64: highest atomic commit id done |
//! | `atomic`      | `aborted/<id u64>`               | empty: a commit that failed after writing its batches (readers skip them) |
//! | `state`       | any                              | any: state written by [`super::Store::commit_atomic`] |
//!
//! sled 0.34 poisons itself after a failed write (disk full): every later
//! write fails. [`Meta::after_error`] closes and reopens it; what was
//! written since the last checkpoint is lost (index entries are rebuilt,
//! positions go back to the checkpoint: consumers see records again, never
//! miss one).

use super::durable::FileSync;
use super::fs::Fs;
use crate::error::StoreError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The open trees.
pub(crate) struct Trees {
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) groups: sled::Tree,
    pub(crate) cursors: sled::Tree,
    pub(crate) segments: sled::Tree,
    pub(crate) index: sled::Tree,
    pub(crate) checkpoints: sled::Tree,
    pub(crate) atomic: sled::Tree,
    pub(crate) state: sled::Tree,
    durable: FileSync,
}

impl Trees {
    pub(crate) fn open(db: sled::Db, path: &Path) -> Result<Trees, sled::Error> {
        let t = |name: &str| db.open_tree(name);
        Ok(Trees {
            meta: t("meta")?,
            groups: t("groups")?,
            cursors: t("cursors")?,
            segments: t("segments")?,
            index: t("index")?,
            checkpoints: t("checkpoints")?,
            atomic: t("atomic")?,
            state: t("state")?,
            durable: FileSync::open(path).map_err(sled::Error::Io)?,
            db,
        })
    }

    /// sled's flush plus the fdatasync it leaves out.
    pub(crate) fn sync(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.durable.sync().map_err(sled::Error::Io)
    }
}

/// Shared handle to the metadata; reopened after sled fails a write.
pub(crate) struct Meta {
    path: PathBuf,
    /// Told after each sync (a power-cut test layer snapshots sled then).
    fs: Arc<dyn Fs>,
    cache_capacity: u64,
    trees: RwLock<Option<Arc<Trees>>>,
    /// Highest atomic commit id known done.
    last_committed: std::sync::atomic::AtomicU64,
    /// Atomic commits that failed after their batches were written: their
    /// records are skipped by readers.
    aborted: RwLock<std::collections::HashSet<u64>>,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Meta {
    pub(crate) fn new(path: &Path, cache_capacity: u64, trees: Trees, fs: Arc<dyn Fs>) -> Meta {
        let last = trees.atomic.get("last").ok().flatten().and_then(|v| val_u64(&v, 0)).unwrap_or(0);
        let aborted =
            trees.atomic.scan_prefix("aborted/").filter_map(|kv| kv.ok()).map(|(k, _)| key_u64(&k)).collect();
        Meta {
            path: path.to_owned(),
            fs,
            cache_capacity,
            trees: RwLock::new(Some(Arc::new(trees))),
            last_committed: std::sync::atomic::AtomicU64::new(last),
            aborted: RwLock::new(aborted),
        }
    }

    /// Highest atomic commit id ever handed out that the metadata knows
    /// (done or aborted): new commits take ids above it.
    pub(crate) fn highest_commit_id(&self) -> u64 {
        let aborted = super::read(&self.aborted).iter().copied().max().unwrap_or(0);
        self.last_committed().max(aborted)
    }

    /// Highest atomic commit id done.
    pub(crate) fn last_committed(&self) -> u64 {
        self.last_committed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_committed(&self, id: u64) {
        self.last_committed.fetch_max(id, std::sync::atomic::Ordering::AcqRel);
    }

    /// An atomic commit whose batches stay but whose records never count.
    pub(crate) fn abort(&self, id: u64) {
        super::write(&self.aborted).insert(id);
        if let Ok(t) = self.trees() {
            let mut k = b"aborted/".to_vec();
            k.extend_from_slice(&id.to_be_bytes());
            let _ = t.atomic.insert(k, &[]);
        }
    }

    pub(crate) fn is_aborted(&self, id: u64) -> bool {
        super::read(&self.aborted).contains(&id)
    }

    /// Recovery keeps an atomic batch when its commit was done or aborted.
    pub(crate) fn is_settled(&self, id: u64) -> bool {
        id <= self.last_committed() || self.is_aborted(id)
    }

    /// The open trees, reopening them first when a failed write closed them.
    pub(crate) fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        if let Some(t) = super::read(&self.trees).as_ref() {
            return Ok(t.clone());
        }
        let mut slot = super::write(&self.trees);
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let db = sled::Config::new()
            .path(&self.path)
            .cache_capacity(self.cache_capacity)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(StoreError::io("reopening the metadata after a failed write"))?;
        let trees = Arc::new(
            Trees::open(db, &self.path)
                .map_err(StoreError::io("reopening the metadata after a failed write"))?,
        );
        tracing::info!(path = %self.path.display(), "metadata database reopened after a failed write");
        *slot = Some(trees.clone());
        Ok(trees)
    }

    /// After a failed metadata write: when sled is poisoned (a flush fails
    /// too), drop it so the next use reopens it.
    pub(crate) fn after_error(&self) {
        let Some(trees) = super::read(&self.trees).clone() else { return };
        if trees.db.flush().is_ok() {
            return;
        }
        tracing::warn!(path = %self.path.display(), "the metadata database failed a write; reopening it");
        let mut slot = super::write(&self.trees);
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, &trees)) {
            *slot = None;
        }
        drop(slot);
        // Wait (briefly) for other users to let go of the old handle, so
        // its file lock is released before the reopen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while Arc::strong_count(&trees) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Flushes sled and syncs its files.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let r = trees.sync().map_err(StoreError::io("metadata checkpoint"));
        drop(trees);
        if r.is_err() {
            self.after_error();
        } else {
            self.fs.checkpointed(&self.path);
        }
        r
    }

    /// Bytes sled's files take on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.trees().ok().and_then(|t| t.db.size_on_disk().ok()).unwrap_or(0)
    }
}

/// `<topic> 0 <partition u32 BE>`.
pub(crate) fn tp_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 13);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `<tp> <u64 BE>`.
pub(crate) fn tp_offset_key(topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = tp_key(topic, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The trailing u64 of a key (offsets in `segments` and `index` keys).
pub(crate) fn key_u64(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() >= 8 {
        b.copy_from_slice(&k[k.len() - 8..]);
    }
    u64::from_be_bytes(b)
}

/// u64 number `i` of a value of several big-endian u64s.
pub(crate) fn val_u64(v: &[u8], i: usize) -> Option<u64> {
    v.get(i * 8..i * 8 + 8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    })
}
