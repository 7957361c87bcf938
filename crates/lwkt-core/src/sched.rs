//! The per-CPU scheduler: switch, yield, schedule/deschedule, priorities,
//! creation, exit, migration, and the idle loop.
//!
//! DragonFly: `lwkt_switch()`, `lwkt_yield()`, `lwkt_schedule()`,
//! `lwkt_deschedule()`, `lwkt_setpri_self()`, `lwkt_create()`, `lwkt_exit()`,
//! `lwkt_setcpu_self()`, `cpu_idle()`, `Xipiq`/`splz()`.
//!
//! Rules kept here:
//! - a thread runs only on its own CPU (`td_gd`); every change to another
//!   CPU's threads travels as an IPI message to that CPU;
//! - run queues and sleep queues are touched only by their CPU, inside a
//!   critical section; interrupts that arrive meanwhile are deferred;
//! - a running thread stays on its run queue; `switch` picks the head of
//!   the highest non-empty priority, which may be the caller itself.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

use crate::arch::Stack;
use crate::cpu::{Cpu, CpuId, CpuStatsSnapshot};
use crate::crit;
use crate::ipiq::{self, IpiError, IpiFn, IpiMsg};
use crate::sleep;
use crate::sync::Ordering;
use crate::thread::{tdf, ParkToken, Priority, SpawnError, Thread, ThreadHandle, MPF_EXITED};

/// Smallest stack left for a thread's own frames after its thread block and
/// closure are placed at the top of its stack.
pub const MIN_STACK: usize = 8 * 1024;

/// Default stack size for [`Cur::spawn_on`].
pub const DEFAULT_STACK: usize = 64 * 1024;

/// Copies of a thread's closure its own frames may hold while calling it,
/// reserved beyond [`MIN_STACK`] (see `create_thread`).
const CLOSURE_COPIES: usize = 2;

/// The running thread's handle: proof that the code holding it runs as this
/// thread, on its CPU. Every thread body receives `&mut Cur`.
///
/// Everything that may block or switch takes `&mut Cur`; everything that
/// only looks takes `&Cur`. So a borrow obtained from `&Cur` (the current CPU
/// as [`MyCpu`], a critical-section guard, token-protected data in
/// lwkt-token) cannot live across a point where the thread may block, move
/// to another CPU, or let other threads run: the borrow checker rejects it.
///
/// ```compile_fail
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let my = cur.my_cpu();      // borrows `cur`
///     cur.yield_now();            // error: `cur` is borrowed by `my`
///     my.id();
/// });
/// ```
///
/// `Cur` cannot leave its OS thread or CPU:
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| needs_send(cur));
/// ```
pub struct Cur {
    td: NonNull<Thread>,
    _not_send: PhantomData<*mut ()>,
}

impl core::fmt::Debug for Cur {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cur").field("thread", self.td()).finish()
    }
}

/// The current CPU, borrowed in a context pinned to it (a thread through
/// [`Cur::my_cpu`], or an IPI function's argument). Cheap to copy, not
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
    /// overlap. Never 0, always below 2^62, never reused in the process.
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
    /// [`Cur::block`] for this very call, made on its CPU (a thread of
    /// another CPU or machine is left alone: `false`). A thread woken
    /// otherwise (or twice) only runs once more and checks its condition
    /// again. Not in DragonFly (see [`ParkToken`]).
    ///
    /// # Safety
    /// `t` is the [`Cur::park_token`] of a thread that has not exited (its
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
struct CritExit<'a>(&'a Thread);

impl Drop for CritExit<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        crit_exit_td(self.0);
    }
}

/// The loop of a sleep on `chan` (`Cur::sleep_until` and the timed
/// sleeps): `sleep_pass` until `cond` holds (returns `true`), switching
/// away between passes; or until `stop()` (a timed sleep's timer fired:
/// returns `false`, off the sleep queue). Inlined with the switch, so the
/// thread resumes in its caller's frame (see `yield_now` on the
/// return-address predictor).
///
/// # Safety
/// Called by `td`, the running thread, on its CPU, in a critical section.
#[inline(always)]
unsafe fn sleep_loop(
    td: &Thread,
    chan: usize,
    cond: &mut impl FnMut() -> bool,
    stop: impl Fn() -> bool,
) -> bool {
    loop {
        if stop() {
            return false;
        }
        let gd = td.gd();
        // SAFETY: on our CPU in a critical section; `td` is current.
        if unsafe { sleep::sleep_pass(gd, td, chan, &mut *cond) } {
            return true;
        }
        // SAFETY: as above (the critical section is ours); a wakeup or a
        // timer re-queues us.
        unsafe { switch_in_crit::<true>(td, gd, gd.runq().first()) };
    }
}

/// Restores a thread that a callback (a sleep condition, a watch test)
/// unwound out of, inside `sleep_until` or `watch_until`: off any sleep
/// queue it was put on, and out of the critical section. Forgotten on the
/// normal path, which leaves by itself.
struct RestoreOnUnwind<'a>(&'a Thread);

impl Drop for RestoreOnUnwind<'_> {
    #[cold]
    fn drop(&mut self) {
        let td = self.0;
        if td.has(tdf::TSLEEPQ) {
            // SAFETY: the running thread, on its CPU, still inside the
            // critical section the guarded code entered.
            unsafe { sleep::unqueue(td.gd(), td) };
        }
        crit_exit_td(td);
    }
}

