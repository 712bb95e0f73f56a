//! Errors of the store.

use std::path::PathBuf;

/// A stored record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CorruptRecord(pub String);

/// Offsets a flush made durable that the log no longer holds: the high
/// watermark sled recovered is below the one the watermark file recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// First missing offset (the high watermark the log recovered).
    pub from: u64,
    /// One past the last missing offset (the flushed high watermark).
    pub to: u64,
}

impl std::fmt::Display for LostRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} offsets {}..{}", self.topic, self.partition, self.from, self.to)
    }
}

fn list(lost: &[LostRange]) -> String {
    lost.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

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
    /// sled recovered less than was flushed: its log file is damaged in the
    /// middle (sled cannot tell that from a torn tail and drops the rest).
    #[error("{file} is damaged: records that were flushed are missing ({}). Restore the data directory from a backup, or start with --accept-data-loss (`sluice run --accept-data-loss`) to continue without them; their offsets are not reused", list(.lost))]
    DataLoss {
        /// sled's log file.
        file: PathBuf,
        /// What is missing.
        lost: Vec<LostRange>,
    },
    /// The file of flushed high watermarks cannot be read.
    #[error("{file} is damaged ({detail}), so the log cannot be checked for lost records. Restore it from a backup, or start with --accept-data-loss (`sluice run --accept-data-loss`) to rebuild it from the log")]
    Watermarks {
        /// The watermark file.
        file: PathBuf,
        /// What is wrong with it.
        detail: String,
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
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Open { .. }
                | StoreError::DataLoss { .. }
                | StoreError::Watermarks { .. }
        )
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
