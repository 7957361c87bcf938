//! Device interrupts and interrupt threads, and the preemption they cause.
//!
//! A device interrupt is a numbered line (`irq`, below [`MAX_IRQS`]) of one
//! CPU. A thread of that CPU registers as the line's interrupt thread
//! ([`Cur::register_interrupt`]) and waits for it
//! ([`Cur::wait_interrupt`]). Raising the line ([`Cpu::post_interrupt`]
//! from the backend's interrupt handler, or [`MyCpu::raise_interrupt`]
//! from any CPU: the vkernel's cothread role) sets a pending bit and the
//! CPU's `RQF_INTPEND`; the CPU delivers it at its interrupt entry, or at
//! the final `crit_exit` when the interrupt arrived inside a critical
//! section: the line's thread is made runnable with one more interrupt to
//! collect. A line without a thread counts a stray interrupt
//! ([`CpuStatsSnapshot::stray_interrupts`](crate::CpuStatsSnapshot)).
//!
//! When the interrupt thread has a higher priority than the interrupted
//! thread, it **preempts** it: it runs at once, and the preempted thread
//! keeps its place (the head of its priority's run queue) and its tokens,
//! and resumes when the interrupt thread blocks. An interrupt thread that
//! cannot get its own tokens while the preempted thread holds its own does
//! not preempt; it runs at the next switch. DragonFly: `lwkt_preempt()`.
//!
//! Preemption happens at a point where the interrupted thread runs
//! lwkt-core's code with no critical section: its final `crit_exit`, or
//! the backend's interrupt entry when the backend says that interrupts
//! arrive in kernel context (a bare-metal backend). The hosted backend's
//! interrupts are signals, which may land inside the C library (its
//! allocator, its locks); running another thread there could re-enter it,
//! so on the hosted backend a thread is preempted at its next final
//! `crit_exit` (every lwkt call that touches shared state has one).
//!
//! DragonFly: `register_int()`, `ithread_handler()`, `sched_ithd_hard()`,
//! `RQF_INTPEND`, `lwkt_preempt()`.

use core::cell::Cell;
use core::fmt;
use core::ptr;

use crate::crit::{self, crit_exit_td, rqf};
use crate::schedule::{dequeue, schedule_local};
use crate::switch::{finish_switch, switch_in_crit};
use crate::sync::Ordering;
use crate::thread::{tdf, Thread};
use crate::{Cpu, CpuId, Cur, MyCpu};

/// Interrupt lines per CPU.
pub const MAX_IRQS: usize = 64;

/// A line's fast handler: runs first, in interrupt context on the line's
/// CPU (inside a critical section, like an IPI function: it gets the CPU
/// as [`MyCpu`], so it cannot block or sleep, which the type system
/// enforces), with the argument given at registration; returns whether
/// the line's interrupt thread should run. It acknowledges the device,
/// takes what must be taken at once, and leaves the rest to the thread. A
/// panic in it aborts (there is no frame to unwind into). On the hosted
/// backend it runs at the CPU's next final `crit_exit`, switch or idle
/// turn, never inside the signal handler (it may allocate). DragonFly:
/// the fast handler of `register_int(..., INTR_CLOCK / fast)`,
/// `ithread_fast_handler()`.
pub type FastHandler = fn(MyCpu<'_>, usize) -> bool;

/// Why an interrupt call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrError {
    /// The line number is not below [`MAX_IRQS`].
    NoSuchIrq {
        /// The line asked for.
        irq: usize,
    },
    /// The CPU does not exist on this machine.
    NoSuchCpu {
        /// The CPU asked for.
        cpu: CpuId,
        /// How many CPUs the machine has.
        ncpus: usize,
    },
    /// Another thread is the line's interrupt thread.
    Taken {
        /// The line asked for.
        irq: usize,
    },
}

impl fmt::Display for IntrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntrError::NoSuchIrq { irq } => write!(
                f,
                "lwkt: interrupt line {irq} does not exist (lines are 0..{MAX_IRQS})"
            ),
            IntrError::NoSuchCpu { cpu, ncpus } => write!(
                f,
                "lwkt: cannot raise an interrupt on CPU {} (this machine has CPUs 0..{ncpus})",
                cpu.get()
            ),
            IntrError::Taken { irq } => write!(
                f,
                "lwkt: interrupt line {irq} already has an interrupt thread on this CPU"
            ),
        }
    }
}

