//! What every sink implements, and the batch it is handed.

use std::future::Future;

/// One record as forwarded: the log record plus provenance headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Offset in the local partition.
    pub offset: u64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// The record's own headers followed by sluice's provenance headers
    /// (`sluice.node`, `sluice.service`, `sluice.topic`, `sluice.partition`,
    /// `sluice.offset`), so the central side can de-duplicate.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the epoch when sluice accepted the record.
    pub timestamp_ms: i64,
}

/// Records of one local partition, in offset order, bound for one remote
/// topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Local topic.
    pub topic: String,
    /// Local partition.
    pub partition: u32,
    /// Partition count of the local topic (remote topics are created with
    /// as many, so a key keeps its partition index).
    pub partitions: u32,
    /// Remote topic, from the uplink's `remote_topic` template.
    pub remote_topic: String,
    /// Owning service.
    pub service: String,
    /// The records, consecutive offsets except where TTL-expired ones were
    /// skipped.
    pub records: Vec<OutRecord>,
}

impl Batch {
    /// Bytes of keys, values and headers (what bandwidth caps count).
    pub fn bytes(&self) -> u64 {
        self.records.iter().map(OutRecord::bytes).sum()
    }
}

impl OutRecord {
    /// Bytes of its key, value and headers.
    pub fn bytes(&self) -> u64 {
        (self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
    }
}

/// Why a batch was not delivered. Every error is retried with backoff; the
/// message shows in `/v1/uplinks` and the logs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    /// An error with context.
    pub fn new(context: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError(format!("{context}: {err}"))
    }
}

/// A destination on the central side. `send` returns only once the central
/// side acknowledged every record of the batch (at-least-once: the cursor
/// moves only after that).
///
/// Sends take `&self`: the worker keeps up to
/// `min(max_in_flight, Sink::max_in_flight)` of them in flight at once,
/// never two of one partition, so a sink that pipelines must only keep the
/// batches of different partitions independent.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one batch.
    fn send(&self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// How many sends this sink can have in flight at once (1: one at a
    /// time).
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Why this sink can never carry `record` to `remote_topic` (e.g. it
    /// is larger than the broker's maximum packet size), or `None`. The
    /// worker skips such a record, counted and logged with its topic,
    /// partition and offset, instead of failing its batch forever.
    fn cannot_carry(&self, _record: &OutRecord, _remote_topic: &str) -> Option<String> {
        None
    }

    /// Drops connections after an error so the next send reconnects.
    fn reset(&self) {}
}
