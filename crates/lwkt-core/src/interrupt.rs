//! Interrupt entry: what the backend calls when an IPI kick arrives. In a
//! critical section the work is only recorded (request flags) and runs at
//! the final `crit_exit`; otherwise it runs at once.
//!
//! DragonFly: `Xipiq`, `lwkt_process_ipiq()`.

use crate::cpu::Cpu;
use crate::crit;
use crate::ipiq::{self};
use crate::splz::splz;
use crate::sync::Ordering;
use crate::thread::{tdf, Thread};

impl Cpu {
    /// Interrupt entry for the IPI vector: the backend calls it on this CPU
    /// when a kick arrives. Inside a critical section (or nested interrupt
    /// processing) the work is only recorded and runs at the final
    /// `crit_exit`; otherwise the queued messages run now.
    /// DragonFly: `Xipiq`.
    ///
    /// # Safety
    /// Called on this CPU, from its interrupt (or signal) context, with the
    /// interrupted code's registers preserved by the backend.
    pub unsafe fn ipi_interrupt(&self) {
        let work = |gd: &Cpu| {
            // SAFETY: `interrupt_entry` runs us on this CPU inside a
            // critical section.
            unsafe { splz(gd) }
        };
        // SAFETY: forwarded.
        unsafe { self.interrupt_entry(work) };
    }

    /// The IPI vector's entry, around `work`: outside a critical section
    /// (and nested processing) run `work` in one, left without a
    /// `crit_exit` (whose slow path would process again: anything that
    /// arrives meanwhile sets a request bit, for the interrupted thread's
    /// next exit); inside one, only record the interrupt.
    ///
    /// # Safety
    /// As for [`ipi_interrupt`](Cpu::ipi_interrupt); `work` runs on this
    /// CPU inside a critical section.
    #[inline(always)]
    pub(crate) unsafe fn interrupt_entry(&self, work: impl FnOnce(&Cpu)) {
        let cur = self.curthread.load(Ordering::Relaxed);
        if cur.is_null() {
            return;
        }
        // SAFETY: `curthread` names the live running thread.
        let td = unsafe { &*cur };
        if !crit::interrupt_arrives(
            &td.critcount,
            self.intr_nesting.get(),
            &self.reqflags,
            crit::rqf::IPIQ,
        ) {
            return;
        }
        crit::enter(&td.critcount);
        work(self);
        crit::leave_frame(&td.critcount);
    }

    /// Interrupt entry for a backend whose interrupt may land anywhere in
    /// the host's code, as a signal handler does: inside the C library's
    /// `malloc`, holding its lock, or half way through a thread-local
    /// allocator's update. It runs only lwkt-core's own IPI functions
    /// (scheduling, wake-ups, thread placement), which touch nothing the
    /// interrupted code can hold; the first user function in a ring (a
    /// `send_ipi` function, `cpusync`'s, lwkt-msg's port functions) and
    /// everything after it wait for the CPU's next critical-section exit,
    /// switch or idle loop, which this entry asks for. So an ordinary IPI
    /// function may allocate on the hosted backend. Device interrupts
    /// ([`Cpu::post_interrupt`]) are delivered (their threads made
    /// runnable); a preemption waits for the interrupted thread's next
    /// final `crit_exit`. Inside a critical
    /// section it only records the interrupt, as
    /// [`ipi_interrupt`](Cpu::ipi_interrupt) does.
    ///
    /// # Safety
    /// As for [`ipi_interrupt`](Cpu::ipi_interrupt).
    pub unsafe fn ipi_interrupt_async_safe(&self) {
        let work = |gd: &Cpu| {
            gd.async_entry.set(true);
            // SAFETY: `interrupt_entry` runs us on this CPU inside a
            // critical section.
            if unsafe { ipiq::process_own(gd) } {
                // The interrupted thread's next critical-section exit (or
                // switch) runs the rest.
                gd.reqflags.fetch_or(crit::rqf::IPIQ, Ordering::Relaxed);
            }
            // Device interrupts: only lwkt's own bookkeeping (their
            // threads made runnable); a preemption they ask for waits for
            // the thread's next final `crit_exit` (see `intr`).
            if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::INTPEND != 0 {
                // Acquire: as in `splz`.
                gd.reqflags
                    .fetch_and(!crit::rqf::INTPEND, Ordering::Acquire);
                // SAFETY: as above.
                unsafe { crate::intr::deliver::<true>(gd) };
            }
            gd.async_entry.set(false);
        };
        // SAFETY: forwarded.
        unsafe { self.interrupt_entry(work) };
    }

