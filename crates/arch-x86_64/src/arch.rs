//! [`X86Arch`]: lwkt-core's [`Arch`] on bare-metal x86-64.

use core::ptr::NonNull;

use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};

use crate::apic::{self, Icr};
use crate::idt::IPI_VECTOR;
use crate::percpu::{self, PerCpu};
use crate::time;

/// Masks this CPU's interrupts around the stack pool's lock (`pushf; cli`
/// ... `popf`, the `x86_64` crate's `without_interrupts`).
#[derive(Debug)]
pub struct X86Irqs;

impl lwkt_core::IrqMask for X86Irqs {
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
        #[cfg(target_os = "none")]
        {
            x86_64::instructions::interrupts::without_interrupts(f)
        }
        // Host unit tests: `cli` faults in user mode, and nothing there
        // interrupts or preempts.
        #[cfg(not(target_os = "none"))]
        {
            f()
        }
    }
}

/// Thread stacks carved from one region, each with a canary below it that
/// [`Arch::free_stack`] checks: lwkt-core's [`lwkt_core::StackPool`],
/// with interrupts masked around its lock.
pub type StackPool = lwkt_core::StackPool<X86Irqs>;

/// lwkt-core's [`Arch`] for x86-64 in ring 0: per-CPU blocks through GS,
/// IPIs through the local APIC (xAPIC or x2APIC), `sti; hlt` idling, the
/// TSC, and stacks from a [`StackPool`].
///
/// A kernel keeps one in a `static` (made with the `unsafe`
/// [`X86Arch::new`], whose contract is that CPUs call in only once their
/// GS holds their block), gives its pool a region, and on every CPU: loads
/// the IDT ([`crate::idt::Idt::load`]), enables the APIC
/// ([`apic::enable`]), installs the CPU's [`PerCpu`] block
/// ([`percpu::install`]), calls [`X86Arch::attach`], enables interrupts
/// and enters [`Cpu::idle_loop`].
///
/// ```no_run
/// use lwkt_arch_x86_64::X86Arch;
/// // SAFETY: every CPU of this kernel installs its `PerCpu` block with
/// // `percpu::install` before it calls into lwkt (see `X86Arch::new`).
/// static ARCH: X86Arch = unsafe { X86Arch::new() };
/// static mut STACKS: [u8; 1 << 20] = [0; 1 << 20];
/// // SAFETY: the region is used for nothing else.
/// unsafe { ARCH.stacks().init(core::ptr::addr_of_mut!(STACKS).cast(), 1 << 20, 64 << 10) };
/// let _machine_arch: &'static dyn lwkt_core::Arch = &ARCH;
/// ```
#[derive(Debug)]
pub struct X86Arch {
    stacks: StackPool,
}

impl X86Arch {
    /// A backend with an empty stack pool.
    ///
    /// # Safety
    /// The backend's safe methods (`Arch::current_cpu` above all, which
    /// lwkt calls from safe code such as `ThreadHandle::wake`) read GS and
    /// trust it. So: every CPU that calls into this `X86Arch` (lwkt code of
    /// a machine built on it, or a direct call of its methods) runs in
    /// ring 0 and has installed its own [`PerCpu`] block with
    /// [`percpu::install`] before its first call, and GS holds that block
    /// whenever it calls in (not between an entry from user mode and its
    /// `swapgs`). A CPU that has installed its block but not yet
    /// [`attach`](X86Arch::attach)ed is fine: `current_cpu` returns `None`
    /// there. Outside such a kernel (a hosted test program) nothing may
    /// call in; reading GS there faults or reads wild memory.
    ///
    /// ```compile_fail,E0133
    /// // Its `current_cpu` trusts GS: constructing it is a promise.
    /// static ARCH: lwkt_arch_x86_64::X86Arch = lwkt_arch_x86_64::X86Arch::new();
    /// ```
    pub const unsafe fn new() -> X86Arch {
        X86Arch {
            stacks: StackPool::new(),
        }
    }

    /// The stack pool.
    pub fn stacks(&self) -> &StackPool {
        &self.stacks
    }

