//! Virtual CPUs: OS threads that each run one lwkt CPU's idle loop, and the
//! [`Arch`] implementation that ties them to lwkt-core.
//!
//! Interrupts: like DragonFly's vkernel, a kick is a host signal (SIGUSR1)
//! to the target's OS thread when it is running, whose handler is the IPI
//! interrupt entry ([`Cpu::ipi_interrupt`]): it honours the critical-section
//! count exactly like the real vector, so a thread that busy-waits outside a
//! critical section still sees IPIs. A CPU waiting in its idle loop parks
//! (a futex wait) and is woken with an unpark instead, which is cheaper.

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};

/// Signal that carries kicks (DragonFly's vkernel uses the same one).
pub const IPI_SIGNAL: libc::c_int = libc::SIGUSR1;

thread_local! {
    static CURRENT: Cell<*const Cpu> = const { Cell::new(ptr::null()) };
}

/// The CPU block of the calling OS thread, if it is a virtual CPU.
pub(crate) fn current_cpu_block() -> Option<&'static Cpu> {
    let p = CURRENT.with(Cell::get);
    // SAFETY: set only while the vCPU runs its idle loop, during which the
    // machine (and so the CPU block) is alive; cleared before it goes away.
    // The 'static is a white lie confined to this crate's callers, which use
    // it only within that window.
    unsafe { p.as_ref() }
}

/// Per-vCPU backend state, pointed to by the CPU block's arch word 0.
pub(crate) struct Vcpu {
    pub(crate) pthread: AtomicUsize,
    pub(crate) thread: std::sync::OnceLock<std::thread::Thread>,
    /// What the vCPU is doing, for `kick`: `RUNNING` (including lwkt-core's
    /// idle watch of the rings, during which senders do not kick) or
    /// `PARKED` (in or about to enter `park()`).
    pub(crate) sleeping: AtomicU32,
    pub(crate) signals_sent: AtomicUsize,
    pub(crate) unparks_sent: AtomicUsize,
    /// Kicks a running target answered without a signal.
    pub(crate) soft_kicks: AtomicUsize,
    /// This vCPU is inside `kick`'s wait for another to answer.
    pub(crate) kick_waiting: AtomicBool,
}

impl Vcpu {
    pub(crate) fn new() -> Vcpu {
        Vcpu {
            pthread: AtomicUsize::new(0),
            thread: std::sync::OnceLock::new(),
            sleeping: AtomicU32::new(0),
            signals_sent: AtomicUsize::new(0),
            unparks_sent: AtomicUsize::new(0),
            soft_kicks: AtomicUsize::new(0),
            kick_waiting: AtomicBool::new(false),
        }
    }
}

fn vcpu_of(cpu: &Cpu) -> &Vcpu {
    let p = cpu.arch_word(0).load(Ordering::Acquire) as *const Vcpu;
    assert!(
        !p.is_null(),
        "lwkt-arch-hosted: CPU block not set up by this backend"
    );
    // SAFETY: word 0 is set by `Machine` to its `Vcpu`, which lives as long
    // as the CPU block.
    unsafe { &*p }
}

/// How long `kick` waits for a running target to notice a posted check
/// before signalling it: about 1 µs of TSC at this machine's 2.6 GHz.
const SOFT_KICK_CYCLES: u64 = 2_500;

/// vCPU threads running now, over every machine of the process.
pub(crate) static LIVE_VCPUS: AtomicUsize = AtomicUsize::new(0);

/// Host cores online (read once).
fn online_cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| crate::allowed_cores().len().max(1))
}

const RUNNING: u32 = 0;
const PARKED: u32 = 1;

/// How long an idle vCPU watches its rings before it parks (about 75 µs at
/// 2.6 GHz): a futex wake-up costs both sides microseconds, and a message
/// often follows soon.
const IDLE_POLL_CYCLES: u64 = 200_000;

/// The hosted backend. Stateless: per-CPU state lives in the CPU blocks.
#[derive(Debug)]
pub struct HostedArch;

/// The one instance every hosted machine uses.
pub static HOSTED: HostedArch = HostedArch;