/// The watch of [`Cur::watch_until`], entered in its critical section on
/// `gd`, the running thread `td`'s CPU, with no other thread runnable
/// there; leaves the section.
#[inline(never)]
fn watch_in_crit(td: &Thread, gd: &Cpu, budget: u64, mut ready: impl FnMut() -> bool) -> bool {
    // SAFETY: on our CPU in a critical section.
    let others = |gd: &Cpu| unsafe { gd.runq() }.len() > usize::from(td.has(tdf::RUNQ));
    // `ready` is the caller's: if it panics, we unwind out of the
    // critical section (the watch itself may go on).
    let restore = RestoreOnUnwind(td);
    let arch = gd.machine().arch;
    let budget = budget.min(arch.idle_poll_cycles());
    if budget == 0 {
        // Nothing to watch for.
        let r = ready();
        core::mem::forget(restore);
        crit_exit_td(td);
        return r;
    }
    let start = arch.cycles();
    if gd.watching.get() {
        // A thread waiting for work keeps the watch alive.
        gd.watch_seen.set(start);
    } else {
        gd.begin_watch();
    }
    let got = loop {
        if gd.watch_sees_work() {
            // SAFETY: on our CPU in a critical section.
            unsafe { gd.splz_watched() };
        }
        if ready() {
            break true;
        }
        if others(gd)
            || gd.reqflags.load(Ordering::Relaxed) & crit::rqf::RESCHED != 0
            || gd.shutdown.load(Ordering::Relaxed)
            || !gd.watching.get()
            || arch.cycles().wrapping_sub(start) >= budget
        {
            break false;
        }
        core::hint::spin_loop();
    };
    // The watch goes on (the idle loop's, if we now sleep): the next
    // message finds this CPU still watching, and its sender kicks no one.
    core::mem::forget(restore);
    crit_exit_td(td);
    got
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

#[inline(always)]
pub(crate) fn crit_exit_td(td: &Thread) {
    let gd = td.gd();
    if crit::exit(&td.critcount, &gd.reqflags) {
        splz_from_thread(td);
    }
}

/// While a CPU watches its rings, its threads look at them at one final
/// `crit_exit` in this many (a power of two). Looking at every exit slowed
/// a two-CPU request stream 2x (`msg_async`, 0.15 -> 0.31-0.38 us per
/// request): each look at a ring the sender is still filling takes the
/// line it writes next, so the two sides pass it back and forth once per
/// entry instead of once per line of entries.
const WATCH_LOOK_EVERY: u32 = 16;

/// Run deferred work at the final `crit_exit` (DragonFly `splz()`), and
/// look at the rings if the CPU watches them (at one exit in
/// [`WATCH_LOOK_EVERY`]).
#[cold]
#[inline(never)]
fn splz_from_thread(td: &Thread) {
    let gd = td.gd();
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK == 0 {
        // Only the watch brought us here.
        let n = gd.watch_exits.get();
        gd.watch_exits.set(n.wrapping_add(1));
        if n % WATCH_LOOK_EVERY != 0 {
            return;
        }
    }
    loop {
        crit::enter(&td.critcount);
        // SAFETY: on `gd` (the current thread's CPU), in a critical section.
        unsafe { gd.splz_watched() };
        // Again only for deferred work that arrived while we ran (a request
        // bit); the watch's next look is the next exit's.
        if !crit::exit_entered_for(&td.critcount, &gd.reqflags, crit::rqf::IDLECHECK) {
            break;
        }
    }
}

/// `yield_now` found request flags set: run deferred work, and clear the
/// reschedule request (the switch that follows serves it; no new one can
/// arrive meanwhile, since interrupts wait for the critical section).
///
/// # Safety
/// As for [`splz`].
#[cold]
#[inline(never)]
unsafe fn yield_flags(gd: &Cpu) {
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK != 0 {
        // SAFETY: forwarded.
        unsafe { splz(gd) };
    }
    if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::RESCHED != 0 {
        gd.reqflags
            .fetch_and(!crit::rqf::RESCHED, Ordering::Relaxed);
    }
}

/// Drain deferred requests. DragonFly `splz()`.
///
/// # Safety
/// On `gd`, in a critical section.
pub(crate) unsafe fn splz(gd: &Cpu) {
    loop {
        let f = gd.reqflags.load(Ordering::Relaxed);
        if f & crit::rqf::IDLECHECK != 0 {
            gd.reqflags
                .fetch_and(!crit::rqf::IDLECHECK, Ordering::Relaxed);
        }
        if f & crit::rqf::TIMER != 0 {
            // SAFETY: forwarded.
            unsafe { crate::timer::run(gd) };
        }
        // SAFETY: forwarded.
        unsafe { ipiq::process(gd) };
        if gd.reqflags.load(Ordering::Relaxed) & crit::rqf::IDLECHECK == 0 {
            break;
        }
    }
}

// SAFETY: the stack is the running thread's own; `switch_from` releases a
// thread's tokens whenever it switches away and switches to a thread only
// after `acquire_all` succeeded, so a running thread holds all its tokens;
// `wait_for_tokens` is such a switch, and returns only when we run again.
unsafe impl lwkt_token::TokenThread for Cur {
    fn token_stack(&self) -> &lwkt_token::TokenStack {
        &self.td().toks
    }

    fn wait_for_tokens(&mut self) {
        // SAFETY: called by the running thread.
        unsafe { switch_from(self.td()) };
    }
}

impl Cur {
    pub(crate) fn td(&self) -> &Thread {
        // SAFETY: the running thread's block is alive while it runs.
        unsafe { self.td.as_ref() }
    }

    /// The current CPU, for operations that do not block.
    #[inline]
    pub fn my_cpu(&self) -> MyCpu<'_> {
        MyCpu::new(self.td().gd())
    }

    /// The current CPU, with a lifetime the caller chooses rather than a
    /// borrow of `self`: for an executor that lends the CPU to a future
    /// while it keeps `&mut Cur` to block between polls.
    ///
    /// # Safety
    /// For all of `'a`, this thread stays on its CPU (no [`migrate`]) and
    /// the returned value is used only by this thread.
    ///
    /// [`migrate`]: Cur::migrate
    #[inline]
    pub unsafe fn my_cpu_unbound<'a>(&self) -> MyCpu<'a> {
        // SAFETY: the CPU block outlives every thread running on it; the
        // caller keeps the thread on it for `'a`.
        MyCpu::new(unsafe { &*(self.td().gd() as *const Cpu) })
    }

    /// This thread's CPU.
    #[inline]
    pub fn cpu_id(&self) -> CpuId {
        self.td().gd().id()
    }

    /// This thread's name.
    pub fn name(&self) -> &'static str {
        self.td().name
    }

    /// This thread's priority.
    pub fn priority(&self) -> Priority {
        self.td().pri.get()
    }

    /// Times this thread has been switched to.
    pub fn switch_count(&self) -> u64 {
        self.td().switches.get()
    }

    /// A handle to this thread, to give to others (for example to wake it).
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle::new_held(self.td())
    }

    /// This thread's [`ParkToken`], for a party that will wake it on this
    /// CPU with [`MyCpu::unpark`] while it waits in [`block`](Self::block).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     assert_eq!(cur.park_token(), cur.park_token());
    /// });
    /// ```
    #[inline(always)]
    pub fn park_token(&self) -> ParkToken {
        ParkToken::of(self.td())
    }

    /// Whether `h` is a handle to this thread (no atomic operation).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     assert!(cur.is(&me));
    /// });
    /// ```
    #[inline]
    pub fn is(&self, h: &ThreadHandle) -> bool {
        self.td == h.td
    }

    /// Enter a critical section until the guard drops.
    /// DragonFly: `crit_enter()`.
    #[inline(always)]
    pub fn crit(&self) -> CritGuard<'_> {
        let td = self.td();
        crit::enter(&td.critcount);
        CritGuard {
            td,
            _not_send: PhantomData,
        }
    }

    /// Enter a critical section; pair with [`crit_exit`](Self::crit_exit).
    /// DragonFly: `crit_enter()`.
    #[inline(always)]
    pub fn crit_enter(&self) {
        crit::enter(&self.td().critcount);
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

    /// Create a thread on `cpu` at the default priority and stack size; it
    /// runs `f` and exits when `f` returns. DragonFly: `lwkt_create()`.
    ///
    /// ```
    /// use lwkt_core::CpuId;
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let t = cur.spawn_on(CpuId::new(1), |me| assert_eq!(me.cpu_id().get(), 1)).unwrap();
    ///     cur.join(&t);
    ///     assert!(cur.spawn_on(CpuId::new(9), |_| {}).is_err());
    /// });
    /// ```
    pub fn spawn_on<F>(&self, cpu: CpuId, f: F) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send + 'static,
    {
        self.builder().cpu(cpu).spawn(f)
    }

    /// A [`Builder`] for a thread with chosen CPU, priority, stack and name.
    pub fn builder(&self) -> Builder<'_> {
        Builder {
            cur: self,
            cpu: self.cpu_id(),
            pri: Priority::default(),
            stack: DEFAULT_STACK,
            name: "lwkt",
        }
    }

    /// Switch to the best runnable thread of this CPU, if it is not this one.
    /// DragonFly: `lwkt_switch()`.
    pub fn switch(&mut self) {
        // SAFETY: called by the running thread.
        unsafe { switch_from(self.td()) };
    }

    /// Hold `tok` exclusively while `f` runs; see [`lwkt_token::with_token`].
    /// DragonFly: `lwkt_gettoken()` ... `lwkt_reltoken()`.
    ///
    /// If `f` blocks, the token is released meanwhile and all of this
    /// thread's tokens are held again before it continues.
    ///
    /// ```
    /// use lwkt_core::token::{Token, TokenCell};
    /// static TOK: Token = Token::new("stats");
    /// static HITS: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     cur.with_token(&TOK, |cur, held| *HITS.get_mut(held, cur) += 1);
    /// });
    /// ```
    pub fn with_token<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Exclusive>) -> R,
    ) -> R {
        lwkt_token::with_token(self, tok, f)
    }

    /// Hold `tok` shared while `f` runs. DragonFly: `lwkt_gettoken_shared()`.
    pub fn with_token_shared<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Shared>) -> R,
    ) -> R {
        lwkt_token::with_token_shared(self, tok, f)
    }

    /// Hold `tok` exclusively while `f` runs, only if it is free now.
    /// DragonFly: `lwkt_trytoken()`.
    pub fn try_with_token<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Exclusive>) -> R,
    ) -> Option<R> {
        lwkt_token::try_with_token(self, tok, f)
    }

    /// The owner id this thread's exclusive token holds carry
    /// ([`Token::exclusive_owner`](lwkt_token::Token::exclusive_owner)).
    pub fn token_stack_id(&self) -> usize {
        self.td().toks.owner_id()
    }

    /// Token references this thread holds now.
    pub fn tokens_held(&self) -> usize {
        self.td().toks.len()
    }

    /// Let other runnable threads of the same or higher priority run, then
    /// continue (round-robin within a priority). DragonFly: `lwkt_yield()`.
    ///
    /// Always inlined: the context switch leaves the CPU's return-address
    /// predictor holding the old thread's return addresses, so a `ret` from
    /// an out-of-line `yield_now` on the resumed thread mispredicted once
    /// per switch (9 against 16 ns per switch, measured on the hosted
    /// backend). Inlined, the switch continues straight in the caller.
    #[inline(always)]
    pub fn yield_now(&mut self) {
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        // Deferred interrupts first (DragonFly: only when flagged), and the
        // reschedule request, which the switch below serves.
        if gd.reqflags.load(Ordering::Relaxed) & (crit::rqf::IDLECHECK | crit::rqf::RESCHED) != 0 {
            // SAFETY: on our CPU in a critical section.
            unsafe { yield_flags(gd) };
        }
        // SAFETY: on our CPU in a critical section, as the running thread.
        unsafe {
            // Behind our equal-priority peers; a higher-priority thread, if
            // any, runs next anyway.
            let first = if td.has(tdf::RUNQ) {
                gd.runq().rotate(td as *const Thread as *mut Thread)
            } else {
                gd.runq().first()
            };
            switch_in_crit::<false>(td, gd, first);
        }
        // We entered above: leave without the underflow check.
        if crit::exit_entered(&td.critcount, &td.gd().reqflags) {
            splz_from_thread(td);
        }
    }

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

    /// Take this thread off the run queue and switch away, in one critical
    /// section; returns when someone has scheduled it again
    /// ([`MyCpu::schedule`]) and it runs. [`deschedule_self`](Self::deschedule_self)
    /// then [`switch`](Self::switch), without the second section and
    /// inlined: the thread resumes in its caller's frame (see
    /// [`yield_now`](Self::yield_now)). Called inside a critical section,
    /// nothing that the section defers can run between the caller's check
    /// of its wait condition and the switch, so a wake-up made by an IPI is
    /// not lost. DragonFly: `lwkt_deschedule_self()` + `lwkt_switch()`.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     // A thread of this CPU wakes us once we have blocked.
    ///     let waker = cur.spawn_on(cur.cpu_id(), move |w| w.my_cpu().schedule(&me)).unwrap();
    ///     cur.block();
    ///     cur.join(&waker);
    /// });
    /// ```
    #[inline(always)]
    pub fn block(&mut self) {
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        // SAFETY: on our CPU in a critical section, as the running thread.
        unsafe {
            dequeue(gd, td);
            switch_in_crit::<true>(td, gd, gd.runq().first());
        }
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

    /// Block until `cond()` holds, sleeping on `chan` between checks; a
    /// [`MyCpu::wakeup`] of `chan` after the condition became true is never
    /// lost. DragonFly: `tsleep_interlock()` + `tsleep(PINTERLOCKED)`.
    ///
    /// `cond` runs inside a critical section and must not block.
    pub fn sleep_until(&mut self, chan: usize, mut cond: impl FnMut() -> bool) {
        let td = self.td();
        crit::enter(&td.critcount);
        // `cond` is the caller's: if it panics, we unwind off the sleep
        // queue and out of the critical section.
        let restore = RestoreOnUnwind(td);
        // SAFETY: on our CPU, in the critical section just entered.
        unsafe { sleep_loop(td, chan, &mut cond, || false) };
        core::mem::forget(restore);
        crit_exit_td(td);
    }

    /// [`sleep_until`](Self::sleep_until) with a time limit: sleep on
    /// `chan` until `cond()` holds (`Ok`) or `timeout` has passed
    /// (`Err(TimedOut)`). `cond` is checked once more when the time is up,
    /// so a wake-up that races the timeout counts as a wake-up; the thread
    /// wakes once either way. DragonFly: `tsleep(chan, flags, wmesg, timo)`
    /// in a loop on its condition.
    ///
    /// The deadline is rounded up to the timer wheel's tick (about 1 µs),
    /// and the wait ends when this CPU next runs its timers after it, which
    /// a thread of this CPU that never yields can delay (lwkt has no
    /// preemption yet). A `Duration::ZERO` timeout checks `cond` and times
    /// out at the next timer pass; a huge one never times out.
    ///
    /// # Panics
    /// If the backend has no clock ([`Arch::clock`](crate::Arch::clock) is
    /// `None`).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// static READY: AtomicBool = AtomicBool::new(false);
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let chan = &READY as *const _ as usize;
    ///     let ready = || READY.load(Ordering::Acquire);
    ///     let t = cur.sleep_until_timeout(chan, Duration::from_millis(2), ready);
    ///     assert_eq!(t, Err(lwkt_core::TimedOut));
    ///     READY.store(true, Ordering::Release);
    ///     assert_eq!(cur.sleep_until_timeout(chan, Duration::from_secs(60), ready), Ok(()));
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_until_timeout(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
        cond: impl FnMut() -> bool,
    ) -> Result<(), crate::TimedOut> {
        self.sleep_timed::<true>(chan, timeout, cond)
    }

    /// Sleep on `chan` until a wakeup (`Ok`, which may be spurious) or until
    /// `timeout` has passed (`Err(TimedOut)`, also when a wakeup came in
    /// the same instant: the thread wakes once). DragonFly: `tsleep(chan,
    /// flags, wmesg, timo)` returning 0 or `EWOULDBLOCK`. Rounding and
    /// limits as [`sleep_until_timeout`](Self::sleep_until_timeout).
    ///
    /// # Panics
    /// If the backend has no clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     // Nobody wakes this channel: the sleep times out.
    ///     assert_eq!(
    ///         cur.sleep_timeout(0x2000, Duration::from_millis(1)),
    ///         Err(lwkt_core::TimedOut)
    ///     );
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_timeout(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
    ) -> Result<(), crate::TimedOut> {
        let mut first = true;
        self.sleep_timed::<false>(chan, timeout, || !core::mem::take(&mut first))
    }

    /// Sleep for `d` (at least; rounded up to the timer wheel's tick, and
    /// as late as this CPU's next timer pass after it). Other threads of
    /// this CPU run meanwhile. DragonFly: `tsleep(.., timo)` on a channel
    /// nobody wakes.
    ///
    /// # Panics
    /// If the backend has no clock.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let t = Instant::now();
    ///     cur.sleep_for(Duration::from_millis(3));
    ///     assert!(t.elapsed() >= Duration::from_millis(3));
    /// });
    /// ```
    #[track_caller]
    pub fn sleep_for(&mut self, d: core::time::Duration) {
        // A channel nobody wakes: one past this thread's control block (a
        // join sleeps on the block's own address).
        let chan = self.td() as *const Thread as usize + 1;
        let _ = self.sleep_timed::<true>(chan, d, || false);
    }

    /// The timed sleep behind the three above. With `COND_WINS`, `cond`
    /// is asked once more when the time is up and decides.
    #[track_caller]
    fn sleep_timed<const COND_WINS: bool>(
        &mut self,
        chan: usize,
        timeout: core::time::Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Result<(), crate::TimedOut> {
        let td = self.td();
        let deadline = crate::timer::deadline_after(td.gd(), timeout);
        crit::enter(&td.critcount);
        // `cond` is the caller's: if it panics, we unwind off the sleep
        // queue and the wheel (the timer's drop) and out of the critical
        // section.
        let restore = RestoreOnUnwind(td);
        let result = {
            // Never moved: armed below, dropped (disarmed) in place at the
            // end of this block, in the critical section.
            let timer = crate::timer::SleepTimer::new(td);
            // SAFETY: on our CPU, in a critical section, by this thread,
            // which cannot migrate while it sleeps here; `timer` stays put.
            unsafe { timer.arm(deadline) };
            // SAFETY: on our CPU, in the critical section entered above.
            let held = unsafe { sleep_loop(td, chan, &mut cond, || timer.fired()) };
            if held || (COND_WINS && cond()) {
                Ok(())
            } else {
                Err(crate::TimedOut)
            }
        };
        core::mem::forget(restore);
        crit_exit_td(td);
        result
    }

    /// Sleep on `chan` until a wakeup (which may be spurious: re-check your
    /// condition, or use [`sleep_until`](Self::sleep_until)). DragonFly: `tsleep()`.
    pub fn sleep(&mut self, chan: usize) {
        let mut first = true;
        self.sleep_until(chan, || !core::mem::take(&mut first));
    }

    /// Spin in this thread until `ready()` holds, for up to `budget` cycles
    /// (at most the backend's [`Arch::idle_poll_cycles`]), while no other
    /// thread can run on this CPU; returns whether it held. Meanwhile this
    /// thread watches the CPU's IPI rings as the idle loop would and runs
    /// what arrives (senders see the watch and neither mark nor kick), so a
    /// message that makes `ready()` true is served here with no switch, no
    /// wake-up and no interrupt: the spin-before-block of a receiver that
    /// expects work within microseconds.
    ///
    /// It stops early when another thread becomes runnable here, a
    /// reschedule is requested or the CPU shuts down. The watch outlives
    /// the call (the idle loop's, if the caller now sleeps; otherwise its
    /// threads look at the rings at their critical-section exits) until a
    /// whole `idle_poll_cycles` passes with nothing found and no thread
    /// waiting here. `ready` runs in a
    /// critical section on this CPU and must not block. Where the backend
    /// does not poll (`idle_poll_cycles` is 0, as on bare metal, where
    /// waiting for an interrupt is cheap) it only checks `ready()` once.
    ///
    /// [`Arch::idle_poll_cycles`]: crate::Arch::idle_poll_cycles
    ///
    /// ```
    /// use core::sync::atomic::{AtomicBool, Ordering};
    /// use lwkt_core::{CpuId, MyCpu};
    ///
    /// static DONE: AtomicBool = AtomicBool::new(false);
    /// fn done(_: MyCpu<'_>, _: usize, _: usize) {
    ///     DONE.store(true, Ordering::Release);
    /// }
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let h = cur
    ///         .spawn_on(CpuId::new(1), |me| {
    ///             // Runs the IPI that sets DONE while it spins.
    ///             while !me.watch_until(1_000_000, || DONE.load(Ordering::Acquire)) {}
    ///         })
    ///         .unwrap();
    ///     cur.my_cpu().send_ipi(CpuId::new(1), done, 0, 0).unwrap();
    ///     cur.join(&h);
    /// });
    /// ```
    #[inline(always)]
    pub fn watch_until(&mut self, budget: u64, mut ready: impl FnMut() -> bool) -> bool {
        let td = self.td();
        crit::enter(&td.critcount);
        let gd = td.gd();
        // Someone else to run (a thread this one just woke, say): no watch,
        // and no need to ask the backend (a call through `dyn Arch`). The
        // common case of a receiver that just answered a sender of its own
        // CPU, so inline; the watch itself is out of line.
        // SAFETY: on our CPU in a critical section.
        if unsafe { gd.runq() }.len() > usize::from(td.has(tdf::RUNQ)) {
            // `ready` is the caller's: if it panics, we unwind out of the
            // critical section.
            let restore = RestoreOnUnwind(td);
            let r = ready();
            core::mem::forget(restore);
            crit_exit_td(td);
            return r;
        }
        watch_in_crit(td, gd, budget, ready)
    }

    /// Block until the thread behind `h` has exited.
    ///
    /// # Panics
    /// If `h` belongs to another machine (it could never be seen to exit).
    pub fn join(&mut self, h: &ThreadHandle) {
        self.my_cpu().check_machine(h.thread());
        let chan = h.td.as_ptr() as usize;
        self.sleep_until(chan, || h.has_exited());
    }

    /// Run `f` on every CPU in `mask` (here too, if included), in interrupt
    /// context, and return when all have finished. DragonFly:
    /// `lwkt_cpusync_simple()`.
    ///
    /// ```
    /// use core::sync::atomic::{AtomicUsize, Ordering};
    /// use lwkt_core::CpuMask;
    /// lwkt_arch_hosted::Machine::new(3).unwrap().run(|cur| {
    ///     let n = AtomicUsize::new(0);
    ///     cur.cpusync(CpuMask::all(3), &|_| { n.fetch_add(1, Ordering::Relaxed); });
    ///     assert_eq!(n.load(Ordering::Relaxed), 3);
    /// });
    /// ```
    pub fn cpusync(&mut self, mask: crate::CpuMask, f: &(dyn Fn(MyCpu<'_>) + Sync)) {
        crate::cpusync::cpusync(self.td(), mask, f);
    }
}

/// Options for a new thread. DragonFly: the arguments of `lwkt_create()`.
///
/// ```
/// use lwkt_core::{CpuId, Priority};
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let h = cur.builder().cpu(CpuId::new(1)).priority(Priority::SOFT_NORM)
///         .stack_size(32 * 1024).name("worker")
///         .spawn(|me| assert_eq!(me.name(), "worker")).unwrap();
///     cur.join(&h);
/// });
/// ```
#[derive(Debug)]
pub struct Builder<'a> {
    cur: &'a Cur,
    cpu: CpuId,
    pri: Priority,
    stack: usize,
    name: &'static str,
}

impl<'a> Builder<'a> {
    /// The thread that makes the new one (the `Cur` the builder came from),
    /// for code that takes a builder and also needs its maker.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let b = cur.builder().name("worker");
    ///     assert!(b.cur().is(&cur.handle()));
    /// });
    /// ```
    pub fn cur(&self) -> &'a Cur {
        self.cur
    }

    /// The CPU the thread lives on.
    pub fn cpu(mut self, cpu: CpuId) -> Self {
        self.cpu = cpu;
        self
    }
    /// Its priority.
    pub fn priority(mut self, pri: Priority) -> Self {
        self.pri = pri;
        self
    }
    /// Its stack size in bytes (the thread block and closure live at the top).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack = bytes;
        self
    }
    /// Its name, for reports.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Create the thread and make it runnable.
    pub fn spawn<F>(self, f: F) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send + 'static,
    {
        let gd = self.cur.td().gd();
        let td = create_thread(gd.machine(), self.cpu, self.pri, self.stack, self.name, f)?;
        // SAFETY: `create_thread` returned a live, unpublished thread.
        let t = unsafe { td.as_ref() };
        let handle = ThreadHandle::new_held(t);
        let cur_td = self.cur.td();
        crit::enter(&cur_td.critcount);
        if self.cpu == gd.id() {
            // SAFETY: on our CPU in a critical section; `t` is new and ours.
            unsafe { adopt(gd, t) };
        } else {
            t.hold(); // for the message in flight
            let msg = IpiMsg {
                func: adopt_remote,
                arg1: td.as_ptr() as usize,
                arg2: 0,
            };
            // SAFETY: on our CPU in a critical section.
            let r = unsafe { ipiq::send(gd, self.cpu, &[msg]) };
            debug_assert!(r.is_ok());
        }
        crit_exit_td(cur_td);
        Ok(handle)
    }
}

