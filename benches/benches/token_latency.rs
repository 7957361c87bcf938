#![allow(missing_docs)]
//! Latency seen by the *other* CPU while a holder blocks for 1 ms at a time
//! holding the resource (issue 3's "others' latency"): a token is given up
//! while its holder is blocked; a mutex is not.
//!
//! Not a criterion bench: it records every operation's latency for a fixed
//! 300 ms per design (interleaved A, B, A, B) and prints percentiles.
//! `cargo bench -p lwkt-benches --bench token_latency`

use std::sync::Arc;
use std::time::{Duration, Instant};

use lwkt_benches::{
    pin, unpin, with_blocked_mutex_holder, with_blocked_token_holder, HOLDER_DATA, HOLDER_TOKEN,
};

const RUN: Duration = Duration::from_millis(300);

fn record(mut op: impl FnMut()) -> Vec<u32> {
    let mut lat = Vec::with_capacity(1 << 20);
    let end = Instant::now() + RUN;
    while Instant::now() < end {
        let t = Instant::now();
        op();
        lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    lat
}

fn lwkt() -> Vec<u32> {
    with_blocked_token_holder(|cur| {
        record(|| cur.with_token(&HOLDER_TOKEN, |cur, h| *HOLDER_DATA.get_mut(h, cur) += 1))
    })
}

fn mutex() -> Vec<u32> {
    let m = Arc::new(parking_lot::Mutex::new(0u64));
    pin(0);
    let lat = with_blocked_mutex_holder(&m, || record(|| *m.lock() += 1));
    unpin();
    lat
}

/// Print one design's line and return it as a JSON object for the report.
fn report(name: &str, runs: &[Vec<u32>]) -> String {
    let mut all: Vec<u32> = runs.iter().flatten().copied().collect();
    all.sort_unstable();
    let q = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    let ops_per_run = all.len() / runs.len();
    let stalls: Vec<usize> = runs
        .iter()
        .map(|r| r.iter().filter(|&&ns| ns > 100_000).count())
        .collect();
    println!(
        "{name:<52} ops/300ms {ops_per_run:>8}  p50 {:>4} ns  p99.9 {:>5} ns  p99.99 {:>8} ns  max {:>8} ns  waits >100us per run {stalls:?}",
        q(0.5),
        q(0.999),
        q(0.9999),
        all[all.len() - 1]
    );
    format!(
        "{{\"design\":\"{name}\",\"ops_per_run\":{ops_per_run},\"p50\":{},\"p999\":{},\"p9999\":{},\"max\":{},\"waits_over_100us\":{}}}",
        q(0.5),
        q(0.999),
        q(0.9999),
        all[all.len() - 1],
        stalls.iter().sum::<usize>() as f64 / runs.len() as f64
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `--list` etc. from test harnesses: ignore.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("loadavg before: {}", load.trim());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.push(lwkt());
        b.push(mutex());
    }
    let rows = [
        report("lwkt token (holder blocked 1 ms holding it)", &a),
        report("parking_lot Mutex (holder sleeps 1 ms holding it)", &b),
    ];
    // For `cargo xtask bench-report`.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("token_latency.json"),
        format!("[\n{}\n]\n", rows.join(",\n")),
    );
}
