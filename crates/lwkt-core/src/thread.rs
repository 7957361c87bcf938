//! Threads: the `struct thread` of DragonFly, always owned by one CPU.
//!
//! DragonFly: `struct thread`, `td_gd`, `td_pri`, `td_flags`, `lwkt_hold()`.
//!
//! A thread's `Thread` block lives at the top of its own stack, so creating
//! a thread takes one allocation from the backend (its stack) and nothing
//! else. Fields marked "owner" are touched only by code running on the
//! thread's CPU inside a critical section; the rest are atomics.

use core::cell::Cell;
use core::fmt;
use core::ptr::{self, NonNull};
use crossbeam_utils::CachePadded;

use crate::arch::{Arch, Context, Stack};
use crate::cpu::{Cpu, CpuId};
use crate::sync::{AtomicPtr, AtomicU32, Ordering};

/// A fixed thread priority, 0 (idle) to 31 (highest). Threads of equal
/// priority run round-robin; a higher priority always runs first.
///
/// DragonFly: `td_pri` and the `TDPRI_*` constants.
///
/// ```
/// use lwkt_core::Priority;
/// assert!(Priority::SOFT_NORM > Priority::KERN_DAEMON);
/// assert_eq!(Priority::new(40), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub(crate) u8);

impl Priority {
    /// Lowest priority a thread may have (`TDPRI_IDLE_WORK`).
    pub const IDLE_WORK: Priority = Priority(1);
    /// A user thread (`TDPRI_USER_NORM`).
    pub const USER_NORM: Priority = Priority(6);
    /// Default for kernel threads (`TDPRI_KERN_DAEMON`).
    pub const KERN_DAEMON: Priority = Priority(12);
    /// Software interrupts and protocol threads (`TDPRI_SOFT_NORM`).
    pub const SOFT_NORM: Priority = Priority(14);
    /// Interrupt support threads (`TDPRI_INT_SUPPORT`).
    pub const INT_SUPPORT: Priority = Priority(20);
    /// Low-priority interrupt threads (`TDPRI_INT_LOW`).
    pub const INT_LOW: Priority = Priority(27);
    /// Interrupt threads (`TDPRI_INT_MED`): above every other kind, so
    /// they preempt what they interrupt.
    pub const INT_MED: Priority = Priority(28);
    /// High-priority interrupt threads (`TDPRI_INT_HIGH`).
    pub const INT_HIGH: Priority = Priority(29);
    /// Highest priority (`TDPRI_MAX`).
    pub const MAX: Priority = Priority(31);

    /// `Some` for 0..=31.
    pub const fn new(p: u8) -> Option<Priority> {
        if p <= 31 {
            Some(Priority(p))
        } else {
            None
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::KERN_DAEMON
    }
}

/// Owner-CPU thread flags (DragonFly `TDF_*`).
pub(crate) mod tdf {
    /// On its CPU's run queue (`TDF_RUNQ`); a running thread stays queued.
    pub(crate) const RUNQ: u32 = 0x1;
    /// Being moved to another CPU (`TDF_MIGRATING`): never enqueued meanwhile.
    pub(crate) const MIGRATING: u32 = 0x2;
    /// Has finished (`TDF_EXITING`).
    pub(crate) const EXITING: u32 = 0x4;
    /// On a sleep queue (`TDF_TSLEEPQ`).
    pub(crate) const TSLEEPQ: u32 = 0x8;
    /// The CPU's idle thread.
    pub(crate) const IDLE: u32 = 0x10;
    /// May be preempted from any interrupt frame outside its critical
    /// sections (`Builder::async_preemptible`).
    pub(crate) const ASYNC_PREEMPT: u32 = 0x20;
    /// Preempted by a higher-priority thread (`intr::preempt`) and not yet
    /// resumed (DragonFly: `td_preempted` of the preempting thread). It
    /// kept its tokens, and its token stack may be in the middle of an
    /// operation (preemption from an interrupt frame stops it at any
    /// instruction): the switch back to it touches neither.
    pub(crate) const PREEMPTED: u32 = 0x40;
    /// Its final `crit_exit` is being made from an interrupt frame
    /// (`Cpu::preempt_from_interrupt`), which may have stopped it in the
    /// middle of a token operation: it may be preempted (it keeps its
    /// tokens, `PREEMPTED`), but a round-robin, which releases them, waits
    /// for its next final `crit_exit` in thread context if it holds any.
    pub(crate) const IN_FRAME: u32 = 0x80;
}

/// Why a thread could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The CPU does not exist on this machine.
    NoSuchCpu {
        /// The CPU asked for.
        cpu: CpuId,
        /// How many CPUs the machine has.
        ncpus: usize,
    },
    /// The backend had no stack of the requested size.
    OutOfStacks,
    /// The stack is too small for the thread block, the closure and a
    /// minimal stack ([`MIN_STACK`](crate::MIN_STACK) bytes).
    StackTooSmall {
        /// The stack size asked for.
        requested: usize,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoSuchCpu { cpu, ncpus } => write!(
                f,
                "lwkt: cannot create a thread on CPU {} (this machine has CPUs 0..{})",
                cpu.get(),
                ncpus
            ),
            SpawnError::OutOfStacks => f.write_str("lwkt: the backend has no stack left"),
            SpawnError::StackTooSmall { requested } => write!(
                f,
                "lwkt: a {requested}-byte stack cannot hold the thread block, its closure and {} bytes of stack",
                crate::MIN_STACK
            ),
        }
    }
}

