//! The idle loop: what a CPU does when it has nothing to run.
//!
//! DragonFly: `cpu_idle()`.

use crate::cpu::Cpu;
use crate::splz::splz;
use crate::switch::switch_from;
use crate::sync::Ordering;
use crate::thread::Thread;

impl Cpu {
    /// The CPU's idle loop: the backend calls it on each CPU's boot context,
    /// which becomes that CPU's idle thread. It runs threads and IPIs, and
    /// waits in [`Arch::idle_wait`](crate::Arch::idle_wait) when there is
    /// nothing to do; it returns after [`request_shutdown`](Cpu::request_shutdown)
    /// once no thread is runnable and no message is queued.
    /// DragonFly: `cpu_idle()`.
    ///
    /// # Safety
    /// Called once per CPU, on that CPU (so that the backend's
    /// `current_cpu` names it), after [`MachineState::bind`](crate::MachineState::bind).
    pub unsafe fn idle_loop(&self) {
        let idle = &self.idle;
        let arch = self.machine().arch;
        idle.critcount.store(1, Ordering::Relaxed);
        self.curthread
            .store(idle as *const Thread as *mut Thread, Ordering::Relaxed);
        let mut contended = 0u32;
        let mut poll_cycles = 0u64;
        let mut poll_start = 0u64;
        loop {
            // SAFETY: on this CPU, in the idle thread's critical section.
            unsafe { splz(self) };
            // SAFETY: as above.
            if unsafe { self.runq() }.len() != 0 {
                if self.watching.get() {
                    // The watch goes on while threads run: they look at
                    // the rings at their critical-section exits, and the
                    // backend interrupts one that leaves them unread
                    // (`watch_backlog`). Give them a whole window before it
                    // expires.
                    self.watch_seen.set(arch.cycles());
                }
                // The CPU gets busy: time its threads' quanta.
                // SAFETY: on this CPU, in the idle thread's critical section.
                unsafe { crate::slice::arm_for_busy(self) };
                // SAFETY: the idle thread is running.
                if unsafe { switch_from(idle) } {
                    contended = 0;
                    poll_start = arch.cycles();
                } else {
                    // Runnable threads, but none can have its tokens yet:
                    // tokens are polled, so try again shortly.
                    arch.pause(contended);
                    contended = contended.wrapping_add(1);
                }
                continue;
            }
            if self.shutdown.load(Ordering::SeqCst) && self.ipimask.is_empty(Ordering::SeqCst) {
                if self.watching.get() {
                    self.end_watch();
                    continue;
                }
                break;
            }
            if !self.watching.get() {
                // Asked anew before each watch: the backend's answer may
                // change while the machine runs (the hosted backend's is 0
                // while vCPUs outnumber host cores).
                poll_cycles = arch.idle_poll_cycles();
            }
            if poll_cycles != 0 {
                // Watch the rings for a while; senders see `npoll` set and
                // do not kick.
                if !self.watching.get() {
                    self.begin_watch();
                    poll_start = arch.cycles();
                }
                if self.watch_sees_work() {
                    continue;
                }
                if arch.cycles().wrapping_sub(poll_start) < poll_cycles {
                    core::hint::spin_loop();
                    continue;
                }
            }
            // About to wait: end the watch, clear the kick interlock, look
            // once more (loom model `idle_wait_loses_no_kick`).
            let settled = self.doorbell().settle_for_wait(
                self.watching.get(),
                || {
                    self.drain_after_watch();
                    // SAFETY: as above.
                    unsafe { self.runq() }.len() != 0
                },
                || self.has_pending(),
            );
            if settled.answered {
                self.stats.kicks_answered.add(1);
            }
            if !settled.wait {
                continue;
            }
            // SAFETY: our idle loop, on this CPU of a bound, running
            // machine, inside a critical section.
            unsafe { arch.idle_wait(self) };
        }
        // SAFETY: on this CPU, in the idle thread's critical section, for good.
        unsafe { crate::timer::retire(self) };
        idle.critcount.store(0, Ordering::Relaxed);
    }
}
