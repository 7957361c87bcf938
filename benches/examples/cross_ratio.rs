//! The cross-CPU `domsg` round trip against the cache-line ping-pong and
//! a bare mailbox round trip, all measured between the same two lwkt
//! threads, on CPU 0 and CPU 1 of one 2-vCPU hosted machine, in rotating
//! batches ([`lwkt_benches::cross_pair::cross_cpu_batches`]): wherever the
//! host puts the two vCPU threads (the ratio of separate runs follows that
//! placement, docs/benchmark-notes.md), each set of batches sees one
//! placement, so the ratio per set is what to read. Prints the medians
//! and the quartiles of each and of the per-set ratios.
//!
//! `cargo run --release -p lwkt-benches --example cross_ratio -- [SETS] [ROUNDS]`
//! (default 200 sets of 2000 round trips of each kind).

use lwkt_benches::cross_pair::{cross_cpu_batches, CrossBatch};

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nsets: u64 = args.next().map_or(200, |v| v.parse().expect("SETS"));
    let rounds: u64 = args.next().map_or(2000, |v| v.parse().expect("ROUNDS"));
    assert!(nsets > 0 && rounds > 0);
    let sets = cross_cpu_batches(nsets * rounds, rounds);
    let per_round = |d: std::time::Duration, n: u64| d.as_nanos() as f64 / n as f64;
    let sorted = |f: &dyn Fn(&CrossBatch) -> f64| {
        let mut v: Vec<f64> = sets.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let pp = sorted(&|s| per_round(s.ping_pong, s.rounds));
    let dm = sorted(&|s| per_round(s.domsg, s.rounds));
    let mb = sorted(&|s| per_round(s.mailbox, s.rounds));
    let ratio = sorted(&|s| s.domsg.as_secs_f64() / s.ping_pong.as_secs_f64());
    let mb_ratio = sorted(&|s| s.mailbox.as_secs_f64() / s.ping_pong.as_secs_f64());
    let spread = |v: &[f64]| {
        format!(
            "median {:.1} ns (quartiles {:.1}-{:.1})",
            quantile(v, 0.5),
            quantile(v, 0.25),
            quantile(v, 0.75)
        )
    };
    println!(
        "{nsets} sets of {rounds} round trips: ping-pong {}, domsg {}, mailbox {}; \
         domsg / ping-pong per set: median {:.2}x (quartiles {:.2}-{:.2}, min {:.2}, max {:.2}); \
         mailbox / ping-pong: median {:.2}x (quartiles {:.2}-{:.2})",
        spread(&pp),
        spread(&dm),
        spread(&mb),
        quantile(&ratio, 0.5),
        quantile(&ratio, 0.25),
        quantile(&ratio, 0.75),
        ratio[0],
        ratio[ratio.len() - 1],
        quantile(&mb_ratio, 0.5),
        quantile(&mb_ratio, 0.25),
        quantile(&mb_ratio, 0.75),
    );
}
