#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! Tokens against mutexes, side by side in one run:
//!
//! - `token_uncontended`: get+release of a free token (and recursion by the
//!   holder) vs lock+unlock of `std::sync::Mutex`, `parking_lot::Mutex`,
//!   `spin::Mutex`;
//! - `token_shared_struct/{1,2}cpu`: every CPU updates one counter under one
//!   token vs under one mutex (the contended design);
//! - `token_partitioned/{1,2}cpu`: each CPU updates its own counter under its
//!   own token vs its own mutex (the LWKT way: partition, then lock locally);
//! - `blocking_holder`: a holder that blocks for 1 ms at a time while holding,
//!   and another CPU that wants the same resource: operations the other CPU
//!   completes in a fixed window. A token is given up while its holder is
//!   blocked; a mutex is not.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lwkt_benches::{
    config, cores, on_lwkt, pin, time_on_lwkt, with_blocked_mutex_holder,
    with_blocked_token_holder, HOLDER_DATA, HOLDER_TOKEN,
};
use lwkt_core::token::{Token, TokenCell};
use lwkt_core::CpuId;

/// 128-byte alignment (the spatial prefetcher pulls line pairs).
#[repr(align(128))]
struct CachePadded<T>(T);
impl<T> CachePadded<T> {
    const fn new(t: T) -> Self {
        CachePadded(t)
    }
}

fn uncontended(c: &mut Criterion) {
    static TOK: Token = Token::new("bench");
    let mut g = c.benchmark_group("token_uncontended");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt token get+release", |b| {
        b.iter_custom(|iters| {
            time_on_lwkt(1, |cur| {
                for _ in 0..iters {
                    cur.with_token(black_box(&TOK), |_, h| {
                        black_box(h);
                    });
                }
            })
        })
    });
    g.bench_function("lwkt token recursive get+release", |b| {
        b.iter_custom(|iters| {
            on_lwkt(1, |cur| {
                cur.with_token(&TOK, |cur, _| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        cur.with_token(black_box(&TOK), |_, h| {
                            black_box(h);
                        });
                    }
                    t.elapsed()
                })
            })
        })
    });
    let m = std::sync::Mutex::new(0u64);
    g.bench_function("std::sync::Mutex lock+unlock", |b| {
        b.iter(|| *black_box(&m).lock().unwrap() += 1)
    });
    let m = parking_lot::Mutex::new(0u64);
    g.bench_function("parking_lot::Mutex lock+unlock", |b| {
        b.iter(|| *black_box(&m).lock() += 1)
    });
    let m = spin::Mutex::new(0u64);
    g.bench_function("spin::Mutex lock+unlock", |b| {
        b.iter(|| *black_box(&m).lock() += 1)
    });
    g.finish();
}

/// LWKT: one thread per CPU, each doing `per` increments of the counter its
/// `pick` chooses, under that counter's token.
fn lwkt_counters(ncpus: usize, per: u64, partitioned: bool) -> Duration {
    // Each CPU's token and data on their own cache lines (no false sharing).
    static TOKS: [CachePadded<Token>; 2] = [
        CachePadded::new(Token::new("c0")),
        CachePadded::new(Token::new("c1")),
    ];
    static CELLS: [CachePadded<TokenCell<'static, u64>>; 2] = [
        CachePadded::new(TokenCell::new(&TOKS[0].0, 0)),
        CachePadded::new(TokenCell::new(&TOKS[1].0, 0)),
    ];
    on_lwkt(ncpus, |cur| {
        let go = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..ncpus)
            .map(|c| {
                let go = go.clone();
                cur.spawn_on(CpuId::new(c as u32), move |me| {
                    let i = if partitioned { c } else { 0 };
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    for _ in 0..per {
                        me.with_token(&TOKS[i].0, |me, h| *CELLS[i].0.get_mut(h, me) += 1);
                    }
                })
                .unwrap()
            })
            .collect();
        let t = Instant::now();
        go.store(true, Ordering::Release);
        for h in &hs {
            cur.join(h);
        }
        t.elapsed()
    })
}

/// Mutex design: one pinned OS thread per core, same work.
fn mutex_counters<M: Sync + Send + 'static>(
    n: usize,
    per: u64,
    partitioned: bool,
    locks: Arc<[CachePadded<M>; 2]>,
    inc: fn(&M),
) -> Duration {
    let start = Arc::new(Barrier::new(n + 1));
    let hs: Vec<_> = (0..n)
        .map(|c| {
            let (start, locks) = (start.clone(), locks.clone());
            std::thread::spawn(move || {
                pin(c % cores());
                let i = if partitioned { c } else { 0 };
                start.wait();
                for _ in 0..per {
                    inc(&locks[i].0);
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

fn counters(c: &mut Criterion, group: &str, partitioned: bool) {
    let mut g = c.benchmark_group(group);
    for n in [1usize, 2] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("lwkt token", format!("{n}cpu")),
            &n,
            |b, &n| b.iter_custom(|iters| lwkt_counters(n, iters.div_ceil(n as u64), partitioned)),
        );
        mutex_row(
            &mut g,
            "std Mutex",
            n,
            partitioned,
            std::sync::Mutex::new,
            |m| *m.lock().unwrap() += 1,
        );
        mutex_row(
            &mut g,
            "parking_lot Mutex",
            n,
            partitioned,
            parking_lot::Mutex::new,
            |m| *m.lock() += 1,
        );
        mutex_row(
            &mut g,
            "spin Mutex",
            n,
            partitioned,
            spin::Mutex::new,
            |m| *m.lock() += 1,
        );
    }
    g.finish();
}

/// One mutex design's row: `n` pinned threads incrementing counters under
/// locks made by `new` (one shared, or one each when `partitioned`).
fn mutex_row<M: Send + Sync + 'static>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    partitioned: bool,
    new: fn(u64) -> M,
    inc: fn(&M),
) {
    let locks = Arc::new([CachePadded::new(new(0)), CachePadded::new(new(0))]);
    g.bench_with_input(BenchmarkId::new(name, format!("{n}cpu")), &n, |b, &n| {
        b.iter_custom(|iters| {
            mutex_counters(n, iters.div_ceil(n as u64), partitioned, locks.clone(), inc)
        })
    });
}

fn shared_struct(c: &mut Criterion) {
    counters(c, "token_shared_struct", false);
}

fn partitioned(c: &mut Criterion) {
    counters(c, "token_partitioned", true);
}

/// The case tokens were made for. One element = one operation by the
/// *other* CPU, while a holder repeatedly takes the resource, blocks for
/// 1 ms holding it, then works 1 ms without it.
///
/// LWKT: the holder blocks on a wait queue (a timer thread on its CPU wakes
/// it after 1 ms; lwkt has no timed sleep yet), so its token is released
/// while it sleeps. Mutex: the holder sleeps with the lock held.
fn blocking_holder(c: &mut Criterion) {
    let mut g = c.benchmark_group("blocking_holder");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.bench_function("lwkt token (holder blocked 1 ms holding it)", |b| {
        b.iter_custom(|iters| {
            with_blocked_token_holder(|cur| {
                let t = Instant::now();
                for _ in 0..iters {
                    cur.with_token(&HOLDER_TOKEN, |cur, h| *HOLDER_DATA.get_mut(h, cur) += 1);
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("parking_lot Mutex (holder sleeps 1 ms holding it)", |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(parking_lot::Mutex::new(0u64));
            with_blocked_mutex_holder(&m, || {
                let t = Instant::now();
                for _ in 0..iters {
                    *m.lock() += 1;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = uncontended, shared_struct, partitioned, blocking_holder }
criterion_main!(benches);
