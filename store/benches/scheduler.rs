//! Cost of one scheduling decision (a pop plus the push that keeps the
//! popped service backlogged) with 3, 30 and 300 services: all backlogged,
//! mixed weights and item sizes, one express service at the default 0.5 cap.
//! Each benchmark iteration is one decision, so criterion's time per
//! iteration is the time per decision.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_store::scheduler::{Mode, Scheduler, ServiceClass};

/// Items queued per service before measuring.
const DEPTH: usize = 8;

/// xorshift64: deterministic sizes without a dependency; `max_shift` picks
/// the largest item (64 B << max_shift).
struct Rng(u64, u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// Sizes spread evenly over powers of two from 64 B up.
    fn size(&mut self) -> u64 {
        64 << self.next(self.1 + 1)
    }
}

fn saturated(services: usize, mode: Mode, rng: &mut Rng) -> Scheduler<u64> {
    let mut s = Scheduler::new(mode, 0.5);
    for i in 0..services {
        let weight = [1u32, 10, 100, 250, 1000][i % 5];
        let id = s.add_service(ServiceClass::new(weight, i == 0));
        for _ in 0..DEPTH {
            let cost = rng.size();
            s.push(id, cost, cost);
        }
    }
    s
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_decision");
    group.throughput(Throughput::Elements(1));
    // Items of 64 B..64 KiB, and of 64 B..1 MiB where the lightest services
    // wait many rounds for an item and fast-forwarding kicks in.
    let cases =
        [("weighted", Mode::Weighted, 10), ("weighted_1MiB", Mode::Weighted, 14), ("fifo", Mode::Fifo, 10)];
    for (name, mode, max_shift) in cases {
        for services in [3usize, 30, 300] {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d, max_shift);
            let mut s = saturated(services, mode, &mut rng);
            group.bench_with_input(BenchmarkId::new(name, services), &services, |b, _| {
                b.iter(|| {
                    if let Some((id, cost)) = s.pop() {
                        let next = rng.size();
                        s.push(id, next, black_box(cost));
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
