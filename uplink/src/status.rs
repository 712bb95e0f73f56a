//! What an uplink reports: state, throughput, and per service lag.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Connection state of a sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum State {
    /// Not connected yet or nothing sent yet.
    #[default]
    Starting,
    /// Last send succeeded.
    Connected,
    /// Last send failed; waiting before the next attempt.
    BackingOff {
        /// The error of the last attempt.
        error: String,
        /// Failed attempts in a row.
        attempts: u32,
    },
}

impl State {
    /// Label for metrics and the API.
    pub fn label(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Connected => "connected",
            State::BackingOff { attempts, .. } if *attempts >= 5 => "failing",
            State::BackingOff { .. } => "backing_off",
        }
    }
}

/// Per service view of one uplink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceLag {
    /// Records not forwarded yet.
    pub lag_records: u64,
    /// Their bytes (estimated from partition averages).
    pub lag_bytes: u64,
    /// Age of the oldest record not forwarded yet, ms.
    pub oldest_unsent_ms: Option<u64>,
    /// Records forwarded.
    pub sent_records: u64,
    /// Bytes forwarded.
    pub sent_bytes: u64,
    /// Records skipped because they were older than the service's TTL.
    pub ttl_skipped: u64,
    /// Records deleted (retention or eviction) before they were forwarded.
    pub lost_before_forward: u64,
    /// Records skipped because the sink can never carry them (e.g. larger
    /// than the MQTT broker's maximum packet size).
    pub unfit_skipped: u64,
}

/// Snapshot of one uplink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkSnapshot {
    /// Uplink name.
    pub name: String,
    /// Sink kind.
    pub kind: String,
    /// Connection state.
    pub state: State,
    /// Batches retried after an error.
    pub retries: u64,
    /// Bytes per second forwarded, smoothed.
    pub throughput_bps: f64,
    /// Batches sent and not acknowledged yet.
    pub in_flight: u64,
    /// Most batches in flight at once (the uplink's `max_in_flight`, and
    /// the sink's limit).
    pub max_in_flight: u64,
    /// Cursor checkpoints written (store flushes requested by the uplink).
    pub checkpoints: u64,
    /// Records sent again after a restart that an earlier run had handed
    /// to the sink already (as far as its last checkpoint recorded: a lower
    /// bound after a crash).
    pub resent_records: u64,
    /// Per service.
    pub services: BTreeMap<String, ServiceLag>,
    /// The metered link's budget, when the uplink has one.
    pub budget: Option<crate::BudgetStatus>,
}

impl UplinkSnapshot {
    /// Estimated seconds to forward the whole lag at the current
    /// throughput; on a metered link whose budget left is smaller than the
    /// lag, until the period in which the budget covers it (the lag's bytes
    /// before framing: a lower bound).
    pub fn eta_seconds(&self) -> Option<f64> {
        let lag: u64 = self.services.values().map(|s| s.lag_bytes).sum();
        if lag == 0 {
            return Some(0.0);
        }
        if let Some(b) = self.budget.as_ref().filter(|b| lag > b.left && b.bytes > 0) {
            let full_periods = (lag - b.left) / b.bytes;
            return Some(b.resets_in_seconds + full_periods as f64 * b.period_seconds);
        }
        (self.throughput_bps > 0.0).then(|| lag as f64 / self.throughput_bps)
    }
}

/// Shared, updated by the worker, read by `/metrics` and `/v1/uplinks`.
#[derive(Debug, Default)]
pub struct UplinkStatus(Mutex<UplinkSnapshot>);

impl UplinkStatus {
    /// A copy of the current state.
    pub fn snapshot(&self) -> UplinkSnapshot {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut UplinkSnapshot)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
