//! The current CPU as a context may borrow it, [`MyCpu`]: the operations
//! that do not block (schedule, wake up, send IPIs, counters).
//!
//! DragonFly: `mycpu` / `globaldata_t`.

use crate::cpu::{Cpu, CpuId, CpuStatsSnapshot};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::{self, IpiError, IpiFn, IpiMsg};
use crate::schedule::{deschedule_any, schedule_any, schedule_local};
use crate::sleep;
use crate::sleep::wakeup_remote;
use crate::sync::Ordering;
use crate::thread::{ParkToken, Thread, ThreadHandle};
use core::marker::PhantomData;
use core::ptr::{self};

/// The current CPU, borrowed in a context pinned to it (a thread through
/// [`Cur::my_cpu`](crate::Cur::my_cpu), or an IPI function's argument). Cheap to copy, not
/// `Send`, and unable to outlive the context it came from.
///
/// DragonFly: `mycpu` / `globaldata_t`.
#[derive(Clone, Copy)]
pub struct MyCpu<'a> {
    gd: &'a Cpu,
    _not_send: PhantomData<*mut ()>,
}

impl core::fmt::Debug for MyCpu<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("MyCpu").field(&self.gd.id()).finish()
    }
}

impl<'a> MyCpu<'a> {
    #[inline(always)]
    pub(crate) fn new(gd: &'a Cpu) -> Self {
        MyCpu {
            gd,
            _not_send: PhantomData,
        }
    }

    /// This CPU's number.
    #[inline]
    pub fn id(self) -> CpuId {
        self.gd.id()
    }

    /// How many CPUs the machine has.
    pub fn ncpus(self) -> usize {
        self.gd.machine().ncpus
    }

    /// The machine's number, unique in this process: per-CPU state kept
    /// outside lwkt (a slab, a driver's queues) indexed by [`id`](Self::id)
    /// compares it to refuse a CPU of another machine, whose CPU numbers
    /// overlap. Never 0, always below 2^62 (2^30 on a target without
    /// 64-bit atomics), never reused in the process.
    ///
    /// ```
    /// let a = lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| cur.my_cpu().machine_id());
    /// let b = lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| cur.my_cpu().machine_id());
    /// assert_ne!(a, b);
    /// ```
    #[inline]
    pub fn machine_id(self) -> u64 {
        // Set at `bind`, before any `MyCpu` of the CPU can exist.
        self.gd.machine_id.get()
    }

    /// This CPU's counters.
    pub fn stats(self) -> CpuStatsSnapshot {
        self.gd.stats()
    }

    /// Counters of any CPU of this machine.
    pub fn cpu_stats(self, c: CpuId) -> Option<CpuStatsSnapshot> {
        self.gd.machine().cpu(c).map(Cpu::stats)
    }

    /// This CPU's scheduling and IPI state (see [`Cpu::snapshot`], whose
    /// example uses this).
    pub fn snapshot(self) -> crate::CpuSnapshot {
        // SAFETY: a `MyCpu` exists only on its own CPU.
        unsafe { self.gd.snapshot() }
    }

    /// True when an interrupt or IPI arrived inside a critical section and
    /// waits for the final `crit_exit` (DragonFly: `gd_reqflags &
    /// RQF_IDLECHECK_MASK`). Nothing needs to poll it; a thread about to
    /// block inside its critical section may, to leave the section (which
    /// runs the deferred work) first (lwkt-msg's `waitport` does).
    #[inline]
    pub fn has_deferred(self) -> bool {
        self.gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK != 0
    }

    /// The backend's cycle counter.
    pub fn cycles(self) -> u64 {
        self.gd.machine().arch.cycles()
    }

    /// The backend's monotonic clock in nanoseconds
    /// ([`Arch::clock`](crate::Arch::clock)), or `None` when it has none:
    /// the time base of the timed waits, for callers that wait in a loop
    /// and carry one deadline across several of them (lwkt-msg's
    /// `waitport_timeout`). DragonFly: `sys_cputimer->count()`.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let a = cur.my_cpu().clock().unwrap();
    ///     assert!(cur.my_cpu().clock().unwrap() >= a);
    /// });
    /// ```
    pub fn clock(self) -> Option<u64> {
        self.gd.machine().arch.clock()
    }

    /// Whether spinning for another CPU's answer pays now
    /// ([`Arch::spin_wait_pays`](crate::Arch::spin_wait_pays)): false when
    /// the other CPU may not be running (a hosted machine with more vCPUs
    /// than host cores), so a waiter should sleep at once.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     // One vCPU fits any host: every CPU runs.
    ///     assert!(cur.my_cpu().spin_wait_pays());
    /// });
    /// ```
    pub fn spin_wait_pays(self) -> bool {
        self.gd.machine().arch.spin_wait_pays()
    }

    /// Run `f` inside a critical section of this CPU (nested inside the
    /// one an IPI function already runs in, if any). DragonFly:
    /// `crit_enter()` ... `crit_exit()` around `f`.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let n = cur.my_cpu().crit(|| 1 + 1);
    ///     assert_eq!(n, 2);
    /// });
    /// ```
    #[inline(always)]
    pub fn crit<R>(self, f: impl FnOnce() -> R) -> R {
        let td = self.gd.cur();
        crit::enter(&td.critcount);
        // Left when `f` returns, and when it unwinds (thread context may).
        let _exit = CritExit(td);
        f()
    }