/// One CPU's interrupt lines.
pub(crate) struct IntrTable {
    /// Lines raised and not yet delivered; set from any context.
    pub(crate) pending: PendingLines,
    /// Each line's interrupt thread (null: none); owner-only, in a
    /// critical section.
    pub(crate) ithread: [Cell<*const Thread>; MAX_IRQS],
    /// Interrupts delivered to each line's thread and not yet collected
    /// by its `wait_interrupt`; owner-only, in a critical section.
    pub(crate) count: [Cell<u32>; MAX_IRQS],
    /// Each line's fast handler and its argument; owner-only.
    fast: [Cell<Option<(FastHandler, usize)>>; MAX_IRQS],
    /// Lines with a fast handler (bits), for the async-safe entry, which
    /// leaves them to thread context; owner-only.
    fast_lines: Cell<u64>,
}

impl IntrTable {
    pub(crate) fn new() -> IntrTable {
        IntrTable {
            pending: PendingLines::new(),
            ithread: [const { Cell::new(ptr::null()) }; MAX_IRQS],
            count: [const { Cell::new(0) }; MAX_IRQS],
            fast: [const { Cell::new(None) }; MAX_IRQS],
            fast_lines: Cell::new(0),
        }
    }
}

/// The set of raised lines, a bit per line, set from any context (a device
/// interrupt, another CPU) and taken whole by the owner. One `AtomicU64`
/// where the target has 64-bit atomics; else two native `AtomicU32`s, each
/// line's bit in one of them: a line is raised with one RMW on its word
/// and taken by one swap of it, so no bit is lost or delivered twice, and
/// nothing here is a lock an interrupt handler could wait on (a lock-based
/// 64-bit emulation would be: see docs/porting.md).
#[cfg(any(loom, target_has_atomic = "64"))]
pub(crate) struct PendingLines(crate::sync::AtomicU64);

#[cfg(any(loom, target_has_atomic = "64"))]
impl PendingLines {
    fn new() -> PendingLines {
        PendingLines(crate::sync::AtomicU64::new(0))
    }

    /// Raise the lines of `bits` (any context).
    #[inline(always)]
    pub(crate) fn raise(&self, bits: u64, o: Ordering) {
        self.0.fetch_or(bits, o);
    }

    /// Take every raised line (owner only).
    #[inline(always)]
    pub(crate) fn take(&self, o: Ordering) -> u64 {
        self.0.swap(0, o)
    }
    /// The raised lines (the loom models' check).
    #[cfg(loom)]
    pub(crate) fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The set of raised lines (see the 64-bit definition): two 32-bit words.
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(crate) struct PendingLines([crate::sync::AtomicU32; 2]);

#[cfg(not(any(loom, target_has_atomic = "64")))]
impl PendingLines {
    fn new() -> PendingLines {
        use crate::sync::AtomicU32;
        PendingLines([AtomicU32::new(0), AtomicU32::new(0)])
    }

    /// Raise the lines of `bits` (any context).
    #[inline(always)]
    pub(crate) fn raise(&self, bits: u64, o: Ordering) {
        let (lo, hi) = (bits as u32, (bits >> 32) as u32);
        if lo != 0 {
            self.0[0].fetch_or(lo, o);
        }
        if hi != 0 {
            self.0[1].fetch_or(hi, o);
        }
    }

