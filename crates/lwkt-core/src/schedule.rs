//! Making threads runnable and not: the run queue of a thread's own CPU
//! directly, another CPU's by IPI message; priorities.
//!
//! DragonFly: `lwkt_schedule()`, `lwkt_deschedule()`, `lwkt_setpri_self()`.
//!
//! Rules kept here:
//! - run queues are touched only by their CPU, inside a critical section
//!   (interrupts that arrive meanwhile are deferred);
//! - every change to another CPU's threads travels as an IPI message to
//!   that CPU.

use crate::cpu::Cpu;
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::{self, IpiFn, IpiMsg};
use crate::migrate::setcpu_remote;
use crate::sleep::wakeup_remote;
use crate::spawn::adopt_remote;
use crate::sync::Ordering;
use crate::thread::{tdf, Priority, Thread};
use crate::{Cur, MyCpu};
use core::ptr::{self, NonNull};

impl Cur {
    /// Take this thread off the run queue: it keeps running until its next
    /// [`switch`](Self::switch), then sleeps until someone schedules it.
    /// DragonFly: `lwkt_deschedule_self()`.
    pub fn deschedule_self(&mut self) {
        let td = self.td();
        crit::enter(&td.critcount);
        // SAFETY: on our CPU in a critical section.
        unsafe { dequeue(td.gd(), td) };
        crit_exit_td(td);
    }

    /// Put this thread back on the run queue. DragonFly: `lwkt_schedule_self()`.
    pub fn schedule_self(&mut self) {
        let td = self.td();
        crit::enter(&td.critcount);
        // SAFETY: on our CPU in a critical section.
        unsafe { schedule_local(td.gd(), td) };
        crit_exit_td(td);
    }

    /// Change this thread's priority (it does not switch by itself).
    /// DragonFly: `lwkt_setpri_self()`.
    pub fn set_priority(&mut self, pri: Priority) {
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        let me = td as *const Thread as *mut Thread;
        if td.has(tdf::RUNQ) {
            // SAFETY: on our CPU in a critical section; we are queued.
            unsafe {
                gd.runq().remove(me);
                td.pri.set(pri);
                gd.runq().push_back(me);
            }
        } else {
            td.pri.set(pri);
        }
        crit_exit_td(td);
    }
}

/// Whether `f` is one of lwkt-core's own IPI functions, which only touch
/// lwkt's per-CPU state (inside the critical section they run in) and the
/// backend's kick: safe wherever an interrupt may land, unlike a user's
/// function, which may allocate or lock ([`Cpu::ipi_interrupt_async_safe`]).
/// `cpusync`'s is not among them: it calls the user's function. A function
/// address that is not unique (a copy in another codegen unit) only makes
/// an entry wait for the next full drain.
pub(crate) fn is_own_ipi(f: IpiFn) -> bool {
    let own: [IpiFn; 5] = [
        adopt_remote,
        schedule_remote,
        deschedule_remote,
        wakeup_remote,
        setcpu_remote,
    ];
    own.iter().any(|&g| core::ptr::fn_addr_eq(g, f))
}

/// Owner: make `td` runnable here. DragonFly: `_lwkt_enqueue()` via
/// `lwkt_schedule()`; does nothing for queued, migrating or exited threads.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a live thread of `gd`.
#[inline(always)]
pub(crate) unsafe fn schedule_local(gd: &Cpu, td: &Thread) {
    if td.has(tdf::RUNQ | tdf::MIGRATING | tdf::EXITING | tdf::IDLE) {
        return;
    }
    // SAFETY: forwarded.
    unsafe { gd.runq().push_back(td as *const Thread as *mut Thread) };
    let cur = gd.curthread.load(Ordering::Relaxed);
    // SAFETY: a non-null `curthread` is the live running thread.
    if !cur.is_null() && td.pri.get() > unsafe { (*cur).pri.get() } {
        gd.reqflags.fetch_or(crit::rqf::RESCHED, Ordering::Relaxed);
    }
}

/// Owner: take `td` off the run queue.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a live thread of `gd`.
#[inline]
pub(crate) unsafe fn dequeue(gd: &Cpu, td: &Thread) {
    if td.has(tdf::RUNQ) {
        // SAFETY: forwarded.
        unsafe { gd.runq().remove(td as *const Thread as *mut Thread) };
    }
}

/// Schedule `td` wherever it lives.
///
/// # Safety
/// On `gd`, in a critical section; the caller holds `td`.
#[inline(always)]
pub(crate) unsafe fn schedule_any(gd: &Cpu, td: &Thread) {
    let owner = td.gd.load(Ordering::Acquire);
    if ptr::eq(owner, gd) {
        // SAFETY: forwarded; `td` is ours.
        unsafe { schedule_local(gd, td) };
    } else {
        // SAFETY: forwarded.
        unsafe { schedule_elsewhere(gd, td, owner) };
    }
}

/// [`schedule_any`] for a thread of another CPU, `owner`: by IPI.
///
/// # Safety
/// As for [`schedule_any`]; `owner` is `td`'s CPU as just read.
#[inline(never)]
pub(crate) unsafe fn schedule_elsewhere(gd: &Cpu, td: &Thread, owner: *mut Cpu) {
    // SAFETY: forwarded.
    unsafe { send_to_owner(gd, td, owner, schedule_remote) };
}

/// Send `func(td)` to `td`'s CPU `owner` by IPI, with a hold on `td` that
/// `func` releases.
///
/// # Safety
/// On `gd`, in a critical section; `owner` is a CPU of `gd`'s machine.
pub(crate) unsafe fn send_to_owner(gd: &Cpu, td: &Thread, owner: *mut Cpu, func: IpiFn) {
    td.hold();
    // SAFETY: `owner` is a CPU of this machine (contract).
    let target = unsafe { (*owner).id() };
    // SAFETY: forwarded.
    let r = unsafe {
        ipiq::send(
            gd,
            target,
            &[IpiMsg {
                func,
                arg1: td as *const Thread as usize,
                arg2: 0,
            }],
        )
    };
    debug_assert!(r.is_ok());
}

pub(crate) fn schedule_remote(my: MyCpu<'_>, td: usize, _: usize) {
    // SAFETY: the sender took a hold for this message; we run on `my` in a
    // critical section. If the thread moved meanwhile, forward the request.
    unsafe {
        let t = NonNull::new_unchecked(td as *mut Thread);
        schedule_any(my.cpu(), t.as_ref());
        Thread::release(t);
    }
}

/// Deschedule `td` wherever it lives.
///
/// # Safety
/// As for [`schedule_any`].
pub(crate) unsafe fn deschedule_any(gd: &Cpu, td: &Thread) {
    let owner = td.gd.load(Ordering::Acquire);
    if ptr::eq(owner, gd) {
        // SAFETY: forwarded.
        unsafe { dequeue(gd, td) };
    } else {
        // SAFETY: forwarded; `owner` is a CPU of this machine.
        unsafe { send_to_owner(gd, td, owner, deschedule_remote) };
    }
}

pub(crate) fn deschedule_remote(my: MyCpu<'_>, td: usize, _: usize) {
    // SAFETY: as in `schedule_remote`.
    unsafe {
        let t = NonNull::new_unchecked(td as *mut Thread);
        deschedule_any(my.cpu(), t.as_ref());
        Thread::release(t);
    }
}
