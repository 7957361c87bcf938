//! [`X86Arch`]: lwkt-core's [`Arch`] on bare-metal x86-64.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};

use crate::apic::{self, Icr};
use crate::idt::IPI_VECTOR;
use crate::percpu::{self, PerCpu};

/// Written below every stack; found changed when the stack is given back,
/// it means the thread overran its stack (there is no guard page: the
/// identity map uses 2 MiB pages).
const CANARY: u64 = 0x5afe_57ac_c0de_ca4a;
/// Bytes below each stack's usable part, holding the canary.
const CANARY_ROOM: usize = 64;
/// Most stacks a pool manages.
pub const MAX_STACKS: usize = 256;

struct Pool {
    base: usize,
    slot: usize,
    count: usize,
    used: [u64; MAX_STACKS / 64],
}

/// Thread stacks carved from one region in equal slots, each with a
/// canary below it that [`Arch::free_stack`] checks.
#[derive(Debug)]
pub struct StackPool {
    inner: spin::Mutex<Option<Pool>>,
}

impl core::fmt::Debug for Pool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("slot", &self.slot)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl StackPool {
    const fn new() -> StackPool {
        StackPool {
            inner: spin::Mutex::new(None),
        }
    }

    /// Hand the pool `len` bytes at `base`, cut in slots of `slot` bytes
    /// (at most [`MAX_STACKS`] of them).
    ///
    /// # Safety
    /// The region is writable, 16-byte aligned, used for nothing else, and
    /// lives forever.
    ///
    /// # Panics
    /// If the pool already has a region, or a slot is under 4 KiB.
    pub unsafe fn init(&self, base: *mut u8, len: usize, slot: usize) {
        assert!(
            slot >= 4096 && slot % 16 == 0,
            "lwkt-arch-x86_64: stack slots of at least 4 KiB"
        );
        let mut g = self.inner.lock();
        assert!(
            g.is_none(),
            "lwkt-arch-x86_64: the stack pool has its region already"
        );
        *g = Some(Pool {
            base: base as usize,
            slot,
            count: (len / slot).min(MAX_STACKS),
            used: [0; MAX_STACKS / 64],
        });
    }

    fn alloc(&self, size: usize) -> Option<Stack> {
        let mut g = self.inner.lock();
        let p = g.as_mut()?;
        if size > p.slot - CANARY_ROOM {
            return None;
        }
        let i = (0..p.count).find(|&i| p.used[i / 64] & (1 << (i % 64)) == 0)?;
        p.used[i / 64] |= 1 << (i % 64);
        let start = p.base + i * p.slot;
        // SAFETY: `start` is the 16-aligned start of a free slot of the
        // region the pool owns (`init`).
        unsafe { (start as *mut u64).write(CANARY) };
        Some(Stack {
            // SAFETY: a non-zero address inside the region.
            base: unsafe { NonNull::new_unchecked((start + CANARY_ROOM) as *mut u8) },
            len: p.slot - CANARY_ROOM,
        })
    }

    fn free(&self, s: Stack) {
        let mut g = self.inner.lock();
        let p = g
            .as_mut()
            .expect("lwkt-arch-x86_64: free_stack before the pool has a region");
        let start = s.base.as_ptr() as usize - CANARY_ROOM;
        let i = (start - p.base) / p.slot;
        assert!(
            start >= p.base && i < p.count && p.used[i / 64] & (1 << (i % 64)) != 0,
            "lwkt-arch-x86_64: free_stack of a stack the pool did not hand out"
        );
        // SAFETY: the slot's first word, written by `alloc`.
        let canary = unsafe { (start as *const u64).read() };
        assert_eq!(
            canary, CANARY,
            "lwkt-arch-x86_64: a thread overran its {}-byte stack at {:#x}",
            s.len, start
        );
        p.used[i / 64] &= !(1 << (i % 64));
    }
}