/// Allocate and lay out a thread (not yet runnable anywhere).
fn create_thread<F>(
    m: &crate::MachineState,
    cpu: CpuId,
    pri: Priority,
    stack_size: usize,
    name: &'static str,
    f: F,
) -> Result<NonNull<Thread>, SpawnError>
where
    F: FnOnce(&mut Cur) + Send,
{
    let Some(target) = m.cpu(cpu) else {
        return Err(SpawnError::NoSuchCpu {
            cpu,
            ncpus: m.ncpus,
        });
    };
    let too_small = SpawnError::StackTooSmall {
        requested: stack_size,
    };
    // The closure is stored above the stack proper, and the new thread
    // moves it onto its own frames to call it (`thread_start`): one copy
    // there, and in unoptimised builds another for the by-value call.
    // Each copy may need up to its alignment of padding.
    let copy = size_of::<F>() + align_of::<F>();
    let frames = MIN_STACK + CLOSURE_COPIES * copy;
    let need = size_of::<Thread>() + copy + 64 + frames;
    if stack_size < need {
        return Err(too_small);
    }
    let stack = m
        .arch
        .alloc_stack(stack_size)
        .ok_or(SpawnError::OutOfStacks)?;
    // Layout, top down: thread block, closure, then the stack proper.
    let top = stack.base.as_ptr() as usize + stack.len;
    let td_addr = (top - size_of::<Thread>()) & !(align_of::<Thread>().max(16) - 1);
    let f_addr = (td_addr - size_of::<F>()) & !(align_of::<F>().max(16) - 1);
    let sp_top = f_addr & !15;
    if sp_top < stack.base.as_ptr() as usize + frames {
        // SAFETY: just allocated, unused.
        unsafe { m.arch.free_stack(stack) };
        return Err(too_small);
    }
    let td_ptr = td_addr as *mut Thread;
    // SAFETY: `td_addr..top` and `f_addr..td_addr` lie inside the fresh
    // stack, suitably aligned and unused.
    unsafe {
        td_ptr.write(Thread::new(
            m.arch,
            m.id,
            target,
            cpu,
            pri,
            Some(stack),
            name,
        ));
        (f_addr as *mut F).write(f);
    }
    // SAFETY: just written.
    let td = unsafe { &*td_ptr };
    td.closure.set(f_addr as *mut u8);
    let inner = Stack {
        base: stack.base,
        len: sp_top - stack.base.as_ptr() as usize,
    };
    // SAFETY: `inner` belongs to the new thread and nothing runs on it.
    unsafe {
        m.arch
            .init_context(&td.ctx, inner, thread_start::<F>, td_addr)
    };
    // SAFETY: non-null (derived from a stack address).
    Ok(unsafe { NonNull::new_unchecked(td_ptr) })
}

