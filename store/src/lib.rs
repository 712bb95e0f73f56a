//! sluice-store: the durable, partitioned, append-only topic log of sluice (records in
//! segment files, metadata in sled) and the weighted priority scheduler that orders work everywhere it
//! queues up.

pub mod error;
pub mod log;
pub mod partitioner;
pub mod record;
pub mod scheduler;

pub use error::{CorruptRecord, LostRange, StoreError};
pub use log::{
    AtomicWrite, EvictionPolicy, PartitionInfo, ReadResult, Retention, RetentionReport, SegmentLimits, Store,
    StoreOptions, TopicInfo, TopicSpec,
};
pub use partitioner::partition_for_key;
pub use record::{now_ms, older_than_cutoff, Offset, PartitionId, Record, StoredRecord};