/// lwkt-core's [`Arch`] for x86-64 in ring 0: per-CPU blocks through GS,
/// IPIs through the local APIC (xAPIC or x2APIC), `sti; hlt` idling, the
/// TSC, and stacks from a [`StackPool`].
///
/// A kernel keeps one in a `static`, gives its pool a region, and on every
/// CPU: loads the IDT ([`crate::idt::Idt::load`]), enables the APIC
/// ([`apic::enable`]), installs the CPU's [`PerCpu`] block
/// ([`percpu::install`]), calls [`X86Arch::attach`], enables interrupts
/// and enters [`Cpu::idle_loop`].
///
/// ```no_run
/// use lwkt_arch_x86_64::X86Arch;
/// static ARCH: X86Arch = X86Arch::new();
/// static mut STACKS: [u8; 1 << 20] = [0; 1 << 20];
/// // SAFETY: the region is used for nothing else.
/// unsafe { ARCH.stacks().init(core::ptr::addr_of_mut!(STACKS).cast(), 1 << 20, 64 << 10) };
/// let _machine_arch: &'static dyn lwkt_core::Arch = &ARCH;
/// ```
#[derive(Debug)]
pub struct X86Arch {
    stacks: StackPool,
}

impl Default for X86Arch {
    fn default() -> Self {
        X86Arch::new()
    }
}

impl X86Arch {
    /// A backend with an empty stack pool.
    pub const fn new() -> X86Arch {
        X86Arch {
            stacks: StackPool::new(),
        }
    }

    /// The stack pool.
    pub fn stacks(&self) -> &StackPool {
        &self.stacks
    }

    /// Bind this CPU: `pcpu` (installed in GS) names `cpu`, and `cpu`
    /// records this CPU's APIC id, which [`Arch::kick`] addresses.
    ///
    /// # Safety
    /// On the CPU `pcpu` belongs to, after [`percpu::install`] and
    /// [`apic::enable`] there, before the CPU runs lwkt.
    pub unsafe fn attach(&self, pcpu: &'static PerCpu, cpu: &'static Cpu) {
        let id = apic::id() as usize;
        pcpu.apic_id.store(id, Ordering::Relaxed);
        // SAFETY: we are the backend setting up this CPU, before it runs.
        unsafe { cpu.set_arch_word(0, id) };
        pcpu.set_cpu(cpu);
    }
}

// SAFETY: `current_cpu` reads the block installed in GS on this CPU;
// `init_context`/`switch` keep every callee-saved register of the SysV ABI
// (there is no FPU/SSE state on this soft-float target); stacks come from
// the pool and go back to it once; `kick` makes the target take the IPI
// vector, whose handler calls `Cpu::ipi_interrupt` on that CPU, and
// `idle_wait` checks for pending work with interrupts off and then waits
// with `sti; hlt`, which cannot miss an interrupt between the two.
unsafe impl Arch for X86Arch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        percpu::current().cpu().map(NonNull::from)
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
        self.stacks.free(stack)
    }

    unsafe fn kick(&self, target: &Cpu) {
        // `attach` stored the APIC id (the caller passes a CPU of a running
        // machine of this backend).
        let id = target.arch_word(0) as u32;
        // SAFETY: ring 0, APIC enabled on every CPU running lwkt; a fixed
        // IPI to a CPU that `attach` recorded.
        unsafe { apic::send(Icr::fixed(IPI_VECTOR, id)) }
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
}

/// The IPI vector's handler (called by the stub in `idt`).
#[no_mangle]
extern "C" fn lwkt_x86_ipi_entry() {
    // SAFETY: from the fixed IPI vector's interrupt gate, in ring 0.
    unsafe { apic::eoi() };
    if let Some(cpu) = percpu::current().cpu() {
        // SAFETY: on this CPU, in its interrupt context, registers saved by
        // the stub.
        unsafe { cpu.ipi_interrupt() };
    }
}