impl Cpu {
    /// Create a thread on this CPU before the CPU starts (boot threads; the
    /// hosted backend's main thread). `F` need not be `'static`.
    ///
    /// # Safety
    /// - this CPU has not entered [`idle_loop`](Cpu::idle_loop) yet and no
    ///   other code touches it meanwhile;
    /// - whatever `f` borrows outlives the machine (every CPU has left its
    ///   idle loop before the borrowed data goes away).
    pub unsafe fn spawn_boot_thread<F>(
        &self,
        pri: Priority,
        stack_size: usize,
        name: &'static str,
        f: F,
    ) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send,
    {
        let td = create_thread(self.machine(), self.id(), pri, stack_size, name, f)?;
        // SAFETY: just created.
        let t = unsafe { td.as_ref() };
        let h = ThreadHandle::new_held(t);
        // SAFETY: the CPU is not running (caller), so nothing else touches its queues.
        unsafe { adopt(self, t) };
        Ok(h)
    }
}

/// A new thread arrives on its CPU: count it and make it runnable.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a new thread of `gd`.
unsafe fn adopt(gd: &Cpu, td: &Thread) {
    gd.live_threads.fetch_add(1, Ordering::Relaxed);
    gd.stats.threads_created.add(1);
    // SAFETY: forwarded.
    unsafe { schedule_local(gd, td) };
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

fn adopt_remote(my: MyCpu<'_>, td: usize, _: usize) {
    // SAFETY: `td` was held for this message by `spawn`; IPI functions run
    // on their CPU in a critical section.
    unsafe {
        let t = NonNull::new_unchecked(td as *mut Thread);
        adopt(my.cpu(), t.as_ref());
        Thread::release(t);
    }
}

/// The first code a new thread runs. DragonFly: the `lwkt_create` trampoline.
extern "C" fn thread_start<F: FnOnce(&mut Cur)>(arg: usize) -> ! {
    let td_ptr = arg as *mut Thread;
    // SAFETY: `arg` is the thread block `spawn` wrote; the thread is running.
    let td = unsafe { &*td_ptr };
    // SAFETY: we were just switched to, on our CPU, in a critical section.
    unsafe { finish_switch(td.gd()) };
    crit_exit_td(td); // new threads start inside a critical section
    let mut cur = Cur {
        td: NonNull::from(td),
        _not_send: PhantomData,
    };
    let f = td.closure.get() as *mut F;
    crate::abort_on_unwind("a thread body", || {
        // SAFETY: `spawn` wrote an `F` there and nothing else reads it.
        let f = unsafe { ptr::read(f) };
        f(&mut cur)
    });
    exit_current(td)
}

/// End the running thread. DragonFly: `lwkt_exit()`.
fn exit_current(td: &Thread) -> ! {
    crit::enter(&td.critcount);
    assert!(!td.has(tdf::EXITING), "lwkt: thread exited twice");
    let gd = td.gd();
    td.set(tdf::EXITING);
    debug_assert!(td.toks.is_empty(), "lwkt: thread exits holding tokens");
    // SAFETY: on our CPU in a critical section.
    unsafe {
        if td.has(tdf::TSLEEPQ) {
            sleep::unqueue(gd, td);
        }
        dequeue(gd, td);
    }
    gd.live_threads.fetch_sub(1, Ordering::Relaxed);
    gd.stats.threads_exited.add(1);
    // Off the run queue, so the switch below happens; the next thread
    // finds us in `prev` and releases our own hold once we are off the CPU.
    gd.prev.set(td as *const Thread as *mut Thread);
    // SAFETY: we are the running thread.
    unsafe { switch_from(td) };
    unreachable!("lwkt: an exited thread was switched to")
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
unsafe fn schedule_any(gd: &Cpu, td: &Thread) {
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
unsafe fn schedule_elsewhere(gd: &Cpu, td: &Thread, owner: *mut Cpu) {
    // SAFETY: forwarded.
    unsafe { send_to_owner(gd, td, owner, schedule_remote) };
}

/// Send `func(td)` to `td`'s CPU `owner` by IPI, with a hold on `td` that
/// `func` releases.
///
/// # Safety
/// On `gd`, in a critical section; `owner` is a CPU of `gd`'s machine.
unsafe fn send_to_owner(gd: &Cpu, td: &Thread, owner: *mut Cpu, func: IpiFn) {
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

fn schedule_remote(my: MyCpu<'_>, td: usize, _: usize) {
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
unsafe fn deschedule_any(gd: &Cpu, td: &Thread) {
    let owner = td.gd.load(Ordering::Acquire);
    if ptr::eq(owner, gd) {
        // SAFETY: forwarded.
        unsafe { dequeue(gd, td) };
    } else {
        // SAFETY: forwarded; `owner` is a CPU of this machine.
        unsafe { send_to_owner(gd, td, owner, deschedule_remote) };
    }
}

fn deschedule_remote(my: MyCpu<'_>, td: usize, _: usize) {
    // SAFETY: as in `schedule_remote`.
    unsafe {
        let t = NonNull::new_unchecked(td as *mut Thread);
        deschedule_any(my.cpu(), t.as_ref());
        Thread::release(t);
    }
}

fn wakeup_remote(my: MyCpu<'_>, chan: usize, _: usize) {
    // SAFETY: IPI functions run on their CPU in a critical section.
    unsafe { sleep::wakeup_local(my.cpu(), chan) };
}

fn setcpu_remote(my: MyCpu<'_>, td: usize, _: usize) {
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

/// The core of `lwkt_switch`: run the best thread of this CPU whose tokens
/// can all be had. Returns whether it switched.
///
/// The caller's tokens are released first (a thread holds tokens only while
/// it runs); each candidate, in run order, gets all of its tokens or is
/// skipped (it stays at its place in the queue, so it is tried first again
/// next time and is not starved by the threads that run meanwhile). If
/// nothing can run, the idle thread runs and retries.
///
/// # Safety
/// `td` is the running thread.
pub(crate) unsafe fn switch_from(td: &Thread) -> bool {
    crit::enter(&td.critcount);
    let gd = td.gd();
    // SAFETY: forwarded; in a critical section on `td`'s CPU.
    let switched = unsafe { switch_in_crit::<true>(td, gd, gd.runq().first()) };
    crit_exit_td(td);
    switched
}

/// [`switch_from`] for a caller already in a critical section on `gd`, the
/// running thread's CPU, which passes the run queue's first thread; returns
/// in it (on `td`'s CPU then, which a migration may have changed).
///
/// The common case is inline and straight: no token to release, and the
/// first thread of the run queue holds none. Everything else (tokens to
/// release or re-acquire, a candidate skipped) is out of line.
///
/// # Safety
/// `td` is the running thread, `gd` its CPU, inside a critical section.
#[inline(always)]
unsafe fn switch_in_crit<const CLEAR_RESCHED: bool>(
    td: &Thread,
    gd: &Cpu,
    first: *mut Thread,
) -> bool {
    debug_assert!(td.critcount.load(Ordering::Relaxed) > 0);
    // SAFETY: on our CPU in a critical section.
    debug_assert!(first == unsafe { gd.runq() }.first());
    if gd.intr_nesting.get() != 0 {
        switch_in_interrupt();
    }
    // SAFETY: queued threads are live; `first` is not running (or is `td`).
    let ntd: &Thread =
        if !first.is_null() && unsafe { (*first).toks.is_empty() } && td.toks.is_empty() {
            // SAFETY: as above.
            unsafe { &*first }
        } else {
            // SAFETY: forwarded.
            unsafe { pick_with_tokens(td, gd, first) }
        };
    if ptr::eq(ntd, td) {
        debug_assert!(td.toks.all_held() || td.has(tdf::IDLE));
        return false;
    }
    // Only this CPU queues threads on its run queue, and only its own
    // (`schedule_local`); a migrating thread leaves the queue before it
    // changes owner.
    debug_assert!(
        ptr::eq(ntd.gd.load(Ordering::Relaxed), gd),
        "lwkt: CPU {} was about to run a thread of another CPU",
        gd.id().get()
    );
    gd.curthread
        .store(ntd as *const Thread as *mut Thread, Ordering::Relaxed);
    // The reschedule request is served by this switch. `yield_now` checks
    // the flags before it switches and clears the request itself.
    if CLEAR_RESCHED && gd.reqflags.load(Ordering::Relaxed) & crit::rqf::RESCHED != 0 {
        gd.reqflags
            .fetch_and(!crit::rqf::RESCHED, Ordering::Relaxed);
    }
    gd.stats.switches.add(1);
    ntd.switches.set(ntd.switches.get() + 1);
    // SAFETY: `machine` was set by `bind` before this CPU ran anything, and
    // the machine outlives its CPUs' threads (`MachineState::bind` contract).
    let arch = unsafe { &*gd.machine.get() }.arch;
    // SAFETY: inside a critical section; `ntd.ctx` was saved by `switch`
    // or prepared by `init_context`.
    unsafe { arch.switch(&td.ctx, &ntd.ctx) };
    // Running again (perhaps on another CPU after a migration), with all
    // our tokens: whoever switched to us acquired them.
    // SAFETY: just switched to, in a critical section.
    unsafe { finish_switch(td.gd()) };
    debug_assert!(td.toks.all_held() || td.has(tdf::IDLE));
    true
}

#[cold]
#[inline(never)]
fn switch_in_interrupt() -> ! {
    panic!("lwkt: switch from interrupt or IPI context")
}

/// The general choice of the next thread: release the running thread's
/// tokens, then take the first queued thread whose tokens can all be
/// acquired (DragonFly `lwkt_getalltokens`), or the idle thread.
///
/// # Safety
/// As for [`switch_in_crit`]; `first` is the run queue's first thread.
#[cold]
#[inline(never)]
unsafe fn pick_with_tokens<'a>(td: &'a Thread, gd: &'a Cpu, first: *mut Thread) -> &'a Thread {
    if !td.toks.is_empty() {
        // SAFETY: our own stack, on our CPU.
        unsafe { td.toks.release_all() };
    }
    // SAFETY: on our CPU in a critical section.
    let rq = unsafe { gd.runq() };
    let mut next = first;
    loop {
        if next.is_null() {
            return &gd.idle;
        }
        // SAFETY: queued threads are live.
        let cand = unsafe { &*next };
        // SAFETY: `cand` is not running (or is `td`, whose tokens we just
        // released); its stack is touched only by this CPU.
        if cand.toks.is_empty() || unsafe { cand.toks.acquire_all() } {
            return cand;
        }
        next = rq.after(cand);
    }
}

/// After a switch, on the thread switched to: finish what the previous
/// thread could not do while still on its stack. DragonFly:
/// `lwkt_switch_return()`.
///
/// # Safety
/// On `gd`, right after a switch, in a critical section.
#[inline(always)]
unsafe fn finish_switch(gd: &Cpu) {
    if cfg!(debug_assertions) {
        if let Some(c) = gd.machine().arch.current_cpu() {
            assert!(
                ptr::eq(c.as_ptr(), gd),
                "lwkt: thread '{}' of CPU {} runs on another CPU",
                gd.cur().name,
                gd.id().get()
            );
        }
    }
    // Set only by a thread that exits or migrates, just before it switches.
    let prev = gd.prev.get();
    if !prev.is_null() {
        // SAFETY: forwarded.
        unsafe { finish_switch_slow(gd, prev) };
    }
}

/// The previous thread exited or is migrating: hand it on.
///
/// # Safety
/// As for [`finish_switch`]; `prev` is the thread that switched to us.
#[cold]
#[inline(never)]
unsafe fn finish_switch_slow(gd: &Cpu, prev: *mut Thread) {
    gd.prev.set(ptr::null_mut());
    // SAFETY: the previous thread is held (by itself) until we release it.
    let p = unsafe { &*prev };
    debug_assert!(p.has(tdf::EXITING | tdf::MIGRATING));
    if p.has(tdf::EXITING) {
        p.mpflags.fetch_or(MPF_EXITED, Ordering::Release);
        let chan = prev as usize;
        MyCpu::new(gd).wakeup(chan);
        // SAFETY: the thread's own hold; it is off the CPU for good.
        unsafe { Thread::release(NonNull::new_unchecked(prev)) };
    } else {
        let target = p.migrate_to.get();
        // SAFETY: `target` is a CPU of this machine (checked by `migrate`).
        let tid = unsafe { (*target).id() };
        p.cpuid.store(tid.get(), Ordering::Relaxed);
        p.gd.store(target as *mut Cpu, Ordering::Release);
        // SAFETY: on `gd` in a critical section.
        let r = unsafe {
            ipiq::send(
                gd,
                tid,
                &[IpiMsg {
                    func: setcpu_remote,
                    arg1: prev as usize,
                    arg2: 0,
                }],
            )
        };
        debug_assert!(r.is_ok());
    }
}

impl Cpu {
    /// The CPU's idle loop: the backend calls it on each CPU's boot context,
    /// which becomes that CPU's idle thread. It runs threads and IPIs, and
    /// waits in [`Arch::idle_wait`](crate::Arch::idle_wait) when there is
    /// nothing to do; it returns after [`request_shutdown`](Cpu::request_shutdown)
    /// once no thread is runnable and no message is queued.
    /// DragonFly: `cpu_idle()`.
    ///
    /// # Safety
    /// Called once per CPU, on that CPU (so that the backend's
    /// `current_cpu` names it), after [`MachineState::bind`](crate::MachineState::bind).
    pub unsafe fn idle_loop(&self) {
        let idle = &self.idle;
        let arch = self.machine().arch;
        idle.critcount.store(1, Ordering::Relaxed);
        self.curthread
            .store(idle as *const Thread as *mut Thread, Ordering::Relaxed);
        let mut contended = 0u32;
        let mut poll_cycles = 0u64;
        let mut poll_start = 0u64;
        loop {
            // SAFETY: on this CPU, in the idle thread's critical section.
            unsafe { splz(self) };
            // SAFETY: as above.
            if unsafe { self.runq() }.len() != 0 {
                if self.watching.get() {
                    // The watch goes on while threads run: they look at
                    // the rings at their critical-section exits, and the
                    // backend interrupts one that leaves them unread
                    // (`watch_backlog`). Give them a whole window before it
                    // expires.
                    self.watch_seen.set(arch.cycles());
                }
                // SAFETY: the idle thread is running.
                if unsafe { switch_from(idle) } {
                    contended = 0;
                    poll_start = arch.cycles();
                } else {
                    // Runnable threads, but none can have its tokens yet:
                    // tokens are polled, so try again shortly.
                    arch.pause(contended);
                    contended = contended.wrapping_add(1);
                }
                continue;
            }
            if self.shutdown.load(Ordering::SeqCst) && self.ipimask.load(Ordering::SeqCst) == 0 {
                if self.watching.get() {
                    self.end_watch();
                    continue;
                }
                break;
            }
            if !self.watching.get() {
                // Asked anew before each watch: the backend's answer may
                // change while the machine runs (the hosted backend's is 0
                // while vCPUs outnumber host cores).
                poll_cycles = arch.idle_poll_cycles();
            }
            if poll_cycles != 0 {
                // Watch the rings for a while; senders see `npoll` set and
                // do not kick.
                if !self.watching.get() {
                    self.begin_watch();
                    poll_start = arch.cycles();
                }
                if self.watch_sees_work() {
                    continue;
                }
                if arch.cycles().wrapping_sub(poll_start) < poll_cycles {
                    core::hint::spin_loop();
                    continue;
                }
            }
            // About to wait: end the watch, clear the kick interlock, look
            // once more (loom model `idle_wait_loses_no_kick`).
            let settled = self.doorbell().settle_for_wait(
                self.watching.get(),
                || {
                    self.drain_after_watch();
                    // SAFETY: as above.
                    unsafe { self.runq() }.len() != 0
                },
                || self.has_pending(),
            );
            if settled.answered {
                self.stats.kicks_answered.add(1);
            }
            if !settled.wait {
                continue;
            }
            // SAFETY: our idle loop, on this CPU of a bound, running
            // machine, inside a critical section.
            unsafe { arch.idle_wait(self) };
        }
        // SAFETY: on this CPU, in the idle thread's critical section, for good.
        unsafe { crate::timer::retire(self) };
        idle.critcount.store(0, Ordering::Relaxed);
    }

    /// Start watching the rings (see
    /// [`Arch::idle_poll_cycles`](crate::Arch::idle_poll_cycles)): from now
    /// on senders neither mark nor kick, and this CPU looks at every ring
    /// in its idle loop, in [`Cur::watch_until`] and at every final
    /// `crit_exit` of its threads, until the watch ends: when the idle loop
    /// is about to wait, or after `idle_poll_cycles` in which no look found
    /// work. Runs on this CPU in a critical section.
    fn begin_watch(&self) {
        self.watching.set(true);
        self.watch_seen.set(self.machine().arch.cycles());
        self.reqflags.fetch_or(crit::rqf::WATCH, Ordering::Relaxed);
        self.doorbell().begin_watch();
    }

    /// End the watch and run what senders queued without marking it; from
    /// now on they mark and kick. Runs on this CPU in a critical section.
    fn end_watch(&self) {
        self.doorbell().end_watch();
        self.drain_after_watch();
    }

    /// The watch has ended (`npoll` cleared): leave watching mode and run
    /// every ring once. Runs on this CPU in a critical section.
    fn drain_after_watch(&self) {
        self.watching.set(false);
        self.reqflags
            .fetch_and(!crit::rqf::WATCH, Ordering::Relaxed);
        // SAFETY: on this CPU, in a critical section.
        unsafe { ipiq::process_with(self, true) };
    }

    /// `splz`, then the watch's bookkeeping: note when a look found work,
    /// and end a watch that has found none for `idle_poll_cycles`.
    ///
    /// # Safety
    /// On this CPU, in a critical section.
    unsafe fn splz_watched(&self) {
        let before = self.stats.ipis_received.get();
        // SAFETY: forwarded.
        unsafe { splz(self) };
        if self.watching.get() {
            let arch = self.machine().arch;
            let now = arch.cycles();
            if self.stats.ipis_received.get() != before {
                self.watch_seen.set(now);
            } else if now.wrapping_sub(self.watch_seen.get()) > arch.idle_poll_cycles() {
                self.end_watch();
            }
        }
    }

    /// Interrupt entry for the IPI vector: the backend calls it on this CPU
    /// when a kick arrives. Inside a critical section (or nested interrupt
    /// processing) the work is only recorded and runs at the final
    /// `crit_exit`; otherwise the queued messages run now.
    /// DragonFly: `Xipiq`.
    ///
    /// # Safety
    /// Called on this CPU, from its interrupt (or signal) context, with the
    /// interrupted code's registers preserved by the backend.
    pub unsafe fn ipi_interrupt(&self) {
        let work = |gd: &Cpu| {
            // SAFETY: `interrupt_entry` runs us on this CPU inside a
            // critical section.
            unsafe { splz(gd) }
        };
        // SAFETY: forwarded.
        unsafe { self.interrupt_entry(work) };
    }

    /// The IPI vector's entry, around `work`: outside a critical section
    /// (and nested processing) run `work` in one, left without a
    /// `crit_exit` (whose slow path would process again: anything that
    /// arrives meanwhile sets a request bit, for the interrupted thread's
    /// next exit); inside one, only record the interrupt.
    ///
    /// # Safety
    /// As for [`ipi_interrupt`](Cpu::ipi_interrupt); `work` runs on this
    /// CPU inside a critical section.
    #[inline(always)]
    unsafe fn interrupt_entry(&self, work: impl FnOnce(&Cpu)) {
        let cur = self.curthread.load(Ordering::Relaxed);
        if cur.is_null() {
            return;
        }
        // SAFETY: `curthread` names the live running thread.
        let td = unsafe { &*cur };
        if !crit::interrupt_arrives(
            &td.critcount,
            self.intr_nesting.get(),
            &self.reqflags,
            crit::rqf::IPIQ,
        ) {
            return;
        }
        crit::enter(&td.critcount);
        work(self);
        let c = td.critcount.load(Ordering::Relaxed);
        td.critcount.store(c - 1, Ordering::Relaxed);
        crate::sync::signal_fence();
    }

    /// Interrupt entry for a backend whose interrupt may land anywhere in
    /// the host's code, as a signal handler does: inside the C library's
    /// `malloc`, holding its lock, or half way through a thread-local
    /// allocator's update. It runs only lwkt-core's own IPI functions
    /// (scheduling, wake-ups, thread placement), which touch nothing the
    /// interrupted code can hold; the first user function in a ring (a
    /// `send_ipi` function, `cpusync`'s, lwkt-msg's port functions) and
    /// everything after it wait for the CPU's next critical-section exit,
    /// switch or idle loop, which this entry asks for. So an ordinary IPI
    /// function may allocate on the hosted backend. Inside a critical
    /// section it only records the interrupt, as
    /// [`ipi_interrupt`](Cpu::ipi_interrupt) does.
    ///
    /// # Safety
    /// As for [`ipi_interrupt`](Cpu::ipi_interrupt).
    pub unsafe fn ipi_interrupt_async_safe(&self) {
        let work = |gd: &Cpu| {
            gd.async_entry.set(true);
            // SAFETY: `interrupt_entry` runs us on this CPU inside a
            // critical section.
            if unsafe { ipiq::process_own(gd) } {
                // The interrupted thread's next critical-section exit (or
                // switch) runs the rest.
                gd.reqflags.fetch_or(crit::rqf::IPIQ, Ordering::Relaxed);
            }
            gd.async_entry.set(false);
        };
        // SAFETY: forwarded.
        unsafe { self.interrupt_entry(work) };
    }
}
