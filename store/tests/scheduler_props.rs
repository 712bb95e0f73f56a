//! Property tests for the weighted priority scheduler: byte shares, no
//! starvation, the express cap, idle services, per-service FIFO order with
//! conservation against a model, and Fifo mode.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use proptest::prelude::*;
use sluice_store::scheduler::{Mode, Scheduler, ServiceClass, ServiceId, BASE_QUANTUM, CONTENTION_WINDOW};

/// Largest item in these tests (the brief's 64 KiB).
const MAX_ITEM: u64 = 64 * 1024;

/// `cases` per property, unless `PROPTEST_CASES` asks for a longer soak.
fn config(cases: u32) -> ProptestConfig {
    let soak = std::env::var("PROPTEST_CASES").ok();
    ProptestConfig {
        cases: soak.and_then(|n| n.parse().ok()).unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// xorshift64*: long runs of item sizes from one proptest-chosen seed.
struct Sizes(u64);

impl Sizes {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo + 1)
    }
}

/// The scheduler's quanta for services backlogged together in one tier.
fn quanta(weights: &[u32]) -> Vec<u64> {
    let min = u64::from(*weights.iter().min().unwrap());
    weights.iter().map(|&w| BASE_QUANTUM * u64::from(w) / min).collect()
}

/// Services with the given classes; items are their own cost, so a pop tells
/// how many bytes were served.
fn saturated(
    classes: &[ServiceClass],
    share: f64,
    sizes: &mut Sizes,
    min_item: u64,
) -> (Scheduler<u64>, Vec<ServiceId>) {
    let mut s = Scheduler::new(Mode::Weighted, share);
    let ids: Vec<ServiceId> = classes.iter().map(|&c| s.add_service(c)).collect();
    for &id in &ids {
        for _ in 0..4 {
            let cost = sizes.next(min_item, MAX_ITEM);
            s.push(id, cost, cost);
        }
    }
    (s, ids)
}