    /// Take every raised line (owner only). The two swaps are not one
    /// atomic step, and need not be: a line raised after its word's swap
    /// also sets `RQF_INTPEND` after it, so the next delivery takes it.
    #[inline(always)]
    pub(crate) fn take(&self, o: Ordering) -> u64 {
        let lo = self.0[0].swap(0, o);
        let hi = self.0[1].swap(0, o);
        u64::from(hi) << 32 | u64::from(lo)
    }
}

const _: () = assert!(MAX_IRQS <= 64, "the pending set has 64 bits");

fn check_irq(irq: usize) -> Result<u64, IntrError> {
    if irq < MAX_IRQS {
        Ok(1 << irq)
    } else {
        Err(IntrError::NoSuchIrq { irq })
    }
}

impl Cpu {
    /// A device interrupt on line `irq` of this CPU: records it (and
    /// `RQF_INTPEND`); the CPU delivers it at its interrupt entry or its
    /// next final `crit_exit`, switch or idle turn. Safe from any context
    /// and any thread (it sets two bits). The backend's interrupt handler
    /// calls it, then makes the CPU look, as for
    /// [`post_timer`](Cpu::post_timer). DragonFly: `sched_ithd_hard()`'s
    /// request, `RQF_INTPEND`.
    ///
    /// ```
    /// // A backend's handler for the vector of device line 3.
    /// fn device_interrupt(cpu: &lwkt_core::Cpu) {
    ///     cpu.post_interrupt(3).unwrap();
    ///     // ... then enter lwkt (the IPI entry runs deferred work).
    /// }
    /// ```
    pub fn post_interrupt(&self, irq: usize) -> Result<(), IntrError> {
        let bit = check_irq(irq)?;
        self.intr.pending.raise(bit, Ordering::Relaxed);
        // Release: whoever clears INTPEND and then reads `pending` (after
        // the fence in `deliver`) sees the bit.
        self.reqflags.fetch_or(rqf::INTPEND, Ordering::Release);
        Ok(())
    }
}

impl MyCpu<'_> {
    /// Raise interrupt line `irq` on CPU `target` (this one included), as
    /// a device would: the interrupt thread registered there runs, and
    /// preempts a lower-priority thread. For tests, and for a backend
    /// without devices (the vkernel's cothreads raise interrupts so).
    ///
    /// ```
    /// use lwkt_core::{CpuId, Priority};
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let ith = cur.builder().cpu(CpuId::new(1)).priority(Priority::INT_MED)
    ///         .spawn(|me| {
    ///             me.register_interrupt(5).unwrap();
    ///             me.wait_interrupt(5); // until one arrives
    ///         }).unwrap();
    ///     // Raise until the thread has registered and collected one.
    ///     while !ith.has_exited() {
    ///         cur.my_cpu().raise_interrupt(CpuId::new(1), 5).unwrap();
    ///         cur.yield_now();
    ///     }
    /// });
    /// ```
    pub fn raise_interrupt(self, target: CpuId, irq: usize) -> Result<(), IntrError> {
        let m = self.cpu().machine();
        let Some(gd) = m.cpu(target) else {
            return Err(IntrError::NoSuchCpu {
                cpu: target,
                ncpus: m.ncpus,
            });
        };
        gd.post_interrupt(irq)?;
        if ptr::eq(gd, self.cpu()) {
            // Delivered at the caller's final `crit_exit`; make sure
            // there is one.
            self.crit(|| {});
        } else {
            // SAFETY: `gd` is a running CPU of this machine (we run on
            // another of its CPUs).
            unsafe { m.arch.interrupt(gd) };
        }
        Ok(())
    }
}

/// Deliver `gd`'s pending interrupts: each line's fast handler runs, and
/// (unless it declines) its thread is made runnable with one more
/// interrupt to collect; a line without a thread counts a stray. Requests
/// preemption when a thread of higher priority than the running one
/// became runnable. With `ASYNC_SAFE` (the hosted signal handler) it runs
/// no user code: lines with a fast handler stay pending, with
/// `RQF_INTPEND`, for thread context.
///
/// # Safety
/// On `gd`, in a critical section.
pub(crate) unsafe fn deliver<const ASYNC_SAFE: bool>(gd: &Cpu) {
    // `splz` cleared INTPEND with an Acquire RMW, which read the
    // poster's Release set: every line posted before it is in `pending`.
    let mut lines = gd.intr.pending.take(Ordering::Relaxed);
    if lines == 0 {
        return;
    }
    if ASYNC_SAFE {
        let later = lines & gd.intr.fast_lines.get();
        if later != 0 {
            lines &= !later;
            gd.intr.pending.raise(later, Ordering::Relaxed);
            gd.reqflags.fetch_or(rqf::INTPEND, Ordering::Relaxed);
        }
    }
    while lines != 0 {
        let irq = lines.trailing_zeros() as usize;
        lines &= lines - 1;
        let td = gd.intr.ithread[irq].get();
        if td.is_null() {
            gd.stats.stray_interrupts.add(1);
            continue;
        }
        if let Some((f, arg)) = gd.intr.fast[irq].get() {
            let run =
                crate::abort_on_unwind("an interrupt's fast handler", || f(MyCpu::new(gd), arg));
            if !run {
                gd.stats.interrupts.add(1);
                continue;
            }
        }
        gd.stats.interrupts.add(1);
        let c = &gd.intr.count[irq];
        c.set(c.get().saturating_add(1));
        // SAFETY: a registered interrupt thread is alive (it unregisters
        // before it exits) and lives on `gd` (it cannot migrate while
        // registered); on `gd` in a critical section (caller).
        unsafe { wake(gd, &*td) };
    }
}

/// Make `td`, a thread of `gd`, runnable from an interrupt (a device
/// line, an expired timer), and ask for preemption if it outranks the
/// running thread. DragonFly: `lwkt_schedule()` + `lwkt_preempt()` from
/// an interrupt.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a live thread of `gd`.
pub(crate) unsafe fn wake(gd: &Cpu, td: &Thread) {
    // SAFETY: forwarded.
    unsafe { schedule_local(gd, td) };
    let cur = gd.curthread.load(Ordering::Relaxed);
    // SAFETY: a non-null `curthread` is the live running thread.
    if !cur.is_null() && td.pri.get() > unsafe { (*cur).pri.get() } {
        gd.reqflags.fetch_or(rqf::PREEMPT, Ordering::Relaxed);
    }
}

