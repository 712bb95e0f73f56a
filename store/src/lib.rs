//! sluice-store: the durable, partitioned, append-only topic log of sluice (on
//! sled) and the weighted priority scheduler that orders work everywhere it
//! queues up.

pub mod scheduler;
