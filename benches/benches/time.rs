#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! Time and interrupts, side by side in one run:
//!
//! - `intr_latency`: a device interrupt raised on the other vCPU of a
//!   hosted machine, whose interrupt thread preempts a busy thread there,
//!   vs a signal whose handler wakes a parked OS thread through its futex
//!   (`lwkt_demo::latency`); one element = one raise-to-running round trip;
//! - `timer_lateness`: how late a 1 ms `Cur::sleep_for` wakes vs
//!   `std::thread::sleep(1 ms)`; the measured "time" of one element is the
//!   lateness alone (the sleep's own millisecond is subtracted).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lwkt_benches::{config, on_lwkt};
use lwkt_demo::latency;

fn intr_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("intr_latency");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt raise_interrupt -> interrupt thread preempts", |b| {
        b.iter_custom(|iters| {
            let n = iters as usize;
            on_lwkt(2, |cur| latency::lwkt_interrupt(cur, n))
                .iter()
                .sum()
        })
    });
    g.bench_function("signal handler -> futex wake of a parked OS thread", |b| {
        b.iter_custom(|iters| latency::signal_futex(iters as usize).iter().sum())
    });
    g.finish();
}

const NAP: Duration = Duration::from_millis(1);

fn lateness(iters: u64, mut sleep: impl FnMut()) -> Duration {
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            sleep();
            t.elapsed().saturating_sub(NAP)
        })
        .sum()
}

fn timer_lateness(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_lateness");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt Cur::sleep_for(1 ms)", |b| {
        b.iter_custom(|iters| on_lwkt(1, |cur| lateness(iters, || cur.sleep_for(NAP))))
    });
    g.bench_function("std::thread::sleep(1 ms)", |b| {
        b.iter_custom(|iters| lateness(iters, || std::thread::sleep(NAP)))
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = intr_latency, timer_lateness }
criterion_main!(benches);
