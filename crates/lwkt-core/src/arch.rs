//! The only place a platform shows through.
//!
//! A kernel implements [`Arch`] once; everything else in lwkt is generic code.
//! `lwkt-arch-hosted` (user space) and `lwkt-arch-x86_64` (bare metal) are the
//! two reference implementations; `docs/porting.md` walks through both.

use core::ptr::NonNull;

use crate::cpu::Cpu;

/// Saved register state of a thread that is not running.
///
/// lwkt-core never looks inside: the backend's [`Arch::switch`] and
/// [`Arch::init_context`] decide what the words mean. Both reference
/// backends push callee-saved registers on the thread's own stack and keep
/// only the stack pointer here.
#[derive(Debug)]
#[repr(C)]
pub struct Context {
    /// Backend-defined words; word 0 is the saved stack pointer in both
    /// reference backends.
    pub words: [core::cell::Cell<usize>; 4],
}

impl Context {
    /// An empty context (not yet initialised, or the one of a running thread).
    pub const fn new() -> Self {
        Self {
            words: [const { core::cell::Cell::new(0) }; 4],
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread stack handed out by [`Arch::alloc_stack`]: `base..base+len` is
/// usable memory (any guard page lies below `base` and is not included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stack {
    /// Lowest usable address.
    pub base: NonNull<u8>,
    /// Usable bytes above `base`.
    pub len: usize,
}

// SAFETY: a `Stack` is a description of memory (address and length); moving
// the description between CPUs is harmless, and who may touch the memory is
// governed by the thread that owns it.
unsafe impl Send for Stack {}

/// A thread's entry point as the backend calls it: `entry(arg)` on the new
/// stack, never returning.
pub type EntryFn = extern "C" fn(arg: usize) -> !;

/// What lwkt needs from a platform.
///
/// The per-CPU block is [`Cpu`]: the backend stores one per CPU (GS base on
/// x86-64, a thread-local in the hosted backend) and returns it from
/// [`current_cpu`](Arch::current_cpu). Interrupt and IPI entry code calls
/// back into lwkt through [`Cpu::ipi_interrupt`].
///
/// # Safety
///
/// Implementations must keep every contract written on the methods below; the
/// scheduler's memory safety rests on them (a `switch` that loses a callee-saved
/// register, or a `current_cpu` that lies, corrupts threads).
///
/// # Examples
///
/// A sketch of a backend (see `lwkt-arch-hosted` for a complete one):
///
/// ```
/// use core::ptr::NonNull;
/// use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};
///
/// struct MyArch;
/// // SAFETY: a sketch that never runs a thread; a real backend argues each
/// // method's contract here.
/// unsafe impl Arch for MyArch {
///     fn current_cpu(&self) -> Option<NonNull<Cpu>> { None }
///     unsafe fn init_context(&self, _: &Context, _: Stack, _: EntryFn, _: usize) {}
///     unsafe fn switch(&self, _: &Context, _: &Context) { unreachable!() }
///     fn alloc_stack(&self, _: usize) -> Option<Stack> { None }
///     unsafe fn free_stack(&self, _: Stack) {}
///     unsafe fn kick(&self, _: &Cpu) {}
///     unsafe fn idle_wait(&self, _: &Cpu) {}
///     fn cycles(&self) -> u64 { 0 }
/// }
/// ```
pub unsafe trait Arch: Sync {
    /// The per-CPU block of the CPU this code runs on, or `None` outside any
    /// lwkt CPU. lwkt uses it to assert that a thread runs only on its own
    /// CPU.
    fn current_cpu(&self) -> Option<NonNull<Cpu>>;

    /// Prepare `ctx` so that the first [`switch`](Arch::switch) to it calls
    /// `entry(arg)` on `stack` (with the stack pointer at or below the top of
    /// `stack`, aligned as the platform ABI requires).
    ///
    /// # Safety
    /// `stack` is owned by the thread being created and is not in use.
    unsafe fn init_context(&self, ctx: &Context, stack: Stack, entry: EntryFn, arg: usize);

    /// Save the running context into `from` and resume `to`; returns when
    /// something switches back to `from`. Everything the platform ABI makes
    /// callee-saved must survive (on x86-64 SysV: rbx, rbp, r12-r15, rsp,
    /// MXCSR control bits and the x87 control word).
    ///
    /// # Safety
    /// Called by lwkt-core only, inside a critical section, with `to` a
    /// context saved by `switch` or prepared by `init_context`.
    unsafe fn switch(&self, from: &Context, to: &Context);

    /// A stack of at least `size` bytes, or `None` when none can be had. A
    /// backend should put an unmapped guard page below it so that an
    /// overflow faults instead of corrupting memory.
    fn alloc_stack(&self, size: usize) -> Option<Stack>;

    /// Give back a stack from [`alloc_stack`](Arch::alloc_stack).
    ///
    /// # Safety
    /// `stack` came from `alloc_stack` on this backend and nothing runs on it.
    unsafe fn free_stack(&self, stack: Stack);

    /// Send the hardware IPI ("kick") to `target`: make it call
    /// [`Cpu::ipi_interrupt`] soon, or return from
    /// [`idle_wait`](Arch::idle_wait). lwkt calls it at most once per batch
    /// of queued messages; the work itself lives in the IPI rings.
    ///
    /// # Safety
    /// `target` is a CPU block of a machine bound on this backend, set up by
    /// it (its [`Cpu::arch_word`]s hold what this backend stored there), and
    /// that machine is still running. lwkt-core is the only caller; a
    /// backend may trust what it stored in the block.
    unsafe fn kick(&self, target: &Cpu);

    /// Wait for an interrupt on the current CPU (called by its idle loop
    /// inside a critical section). Must return promptly once
    /// [`Cpu::has_pending`] is true; may return spuriously.
    ///
    /// # Safety
    /// As for [`kick`](Arch::kick), and the caller runs on `cpu` (its idle
    /// loop, inside a critical section).
    unsafe fn idle_wait(&self, cpu: &Cpu);

    /// A monotonic cycle counter (the TSC on x86-64).
    fn cycles(&self) -> u64;

    /// How long, in [`cycles`](Arch::cycles), a CPU watches its rings: the
    /// idle loop before it calls [`idle_wait`](Arch::idle_wait), and a
    /// thread in [`Cur::watch_until`](crate::Cur::watch_until) at most.
    /// While a CPU watches, senders queue without kicking: a message that
    /// follows soon costs neither side an interrupt. The watch goes on
    /// while threads run (they look at the rings at their critical-section
    /// exits) until it has found nothing for this long.
    ///
    /// The default, 0, never watches (the idle loop goes straight to
    /// `idle_wait`); a backend whose interrupts are expensive (the hosted
    /// one's are signals and futex wake-ups) sets a few tens of
    /// microseconds. A backend that watches must interrupt a CPU whose
    /// [`Cpu::watch_backlog`] stays true (a thread spinning outside
    /// critical sections never looks): the hosted one's watchdog does.
    /// The idle loop asks before each watch, so the answer may change while
    /// the machine runs (the hosted backend answers 0 while its vCPUs
    /// outnumber the host's cores: a watching vCPU would hold a core that
    /// one with work needs).
    /// DragonFly: the idle loop's spin before halting
    /// (`machdep.cpu_idle_repeat`).
    fn idle_poll_cycles(&self) -> u64 {
        0
    }

    /// Called in busy-wait loops (a full IPI ring, a `cpusync` waiting for
    /// its targets); `spins` counts the iterations so far. The default is a
    /// CPU pause hint; a hosted backend with more virtual CPUs than cores
    /// gives its time slice away after a while.
    fn pause(&self, spins: u32) {
        let _ = spins;
        core::hint::spin_loop();
    }

    /// A point where the running thread gives way, in thread context (not
    /// in an interrupt frame): it yielded
    /// ([`Cur::yield_now`](crate::Cur::yield_now)) and no other thread of
    /// its CPU could run (it most likely waits, through lwkt, for another
    /// CPU), or its time slice ended and it got the CPU back. Called on
    /// that CPU. A backend that runs several CPUs on one host thread (the
    /// hosted one's M:N machines) may let another of them run now, as in
    /// [`pause`](Arch::pause); the default does nothing (each CPU has a
    /// processor of its own). DragonFly: none (`lwkt_yield()` on a CPU
    /// with nothing else to run just returns).
    fn yield_point(&self) {}

    /// Whether a thread waiting for another CPU's answer (lwkt-msg's
    /// `domsg` across CPUs) should spin a little before it sleeps: true
    /// when every CPU runs all the time, as on bare metal (the default).
    /// The hosted backend answers false while its vCPUs outnumber the
    /// host's cores: the CPU that would answer may not be running, and the
    /// spin would hold a core it needs.
    fn spin_wait_pays(&self) -> bool {
        true
    }

    /// Interrupt `cpu` now for a device interrupt
    /// ([`MyCpu::raise_interrupt`](crate::MyCpu::raise_interrupt) posted
    /// one): like [`kick`](Self::kick), but a backend whose kick to a
    /// running CPU is only a posted check (the hosted backend) should
    /// interrupt it for real, so that an interrupt thread preempts a
    /// thread that does not call lwkt. The default is `kick`.
    ///
    /// # Safety
    /// As for [`kick`](Self::kick).
    unsafe fn interrupt(&self, cpu: &Cpu) {
        // SAFETY: forwarded contract.
        unsafe { self.kick(cpu) }
    }

    /// Whether [`Cpu::preempt_from_interrupt`] may switch threads from
    /// this backend's interrupt handler for every thread: true when
    /// interrupts arrive in kernel context (the interrupted code is
    /// lwkt-managed kernel code, and the backend's switch keeps each
    /// thread's interrupt flag), false when they arrive in host context
    /// (the hosted backend's signals may land inside the C library). The
    /// default is false: preemption then waits for the interrupted
    /// thread's next final `crit_exit`, unless the thread was built
    /// [`async_preemptible`](crate::Builder::async_preemptible).
    fn preempts_in_interrupt(&self) -> bool {
        false
    }

    /// A monotonic clock in nanoseconds (any origin; it must not go
    /// backwards on any CPU), or `None` when the backend has none: then
    /// timed waits ([`Cur::sleep_for`](crate::Cur::sleep_for) and the
    /// other `*_timeout` calls) panic, naming the backend. The default is
    /// `None`. DragonFly: `sys_cputimer->count()` scaled by its frequency.
    ///
    /// It must not arm or stop a [`Callout`](crate::Callout): it is read
    /// inside the callouts' fast paths' critical sections, which count on
    /// running no other such section inside (`crit::enter_leaf`).
    fn clock(&self) -> Option<u64> {
        None
    }

    /// Program `cpu`'s one-shot timer for `deadline` (nanoseconds of
    /// [`clock`](Self::clock)), or cancel it (`None`); a later call
    /// replaces an earlier one. Called on `cpu` itself, in a critical
    /// section, whenever its earliest timer changes. When the deadline
    /// passes, the backend calls [`Cpu::post_timer`] for that CPU and makes
    /// it look (as [`kick`](Self::kick) does); firing early or twice is
    /// harmless (lwkt-core checks the clock), firing late delays timers.
    /// The default does nothing (a backend without a clock).
    /// DragonFly: `cputimer_intr_reload()`.
    ///
    /// # Safety
    /// `cpu` is a running CPU of a machine built with this backend, and
    /// the caller runs on it (lwkt-core calls it so).
    unsafe fn set_timer(&self, cpu: &Cpu, deadline: Option<u64>) {
        let _ = (cpu, deadline);
    }
}
