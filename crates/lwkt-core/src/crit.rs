//! Critical sections: a per-thread counter, no atomic read-modify-write and
//! no interrupt masking.
//!
//! DragonFly: `crit_enter()`, `crit_exit()`, `td_critcount`, `splz()`.
//!
//! An interrupt or IPI that arrives while the current thread's count is
//! non-zero is only recorded (a bit in the CPU's request flags); the final
//! `crit_exit` sees the bit and runs the deferred work. The count belongs to
//! the thread, so a thread may block inside a critical section: the next
//! thread runs with its own count.
//!
//! The counter is an atomic only so that the interrupt handler, which runs
//! on the same CPU, may read it without a data race; it is updated with a
//! plain load and store, which compile to an ordinary increment.

use crate::cpu::Cpu;
use crate::splz::splz_from_thread;
use crate::sync::{signal_fence, AtomicU32, Ordering};
use crate::thread::Thread;
use crate::Cur;
use core::marker::PhantomData;

/// Request-flag bits (`gd_reqflags`): work recorded for the next `crit_exit`.
pub(crate) mod rqf {
    /// IPI ring work is pending (DragonFly `RQF_IPIQ`).
    pub(crate) const IPIQ: u32 = 1 << 0;
    /// A deferred interrupt is pending (DragonFly `RQF_INTPEND`).
    pub(crate) const INTPEND: u32 = 1 << 1;
    /// The CPU watches its rings (`npoll` is `WATCHING`, so senders do not
    /// kick): every final `crit_exit` looks at them. Set for the whole
    /// watch, never cleared by `splz`. No DragonFly equivalent.
    pub(crate) const WATCH: u32 = 1 << 2;
    /// The CPU's one-shot timer has passed its deadline: run the expired
    /// timers (DragonFly `RQF_TIMER`).
    pub(crate) const TIMER: u32 = 1 << 3;
    /// A higher-priority thread became runnable (DragonFly `RQF_AST_LWKT_RESCHED`).
    pub(crate) const RESCHED: u32 = 1 << 5;
    /// An interrupt made a thread of higher priority than the running one
    /// runnable: it preempts at the final `crit_exit` (or the backend's
    /// interrupt entry). DragonFly: the `lwkt_preempt()` call of
    /// `sched_ithd_hard()`.
    pub(crate) const PREEMPT: u32 = 1 << 6;
    /// The running thread used up its quantum while a peer waits: it
    /// round-robins at the final `crit_exit` (or the backend's interrupt
    /// entry). Any switch serves it. DragonFly: `lwkt_schedulerclock()`'s
    /// `need_lwkt_resched()`.
    pub(crate) const SLICE: u32 = 1 << 7;
    /// Deferred work that `splz` runs and clears (DragonFly
    /// `RQF_IDLECHECK_MASK`).
    pub(crate) const IDLECHECK: u32 = IPIQ | INTPEND | TIMER;
    /// What `crit_exit` tests.
    pub(crate) const EXITCHECK: u32 = IDLECHECK | WATCH | PREEMPT | SLICE;
    /// What an interrupt frame may make the interrupted thread's final
    /// `crit_exit` for (`Cpu::preempt_from_interrupt`).
    pub(crate) const FROM_FRAME: u32 = IDLECHECK | PREEMPT | SLICE;
}

/// The highest count [`enter`] raises to: one short of `u32::MAX`, so
/// that a leaf section ([`enter_leaf`]) on top of any count still fits.
const ENTER_MAX: u32 = u32::MAX - 1;

/// Raises a critical-section count. DragonFly: `crit_enter_quick()`.
///
/// # Panics
/// When the count is at [`ENTER_MAX`] (2^32 - 2 sections open: guards
/// forgotten in a loop); it never wraps to 0, which would let interrupts
/// in.
#[inline(always)]
pub(crate) fn enter(count: &AtomicU32) {
    let c = count.load(Ordering::Relaxed);
    assert!(c < ENTER_MAX, "lwkt: critical-section count overflow");
    count.store(c + 1, Ordering::Relaxed);
    signal_fence();
}

/// Raises a critical-section count for a *leaf* section: no overflow
/// check, since [`enter`] (every other raise) stops at [`ENTER_MAX`], one
/// short of the top. One increment of memory. For the callouts' fast
/// paths, a few dozen instructions that run nothing of the caller's.
///
/// # Safety
/// Not inside another leaf section of the same count (so the count is at
/// most [`ENTER_MAX`] here, and this raise does not wrap).
#[inline(always)]
pub(crate) unsafe fn enter_leaf(count: &AtomicU32) {
    let c = count.load(Ordering::Relaxed);
    debug_assert!(c <= ENTER_MAX);
    count.store(c.wrapping_add(1), Ordering::Relaxed);
    signal_fence();
}

/// Lowers a critical-section count; returns true when it reached zero and
/// `reqflags` has deferred work, in which case the caller must run it.
/// DragonFly: `crit_exit_quick()` (the test of `gd_reqflags`).
#[inline(always)]
pub(crate) fn exit(count: &AtomicU32, reqflags: &AtomicU32) -> bool {
    signal_fence();
    let c = count.load(Ordering::Relaxed);
    if c == 0 {
        crit_underflow();
    }
    count.store(c - 1, Ordering::Relaxed);
    signal_fence();
    c == 1 && reqflags.load(Ordering::Relaxed) & rqf::EXITCHECK != 0
}

