//! `cpusync`: the master's descriptor against the targets that clear their
//! bits, one master and two at once.
//!
//! The descriptor's life is checked by `sync::Life`: the master ends it
//! right after it sees `pending == 0`, and every target use (reading the
//! function, clearing its bit) must happen before that end, or loom
//! reports a data race. The function's effects are cells the master reads
//! after `cpusync` returns, so they too must be ordered before its return.

use loom::cell::UnsafeCell;
use loom::thread;
use std::sync::Arc;

use super::{model, Entry, TwoCpus};
use crate::cpu::CpuMask;
use crate::cpusync::cpusync;
use crate::sync::{AtomicBool, AtomicU32, Ordering};
use crate::MyCpu;

/// How often a function ran on each CPU: one cell per CPU, written only
/// there (in interrupt context or by the master itself).
struct Hits([UnsafeCell<u32>; 2]);

// SAFETY: cell `i` is written only by the loom thread playing CPU `i`, and
// read by others only after a `cpusync` that ordered the write before.
unsafe impl Sync for Hits {}
// SAFETY: as above.
unsafe impl Send for Hits {}

impl Hits {
    fn new() -> Arc<Hits> {
        Arc::new(Hits([UnsafeCell::new(0), UnsafeCell::new(0)]))
    }

    /// Count a run on `my`'s CPU.
    fn hit(&self, my: MyCpu<'_>) {
        // SAFETY: only CPU `my` writes this cell (see `Sync`).
        self.0[my.id().index()].with_mut(|p| unsafe { *p += 1 });
    }

    /// The counts, read on any CPU: loom reports a read that is not
    /// ordered after the writes.
    fn get(&self) -> [u32; 2] {
        // SAFETY: see `Sync`.
        [0, 1].map(|i| self.0[i].with(|p| unsafe { *p }))
    }
}

/// CPU 0 runs a function on both CPUs; CPU 1 takes its kick in its
/// interrupt entry (each [`Entry`] in turn) and runs `cpusync`'s message.
/// When `cpusync` returns, the function ran once on each CPU, its effects
/// are visible to the master, and no target touched the descriptor after
/// clearing its bit.
#[test]
fn cpusync_one_master() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let hits = Hits::new();
        let over = Arc::new(AtomicBool::new(false));
        let target = {
            let (m, over) = (m.clone(), over.clone());
            thread::spawn(move || {
                m.switch_to_idle(1);
                while !over.load(Ordering::Acquire) {
                    m.interrupt(1);
                    thread::yield_now();
                }
            })
        };
        let h = hits.clone();
        cpusync(m.thread(0), CpuMask::all(2), &move |my| h.hit(my));
        assert_eq!(hits.get(), [1, 1], "the function ran once on each CPU");
        over.store(true, Ordering::Release);
        target.join().unwrap();
    });
}

/// Two masters at once, each with both CPUs in its mask: each waits for
/// the other, and runs the other's request from its own wait loop (it
/// drains its rings while it spins), so neither waits forever. A master
/// that finishes first goes on taking interrupts, which is where the other
/// master's request may reach it. Each function ran once on each CPU, and
/// each descriptor was last used before its master saw `pending == 0`.
#[test]
fn cpusync_two_masters_at_once() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let finished = Arc::new(AtomicU32::new(0));
        let master = |i: usize, m: Arc<TwoCpus>, finished: Arc<AtomicU32>| {
            let hits = Hits::new();
            let h = hits.clone();
            cpusync(m.thread(i), CpuMask::all(2), &move |my| h.hit(my));
            let ran = hits.get();
            finished.fetch_add(1, Ordering::Release);
            while finished.load(Ordering::Acquire) < 2 {
                m.interrupt(i);
                thread::yield_now();
            }
            ran
        };
        let other = {
            let (m, finished) = (m.clone(), finished.clone());
            thread::spawn(move || master(1, m, finished))
        };
        assert_eq!(
            master(0, m, finished),
            [1, 1],
            "CPU 0's function on each CPU"
        );
        assert_eq!(
            other.join().unwrap(),
            [1, 1],
            "CPU 1's function on each CPU"
        );
    });
}
