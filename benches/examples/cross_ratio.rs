//! The cross-CPU `domsg` round trip against the cache-line ping-pong,
//! both measured between the same two lwkt threads, on CPU 0 and CPU 1 of
//! one 2-vCPU hosted machine, in alternating batches
//! ([`lwkt_benches::cross_pair::cross_cpu_batches`]): wherever the host
//! puts the two vCPU threads (the ratio of separate runs follows that
//! placement, docs/benchmark-notes.md), each batch pair sees the same
//! placement, so the ratio per pair is what to read. Prints the medians and
//! the quartiles of both and of the per-pair ratio.
//!
//! `cargo run --release -p lwkt-benches --example cross_ratio -- [PAIRS] [ROUNDS]`
//! (default 200 pairs of 2000 round trips each).

use lwkt_benches::cross_pair::cross_cpu_batches;

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: u64 = args.next().map_or(200, |v| v.parse().expect("PAIRS"));
    let rounds: u64 = args.next().map_or(2000, |v| v.parse().expect("ROUNDS"));
    assert!(pairs > 0 && rounds > 0);
    let batches = cross_cpu_batches(pairs * rounds, rounds);
    let per_round = |d: std::time::Duration, n: u64| d.as_nanos() as f64 / n as f64;
    let mut dm: Vec<f64> = batches.iter().map(|&(n, d, _)| per_round(d, n)).collect();
    let mut pp: Vec<f64> = batches.iter().map(|&(n, _, p)| per_round(p, n)).collect();
    let mut ratio: Vec<f64> = dm.iter().zip(&pp).map(|(d, p)| d / p).collect();
    for v in [&mut pp, &mut dm, &mut ratio] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "{pairs} pairs of {rounds} round trips: ping-pong median {:.1} ns (quartiles {:.1}-{:.1}), \
         domsg median {:.1} ns ({:.1}-{:.1}); domsg / ping-pong per pair: median {:.2}x \
         (quartiles {:.2}-{:.2}, min {:.2}, max {:.2})",
        quantile(&pp, 0.5),
        quantile(&pp, 0.25),
        quantile(&pp, 0.75),
        quantile(&dm, 0.5),
        quantile(&dm, 0.25),
        quantile(&dm, 0.75),
        quantile(&ratio, 0.5),
        quantile(&ratio, 0.25),
        quantile(&ratio, 0.75),
        ratio[0],
        ratio[ratio.len() - 1],
    );
}
