#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! lwkt-core against what a user would pick instead, side by side in one run:
//!
//! - `switch`: a same-CPU LWKT thread switch vs an OS-thread hand-off
//!   (Mutex+Condvar ping-pong on one core) vs `std::thread::yield_now`
//!   (alone, and ping-ponging with a second thread on the same core);
//! - `crit`: `crit_enter`+`crit_exit` vs an atomic `fetch_add` vs two plain
//!   increments;
//! - `ipi_ring`: messages between two pinned threads through lwkt's IPI ring
//!   (unbatched and in batches of 32) vs `rtrb` vs `crossbeam-channel`;
//! - `ipi_path`: the whole IPI path on a 2-CPU hosted machine (ring, doorbell,
//!   kicks, dispatch on the target), `send_ipi` vs `send_ipi_batch` of 32;
//! - `callout`: arming and stopping a timer: a `Callout`'s `reset_at` +
//!   `stop` on its own CPU (an insert into and a removal from the CPU's
//!   timing wheel, the deadline computed once as tokio's is), and `reset` +
//!   `stop` (the same with a clock read per arm), and `reset_at` of an armed
//!   callout to the other of two deadlines (a move, as tokio's reset is) vs a `tokio::time::Sleep`'s
//!   `reset` to another deadline (a removal from and an insert into tokio's
//!   timer wheel; the deadline is computed once, outside the loop).

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lwkt_benches::ring_streams::{self, Mode};
use lwkt_benches::{config, on_lwkt, pin, time_on_lwkt, two_cores, unpin};
use lwkt_core::{CpuId, IpiMsg, MyCpu};

fn switch(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(1));
    // One element = one thread switch.
    g.bench_function("lwkt same-CPU switch", |b| {
        b.iter_custom(|iters| {
            on_lwkt(1, |cur| {
                let stop = Arc::new(AtomicBool::new(false));
                let s2 = stop.clone();
                let partner = cur
                    .spawn_on(CpuId::new(0), move |me| {
                        while !s2.load(Ordering::Relaxed) {
                            me.yield_now();
                        }
                    })
                    .unwrap();
                cur.yield_now(); // partner starts
                let t = Instant::now();
                for _ in 0..iters.div_ceil(2) {
                    cur.yield_now(); // to the partner and back: two switches
                }
                let d = t.elapsed();
                stop.store(true, Ordering::Relaxed);
                cur.join(&partner);
                d
            })
        })
    });
    g.bench_function("OS hand-off (Mutex+Condvar, one core)", |b| {
        b.iter_custom(|iters| {
            let pair = Arc::new((Mutex::new(false), Condvar::new()));
            let p2 = pair.clone();
            let n = iters.div_ceil(2);
            let start = Arc::new(Barrier::new(2));
            let s2 = start.clone();
            let partner = std::thread::spawn(move || {
                pin(0);
                s2.wait();
                let (m, cv) = &*p2;
                for _ in 0..n {
                    let mut turn = m.lock().unwrap();
                    while !*turn {
                        turn = cv.wait(turn).unwrap();
                    }
                    *turn = false;
                    drop(turn);
                    cv.notify_one();
                }
            });
            pin(0);
            start.wait();
            let (m, cv) = &*pair;
            let t = Instant::now();
            for _ in 0..n {
                let mut turn = m.lock().unwrap();
                *turn = true;
                drop(turn);
                cv.notify_one();
                let mut turn = m.lock().unwrap();
                while *turn {
                    turn = cv.wait(turn).unwrap();
                }
            }
            let d = t.elapsed();
            partner.join().unwrap();
            unpin();
            d
        })
    });
    g.bench_function("std::thread::yield_now", |b| b.iter(std::thread::yield_now));
    g.bench_function("std::thread::yield_now, two threads on one core", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let start = Arc::new(Barrier::new(2));
            let b2 = start.clone();
            let partner = std::thread::spawn(move || {
                pin(0);
                b2.wait();
                while !s2.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
            });
            pin(0);
            start.wait();
            let t = Instant::now();
            for _ in 0..iters.div_ceil(2) {
                std::thread::yield_now(); // to the partner and back: two switches
            }
            let d = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            partner.join().unwrap();
            unpin();
            d
        })
    });
    g.finish();
}

fn crit(c: &mut Criterion) {
    let mut g = c.benchmark_group("crit");
    g.throughput(Throughput::Elements(1));
    // All three loops run in an LWKT thread and are timed there, the same way.
    g.bench_function("lwkt crit_enter+crit_exit", |b| {
        b.iter_custom(|iters| {
            time_on_lwkt(1, |cur| {
                for _ in 0..iters {
                    let c = black_box(&*cur);
                    c.crit_enter();
                    c.crit_exit();
                }
            })
        })
    });
    g.bench_function("AtomicU64::fetch_add", |b| {
        b.iter_custom(|iters| {
            time_on_lwkt(1, |_| {
                let a = AtomicU64::new(0);
                for _ in 0..iters {
                    black_box(&a).fetch_add(1, Ordering::Relaxed);
                }
                black_box(a.load(Ordering::Relaxed));
            })
        })
    });
    g.bench_function("two plain increments", |b| {
        b.iter_custom(|iters| {
            time_on_lwkt(1, |_| {
                let mut x = 0u64;
                for _ in 0..iters {
                    // Each black_box makes the value live in memory: two
                    // load-add-store sequences, as crit_enter/crit_exit do.
                    let p = black_box(&mut x);
                    *p += 1;
                    let p = black_box(p);
                    *p += 1;
                }
                black_box(x);
            })
        })
    });
    g.finish();
}

