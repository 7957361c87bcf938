//! Time slicing: threads of equal priority that never block or yield
//! share their CPU in turns of [`TIME_SLICE`].
//!
//! Each CPU has one slice timer, an entry of its own timing wheel (no
//! allocation, nothing per thread). The idle loop arms it when it leaves
//! for a thread; while the CPU stays busy it fires once a quantum, and when
//! the running thread has a runnable peer (another thread of its priority,
//! or one above it) it asks for a round-robin switch (`rqf::SLICE`), which
//! the thread makes at its next final `crit_exit`, or at once from the
//! interrupt frame where preemption there is allowed
//! ([`Cpu::preempt_from_interrupt`]). Found idle, it is left unarmed until
//! the idle loop runs a thread again, so an idle CPU takes no slice
//! interrupts. A thread alone on its CPU (or with lower-priority threads
//! only) is never switched: the request is made only for a peer.
//!
//! DragonFly: `lwkt_schedulerclock()`, called from `hardclock` at `hz` on
//! every CPU, which round-robins the current thread when
//! `lwkt_resched_wanted` (`RQF_AST_LWKT_RESCHED`); there it ticks even when
//! idle.

use core::time::Duration;

use crate::cpu::Cpu;
use crate::crit;
use crate::sync::Ordering;
use crate::thread::tdf;
use crate::timer::{self, Fire, Header};
use crate::wheel::Entry;

/// The quantum: how long a thread runs while an equal-priority peer waits
/// (DragonFly: one `hz` tick, 10 ms at the default `hz` of 100).
pub const TIME_SLICE: Duration = Duration::from_millis(10);

const SLICE_NS: u64 = TIME_SLICE.as_nanos() as u64;

/// A CPU's slice timer: a wheel entry in the CPU block.
#[repr(C)]
pub(crate) struct SliceTimer {
    /// First: the wheel hands back a pointer to it, which is one to the
    /// whole `SliceTimer` (`#[repr(C)]`).
    head: Header,
}

impl SliceTimer {
    pub(crate) const fn new() -> SliceTimer {
        SliceTimer {
            head: Header::new(fire_slice),
        }
    }

    fn as_entry(&self) -> *const Entry {
        (self as *const SliceTimer).cast::<Entry>()
    }
}

/// The idle loop is about to run a thread: arm the CPU's slice timer, if it
/// is not armed and the backend has a clock. One clock read per busy
/// period (the timer stays armed while the CPU is busy).
///
/// # Safety
/// On `gd`, in a critical section.
#[inline]
pub(crate) unsafe fn arm_for_busy(gd: &Cpu) {
    if gd.slice.head.entry.is_linked() {
        return;
    }
    // SAFETY: on `gd` (caller).
    unsafe { arm(gd) };
}

/// # Safety
/// On `gd`, in a critical section; the slice timer is not armed.
#[cold]
#[inline(never)]
unsafe fn arm(gd: &Cpu) {
    let Some(now) = gd.machine().arch.clock() else {
        // No clock, no time slicing (threads switch when they block or
        // yield, as before).
        return;
    };
    // SAFETY: the entry is in the CPU block, which outlives every use of
    // the wheel (`timer::retire` unlinks it when the CPU leaves its idle
    // loop for good); on `gd` in a critical section (caller).
    unsafe { timer::insert(gd, gd.slice.as_entry(), now.saturating_add(SLICE_NS)) };
}

/// The slice timer's [`FireFn`](crate::timer::FireFn): a quantum passed.
/// If a thread (not the idle one) runs, ask it to round-robin when a peer
/// waits, and re-arm for the next quantum; otherwise stay unarmed.
/// DragonFly: `lwkt_schedulerclock()`.
///
/// # Safety
/// As `FireFn`: on `gd`, in a critical section, with the entry (`gd`'s
/// own slice timer) just unlinked.
unsafe fn fire_slice(_h: *const Header, gd: &Cpu, why: Fire) {
    let Fire::Expired { now } = why else {
        return;
    };
    let cur = gd.curthread.load(Ordering::Relaxed);
    // SAFETY: a non-null `curthread` is the live running thread.
    let Some(td) = (unsafe { cur.as_ref() }) else {
        return;
    };
    if td.has(tdf::IDLE) {
        return;
    }
    // SAFETY: on `gd` in a critical section.
    let q = unsafe { gd.runq() };
    // A peer: the running thread is not the one that should run next, or
    // its priority's circular list holds another thread.
    let first = q.first();
    let peer = !first.is_null() && (first != cur || (td.has(tdf::RUNQ) && td.rq_next.get() != cur));
    if peer {
        gd.reqflags.fetch_or(crit::rqf::SLICE, Ordering::Relaxed);
    }
    // SAFETY: as in `arm`; the entry was just unlinked.
    unsafe { timer::insert(gd, gd.slice.as_entry(), now.saturating_add(SLICE_NS)) };
}