/// The thread block. Users see it only through [`Cur`](crate::Cur) and
/// [`ThreadHandle`].
///
/// Laid out in two cache lines' worth of groups: what other CPUs read to
/// route work to the thread (and the hold count they change), then, from a
/// new line on, what its own CPU writes on every critical section and
/// switch. Mixed, every put to a thread's port from another CPU (which
/// reads `cpuid`) took away the line holding `critcount`, and the owner
/// paid a transfer at its next `crit_enter`.
#[repr(C)]
pub(crate) struct Thread {
    // ---- read by other CPUs; written rarely ----
    /// Owning CPU (`td_gd`). Written by the owner, or at migration by the
    /// CPU handing the thread over; read by anyone to route IPIs.
    pub(crate) gd: AtomicPtr<Cpu>,
    /// The owning CPU's number, readable after the machine is gone.
    pub(crate) cpuid: AtomicU32,
    /// Foreign-visible state: `EXITED` once the thread is off its CPU for good.
    pub(crate) mpflags: AtomicU32,
    /// Hold count (`td_refs`): the thread itself while it lives, each
    /// [`ThreadHandle`], each IPI in flight that names it. The stack (and
    /// this block within it) is freed when it reaches zero.
    pub(crate) refs: AtomicU32,
    /// Which machine the thread belongs to, to catch handles used across machines.
    pub(crate) machine_id: u64,
    pub(crate) name: &'static str,
    /// Backend that gave the stack; outlives every machine.
    pub(crate) arch: &'static dyn Arch,
    /// The stack this block lives in (`None` for idle threads, whose stack
    /// the backend owns).
    pub(crate) stack: Option<Stack>,
    /// Starts the owner's group on a line of its own.
    _owner_line: CachePadded<()>,
    // ---- the owner's ----
    /// Critical-section depth (`td_critcount`); see [`crate::crit`].
    pub(crate) critcount: AtomicU32,
    /// Owner: `TDF_*`.
    pub(crate) flags: Cell<u32>,
    /// Owner: priority (`td_pri`).
    pub(crate) pri: Cell<Priority>,
    /// Owner: run-queue links (`td_threadq`).
    pub(crate) rq_next: Cell<*mut Thread>,
    pub(crate) rq_prev: Cell<*mut Thread>,
    /// Owner: sleep-queue links and channel (`td_sleepq`, `td_wchan`).
    pub(crate) sl_next: Cell<*mut Thread>,
    pub(crate) sl_prev: Cell<*mut Thread>,
    pub(crate) wchan: Cell<usize>,
    /// Owner: pending migration target (`td_migrate_gd`).
    pub(crate) migrate_to: Cell<*const Cpu>,
    /// Saved registers while not running.
    pub(crate) ctx: Context,
    /// Where the closure waits for its first run.
    pub(crate) closure: Cell<*mut u8>,
    /// Owner: times this thread was switched to.
    pub(crate) switches: Cell<u64>,
    /// The tokens this thread holds while it runs (`td_toks_array`).
    pub(crate) toks: lwkt_token::TokenStack,
    /// The interrupt lines of its CPU whose thread it is (owner-only).
    pub(crate) irqs: Cell<u64>,
}