/// [`exit`] for a caller that entered the section itself (so the count is
/// not zero): no underflow check.
#[inline(always)]
pub(crate) fn exit_entered(count: &AtomicU32, reqflags: &AtomicU32) -> bool {
    exit_entered_for(count, reqflags, rqf::EXITCHECK)
}

/// [`exit_entered`] testing only the request bits in `mask`: the deferred
/// work (`rqf::IDLECHECK`) when leaving `splz`, whose watch look just ran.
#[inline(always)]
pub(crate) fn exit_entered_for(count: &AtomicU32, reqflags: &AtomicU32, mask: u32) -> bool {
    signal_fence();
    let c = count.load(Ordering::Relaxed);
    debug_assert!(c != 0);
    // The test on the new count, not the old: one decrement of memory.
    let left = c.wrapping_sub(1);
    count.store(left, Ordering::Relaxed);
    signal_fence();
    left == 0 && reqflags.load(Ordering::Relaxed) & mask != 0
}

/// Lowers a critical-section count that an interrupt frame raised for
/// its own work (`Cpu::interrupt_entry`, `Cpu::preempt_from_interrupt_with`),
/// without testing the request flags: not a `crit_exit`. Sound, and
/// nothing is lost, because the frame runs with its interrupt masked: what
/// arrived while the count was raised set a request bit
/// ([`interrupt_arrives`]), and that bit waits for the interrupted
/// thread's next final `crit_exit` (or switch, or idle loop) or the next
/// interrupt, which run it; a `crit_exit` here would run it from the
/// frame instead, processing again in a frame that has just processed
/// (and, from the preemption frame, could nest frames without bound).
/// The count was raised by the caller, so it is not zero. DragonFly: the
/// `td_critcount` decrement at the end of `Xipiq` and `doreti`.
#[inline(always)]
pub(crate) fn leave_frame(count: &AtomicU32) {
    let c = count.load(Ordering::Relaxed);
    debug_assert!(c != 0);
    count.store(c.wrapping_sub(1), Ordering::Relaxed);
    signal_fence();
}

#[cold]
#[inline(never)]
fn crit_underflow() -> ! {
    panic!(
        "lwkt: crit_exit without a matching crit_enter (critical-section count would go negative)"
    )
}

/// What an interrupt does on arrival: run now (true; the handler must raise
/// the count around its work) or record the request bit for the final
/// `crit_exit` (false). DragonFly: the `td_critcount` test in `Xipiq`.
#[inline]
pub(crate) fn interrupt_arrives(
    count: &AtomicU32,
    nesting: u32,
    reqflags: &AtomicU32,
    bit: u32,
) -> bool {
    if count.load(Ordering::Relaxed) != 0 || nesting != 0 {
        reqflags.fetch_or(bit, Ordering::Relaxed);
        false
    } else {
        true
    }
}

/// A critical section, left when dropped. `#[must_use]`, not `Send`.
///
/// DragonFly: `crit_enter()` ... `crit_exit()`.
///
/// ```
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let g = cur.crit();
///     assert_eq!(cur.crit_count(), 1);
///     drop(g);
///     assert_eq!(cur.crit_count(), 0);
/// });
/// ```
#[must_use = "a critical section ends when its guard is dropped"]
pub struct CritGuard<'a> {
    td: &'a Thread,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for CritGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        crit_exit_td(self.td);
    }
}

impl core::fmt::Debug for CritGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CritGuard")
    }
}

/// [`crit_exit_td`] for a caller on `gd` that entered the section itself
/// in `gd`'s current thread ([`enter`] or [`enter_leaf`]): no underflow
/// check, and the thread read again from `gd` rather than kept across
/// the section (a path long enough to need its registers).
#[inline(always)]
pub(crate) fn crit_exit_entered(gd: &Cpu) {
    let td = gd.cur();
    if exit_entered(&td.critcount, &gd.reqflags) {
        splz_from_thread(td);
    }
}

#[inline(always)]
pub(crate) fn crit_exit_td(td: &Thread) {
    let gd = td.gd();
    if exit(&td.critcount, &gd.reqflags) {
        splz_from_thread(td);
    }
}

impl Cur {
    /// Enter a critical section until the guard drops.
    /// DragonFly: `crit_enter()`.
    #[inline(always)]
    pub fn crit(&self) -> CritGuard<'_> {
        let td = self.td();
        enter(&td.critcount);
        CritGuard {
            td,
            _not_send: PhantomData,
        }
    }

    /// Enter a critical section; pair with [`crit_exit`](Self::crit_exit).
    /// DragonFly: `crit_enter()`.
    #[inline(always)]
    pub fn crit_enter(&self) {
        enter(&self.td().critcount);
    }

    /// Leave a critical section; at the outermost exit, run interrupts and
    /// IPIs that arrived inside it. DragonFly: `crit_exit()`.
    ///
    /// # Panics
    /// When no critical section is open (the count would go negative).
    #[inline(always)]
    pub fn crit_exit(&self) {
        crit_exit_td(self.td());
    }

    /// Current critical-section depth.
    pub fn crit_count(&self) -> u32 {
        self.td().critcount.load(Ordering::Relaxed)
    }
}