    /// Let the interrupted thread make its final `crit_exit` here, from the
    /// backend's interrupt handler, when it may be switched away from at
    /// this point: outside any critical section and interrupt processing,
    /// and either the backend
    /// [preempts in interrupt context](crate::Arch::preempts_in_interrupt)
    /// or the thread is [`async_preemptible`](crate::Builder::async_preemptible).
    /// Deferred work runs (expired timers and callouts, fast handlers, IPI
    /// functions), then a preemption an interrupt or a timer asked for
    /// (`RQF_PREEMPT`), or the round-robin of an expired quantum
    /// ([`TIME_SLICE`](crate::TIME_SLICE)). Otherwise all of it waits for
    /// the thread's next final `crit_exit`.
    ///
    /// A thread that has token references on its stack may be stopped here
    /// in the middle of a token operation (lwkt-token's acquire and release
    /// run outside critical sections: a reference is released, then
    /// popped). It may be preempted: as in DragonFly's `lwkt_preempt`, it
    /// keeps its tokens, and the switch back to it takes it as it was,
    /// without looking at its stack. Its round-robin waits for its next
    /// final `crit_exit`: a round-robin releases the tokens of the thread
    /// it switches from, and between a release and its pop that released
    /// a token twice and left it held for good (found by the x86-64 test
    /// kernel under KVM, before either rule). Returns when the interrupted
    /// thread runs again. Call it at the end of the handler, after the
    /// interrupt entry, with the interrupted context saved on the
    /// interrupted thread's stack. DragonFly: `doreti`'s `splz` and
    /// `lwkt_preempt()` from `sched_ithd_hard()`.
    ///
    /// # Safety
    /// Called on this CPU from its interrupt (or signal) handler, as
    /// [`ipi_interrupt`](Cpu::ipi_interrupt), with the interrupted code's
    /// registers preserved by the backend; the handler's frame may be left
    /// for another thread's and resumed later.
    pub unsafe fn preempt_from_interrupt(&self) {
        // SAFETY: forwarded.
        unsafe { self.preempt_from_interrupt_with(|| {}, || {}) }
    }

    /// [`preempt_from_interrupt`](Cpu::preempt_from_interrupt), calling
    /// `unmask` before each time the thread makes its final `crit_exit`
    /// here (inside a critical section, before any switch) and `mask`
    /// after it (back inside one): a backend whose handler runs with its
    /// interrupt masked unmasks it for the `crit_exit`, so the thread
    /// switched to can be interrupted in turn, and masks it again before
    /// the handler returns (the hosted backend blocks and unblocks its
    /// signal; the return from the handler restores the interrupted
    /// thread's own mask).
    ///
    /// Frames nest, and their depth stays bounded. The unmasked
    /// `crit_exit` runs deferred work with the count at zero, so a second
    /// interrupt can land in it and come here for the same thread: that
    /// inner frame does its interrupt work and returns, leaving the
    /// preemption or round-robin it asks for to the outer frame, which
    /// looks at the request bits again (masked) after its `crit_exit`
    /// and makes another if one is waiting. An inner frame that made its
    /// own `crit_exit` would unmask in turn and let a third nest in it,
    /// without bound under an interrupt storm (a stack overflow under
    /// qemu-aarch64, session 13); one that cleared the outer frame's
    /// `IN_FRAME` mark let the outer frame round-robin a thread stopped
    /// inside its token section ("token held twice", the same session).
    ///
    /// # Safety
    /// As for [`preempt_from_interrupt`](Cpu::preempt_from_interrupt).
    pub unsafe fn preempt_from_interrupt_with(&self, unmask: impl Fn(), mask: impl Fn()) {
        if self.reqflags.load(Ordering::Relaxed) & crit::rqf::FROM_FRAME == 0 {
            return;
        }
        let cur = self.curthread.load(Ordering::Relaxed);
        if cur.is_null() {
            return;
        }
        // SAFETY: `curthread` names the live running thread.
        let td = unsafe { &*cur };
        if td.critcount.load(Ordering::Relaxed) != 0
            || self.intr_nesting.get() != 0
            || td.has(tdf::IDLE)
            || !(td.has(tdf::ASYNC_PREEMPT) || self.machine().arch.preempts_in_interrupt())
        {
            return;
        }
        if td.has(tdf::IN_FRAME) {
            // Nested in a frame that is making this thread's final
            // `crit_exit`: that frame serves the request (see above).
            return;
        }
        if !self.switch_wanted_in_frame(td) {
            return;
        }
        // The interrupted thread's final `crit_exit`, made here: `td` runs
        // on this CPU outside any critical section and interrupt
        // processing, and the interrupted code may be switched away from
        // (and other code of this CPU run) at this instruction: the
        // backend's promise, or the thread's own (`async_preemptible`'s
        // contract). An interrupt unmasked by `unmask` finds the critical
        // section and only records itself; one that lands in the
        // `crit_exit`'s deferred work finds `IN_FRAME`.
        crit::enter(&td.critcount);
        td.set(tdf::IN_FRAME);
        loop {
            unmask();
            crate::crit::crit_exit_td(td);
            crit::enter(&td.critcount);
            mask();
            // A frame nested in that `crit_exit` left its request here.
            if !self.switch_wanted_in_frame(td) {
                break;
            }
        }
        td.clear(tdf::IN_FRAME);
        // Leave without another `crit_exit` (see `leave_frame`).
        crit::leave_frame(&td.critcount);
    }

    /// Does `td`, running and interrupted, have a switch to make from the
    /// frame: a preemption or deferred work asked for, or the round-robin
    /// of an expired quantum while it holds no token? A round-robin
    /// releases the tokens of the thread it switches from, and a thread
    /// stopped at any instruction may be in the middle of a token
    /// operation (lwkt-token's acquire and release are two steps, outside
    /// critical sections): that waits for its next final `crit_exit` in
    /// thread context (`splz_from_thread` checks `IN_FRAME`).
    fn switch_wanted_in_frame(&self, td: &Thread) -> bool {
        let f = self.reqflags.load(Ordering::Relaxed);
        f & (crit::rqf::IDLECHECK | crit::rqf::PREEMPT) != 0
            || (f & crit::rqf::SLICE != 0 && td.toks.is_empty())
    }
}