// SAFETY: `switch`/`init_context` preserve every callee-saved register of
// the SysV ABI plus MXCSR and the x87 control word (see `switch.rs`);
// `current_cpu` is the vCPU thread-local, set for the idle loop's whole run;
// stacks are private mappings; `kick` makes the target run `ipi_interrupt`
// (signal) or leave `idle_wait` (unpark), and `idle_wait` re-checks
// `has_pending` after publishing that it sleeps.
unsafe impl Arch for HostedArch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        NonNull::new(CURRENT.with(Cell::get) as *mut Cpu)
    }

    unsafe fn init_context(&self, ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
        // SAFETY: forwarded contract.
        unsafe { crate::switch::init(ctx, stack, entry, arg) }
    }

    #[inline(always)]
    unsafe fn switch(&self, from: &Context, to: &Context) {
        // SAFETY: forwarded contract.
        unsafe { crate::switch::switch(self as *const HostedArch as *const (), from, to) }
    }

    fn alloc_stack(&self, size: usize) -> Option<Stack> {
        crate::stack::alloc(size)
    }

    unsafe fn free_stack(&self, stack: Stack) {
        // SAFETY: forwarded contract.
        unsafe { crate::stack::free(stack) }
    }

    fn kick(&self, target: &Cpu) {
        let v = vcpu_of(target);
        // Always leave an unpark token: a sender may have been delayed
        // between queueing and kicking, and the target may be parking right
        // now; a signal alone does not end a `park()`. An unneeded token
        // costs the target one extra pass of its idle loop.
        if let Some(t) = v.thread.get() {
            t.unpark();
        }
        // Parked (or about to): the unpark above wakes it.
        if v.sleeping.load(Ordering::SeqCst) == PARKED {
            v.unparks_sent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Running: before paying for a signal (a system call here and a
        // handler there, microseconds), ask the target to poll at its next
        // critical-section exit or switch, which LWKT code reaches often,
        // and give it a moment. A target that does not answer (a thread
        // spinning outside critical sections) still gets the signal. Not
        // worth it when vCPUs outnumber host cores: the target may not be
        // running at all.
        let me = current_cpu_block();
        if LIVE_VCPUS.load(Ordering::Relaxed) <= online_cores() {
            target.post_ipi_check();
            // We announce our wait only from a critical section (where
            // lwkt-core's sends run): another sender that finds us waiting
            // then knows we will see its posted check when we leave it.
            let mine = me.filter(|m| m.in_critical()).map(vcpu_of);
            if let Some(m) = mine {
                m.kick_waiting.store(true, Ordering::SeqCst);
            }
            let start = self.cycles();
            let mut answered = false;
            while self.cycles().wrapping_sub(start) < SOFT_KICK_CYCLES {
                // Answered: it polled since the kick, or it is draining (or
                // has drained) our ring, which it re-checks after clearing
                // our bit.
                if !target.kick_outstanding()
                    || me.is_some_and(|m| !target.ipi_pending_from(m.id()))
                {
                    answered = true;
                    break;
                }
                // The target is itself waiting in a kick, so it is inside
                // a critical section: it sees our posted check when it
                // leaves it, and a signal could not make it look sooner (the
                // handler would only record the request). When two CPUs
                // kick each other at once, waiting here would only make
                // both wait out the window and then signal for nothing.
                if v.kick_waiting.load(Ordering::SeqCst) {
                    answered = true;
                    break;
                }
                core::hint::spin_loop();
            }
            if let Some(m) = mine {
                m.kick_waiting.store(false, Ordering::SeqCst);
                // Whoever saw us waiting posted its check before; make sure
                // our critical-section exit (a relaxed read) sees it.
                core::sync::atomic::fence(Ordering::SeqCst);
            }
            if answered {
                v.soft_kicks.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let pt = v.pthread.load(Ordering::Acquire);
        if pt != 0 {
            v.signals_sent.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `pt` is the pthread of a vCPU thread, which lives until
            // the machine is torn down (after every kick).
            unsafe { libc::pthread_kill(pt as libc::pthread_t, IPI_SIGNAL) };
        }
    }

    fn idle_wait(&self, cpu: &Cpu) {
        // lwkt-core's idle loop has watched the rings for
        // `idle_poll_cycles` already. Publishing the state before the last
        // check (SeqCst on both sides) means a sender that saw PARKED queued
        // its message before that check, or unparks us.
        let v = vcpu_of(cpu);
        v.sleeping.store(PARKED, Ordering::SeqCst);
        if !cpu.has_pending() {
            std::thread::park();
        }
        v.sleeping.store(RUNNING, Ordering::SeqCst);
    }

    fn cycles(&self) -> u64 {
        // SAFETY: rdtsc has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn idle_poll_cycles(&self) -> u64 {
        IDLE_POLL_CYCLES
    }

    fn pause(&self, spins: u32) {
        if spins > 64 {
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

static SIGNAL_INSTALL: Once = Once::new();

extern "C" fn on_ipi_signal(_sig: libc::c_int) {
    // SAFETY: errno is thread-local; save and restore it around our work so
    // the interrupted code sees its own value.
    let errno = unsafe { *libc::__errno_location() };
    let p = CURRENT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: we are the vCPU thread of this CPU (the thread-local says
        // so), in signal context: the interrupt entry's contract.
        unsafe { (*p).ipi_interrupt() };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

pub(crate) fn install_signal_handler() {
    SIGNAL_INSTALL.call_once(|| {
        // SAFETY: installs a handler with a zeroed (valid) sigaction.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = on_ipi_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            let r = libc::sigaction(IPI_SIGNAL, &sa, ptr::null_mut());
            assert_eq!(
                r, 0,
                "lwkt-arch-hosted: cannot install the IPI signal handler"
            );
        }
    });
    crate::fault::install();
}

/// Run `cpu`'s idle loop on the calling OS thread (which becomes that vCPU).
///
/// # Safety
/// `cpu` belongs to a bound machine that outlives this call; called once per CPU.
pub(crate) unsafe fn run_vcpu(cpu: &Cpu) {
    CURRENT.with(|c| c.set(cpu));
    LIVE_VCPUS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: forwarded; the thread-local now names this CPU.
    unsafe { cpu.idle_loop() };
    LIVE_VCPUS.fetch_sub(1, Ordering::Relaxed);
    CURRENT.with(|c| c.set(ptr::null()));
}

/// The CPU number of the calling OS thread if it is a virtual CPU running an
/// lwkt machine (tests use it to check where code really runs).
///
/// ```
/// assert_eq!(lwkt_arch_hosted::current_vcpu(), None);
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|_| {
///     assert_eq!(lwkt_arch_hosted::current_vcpu().map(|c| c.get()), Some(0));
/// });
/// ```
pub fn current_vcpu() -> Option<lwkt_core::CpuId> {
    current_cpu_block().map(Cpu::id)
}
