//! A device interrupt against the critical section of the CPU it is
//! raised on: posted from another CPU at any point while the CPU's thread
//! is inside its section, at its final `crit_exit`, or after; it is
//! delivered exactly once, never inside the section, and never lost.

use loom::thread;

use super::{model, Entry, TwoCpus};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::sync::{AtomicBool, Ordering};
use crate::Arch;

const IRQ: usize = 3;

/// CPU 0's thread, the line's interrupt thread, runs a critical section
/// and then waits for the interrupt as its idle loop would (taking kicks).
fn cpu0(m: &TwoCpus, hw_done: &AtomicBool) {
    let (gd, td) = (m.cpu(0), m.thread(0));
    gd.intr.ithread[IRQ].set(td);
    td.irqs.set(1 << IRQ);
    let count = &gd.intr.count[IRQ];
    crit::enter(&td.critcount);
    // A kick taken inside the section only records the interrupt.
    m.interrupt(0);
    assert_eq!(
        count.get(),
        0,
        "an interrupt was delivered inside a critical section"
    );
    // The final exit delivers what was recorded.
    crit_exit_td(td);
    while count.get() == 0 {
        if !m.interrupt(0) {
            assert!(
                !hw_done.load(Ordering::Acquire) || m.interrupt(0) || count.get() != 0,
                "lost interrupt: it was posted and kicked, no kick is pending \
                 and it was never delivered"
            );
            thread::yield_now();
        }
    }
    assert_eq!(count.get(), 1, "delivered once");
    assert_eq!(gd.stats.interrupts.get(), 1);
    assert_eq!(gd.intr.pending.peek(), 0);
}

#[test]
fn device_interrupt_in_a_critical_section_is_never_lost() {
    model(|entry: Entry| {
        let m = TwoCpus::new(entry);
        let hw_done = std::sync::Arc::new(AtomicBool::new(false));
        let t = {
            let (m, hw_done) = (m.clone(), hw_done.clone());
            thread::spawn(move || cpu0(&m, &hw_done))
        };
        // The device, from another CPU: post the line, kick the CPU.
        m.cpu(0).post_interrupt(IRQ).unwrap();
        // SAFETY: CPU 0 of the model's running machine.
        unsafe { super::LOOM_ARCH.kick(m.cpu(0)) };
        hw_done.store(true, Ordering::Release);
        t.join().unwrap();
    });
}
