//! Timed waits: a CPU's armed timers and what runs when they expire.
//!
//! Each CPU keeps its timers in a [`Wheel`](crate::wheel::Wheel), touched
//! only by that CPU inside a critical section. Whenever the earliest
//! deadline changes the CPU programs the backend's one-shot timer
//! ([`Arch::set_timer`](crate::Arch::set_timer)); when it passes, the
//! backend's interrupt records `RQF_TIMER` ([`Cpu::post_timer`]) and the CPU
//! runs the expired timers at its next critical-section exit, switch or
//! idle turn ([`run`], from `splz`), then programs the next deadline.
//! DragonFly: `systimer_intr()` on `gd_systimerq`, `tsleep`'s `timo`
//! (`endtsleep`).

use core::cell::Cell;
use core::fmt;
use core::time::Duration;

use crate::cpu::Cpu;
use crate::sleep;
use crate::thread::{tdf, Thread};
use crate::wheel::Entry;

/// A timed wait ran out before it was satisfied. DragonFly: `tsleep`
/// returning `EWOULDBLOCK`.
///
/// ```
/// use std::time::Duration;
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let chan = 0x1000; // nobody wakes it
///     assert_eq!(
///         cur.sleep_timeout(chan, Duration::from_millis(1)),
///         Err(lwkt_core::TimedOut)
///     );
/// });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out")
    }
}

/// Why a timer's [`FireFn`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fire {
    /// Its deadline passed (`now` is the clock `run` read).
    Expired { now: u64 },
    /// Its CPU leaves its idle loop for good (the machine ends): let go of
    /// the timer without running it.
    Retire,
}

/// What runs a wheel entry: the timer's kind (a sleep, a callout) is in the
/// function. Called on the wheel's CPU, in a critical section, with the
/// entry just unlinked.
pub(crate) type FireFn = unsafe fn(*const Header, &Cpu, Fire);

/// The start of every timer the wheel holds: the link, then what runs it.
/// `#[repr(C)]` and first in each timer (`SleepTimer`, `Callout`), so the
/// pointer the wheel hands back is a pointer to the whole timer (it was
/// inserted as one, so it carries the provenance of the whole).
/// DragonFly: a `struct systimer`'s `node` and `func`.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) entry: Entry,
    pub(crate) fire: FireFn,
}

impl Header {
    pub(crate) const fn new(fire: FireFn) -> Header {
        Header {
            entry: Entry::new(),
            fire,
        }
    }
}

/// The timer of one timed sleep, on the sleeping thread's stack. Disarms
/// itself when dropped (a panic in the caller's condition unwinds through
/// it), so the wheel never holds a dead entry.
#[repr(C)]
pub(crate) struct SleepTimer<'a> {
    /// First: the wheel hands back `&head.entry`, which is `&SleepTimer`.
    head: Header,
    td: &'a Thread,
    fired: Cell<bool>,
}

