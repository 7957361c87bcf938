//! Switching threads: pick the next thread (the head of the highest
//! non-empty priority that can have its tokens), switch contexts, and
//! finish the switch (hand over a thread that exited or migrates).
//!
//! DragonFly: `lwkt_switch()`, `lwkt_yield()`, `lwkt_switch_return()`.
//!
//! Rules kept here:
//! - a thread runs only on its own CPU (`td_gd`);
//! - a running thread stays on its run queue; `switch` picks the head of
//!   the highest non-empty priority, which may be the caller itself;
//! - a thread runs only holding all its tokens: they are released when it
//!   switches away and acquired again before it is switched to.

use crate::cpu::Cpu;
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::{self, IpiMsg};
use crate::migrate::setcpu_remote;
use crate::schedule::dequeue;
use crate::splz::{splz_from_thread, yield_flags};
use crate::sync::Ordering;
use crate::thread::{tdf, Thread, MPF_EXITED};
use crate::{Cur, MyCpu};
use core::ptr::{self, NonNull};

impl Cur {
    /// Switch to the best runnable thread of this CPU, if it is not this one.
    /// DragonFly: `lwkt_switch()`.
    pub fn switch(&mut self) {
        // SAFETY: called by the running thread.
        unsafe { switch_from(self.td()) };
    }

    /// Let other runnable threads of the same or higher priority run, then
    /// continue (round-robin within a priority). DragonFly: `lwkt_yield()`.
    ///
    /// Always inlined: the context switch leaves the CPU's return-address
    /// predictor holding the old thread's return addresses, so a `ret` from
    /// an out-of-line `yield_now` on the resumed thread mispredicted once
    /// per switch (9 against 16 ns per switch, measured on the hosted
    /// backend). Inlined, the switch continues straight in the caller.
    #[inline(always)]
    pub fn yield_now(&mut self) {
        if !yield_td(self.td()) {
            // Nothing else here could run: the thread most likely waits,
            // through lwkt, for another CPU. Let the backend run another
            // CPU that shares this one's host thread, if any (thread
            // context, outside any critical section).
            self.td().gd().machine().arch.yield_point();
        }
    }

    /// Take this thread off the run queue and switch away, in one critical
    /// section; returns when someone has scheduled it again
    /// ([`MyCpu::schedule`]) and it runs. [`deschedule_self`](Self::deschedule_self)
    /// then [`switch`](Self::switch), without the second section and
    /// inlined: the thread resumes in its caller's frame (see
    /// [`yield_now`](Self::yield_now)). Called inside a critical section,
    /// nothing that the section defers can run between the caller's check
    /// of its wait condition and the switch, so a wake-up made by an IPI is
    /// not lost. DragonFly: `lwkt_deschedule_self()` + `lwkt_switch()`.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     // A thread of this CPU wakes us once we have blocked.
    ///     let waker = cur.spawn_on(cur.cpu_id(), move |w| w.my_cpu().schedule(&me)).unwrap();
    ///     cur.block();
    ///     cur.join(&waker);
    /// });
    /// ```
    #[inline(always)]
    pub fn block(&mut self) {
        let td = self.td();
        // Inside the caller's section already (the usual case): no section
        // of our own, whose exit could only lower the count.
        let entered = td.critcount.load(Ordering::Relaxed) == 0;
        if entered {
            crit::enter(&td.critcount);
        }
        let gd = td.gd();
        // SAFETY: on our CPU in a critical section, as the running thread.
        unsafe {
            dequeue(gd, td);
            switch_in_crit::<true>(td, gd, gd.runq().first());
        }
        if entered {
            crit_exit_td(td);
        }
    }

