//! Sleep and wakeup on a wait channel, without lost wake-ups.
//!
//! DragonFly: `tsleep()`, `tsleep_interlock()`, `wakeup()`,
//! `gd_tsleep_hash`, `slpque_cpumasks[]`.
//!
//! Sleep queues are per CPU (a hash of channels); a machine-wide mask per
//! hash slot records which CPUs may have sleepers there, so `wakeup` sends
//! an IPI only to those CPUs. A sleeper queues itself and publishes its mask
//! bit *before* it re-checks its condition; a waker makes the condition true
//! *before* it reads the mask (a full fence on both sides), so one of them
//! always sees the other.

use crate::crit;
use crate::crit::crit_exit_td;
use crate::switch::switch_in_crit;
use crate::{Cur, MyCpu};
use core::ptr;

use crate::cpu::{Cpu, CpuMask};
use crate::sync::{fence_seqcst, Ordering};
use crate::thread::{tdf, Thread};

/// Slots in each CPU's sleep hash (and in the machine's CPU-mask table).
pub(crate) const SLEEP_HASH: usize = 64;

#[inline]
pub(crate) fn slot(chan: usize) -> usize {
    // Fibonacci hashing: channels are addresses, often 8- or 64-aligned.
    (chan.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> (usize::BITS - 6)) % SLEEP_HASH
}

#[derive(Debug)]
pub(crate) struct SleepQueues {
    head: [*mut Thread; SLEEP_HASH],
}

impl SleepQueues {
    pub(crate) const fn new() -> Self {
        SleepQueues {
            head: [ptr::null_mut(); SLEEP_HASH],
        }
    }
}

/// Owner, in a critical section: queue the current thread `td` on `chan`
/// and publish this CPU in the slot's mask (DragonFly `tsleep_interlock`).
///
/// # Safety
/// On `gd`, in a critical section; `td` is `gd`'s live current thread.
pub(crate) unsafe fn interlock(gd: &Cpu, td: &Thread, chan: usize) {
    if td.has(tdf::TSLEEPQ) {
        if td.wchan.get() == chan {
            return;
        }
        // SAFETY: forwarded.
        unsafe { unqueue(gd, td) };
    }
    let s = slot(chan);
    // SAFETY: owner in a critical section.
    let q = unsafe { gd.sleepq() };
    let me = td as *const Thread as *mut Thread;
    td.wchan.set(chan);
    td.sl_prev.set(ptr::null_mut());
    td.sl_next.set(q.head[s]);
    if !q.head[s].is_null() {
        // SAFETY: queued threads are live.
        unsafe { (*q.head[s]).sl_prev.set(me) };
    }
    q.head[s] = me;
    td.set(tdf::TSLEEPQ);
    gd.machine().sleep_masks[s].set(gd.id(), Ordering::SeqCst);
    // Orders the bit before the caller's re-check of its condition; pairs
    // with the fence in `remote_sleepers`. The read-modify-write alone does
    // not: a later load may be satisfied before its store is visible
    // (store buffering, allowed by the language and by weakly ordered
    // CPUs), and then the sleeper misses the condition while the waker
    // misses the bit (the loom model `cross_cpu_wakeup_is_never_lost`).
    fence_seqcst();
}

/// One pass of a sleep on the sleeper's CPU (DragonFly
/// `tsleep_interlock()`, the caller's re-check, then `tsleep()` taking the
/// thread off its run queue): queue `td` on `chan` and publish it
/// ([`interlock`]), then run `cond`. If it holds, leave the sleep queue and
/// return `true`. Otherwise leave the run queue and return `false`: the
/// caller switches away, and a wakeup of `chan` puts `td` back on the run
/// queue (`Cur::sleep_until` loops on this; the loom models run it).
///
/// # Safety
/// On `gd`, in a critical section; `td` is `gd`'s live current thread.
pub(crate) unsafe fn sleep_pass(
    gd: &Cpu,
    td: &Thread,
    chan: usize,
    cond: impl FnOnce() -> bool,
) -> bool {
    // SAFETY: forwarded.
    unsafe { interlock(gd, td, chan) };
    if cond() {
        if td.has(tdf::TSLEEPQ) {
            // SAFETY: forwarded; `td` is on this CPU's sleep queue.
            unsafe { unqueue(gd, td) };
        }
        return true;
    }
    // SAFETY: forwarded.
    unsafe { crate::schedule::dequeue(gd, td) };
    false
}

