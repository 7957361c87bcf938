//! A timed sleep against the timer interrupt: the interrupt may land while
//! the sleeper's CPU is inside its critical section (before it has even
//! switched away), in the idle thread, or after; the expired timer always
//! makes the sleeper runnable, exactly once.

use loom::thread;

use super::{model, Entry, TwoCpus, NOW};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::sleep::sleep_pass;
use crate::sync::{AtomicBool, Ordering};
use crate::thread::tdf;
use crate::timer::SleepTimer;
use crate::Arch;

const CHAN: usize = 0x2040;
/// On a wheel tick (1024 ns), so the programmed one-shot deadline is this.
const DEADLINE: u64 = 5 << 10;

/// CPU 0's thread: `Cur::sleep_timed`'s loop (arm the timer, `sleep_pass`
/// with a condition that never holds, switch away until runnable), with
/// the switch played as the idle thread taking kicks. Panics if the timer
/// interrupt was delivered and the thread can never run again.
fn timed_sleep_on_cpu0(m: &TwoCpus, hw_done: &AtomicBool) {
    let (gd, td) = (m.cpu(0), m.thread(0));
    crit::enter(&td.critcount);
    {
        let timer = SleepTimer::new(td);
        // SAFETY: CPU 0's loom thread in a critical section; `timer` stays
        // on this frame until dropped at the end of the block.
        unsafe { timer.arm(DEADLINE) };
        // SAFETY: as above; `td` is CPU 0's current thread.
        while !timer.fired() && !unsafe { sleep_pass(gd, td, CHAN, || false) } {
            m.switch_to_idle(0);
            while !td.has(tdf::RUNQ) {
                if !m.interrupt(0) {
                    assert!(
                        !hw_done.load(Ordering::Acquire) || m.interrupt(0) || td.has(tdf::RUNQ),
                        "lost timer: the deadline passed and was posted, no kick is \
                         pending and the sleeper is off its run queue"
                    );
                    thread::yield_now();
                }
            }
            m.switch_to_thread(0);
        }
        assert!(timer.fired(), "the sleep ended without its timer");
        assert!(
            !td.has(tdf::TSLEEPQ),
            "a timed-out sleeper is off its sleep queue"
        );
    }
    assert_eq!(gd.timers.next_deadline(), None, "the wheel is empty again");
    crit_exit_td(td);
}

#[test]
fn timer_interrupt_is_never_lost() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let hw_done = std::sync::Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (m, hw_done) = (m.clone(), hw_done.clone());
            thread::spawn(move || timed_sleep_on_cpu0(&m, &hw_done))
        };
        // The timer hardware: time passes the deadline, the interrupt is
        // posted and the CPU kicked (as the hosted watchdog does).
        NOW.store(DEADLINE, Ordering::Release);
        m.cpu(0).post_timer();
        // SAFETY: CPU 0 of the model's running machine.
        unsafe { super::LOOM_ARCH.kick(m.cpu(0)) };
        hw_done.store(true, Ordering::Release);
        sleeper.join().unwrap();
    });
}
