//! Idempotent producers: producer ids (InitProducerId) and, per producer
//! and partition, the sequence numbers of its last batches, so a retried
//! batch gets its original offset instead of being stored twice, and a
//! gap in the sequence gets OUT_OF_ORDER_SEQUENCE_NUMBER. In memory only:
//! after a restart a producer's next batch is taken as it comes (the
//! state that would recognise a retry across the restart is gone).

use kafka_protocol::ResponseError;
use std::collections::{HashMap, VecDeque};
use tokio::sync::watch;

/// Batches remembered per producer and partition (Kafka's
/// max.in.flight.requests.per.connection limit for idempotence).
const REMEMBERED: usize = 5;
/// Producer and partition entries kept; past this the table starts over
/// (producer ids come from clients).
const MAX_ENTRIES: usize = 100_000;

/// The base offset of a batch once appended; `Err` when it failed.
pub(super) type BaseOffset = watch::Receiver<Option<Result<i64, i16>>>;

/// What to do with a produced batch.
#[derive(Debug)]
pub(super) enum Decision {
    /// Append it, then publish its base offset through the sender.
    Append(watch::Sender<Option<Result<i64, i16>>>),
    /// A retry of a batch already taken: answer with its offset.
    Duplicate(BaseOffset),
    /// Refuse with this error code.
    Refuse(i16),
}

#[derive(Debug)]
struct Batch {
    first: i32,
    last: i32,
    base: BaseOffset,
}

#[derive(Debug)]
struct Partition {
    epoch: i16,
    batches: VecDeque<Batch>,
}

/// The producers' sequence state.
#[derive(Debug)]
pub(super) struct Producers {
    next_id: i64,
    table: HashMap<(i64, String, u32), Partition>,
}

impl Producers {
    /// Ids start from the clock so ids given before a restart are not
    /// given again.
    pub(super) fn new(now_ms: i64) -> Producers {
        Producers { next_id: now_ms.max(1) << 16, table: HashMap::new() }
    }

    /// A new producer id (epoch 0), or the next epoch of a known one.
    pub(super) fn init(&mut self, producer_id: i64, epoch: i16) -> (i64, i16) {
        if producer_id >= 0 && epoch >= 0 {
            let next = epoch.checked_add(1).unwrap_or(0);
            return (producer_id, next);
        }
        self.next_id += 1;
        (self.next_id, 0)
    }

    /// Decides on a batch of `count` records with sequences from `first`.
    pub(super) fn check(
        &mut self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
        first: i32,
        count: i32,
    ) -> Decision {
        if self.table.len() >= MAX_ENTRIES {
            self.table.clear();
        }
        let last = first.wrapping_add(count - 1);
        let entry = self
            .table
            .entry((producer_id, topic.to_owned(), partition))
            .or_insert(Partition { epoch, batches: VecDeque::new() });
        if epoch < entry.epoch {
            return Decision::Refuse(ResponseError::InvalidProducerEpoch.code());
        }
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if let Some(b) = entry.batches.iter().find(|b| b.first == first && b.last == last) {
            return Decision::Duplicate(b.base.clone());
        }
        match entry.batches.back() {
            // No state (a new producer, or after a restart): taken as it comes.
            Some(prev) if first != prev.last.wrapping_add(1) => {
                if first > prev.last {
                    Decision::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
                } else {
                    Decision::Refuse(ResponseError::DuplicateSequenceNumber.code())
                }
            }
            _ => {
                let (tx, rx) = watch::channel(None);
                entry.batches.push_back(Batch { first, last, base: rx });
                if entry.batches.len() > REMEMBERED {
                    entry.batches.pop_front();
                }
                Decision::Append(tx)
            }
        }
    }

    /// Forgets a batch whose append failed, so its retry is appended.
    pub(super) fn failed(&mut self, producer_id: i64, topic: &str, partition: u32, first: i32) {
        if let Some(p) = self.table.get_mut(&(producer_id, topic.to_owned(), partition)) {
            p.batches.retain(|b| b.first != first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let mut p = Producers::new(1);
        let (id, epoch) = p.init(-1, -1);
        let Decision::Append(tx) = p.check(id, epoch, "t", 0, 0, 3) else { panic!("first batch appends") };
        let Decision::Append(_) = p.check(id, epoch, "t", 0, 3, 2) else { panic!("next batch appends") };
        // The first batch again: its offset once known.
        let Decision::Duplicate(rx) = p.check(id, epoch, "t", 0, 0, 3) else {
            panic!("retry is a duplicate")
        };
        tx.send_replace(Some(Ok(40)));
        assert_eq!(*rx.borrow(), Some(Ok(40)));
        assert!(matches!(p.check(id, epoch, "t", 0, 9, 1), Decision::Refuse(45)), "gap");
        assert!(matches!(p.check(id, epoch - 1, "t", 0, 5, 1), Decision::Refuse(47)), "old epoch");
        // Another partition has its own sequence.
        assert!(matches!(p.check(id, epoch, "t", 1, 0, 1), Decision::Append(_)));
        // A failed append is forgotten, so its retry appends.
        p.failed(id, "t", 0, 3);
        assert!(matches!(p.check(id, epoch, "t", 0, 3, 2), Decision::Append(_)));
        assert_eq!(p.init(id, epoch), (id, epoch + 1));
    }
}