fn ipi_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipi_ring");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in [
        ("lwkt ring, unbatched", Mode::Unbatched),
        ("lwkt ring, unbatched, handles", Mode::Handles),
        ("lwkt ring, batches of 32", Mode::Batch32),
        ("rtrb", Mode::Rtrb),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| ring_streams::stream(mode, iters))
        });
    }
    g.bench_function("crossbeam-channel bounded(256)", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(256);
            two_cores(
                iters,
                move |n| {
                    for i in 0..n {
                        tx.send(i).unwrap();
                    }
                },
                move |n| {
                    for _ in 0..n {
                        black_box(rx.recv().unwrap());
                    }
                },
            )
        })
    });
    g.finish();
}

/// Messages the IPI function has run (one sample at a time uses it).
static IPIS_RUN: AtomicU64 = AtomicU64::new(0);

fn count_ipi(_: MyCpu<'_>, _: usize, _: usize) {
    IPIS_RUN.fetch_add(1, Ordering::Relaxed);
}

/// On a 2-CPU machine, send `iters` IPIs from CPU 0 to CPU 1 in batches of
/// `batch` messages (`send_ipi` when 1) and time until CPU 1 has run them all.
fn ipi_path_sample(iters: u64, batch: usize) -> Duration {
    unpin(); // the machine pins its vCPUs among the caller's allowed cores
    on_lwkt(2, |cur| {
        let to = CpuId::new(1);
        IPIS_RUN.store(0, Ordering::SeqCst);
        let msgs = vec![
            IpiMsg {
                func: count_ipi,
                arg1: 0,
                arg2: 0,
            };
            batch
        ];
        let t = Instant::now();
        let mut sent = 0u64;
        while sent < iters {
            let k = (iters - sent).min(batch as u64) as usize;
            if k == 1 {
                cur.my_cpu().send_ipi(to, count_ipi, 0, 0).unwrap();
            } else {
                cur.my_cpu().send_ipi_batch(to, &msgs[..k]).unwrap();
            }
            sent += k as u64;
        }
        while IPIS_RUN.load(Ordering::Acquire) < iters {
            std::hint::spin_loop();
        }
        t.elapsed()
    })
}

fn ipi_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipi_path");
    g.throughput(Throughput::Elements(1));
    // One element = one message queued on CPU 0 and run on CPU 1.
    g.bench_function("lwkt send_ipi, CPU 0 -> CPU 1", |b| {
        b.iter_custom(|iters| ipi_path_sample(iters, 1))
    });
    g.bench_function("lwkt send_ipi_batch of 32, CPU 0 -> CPU 1", |b| {
        b.iter_custom(|iters| ipi_path_sample(iters, 32))
    });
    g.finish();
}

/// A callout that does nothing when it fires (the benches never let it).
type Idle = lwkt_core::Callout<fn(lwkt_core::Fired<'_>)>;

fn nothing(_: lwkt_core::Fired<'_>) {}

/// `iters` operations on one callout of a one-CPU machine, timed: `op`
/// gets the callout, the CPU, the operation's number and a time of the
/// machine's clock an hour on (computed once, as tokio's bench does).
fn callout_ops(
    iters: u64,
    op: impl Fn(core::pin::Pin<&Idle>, MyCpu<'_>, u64, u64) + Send,
) -> Duration {
    time_on_lwkt(1, move |cur| {
        let c: core::pin::Pin<&mut Idle> =
            core::pin::pin!(lwkt_core::Callout::new(nothing as fn(lwkt_core::Fired<'_>)));
        let my = cur.my_cpu();
        let later = my.clock().unwrap() + 3_600_000_000_000;
        for i in 0..iters {
            op(black_box(c.as_ref()), my, i, later);
        }
        c.as_ref().stop(my);
    })
}

fn callout(c: &mut Criterion) {
    let mut g = c.benchmark_group("callout");
    g.throughput(Throughput::Elements(1));
    // One element = one arm and one stop (lwkt), one reset (tokio).
    g.bench_function("lwkt Callout reset+stop", |b| {
        b.iter_custom(|iters| {
            callout_ops(iters, |c, my, _, _| {
                c.reset(my, Duration::from_secs(3600));
                black_box(c.stop(my));
            })
        })
    });
    g.bench_function("lwkt Callout reset_at+stop", |b| {
        b.iter_custom(|iters| {
            callout_ops(iters, |c, my, _, at| {
                c.reset_at(my, black_box(at));
                black_box(c.stop(my));
            })
        })
    });
    // What tokio's reset does: move an armed timer to another deadline
    // (the first operation arms it).
    g.bench_function("lwkt Callout reset_at of an armed callout", |b| {
        b.iter_custom(|iters| {
            callout_ops(iters, |c, my, i, at| {
                c.reset_at(my, at + (i & 1) * 1_000_000);
            })
        })
    });
    g.bench_function("tokio Sleep reset", |b| {
        b.iter_custom(|iters| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                let base = tokio::time::Instant::now() + Duration::from_secs(3600);
                let at = [base, base + Duration::from_millis(1)];
                let mut s = core::pin::pin!(tokio::time::sleep_until(base));
                // Registered in the wheel before the loop.
                std::future::poll_fn(|cx| {
                    let _ = s.as_mut().poll(cx);
                    std::task::Poll::Ready(())
                })
                .await;
                let t = Instant::now();
                for i in 0..iters {
                    black_box(s.as_mut()).reset(at[(i & 1) as usize]);
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = switch, crit, ipi_ring, ipi_path, callout }
criterion_main!(benches);
