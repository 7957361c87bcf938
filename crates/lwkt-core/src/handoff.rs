//! The direct hand-off: make a thread of this CPU runnable, block, and
//! switch straight to it, in one critical section; and the question a
//! receiver asks before it watches for work, whether another thread could
//! run instead.
//!
//! DragonFly: `lwkt_domsg()` to a thread port of the same CPU is
//! `lwkt_schedule()` of the port's thread (in `_lwkt_putport`), then
//! `lwkt_deschedule_self()` and `lwkt_switch()` (in `lwkt_waitmsg`), whose
//! choice is the port's thread when nothing of higher priority waits.
//! [`Cur::block_for`] is those three in one step, with the choice made
//! before the switch, as `lwkt_preempt()` switches straight to a thread it
//! already knows.
//!
//! Rules kept here:
//! - the thread handed to runs ahead of nothing the scheduler ranks higher:
//!   it takes the blocking thread's place only when it has the same
//!   priority, the blocking thread heads the highest non-empty priority and
//!   no reschedule or time-slice request is pending (its equal-priority
//!   peers then wait one turn more, as they would for the blocking thread);
//!   otherwise it is scheduled as [`MyCpu::schedule`](crate::MyCpu::schedule)
//!   does and the switch picks the best thread;
//! - tokens: the switch releases the blocking thread's tokens and acquires
//!   those of the thread it runs, or skips it, as every switch does;
//! - run queues change only inside a critical section on their CPU.

use crate::crit;
use crate::crit::crit_exit_td;
use crate::schedule::{dequeue, schedule_any, schedule_local};
use crate::switch::{switch_in_crit, switch_in_interrupt, switch_to};
use crate::sync::Ordering;
use crate::thread::{tdf, ParkToken, Thread, ThreadHandle};
use crate::{Cur, MyCpu};
use core::ptr;

impl Cur {
    /// Make `to` runnable and block until someone schedules this thread
    /// again, switching straight to `to` when it would run next anyway or
    /// in this thread's turn: [`MyCpu::schedule`](crate::MyCpu::schedule)
    /// of `to` then [`block`](Self::block), in one critical section (the
    /// caller's, when it is in one: then nothing the section defers runs
    /// between the caller's last look at its wait condition and the
    /// switch). The hand-off of a sender to the thread that serves it
    /// (lwkt-msg's same-CPU `domsg`).
    ///
    /// `to` runs first, in this thread's place on the run queue, when it
    /// lives on this CPU, is not runnable yet, has this thread's priority,
    /// and nothing of higher priority is runnable or requested (a
    /// reschedule or time-slice request pending). Otherwise `to` is
    /// scheduled as usual (by IPI if it lives elsewhere) and the switch
    /// takes the best runnable thread, as `block` does. Either way a thread
    /// holding tokens releases them while blocked and has them all again
    /// when this returns, and a thread whose tokens cannot be had is
    /// skipped. DragonFly: `lwkt_schedule()` + `lwkt_deschedule_self()` +
    /// `lwkt_switch()` (see the module documentation).
    ///
    /// # Panics
    /// If `to` belongs to another machine (before anything is done).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     // The helper blocks until we hand the CPU to it, then wakes us.
    ///     let helper = cur
    ///         .spawn_on(cur.cpu_id(), move |h| {
    ///             h.block();
    ///             h.my_cpu().schedule(&me);
    ///         })
    ///         .unwrap();
    ///     cur.yield_now(); // the helper runs and blocks
    ///     cur.block_for(&helper);
    ///     cur.join(&helper);
    /// });
    /// ```
    #[inline(always)]
    pub fn block_for(&mut self, to: &ThreadHandle) {
        let td = self.td();
        let t = to.thread();
        self.my_cpu().check_machine(t);
        // Inside the caller's section already (the common case): no
        // section of our own, whose exit could only lower the count.
        let entered = td.critcount.load(Ordering::Relaxed) == 0;
        if entered {
            crit::enter(&td.critcount);
        }
        let gd = td.gd();
        // SAFETY: on our CPU in a critical section, as the running thread;
        // `t` is held by `to`, and of this CPU when its `gd` is ours (only
        // this CPU hands its threads over, not while we are in it).
        unsafe {
            let me = td as *const Thread as *mut Thread;
            let other = t as *const Thread as *mut Thread;
            let rq = gd.runq();
            if ptr::eq(t.gd.load(Ordering::Acquire), gd)
                && !t.has(tdf::RUNQ | tdf::MIGRATING | tdf::EXITING | tdf::IDLE)
                && gd.reqflags.load(Ordering::Relaxed) & (crit::rqf::RESCHED | crit::rqf::SLICE)
                    == 0
                && rq.hand_over(me, other)
            {
                if gd.intr_nesting.get() != 0 {
                    switch_in_interrupt();
                }
                if td.toks.is_empty() && t.toks.is_empty() {
                    // No token to release or acquire, no choice to make, no
                    // request to clear (none was pending, and none can
                    // arrive in our section): switch.
                    switch_to::<false>(td, gd, t);
                } else {
                    // Release ours; take `t` if its tokens can be had, else
                    // the next thread that can run.
                    switch_in_crit::<true>(td, gd, other);
                }
            } else {
                block_for_slow(td, t);
            }
        }
        if entered {
            crit_exit_td(td);
        }
    }

