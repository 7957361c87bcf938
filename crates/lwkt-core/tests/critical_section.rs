//! The `critical-section` implementation (feature `critical-section`, which
//! this crate's dev-dependencies turn on): mutual exclusion across every
//! CPU and plain OS threads, nesting, and IPIs deferred rather than
//! deadlocked.
#![cfg(feature = "critical-section")]

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use critical_section::Mutex;
use lwkt_core::{CpuId, MyCpu};

fn os_thread_id() -> usize {
    std::thread_local!(static ID: u8 = const { 0 });
    ID.with(|id| id as *const u8 as usize)
}

fn setup() {
    // SAFETY: every machine of this test binary uses `HOSTED`; a live OS
    // thread's thread-local has an address no other live thread has, below
    // `usize::MAX / 2` in user space.
    unsafe { lwkt_core::critical_section::install(&lwkt_arch_hosted::HOSTED, os_thread_id) };
}

/// Read, dawdle, write: a lost update shows unless the section excludes
/// every other context.
fn bump(c: &Mutex<Cell<u64>>) {
    critical_section::with(|cs| {
        let v = c.borrow(cs).get();
        for _ in 0..20 {
            std::hint::spin_loop();
        }
        c.borrow(cs).set(v + 1);
    });
}

#[test]
fn counter_under_contention_loses_nothing() {
    setup();
    static COUNT: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));
    const CPUS: usize = 4;
    const THREADS: usize = 3;
    const N: u64 = 3_000;
    const OUTSIDE_N: u64 = 20_000;
    common::within_seconds(120, "counter_under_contention_loses_nothing", || {
        std::thread::scope(|s| {
            // A plain OS thread, outside any lwkt CPU, at the same time.
            s.spawn(|| {
                for _ in 0..OUTSIDE_N {
                    bump(&COUNT);
                }
            });
            lwkt_arch_hosted::Machine::new(CPUS).unwrap().run(|cur| {
                let mut ts = Vec::new();
                for c in 0..CPUS {
                    for _ in 0..THREADS {
                        ts.push(
                            cur.spawn_on(CpuId::new(c as u32), |me| {
                                for i in 0..N {
                                    bump(&COUNT);
                                    if i % 64 == 0 {
                                        me.yield_now();
                                    }
                                }
                            })
                            .unwrap(),
                        );
                    }
                }
                for t in &ts {
                    cur.join(t);
                }
            });
        });
    });
    let total = critical_section::with(|cs| COUNT.borrow(cs).get());
    assert_eq!(total, (CPUS * THREADS) as u64 * N + OUTSIDE_N);
}

#[test]
fn nesting_on_a_cpu_and_outside() {
    setup();
    static V: Mutex<Cell<u32>> = Mutex::new(Cell::new(0));
    let nest = || {
        critical_section::with(|a| {
            V.borrow(a).set(1);
            critical_section::with(|b| {
                assert_eq!(V.borrow(b).get(), 1);
                critical_section::with(|c| V.borrow(c).set(3));
                // The inner release left the outer section held.
                assert_eq!(V.borrow(b).get(), 3);
            });
            assert_eq!(V.borrow(a).get(), 3);
            V.borrow(a).set(0);
        })
    };
    common::within_seconds(60, "nesting_on_a_cpu_and_outside", || {
        nest();
        lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
            nest();
            // The lock is free again: a thread of another CPU takes it.
            let t = cur.spawn_on(CpuId::new(1), move |_| nest()).unwrap();
            cur.join(&t);
            // The raw interface: the inner restore state releases nothing,
            // and the outer one leaves the thread's critical section.
            // SAFETY: properly nested pairs on this thread.
            unsafe {
                let outer = critical_section::acquire();
                assert_eq!(cur.crit_count(), 1);
                let inner = critical_section::acquire();
                assert_eq!(cur.crit_count(), 1);
                critical_section::release(inner);
                assert_eq!(cur.crit_count(), 1);
                critical_section::release(outer);
            }
            assert_eq!(cur.crit_count(), 0);
        });
        nest();
    });
}

static IPI_RAN: AtomicBool = AtomicBool::new(false);
static SENT: AtomicBool = AtomicBool::new(false);
static HOLDING: AtomicBool = AtomicBool::new(false);
static IPI_SAW: AtomicU64 = AtomicU64::new(0);
static HELD: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

fn ipi_takes_section(_: MyCpu<'_>, _: usize, _: usize) {
    critical_section::with(|cs| {
        let c = HELD.borrow(cs);
        IPI_SAW.store(c.get(), Ordering::Relaxed);
        c.set(c.get() + 1);
    });
    IPI_RAN.store(true, Ordering::Release);
}

/// An IPI whose function uses `critical_section::with`, sent to a CPU whose
/// running thread holds it, waits for the holder's release (the thread's
/// critical section defers it) instead of spinning on top of the holder.
/// Without the critical section, the holder's own `crit_exit` inside the
/// closure (any lwkt call) ran the IPI function on top of the holder, inside
/// its section (taken for nesting, as it runs on the holder's behalf): the
/// assertion below failed.
#[test]
fn ipi_to_the_holders_cpu_is_deferred_not_deadlocked() {
    setup();
    common::within_seconds(60, "ipi_to_the_holders_cpu_is_deferred", || {
        lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
            let sender = cur
                .spawn_on(CpuId::new(1), |me| {
                    while !HOLDING.load(Ordering::Acquire) {
                        me.yield_now();
                    }
                    me.my_cpu()
                        .send_ipi(CpuId::new(0), ipi_takes_section, 0, 0)
                        .unwrap();
                    SENT.store(true, Ordering::Release);
                })
                .unwrap();
            critical_section::with(|cs| {
                HOLDING.store(true, Ordering::Release);
                let end = Instant::now() + Duration::from_secs(20);
                while !SENT.load(Ordering::Acquire) {
                    assert!(Instant::now() < end, "the sender never sent");
                    std::hint::spin_loop();
                }
                // Give the kick time to land, and pass critical-section
                // exits (a nested section of lwkt's own) where a deferred
                // IPI would run if this thread were not in one.
                let end = Instant::now() + Duration::from_millis(30);
                while Instant::now() < end {
                    cur.my_cpu().crit(|| ());
                    let _ = cur.my_cpu().stats();
                }
                assert!(
                    !IPI_RAN.load(Ordering::Acquire),
                    "the IPI function ran inside the holder's section"
                );
                HELD.borrow(cs).set(7);
            });
            // Released: the deferred IPI runs (at the final crit_exit, or
            // soon after on the hosted backend) and gets the section.
            while !IPI_RAN.load(Ordering::Acquire) {
                cur.yield_now();
            }
            assert_eq!(IPI_SAW.load(Ordering::Relaxed), 7);
            cur.join(&sender);
        });
    });
}

/// A `with` closure that blocks (here: yields to another thread of its CPU)
/// leaves that thread spinning on a holder that cannot run; it is caught
/// with a message naming the rule.
#[test]
fn blocking_inside_with_is_caught() {
    if common::is_child() {
        setup();
        lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
            let other = cur
                .spawn_on(CpuId::new(0), |_| critical_section::with(|_| ()))
                .unwrap();
            critical_section::with(|_| cur.yield_now());
            cur.join(&other);
        });
        return;
    }
    let (ok, stderr) = common::run_child("blocking_inside_with_is_caught");
    assert!(!ok, "the child should have aborted");
    assert!(
        stderr.contains("closure blocked or switched threads"),
        "stderr: {stderr}"
    );
}
