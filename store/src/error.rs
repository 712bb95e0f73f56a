//! Errors of the store.

use std::path::PathBuf;

/// A stored record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CorruptRecord(pub String);

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be opened (missing permissions, not a
    /// directory, corrupt files, another process holding the lock).
    #[error("cannot open data directory {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// The data directory was written by an incompatible version.
    #[error("data directory {path} has format {found:?}, this build reads {expected:?}; use a build that matches or a new data directory")]
    Format {
        /// The data directory.
        path: PathBuf,
        /// Format marker found on disk.
        found: String,
        /// Format marker this build writes.
        expected: &'static str,
    },
    /// Topic metadata on disk could not be read.
    #[error("corrupt metadata for {what}: {detail}")]
    Metadata {
        /// Which metadata entry.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// No such partition in an existing topic.
    #[error("topic {topic:?} has {partitions} partition(s); partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A topic already exists with a different shape.
    #[error("topic {topic:?} exists with {existing} partitions; cannot reduce to {requested}")]
    PartitionShrink {
        /// The topic.
        topic: String,
        /// Partitions on disk.
        existing: u32,
        /// Partitions requested.
        requested: u32,
    },
    /// A consumer group tried to commit a position past the data.
    #[error("offset {offset} is past the high watermark {high_watermark} of {topic}/{partition}")]
    CommitPastEnd {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Offset that was committed.
        offset: u64,
        /// Next offset to be written.
        high_watermark: u64,
    },
    /// A record on disk cannot be decoded.
    #[error("{topic}/{partition} offset {offset}: {source}")]
    Corrupt {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset of the bad record.
        offset: u64,
        /// What was wrong.
        source: CorruptRecord,
    },
    /// sled failed during an operation (I/O error, disk full, ...).
    #[error("storage I/O failed during {op}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// What sled reported.
        source: sled::Error,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
        move |source| StoreError::Io { op, source }
    }

    /// True when the error comes from the disk rather than from the request
    /// (callers answer 5xx / 507 instead of 4xx).
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::Corrupt { .. } | StoreError::Open { .. })
    }

    /// True when the underlying I/O error is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source: sled::Error::Io(e), .. } => {
                e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
}
