//! [`A64Arch`]: lwkt-core's [`Arch`] on bare-metal aarch64 at EL1.

use core::ptr::NonNull;

use aarch64_cpu::registers::{Readable, Writeable, DAIF};
use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};

use crate::gic;
use crate::percpu::{self, PerCpu};
use crate::time;

/// Run `f` with IRQs masked on this CPU (`DAIF.I`), restoring the mask
/// it had.
pub fn without_irqs<R>(f: impl FnOnce() -> R) -> R {
    let saved = DAIF.get();
    // SAFETY: masking IRQs at EL1 has no precondition.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack, preserves_flags)) };
    let r = f();
    DAIF.set(saved);
    r
}

/// Masks this CPU's IRQs around the stack pool's lock ([`without_irqs`]).
#[derive(Debug)]
pub struct A64Irqs;

impl lwkt_core::IrqMask for A64Irqs {
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
        without_irqs(f)
    }
}

/// Thread stacks carved from one region, each with a canary below it that
/// [`Arch::free_stack`] checks (there is no guard page: the identity map
/// uses 1 GiB blocks): lwkt-core's [`lwkt_core::StackPool`], with IRQs
/// masked around its lock.
pub type StackPool = lwkt_core::StackPool<A64Irqs>;

/// lwkt-core's [`Arch`] for aarch64 at EL1: per-CPU blocks through
/// `TPIDR_EL1`, IPIs as GICv3 SGIs, `wfi` idling, the generic timer, and
/// stacks from a [`StackPool`].
///
/// A kernel keeps one in a `static` (made with the `unsafe`
/// [`A64Arch::new`]), gives its pool a region, sets up the GIC
/// distributor once ([`gic::init_distributor`]) and on every CPU:
/// installs the vector table ([`crate::vectors::install`]), installs the
/// CPU's [`PerCpu`] block ([`percpu::install`]), sets up its
/// redistributor ([`gic::init_cpu`]) and timer ([`time::start_timer`]),
/// calls [`A64Arch::attach`], unmasks IRQs and enters [`Cpu::idle_loop`].
#[derive(Debug)]
pub struct A64Arch {
    stacks: StackPool,
}

impl A64Arch {
    /// A backend with an empty stack pool.
    ///
    /// # Safety
    /// The backend's safe methods (`Arch::current_cpu` above all) read
    /// `TPIDR_EL1` and trust it. So: every CPU that calls into this
    /// `A64Arch` runs at EL1 and has installed its own [`PerCpu`] block
    /// with [`percpu::install`] before its first call. A CPU that has
    /// installed its block but not yet attached is fine: `current_cpu`
    /// returns `None` there.
    pub const unsafe fn new() -> A64Arch {
        A64Arch {
            stacks: StackPool::new(),
        }
    }

    /// The stack pool.
    pub fn stacks(&self) -> &StackPool {
        &self.stacks
    }

    /// Bind this CPU: `pcpu` (installed here) names `cpu`, and `cpu`
    /// records this CPU's affinity, which [`Arch::kick`] addresses.
    /// DragonFly: `mi_gdinit()`/`cpu_gdinit()`.
    ///
    /// Checked (a panic, before anything is stored): `pcpu` is the block
    /// installed on this CPU and is for `cpu`'s index; this CPU's GIC
    /// interface is enabled (so the kicks it sends go out); neither is
    /// attached already.
    ///
    /// # Safety
    /// EL1 on the CPU `pcpu` belongs to, after [`percpu::install`] and
    /// [`gic::init_cpu`] there; `cpu` is a CPU block of a machine built on
    /// this backend, whose CPUs have not started.
    ///
    /// # Panics
    /// If a check above fails.
    pub unsafe fn attach(&self, pcpu: &'static PerCpu, cpu: &'static Cpu) {
        // SAFETY: caller: `install` ran on this CPU.
        let here = unsafe { percpu::current() };
        assert!(
            core::ptr::eq(here, pcpu),
            "lwkt-arch-aarch64: attach: the PerCpu block of CPU {} is not the one installed \
             on this CPU (CPU {})",
            pcpu.index,
            here.index
        );
        assert_eq!(
            pcpu.index,
            cpu.id().index(),
            "lwkt-arch-aarch64: attach: the PerCpu block of CPU {} given Cpu {}",
            pcpu.index,
            cpu.id().index()
        );
        // SAFETY: EL1 (caller).
        let ready = unsafe { gic::cpu_ready() };
        assert!(
            ready,
            "lwkt-arch-aarch64: attach: CPU {}'s GIC interface is not enabled \
             (gic::init_cpu on every CPU first)",
            pcpu.index
        );
        let mpidr = percpu::mpidr_affinity() as usize;
        // SAFETY: caller: `cpu`'s machine is of this backend and not
        // started; `pcpu.link` is `pcpu`'s own (what `current_cpu`
        // reads). Checks that neither is attached already.
        unsafe { cpu.attach_block(pcpu, &pcpu.link, mpidr) };
    }
}