    /// [`block`](Self::block) for at most `timeout`: returns `Ok` when
    /// someone scheduled this thread, `Err(TimedOut)` when the timeout
    /// passed first (a wake-up in the same instant may also have
    /// happened: callers wait in a loop on their own condition, and check
    /// it once more). A zero timeout switches away once and times out at
    /// the next timer interrupt. Not in DragonFly (its blocking waits take
    /// a `timo` each).
    ///
    /// # Panics
    /// If the backend has no clock ([`Arch::clock`](crate::Arch::clock)).
    ///
    /// ```
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     // Nobody schedules us.
    ///     assert!(cur.block_timeout(Duration::from_millis(1)).is_err());
    ///     let me = cur.handle();
    ///     let waker = cur.spawn_on(cur.cpu_id(), move |w| w.my_cpu().schedule(&me)).unwrap();
    ///     assert_eq!(cur.block_timeout(Duration::from_secs(60)), Ok(()));
    ///     cur.join(&waker);
    /// });
    /// ```
    #[track_caller]
    pub fn block_timeout(&mut self, timeout: core::time::Duration) -> Result<(), crate::TimedOut> {
        let td = self.td();
        let deadline = crate::timer::deadline_after(td.gd(), timeout);
        crit::enter(&td.critcount);
        let fired = {
            let gd = td.gd();
            // Never moved: armed here, dropped (disarmed) in place at the
            // end of this block, in the critical section.
            let timer = crate::timer::SleepTimer::new(td);
            // SAFETY: on our CPU in a critical section, by this thread,
            // which cannot migrate while blocked here; `timer` stays put.
            // Expired timers run only from `splz`, never inside our
            // section, so the switch below always happens and the timer
            // (or a wake-up) schedules us again.
            unsafe {
                timer.arm(deadline);
                dequeue(gd, td);
                switch_in_crit::<true>(td, gd, gd.runq().first());
            }
            timer.fired()
        };
        crit_exit_td(td);
        if fired {
            Err(crate::TimedOut)
        } else {
            Ok(())
        }
    }
}

/// `Cur::yield_now` for `td`, which must be the running thread (called on
/// its own behalf, outside interrupt processing): behind its
/// equal-priority peers, and switch. Also the round-robin of time slicing
/// (`slice`). Returns whether it switched.
#[inline(always)]
pub(crate) fn yield_td(td: &Thread) -> bool {
    crit::enter(&td.critcount);
    let gd = td.gd();
    // Deferred interrupts first (DragonFly: only when flagged), and the
    // reschedule request, which the switch below serves.
    if gd.reqflags.load(Ordering::Relaxed)
        & (crit::rqf::IDLECHECK | crit::rqf::RESCHED | crit::rqf::SLICE)
        != 0
    {
        // SAFETY: on our CPU in a critical section.
        unsafe { yield_flags(gd) };
    }
    // SAFETY: on our CPU in a critical section, as the running thread.
    let switched = unsafe {
        // Behind our equal-priority peers; a higher-priority thread, if
        // any, runs next anyway.
        let first = if td.has(tdf::RUNQ) {
            gd.runq().rotate(td as *const Thread as *mut Thread)
        } else {
            gd.runq().first()
        };
        switch_in_crit::<false>(td, gd, first)
    };
    // We entered above: leave without the underflow check.
    if crit::exit_entered(&td.critcount, &td.gd().reqflags) {
        splz_from_thread(td);
    }
    switched
}

/// The core of `lwkt_switch`: run the best thread of this CPU whose tokens
/// can all be had. Returns whether it switched.
///
/// The caller's tokens are released first (a thread holds tokens only while
/// it runs); each candidate, in run order, gets all of its tokens or is
/// skipped (it stays at its place in the queue, so it is tried first again
/// next time and is not starved by the threads that run meanwhile). If
/// nothing can run, the idle thread runs and retries.
///
/// # Safety
/// `td` is the running thread.
pub(crate) unsafe fn switch_from(td: &Thread) -> bool {
    crit::enter(&td.critcount);
    let gd = td.gd();
    // SAFETY: forwarded; in a critical section on `td`'s CPU.
    let switched = unsafe { switch_in_crit::<true>(td, gd, gd.runq().first()) };
    crit_exit_td(td);
    switched
}