/// Owner, in a critical section: take `td` off its sleep queue.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a live thread of `gd` on a sleep queue.
#[inline]
pub(crate) unsafe fn unqueue(gd: &Cpu, td: &Thread) {
    debug_assert!(td.has(tdf::TSLEEPQ));
    let s = slot(td.wchan.get());
    // SAFETY: owner in a critical section.
    let q = unsafe { gd.sleepq() };
    let (n, p) = (td.sl_next.get(), td.sl_prev.get());
    if p.is_null() {
        q.head[s] = n;
    } else {
        // SAFETY: queued threads are live.
        unsafe { (*p).sl_next.set(n) };
    }
    if !n.is_null() {
        // SAFETY: as above.
        unsafe { (*n).sl_prev.set(p) };
    }
    td.clear(tdf::TSLEEPQ);
    td.wchan.set(0);
    if q.head[s].is_null() {
        gd.machine().sleep_masks[s].clear(gd.id(), Ordering::SeqCst);
    }
}

/// Owner, in a critical section: wake every thread of `gd` sleeping on `chan`.
///
/// # Safety
/// On `gd`, in a critical section.
#[inline]
pub(crate) unsafe fn wakeup_local(gd: &Cpu, chan: usize) {
    let s = slot(chan);
    // SAFETY: owner in a critical section.
    let mut t = unsafe { gd.sleepq() }.head[s];
    while !t.is_null() {
        // SAFETY: queued threads are live.
        let td = unsafe { &*t };
        t = td.sl_next.get();
        if td.wchan.get() == chan {
            // SAFETY: forwarded; `td` is on this CPU's queue.
            unsafe {
                unqueue(gd, td);
                crate::schedule::schedule_local(gd, td);
            }
        }
    }
}

/// The CPUs other than `gd` that may have sleepers on `chan`, read after a
/// full fence that orders the caller's condition update before it.
pub(crate) fn remote_sleepers(gd: &Cpu, chan: usize) -> CpuMask {
    crate::sync::fence_seqcst();
    gd.machine().sleep_masks[slot(chan)]
        .load(Ordering::SeqCst)
        .without(gd.id())
}

/// The loop of a sleep on `chan` (`Cur::sleep_until` and the timed
/// sleeps): `sleep_pass` until `cond` holds (returns `true`), switching
/// away between passes; or until `stop()` (a timed sleep's timer fired:
/// returns `false`, off the sleep queue). Inlined with the switch, so the
/// thread resumes in its caller's frame (see `yield_now` on the
/// return-address predictor).
///
/// # Safety
/// Called by `td`, the running thread, on its CPU, in a critical section.
#[inline(always)]
pub(crate) unsafe fn sleep_loop(
    td: &Thread,
    chan: usize,
    cond: &mut impl FnMut() -> bool,
    stop: impl Fn() -> bool,
) -> bool {
    loop {
        if stop() {
            return false;
        }
        let gd = td.gd();
        // SAFETY: on our CPU in a critical section; `td` is current.
        if unsafe { sleep_pass(gd, td, chan, &mut *cond) } {
            return true;
        }
        // SAFETY: as above (the critical section is ours); a wakeup or a
        // timer re-queues us.
        unsafe { switch_in_crit::<true>(td, gd, gd.runq().first()) };
    }
}

/// Restores a thread that a callback (a sleep condition, a watch test)
/// unwound out of, inside `sleep_until` or `watch_until`: off any sleep
/// queue it was put on, and out of the critical section. Forgotten on the
/// normal path, which leaves by itself.
pub(crate) struct RestoreOnUnwind<'a>(pub(crate) &'a Thread);

impl Drop for RestoreOnUnwind<'_> {
    #[cold]
    fn drop(&mut self) {
        let td = self.0;
        if td.has(tdf::TSLEEPQ) {
            // SAFETY: the running thread, on its CPU, still inside the
            // critical section the guarded code entered.
            unsafe { unqueue(td.gd(), td) };
        }
        crit_exit_td(td);
    }
}

impl Cur {
    /// Block until `cond()` holds, sleeping on `chan` between checks; a
    /// [`MyCpu::wakeup`] of `chan` after the condition became true is never
    /// lost. DragonFly: `tsleep_interlock()` + `tsleep(PINTERLOCKED)`.
    ///
    /// `cond` runs inside a critical section and must not block.
    pub fn sleep_until(&mut self, chan: usize, mut cond: impl FnMut() -> bool) {
        let td = self.td();
        crit::enter(&td.critcount);
        // `cond` is the caller's: if it panics, we unwind off the sleep
        // queue and out of the critical section.
        let restore = RestoreOnUnwind(td);
        // SAFETY: on our CPU, in the critical section just entered.
        unsafe { sleep_loop(td, chan, &mut cond, || false) };
        core::mem::forget(restore);
        crit_exit_td(td);
    }

