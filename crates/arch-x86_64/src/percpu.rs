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

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lwkt_core::{Cpu, CpuLink};

/// IA32_GS_BASE.
pub const MSR_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// One CPU's block, at its GS base.
///
/// Made with [`PerCpu::new`] (safe: a block that is not installed is
/// inert), put in GS by [`install`] (`unsafe`), bound to lwkt's [`Cpu`] by
/// [`X86Arch::attach`](crate::X86Arch::attach) (`unsafe`, and checked:
/// each block names one `Cpu` and each `Cpu` one block, so two CPUs cannot
/// drive one `Cpu`). DragonFly: `struct mdglobaldata`.
///
/// ```
/// use lwkt_arch_x86_64::percpu::PerCpu;
/// static PCPU: PerCpu = PerCpu::new(3);
/// assert_eq!(PCPU.index, 3);
/// assert!(PCPU.cpu().is_none(), "not attached");
/// assert_eq!(PCPU.apic_id(), None);
/// ```
#[derive(Debug)]
#[repr(C)]
pub struct PerCpu {
    /// `gs:[0]`: the block's own address, once installed (0 before).
    self_ptr: AtomicUsize,
    /// `gs:[8]`: the CPU index (lwkt's `CpuId`).
    pub index: usize,
    /// `gs:[16]`: lwkt's per-CPU block for this CPU, once attached (null
    /// before), and `gs:[24]`: this CPU's local APIC id, once attached
    /// (lwkt-core's attach mechanism stores both: [`lwkt_core::attach`]).
    pub(crate) link: CpuLink,
    /// `gs:[32]`: whether [`time::start_timer`](crate::time::start_timer)
    /// set up this CPU's local APIC timer (`Arch::set_timer` checks it).
    timer: AtomicBool,
    /// `gs:[40]..`: the running thread's user-mode state
    /// ([`crate::usermode`]).
    pub(crate) user: crate::usermode::UserCpu,
}

impl PerCpu {
    /// A block for CPU `index`, not yet installed.
    pub const fn new(index: usize) -> PerCpu {
        PerCpu {
            self_ptr: AtomicUsize::new(0),
            index,
            link: CpuLink::new(),
            timer: AtomicBool::new(false),
            user: crate::usermode::UserCpu::new(),
        }
    }

    /// The lwkt CPU block this CPU runs, once
    /// [`attach`](crate::X86Arch::attach)ed.
    pub fn cpu(&self) -> Option<&'static Cpu> {
        self.link.cpu()
    }

    /// This CPU's local APIC id, once [`attach`](crate::X86Arch::attach)
    /// recorded it.
    pub fn apic_id(&self) -> Option<u32> {
        self.link.dest().map(|d| d as u32)
    }

    /// Whether [`time::start_timer`](crate::time::start_timer) set up
    /// this CPU's local APIC timer.
    pub fn timer_started(&self) -> bool {
        self.timer.load(Ordering::Acquire)
    }

    pub(crate) fn set_timer_started(&self) {
        self.timer.store(true, Ordering::Release);
    }

    /// Whether [`install`] put this block in some CPU's GS.
    pub fn is_installed(&self) -> bool {
        self.self_ptr.load(Ordering::Acquire) != 0
    }
}

/// Make `p` this CPU's GS base: `IA32_GS_BASE = 0`,
/// `IA32_KERNEL_GS_BASE = p`, then `swapgs`. DragonFly: `init_secondary()`
/// writing `MSR_GSBASE`.
///
/// # Safety
/// Ring 0, once per CPU, before anything on this CPU reads [`current`] or
/// calls into an [`X86Arch`](crate::X86Arch); `p` becomes this CPU's
/// block for good; interrupts are off (a handler reading GS mid-way would
/// see the wrong base); nothing reloads the GS selector afterwards.
///
/// # Panics
/// If `p` was installed already (on this CPU or another: one block per
/// CPU), before touching any MSR.
///
/// ```no_run
/// use lwkt_arch_x86_64::percpu::{self, PerCpu};
/// static PCPU: PerCpu = PerCpu::new(0);
/// // SAFETY: ring 0, interrupts off, this CPU's first and only install.
/// unsafe { percpu::install(&PCPU) };
/// // SAFETY: installed just above, on this CPU.
/// assert!(core::ptr::eq(unsafe { percpu::current() }, &PCPU));
/// ```
pub unsafe fn install(p: &'static PerCpu) {
    let addr = p as *const PerCpu as usize;
    let r = p
        .self_ptr
        .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire);
    assert!(
        r.is_ok(),
        "lwkt-arch-x86_64: the PerCpu block of CPU {} is installed already \
         (one block per CPU)",
        p.index
    );
    // SAFETY: caller (ring 0, interrupts off, this CPU's own MSRs).
    unsafe {
        crate::apic::wrmsr(MSR_GS_BASE, 0);
        crate::apic::wrmsr(MSR_KERNEL_GS_BASE, addr as u64);
        swapgs();
    }
}

/// Exchange `IA32_GS_BASE` and `IA32_KERNEL_GS_BASE`: on entry from user
/// mode and right before returning to it.
///
/// # Safety
/// Ring 0, interrupts off, and exactly where the kernel/user GS
/// discipline says a swap belongs (see the module docs).
///
/// ```compile_fail,E0133
/// lwkt_arch_x86_64::percpu::swapgs();
/// ```
#[inline(always)]
pub unsafe fn swapgs() {
    // SAFETY: caller.
    unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
}

/// This CPU's block (from `gs:[0]`).
///
/// `X86Arch`'s safe `current_cpu` calls it under the promise its
/// `unsafe` constructor [`X86Arch::new`](crate::X86Arch::new) carries.
///
/// # Safety
/// [`install`] ran on this CPU, and GS holds the kernel base (not between
/// an entry from user mode and its `swapgs`; see the module docs on NMIs).
/// Otherwise `gs:[0]` is whatever lies at the GS base (address 0 before
/// `install`): a wild pointer, or a fault (in a hosted program, SIGSEGV).
///
/// ```compile_fail,E0133
/// // Reads GS: outside a CPU that installed its block, wild memory.
/// let _ = lwkt_arch_x86_64::percpu::current();
/// ```
#[inline(always)]
pub unsafe fn current() -> &'static PerCpu {
    let p: usize;
    // SAFETY: GS holds an installed block (caller): a load of its first
    // word.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `install` stored the block's own 'static address there.
    unsafe { &*(p as *const PerCpu) }
}

/// The CPU index (`gs:[8]`), read without going through the block pointer.
///
/// # Safety
/// As for [`current`].
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::percpu::current_index();
/// ```
#[inline(always)]
pub unsafe fn current_index() -> usize {
    let i: usize;
    // SAFETY: as for `current` (caller).
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) i, options(nostack, readonly, preserves_flags))
    };
    i
}

/// `(IA32_GS_BASE, IA32_KERNEL_GS_BASE)` as the MSRs hold them, to check an
/// installation, or to find the block from a handler that cannot trust GS
/// (an NMI, a fault before [`install`]) by comparing with the kernel's
/// blocks.
///
/// # Safety
/// Ring 0 (`rdmsr` faults elsewhere).
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::percpu::bases();
/// ```
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
        assert_eq!(core::mem::offset_of!(PerCpu, link), 16);
        assert_eq!(core::mem::size_of::<CpuLink>(), 16);
        assert_eq!(core::mem::offset_of!(PerCpu, timer), 32);
        assert_eq!(core::mem::offset_of!(PerCpu, user), 40);
    }
}
