//! Watching the IPI rings instead of sleeping: a CPU with nothing to run
//! (or a thread that expects an answer soon) polls its incoming rings for a
//! while, and senders that see it watching do not kick it. No DragonFly
//! equivalent (DragonFly's idle loop polls `gd_reqflags` without telling
//! senders).

use crate::cpu::Cpu;
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::{self};
use crate::sleep::RestoreOnUnwind;
use crate::splz::splz;
use crate::sync::Ordering;
use crate::thread::{tdf, Thread};
use crate::Cur;

/// The watch of [`Cur::watch_until`], entered in its critical section on
/// `gd`, the running thread `td`'s CPU, with no other thread runnable
/// there; leaves the section.
#[inline(never)]
pub(crate) fn watch_in_crit(
    td: &Thread,
    gd: &Cpu,
    budget: u64,
    mut ready: impl FnMut() -> bool,
) -> bool {
    // SAFETY: on our CPU in a critical section.
    let others = |gd: &Cpu| unsafe { gd.runq() }.len() > usize::from(td.has(tdf::RUNQ));
    // `ready` is the caller's: if it panics, we unwind out of the
    // critical section (the watch itself may go on).
    let restore = RestoreOnUnwind(td);
    let arch = gd.machine().arch;
    let budget = budget.min(arch.idle_poll_cycles());
    if budget == 0 {
        // Nothing to watch for.
        let r = ready();
        core::mem::forget(restore);
        crit_exit_td(td);
        return r;
    }
    let start = arch.cycles();
    if gd.watching.get() {
        // A thread waiting for work keeps the watch alive.
        gd.watch_seen.set(start);
    } else {
        gd.begin_watch();
    }
    let mut turn = 0u32;
    let got = loop {
        if gd.watch_sees_work() {
            // SAFETY: on our CPU in a critical section.
            unsafe { gd.splz_watched() };
        }
        if ready() {
            break true;
        }
        turn = turn.wrapping_add(1);
        if others(gd)
            || gd.reqflags.load(Ordering::Relaxed) & crit::rqf::RESCHED != 0
            || gd.shutdown.load(Ordering::Relaxed)
            || !gd.watching.get()
            || (turn % WATCH_CLOCK_EVERY == 0 && arch.cycles().wrapping_sub(start) >= budget)
        {
            break false;
        }
        core::hint::spin_loop();
    };
    // The watch goes on (the idle loop's, if we now sleep): the next
    // message finds this CPU still watching, and its sender kicks no one.
    core::mem::forget(restore);
    crit_exit_td(td);
    got
}

/// A watch reads the clock at one turn in this many (a power of two): a
/// read (`rdtsc` on the hosted backend) costs about 10 ns on this
/// project's KVM guest, as much as the rest of a turn, and a message that
/// lands during it waits for the turn to end. The budget is then overrun
/// by at most this many turns (a few hundred nanoseconds).
pub(crate) const WATCH_CLOCK_EVERY: u32 = 8;

/// While a CPU watches its rings, its threads look at them at one final
/// `crit_exit` in this many (a power of two). Looking at every exit slowed
/// a two-CPU request stream 2x (`msg_async`, 0.15 -> 0.31-0.38 us per
/// request): each look at a ring the sender is still filling takes the
/// line it writes next, so the two sides pass it back and forth once per
/// entry instead of once per line of entries.
pub(crate) const WATCH_LOOK_EVERY: u32 = 16;