    /// [`sleep_until`](Self::sleep_until) with a time limit: sleep on
    /// `chan` until `cond()` holds (`Ok`) or `timeout` has passed
    /// (`Err(TimedOut)`). `cond` is checked once more when the time is up,
    /// so a wake-up that races the timeout counts as a wake-up; the thread
    /// wakes once either way. DragonFly: `tsleep(chan, flags, wmesg, timo)`
    /// in a loop on its condition.
    ///
    /// The deadline is rounded up to the timer wheel's tick (about 1 µs),
    /// and the wait ends when this CPU next runs its timers after it, which
    /// a thread of this CPU that never yields can delay (lwkt has no
    /// preemption yet). A `Duration::ZERO` timeout checks `cond` and times
    /// out at the next timer pass; a huge one never times out.
    ///
    /// # Panics
    /// If the backend has no clock ([`Arch::clock`](crate::Arch::clock) is
    /// `None`).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// static READY: AtomicBool = AtomicBool::new(false);
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let chan = &READY as *const _ as usize;
    ///     let ready = || READY.load(Ordering::Acquire);
    ///     let t = cur.sleep_until_timeout(chan, Duration::from_millis(2), ready);
    ///     assert_eq!(t, Err(lwkt_core::TimedOut));
    ///     READY.store(true, Ordering::Release);
    ///     assert_eq!(cur.sleep_until_timeout(chan, Duration::from_secs(60), ready), Ok(()));
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_until_timeout(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
        cond: impl FnMut() -> bool,
    ) -> Result<(), crate::TimedOut> {
        self.sleep_timed::<true>(chan, timeout, cond)
    }

    /// Sleep on `chan` until a wakeup (`Ok`, which may be spurious) or until
    /// `timeout` has passed (`Err(TimedOut)`, also when a wakeup came in
    /// the same instant: the thread wakes once). DragonFly: `tsleep(chan,
    /// flags, wmesg, timo)` returning 0 or `EWOULDBLOCK`. Rounding and
    /// limits as [`sleep_until_timeout`](Self::sleep_until_timeout).
    ///
    /// # Panics
    /// If the backend has no clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     // Nobody wakes this channel: the sleep times out.
    ///     assert_eq!(
    ///         cur.sleep_timeout(0x2000, Duration::from_millis(1)),
    ///         Err(lwkt_core::TimedOut)
    ///     );
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_timeout(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
    ) -> Result<(), crate::TimedOut> {
        let mut first = true;
        self.sleep_timed::<false>(chan, timeout, || !core::mem::take(&mut first))
    }

    /// Sleep for `d` (at least; rounded up to the timer wheel's tick, and
    /// as late as this CPU's next timer pass after it). Other threads of
    /// this CPU run meanwhile. DragonFly: `tsleep(.., timo)` on a channel
    /// nobody wakes.
    ///
    /// # Panics
    /// If the backend has no clock.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let t = Instant::now();
    ///     cur.sleep_for(Duration::from_millis(3));
    ///     assert!(t.elapsed() >= Duration::from_millis(3));
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_for(&mut self, d: core::time::Duration) {
        // A channel nobody wakes: one past this thread's control block (a
        // join sleeps on the block's own address).
        let chan = self.td() as *const Thread as usize + 1;
        let _ = self.sleep_timed::<true>(chan, d, || false);
    }

    /// The timed sleep behind the three above. With `COND_WINS`, `cond`
    /// is asked once more when the time is up and decides.
    #[track_caller]
    fn sleep_timed<const COND_WINS: bool>(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Result<(), crate::TimedOut> {
        let td = self.td();
        let deadline = crate::timer::deadline_after(td.gd(), timeout);
        crit::enter(&td.critcount);
        // `cond` is the caller's: if it panics, we unwind off the sleep
        // queue and the wheel (the timer's drop) and out of the critical
        // section.
        let restore = RestoreOnUnwind(td);
        let result = {
            // Never moved: armed below, dropped (disarmed) in place at the
            // end of this block, in the critical section.
            let timer = crate::timer::SleepTimer::new(td);
            // SAFETY: on our CPU, in a critical section, by this thread,
            // which cannot migrate while it sleeps here; `timer` stays put.
            unsafe { timer.arm(deadline) };
            // SAFETY: on our CPU, in the critical section entered above.
            let held = unsafe { sleep_loop(td, chan, &mut cond, || timer.fired()) };
            if held || (COND_WINS && cond()) {
                Ok(())
            } else {
                Err(crate::TimedOut)
            }
        };
        core::mem::forget(restore);
        crit_exit_td(td);
        result
    }

    /// Sleep on `chan` until a wakeup (which may be spurious: re-check your
    /// condition, or use [`sleep_until`](Self::sleep_until)). DragonFly: `tsleep()`.
    pub fn sleep(&mut self, chan: usize) {
        let mut first = true;
        self.sleep_until(chan, || !core::mem::take(&mut first));
    }
}

pub(crate) fn wakeup_remote(my: MyCpu<'_>, chan: usize, _: usize) {
    // SAFETY: IPI functions run on their CPU in a critical section.
    unsafe { wakeup_local(my.cpu(), chan) };
}
