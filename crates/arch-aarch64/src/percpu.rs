//! Per-CPU data through `TPIDR_EL1`.
//!
//! Each CPU's [`PerCpu`] block is pointed to by its `TPIDR_EL1`, a
//! register only EL1 and up can read or write: [`current`] is one `mrs`,
//! with no window like x86-64's `swapgs` (user code has its own
//! `TPIDR_EL0`, which the kernel never touches here).
//!
//! DragonFly: `struct mdglobaldata` (`mycpu`), which the DragonFly arm64
//! port never got; on x86-64 it is `%gs:0`.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aarch64_cpu::registers::{Readable, Writeable, TPIDR_EL1};
use lwkt_core::{Cpu, CpuLink};

/// One CPU's block, pointed to by its `TPIDR_EL1`.
///
/// Made with [`PerCpu::new`] (safe: a block that is not installed is
/// inert), put in `TPIDR_EL1` by [`install`] (`unsafe`), bound to lwkt's
/// [`Cpu`] by [`A64Arch::attach`](crate::A64Arch::attach) (`unsafe`, and
/// checked: each block names one `Cpu` and each `Cpu` one block).
/// DragonFly: `struct mdglobaldata`.
#[derive(Debug)]
#[repr(C)]
pub struct PerCpu {
    /// The CPU index (lwkt's `CpuId`).
    pub index: usize,
    /// The block's own address once installed (0 before).
    installed: AtomicUsize,
    /// lwkt's per-CPU block for this CPU and this CPU's affinity
    /// (`MPIDR_EL1` Aff3..Aff0), once attached (lwkt-core's attach
    /// mechanism stores both: [`lwkt_core::attach`]).
    pub(crate) link: CpuLink,
    /// Whether [`time::start_timer`](crate::time::start_timer) set up this
    /// CPU's virtual timer.
    timer: AtomicBool,
}

impl PerCpu {
    /// A block for CPU `index`, not yet installed.
    pub const fn new(index: usize) -> PerCpu {
        PerCpu {
            index,
            installed: AtomicUsize::new(0),
            link: CpuLink::new(),
            timer: AtomicBool::new(false),
        }
    }

    /// The lwkt CPU block this CPU runs, once
    /// [`attach`](crate::A64Arch::attach)ed.
    pub fn cpu(&self) -> Option<&'static Cpu> {
        self.link.cpu()
    }

    /// This CPU's affinity (the `MPIDR_EL1` affinity fields, which GICv3
    /// SGIs and PSCI address), once attached.
    pub fn mpidr(&self) -> Option<u64> {
        self.link.dest().map(|d| d as u64)
    }

    /// Whether [`time::start_timer`](crate::time::start_timer) set up this
    /// CPU's virtual timer.
    pub fn timer_started(&self) -> bool {
        self.timer.load(Ordering::Acquire)
    }

    pub(crate) fn set_timer_started(&self) {
        self.timer.store(true, Ordering::Release);
    }

    /// Whether [`install`] put this block in some CPU's `TPIDR_EL1`.
    pub fn is_installed(&self) -> bool {
        self.installed.load(Ordering::Acquire) != 0
    }
}

/// Make `p` this CPU's block: `TPIDR_EL1 = p`.
///
/// # Safety
/// EL1, once per CPU, before anything on this CPU reads [`current`] or
/// calls into an [`A64Arch`](crate::A64Arch); nothing else writes
/// `TPIDR_EL1` afterwards.
///
/// # Panics
/// If `p` was installed already (one block per CPU), before touching the
/// register.
pub unsafe fn install(p: &'static PerCpu) {
    let addr = p as *const PerCpu as usize;
    let r = p
        .installed
        .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire);
    assert!(
        r.is_ok(),
        "lwkt-arch-aarch64: the PerCpu block of CPU {} is installed already (one block per CPU)",
        p.index
    );
    TPIDR_EL1.set(addr as u64);
}

/// The raw `TPIDR_EL1` of this CPU: 0 before [`install`] on a CPU the
/// kernel cleared it on (the test kernel's boot code does), to find the
/// block from a handler that cannot trust it.
pub fn raw() -> u64 {
    TPIDR_EL1.get()
}

/// This CPU's block.
///
/// # Safety
/// [`install`] ran on this CPU (otherwise `TPIDR_EL1` holds whatever it
/// held at reset: a wild pointer).
#[inline(always)]
pub unsafe fn current() -> &'static PerCpu {
    let p = TPIDR_EL1.get() as *const PerCpu;
    // SAFETY: caller: `install` stored a `&'static PerCpu` there.
    unsafe { &*p }
}

/// This CPU's affinity, from `MPIDR_EL1`: Aff3 (bits 39:32) and Aff2..Aff0
/// (bits 23:0), the fields GICv3 SGIs and PSCI `CPU_ON` address.
pub fn mpidr_affinity() -> u64 {
    use aarch64_cpu::registers::MPIDR_EL1;
    MPIDR_EL1.get() & 0xff_00ff_ffff
}
