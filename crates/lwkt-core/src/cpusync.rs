//! Run a function on a set of CPUs and wait for all of them.
//!
//! DragonFly: `lwkt_cpusync_simple()` / `lwkt_cpusync_quick()`.
//!
//! The master queues one IPI message per target naming a descriptor on its
//! own stack, then spins, running its own incoming IPIs (another master may
//! be waiting on it), until every target has cleared its bit. The
//! descriptor outlives every use because the master does not return before
//! the last bit is cleared, and a target touches the descriptor only before
//! it clears its bit.

use crate::cpu::{Cpu, CpuMask};
use crate::crit;
use crate::ipiq::{self, IpiMsg};
use crate::sched::{crit_exit_td, MyCpu};
use crate::sync::{AtomicU64, Ordering};
use crate::thread::Thread;

struct CpuSync<'f> {
    func: &'f (dyn Fn(MyCpu<'_>) + Sync),
    pending: AtomicU64,
}

fn remote(my: MyCpu<'_>, cs: usize, _: usize) {
    // SAFETY: `cs` points at the master's descriptor, alive until our bit is
    // cleared below (the master waits for it).
    let cs = unsafe { &*(cs as *const CpuSync<'_>) };
    crate::abort_on_unwind("a cpusync function", || (cs.func)(my));
    cs.pending
        .fetch_and(!CpuMask::single(my.id()).0, Ordering::Release);
}

pub(crate) fn cpusync(td: &Thread, mask: CpuMask, f: &(dyn Fn(MyCpu<'_>) + Sync)) {
    crit::enter(&td.critcount);
    let gd: &Cpu = td.gd();
    let m = gd.machine();
    let mask = CpuMask(mask.0 & CpuMask::all(m.ncpus).0);
    let others = mask.without(gd.id());
    let cs = CpuSync {
        func: f,
        pending: AtomicU64::new(others.0),
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
    while cs.pending.load(Ordering::Acquire) != 0 {
        // SAFETY: on our CPU in a critical section.
        unsafe { ipiq::process(gd) };
        m.arch.pause(spins);
        spins = spins.wrapping_add(1);
    }
    if mask.contains(gd.id()) {
        gd.intr_nesting.set(gd.intr_nesting.get() + 1);
        crate::abort_on_unwind("a cpusync function", || f(MyCpu::new(gd)));
        gd.intr_nesting.set(gd.intr_nesting.get() - 1);
    }
    crit_exit_td(td);
}
