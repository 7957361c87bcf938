//! A callout armed on CPU 1 whose deadline passes while CPU 0 stops it: the
//! crate's own `Callout::stop` (the state word, the request by IPI message
//! with its descriptor on CPU 0's stack, `apply` on CPU 1) against CPU 1's
//! timer run (`timer::run`, the callout's `fire`). Exactly one of the two
//! wins: the callback ran, or `stop` returned true; never both, never
//! neither. The callback's count is a loom cell written by CPU 1 and read
//! by the model after both CPUs are done, and the request's descriptor is
//! checked with `sync::Life` (a use after CPU 0 saw the answer is a race).

use core::pin::Pin;
use loom::cell::UnsafeCell;
use loom::thread;
use std::boxed::Box;
use std::sync::Arc;

use super::{model, Entry, TwoCpus, NOW};
use crate::callout::{Callout, Fired};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::mycpu::MyCpu;
use crate::sync::{AtomicBool, Ordering};
use crate::CpuId;

const DEADLINE: u64 = 5 << 10;

/// Runs of the callback: one cell, written only by CPU 1 (the callout's
/// CPU, in its timer run).
struct Runs(UnsafeCell<u32>);
// SAFETY: written only by the loom thread playing CPU 1; read after it
// joined.
unsafe impl Sync for Runs {}
// SAFETY: as above.
unsafe impl Send for Runs {}

type F = Box<dyn FnMut(Fired<'_>) + Send>;

/// Arm on CPU 1 (the model's main thread plays CPU 1 before the model's
/// threads start), for `DEADLINE` on the model's clock.
fn armed_on_cpu1(m: &TwoCpus, runs: &Arc<Runs>) -> Arc<Callout<F>> {
    let r = runs.clone();
    let f: F = Box::new(move |fired: Fired<'_>| {
        assert_eq!(fired.my().id(), CpuId::new(1));
        // SAFETY: see `Runs`.
        r.0.with_mut(|p| unsafe { *p += 1 });
    });
    let c = Arc::new(Callout::new(f));
    // SAFETY: the callout stays in its `Arc` until the model ends (it is
    // never moved out).
    let p = unsafe { Pin::new_unchecked(&*c) };
    p.reset(
        MyCpu::new(m.cpu(1)),
        core::time::Duration::from_nanos(DEADLINE),
    );
    assert!(c.pending());
    c
}

/// CPU 1: its timer interrupt (the clock passes the deadline, `RQF_TIMER`
/// is posted and runs at the final `crit_exit`), then it takes interrupts
/// (CPU 0's request) until CPU 0 is done.
fn cpu1(m: &TwoCpus, cpu0_done: &AtomicBool) {
    let (gd, td) = (m.cpu(1), m.thread(1));
    NOW.store(DEADLINE, Ordering::Release);
    gd.post_timer();
    crit::enter(&td.critcount);
    crit_exit_td(td);
    while !cpu0_done.load(Ordering::Acquire) {
        if !m.interrupt(1) {
            thread::yield_now();
        }
    }
    // Whatever the last interrupt left deferred.
    m.interrupt(1);
}

#[test]
fn callout_stop_races_its_firing() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let runs = Arc::new(Runs(UnsafeCell::new(0)));
        let c = armed_on_cpu1(&m, &runs);
        let done = Arc::new(AtomicBool::new(false));
        let t1 = {
            let (m, done) = (m.clone(), done.clone());
            thread::spawn(move || cpu1(&m, &done))
        };
        // CPU 0: stop it (an IPI request to CPU 1, waiting for the answer
        // while running its own interrupts).
        // SAFETY: as in `armed_on_cpu1`.
        let p = unsafe { Pin::new_unchecked(&*c) };
        thread::yield_now();
        let prevented = p.stop(MyCpu::new(m.cpu(0)));
        done.store(true, Ordering::Release);
        t1.join().unwrap();
        // SAFETY: CPU 1 joined.
        let ran = runs.0.with(|p| unsafe { *p });
        assert_eq!(
            ran + u32::from(prevented),
            1,
            "ran {ran} times, stop returned {prevented}"
        );
        assert!(!c.pending() && c.cpu().is_none());
    });
}

/// The same race with `stop_sync`: when it returns, the callback has run
/// to its end (its effects visible to the caller) or never will.
#[test]
fn callout_stop_sync_races_its_firing() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let runs = Arc::new(Runs(UnsafeCell::new(0)));
        let c = armed_on_cpu1(&m, &runs);
        let done = Arc::new(AtomicBool::new(false));
        let t1 = {
            let (m, done) = (m.clone(), done.clone());
            thread::spawn(move || cpu1(&m, &done))
        };
        // SAFETY: as in `armed_on_cpu1`.
        let p = unsafe { Pin::new_unchecked(&*c) };
        // Let CPU 1 go first in some executions (loom does not preempt
        // this thread before its first loads otherwise).
        thread::yield_now();
        let prevented = p.stop_sync(MyCpu::new(m.cpu(0)));
        assert!(c.cpu().is_none(), "idle when stop_sync returns");
        // Read before CPU 1 is joined: loom reports the read if the
        // callback's write is not ordered before `stop_sync`'s return.
        // SAFETY: see `Runs`; the ordering is what the model checks.
        let ran = runs.0.with(|p| unsafe { *p });
        done.store(true, Ordering::Release);
        t1.join().unwrap();
        assert_eq!(ran + u32::from(prevented), 1);
    });
}
