//! Device interrupts, interrupt threads and preemption on the hosted
//! backend.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, IntrError, Priority, MAX_IRQS};

const IRQ: usize = 9;

/// Every raise, answered before the next, reaches the interrupt thread
/// exactly once.
#[test]
fn each_interrupt_reaches_its_thread() {
    const N: u32 = 200;
    Machine::new(2).unwrap().run(|cur| {
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        let ith = common::spawn_ithread(cur, 1, IRQ, move |me| {
            let mut total = 0;
            while total < N {
                total += me.wait_interrupt(IRQ);
                s.store(total, Ordering::Release);
            }
        });
        for i in 1..=N {
            cur.my_cpu().raise_interrupt(CpuId::new(1), IRQ).unwrap();
            while seen.load(Ordering::Acquire) < i {
                cur.yield_now();
            }
            assert_eq!(seen.load(Ordering::Acquire), i);
        }
        cur.join(&ith);
        let st = cur.my_cpu().cpu_stats(CpuId::new(1)).unwrap();
        assert_eq!(st.interrupts, u64::from(N));
        assert_eq!(st.stray_interrupts, 0);
    });
}

/// A normal thread that never yields nor blocks, but calls lwkt (a
/// critical section) as kernel code does, is preempted by the interrupt
/// thread of its CPU, keeps its token meanwhile, and resumes after it.
#[test]
fn interrupt_thread_preempts_a_thread_that_never_yields() {
    Machine::new(2).unwrap().run(|cur| {
        let fired = Arc::new(AtomicBool::new(false));
        let tok = Arc::new(lwkt_core::token::Token::new("dev"));
        let (f, t) = (fired.clone(), tok.clone());
        let ith = common::spawn_ithread(cur, 1, IRQ, move |me| {
            me.wait_interrupt(IRQ);
            // The preempted thread holds the token: we cannot have it.
            assert!(me.try_with_token(&t, |_, _| ()).is_none());
            f.store(true, Ordering::Release);
        });
        let spinning = Arc::new(AtomicBool::new(false));
        let f2 = fired.clone();
        let t2 = tok.clone();
        let s2 = spinning.clone();
        let busy = cur
            .builder()
            .cpu(CpuId::new(1))
            .priority(Priority::KERN_DAEMON)
            .spawn(move |me| {
                let switches = me.switch_count();
                me.with_token(&t2, |me, _held| {
                    // Spin without yielding: only a preemption lets the
                    // interrupt thread of this CPU run.
                    s2.store(true, Ordering::Release);
                    let mut n = 0u64;
                    while !f2.load(Ordering::Acquire) {
                        n += me.my_cpu().crit(|| 1);
                    }
                    assert!(n > 0);
                });
                assert!(me.switch_count() > switches, "resumed after a switch");
                assert!(me.my_cpu().stats().preemptions >= 1);
            })
            .unwrap();
        while !spinning.load(Ordering::Acquire) {
            cur.yield_now();
        }
        cur.my_cpu().raise_interrupt(CpuId::new(1), IRQ).unwrap();
        cur.join(&ith);
        cur.join(&busy);
    });
}

/// Raising a line nobody registered counts a stray; bad lines and CPUs
/// are refused with an error naming them.
#[test]
fn strays_and_bad_lines() {
    Machine::new(2).unwrap().run(|cur| {
        let my = cur.my_cpu();
        assert_eq!(
            my.raise_interrupt(CpuId::new(0), MAX_IRQS),
            Err(IntrError::NoSuchIrq { irq: MAX_IRQS })
        );
        let e = my.raise_interrupt(CpuId::new(5), 1).unwrap_err();
        assert_eq!(
            e,
            IntrError::NoSuchCpu {
                cpu: CpuId::new(5),
                ncpus: 2
            }
        );
        assert!(e.to_string().contains("CPU 5"));
        let before = my.stats().stray_interrupts;
        my.raise_interrupt(CpuId::new(0), 3).unwrap();
        assert_eq!(cur.my_cpu().stats().stray_interrupts, before + 1);
    });
}

