//! Many short two-core streams through lwkt's IPI ring (`u64` entries,
//! 256 slots; producer pinned to core 0, consumer to core 1, the consumer
//! popping through `&self` as the IPI drain does, except in `handles`), for A/B comparisons on
//! a shared machine: a short trial often runs without either thread being
//! descheduled, so the low quantiles of many trials are stable where
//! criterion's samples of a few milliseconds are not.
//!
//! `ring_stream MODE TRIALS MSGS`: MODE `batch32` (`push_batch` of 32, as
//! `ipi_ring`'s "batches of 32"), `unbatched` (`push`), `handles` (a
//! `Producer` and a `Consumer` handle, unbatched) or `rtrb` (the same
//! stream through `rtrb`, for reference); prints the min,
//! 10th and 25th percentile and median nanoseconds per message over
//! `TRIALS` trials of `MSGS` messages.

use lwkt_benches::ring_streams::{self, Mode};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(trials), Some(msgs)) = (
        a.get(1).cloned(),
        a.get(2).and_then(|t| t.parse::<usize>().ok()),
        a.get(3).and_then(|m| m.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: ring_stream batch32|unbatched|handles|rtrb TRIALS MSGS");
        std::process::exit(2);
    };
    assert!(
        trials > 0 && msgs > 0,
        "ring_stream: TRIALS and MSGS must be positive"
    );
    let Some(m) = Mode::parse(&mode) else {
        eprintln!("ring_stream: unknown mode {mode:?}");
        std::process::exit(2);
    };
    let mut per: Vec<f64> = (0..trials)
        .map(|_| ring_streams::stream(m, msgs).as_nanos() as f64 / msgs as f64)
        .collect();
    per.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{mode}: min {:.2} p10 {:.2} p25 {:.2} median {:.2} ns/msg ({trials} trials of {msgs})",
        per[0],
        per[trials / 10],
        per[trials / 4],
        per[trials / 2]
    );
}
