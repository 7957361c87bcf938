//! Making a thread runnable from any context of its machine, for code that
//! has no [`MyCpu`] at hand (an async waker, a callback).
//!
//! DragonFly: `lwkt_schedule()` called from whatever context a wakeup
//! arrives in.

use crate::thread::ThreadHandle;
use crate::MyCpu;

impl ThreadHandle {
    /// Make the thread runnable, as [`MyCpu::schedule`] does, from any code
    /// running on a CPU of the thread's machine (a thread, an IPI function,
    /// a waker called from either). The CPU is found through
    /// [`Arch::current_cpu`](crate::Arch::current_cpu).
    ///
    /// # Panics
    /// When called outside every CPU of the thread's machine.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     cur.deschedule_self();
    ///     me.wake();       // back on the run queue before we switch away
    ///     cur.switch();    // so this returns at once
    /// });
    /// ```
    pub fn wake(&self) {
        let td = self.thread();
        // The thread block is alive (our hold), and so is the backend
        // (`'static`); its machine may not be, so nothing of it is read
        // before the current CPU proves it is the same machine.
        let here = td.arch.current_cpu().map(|c| {
            // SAFETY: the backend returns the block of the CPU this code
            // runs on, alive while it runs.
            unsafe { &*c.as_ptr() }
        });
        let my = match here {
            Some(cpu) if cpu.machine().id == td.machine_id => MyCpu::new(cpu),
            _ => panic!(
                "lwkt: ThreadHandle::wake called outside every CPU of the thread's machine \
                 (from another machine, or after it stopped)"
            ),
        };
        my.schedule(self);
    }
}