/// [`switch_from`] for a caller already in a critical section on `gd`, the
/// running thread's CPU, which passes the run queue's first thread; returns
/// in it (on `td`'s CPU then, which a migration may have changed).
///
/// The common case is inline and straight: no token to release, and the
/// first thread of the run queue holds none. Everything else (tokens to
/// release or re-acquire, a candidate skipped) is out of line.
///
/// # Safety
/// `td` is the running thread, `gd` its CPU, inside a critical section.
#[inline(always)]
pub(crate) unsafe fn switch_in_crit<const CLEAR_RESCHED: bool>(
    td: &Thread,
    gd: &Cpu,
    first: *mut Thread,
) -> bool {
    debug_assert!(td.critcount.load(Ordering::Relaxed) > 0);
    // SAFETY: on our CPU in a critical section.
    debug_assert!(first == unsafe { gd.runq() }.first());
    if gd.intr_nesting.get() != 0 {
        switch_in_interrupt();
    }
    // SAFETY: queued threads are live; `first` is not running (or is `td`).
    let ntd: &Thread =
        if !first.is_null() && unsafe { (*first).toks.is_empty() } && td.toks.is_empty() {
            // SAFETY: as above.
            unsafe { &*first }
        } else {
            // SAFETY: forwarded.
            unsafe { pick_with_tokens(td, gd, first) }
        };
    if ptr::eq(ntd, td) {
        debug_assert!(td.toks.all_held() || td.has(tdf::IDLE));
        return false;
    }
    // SAFETY: forwarded; `ntd` is a runnable thread of `gd` holding its
    // tokens, not `td`.
    unsafe { switch_to::<CLEAR_RESCHED>(td, gd, ntd) };
    true
}

/// The switch itself, once the next thread is chosen: make `ntd` the
/// CPU's current thread, switch contexts, and finish the switch when `td`
/// runs again (returns then). With `CLEAR_RESCHED`, a pending reschedule
/// or time-slice request is served by this switch and cleared (the caller
/// chose the best thread).
///
/// # Safety
/// As for [`switch_in_crit`], not in interrupt context; `ntd` is not
/// `td`, is a thread of `gd` on its run queue whose tokens are all held
/// (or it holds none), and `td`'s tokens are released (or it holds none).
#[inline(always)]
pub(crate) unsafe fn switch_to<const CLEAR_RESCHED: bool>(td: &Thread, gd: &Cpu, ntd: &Thread) {
    debug_assert!(!ptr::eq(ntd, td));
    // Only this CPU queues threads on its run queue, and only its own
    // (`schedule_local`); a migrating thread leaves the queue before it
    // changes owner.
    debug_assert!(
        ptr::eq(ntd.gd.load(Ordering::Relaxed), gd),
        "lwkt: CPU {} was about to run a thread of another CPU",
        gd.id().get()
    );
    gd.curthread
        .store(ntd as *const Thread as *mut Thread, Ordering::Relaxed);
    // The reschedule request is served by this switch. `yield_now` checks
    // the flags before it switches and clears the request itself.
    if CLEAR_RESCHED
        && gd.reqflags.load(Ordering::Relaxed) & (crit::rqf::RESCHED | crit::rqf::SLICE) != 0
    {
        gd.reqflags
            .fetch_and(!(crit::rqf::RESCHED | crit::rqf::SLICE), Ordering::Relaxed);
    }
    gd.stats.switches.add(1);
    ntd.switches.set(ntd.switches.get() + 1);
    // SAFETY: `machine` was set by `bind` before this CPU ran anything, and
    // the machine outlives its CPUs' threads (`MachineState::bind` contract).
    let arch = unsafe { &*gd.machine.get() }.arch;
    // SAFETY: inside a critical section; `ntd.ctx` was saved by `switch`
    // or prepared by `init_context`.
    unsafe { arch.switch(&td.ctx, &ntd.ctx) };
    // Running again (perhaps on another CPU after a migration), with all
    // our tokens: whoever switched to us acquired them.
    // SAFETY: just switched to, in a critical section.
    unsafe { finish_switch(td.gd()) };
    debug_assert!(td.toks.all_held() || td.has(tdf::IDLE));
}

#[cold]
#[inline(never)]
pub(crate) fn switch_in_interrupt() -> ! {
    panic!("lwkt: switch from interrupt or IPI context")
}