proptest! {
    #![proptest_config(config(128))]

    /// (1) Under saturation each service's byte share is within 5% (relative)
    /// of weight / sum of weights, over a window long enough that one round,
    /// one item per service and the lightest service's item granularity are
    /// each under 1/40 of what is measured.
    #[test]
    fn shares_follow_weights(
        weights in prop::collection::vec(1u32..=1000, 2..=6),
        express in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let classes: Vec<_> = weights.iter().map(|&w| ServiceClass::new(w, express)).collect();
        let mut sizes = Sizes::new(seed);
        let (mut s, ids) = saturated(&classes, 0.5, &mut sizes, 1);
        let q = quanta(&weights);
        let round: u64 = q.iter().sum();
        let q_min = *q.iter().min().unwrap();
        let n = ids.len() as u64;
        let rounds = 40 * (1 + MAX_ITEM.div_ceil(q_min) + (n * MAX_ITEM).div_ceil(round));
        let window = rounds * round;

        let mut served = vec![0u64; ids.len()];
        let mut total = 0;
        while total < window {
            let (id, cost) = s.pop().unwrap();
            served[usize::from(id.0)] += cost;
            total += cost;
            let next = sizes.next(1, MAX_ITEM);
            s.push(id, next, next);
        }
        let sum: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let expected = f64::from(w) / f64::from(sum);
            let actual = served[i] as f64 / total as f64;
            prop_assert!(
                (actual - expected).abs() <= 0.05 * expected,
                "service {i} weight {w}: share {actual:.5}, expected {expected:.5}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// (2) No starvation: between two serves of any backlogged service, the
    /// bytes (and so pops) served to the others stay under the DRR bound,
    /// loosened by the express cap when an express service competes.
    #[test]
    fn nobody_starves(
        weights in prop::collection::vec(1u32..=1000, 2..=6),
        express in prop::option::of(1u32..=1000),
        share in 0.1f64..=0.9,
        seed in any::<u64>(),
    ) {
        const MIN_ITEM: u64 = 512;
        let mut classes: Vec<_> = weights.iter().map(|&w| ServiceClass::new(w, false)).collect();
        classes.extend(express.map(|w| ServiceClass::new(w, true)));
        let mut sizes = Sizes::new(seed);
        let (mut s, ids) = saturated(&classes, share, &mut sizes, MIN_ITEM);

        let q = quanta(&weights);
        let n = weights.len() as u64;
        let bound: Vec<u64> = (0..ids.len())
            .map(|i| {
                if i == weights.len() {
                    // Express waits until weighted bytes bring it under its cap.
                    return (MAX_ITEM as f64 / share) as u64 + 2 * MAX_ITEM;
                }
                let others: u64 = q.iter().sum::<u64>() - q[i];
                let rounds = MAX_ITEM.div_ceil(q[i]) + 1;
                let weighted = rounds * others + (n - 1) * MAX_ITEM;
                if express.is_none() {
                    weighted
                } else {
                    ((weighted + 2 * MAX_ITEM) as f64 / (1.0 - share)) as u64 + MAX_ITEM
                }
            })
            .collect();

        let mut since = vec![0u64; ids.len()];
        let mut pops_since = vec![0u64; ids.len()];
        let mut serves = vec![0u32; ids.len()];
        while serves.iter().any(|&c| c < 3) {
            let (id, cost) = s.pop().unwrap();
            let k = usize::from(id.0);
            for i in 0..ids.len() {
                if i == k {
                    continue;
                }
                since[i] += cost;
                pops_since[i] += 1;
                prop_assert!(
                    since[i] <= bound[i] && pops_since[i] <= bound[i] / MIN_ITEM + 1,
                    "service {i} waited {} bytes / {} pops, bound {} bytes",
                    since[i], pops_since[i], bound[i]
                );
            }
            since[k] = 0;
            pops_since[k] = 0;
            serves[k] += 1;
            let next = sizes.next(MIN_ITEM, MAX_ITEM);
            s.push(id, next, next);
        }
    }

    /// (3) Express goes first when the weighted side is idle, and with both
    /// sides saturated it takes its cap (it has priority up to it), within 1%.
    #[test]
    fn express_share_is_capped(
        weighted in prop::collection::vec(1u32..=1000, 1..=4),
        express in prop::collection::vec(1u32..=1000, 1..=3),
        share in 0.05f64..=1.0,
        seed in any::<u64>(),
    ) {
        let mut classes: Vec<_> = weighted.iter().map(|&w| ServiceClass::new(w, false)).collect();
        classes.extend(express.iter().map(|&w| ServiceClass::new(w, true)));
        let is_express = |id: ServiceId| usize::from(id.0) >= weighted.len();
        let mut sizes = Sizes::new(seed);
        let mut s = Scheduler::new(Mode::Weighted, share);
        let ids: Vec<ServiceId> = classes.iter().map(|&c| s.add_service(c)).collect();

        // Weighted idle: express items are served freely, one after another.
        for &id in ids.iter().filter(|&&id| is_express(id)) {
            s.push(id, MAX_ITEM, MAX_ITEM);
            s.push(id, MAX_ITEM, MAX_ITEM);
        }
        for _ in 0..2 * express.len() {
            prop_assert!(is_express(s.pop().unwrap().0));
        }
        // Both sides arrive: express first.
        for &id in &ids {
            for _ in 0..4 {
                let cost = sizes.next(1, MAX_ITEM);
                s.push(id, cost, cost);
            }
        }
        prop_assert!(is_express(s.pop().unwrap().0));

        let (mut express_bytes, mut total) = (0u64, 0u64);
        while total < 4 * CONTENTION_WINDOW {
            let (id, cost) = s.pop().unwrap();
            total += cost;
            if is_express(id) {
                express_bytes += cost;
            }
            let next = sizes.next(1, MAX_ITEM);
            s.push(id, next, next);
        }
        let actual = express_bytes as f64 / total as f64;
        prop_assert!((actual - share).abs() <= 0.01, "express share {actual:.4}, cap {share:.4}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8, u64),
    Pop,
    PopOldest(u8),
    SetClass(u8, u32, bool),
    SetMode(bool),
}

fn op(push: u32, pop: u32, oldest: u32, other: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        push => (any::<u8>(), 0u64..=70_000).prop_map(|(s, c)| Op::Push(s, c)),
        pop => Just(Op::Pop),
        oldest => any::<u8>().prop_map(Op::PopOldest),
        other => (any::<u8>(), 0u32..=1100, any::<bool>()).prop_map(|(s, w, e)| Op::SetClass(s, w, e)),
        other => any::<bool>().prop_map(Op::SetMode),
    ]
}

fn class() -> impl Strategy<Value = ServiceClass> {
    (1u32..=1000, prop::bool::weighted(0.3)).prop_map(|(w, e)| ServiceClass::new(w, e))
}

proptest! {
    #![proptest_config(config(128))]

    /// (4) Services that are idle (never used, or used and emptied by
    /// `pop_oldest_of`) change nothing in the order of pops among the others.
    #[test]
    fn idle_services_cost_nothing(
        active in prop::collection::vec(class(), 2..=5),
        idle in prop::collection::vec((class(), 0usize..=5, 0usize..=3), 1..=5),
        share in 0.1f64..=1.0,
        ops in prop::collection::vec(op(3, 2, 0, 0), 1..400),
    ) {
        let mut plain = Scheduler::new(Mode::Weighted, share);
        let plain_ids: Vec<_> = active.iter().map(|&c| plain.add_service(c)).collect();

        // The same services with idle ones interleaved at random positions.
        let mut with_idle = Scheduler::new(Mode::Weighted, share);
        let mut idle_at = idle.clone();
        idle_at.sort_by_key(|&(_, pos, _)| pos);
        let (mut mapped, mut idle_ids, mut next_idle) = (Vec::new(), Vec::new(), 0);
        for (i, &c) in active.iter().enumerate() {
            while next_idle < idle_at.len() && idle_at[next_idle].1 <= i {
                let (class, _, used) = idle_at[next_idle];
                idle_ids.push((with_idle.add_service(class), used));
                next_idle += 1;
            }
            mapped.push(with_idle.add_service(c));
        }
        for &(class, _, used) in &idle_at[next_idle..] {
            idle_ids.push((with_idle.add_service(class), used));
        }
        for &(id, used) in &idle_ids {
            for _ in 0..used {
                with_idle.push(id, MAX_ITEM, u64::MAX);
            }
            for _ in 0..used {
                with_idle.pop_oldest_of(id);
            }
        }

        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push(svc, cost) => {
                    let i = usize::from(svc) % active.len();
                    plain.push(plain_ids[i], cost, n as u64);
                    with_idle.push(mapped[i], cost, n as u64);
                }
                _ => {
                    let a = plain.pop().map(|(_, item)| item);
                    let b = with_idle.pop().map(|(_, item)| item);
                    prop_assert_eq!(a, b);
                }
            }
        }
        let rest_a: Vec<_> = std::iter::from_fn(|| plain.pop()).map(|(_, i)| i).collect();
        let rest_b: Vec<_> = std::iter::from_fn(|| with_idle.pop()).map(|(_, i)| i).collect();
        prop_assert_eq!(rest_a, rest_b);
    }
}

/// The reference: per-service FIFO queues of (item, cost); items are numbered
/// in push order, so the globally oldest item is the smallest front.
struct Model(Vec<VecDeque<(u64, u64)>>);

impl Model {
    fn check(&self, s: &Scheduler<u64>, ids: &[ServiceId]) -> Result<(), TestCaseError> {
        let mut total = 0;
        for (q, &id) in self.0.iter().zip(ids) {
            prop_assert_eq!(s.queued_items(id), q.len());
            prop_assert_eq!(s.queued_bytes(id), q.iter().map(|&(_, c)| c).sum::<u64>());
            prop_assert_eq!(s.front(id), q.front().map(|(item, _)| item));
            total += q.len();
        }
        prop_assert_eq!(s.total_items(), total);
        prop_assert_eq!(s.is_empty(), total == 0);
        Ok(())
    }

    fn oldest(&self) -> Option<u64> {
        self.0.iter().filter_map(|q| q.front().map(|&(item, _)| item)).min()
    }

    /// A pop of `item` from service `svc` must be that service's front.
    fn popped(&mut self, svc: ServiceId, item: u64) -> Result<(), TestCaseError> {
        let front = self.0[usize::from(svc.0)].pop_front();
        prop_assert_eq!(front.map(|(i, _)| i), Some(item), "service {:?} out of order", svc);
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// (5) Any interleaving of push, pop, pop_oldest_of, set_class and
    /// set_mode keeps each service's FIFO order, the counts and bytes, and
    /// pops every pushed item exactly once (Fifo mode: in arrival order).
    #[test]
    fn fifo_per_service_and_conservation(
        classes in prop::collection::vec(class(), 1..=6),
        share in 0.01f64..=1.0,
        ops in prop::collection::vec(op(6, 4, 1, 1), 1..400),
    ) {
        let mut s = Scheduler::new(Mode::Weighted, share);
        let ids: Vec<_> = classes.iter().map(|&c| s.add_service(c)).collect();
        let mut model = Model(vec![VecDeque::new(); ids.len()]);
        let (mut pushed, mut popped, mut dropped) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Push(svc, cost) => {
                    let i = usize::from(svc) % ids.len();
                    s.push(ids[i], cost, pushed);
                    model.0[i].push_back((pushed, cost.max(1)));
                    pushed += 1;
                }
                Op::Pop => {
                    let oldest = model.oldest();
                    match s.pop() {
                        Some((id, item)) => {
                            if s.mode() == Mode::Fifo {
                                prop_assert_eq!(Some(item), oldest);
                            }
                            model.popped(id, item)?;
                            popped += 1;
                        }
                        None => prop_assert_eq!(oldest, None),
                    }
                }
                Op::PopOldest(svc) => {
                    let i = usize::from(svc) % ids.len();
                    let expected = model.0[i].pop_front().map(|(item, cost)| (cost, item));
                    dropped += u64::from(expected.is_some());
                    prop_assert_eq!(s.pop_oldest_of(ids[i]), expected);
                }
                Op::SetClass(svc, weight, express) => {
                    let i = usize::from(svc) % ids.len();
                    s.set_class(ids[i], ServiceClass { weight, express });
                    prop_assert_eq!(s.class(ids[i]), ServiceClass::new(weight, express));
                }
                Op::SetMode(fifo) => s.set_mode(if fifo { Mode::Fifo } else { Mode::Weighted }),
            }
            model.check(&s, &ids)?;
        }
        while let Some((id, item)) = s.pop() {
            model.popped(id, item)?;
            popped += 1;
        }
        model.check(&s, &ids)?;
        prop_assert!(model.0.iter().all(VecDeque::is_empty));
        prop_assert_eq!(popped + dropped, pushed);
    }

    /// (6) Fifo mode pops in global arrival order, whatever the services'
    /// classes, also after `pop_oldest_of` removed items from the middle
    /// (pushes apply a drop-oldest policy at `cap` items per service, so
    /// removed items pile up behind the arrival order and get compacted).
    #[test]
    fn fifo_mode_is_arrival_order(
        classes in prop::collection::vec(class(), 1..=4),
        cap in 1usize..=8,
        pop_percent in 0u8..=20,
        ops in prop::collection::vec((0u8..100, op(6, 0, 1, 0)), 1..600),
    ) {
        let mut s = Scheduler::new(Mode::Fifo, 0.5);
        let ids: Vec<_> = classes.iter().map(|&c| s.add_service(c)).collect();
        let mut model: VecDeque<(ServiceId, u64)> = VecDeque::new();
        let drop_oldest = |s: &mut Scheduler<u64>, model: &mut VecDeque<(ServiceId, u64)>, id| {
            let at = model.iter().position(|&(owner, _)| owner == id);
            let expected = at.and_then(|at| model.remove(at)).map(|(_, item)| item);
            prop_assert_eq!(s.pop_oldest_of(id).map(|(_, item)| item), expected);
            Ok(())
        };
        for (n, (roll, op)) in ops.into_iter().enumerate() {
            let op = if roll < pop_percent { Op::Pop } else { op };
            match op {
                Op::Push(svc, cost) => {
                    let id = ids[usize::from(svc) % ids.len()];
                    s.push(id, cost, n as u64);
                    model.push_back((id, n as u64));
                    if s.queued_items(id) > cap {
                        drop_oldest(&mut s, &mut model, id)?;
                    }
                }
                Op::PopOldest(svc) => drop_oldest(&mut s, &mut model, ids[usize::from(svc) % ids.len()])?,
                _ => prop_assert_eq!(s.pop(), model.pop_front()),
            }
            prop_assert_eq!(s.total_items(), model.len());
        }
        let rest: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
        prop_assert_eq!(rest, Vec::from(model));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// (7) A consumer that rebuilds its scheduler for every page from what is
    /// still unread, and resumes the saved turns, gets exactly the order one
    /// long-lived scheduler gives: paging does not reset the rounds (a fresh
    /// scheduler per page would serve the first service every page).
    #[test]
    fn resumed_pages_continue_the_rounds(
        classes in prop::collection::vec(class(), 1..=5),
        share in 0.1f64..=1.0,
        items in prop::collection::vec((any::<u8>(), 1u64..=20_000), 1..300),
        pages in prop::collection::vec(1usize..=8, 1..60),
    ) {
        let mut whole = Scheduler::new(Mode::Weighted, share);
        let ids: Vec<ServiceId> = classes.iter().map(|&c| whole.add_service(c)).collect();
        // Per service, the (cost, item) not yet delivered, oldest first.
        let mut unread: Vec<VecDeque<(u64, u64)>> = vec![VecDeque::new(); ids.len()];
        for (n, &(s, cost)) in (0u64..).zip(&items) {
            let at = usize::from(s) % ids.len();
            whole.push(ids[at], cost, n);
            unread[at].push_back((cost, n));
        }
        let mut turns = None;
        for &page in &pages {
            let mut paged = Scheduler::new(Mode::Weighted, share);
            for &c in &classes {
                paged.add_service(c);
            }
            // In arrival order, as `whole` got them (it matters only for
            // the first page: resuming restores every backlogged turn).
            let mut all: Vec<(u64, u64, ServiceId)> = ids
                .iter()
                .zip(&unread)
                .flat_map(|(&id, queue)| queue.iter().map(move |&(cost, n)| (n, cost, id)))
                .collect();
            all.sort_unstable();
            for (n, cost, id) in all {
                paged.push(id, cost, n);
            }
            if let Some(saved) = &turns {
                paged.resume(saved);
            }
            for _ in 0..page {
                let expected = whole.pop();
                prop_assert_eq!(paged.pop(), expected);
                if let Some((id, _)) = expected {
                    unread[usize::from(id.0)].pop_front();
                }
            }
            turns = Some(paged.turns());
        }
    }
}
