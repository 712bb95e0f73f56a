//! Metered links: a byte budget per period, spent in priority order.
//!
//! Periods start at multiples of `budget.period` since the Unix epoch (a
//! day: midnight UTC). A batch is charged before it is sent, with what the
//! wire can carry at most: keys, values and headers plus the framing of
//! records and batches, before compression. Services in `always` (default:
//! the express ones) may spend the whole budget at any time; the others
//! stop when only `reserve` of it is left, and send only inside `windows`.
//!
//! The amount spent survives restarts and crashes: a mark at or above it is
//! stored (one small atomic store write) before the spending passes the
//! previous mark, in steps of a hundredth of the budget, so a crash can
//! forget nothing that was sent; at most a hundredth of the budget is lost
//! per crash.

use sluice_config::UplinkBudget;
use sluice_store::{AtomicWrite, Store, StoreError};

/// Framing per record on the wire, counted on top of its bytes (Kafka's
/// record header with varints, an MQTT PUBLISH header, JSON punctuation
/// of an HTTP batch: all below this).
pub(crate) const RECORD_FRAMING: u64 = 24;
/// Framing per batch (Kafka's produce request and RecordBatch header).
pub(crate) const BATCH_FRAMING: u64 = 128;

/// The budget of one uplink.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: u64,
    period_ms: i64,
    reserve: u64,
    windows: Vec<(u32, u32)>,
    pub(crate) always: Option<Vec<String>>,
    /// Start of the current period, ms since the epoch.
    period_start: i64,
    /// Bytes charged in the current period.
    used: u64,
    /// Stored mark (>= `used` once stored): what a restart starts from.
    mark: u64,
    key: Vec<u8>,
}

/// What `/v1/uplinks` and the metrics show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetStatus {
    /// Bytes per period.
    pub bytes: u64,
    /// Bytes charged in the current period.
    pub used: u64,
    /// Bytes left in the current period.
    pub left: u64,
    /// Period length, seconds.
    pub period_seconds: f64,
    /// Seconds until the next period starts.
    pub resets_in_seconds: f64,
    /// Whether the services outside `always` may send now (inside a
    /// window, and more than the reserve left).
    pub bulk_open: bool,
}

impl Budget {
    /// The budget of uplink `name`, with what was spent in the current
    /// period read back from the store. When that cannot be read, the
    /// period counts as spent (logged): the budget is never exceeded.
    pub(crate) fn load(name: &str, cfg: &UplinkBudget, store: &Store, now_ms: i64) -> Budget {
        let bytes = cfg.bytes.as_u64();
        let mut b = Budget {
            bytes,
            period_ms: i64::try_from(cfg.period.as_millis()).unwrap_or(i64::MAX).max(1),
            reserve: (bytes as f64 * cfg.reserve) as u64,
            // (Validated with the configuration.)
            windows: cfg.window_minutes().unwrap_or_default(),
            always: cfg.always.clone(),
            period_start: 0,
            used: 0,
            mark: 0,
            key: format!("uplink-budget\0{name}").into_bytes(),
        };
        b.period_start = b.start_of(now_ms);
        match store.state(&b.key) {
            Ok(Some(v)) if v.len() == 16 => {
                let (start, used) = v.split_at(8);
                let start = i64::from_be_bytes(start.try_into().unwrap_or_default());
                if start == b.period_start {
                    b.used = u64::from_be_bytes(used.try_into().unwrap_or_default());
                    b.mark = b.used;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(uplink = name, error = %e,
                    "cannot read what the metered link spent; this period counts as spent");
                (b.used, b.mark) = (bytes, bytes);
            }
        }
        b
    }

    fn start_of(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.period_ms) * self.period_ms
    }

    /// Starts a new period when the current one is over.
    pub(crate) fn roll(&mut self, now_ms: i64) {
        let start = self.start_of(now_ms);
        if start != self.period_start {
            self.period_start = start;
            self.used = 0;
            self.mark = 0;
        }
    }

    /// Bytes a service may still spend in this period (0 outside its
    /// windows).
    pub(crate) fn allowance(&self, privileged: bool, now_ms: i64) -> u64 {
        let left = self.bytes.saturating_sub(self.used);
        if privileged {
            return left;
        }
        if !self.in_window(now_ms) {
            return 0;
        }
        left.saturating_sub(self.reserve)
    }