    /// Make `h` runnable on its CPU: directly when it lives here, by IPI
    /// message otherwise. DragonFly: `lwkt_schedule()`.
    ///
    /// # Panics
    /// If `h` belongs to another machine.
    #[inline(always)]
    pub fn schedule(self, h: &ThreadHandle) {
        let td = h.thread();
        self.check_machine(td);
        // A section by hand, not `crit`'s closure (which the compiler may
        // leave out of line): nothing in it unwinds.
        let me = self.gd.cur();
        crit::enter(&me.critcount);
        // SAFETY: on this CPU in a critical section; `td` is held by `h`.
        unsafe { schedule_any(self.gd, td) };
        crit_exit_td(me);
    }

    /// Take `h` off its CPU's run queue (it keeps running until it next
    /// switches, if it is running now). DragonFly: `lwkt_deschedule()`.
    ///
    /// # Panics
    /// If `h` belongs to another machine.
    pub fn deschedule(self, h: &ThreadHandle) {
        let td = h.thread();
        self.check_machine(td);
        self.crit(|| {
            // SAFETY: as in `schedule`.
            unsafe { deschedule_any(self.gd, td) }
        });
    }

    /// Wake every thread sleeping on `chan` on every CPU.
    /// DragonFly: `wakeup()`.
    pub fn wakeup(self, chan: usize) {
        self.crit(|| {
            // SAFETY: on this CPU in a critical section.
            unsafe { sleep::wakeup_local(self.gd, chan) };
            for c in sleep::remote_sleepers(self.gd, chan).iter() {
                // SAFETY: as above.
                let r = unsafe {
                    ipiq::send(
                        self.gd,
                        c,
                        &[IpiMsg {
                            func: wakeup_remote,
                            arg1: chan,
                            arg2: 0,
                        }],
                    )
                };
                debug_assert!(r.is_ok());
            }
        });
    }

    /// Make the thread `t` names runnable, if it lives on this CPU (of this
    /// machine); returns whether it does. No count, no sleep queue, no
    /// atomic read-modify-write: the wake-up of a thread that waits in
    /// [`Cur::block`](crate::Cur::block) for this very call, made on its CPU (a thread of
    /// another CPU or machine is left alone: `false`). A thread woken
    /// otherwise (or twice) only runs once more and checks its condition
    /// again. Not in DragonFly (see [`ParkToken`]).
    ///
    /// # Safety
    /// `t` is the [`Cur::park_token`](crate::Cur::park_token) of a thread that has not exited (its
    /// block is alive): for example one that waits, in a loop on a
    /// condition only this wake-up's caller can make true, for this call.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let t = cur.park_token();
    ///     let waker = cur.spawn_on(cur.cpu_id(), move |w| {
    ///         // SAFETY: the main thread waits in `block` until this call.
    ///         assert!(unsafe { w.my_cpu().unpark(t) });
    ///     }).unwrap();
    ///     cur.block();
    ///     cur.join(&waker);
    /// });
    /// ```
    #[inline]
    pub unsafe fn unpark(self, t: ParkToken) -> bool {
        // SAFETY: caller: the block is alive.
        let td = unsafe { t.thread() };
        // The CPU pointer alone could name a CPU block of an ended machine
        // reused by this one: check the machine too (as `check_machine`).
        let here = td.machine_id == self.gd.machine_id.get()
            && ptr::eq(td.gd.load(Ordering::Acquire), self.gd);
        if here {
            // A section by hand, as in `schedule`.
            let me = self.gd.cur();
            crit::enter(&me.critcount);
            // SAFETY: on this CPU in a critical section; `td` is a live
            // thread of this CPU (checked above; only this CPU hands its
            // threads over, and not while we are in it).
            unsafe { schedule_local(self.gd, td) };
            crit_exit_td(me);
        }
        here
    }

    /// Queue `func(arg1, arg2)` to run on `target` in interrupt context (in
    /// a critical section; it must not block). On this CPU it runs at once.
    /// DragonFly: `lwkt_send_ipiq3()`.
    pub fn send_ipi(
        self,
        target: CpuId,
        func: IpiFn,
        arg1: usize,
        arg2: usize,
    ) -> Result<(), IpiError> {
        self.send_ipi_batch(target, &[IpiMsg { func, arg1, arg2 }])
    }

    /// Queue several messages to `target` with one ring publication and at
    /// most one kick.
    pub fn send_ipi_batch(self, target: CpuId, msgs: &[IpiMsg]) -> Result<(), IpiError> {
        self.crit(|| {
            // SAFETY: on this CPU in a critical section.
            unsafe { ipiq::send(self.gd, target, msgs) }
        })
    }

    /// Run queued IPI messages now (DragonFly `lwkt_process_ipiq()`),
    /// for code that polls.
    pub fn process_ipis(self) {
        self.crit(|| {
            // SAFETY: on this CPU in a critical section.
            unsafe { ipiq::process(self.gd) }
        });
    }

    #[inline(always)]
    pub(crate) fn check_machine(self, td: &Thread) {
        assert!(
            // The CPU's copy of its machine's id (set at `bind`, before any
            // `MyCpu` of it exists): one load, no pointer chase.
            td.machine_id == self.gd.machine_id.get(),
            "lwkt: thread handle of another machine used on this one"
        );
    }

    pub(crate) fn cpu(self) -> &'a Cpu {
        self.gd
    }
}

/// Leaves the running thread's critical section when dropped: on the
/// normal path and when a callback unwinds through lwkt's frame.
pub(crate) struct CritExit<'a>(&'a Thread);

impl Drop for CritExit<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        crit_exit_td(self.0);
    }
}