    /// Bind this CPU: `pcpu` (installed in GS here) names `cpu`, and `cpu`
    /// records this CPU's APIC id, which [`Arch::kick`] addresses.
    /// DragonFly: `mi_gdinit()`/`cpu_gdinit()` linking `mdglobaldata` to
    /// its `globaldata`.
    ///
    /// Checked (a panic, before anything is stored): `pcpu` is the block
    /// installed on this CPU and is for `cpu`'s index; this CPU's local
    /// APIC is enabled in the mode [`apic::mode`] reports (the mode every
    /// kick from here is sent in); neither `pcpu` nor `cpu` is attached
    /// already. So each `Cpu` has one CPU driving it.
    ///
    /// # Safety
    /// Ring 0 on the CPU `pcpu` belongs to, after [`percpu::install`] and
    /// [`apic::enable`] there; `cpu` is a CPU block of a machine built on
    /// this backend, whose CPUs have not started ([`Cpu::idle_loop`]).
    ///
    /// # Panics
    /// If a check above fails.
    ///
    /// ```compile_fail,E0133
    /// # use lwkt_arch_x86_64::{X86Arch, percpu::PerCpu};
    /// # use lwkt_core::{Cpu, CpuId};
    /// fn setup(arch: &X86Arch, pcpu: &'static PerCpu, cpu: &'static Cpu) {
    ///     arch.attach(pcpu, cpu);
    /// }
    /// ```
    pub unsafe fn attach(&self, pcpu: &'static PerCpu, cpu: &'static Cpu) {
        // SAFETY: caller: `install` ran on this CPU.
        let here = unsafe { percpu::current() };
        assert!(
            core::ptr::eq(here, pcpu),
            "lwkt-arch-x86_64: attach: the PerCpu block of CPU {} is not the one installed \
             on this CPU (CPU {})",
            pcpu.index,
            here.index
        );
        assert_eq!(
            pcpu.index,
            cpu.id().index(),
            "lwkt-arch-x86_64: attach: the PerCpu block of CPU {} given Cpu {}",
            pcpu.index,
            cpu.id().index()
        );
        let mode = apic::mode().expect("lwkt-arch-x86_64: attach before apic::enable");
        // SAFETY: ring 0 (caller).
        let hw = unsafe { apic::mode_here() };
        assert_eq!(
            hw,
            Some(mode),
            "lwkt-arch-x86_64: attach: this CPU's local APIC is not enabled in {mode:?} mode \
             (apic::enable on every CPU)"
        );
        // SAFETY: ring 0, this CPU's APIC enabled in `mode` (checked).
        let id = unsafe { apic::id() };
        // SAFETY: caller: `cpu`'s machine is of this backend and not
        // started; `pcpu.link` is `pcpu`'s own (what `current_cpu`
        // reads). Checks that neither is attached already.
        unsafe { cpu.attach_block(pcpu, &pcpu.link, id as usize) };
    }
}

