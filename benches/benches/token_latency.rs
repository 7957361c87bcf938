#![allow(missing_docs)]
//! Latency seen by the *other* CPU while a holder blocks for 1 ms at a time
//! holding the resource (issue 3's "others' latency"): a token is given up
//! while its holder is blocked; a mutex is not.
//!
//! Not a criterion bench: it records every operation's latency for a fixed
//! 300 ms per design (interleaved A, B, A, B) and prints percentiles.
//! `cargo bench -p lwkt-benches --bench token_latency`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwkt_benches::{cores, on_lwkt, pin};
use lwkt_core::token::{Token, TokenCell};
use lwkt_core::{CpuId, WaitQueue};

const RUN: Duration = Duration::from_millis(300);
const MS: Duration = Duration::from_millis(1);

fn lwkt() -> Vec<u32> {
    static TOK: Token = Token::new("latency");
    static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    static TICK: WaitQueue = WaitQueue::new();
    on_lwkt(2, |cur| {
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, s3) = (stop.clone(), stop.clone());
        let timer = cur
            .spawn_on(CpuId::new(1), move |me| {
                while !s3.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    while t.elapsed() < MS {
                        std::hint::spin_loop();
                    }
                    TICK.signal(me.my_cpu());
                    me.yield_now();
                }
            })
            .unwrap();
        let holder = cur
            .spawn_on(CpuId::new(1), move |me| {
                while !s2.load(Ordering::Relaxed) {
                    me.with_token(&TOK, |me, h| {
                        *DATA.get_mut(h, me) += 1;
                        TICK.block(me);
                    });
                    TICK.block(me);
                }
            })
            .unwrap();
        let mut lat = Vec::with_capacity(1 << 20);
        let end = Instant::now() + RUN;
        while Instant::now() < end {
            let t = Instant::now();
            cur.with_token(&TOK, |cur, h| *DATA.get_mut(h, cur) += 1);
            lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        }
        stop.store(true, Ordering::Relaxed);
        cur.join(&timer);
        TICK.signal(cur.my_cpu());
        cur.join(&holder);
        lat
    })
}

fn mutex() -> Vec<u32> {
    let m = Arc::new(parking_lot::Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let (m2, s2) = (m.clone(), stop.clone());
    let holder = std::thread::spawn(move || {
        pin(1 % cores());
        while !s2.load(Ordering::Relaxed) {
            let mut g = m2.lock();
            *g += 1;
            std::thread::sleep(MS);
            drop(g);
            std::thread::sleep(MS);
        }
    });
    pin(0);
    let mut lat = Vec::with_capacity(1 << 20);
    let end = Instant::now() + RUN;
    while Instant::now() < end {
        let t = Instant::now();
        *m.lock() += 1;
        lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    stop.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    lwkt_benches::unpin();
    lat
}

fn report(name: &str, runs: &[Vec<u32>]) {
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
    report("lwkt token (holder blocked 1 ms holding it)", &a);
    report("parking_lot Mutex (holder sleeps 1 ms holding it)", &b);
}