/// Let the head of `td`'s run queue preempt `td`, the running thread, if
/// it has a higher priority and can get its tokens while `td` keeps its
/// own. Returns when `td` runs again. DragonFly: `lwkt_preempt()`.
///
/// # Safety
/// Called for `td`, the running thread, on its CPU, outside any critical
/// section and interrupt processing, at a point where it may be switched
/// away from: its final `crit_exit` (thread context), or an interrupt
/// frame that `Cpu::preempt_from_interrupt` allows.
pub(crate) unsafe fn preempt(td: &Thread) {
    crit::enter(&td.critcount);
    let gd = td.gd();
    gd.reqflags.fetch_and(!rqf::PREEMPT, Ordering::Relaxed);
    // SAFETY: on our CPU in a critical section.
    let first = unsafe { gd.runq() }.first();
    // SAFETY: queued threads are live.
    let Some(ntd) = (unsafe { first.as_ref() }) else {
        crit_exit_td(td);
        return;
    };
    if ptr::eq(ntd, td) || ntd.pri.get() <= td.pri.get() || gd.intr_nesting.get() != 0 {
        crit_exit_td(td);
        return;
    }
    // The preempted thread keeps its tokens; the preempting one must get
    // its own now, or wait for the next switch (DragonFly: the same).
    // SAFETY: `ntd` is not running; its stack is touched only by this CPU.
    if !ntd.toks.is_empty() && !unsafe { ntd.toks.acquire_all() } {
        crit_exit_td(td);
        return;
    }
    gd.curthread
        .store(ntd as *const Thread as *mut Thread, Ordering::Relaxed);
    gd.reqflags.fetch_and(!rqf::RESCHED, Ordering::Relaxed);
    gd.stats.switches.add(1);
    gd.stats.preemptions.add(1);
    ntd.switches.set(ntd.switches.get() + 1);
    let arch = gd.machine().arch;
    // A round-robin `td` owes (its quantum expired with a peer waiting)
    // must survive the preemption: the switch that leaves `ntd` clears the
    // request, which was `ntd`'s to serve only if it was made for `ntd`.
    let owed_slice = gd.reqflags.load(Ordering::Relaxed) & rqf::SLICE;
    td.set(tdf::PREEMPTED);
    // SAFETY: inside a critical section; `ntd.ctx` was saved by a switch
    // or prepared by `init_context`. `td` stays on its run queue, first
    // of its priority, holding its tokens: the switch that leaves `ntd`
    // comes back to it (`pick_with_tokens` takes a `PREEMPTED` thread as
    // it is, without looking at its token stack, which may be in the
    // middle of a push or a pop).
    unsafe { arch.switch(&td.ctx, &ntd.ctx) };
    td.clear(tdf::PREEMPTED);
    // SAFETY: just switched to, in a critical section.
    unsafe { finish_switch(td.gd()) };
    if owed_slice != 0 {
        td.gd().reqflags.fetch_or(rqf::SLICE, Ordering::Relaxed);
    }
    crit_exit_td(td);
}

impl Cur {
    /// Become the interrupt thread of line `irq` of this CPU: interrupts
    /// raised on it make this thread runnable, for
    /// [`wait_interrupt`](Cur::wait_interrupt) to collect. The thread
    /// should have an interrupt priority (`Priority::INT_MED`) to preempt
    /// the threads it interrupts. It cannot migrate while registered, and
    /// it is unregistered when it exits. DragonFly: `register_int()`.
    ///
    /// ```
    /// use lwkt_core::intr::IntrError;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     cur.register_interrupt(7).unwrap();
    ///     assert_eq!(cur.register_interrupt(7), Err(IntrError::Taken { irq: 7 }));
    ///     assert_eq!(cur.register_interrupt(64), Err(IntrError::NoSuchIrq { irq: 64 }));
    ///     cur.unregister_interrupt(7);
    /// });
    /// ```
    pub fn register_interrupt(&mut self, irq: usize) -> Result<(), IntrError> {
        self.register(irq, None)
    }