// SAFETY: `current_cpu` reads the block installed in TPIDR_EL1 on this
// CPU, which `A64Arch::new`'s contract guarantees for every CPU that calls
// in, and returns the `Cpu` that `attach` bound to it (one CPU per `Cpu`,
// checked there); `init_context`/`switch` keep every callee-saved register
// of AAPCS64 (x19-x30, sp, d8-d15, FPCR); stacks come from the pool and go
// back to it once; `kick` sends the IPI SGI to the target, whose IRQ entry
// calls `Cpu::ipi_interrupt` on that CPU; `idle_wait` checks for pending
// work with IRQs masked and then executes `wfi`, which wakes on a pending
// IRQ even while it is masked, so nothing is missed between the two;
// `switch` keeps DAIF per thread, so `preempts_in_interrupt` may say true;
// `clock` is the system counter, one for the machine and monotonic; a
// timer set by `set_timer` is this CPU's virtual timer, whose IRQ entry
// calls `post_timer` and then the IPI entry.
unsafe impl Arch for A64Arch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        // SAFETY: `A64Arch::new`'s contract: this CPU installed its block.
        let pcpu = unsafe { percpu::current() };
        pcpu.cpu().map(NonNull::from)
    }

    unsafe fn init_context(&self, ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
        // SAFETY: caller (the stack is the new thread's and unused).
        unsafe { crate::switch::init(ctx, stack, entry, arg) }
    }

    unsafe fn switch(&self, from: &Context, to: &Context) {
        // SAFETY: caller.
        unsafe { crate::switch::switch(from, to) }
    }

    fn alloc_stack(&self, size: usize) -> Option<Stack> {
        self.stacks.alloc(size)
    }

    unsafe fn free_stack(&self, stack: Stack) {
        // SAFETY: caller (`Arch::free_stack`'s contract): from our
        // `alloc_stack`, which is this pool's, and nothing runs on it.
        unsafe { self.stacks.free(stack) }
    }

    unsafe fn kick(&self, target: &Cpu) {
        // Not attached: not started, no kick (see `attached_dest`).
        let Some(dest) = target.attached_dest() else {
            return;
        };
        let dest = dest as u64;
        // SAFETY: EL1 (`A64Arch::new`); the sending CPU runs lwkt, so it
        // attached after `gic::init_cpu`; `dest` is the affinity `attach`
        // recorded for `target`, a CPU with its block installed.
        unsafe { gic::send_sgi(gic::IPI_SGI, dest) }
    }

    unsafe fn idle_wait(&self, cpu: &Cpu) {
        // SAFETY: masking IRQs at EL1 has no precondition.
        unsafe { core::arch::asm!("msr daifset, #2", options(nostack, preserves_flags)) };
        if !cpu.has_pending() {
            // `wfi` wakes on an IRQ that is pending, masked or not: one
            // that arrived after the check above ends it.
            aarch64_cpu::asm::wfi();
        }
        // SAFETY: unmasking IRQs in the idle loop, which runs with them
        // on; a pending one is taken here.
        unsafe { core::arch::asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
    }

    fn cycles(&self) -> u64 {
        time::count()
    }

    /// `yield`, what Linux's arm64 `cpu_relax()` issues, rather than
    /// `core::hint::spin_loop()` (`isb` on aarch64): a hint that an SMT
    /// core or a hypervisor may run something else, and the instruction
    /// on which QEMU's single-threaded TCG switches to the next vCPU.
    /// With `isb` a CPU spinning for another one (`Callout::stop_sync`, a
    /// full IPI ring, `cpusync`) held the only TCG thread until its 100 ms
    /// kick, and callouts on the waited-for CPU ran up to 0.8 s late.
    fn pause(&self, _spins: u32) {
        // SAFETY: `yield` is a hint with no effect on state.
        unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
    }

    /// True: IRQs arrive in kernel context (EL1, lwkt-managed code only:
    /// `A64Arch::new`'s contract), and `switch` carries DAIF per thread.
    fn preempts_in_interrupt(&self) -> bool {
        true
    }

    /// A device interrupt posted on `target`: the IPI SGI, as
    /// [`kick`](Arch::kick).
    unsafe fn interrupt(&self, target: &Cpu) {
        // SAFETY: forwarded contract.
        unsafe { self.kick(target) }
    }

    /// The virtual counter in nanoseconds since [`time::init`], `None`
    /// before it. DragonFly: `sys_cputimer->count()`.
    fn clock(&self) -> Option<u64> {
        time::now_ns()
    }

    /// This CPU's virtual timer: `CNTV_CVAL_EL0` = the deadline's count.
    /// DragonFly: `cputimer_intr_reload()`.
    ///
    /// # Panics
    /// On a CPU that did not run [`time::start_timer`].
    unsafe fn set_timer(&self, cpu: &Cpu, deadline: Option<u64>) {
        let Some(tb) = time::base() else {
            return;
        };
        // SAFETY: lwkt-core calls with a running CPU of a machine of this
        // backend: attached, so its word holds its `PerCpu` block.
        let pcpu = unsafe { percpu_of(cpu) };
        assert!(
            pcpu.timer_started(),
            "lwkt-arch-aarch64: a timer on CPU {}, whose virtual timer was never set up \
             (time::start_timer on every CPU)",
            pcpu.index
        );
        time::program(tb, deadline)
    }
}

