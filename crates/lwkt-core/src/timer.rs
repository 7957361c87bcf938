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

/// The timer of one timed sleep, on the sleeping thread's stack. Disarms
/// itself when dropped (a panic in the caller's condition unwinds through
/// it), so the wheel never holds a dead entry.
#[repr(C)]
pub(crate) struct SleepTimer<'a> {
    /// First: the wheel hands back `&entry`, which is `&SleepTimer`.
    entry: Entry,
    td: &'a Thread,
    fired: Cell<bool>,
}

impl<'a> SleepTimer<'a> {
    pub(crate) fn new(td: &'a Thread) -> SleepTimer<'a> {
        SleepTimer {
            entry: Entry::new(),
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
        unsafe { update(gd, || gd.timers.insert(self.as_entry(), deadline)) };
    }
}

impl Drop for SleepTimer<'_> {
    fn drop(&mut self) {
        if self.entry.is_linked() {
            let gd = self.td.gd();
            // SAFETY: armed by `arm` on this CPU, whose critical section
            // the sleeping code still holds (the entry is in its wheel).
            unsafe {
                update(gd, || {
                    gd.timers.remove(self.as_entry());
                })
            };
        }
    }
}

/// Change `gd`'s wheel with `f`, and reprogram the backend's one-shot timer
/// if the earliest deadline moved.
///
/// # Safety
/// On `gd`, in a critical section.
unsafe fn update(gd: &Cpu, f: impl FnOnce()) {
    let before = gd.timers.next_deadline();
    f();
    let after = gd.timers.next_deadline();
    if after != before {
        // SAFETY: `gd` is a running CPU of the machine whose backend this
        // is, and we run on it (caller).
        unsafe { gd.machine().arch.set_timer(gd, after) };
    }
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

/// Run `gd`'s expired timers: a sleeping thread whose deadline passed is
/// taken off its sleep queue and made runnable, a blocked one made
/// runnable (one still runnable from a wake-up is only marked). Then
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
        // SAFETY: every entry in a CPU's wheel is the first field of a
        // live `SleepTimer` (`#[repr(C)]`), inserted as a pointer to the
        // whole timer (`as_entry`) by `arm` and unlinked before it is
        // dropped; `pop_expired` just unlinked this one.
        let t = unsafe { &*(e as *const SleepTimer<'_>) };
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
    // SAFETY: as in `update`.
    unsafe { arch.set_timer(gd, gd.timers.next_deadline()) };
}
