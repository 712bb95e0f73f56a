//! Which rule computes next when several have work: one step at a time
//! (the CPU part: reading and evaluating; commits run outside the gate),
//! handed out by the same weighted scheduler as everything else, by the
//! service of each rule's output topic. A flood into a low-priority rule's
//! input makes that rule lag, while an express or heavier rule's steps go
//! first (within the express share), and nobody starves.

use sluice_store::scheduler::{Mode, Scheduler, ServiceClass, ServiceId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The gate shared by the rules of one node.
#[derive(Debug)]
pub struct Gate {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    sched: Scheduler<oneshot::Sender<()>>,
    ids: HashMap<String, ServiceId>,
    busy: bool,
}

/// The right to run one step; the next waiting rule goes when it drops.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Gate {
    /// A gate over `services` (name, class).
    pub fn new(mode: Mode, express_max_share: f64, services: &[(String, ServiceClass)]) -> Arc<Gate> {
        let mut sched = Scheduler::new(mode, express_max_share);
        let ids = services.iter().map(|(name, class)| (name.clone(), sched.add_service(*class))).collect();
        Arc::new(Gate { inner: Mutex::new(Inner { sched, ids, busy: false }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for this rule's turn; `class` is its service's current class
    /// (weights change at run time), `cost` the bytes its step is expected
    /// to read (its previous step's).
    pub async fn acquire(self: &Arc<Gate>, service: &str, class: ServiceClass, cost: u64) -> Permit {
        let rx = {
            let mut inner = self.lock();
            if let Some(id) = inner.ids.get(service).copied() {
                if inner.sched.class(id) != class {
                    inner.sched.set_class(id, class);
                }
            }
            if !inner.busy && inner.sched.is_empty() {
                inner.busy = true;
                return Permit { gate: self.clone() };
            }
            let Some(id) = inner.ids.get(service).copied() else {
                // A service the gate does not know (cannot happen: every
                // configured service is added): do not hold the rule back.
                return Permit { gate: self.clone() };
            };
            let (tx, rx) = oneshot::channel();
            inner.sched.push(id, cost, tx);
            rx
        };
        // The sender is only dropped unsent when the gate itself goes away.
        let _ = rx.await;
        Permit { gate: self.clone() }
    }

    fn release(&self) {
        let mut inner = self.lock();
        while let Some((_, tx)) = inner.sched.pop() {
            // A waiter that went away (its task ended) is skipped.
            if tx.send(()).is_ok() {
                return;
            }
        }
        inner.busy = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn waiting_steps_go_by_priority() {
        let gate = Gate::new(
            Mode::Weighted,
            0.5,
            &[("bulk".into(), ServiceClass::new(1, false)), ("alarms".into(), ServiceClass::new(1, true))],
        );
        let held = gate.acquire("bulk", ServiceClass::new(1, false), 100).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["bulk", "bulk", "alarms"] {
            let (g, order) = (gate.clone(), order.clone());
            let class = ServiceClass::new(1, name == "alarms");
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(name, class, 100).await;
                order.lock().unwrap().push(name);
            }));
            // Queued in this order.
            tokio::task::yield_now().await;
            while gate.lock().sched.total_items() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["alarms", "bulk", "bulk"]);
        // Free again: taken at once.
        drop(gate.acquire("bulk", ServiceClass::new(1, false), 1).await);
        assert!(!gate.lock().busy);
    }
}
