//! Deferred work at the final `crit_exit`: interrupts and IPIs that
//! arrived inside a critical section were only recorded in the CPU's
//! request flags (`rqf`); `splz` runs them.
//!
//! DragonFly: `splz()`, `lwkt_process_ipiq()` at `crit_exit`.

use crate::cpu::Cpu;
use crate::crit;
use crate::ipiq::{self};
use crate::sync::Ordering;
use crate::thread::{tdf, Thread};
use crate::watch::WATCH_LOOK_EVERY;

/// Run deferred work at the final `crit_exit` (DragonFly `splz()`), and
/// look at the rings if the CPU watches them (at one exit in
/// [`WATCH_LOOK_EVERY`]).
#[cold]
#[inline(never)]
pub(crate) fn splz_from_thread(td: &Thread) {
    let gd = td.gd();
    let f = gd.reqflags.load(Ordering::Relaxed);
    let look = if f & crit::rqf::IDLECHECK != 0 {
        true
    } else if f & crit::rqf::WATCH != 0 {
        // Only the watch brought us here (or it and a preemption).
        let n = gd.watch_exits.get();
        gd.watch_exits.set(n.wrapping_add(1));
        n % WATCH_LOOK_EVERY == 0
    } else {
        false
    };
    if look {
        loop {
            crit::enter(&td.critcount);
            // SAFETY: on `gd` (the current thread's CPU), in a critical
            // section.
            unsafe { gd.splz_watched() };
            // Again only for deferred work that arrived while we ran (a
            // request bit); the watch's next look is the next exit's.
            if !crit::exit_entered_for(&td.critcount, &gd.reqflags, crit::rqf::IDLECHECK) {
                break;
            }
        }
    }
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::PREEMPT != 0 {
        // SAFETY: `td` runs, at its final `crit_exit`: thread context,
        // outside any critical section.
        unsafe { crate::intr::preempt(td) };
    }
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::SLICE != 0
        && !td.has(tdf::IDLE)
        && (!td.has(tdf::IN_FRAME) || td.toks.is_empty())
    {
        // Its quantum is up and a peer waits: behind its peers, and
        // switch (`yield_td` clears the request).
        gd.stats.slices.add(1);
        crate::switch::yield_td(td);
        // In thread context, also give way to the other CPUs of this one's
        // host thread, if the backend multiplexes (never from an interrupt
        // frame: the interrupted code may hold what they need).
        if !td.has(tdf::IN_FRAME) {
            gd.machine().arch.yield_point();
        }
    }
}

/// `yield_now` found request flags set: run deferred work, and clear the
/// reschedule request (the switch that follows serves it; no new one can
/// arrive meanwhile, since interrupts wait for the critical section).
///
/// # Safety
/// As for [`splz`].
#[cold]
#[inline(never)]
pub(crate) unsafe fn yield_flags(gd: &Cpu) {
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK != 0 {
        // SAFETY: forwarded.
        unsafe { splz(gd) };
    }
    if gd.reqflags.load(Ordering::Relaxed) & (crit::rqf::RESCHED | crit::rqf::SLICE) != 0 {
        gd.reqflags
            .fetch_and(!(crit::rqf::RESCHED | crit::rqf::SLICE), Ordering::Relaxed);
    }
}

/// Drain deferred requests. DragonFly `splz()`.
///
/// # Safety
/// On `gd`, in a critical section.
pub(crate) unsafe fn splz(gd: &Cpu) {
    loop {
        // The bits as cleared, not as loaded: one set in between must not
        // be cleared unseen. Acquire: pairs with `post_interrupt`'s
        // Release, so `intr::deliver` sees the lines posted.
        let f = if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK != 0 {
            gd.reqflags
                .fetch_and(!crit::rqf::IDLECHECK, Ordering::Acquire)
        } else {
            0
        };
        if f & crit::rqf::INTPEND != 0 {
            // SAFETY: forwarded.
            unsafe { crate::intr::deliver::<false>(gd) };
        }
        if f & crit::rqf::TIMER != 0 {
            // SAFETY: forwarded.
            unsafe { crate::timer::run(gd) };
        }
        // SAFETY: forwarded.
        unsafe { ipiq::process(gd) };
        if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK == 0 {
            break;
        }
    }
}
