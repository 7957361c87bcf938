//! Per-CPU data through the GS segment base.
//!
//! Each CPU's [`PerCpu`] block starts with a pointer to itself, so
//! `mov rax, gs:[0]` yields the block and `gs:[8]` the CPU index without
//! touching an MSR. [`install`] puts the block in `IA32_KERNEL_GS_BASE` and
//! swaps it in with `swapgs`, leaving `IA32_GS_BASE` (the user value)
//! zero; kernel entry from user mode and exit to it swap the two with
//! [`swapgs`].
//!
//! **The NMI-inside-swapgs window.** An NMI (or machine check) can arrive
//! right after an entry from user mode and before its `swapgs`, when GS
//! still holds the user base. Such handlers must not trust GS: read
//! `IA32_GS_BASE` and swap only if it is not a kernel address (what Linux's
//! `paranoid_entry` does), or give them their own stack with the per-CPU
//! pointer at a known offset (IST). Ordinary interrupts and IPIs from ring
//! 0, the only ones lwkt's test kernel takes, need no `swapgs` at all.
//!
//! Do not reload the GS *selector* after installing: a segment load
//! rewrites the hidden base from the descriptor.
//!
//! DragonFly: `struct mdglobaldata` at `%gs:0` (`gd_curthread`, ...),
//! `mdcpu`.

use core::sync::atomic::{AtomicUsize, Ordering};

use lwkt_core::Cpu;

/// IA32_GS_BASE.
pub const MSR_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// One CPU's block, at its GS base.
#[derive(Debug)]
#[repr(C)]
pub struct PerCpu {
    /// `gs:[0]`: the block's own address.
    self_ptr: AtomicUsize,
    /// `gs:[8]`: the CPU index (lwkt's `CpuId`).
    pub index: usize,
    /// `gs:[16]`: lwkt's per-CPU block for this CPU.
    cpu: AtomicUsize,
    /// `gs:[24]`: this CPU's local APIC id.
    pub apic_id: AtomicUsize,
}

impl PerCpu {
    /// A block for CPU `index`, not yet installed.
    pub const fn new(index: usize) -> PerCpu {
        PerCpu {
            self_ptr: AtomicUsize::new(0),
            index,
            cpu: AtomicUsize::new(0),
            apic_id: AtomicUsize::new(0),
        }
    }

    /// The lwkt CPU block this CPU runs, once set.
    pub fn cpu(&self) -> Option<&'static Cpu> {
        let p = self.cpu.load(Ordering::Acquire) as *const Cpu;
        // SAFETY: only `set_cpu` stores here, a `&'static Cpu`.
        unsafe { p.as_ref() }
    }

    /// Attach lwkt's CPU block.
    pub fn set_cpu(&self, cpu: &'static Cpu) {
        self.cpu
            .store(cpu as *const Cpu as usize, Ordering::Release);
    }
}

/// Make `p` this CPU's GS base: `IA32_GS_BASE = 0`,
/// `IA32_KERNEL_GS_BASE = p`, then `swapgs`.
///
/// # Safety
/// Ring 0, once per CPU, before anything reads [`current`]; `p` is this
/// CPU's block and lives forever; interrupts are off (a handler reading
/// GS mid-way would see the wrong base).
pub unsafe fn install(p: &'static PerCpu) {
    p.self_ptr
        .store(p as *const PerCpu as usize, Ordering::Relaxed);
    // SAFETY: caller (ring 0, interrupts off, this CPU's own MSRs).
    unsafe {
        crate::apic::wrmsr(MSR_GS_BASE, 0);
        crate::apic::wrmsr(MSR_KERNEL_GS_BASE, p as *const PerCpu as u64);
        swapgs();
    }
}

/// Exchange `IA32_GS_BASE` and `IA32_KERNEL_GS_BASE`: on entry from user
/// mode and right before returning to it.
///
/// # Safety
/// Ring 0, interrupts off, and exactly where the kernel/user GS
/// discipline says a swap belongs (see the module docs).
#[inline(always)]
pub unsafe fn swapgs() {
    // SAFETY: caller.
    unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
}

/// This CPU's block (from `gs:[0]`).
///
/// Valid only after [`install`] ran on this CPU; before, GS is 0 and
/// `gs:[0]` reads physical address 0.
#[inline(always)]
pub fn current() -> &'static PerCpu {
    let p: usize;
    // SAFETY: a load from the installed per-CPU block's first word.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `install` stored the block's own 'static address there.
    unsafe { &*(p as *const PerCpu) }
}

/// The CPU index (`gs:[8]`), read without going through the block pointer.
#[inline(always)]
pub fn current_index() -> usize {
    let i: usize;
    // SAFETY: as for `current`.
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) i, options(nostack, readonly, preserves_flags))
    };
    i
}

/// `(IA32_GS_BASE, IA32_KERNEL_GS_BASE)` as the MSRs hold them, to check an
/// installation.
///
/// # Safety
/// Ring 0.
pub unsafe fn bases() -> (u64, u64) {
    // SAFETY: caller.
    unsafe {
        (
            crate::apic::rdmsr(MSR_GS_BASE),
            crate::apic::rdmsr(MSR_KERNEL_GS_BASE),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_what_the_asm_reads() {
        assert_eq!(core::mem::offset_of!(PerCpu, self_ptr), 0);
        assert_eq!(core::mem::offset_of!(PerCpu, index), 8);
        assert_eq!(core::mem::offset_of!(PerCpu, cpu), 16);
        assert_eq!(core::mem::offset_of!(PerCpu, apic_id), 24);
    }
}