impl<'a> SleepTimer<'a> {
    pub(crate) fn new(td: &'a Thread) -> SleepTimer<'a> {
        SleepTimer {
            head: Header::new(fire_sleep),
            td,
            fired: Cell::new(false),
        }
    }

    /// Whether the deadline passed (the thread was made runnable by it, or
    /// found it so).
    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    /// The pointer the wheel holds: to the whole timer (the entry is its
    /// first field), so `run` may read the rest of it through the pointer
    /// the wheel hands back (one to the field alone would not carry that
    /// provenance).
    fn as_entry(&self) -> *const Entry {
        (self as *const SleepTimer<'_>).cast::<Entry>()
    }

    /// Arm for `deadline` on the thread's CPU.
    ///
    /// # Safety
    /// On the thread's CPU, in a critical section, by the thread itself;
    /// `self` does not move until it is dropped (a local that is never
    /// moved), and the thread does not leave this CPU meanwhile.
    pub(crate) unsafe fn arm(&self, deadline: u64) {
        let gd = self.td.gd();
        // SAFETY: `self.entry` stays put and alive until `drop` unlinks it
        // (contract); the wheel is this CPU's, used in its critical
        // section.
        unsafe { insert(gd, self.as_entry(), deadline) };
    }
}

impl Drop for SleepTimer<'_> {
    fn drop(&mut self) {
        if self.head.entry.is_linked() {
            let gd = self.td.gd();
            // SAFETY: armed by `arm` on this CPU, whose critical section
            // the sleeping code still holds (the entry is in its wheel).
            unsafe { gd.timers.remove(self.as_entry()) };
        }
    }
}

/// Arm `e` in `gd`'s wheel for `deadline`, and reprogram the backend's
/// one-shot timer if that is earlier than the one programmed. A stopped
/// timer is left programmed (nothing is done on removal): the interrupt
/// then comes early, `run` finds nothing due and programs the real next
/// deadline. So the programmed deadline is never after any armed timer's
/// deadline, or an interrupt is on its way (between the backend's firing
/// and `run`), and arming a timer that is not the earliest, stopping any,
/// costs no call into the backend and no look for the next deadline.
///
/// # Safety
/// On `gd`, in a critical section; `e` as for
/// [`Wheel::insert`](crate::wheel::Wheel::insert) on `gd`'s wheel.
#[inline(always)]
pub(crate) unsafe fn insert(gd: &Cpu, e: *const Entry, deadline: u64) {
    // SAFETY: forwarded.
    unsafe {
        gd.timers.insert(e, deadline);
        inserted(gd, deadline);
    }
}

/// [`insert`] of an entry known to be on no list.
///
/// # Safety
/// As [`insert`], and `e` is not linked.
#[inline(always)]
pub(crate) unsafe fn insert_unlinked(gd: &Cpu, e: *const Entry, deadline: u64) {
    // SAFETY: forwarded.
    unsafe {
        gd.timers.insert_unlinked(e, deadline);
        inserted(gd, deadline);
    }
}

/// After an insert for `deadline`: reprogram the one-shot timer if that is
/// earlier than the one programmed.
///
/// # Safety
/// On `gd`, in a critical section.
#[inline(always)]
unsafe fn inserted(gd: &Cpu, deadline: u64) {
    if deadline < gd.timer_programmed.get() {
        // SAFETY: forwarded.
        unsafe { program(gd, gd.timers.next_deadline()) };
    }
}

/// Program `gd`'s one-shot timer for `deadline` (and remember it).
///
/// # Safety
/// On `gd`, in a critical section.
#[cold]
#[inline(never)]
unsafe fn program(gd: &Cpu, deadline: Option<u64>) {
    gd.timer_programmed.set(deadline.unwrap_or(u64::MAX));
    // SAFETY: `gd` is a running CPU of the machine whose backend this
    // is, and we run on it (caller).
    unsafe { gd.machine().arch.set_timer(gd, deadline) };
}

/// The backend's clock, or a panic naming the rule.
#[track_caller]
pub(crate) fn now(gd: &Cpu) -> u64 {
    gd.machine().arch.clock().unwrap_or_else(|| no_clock())
}

/// The deadline `d` from now on `gd`'s clock (saturating: a huge `d` is a
/// deadline that never comes).
#[track_caller]
pub(crate) fn deadline_after(gd: &Cpu, d: Duration) -> u64 {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    now(gd).saturating_add(ns)
}

#[cold]
#[track_caller]
fn no_clock() -> ! {
    panic!(
        "lwkt-core: a timed wait needs a clock, and this backend has none \
         (its Arch::clock() returns None)"
    )
}

/// A sleep's [`FireFn`]: the sleeping thread whose deadline passed is taken
/// off its sleep queue and made runnable (one still runnable from a
/// wake-up is only marked).
///
/// # Safety
/// As [`FireFn`]: `h` is the header of a live `SleepTimer` just unlinked
/// from `gd`'s wheel, on `gd`, in a critical section.
unsafe fn fire_sleep(h: *const Header, gd: &Cpu, why: Fire) {
    if why == Fire::Retire {
        // The machine ends: the sleeper is never run again (its stack is
        // leaked, `Report::leaked_threads`).
        return;
    }
    // SAFETY: the header is the first field of a live `SleepTimer`
    // (`#[repr(C)]`), inserted as a pointer to the whole timer (`as_entry`)
    // by `arm` and unlinked before it is dropped.
    let t = unsafe { &*(h as *const SleepTimer<'_>) };
    t.fired.set(true);
    let td = t.td;
    // SAFETY: on `gd` in a critical section; an armed timer's thread
    // lives on `gd` (it sleeps or blocks, so it cannot migrate), and
    // is on `gd`'s sleep queue when the flag says so. A thread that
    // blocked (`Cur::block_timeout`) is only scheduled; one that runs
    // or is runnable already is left as it is.
    unsafe {
        if td.has(tdf::TSLEEPQ) {
            sleep::unqueue(gd, td);
        }
        crate::intr::wake(gd, td);
    }
}

/// Run `gd`'s expired timers (each through its [`Header`]'s function: a
/// sleep's makes its thread runnable, a callout's runs its callback), then
/// program the next deadline.
///
/// # Safety
/// On `gd`, in a critical section.
pub(crate) unsafe fn run(gd: &Cpu) {
    let arch = gd.machine().arch;
    let Some(now) = arch.clock() else {
        return;
    };
    while let Some(e) = gd.timers.pop_expired(now) {
        let h = e as *const Header;
        // SAFETY: every entry in a CPU's wheel is the first field of a live
        // timer's `Header` (`#[repr(C)]`, first in the timer), inserted as
        // a pointer to the whole timer and unlinked before the timer is
        // dropped (`SleepTimer::drop`, `Callout::drop`); `pop_expired` just
        // unlinked this one; we are on `gd` in a critical section.
        unsafe { ((*h).fire)(h, gd, Fire::Expired { now }) };
    }
    // SAFETY: on `gd` in a critical section (caller).
    unsafe { program(gd, gd.timers.next_deadline()) };
}

/// `gd` leaves its idle loop for good (its machine ends): let go of every
/// timer in its wheel without running it, so that none is left pointing
/// at the CPU block after it is freed (a callout becomes idle and may be
/// armed on another machine, or dropped anywhere).
///
/// # Safety
/// On `gd`, in a critical section, after its last thread and IPI ran.
pub(crate) unsafe fn retire(gd: &Cpu) {
    while let Some(e) = gd.timers.pop_any() {
        let h = e as *const Header;
        // SAFETY: as in `run`.
        unsafe { ((*h).fire)(h, gd, Fire::Retire) };
    }
}