/// `mpflags` bit: the thread has exited and is off its CPU.
pub(crate) const MPF_EXITED: u32 = 0x1;

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("name", &self.name)
            .field("gd", &self.gd.load(Ordering::Relaxed))
            .field("refs", &self.refs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Thread {
    pub(crate) fn new(
        arch: &'static dyn Arch,
        machine_id: u64,
        gd: *const Cpu,
        cpuid: CpuId,
        pri: Priority,
        stack: Option<Stack>,
        name: &'static str,
    ) -> Thread {
        Thread {
            gd: AtomicPtr::new(gd as *mut Cpu),
            cpuid: AtomicU32::new(cpuid.get()),
            critcount: AtomicU32::new(1),
            flags: Cell::new(0),
            mpflags: AtomicU32::new(0),
            pri: Cell::new(pri),
            rq_next: Cell::new(ptr::null_mut()),
            rq_prev: Cell::new(ptr::null_mut()),
            sl_next: Cell::new(ptr::null_mut()),
            sl_prev: Cell::new(ptr::null_mut()),
            wchan: Cell::new(0),
            migrate_to: Cell::new(ptr::null()),
            ctx: Context::new(),
            refs: AtomicU32::new(1),
            stack,
            arch,
            machine_id,
            closure: Cell::new(ptr::null_mut()),
            switches: Cell::new(0),
            toks: lwkt_token::TokenStack::new(),
            irqs: Cell::new(0),
            name,
            _owner_line: CachePadded::new(()),
        }
    }

    /// The owning CPU.
    #[inline(always)]
    pub(crate) fn gd(&self) -> &Cpu {
        // SAFETY: `gd` always points at a live `Cpu` of this thread's machine
        // while the thread is alive and the machine runs (the backend keeps
        // its CPU blocks alive until every CPU has stopped).
        unsafe { &*self.gd.load(Ordering::Acquire) }
    }

    /// Owner: test a flag.
    #[inline(always)]
    pub(crate) fn has(&self, f: u32) -> bool {
        self.flags.get() & f != 0
    }

    #[inline(always)]
    pub(crate) fn set(&self, f: u32) {
        self.flags.set(self.flags.get() | f);
    }

    #[inline(always)]
    pub(crate) fn clear(&self, f: u32) {
        self.flags.set(self.flags.get() & !f);
    }

    /// Take a hold (`lwkt_hold`).
    pub(crate) fn hold(&self) {
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        assert!(
            old != 0 && old < u32::MAX / 2,
            "lwkt: hold on a freed thread"
        );
    }

    /// Drop a hold (`lwkt_rele`); frees the stack (and this block) on the last.
    ///
    /// # Safety
    /// `td` is live and the caller owns one hold, which it gives up.
    pub(crate) unsafe fn release(td: NonNull<Thread>) {
        // SAFETY: the caller's hold keeps the block alive until the decrement.
        let t = unsafe { td.as_ref() };
        if t.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        crate::sync::fence_seqcst();
        let arch = t.arch;
        if let Some(stack) = t.stack {
            // SAFETY: the count reached zero, so nothing else refers to the
            // thread; it has exited (the running thread owns a hold until it
            // is off its CPU), so nothing runs on the stack.
            unsafe {
                ptr::drop_in_place(td.as_ptr());
                arch.free_stack(stack);
            }
        }
    }
}

/// A counted reference to a thread, to schedule, deschedule or join it from
/// anywhere. Dropping the last reference to an exited thread frees its stack.
///
/// DragonFly: a `thread_t` with `lwkt_hold()`/`lwkt_rele()`.
///
/// ```
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let h = cur.spawn_on(lwkt_core::CpuId::new(1), |_| {}).unwrap();
///     cur.join(&h);
///     assert!(h.has_exited());
/// });
/// ```
pub struct ThreadHandle {
    pub(crate) td: NonNull<Thread>,
}

// SAFETY: a handle only owns a hold; every operation through it either reads
// atomics or is routed to the owning CPU by IPI.
unsafe impl Send for ThreadHandle {}
// SAFETY: as above; `&ThreadHandle` gives no access to owner-only fields.
unsafe impl Sync for ThreadHandle {}

impl ThreadHandle {
    /// Wrap a thread pointer, taking a new hold.
    pub(crate) fn new_held(td: &Thread) -> ThreadHandle {
        td.hold();
        ThreadHandle {
            td: NonNull::from(td),
        }
    }

    #[inline(always)]
    pub(crate) fn thread(&self) -> &Thread {
        // SAFETY: our hold keeps the block alive.
        unsafe { self.td.as_ref() }
    }

    /// True once the thread has finished and left its CPU.
    #[inline]
    pub fn has_exited(&self) -> bool {
        self.thread().mpflags.load(Ordering::Acquire) & MPF_EXITED != 0
    }

    /// The CPU that owns the thread now (it may change by migration).
    pub fn cpu(&self) -> CpuId {
        CpuId::new(self.thread().cpuid.load(Ordering::Relaxed))
    }

    /// The name given at creation.
    pub fn name(&self) -> &'static str {
        self.thread().name
    }

    /// Whether the thread belongs to the machine `my` is a CPU of. A
    /// handle kept past its machine, or carried to another one, answers
    /// `false` (machines are numbered once per process).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let h = cur.handle();
    ///     assert!(h.is_of_machine(cur.my_cpu()));
    /// });
    /// ```
    #[inline]
    pub fn is_of_machine(&self, my: crate::MyCpu<'_>) -> bool {
        self.thread().machine_id == my.machine_id()
    }

    /// Whether the thread lives on `my`'s CPU now: same machine, same CPU.
    /// A `true` stays true until `my`'s CPU lets the thread run or leaves
    /// its critical section (only the thread itself, running there, can
    /// move away). A `false` can turn true meanwhile: the CPU handing a
    /// migrating thread over publishes it (with Release, read here with
    /// Acquire), so what the old CPU did with the thread happens before.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let h = cur.handle();
    ///     assert!(h.is_local(cur.my_cpu()));
    ///     cur.migrate(lwkt_core::CpuId::new(1)).unwrap();
    ///     assert!(h.is_local(cur.my_cpu()));
    /// });
    /// ```
    #[inline]
    pub fn is_local(&self, my: crate::MyCpu<'_>) -> bool {
        self.is_of_machine(my)
            && ptr::eq(
                self.thread().gd.load(Ordering::Acquire),
                my.cpu() as *const Cpu,
            )
    }
}

