//! Getting going again after sled failed a write (disk full, an I/O error).
//!
//! sled 0.34 poisons itself on a failed write: it records the error and
//! returns it from every later write and flush, so a disk that filled up
//! once would keep the store refusing appends after space came back. The
//! only way out is to close the database and open it again, which recovers
//! what was flushed and drops what was only in memory.
//!
//! So after an I/O error the store checks (with one more flush) whether
//! sled is poisoned and, if so, reopens it, at most once per
//! [`REOPEN_EVERY`]. Until a reopen succeeds, operations fail with the
//! error that caused it (callers answer 507 / 503). Records that were
//! appended but not flushed are gone after the reopen, as after a crash;
//! they are reported through [`Store::take_discarded`] so the caller can
//! count them, and their offsets may be handed out again (never those of
//! flushed records).

use super::{read, write, Inner, Store, StoreOptions, LOCK_PATIENCE};
use crate::error::{LostRange, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// Least time between two reopen attempts.
pub(super) const REOPEN_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Recovery {
    last_attempt: Option<Instant>,
    /// The error that closed the database, while it is closed.
    cause: Option<sled::Error>,
    /// Unflushed records the reopens discarded, not yet taken.
    discarded: Vec<LostRange>,
    /// Set while the database is closed.
    closed: Option<Closed>,
}

impl Store {
    /// The open database; reopens it first when a failed write closed it.
    pub(super) fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        if let Some(inner) = read(&self.slot.inner).as_ref() {
            return Ok(inner.clone());
        }
        self.reopen_if_due();
        if let Some(inner) = read(&self.slot.inner).as_ref() {
            return Ok(inner.clone());
        }
        let cause = self.recovery().cause.clone();
        Err(StoreError::Io {
            op: "reopening the store after a failed write",
            source: cause.unwrap_or_else(|| sled::Error::Unsupported("the store is closed".into())),
        })
    }

    /// Records that were appended but never flushed and that reopening the
    /// database after a failed write discarded, since the last call.
    pub fn take_discarded(&self) -> Vec<LostRange> {
        std::mem::take(&mut self.recovery().discarded)
    }

    fn recovery(&self) -> std::sync::MutexGuard<'_, Recovery> {
        self.slot.recovery.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called with an error of a write or flush: when sled is poisoned
    /// (one more flush fails too), closes it and reopens it.
    pub(super) fn after_error(&self, e: &StoreError) {
        if !e.is_io() {
            return;
        }
        let Some(inner) = read(&self.slot.inner).clone() else { return };
        match inner.db.flush() {
            Ok(_) => return,
            Err(cause) => {
                tracing::warn!(path = %self.slot.opts.path.display(), error = %cause,
                    "the log database failed a write; reopening it");
                self.recovery().cause = Some(cause);
            }
        }
        drop(inner);
        self.close();
        self.reopen_if_due();
    }

    /// Drops the open database (waiting briefly for operations under way).
    fn close(&self) {
        let old = write(&self.slot.inner).take();
        let Some(old) = old else { return };
        let before = high_watermarks(&old);
        let deadline = Instant::now() + LOCK_PATIENCE;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let specs: Vec<_> = read(&old.topics).values().map(|t| t.spec()).collect();
        drop(old);
        let mut recovery = self.recovery();
        recovery.closed = Some(Closed { before, specs });
    }

    fn reopen_if_due(&self) {
        let mut recovery = self.recovery();
        if recovery.last_attempt.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return;
        }
        recovery.last_attempt = Some(Instant::now());
        let mut slot = write(&self.slot.inner);
        if slot.is_some() {
            return;
        }
        let Some(closed) = recovery.closed.as_ref() else { return };
        let opts = StoreOptions { accept_data_loss: false, ..self.slot.opts.clone() };
        let fresh = match Store::open(&opts) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(path = %opts.path.display(), error = %e, "reopening the log database failed; retrying");
                return;
            }
        };
        // Topic settings (retention, service) live in memory only.
        for spec in &closed.specs {
            if let Err(e) = fresh.ensure_topic(spec) {
                tracing::warn!(topic = %spec.name, error = %e, "cannot restore topic settings after reopening");
            }
        }
        let Some(inner) = write(&fresh.slot.inner).take() else { return };
        let after = high_watermarks(&inner);
        let discarded: Vec<LostRange> = closed
            .before
            .iter()
            .filter_map(|((topic, partition), &to)| {
                let from = after.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
                (from < to).then(|| LostRange { topic: topic.clone(), partition: *partition, from, to })
            })
            .collect();
        recovery.discarded.extend(discarded);
        tracing::info!(path = %opts.path.display(), "log database reopened after a failed write");
        *slot = Some(inner);
        recovery.closed = None;
        recovery.cause = None;
    }
}

/// What a closed database held, to restore and compare after reopening.
pub(super) struct Closed {
    before: BTreeMap<(String, u32), u64>,
    specs: Vec<super::TopicSpec>,
}

fn high_watermarks(inner: &Inner) -> BTreeMap<(String, u32), u64> {
    let mut out = BTreeMap::new();
    for (name, topic) in read(&inner.topics).iter() {
        for p in topic.partitions() {
            out.insert((name.clone(), p.info().partition.0), p.info().high_watermark.0);
        }
    }
    out
}
