#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! lwkt-slab against the system allocator (glibc malloc) and `mimalloc`,
//! side by side in one run:
//!
//! - `slab_local`: one thread allocating and freeing one block of 16 B to
//!   4 KiB in a loop (the fast path of each allocator). lwkt-slab runs in an
//!   LWKT thread with `MyCpu` as its CPU context (a critical section, no
//!   atomics); `GlobalSlab` (the host adapter, one CAS per call) is shown
//!   too;
//! - `slab_two_local`: two threads on two cores, each allocating and
//!   freeing locally (per element: one alloc+free pair on one core);
//! - `slab_remote`: a producer on one core allocates 64-byte blocks and
//!   hands them through an SPSC ring to a consumer on the other core, which
//!   frees them: every free is remote (the case that hurts most
//!   allocators).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lwkt_benches::{config, on_lwkt, two_cores};
use lwkt_core::{CpuId, Cur};
use lwkt_slab::{Flags, GlobalSlab, HostedPages, MallocType, Slab};
use mimalloc::MiMalloc;

static M_BENCH: MallocType = MallocType::new("bench");
static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(1 << 30), 2);
static GSLAB: GlobalSlab = GlobalSlab::new(1 << 30, 2);
static MI: MiMalloc = MiMalloc;

const SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];

/// [`on_lwkt`] for the benches that use `SLAB`: each sample boots a fresh
/// machine, and a slab serves one machine at a time (a CPU index names a
/// CPU only within its machine), so `SLAB` is handed back after each run.
fn on_slab_machine<R: Send>(ncpus: usize, f: impl FnOnce(&mut Cur) -> R + Send) -> R {
    let r = on_lwkt(ncpus, f);
    // SAFETY: the machine has stopped: `run` returns after every CPU has
    // left its idle loop and its OS thread has been joined, so all of the
    // machine's uses of `SLAB` happened before this point; the next
    // machine is booted after it, on this thread.
    unsafe { SLAB.unbind() };
    r
}

/// `iters` alloc+free pairs of `size` through a `GlobalAlloc`.
fn pairs(a: &dyn GlobalAlloc, size: usize, iters: u64) -> Duration {
    let l = Layout::from_size_align(size, 8).unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: a non-zero layout; freed with the same layout.
        unsafe {
            let p = black_box(a.alloc(l));
            a.dealloc(p, l);
        }
    }
    t.elapsed()
}

/// `iters` alloc+free pairs of `size` through the slab on an LWKT thread.
fn slab_pairs(cur: &Cur, size: usize, iters: u64) -> Duration {
    let l = Layout::from_size_align(size, 8).unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        let p = black_box(SLAB.alloc(cur, l, &M_BENCH, Flags::NONE).unwrap());
        // SAFETY: allocated just above with `l`.
        unsafe { SLAB.free(cur, p, l, &M_BENCH) };
    }
    t.elapsed()
}

fn local(c: &mut Criterion) {
    let mut g = c.benchmark_group("slab_local");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        g.bench_with_input(
            BenchmarkId::new("lwkt-slab (LWKT thread)", size),
            &size,
            |b, &s| b.iter_custom(|iters| on_slab_machine(1, |cur| slab_pairs(cur, s, iters))),
        );
        g.bench_with_input(BenchmarkId::new("mimalloc", size), &size, |b, &s| {
            b.iter_custom(|iters| pairs(&MI, s, iters))
        });
        g.bench_with_input(BenchmarkId::new("system (glibc)", size), &size, |b, &s| {
            b.iter_custom(|iters| pairs(&System, s, iters))
        });
        g.bench_with_input(
            BenchmarkId::new("GlobalSlab (OS thread)", size),
            &size,
            |b, &s| b.iter_custom(|iters| pairs(&GSLAB, s, iters)),
        );
    }
    g.finish();
}

fn two_local(c: &mut Criterion) {
    let mut g = c.benchmark_group("slab_two_local");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt-slab, 2 CPUs", |b| {
        b.iter_custom(|iters| {
            on_slab_machine(2, |cur| {
                let other = cur
                    .spawn_on(CpuId::new(1), move |me| {
                        slab_pairs(me, 64, iters);
                    })
                    .unwrap();
                let d = slab_pairs(cur, 64, iters);
                cur.join(&other);
                d
            })
        })
    });
    g.bench_function("mimalloc, 2 threads", |b| {
        b.iter_custom(|iters| {
            two_cores(
                iters,
                |n| {
                    pairs(&MI, 64, n);
                },
                |n| {
                    pairs(&MI, 64, n);
                },
            )
        })
    });
    g.bench_function("system (glibc), 2 threads", |b| {
        b.iter_custom(|iters| {
            two_cores(
                iters,
                |n| {
                    pairs(&System, 64, n);
                },
                |n| {
                    pairs(&System, 64, n);
                },
            )
        })
    });
    g.finish();
}

/// Blocks cross cores as addresses through an rtrb ring.
fn remote_pairs(iters: u64, alloc: fn() -> usize, free: fn(usize)) -> Duration {
    let (mut p, mut q) = rtrb::RingBuffer::<usize>::new(1024);
    two_cores(
        iters,
        move |n| {
            for _ in 0..n {
                let a = alloc();
                while p.push(a).is_err() {
                    std::hint::spin_loop();
                }
            }
        },
        move |n| {
            let mut got = 0;
            while got < n {
                if let Ok(a) = q.pop() {
                    free(a);
                    got += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        },
    )
}

fn remote(c: &mut Criterion) {
    let mut g = c.benchmark_group("slab_remote");
    g.throughput(Throughput::Elements(1));
    const L: Layout = match Layout::from_size_align(64, 8) {
        Ok(l) => l,
        Err(_) => panic!(),
    };
    g.bench_function("lwkt-slab, LWKT threads on 2 CPUs", |b| {
        b.iter_custom(|iters| {
            on_slab_machine(2, |cur| {
                let (mut p, mut q) = rtrb::RingBuffer::<usize>::new(1024);
                let consumer = cur
                    .spawn_on(CpuId::new(1), move |me| {
                        let my = me.my_cpu();
                        let mut got = 0;
                        while got < iters {
                            if let Ok(a) = q.pop() {
                                let p = NonNull::new(a as *mut u8).unwrap();
                                // SAFETY: allocated on CPU 0 with `L`, freed once.
                                unsafe { SLAB.free(&my, p, L, &M_BENCH) };
                                got += 1;
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    })
                    .unwrap();
                let my = cur.my_cpu();
                let t = Instant::now();
                for _ in 0..iters {
                    let a = SLAB.alloc(&my, L, &M_BENCH, Flags::NONE).unwrap().as_ptr() as usize;
                    while p.push(a).is_err() {
                        std::hint::spin_loop();
                    }
                }
                let d = t.elapsed();
                cur.join(&consumer);
                d
            })
        })
    });
    g.bench_function("mimalloc", |b| {
        b.iter_custom(|iters| {
            // SAFETY: blocks of layout `L`, each freed once.
            remote_pairs(
                iters,
                || unsafe { MI.alloc(L) } as usize,
                |a| unsafe { MI.dealloc(a as *mut u8, L) },
            )
        })
    });
    g.bench_function("system (glibc)", |b| {
        b.iter_custom(|iters| {
            // SAFETY: as above.
            remote_pairs(
                iters,
                || unsafe { System.alloc(L) } as usize,
                |a| unsafe { System.dealloc(a as *mut u8, L) },
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = local, two_local, remote
}
criterion_main!(benches);