    /// Whether a thread other than this one is runnable on this CPU now: a
    /// receiver that finds nothing to do blocks at once then, rather than
    /// watch for work ([`watch_until`](Self::watch_until) would return at
    /// once too). Inside a critical section the answer holds until the
    /// section ends or this thread switches. Not in DragonFly (its idle
    /// loop alone polls).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     assert!(!cur.others_runnable());
    ///     let t = cur.spawn_on(cur.cpu_id(), |_| {}).unwrap();
    ///     assert!(cur.others_runnable());
    ///     cur.join(&t);
    ///     assert!(!cur.others_runnable());
    /// });
    /// ```
    #[inline(always)]
    pub fn others_runnable(&self) -> bool {
        let td = self.td();
        let entered = td.critcount.load(Ordering::Relaxed) == 0;
        if entered {
            crit::enter(&td.critcount);
        }
        // SAFETY: on our CPU in a critical section.
        let r = unsafe { td.gd().runq() }.len() > usize::from(td.has(tdf::RUNQ));
        if entered {
            crit_exit_td(td);
        }
        r
    }
}

impl MyCpu<'_> {
    /// [`unpark`](Self::unpark) the thread `t` names and, when it would take
    /// the running thread's turn, switch to it at once: the reply to a
    /// synchronous sender of this CPU hands the CPU straight back, as a
    /// called procedure returns to its caller, and the replier (which stays
    /// runnable, right behind `t`) resumes when `t` blocks or yields. Only
    /// when the running thread is a thread outside any critical section
    /// and interrupt (a point where its final `crit_exit` could switch
    /// anyway), neither it nor `t` holds tokens, `t` lives here, is not
    /// runnable and has the running thread's priority, the running thread
    /// is the only runnable thread of that priority, nothing higher is
    /// runnable, and no reschedule or time-slice request is pending; so `t`
    /// runs ahead of no thread the scheduler ranks at least as high, and
    /// no thread waits longer than it would behind the replier. Otherwise
    /// this is `unpark`. Returns whether `t` lives here (as `unpark`).
    /// Not in DragonFly (its `lwkt_replymsg` only schedules the sender).
    ///
    /// # Safety
    /// As for [`unpark`](Self::unpark).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let t = cur.park_token();
    ///     let helper = cur.spawn_on(cur.cpu_id(), move |h| {
    ///         // SAFETY: the main thread waits in `block` until this call.
    ///         assert!(unsafe { h.my_cpu().unpark_hand_back(t) });
    ///     }).unwrap();
    ///     cur.block(); // the helper runs, and hands the CPU straight back
    ///     assert!(!helper.has_exited());
    ///     cur.join(&helper);
    /// });
    /// ```
    #[inline(always)]
    pub unsafe fn unpark_hand_back(self, t: ParkToken) -> bool {
        let gd = self.cpu();
        let me = gd.cur();
        // SAFETY: caller: the block is alive.
        let td = unsafe { t.thread() };
        if me.critcount.load(Ordering::Relaxed) != 0
            || gd.intr_nesting.get() != 0
            || td.machine_id != gd.machine_id.get()
            || !ptr::eq(td.gd.load(Ordering::Acquire), gd)
            || td.has(tdf::RUNQ | tdf::MIGRATING | tdf::EXITING | tdf::IDLE)
            || !me.toks.is_empty()
            || !td.toks.is_empty()
        {
            // SAFETY: forwarded.
            return unsafe { self.unpark(t) };
        }
        crit::enter(&me.critcount);
        let (me_p, td_p) = (
            me as *const Thread as *mut Thread,
            td as *const Thread as *mut Thread,
        );
        // SAFETY: on our CPU in a critical section, as the running thread
        // (not an interrupt: none is nested, and the count was 0); `td` is
        // a live thread of this CPU (checked: only this CPU hands its
        // threads over, not while we are in it), neither idle, migrating
        // nor exiting, holding no token, as are we.
        unsafe {
            if gd.reqflags.load(Ordering::Relaxed) & (crit::rqf::RESCHED | crit::rqf::SLICE) == 0
                && gd.runq().hand_back(me_p, td_p)
            {
                // No token to release or acquire, no request to clear.
                switch_to::<false>(me, gd, td);
            } else {
                schedule_local(gd, td);
            }
        }
        crit_exit_td(me);
        true
    }
}

/// [`Cur::block_for`] when `to` does not take the running thread's place:
/// schedule it wherever it lives, then block as [`Cur::block`] does.
///
/// # Safety
/// `td` is the running thread, in a critical section on its CPU; `t` is
/// held by the caller and of `td`'s machine.
#[inline(never)]
unsafe fn block_for_slow(td: &Thread, t: &Thread) {
    let gd = td.gd();
    // SAFETY: forwarded.
    unsafe {
        schedule_any(gd, t);
        dequeue(gd, td);
        switch_in_crit::<true>(td, gd, gd.runq().first());
    }
}
