//! Sleep against a wakeup from another CPU: no lost wakeup.

use loom::thread;
use std::sync::Arc;

use super::{model, Entry, TwoCpus};
use crate::crit;
use crate::sleep::sleep_pass;
use crate::sync::{AtomicBool, AtomicU32, Ordering};
use crate::thread::tdf;
use crate::{crit::crit_exit_td, MyCpu};

const CHAN: usize = 0x1040;

/// `Cur::sleep_until(CHAN, || count >= want)` on CPU 0 (the condition
/// reads the count Relaxed, and the waker stores it Relaxed: the interlock
/// is lwkt's fences, not the caller's orderings): the same loop of
/// `sleep_pass`, with the switch away played as the idle thread taking
/// kicks until the thread is runnable again. Panics if it never can be:
/// the waker is done, the condition holds, no kick is pending, and the
/// thread is off its run queue.
fn sleep_until_on_cpu0(m: &TwoCpus, count: &AtomicU32, want: u32, waker_done: &AtomicBool) {
    let (gd, td) = (m.cpu(0), m.thread(0));
    crit::enter(&td.critcount);
    // SAFETY: CPU 0's loom thread, in a critical section; `td` is its
    // current thread (again, after each wake).
    while !unsafe { sleep_pass(gd, td, CHAN, || count.load(Ordering::Relaxed) >= want) } {
        m.switch_to_idle(0);
        while !td.has(tdf::RUNQ) {
            if !m.interrupt(0) {
                assert!(
                    !waker_done.load(Ordering::Acquire) || m.interrupt(0) || td.has(tdf::RUNQ),
                    "lost wakeup: the waker is done, the condition holds, no kick is \
                     pending and the sleeper is off its run queue"
                );
                thread::yield_now();
            }
        }
        m.switch_to_thread(0);
    }
    assert!(
        !td.has(tdf::TSLEEPQ),
        "a sleeper that returns is off its sleep queue"
    );
    crit_exit_td(td);
}

/// CPU 0's thread sleeps until a count reaches each of `1..=rounds`; CPU 1
/// raises the count and calls `MyCpu::wakeup` each time, whose IPI goes
/// through the real ring and doorbell to CPU 0's interrupt entry.
fn sleep_against_wakeups(rounds: u32) {
    model(move |entry: Entry| {
        let m = TwoCpus::new(entry);
        let count = Arc::new(AtomicU32::new(0));
        let waker_done = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (m, count, waker_done) = (m.clone(), count.clone(), waker_done.clone());
            thread::spawn(move || {
                for want in 1..=rounds {
                    sleep_until_on_cpu0(&m, &count, want, &waker_done);
                }
            })
        };
        // CPU 1: make the condition true, then wake.
        for n in 1..=rounds {
            count.store(n, Ordering::Relaxed);
            MyCpu::new(m.cpu(1)).wakeup(CHAN);
        }
        waker_done.store(true, Ordering::Release);
        sleeper.join().unwrap();
    });
}

/// One sleep against one wakeup. Whatever the interleaving, the sleeper
/// returns: it saw the condition, or its CPU's bit in the slot's sleep mask
/// was seen and the wakeup IPI scheduled it. Without the sleeper's fence
/// after it publishes its bit (`sleep::interlock`), or the waker's before
/// it reads the mask (`sleep::remote_sleepers`), each side can miss the
/// other's store and the thread sleeps forever (both fail this model).
#[test]
fn cross_cpu_wakeup_is_never_lost() {
    sleep_against_wakeups(1);
}

/// Two sleeps in a row against two wakeups: the first wakeup's IPI takes
/// the thread off its sleep queue and clears the CPU's mask bit (the slot
/// is empty) while the thread may already be publishing it again for the
/// second sleep.
#[test]
fn sleeping_again_after_a_wakeup_loses_none() {
    sleep_against_wakeups(2);
}