/// The [`PerCpu`] block attached to `cpu`.
///
/// # Safety
/// `cpu` was attached ([`A64Arch::attach`]).
unsafe fn percpu_of(cpu: &Cpu) -> &'static PerCpu {
    let p = cpu
        .attached_block::<PerCpu>()
        .expect("lwkt-arch-aarch64: a Cpu that was never attached");
    // SAFETY: `attach` attached a `&'static PerCpu`, and only it attaches
    // the `Cpu`s of this backend's machines (caller).
    unsafe { p.as_ref() }
}

/// The `Cpu` attached to this CPU, if any.
///
/// # Safety
/// From the IRQ entry, which runs only on CPUs that installed their block
/// (`vectors::install`'s contract).
unsafe fn here() -> Option<&'static Cpu> {
    // SAFETY: caller.
    unsafe { percpu::current() }.cpu()
}

/// lwkt's IPI SGI arrived (after its EOI): queued IPI messages run, and
/// device interrupts posted to this CPU are delivered; then a thread they
/// made runnable may preempt. DragonFly: `Xipiq`.
///
/// # Safety
/// From the IRQ entry of this CPU, registers saved by the stub.
pub(crate) unsafe fn ipi_entry() {
    // SAFETY: caller.
    if let Some(cpu) = unsafe { here() } {
        // SAFETY: on this CPU, in its interrupt context, registers saved.
        unsafe {
            cpu.ipi_interrupt();
            cpu.preempt_from_interrupt();
        }
    }
}

/// The virtual timer fired (disarmed, after its EOI). DragonFly: `Xtimer`.
///
/// # Safety
/// As for [`ipi_entry`].
pub(crate) unsafe fn timer_entry() {
    // SAFETY: caller.
    if let Some(cpu) = unsafe { here() } {
        cpu.post_timer();
        // SAFETY: as in `ipi_entry`.
        unsafe {
            cpu.ipi_interrupt();
            cpu.preempt_from_interrupt();
        }
    }
}

/// Device line `irq` arrived (its SGI or SPI, after the EOI): raise it on
/// this CPU and enter lwkt. DragonFly: `Xintr` -> `sched_ithd_hard()`.
///
/// # Safety
/// As for [`ipi_entry`].
pub(crate) unsafe fn device_entry(irq: usize) {
    // SAFETY: caller.
    if let Some(cpu) = unsafe { here() } {
        // The entry passes lines below `MAX_IRQS`: never an error.
        let _ = cpu.post_interrupt(irq);
        // SAFETY: as in `ipi_entry`.
        unsafe {
            cpu.ipi_interrupt();
            cpu.preempt_from_interrupt();
        }
    }
}
