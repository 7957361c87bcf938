//! Moving the running thread to another CPU: it leaves its run queue,
//! switches away, and the next thread of the old CPU hands it over by IPI
//! message.
//!
//! DragonFly: `lwkt_setcpu_self()`, `lwkt_setcpu_remote()`.

use crate::cpu::CpuId;
use crate::crit;
use crate::crit::crit_exit_td;
use crate::schedule::{dequeue, schedule_local};
use crate::sleep;
use crate::switch::switch_from;
use crate::sync::Ordering;
use crate::thread::{tdf, SpawnError, Thread};
use crate::{Cur, MyCpu};
use core::ptr::{self};

impl Cur {
    /// Move this thread to `cpu` and continue there. The old CPU hands the
    /// thread over by IPI message once it has fully switched away.
    /// DragonFly: `lwkt_setcpu_self()` / `lwkt_migratecpu()`.
    pub fn migrate(&mut self, cpu: CpuId) -> Result<(), SpawnError> {
        let td = self.td();
        let gd = td.gd();
        let m = gd.machine();
        let Some(target) = m.cpu(cpu) else {
            return Err(SpawnError::NoSuchCpu {
                cpu,
                ncpus: m.ncpus,
            });
        };
        crate::intr::check_may_migrate(td);
        if cpu == gd.id() {
            return Ok(());
        }
        crit::enter(&td.critcount);
        // SAFETY: on our CPU in a critical section.
        unsafe {
            if td.has(tdf::TSLEEPQ) {
                sleep::unqueue(gd, td);
            }
            dequeue(gd, td);
        }
        td.set(tdf::MIGRATING);
        td.migrate_to.set(target);
        gd.live_threads.fetch_sub(1, Ordering::Relaxed);
        // Off the run queue, so the switch below happens; the next thread
        // finds us in `prev` and hands us over.
        gd.prev.set(td as *const Thread as *mut Thread);
        // SAFETY: we are the running thread.
        let switched = unsafe { switch_from(td) };
        debug_assert!(switched);
        debug_assert_eq!(td.gd().id(), cpu);
        crit_exit_td(td);
        Ok(())
    }
}

pub(crate) fn setcpu_remote(my: MyCpu<'_>, td: usize, _: usize) {
    let gd = my.cpu();
    // SAFETY: the old CPU made us the owner (`td.gd`) before sending this;
    // the ring's Release/Acquire orders its writes before our reads.
    let t = unsafe { &*(td as *const Thread) };
    assert!(
        ptr::eq(t.gd.load(Ordering::Acquire), gd),
        "lwkt: migration message on the wrong CPU"
    );
    t.clear(tdf::MIGRATING);
    gd.live_threads.fetch_add(1, Ordering::Relaxed);
    // SAFETY: on `gd` in a critical section; `t` is now ours.
    unsafe { schedule_local(gd, t) };
}