    /// [`register_interrupt`](Cur::register_interrupt) with a fast
    /// handler, which runs first at each interrupt (in interrupt context,
    /// with `arg`) and decides whether this thread runs.
    /// DragonFly: `register_int()` with a fast handler.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// static ACKED: AtomicU32 = AtomicU32::new(0);
    /// fn ack(_my: lwkt_core::MyCpu<'_>, arg: usize) -> bool {
    ///     ACKED.fetch_add(1, Ordering::Relaxed);
    ///     arg == 1 // wake the thread
    /// }
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     cur.register_interrupt_fast(2, ack, 1).unwrap();
    ///     cur.my_cpu().raise_interrupt(cur.cpu_id(), 2).unwrap();
    ///     assert_eq!(cur.wait_interrupt(2), 1);
    ///     assert_eq!(ACKED.load(Ordering::Relaxed), 1);
    /// });
    /// ```
    pub fn register_interrupt_fast(
        &mut self,
        irq: usize,
        fast: FastHandler,
        arg: usize,
    ) -> Result<(), IntrError> {
        self.register(irq, Some((fast, arg)))
    }

    fn register(
        &mut self,
        irq: usize,
        fast: Option<(FastHandler, usize)>,
    ) -> Result<(), IntrError> {
        let bit = check_irq(irq)?;
        let td = self.td();
        let gd = td.gd();
        let _g = self.crit();
        let slot = &gd.intr.ithread[irq];
        if !slot.get().is_null() {
            return Err(IntrError::Taken { irq });
        }
        slot.set(td);
        gd.intr.count[irq].set(0);
        gd.intr.fast[irq].set(fast);
        if fast.is_some() {
            gd.intr.fast_lines.set(gd.intr.fast_lines.get() | bit);
        }
        td.irqs.set(td.irqs.get() | bit);
        Ok(())
    }

    /// Stop being line `irq`'s interrupt thread; interrupts raised on it
    /// from now on are strays. Interrupts delivered and not collected are
    /// dropped. DragonFly: `unregister_int()`.
    ///
    /// # Panics
    /// If this thread is not the line's interrupt thread.
    pub fn unregister_interrupt(&mut self, irq: usize) {
        let bit = self.registered_bit(irq);
        let td = self.td();
        let _g = self.crit();
        // SAFETY: on our CPU in a critical section.
        unsafe { unregister(td.gd(), td, irq) };
        debug_assert_eq!(td.irqs.get() & bit, 0);
    }

    /// Wait for interrupts on line `irq`, whose interrupt thread this
    /// thread is; returns how many arrived since the last call (at least
    /// one). DragonFly: the loop of `ithread_handler()`.
    ///
    /// # Panics
    /// If this thread is not the line's interrupt thread.
    pub fn wait_interrupt(&mut self, irq: usize) -> u32 {
        self.registered_bit(irq);
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        let count = &gd.intr.count[irq];
        loop {
            let n = count.replace(0);
            if n != 0 {
                crit_exit_td(td);
                return n;
            }
            // SAFETY: on our CPU in a critical section, as the running
            // thread; `deliver` makes us runnable again.
            unsafe {
                dequeue(gd, td);
                switch_in_crit::<true>(td, gd, gd.runq().first());
            }
        }
    }

    #[track_caller]
    fn registered_bit(&self, irq: usize) -> u64 {
        let bit = check_irq(irq).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            self.td().irqs.get() & bit != 0,
            "lwkt: thread '{}' is not the interrupt thread of line {irq} \
             (register_interrupt first)",
            self.name()
        );
        bit
    }
}

/// Take `td` off line `irq` of `gd`.
///
/// # Safety
/// On `gd`, in a critical section; `td` is the line's thread.
unsafe fn unregister(gd: &Cpu, td: &Thread, irq: usize) {
    debug_assert!(ptr::eq(gd.intr.ithread[irq].get(), td));
    gd.intr.ithread[irq].set(ptr::null());
    gd.intr.count[irq].set(0);
    gd.intr.fast[irq].set(None);
    gd.intr
        .fast_lines
        .set(gd.intr.fast_lines.get() & !(1 << irq));
    td.irqs.set(td.irqs.get() & !(1 << irq));
}

/// Unregister every line of `td`, which exits.
///
/// # Safety
/// On `td`'s CPU, in a critical section, by `td`.
pub(crate) unsafe fn unregister_all(td: &Thread) {
    let mut lines = td.irqs.get();
    while lines != 0 {
        let irq = lines.trailing_zeros() as usize;
        lines &= lines - 1;
        // SAFETY: forwarded; the bit says `td` is the line's thread.
        unsafe { unregister(td.gd(), td, irq) };
    }
}

/// Panic if `td` may not leave its CPU: it is an interrupt thread there.
#[track_caller]
pub(crate) fn check_may_migrate(td: &Thread) {
    assert!(
        td.irqs.get() == 0,
        "lwkt: interrupt thread '{}' cannot migrate (unregister_interrupt first)",
        td.name
    );
}
