//! Retention and disk-budget eviction, on a thread of its own (sled deletes
//! block) every second.

use crate::services::Services;
use sluice_store::{RetentionReport, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The running maintenance thread; dropping [`Maintenance::stop`]'s sender ends it.
#[derive(Debug)]
pub struct Maintenance {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Maintenance {
    /// Starts the loop.
    pub fn start(
        store: Store,
        services: Arc<Services>,
        max_bytes: u64,
        every: Duration,
    ) -> std::io::Result<Maintenance> {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("sluice-maint".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                run_once(&store, &services, max_bytes);
            }
        })?;
        Ok(Maintenance { stop, thread })
    }

    /// Stops the loop and waits for it.
    pub fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("maintenance thread panicked");
        }
    }
}

/// One pass: retention, then the disk budget.
pub fn run_once(store: &Store, services: &Services, max_bytes: u64) {
    match store.enforce_retention(crate::now_ms()) {
        Ok(report) => count(services, &report, |c| &c.retention_deleted, "retention deleted records"),
        Err(e) => tracing::error!(error = %e, "retention failed"),
    }
    if store.total_bytes() > max_bytes {
        match store.evict_to_budget(max_bytes, &services.eviction_policies()) {
            Ok(report) => count(services, &report, |c| &c.evicted, "evicted records over the disk budget"),
            Err(e) => tracing::error!(error = %e, "eviction failed"),
        }
    }
}

fn count(
    services: &Services,
    report: &RetentionReport,
    counter: fn(&crate::services::Counters) -> &AtomicU64,
    what: &str,
) {
    for (name, (records, bytes)) in &report.deleted {
        counter(&services.resolve(name).counters).fetch_add(*records, Ordering::Relaxed);
        tracing::info!(service = %name, records, bytes, "{what}");
    }
}
