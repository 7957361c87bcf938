//! Run a function on a set of CPUs and wait for all of them.
//!
//! DragonFly: `lwkt_cpusync_simple()` / `lwkt_cpusync_quick()`.
//!
//! The master queues one IPI message per target naming a descriptor on its
//! own stack, then spins, running its own incoming IPIs (another master may
//! be waiting on it), until every target has cleared its bit. The
//! descriptor outlives every use because the master does not return before
//! the last bit is cleared, and a target touches the descriptor only before
//! it clears its bit (the loom models check both, with [`Life`]).

use crate::cpu::{Cpu, CpuId, CpuMask};
use crate::cpumask::AtomicCpuMask;
use crate::crit;
use crate::ipiq::{self, IpiMsg};
use crate::sync::{Life, Ordering};
use crate::thread::Thread;
use crate::{crit::crit_exit_td, MyCpu};

/// The master's descriptor, on its stack. Targets use it only through
/// [`func`](CpuSync::func) and [`done`](CpuSync::done), which mark each use
/// for the loom models.
struct CpuSync<'f> {
    func: &'f (dyn Fn(MyCpu<'_>) + Sync),
    pending: AtomicCpuMask,
    /// Ends when the master has seen `pending == 0`.
    life: Life,
}

impl<'f> CpuSync<'f> {
    /// Target: the function to run (it may borrow the master's stack too).
    fn func(&self) -> &'f (dyn Fn(MyCpu<'_>) + Sync) {
        self.life.touch();
        self.func
    }

    /// Target `me`: clear our bit, the last use of the descriptor; the
    /// Release orders everything we did (the function's effects included)
    /// before the master's Acquire that sees the bit clear.
    fn done(&self, me: CpuId) {
        self.life.touch();
        self.pending.clear(me, Ordering::Release);
    }
}

fn remote(my: MyCpu<'_>, cs: usize, _: usize) {
    // SAFETY: `cs` points at the master's descriptor, alive until our bit is
    // cleared by `done` (the master waits for it); nothing here uses it after.
    let cs = unsafe { &*(cs as *const CpuSync<'_>) };
    let f = cs.func();
    crate::abort_on_unwind("a cpusync function", || f(my));
    cs.done(my.id());
}

pub(crate) fn cpusync(td: &Thread, mask: CpuMask, f: &(dyn Fn(MyCpu<'_>) + Sync)) {
    crit::enter(&td.critcount);
    let gd: &Cpu = td.gd();
    let m = gd.machine();
    let mask = mask.and(CpuMask::all(m.ncpus));
    let others = mask.without(gd.id());
    let cs = CpuSync {
        func: f,
        pending: AtomicCpuMask::from(others),
        life: Life::new(),
    };
    let addr = &cs as *const CpuSync<'_> as usize;
    for c in others.iter() {
        // SAFETY: on our CPU in a critical section.
        let r = unsafe {
            ipiq::send(
                gd,
                c,
                &[IpiMsg {
                    func: remote,
                    arg1: addr,
                    arg2: 0,
                }],
            )
        };
        debug_assert!(r.is_ok());
    }
    let mut spins = 0u32;
    while !cs.pending.is_empty(Ordering::Acquire) {
        // SAFETY: on our CPU in a critical section.
        unsafe { ipiq::process(gd) };
        m.arch.pause(spins);
        spins = spins.wrapping_add(1);
    }
    // No target uses the descriptor any more.
    cs.life.end();
    if mask.contains(gd.id()) {
        gd.intr_nesting.set(gd.intr_nesting.get() + 1);
        crate::abort_on_unwind("a cpusync function", || f(MyCpu::new(gd)));
        gd.intr_nesting.set(gd.intr_nesting.get() - 1);
    }
    crit_exit_td(td);
}