// SAFETY: `current_cpu` reads the block installed in GS on this CPU, which
// `X86Arch::new`'s contract guarantees for every CPU that calls in, and
// returns the `Cpu` that `attach` bound to it (one CPU per `Cpu`, checked
// there); `init_context`/`switch` keep every callee-saved register of the
// SysV ABI (there is no FPU/SSE state on this soft-float target); stacks
// come from the pool and go back to it once; `kick` makes the target take
// the IPI vector, whose handler calls `Cpu::ipi_interrupt` on that CPU, and
// `idle_wait` checks for pending work with interrupts off and then waits
// with `sti; hlt`, which cannot miss an interrupt between the two;
// `switch` also keeps RFLAGS per thread, so `preempts_in_interrupt` may
// say true (a thread switched to from an interrupt handler runs with its
// own IF, the preempted one gets IF clear back inside its handler);
// `clock` is the TSC scaled by a frequency fixed once (`time::calibrate`),
// monotonic on the one-TSC machines `time` documents; a timer set by
// `set_timer` is this CPU's local APIC timer, whose entry calls
// `post_timer` and then the IPI entry.
unsafe impl Arch for X86Arch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        // SAFETY: `X86Arch::new`'s contract: this CPU installed its block
        // before calling in, and GS holds it.
        let pcpu = unsafe { percpu::current() };
        pcpu.cpu().map(NonNull::from)
    }

    unsafe fn init_context(&self, ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
        // A new thread has no user side (context words 1-3: `usermode`).
        for w in &ctx.words[1..] {
            w.set(0);
        }
        // SAFETY: caller (the stack is the new thread's and unused).
        unsafe { crate::switch::init(ctx, stack, entry, arg) }
    }

    unsafe fn switch(&self, from: &Context, to: &Context) {
        // SAFETY: caller (lwkt-core switches on this CPU, in a critical
        // section, from the running thread's context to the next one's):
        // the user state (RSP0, CR3) follows the thread.
        unsafe { crate::usermode::on_switch(from, to) };
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
        let dest = dest as u32;
        // SAFETY: ring 0 (`X86Arch::new`). The sending CPU runs lwkt, so
        // `current_cpu` names it (`Cpu::idle_loop`'s contract): it was
        // attached, and `attach` checked that its APIC is enabled in
        // `apic::mode()`, the mode `send` writes the ICR in. `dest` is the
        // APIC id `attach` recorded for `target` (lwkt-core passes a CPU of
        // a running machine of this backend), a CPU with GS installed, so
        // the IPI entry there reads a real block.
        unsafe { apic::send(Icr::fixed(IPI_VECTOR, dest)) }
    }

    unsafe fn idle_wait(&self, cpu: &Cpu) {
        x86_64::instructions::interrupts::disable();
        if cpu.has_pending() {
            x86_64::instructions::interrupts::enable();
        } else {
            // `sti; hlt`: the interrupt shadow of `sti` means an IPI that
            // arrives after the check above still wakes the `hlt`.
            x86_64::instructions::interrupts::enable_and_hlt();
        }
    }

    fn cycles(&self) -> u64 {
        // SAFETY: rdtsc has no preconditions in ring 0.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// True: interrupts arrive in kernel context (ring 0, lwkt-managed
    /// code only: `X86Arch::new`'s contract), and `switch` carries RFLAGS
    /// per thread, so the handler may switch to the preempting thread at
    /// once (see `end_of_interrupt`).
    fn preempts_in_interrupt(&self) -> bool {
        true
    }

    /// A device interrupt that `MyCpu::raise_interrupt` posted on
    /// `target`: the IPI vector, as [`kick`](Arch::kick). A hardware IPI
    /// always interrupts a running CPU (there is no posted-check shortcut
    /// here), and the IPI entry delivers the posted line and lets its
    /// thread preempt.
    unsafe fn interrupt(&self, target: &Cpu) {
        // SAFETY: forwarded contract.
        unsafe { self.kick(target) }
    }

    /// The TSC in nanoseconds since [`time::calibrate`], `None` before it
    /// (then lwkt's timed waits panic, naming the missing clock).
    /// DragonFly: `sys_cputimer->count()` of the TSC cputimer.
    fn clock(&self) -> Option<u64> {
        time::now_ns()
    }

    /// This CPU's local APIC timer, in the mode [`time::calibrate`]
    /// chose: the deadline's TSC value in `IA32_TSC_DEADLINE`, or the
    /// one-shot count for the time left. DragonFly:
    /// `lapic_timer_intr_reload()`.
    ///
    /// # Panics
    /// On a CPU that did not run [`time::start_timer`].
    unsafe fn set_timer(&self, cpu: &Cpu, deadline: Option<u64>) {
        let Some(tb) = time::base() else {
            // No clock: lwkt-core arms no timer (its timed waits panic
            // first); a cancel has nothing to cancel.
            return;
        };
        // SAFETY: lwkt-core calls with a running CPU of a machine of this
        // backend: attached, so its word holds its `PerCpu` block.
        let pcpu = unsafe { percpu_of(cpu) };
        assert!(
            pcpu.timer_started(),
            "lwkt-arch-x86_64: a timer on CPU {}, whose local APIC timer was never set up \
             (time::start_timer on every CPU)",
            pcpu.index
        );
        // SAFETY: ring 0 (`X86Arch::new`), on `cpu` itself (the trait's
        // contract), whose timer `start_timer` set up in `tb`'s mode.
        unsafe { time::program(tb, deadline) }
    }
}

/// The [`PerCpu`] block attached to `cpu`.
///
/// # Safety
/// `cpu` was attached ([`X86Arch::attach`]).
unsafe fn percpu_of(cpu: &Cpu) -> &'static PerCpu {
    let p = cpu
        .attached_block::<PerCpu>()
        .expect("lwkt-arch-x86_64: a Cpu that was never attached");
    // SAFETY: `attach` attached a `&'static PerCpu`, and only it attaches
    // the `Cpu`s of this backend's machines (caller).
    unsafe { p.as_ref() }
}

/// The end of every interrupt entry of this CPU: let a thread that the
/// interrupt made runnable preempt the interrupted one
/// ([`Cpu::preempt_from_interrupt`]: only outside critical sections and
/// for a higher priority). The switch may leave this handler's frame on
/// the interrupted thread's stack, with IF clear, until that thread runs
/// again; `switch` keeps IF per thread (see `switch.rs`), so the thread
/// switched to runs with its own IF (set) meanwhile.
///
/// # Safety
/// Called from one of this backend's interrupt entries on `cpu` (its own
/// CPU), after the EOI, with the interrupted registers saved by the stub.
unsafe fn end_of_interrupt(cpu: &Cpu) {
    // SAFETY: on this CPU from its interrupt handler (caller); the
    // interrupted code is lwkt-managed ring-0 code (`X86Arch::new`'s
    // contract: nothing else calls in), which may be switched away from
    // at any instruction outside a critical section, and the stub saved
    // its caller-saved registers on its stack, the switch its
    // callee-saved ones and its flags.
    unsafe { cpu.preempt_from_interrupt() };
}