/// A thread that exits while registered leaves its line free; misuse
/// panics with the rule, and the thread goes on.
#[test]
fn registration_rules() {
    Machine::new(2).unwrap().run(|cur| {
        let h = cur
            .spawn_on(CpuId::new(0), |me| me.register_interrupt(4).unwrap())
            .unwrap();
        cur.join(&h);
        // Free again.
        cur.register_interrupt(4).unwrap();
        assert_eq!(cur.register_interrupt(4), Err(IntrError::Taken { irq: 4 }));
        let e = catch_unwind(AssertUnwindSafe(|| cur.migrate(CpuId::new(1)))).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("cannot migrate"), "{msg}");
        cur.unregister_interrupt(4);
        let e = catch_unwind(AssertUnwindSafe(|| cur.wait_interrupt(4))).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("not the interrupt thread"), "{msg}");
        assert_eq!(cur.crit_count(), 0);
        cur.migrate(CpuId::new(1)).unwrap();
    });
}

/// A thread that never calls lwkt, built `async_preemptible`, is
/// preempted from the interrupt handler (the hosted backend's signal) by
/// the interrupt thread of its CPU.
#[test]
fn async_preemptible_thread_is_preempted_without_calling_lwkt() {
    Machine::new(2).unwrap().run(|cur| {
        let fired = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let ith = common::spawn_ithread(cur, 1, IRQ, move |me| {
            me.wait_interrupt(IRQ);
            f.store(true, Ordering::Release);
        });
        let (f2, s2) = (fired.clone(), spinning.clone());
        // SAFETY: the body only spins on atomics: nothing a thread of its
        // CPU could re-enter.
        let spinner = unsafe { cur.builder().cpu(CpuId::new(1)).async_preemptible() }
            .spawn(move |_| {
                s2.store(true, Ordering::Release);
                while !f2.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        while !spinning.load(Ordering::Acquire) {
            cur.yield_now();
        }
        cur.my_cpu().raise_interrupt(CpuId::new(1), IRQ).unwrap();
        cur.join(&ith);
        cur.join(&spinner);
        let st = cur.my_cpu().cpu_stats(CpuId::new(1)).unwrap();
        assert!(st.preemptions >= 1);
    });
}

/// A fast handler runs at every interrupt of its line, in the line's
/// CPU's interrupt context, and decides whether the interrupt thread
/// runs: a declined interrupt is counted but never reaches the thread.
#[test]
fn fast_handler_decides_whether_the_thread_runs() {
    static FAST_RUNS: AtomicU32 = AtomicU32::new(0);
    static ON_CPU: AtomicU32 = AtomicU32::new(u32::MAX);
    // Wakes the thread at every third interrupt only.
    fn fast(my: lwkt_core::MyCpu<'_>, every: usize) -> bool {
        ON_CPU.store(my.id().index() as u32, Ordering::Relaxed);
        let n = FAST_RUNS.fetch_add(1, Ordering::AcqRel) + 1;
        n as usize % every == 0
    }
    Machine::new(2).unwrap().run(|cur| {
        let got = Arc::new(AtomicU32::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let (g, r) = (got.clone(), ready.clone());
        let ith = cur
            .builder()
            .cpu(CpuId::new(1))
            .priority(Priority::INT_MED)
            .spawn(move |me| {
                me.register_interrupt_fast(IRQ, fast, 3).unwrap();
                r.store(true, Ordering::Release);
                let mut total = 0;
                while total < 4 {
                    total += me.wait_interrupt(IRQ);
                    g.store(total, Ordering::Release);
                }
            })
            .unwrap();
        while !ready.load(Ordering::Acquire) {
            cur.yield_now();
        }
        for i in 1..=12u32 {
            cur.my_cpu().raise_interrupt(CpuId::new(1), IRQ).unwrap();
            // Each raise is handled before the next (no coalescing).
            while FAST_RUNS.load(Ordering::Acquire) < i {
                cur.yield_now();
            }
            if i % 3 == 0 {
                // Accepted: the thread runs and collects it.
                while got.load(Ordering::Acquire) < i / 3 {
                    cur.yield_now();
                }
            }
            // Declined ones leave the thread's count where it was.
            assert_eq!(
                got.load(Ordering::Acquire),
                i / 3,
                "a declined interrupt reached the thread"
            );
        }
        cur.join(&ith);
        assert_eq!(got.load(Ordering::Acquire), 4);
        assert_eq!(FAST_RUNS.load(Ordering::Acquire), 12);
        assert_eq!(ON_CPU.load(Ordering::Relaxed), 1);
        let st = cur.my_cpu().cpu_stats(CpuId::new(1)).unwrap();
        assert_eq!(st.interrupts, 12);
        assert_eq!(st.stray_interrupts, 0);
    });
}