/// A thread's name for a wake-up made on its own CPU while it waits,
/// without a count and without a sleep queue: what a thread that blocks
/// ([`Cur::block`](crate::Cur::block)) until a known party wakes it leaves
/// with that party ([`MyCpu::unpark`](crate::MyCpu::unpark)). lwkt-msg's
/// same-CPU `domsg` keeps one in the message while its sender waits. It is
/// only the thread block's address (a pointer, so its provenance travels
/// with it): making, copying and storing one is safe; waking with one is
/// `unsafe`, since the token does not keep its thread alive.
///
/// Not in DragonFly, whose `lwkt_domsg` sleeps on the message's address
/// (`tsleep`) and is woken by a `wakeup` of it.
///
/// ```
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let t: lwkt_core::ParkToken = cur.park_token();
///     assert_eq!(t, cur.park_token());
/// });
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ParkToken(NonNull<Thread>);

// SAFETY: an address only; it gives no access to the thread by itself
// (`MyCpu::unpark`, the one use, is `unsafe` and checks machine and CPU).
unsafe impl Send for ParkToken {}
// SAFETY: as above.
unsafe impl Sync for ParkToken {}

impl ParkToken {
    /// The token of `td`.
    #[inline(always)]
    pub(crate) fn of(td: &Thread) -> ParkToken {
        ParkToken(NonNull::from(td))
    }

    /// The thread block the token names.
    ///
    /// # Safety
    /// The block is still alive.
    #[inline(always)]
    pub(crate) unsafe fn thread<'a>(self) -> &'a Thread {
        // SAFETY: caller: a live block.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for ThreadHandle {
    fn clone(&self) -> Self {
        ThreadHandle::new_held(self.thread())
    }
}

impl Drop for ThreadHandle {
    fn drop(&mut self) {
        // SAFETY: we own one hold and give it up.
        unsafe { Thread::release(self.td) }
    }
}

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHandle")
            .field("name", &self.name())
            .field("exited", &self.has_exited())
            .finish()
    }
}