impl Cur {
    /// Spin in this thread until `ready()` holds, for up to `budget` cycles
    /// (at most the backend's [`Arch::idle_poll_cycles`]), while no other
    /// thread can run on this CPU; returns whether it held. Meanwhile this
    /// thread watches the CPU's IPI rings as the idle loop would and runs
    /// what arrives (senders see the watch and neither mark nor kick), so a
    /// message that makes `ready()` true is served here with no switch, no
    /// wake-up and no interrupt: the spin-before-block of a receiver that
    /// expects work within microseconds.
    ///
    /// It stops early when another thread becomes runnable here, a
    /// reschedule is requested or the CPU shuts down. The watch outlives
    /// the call (the idle loop's, if the caller now sleeps; otherwise its
    /// threads look at the rings at their critical-section exits) until a
    /// whole `idle_poll_cycles` passes with nothing found and no thread
    /// waiting here. `ready` runs in a
    /// critical section on this CPU and must not block. Where the backend
    /// does not poll (`idle_poll_cycles` is 0, as on bare metal, where
    /// waiting for an interrupt is cheap) it only checks `ready()` once.
    ///
    /// [`Arch::idle_poll_cycles`]: crate::Arch::idle_poll_cycles
    ///
    /// ```
    /// use core::sync::atomic::{AtomicBool, Ordering};
    /// use lwkt_core::{CpuId, MyCpu};
    ///
    /// static DONE: AtomicBool = AtomicBool::new(false);
    /// fn done(_: MyCpu<'_>, _: usize, _: usize) {
    ///     DONE.store(true, Ordering::Release);
    /// }
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let h = cur
    ///         .spawn_on(CpuId::new(1), |me| {
    ///             // Runs the IPI that sets DONE while it spins.
    ///             while !me.watch_until(1_000_000, || DONE.load(Ordering::Acquire)) {}
    ///         })
    ///         .unwrap();
    ///     cur.my_cpu().send_ipi(CpuId::new(1), done, 0, 0).unwrap();
    ///     cur.join(&h);
    /// });
    /// ```
    #[inline(always)]
    pub fn watch_until(&mut self, budget: u64, mut ready: impl FnMut() -> bool) -> bool {
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        // Someone else to run (a thread this one just woke, say): no watch,
        // and no need to ask the backend (a call through `dyn Arch`). The
        // common case of a receiver that just answered a sender of its own
        // CPU, so inline; the watch itself is out of line.
        // SAFETY: on our CPU in a critical section.
        if unsafe { gd.runq() }.len() > usize::from(td.has(tdf::RUNQ)) {
            // `ready` is the caller's: if it panics, we unwind out of the
            // critical section.
            let restore = RestoreOnUnwind(td);
            let r = ready();
            core::mem::forget(restore);
            crit_exit_td(td);
            return r;
        }
        watch_in_crit(td, gd, budget, ready)
    }
}

impl Cpu {
    /// Start watching the rings (see
    /// [`Arch::idle_poll_cycles`](crate::Arch::idle_poll_cycles)): from now
    /// on senders neither mark nor kick, and this CPU looks at every ring
    /// in its idle loop, in [`Cur::watch_until`] and at every final
    /// `crit_exit` of its threads, until the watch ends: when the idle loop
    /// is about to wait, or after `idle_poll_cycles` in which no look found
    /// work. Runs on this CPU in a critical section.
    pub(crate) fn begin_watch(&self) {
        self.watching.set(true);
        self.watch_seen.set(self.machine().arch.cycles());
        self.watch_found.set(false);
        self.reqflags.fetch_or(crit::rqf::WATCH, Ordering::Relaxed);
        self.doorbell().begin_watch();
    }

    /// End the watch and run what senders queued without marking it; from
    /// now on they mark and kick. Runs on this CPU in a critical section.
    pub(crate) fn end_watch(&self) {
        self.doorbell().end_watch();
        self.drain_after_watch();
    }

    /// The watch has ended (`npoll` cleared): leave watching mode and run
    /// every ring once. Runs on this CPU in a critical section.
    pub(crate) fn drain_after_watch(&self) {
        self.watching.set(false);
        self.reqflags
            .fetch_and(!crit::rqf::WATCH, Ordering::Relaxed);
        // SAFETY: on this CPU, in a critical section.
        unsafe { ipiq::process_with(self, true) };
    }

    /// `splz`, then the watch's bookkeeping: note when a look found work,
    /// and end a watch that has found none for `idle_poll_cycles`.
    ///
    /// # Safety
    /// On this CPU, in a critical section.
    pub(crate) unsafe fn splz_watched(&self) {
        let before = self.stats.ipis_received.get();
        // SAFETY: forwarded.
        unsafe { splz(self) };
        if self.watching.get() {
            if self.stats.ipis_received.get() != before {
                // Work found: the watch's window starts again, timed from
                // the next look that finds none. Not read now: a clock read
                // here would delay what the work just started (the thread
                // that watches for a reply, say) by a read's cost.
                self.watch_found.set(true);
                return;
            }
            let arch = self.machine().arch;
            let now = arch.cycles();
            if self.watch_found.replace(false) {
                self.watch_seen.set(now);
            } else if now.wrapping_sub(self.watch_seen.get()) > arch.idle_poll_cycles() {
                self.end_watch();
            }
        }
    }
}
