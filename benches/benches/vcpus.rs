#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! `msg_vcpus`: what more vCPUs than host cores cost. The message mesh
//! (`lwkt_benches::mesh`: a server and a client on every CPU, clients
//! sending batches of `sendmsg` and `domsg` to the other CPUs' servers) on
//! an lwkt machine of 2, 3, 4, 8 and 16 vCPUs, side by side with the same
//! workload on as many OS threads talking through `crossbeam-channel`s.
//! Throughput is messages per second (a request and its reply count once).
//!
//! Goals (issue 17): at every count lwkt moves at least as many messages
//! per second as the OS-thread design, and 16 vCPUs keep at least half of
//! the 2-vCPU rate.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lwkt_benches::{config, mesh};

/// Messages per sample: enough that a sample outlasts the host's scheduler
/// slices, few enough for CI's `--quick` runs.
const PER_SAMPLE: u64 = 20_000;

fn vcpus(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg_vcpus");
    for n in [2usize, 3, 4, 8, 16] {
        let per = mesh::per_client(PER_SAMPLE, n);
        g.throughput(Throughput::Elements(per * n as u64));
        g.bench_with_input(BenchmarkId::new("lwkt mesh", n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| mesh::lwkt(n, per)).sum())
        });
        g.bench_with_input(
            BenchmarkId::new("OS threads + crossbeam", n),
            &n,
            |b, &n| b.iter_custom(|iters| (0..iters).map(|_| mesh::os_threads(n, per)).sum()),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config().sample_size(10);
    targets = vcpus
}
criterion_main!(benches);