    fn in_window(&self, now_ms: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let minute = u32::try_from(now_ms.rem_euclid(86_400_000) / 60_000).unwrap_or(0);
        self.windows
            .iter()
            .any(|&(a, b)| if a < b { (a..b).contains(&minute) } else { minute >= a || minute < b })
    }

    /// Charges `bytes` (already checked against the allowance); first
    /// stores a new mark when the spending passes the stored one.
    pub(crate) fn charge(&mut self, bytes: u64, store: &Store) -> Result<(), StoreError> {
        let used = self.used.saturating_add(bytes);
        if used > self.mark {
            let step = (self.bytes / 100).max(1);
            let mark = used.saturating_add(step).min(self.bytes.max(used));
            let mut value = self.period_start.to_be_bytes().to_vec();
            value.extend_from_slice(&mark.to_be_bytes());
            store.commit_atomic(&AtomicWrite {
                records: Vec::new(),
                positions: Vec::new(),
                state: vec![(self.key.clone(), Some(value))],
            })?;
            self.mark = mark;
        }
        self.used = used;
        Ok(())
    }

    /// Milliseconds until the next period starts.
    pub(crate) fn until_reset_ms(&self, now_ms: i64) -> u64 {
        u64::try_from(self.period_start + self.period_ms - now_ms).unwrap_or(0)
    }

    pub(crate) fn status(&self, now_ms: i64) -> BudgetStatus {
        BudgetStatus {
            bytes: self.bytes,
            used: self.used,
            left: self.bytes.saturating_sub(self.used),
            period_seconds: self.period_ms as f64 / 1000.0,
            resets_in_seconds: self.until_reset_ms(now_ms) as f64 / 1000.0,
            bulk_open: self.allowance(false, now_ms) >= BATCH_FRAMING + RECORD_FRAMING,
        }
    }
}

/// What a batch of `records` records of `bytes` bytes is charged.
pub(crate) fn wire_bytes(records: usize, bytes: u64) -> u64 {
    BATCH_FRAMING + records as u64 * RECORD_FRAMING + bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(windows: &[&str]) -> UplinkBudget {
        UplinkBudget {
            bytes: sluice_config::ByteSize(1000),
            period: Duration::from_secs(60),
            reserve: 0.1,
            windows: windows.iter().map(|w| (*w).to_owned()).collect(),
            always: None,
        }
    }

    #[test]
    fn allowance_keeps_the_reserve_and_rolls_with_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&sluice_store::StoreOptions::new(dir.path())).unwrap();
        let now = 1_800_000_000_000;
        let mut b = Budget::load("central", &budget(&[]), &store, now);
        assert_eq!((b.allowance(true, now), b.allowance(false, now)), (1000, 900));
        b.charge(850, &store).unwrap();
        assert_eq!((b.allowance(true, now), b.allowance(false, now)), (150, 50));
        // A restart in the same period starts from the stored mark (at or
        // above what was spent), the next period from zero.
        let again = Budget::load("central", &budget(&[]), &store, now + 1);
        assert!(again.used >= 850 && again.used <= 1000, "{}", again.used);
        b.roll(now + 60_000);
        assert_eq!(b.allowance(false, now + 60_000), 900);
        assert_eq!(Budget::load("central", &budget(&[]), &store, now + 60_000).used, 0);
    }

    #[test]
    fn windows_close_bulk_but_not_privileged_services() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&sluice_store::StoreOptions::new(dir.path())).unwrap();
        // 23:00-01:00 UTC wraps past midnight.
        let b = Budget::load("central", &budget(&["23:00-01:00"]), &store, 0);
        let at = |h: i64, m: i64| 86_400_000 * 20_000 + (h * 60 + m) * 60_000;
        assert_eq!(b.allowance(false, at(23, 30)), 900);
        assert_eq!(b.allowance(false, at(0, 59)), 900);
        assert_eq!(b.allowance(false, at(1, 0)), 0);
        assert_eq!(b.allowance(false, at(12, 0)), 0);
        assert_eq!(b.allowance(true, at(12, 0)), 1000);
    }
}
