//! Serializers: exclusion that survives blocking, try, and misuse.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{is_child, run_child};
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, Serializer};

/// Threads on three CPUs take one serializer and block (yield, sleep)
/// while holding it; nobody else is ever inside at the same time.
#[test]
fn exclusion_across_cpus_while_the_holder_blocks() {
    static S: Serializer = Serializer::new();
    let inside = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (i2, c2) = (inside.clone(), count.clone());
    Machine::new(3).unwrap().run(move |cur| {
        let hs: Vec<_> = (0..6u32)
            .map(|t| {
                let (inside, count) = (i2.clone(), c2.clone());
                cur.spawn_on(CpuId::new(t % 3), move |me| {
                    for _ in 0..200 {
                        S.enter(me);
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders");
                        me.yield_now(); // blocking while held is allowed
                        count.fetch_add(1, Ordering::Relaxed);
                        inside.store(false, Ordering::SeqCst);
                        S.exit(me);
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
    });
    assert_eq!(count.load(Ordering::Relaxed), 6 * 200);
}

#[test]
fn try_enter_fails_while_another_thread_holds_it() {
    static S: Serializer = Serializer::new();
    Machine::new(2).unwrap().run(|cur| {
        S.enter(cur);
        let t = cur
            .spawn_on(CpuId::new(1), |me| {
                assert!(!S.try_enter(me));
                assert!(!S.is_held_by(me));
            })
            .unwrap();
        cur.join(&t);
        S.exit(cur);
        let t = cur
            .spawn_on(CpuId::new(1), |me| {
                assert!(S.try_enter(me));
                S.exit(me);
            })
            .unwrap();
        cur.join(&t);
    });
}

#[test]
fn entering_twice_or_exiting_unheld_panics() {
    static S: Serializer = Serializer::new();
    if is_child() {
        let which = std::env::var("LWKT_CASE").unwrap_or_default();
        Machine::new(1).unwrap().run(move |cur| {
            if which == "twice" {
                S.enter(cur);
                S.enter(cur);
            } else {
                S.exit(cur);
            }
        });
        return;
    }
    for (case, rule) in [
        ("twice", "serializers are not recursive"),
        ("unheld", "which does not hold it"),
    ] {
        std::env::set_var("LWKT_CASE", case);
        let (ok, stderr) = run_child("entering_twice_or_exiting_unheld_panics");
        assert!(!ok && stderr.contains(rule), "{case}: {stderr}");
    }
}

/// Hole 8 of issue 15: an IPI function that runs on the holder's CPU is
/// not the holder, though the holder is the thread it interrupted; so
/// `is_held_here` answers `false` there (in IPI and `cpusync` functions),
/// and `true` in the holder's own code.
#[test]
fn is_held_here_is_false_in_interrupt_context() {
    use std::sync::atomic::AtomicU32;
    static S: Serializer = Serializer::new();
    /// 1: the probe ran and saw the serializer held; 2: it ran and did not.
    static SEEN: AtomicU32 = AtomicU32::new(0);
    fn probe(my: lwkt_core::MyCpu<'_>, _: usize, _: usize) {
        let v = if S.is_held_here(my) { 1 } else { 2 };
        SEEN.store(v, Ordering::Release);
    }
    Machine::new(2).unwrap().run(|cur| {
        S.enter(cur);
        assert!(S.is_held_here(cur.my_cpu()));
        let t = cur
            .spawn_on(CpuId::new(1), |me| {
                me.my_cpu().send_ipi(CpuId::new(0), probe, 0, 0).unwrap();
            })
            .unwrap();
        // Run the probe in this CPU's IPI processing while we hold S.
        while SEEN.load(Ordering::Acquire) == 0 {
            cur.my_cpu().process_ipis();
        }
        assert_eq!(
            SEEN.load(Ordering::Acquire),
            2,
            "an IPI function on the holder's CPU was taken for the holder"
        );
        let held_in_cpusync = AtomicU32::new(0);
        cur.cpusync(lwkt_core::CpuMask::all(2), &|my| {
            if S.is_held_here(my) {
                held_in_cpusync.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(held_in_cpusync.load(Ordering::Relaxed), 0);
        assert!(S.is_held_here(cur.my_cpu()));
        S.exit(cur);
        cur.join(&t);
    });
}
