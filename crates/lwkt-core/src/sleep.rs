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
    gd.machine().sleep_masks[s].fetch_or(CpuMask::single(gd.id()).0, Ordering::SeqCst);
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
    unsafe { crate::sched::dequeue(gd, td) };
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
        gd.machine().sleep_masks[s].fetch_and(!CpuMask::single(gd.id()).0, Ordering::SeqCst);
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
                crate::sched::schedule_local(gd, td);
            }
        }
    }
}

/// The CPUs other than `gd` that may have sleepers on `chan`, read after a
/// full fence that orders the caller's condition update before it.
pub(crate) fn remote_sleepers(gd: &Cpu, chan: usize) -> CpuMask {
    crate::sync::fence_seqcst();
    CpuMask(gd.machine().sleep_masks[slot(chan)].load(Ordering::SeqCst)).without(gd.id())
}