/// The timer vector's handler (called by the stub in `idt`): the local
/// APIC timer of this CPU fired. Records the timer interrupt, enters lwkt
/// (expired timers run now outside a critical section, at its exit
/// inside one), then lets a woken thread of higher priority preempt.
/// DragonFly: `Xtimer` -> `lapic_timer_process()`.
#[no_mangle]
extern "C" fn lwkt_x86_timer_entry() {
    // SAFETY: from the timer vector's interrupt gate, in ring 0.
    unsafe { apic::eoi() };
    // SAFETY: the timer vector is raised only by a CPU's own APIC timer,
    // which `time::start_timer` unmasks only after `percpu::install` (its
    // contract), and which `Arch::set_timer` programs only on attached
    // CPUs.
    let pcpu = unsafe { percpu::current() };
    if let Some(cpu) = pcpu.cpu() {
        cpu.post_timer();
        // SAFETY: on this CPU, in its interrupt context, registers saved
        // by the stub. Outside a critical section the expired timers run
        // here; inside one (the idle loop's too) at its exit.
        unsafe { cpu.ipi_interrupt() };
        // SAFETY: as above, after the EOI.
        unsafe { end_of_interrupt(cpu) };
    }
}

/// The IPI vector's handler (called by the stub in `idt`): queued IPI
/// messages run, and device interrupts posted to this CPU by another one
/// ([`Arch::interrupt`]) are delivered, their threads possibly preempting
/// the interrupted one. DragonFly: `Xipiq`.
#[no_mangle]
extern "C" fn lwkt_x86_ipi_entry() {
    // SAFETY: from the fixed IPI vector's interrupt gate, in ring 0.
    unsafe { apic::eoi() };
    // SAFETY: the IPI vector reaches only CPUs whose GS holds their block:
    // `kick` sends it only to attached CPUs, and `Idt::load`'s contract
    // binds every other sender.
    let pcpu = unsafe { percpu::current() };
    if let Some(cpu) = pcpu.cpu() {
        // SAFETY: on this CPU, in its interrupt context, registers saved by
        // the stub.
        unsafe { cpu.ipi_interrupt() };
        // SAFETY: as above, after the EOI.
        unsafe { end_of_interrupt(cpu) };
    }
}

/// A device vector's handler (called by the common device stub in `idt`
/// with the vector's line): raises line `irq` of this CPU
/// ([`Cpu::post_interrupt`]) and enters lwkt, so the line's interrupt
/// thread runs, preempting the interrupted thread if it has a higher
/// priority. A vector that reaches a CPU not yet attached is dropped (no
/// lwkt CPU to raise it on). DragonFly: `Xintr` -> `ithread_fast_handler()`
/// -> `sched_ithd_hard()`.
#[no_mangle]
extern "C" fn lwkt_x86_device_entry(irq: usize) {
    // SAFETY: from a device vector's interrupt gate, in ring 0. An
    // interrupt from the IOAPIC or a fixed IPI both want an EOI (a
    // level-triggered line would be masked at its source first).
    unsafe { apic::eoi() };
    // SAFETY: device vectors are sent only to CPUs whose GS holds their
    // block: `Idt::load`'s contract binds whoever programs a device, an
    // IOAPIC entry, an MSI or an IPI to one.
    let pcpu = unsafe { percpu::current() };
    if let Some(cpu) = pcpu.cpu() {
        // The stub passes its own line, below `DEVICE_VECTORS` =
        // `MAX_IRQS`: never an error.
        let _ = cpu.post_interrupt(irq);
        // SAFETY: on this CPU, in its interrupt context, registers saved
        // by the stub.
        unsafe { cpu.ipi_interrupt() };
        // SAFETY: as above, after the EOI.
        unsafe { end_of_interrupt(cpu) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwkt_core::CpuId;
    use std::boxed::Box;

    /// What `attach` stores through lwkt-core (`Cpu::attach_block`, tested
    /// there: once per `Cpu` and per block) is what this backend reads:
    /// the block's `Cpu` and APIC id, and the block from the `Cpu`.
    #[test]
    fn an_attached_block_and_cpu_name_each_other() {
        let cpu: &'static Cpu = Box::leak(Box::new(Cpu::new(CpuId::new(1))));
        let pcpu: &'static PerCpu = Box::leak(Box::new(PerCpu::new(1)));
        assert!(pcpu.cpu().is_none() && pcpu.apic_id().is_none());
        // SAFETY: `cpu` belongs to no machine; nothing reads its words but
        // this test; the link is the block's.
        unsafe { cpu.attach_block(pcpu, &pcpu.link, 5) };
        assert!(core::ptr::eq(pcpu.cpu().unwrap(), cpu));
        assert_eq!(pcpu.apic_id(), Some(5));
        assert_eq!(cpu.attached_dest(), Some(5));
        // SAFETY: attached just above, as a `PerCpu`.
        assert!(core::ptr::eq(unsafe { percpu_of(cpu) }, pcpu));
    }
}