/// The general choice of the next thread: release the running thread's
/// tokens, then take the first queued thread whose tokens can all be
/// acquired (DragonFly `lwkt_getalltokens`), or the idle thread.
///
/// # Safety
/// As for [`switch_in_crit`]; `first` is the run queue's first thread.
#[cold]
#[inline(never)]
pub(crate) unsafe fn pick_with_tokens<'a>(
    td: &'a Thread,
    gd: &'a Cpu,
    first: *mut Thread,
) -> &'a Thread {
    if !td.toks.is_empty() {
        // SAFETY: our own stack, on our CPU.
        unsafe { td.toks.release_all() };
    }
    // SAFETY: on our CPU in a critical section.
    let rq = unsafe { gd.runq() };
    let mut next = first;
    loop {
        if next.is_null() {
            return &gd.idle;
        }
        // SAFETY: queued threads are live.
        let cand = unsafe { &*next };
        // A preempted thread kept its tokens (`intr::preempt`), and may
        // have been stopped between a token's release and the pop of its
        // reference (or a push and its acquisition): it resumes as it was,
        // its stack untouched. DragonFly: `lwkt_switch`'s
        // `havethread_preempted`.
        if cand.has(tdf::PREEMPTED)
            || cand.toks.is_empty()
            || cand.toks.all_held()
            // SAFETY: `cand` is not running (or is `td`, whose tokens we
            // just released) and not stopped mid-operation (not
            // `PREEMPTED`); its stack is touched only by this CPU.
            || unsafe { cand.toks.acquire_all() }
        {
            return cand;
        }
        next = rq.after(cand);
    }
}

/// After a switch, on the thread switched to: finish what the previous
/// thread could not do while still on its stack. DragonFly:
/// `lwkt_switch_return()`.
///
/// # Safety
/// On `gd`, right after a switch, in a critical section.
#[inline(always)]
pub(crate) unsafe fn finish_switch(gd: &Cpu) {
    if cfg!(debug_assertions) {
        if let Some(c) = gd.machine().arch.current_cpu() {
            assert!(
                ptr::eq(c.as_ptr(), gd),
                "lwkt: thread '{}' of CPU {} runs on another CPU",
                gd.cur().name,
                gd.id().get()
            );
        }
    }
    // Set only by a thread that exits or migrates, just before it switches.
    let prev = gd.prev.get();
    if !prev.is_null() {
        // SAFETY: forwarded.
        unsafe { finish_switch_slow(gd, prev) };
    }
}

/// The previous thread exited or is migrating: hand it on.
///
/// # Safety
/// As for [`finish_switch`]; `prev` is the thread that switched to us.
#[cold]
#[inline(never)]
pub(crate) unsafe fn finish_switch_slow(gd: &Cpu, prev: *mut Thread) {
    gd.prev.set(ptr::null_mut());
    // SAFETY: the previous thread is held (by itself) until we release it.
    let p = unsafe { &*prev };
    debug_assert!(p.has(tdf::EXITING | tdf::MIGRATING));
    if p.has(tdf::EXITING) {
        p.mpflags.fetch_or(MPF_EXITED, Ordering::Release);
        let chan = prev as usize;
        MyCpu::new(gd).wakeup(chan);
        // SAFETY: the thread's own hold; it is off the CPU for good.
        unsafe { Thread::release(NonNull::new_unchecked(prev)) };
    } else {
        let target = p.migrate_to.get();
        // SAFETY: `target` is a CPU of this machine (checked by `migrate`).
        let tid = unsafe { (*target).id() };
        p.cpuid.store(tid.get(), Ordering::Relaxed);
        p.gd.store(target as *mut Cpu, Ordering::Release);
        // SAFETY: on `gd` in a critical section.
        let r = unsafe {
            ipiq::send(
                gd,
                tid,
                &[IpiMsg {
                    func: setcpu_remote,
                    arg1: prev as usize,
                    arg2: 0,
                }],
            )
        };
        debug_assert!(r.is_ok());
    }
}
