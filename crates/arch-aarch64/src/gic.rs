//! The GICv3 driver lwkt needs: the distributor and each CPU's
//! redistributor set up, the CPU interface through its system registers,
//! SGIs sent with `ICC_SGI1R_EL1`, acknowledge and end of interrupt.
//!
//! Interrupt ids this backend owns (all group 1, non-secure):
//!
//! - SGI [`IPI_SGI`] (0): lwkt's IPI ([`lwkt_core::Arch::kick`]);
//! - SGIs [`DEVICE_SGI_BASE`].. (8–15): device lines 0–7 sent by one CPU
//!   to another, as x86-64's device vectors sent as fixed IPIs;
//! - PPI [`TIMER_PPI`] (27): the EL1 virtual timer, each CPU's one-shot
//!   timer ([`crate::time`]);
//! - SPIs [`DEVICE_SPI_BASE`].. (128–191): device lines 0–63, for a
//!   device the kernel routes to a CPU ([`route_spi`]).
//!
//! Every other id (SGIs 1–7, other PPIs, other SPIs) goes to the kernel's
//! handler ([`crate::vectors::set_irq_handler`]).
//!
//! Written here rather than taken from the `arm-gic` crate: lwkt needs a
//! handful of operations callable from any CPU through shared statics
//! (an SGI from `Arch::kick`, which has `&self` only), and `arm-gic`'s
//! driver is an owned object wrapping MMIO pointers, meant to be held by
//! one owner; the few registers below are all this backend touches.
//!
//! DragonFly has no GICv3 driver (no arm64 port); the x86-64 analogue is
//! `lapic.c`'s `single_apic_ipi()` and `lapic_init()`.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::regs;

/// The SGI lwkt's IPI uses.
pub const IPI_SGI: u32 = 0;
/// The first SGI of device lines 0–7 ([`device_sgi`]).
pub const DEVICE_SGI_BASE: u32 = 8;
/// The EL1 virtual timer's PPI.
pub const TIMER_PPI: u32 = 27;
/// The first SPI of device lines 0–63 ([`device_spi`]).
pub const DEVICE_SPI_BASE: u32 = 128;
/// Device lines with an SPI: one per lwkt-core interrupt line.
pub const DEVICE_SPIS: u32 = 64;
/// Device lines that can also be sent as an SGI.
pub const DEVICE_SGIS: u32 = 8;

const _: () = assert!(DEVICE_SPIS as usize == lwkt_core::intr::MAX_IRQS);

/// The SGI that raises device line `irq` on the CPU it is sent to, or
/// `None` for lines 8 and up (they have an SPI only).
pub const fn device_sgi(irq: usize) -> Option<u32> {
    if irq < DEVICE_SGIS as usize {
        Some(DEVICE_SGI_BASE + irq as u32)
    } else {
        None
    }
}

/// The SPI of device line `irq`, or `None` past lwkt-core's lines.
pub const fn device_spi(irq: usize) -> Option<u32> {
    if irq < DEVICE_SPIS as usize {
        Some(DEVICE_SPI_BASE + irq as u32)
    } else {
        None
    }
}

/// Most redistributor regions [`init_distributor`] takes (QEMU virt has
/// two with more than 123 CPUs: 123 redistributors below 256 MiB and 512
/// more at 256 GiB).
pub const MAX_REDIST_REGIONS: usize = 4;

static GICD: AtomicUsize = AtomicUsize::new(0);
/// The redistributor regions, in the device tree's order; 0 past the last.
static GICR: [AtomicUsize; MAX_REDIST_REGIONS] =
    [const { AtomicUsize::new(0) }; MAX_REDIST_REGIONS];

// Distributor registers.
const GICD_CTLR: usize = 0x0000;
const GICD_TYPER: usize = 0x0004;
const GICD_IGROUPR: usize = 0x0080;
const GICD_ISENABLER: usize = 0x0100;
const GICD_ICENABLER: usize = 0x0180;
const GICD_ISPENDR: usize = 0x0200;
const GICD_IPRIORITYR: usize = 0x0400;
const GICD_ICFGR: usize = 0x0C00;
const GICD_IROUTER: usize = 0x6000;
const CTLR_RWP: u32 = 1 << 31;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_ENABLE_G1: u32 = 1 << 1;

// Redistributor registers (RD frame, then the SGI frame 64 KiB above).
const GICR_TYPER: usize = 0x0008;
const GICR_WAKER: usize = 0x0014;
const GICR_FRAME: usize = 0x2_0000;
const SGI_BASE: usize = 0x1_0000;
const GICR_IGROUPR0: usize = SGI_BASE + 0x0080;
const GICR_ISENABLER0: usize = SGI_BASE + 0x0100;
const GICR_IPRIORITYR: usize = SGI_BASE + 0x0400;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// The priority of every interrupt this backend enables (all equal: no
/// interrupt preempts another's handler, which runs with IRQs masked).
const PRIORITY: u8 = 0x80;

/// Why a CPU's redistributor could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicError {
    /// [`init_distributor`] has not run.
    NoDistributor,
    /// No redistributor in the regions has this CPU's affinity.
    NoRedistributor {
        /// The affinity looked for (`GICR_TYPER` bits 63:32 form).
        affinity: u32,
    },
    /// The redistributor did not wake up.
    RedistributorAsleep,
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GicError::NoDistributor => f.write_str("GICv3: init_cpu before init_distributor"),
            GicError::NoRedistributor { affinity } => {
                write!(f, "GICv3: no redistributor for affinity {affinity:#x}")
            }
            GicError::RedistributorAsleep => f.write_str("GICv3: the redistributor stays asleep"),
        }
    }
}

/// # Safety
/// `base + off` is a mapped GIC register.
unsafe fn r32(base: usize, off: usize) -> u32 {
    // SAFETY: caller.
    unsafe { ((base + off) as *const u32).read_volatile() }
}

/// # Safety
/// `base + off` is a mapped GIC register the caller may write.
unsafe fn w32(base: usize, off: usize, v: u32) {
    // SAFETY: caller.
    unsafe { ((base + off) as *mut u32).write_volatile(v) }
}

/// # Safety
/// As for [`w32`].
unsafe fn w8(base: usize, off: usize, v: u8) {
    // SAFETY: caller.
    unsafe { ((base + off) as *mut u8).write_volatile(v) }
}

/// # Safety
/// As for [`r32`].
unsafe fn r64(base: usize, off: usize) -> u64 {
    // SAFETY: caller.
    unsafe { ((base + off) as *const u64).read_volatile() }
}

/// # Safety
/// As for [`w32`].
unsafe fn w64(base: usize, off: usize, v: u64) {
    // SAFETY: caller.
    unsafe { ((base + off) as *mut u64).write_volatile(v) }
}

fn wait_rwp(gicd: usize) {
    // SAFETY: `gicd` is the distributor `init_distributor` was given.
    while unsafe { r32(gicd, GICD_CTLR) } & CTLR_RWP != 0 {
        core::hint::spin_loop();
    }
}

/// Set up the distributor at `gicd` (QEMU virt: `0x0800_0000`) and
/// remember the redistributor regions at `gicr` (QEMU virt:
/// `0x080A_0000`, and `0x40_0000_0000` with more than 123 CPUs; the
/// device tree's GICv3 node lists them after the distributor): affinity
/// routing on, group 1 enabled, every SPI in group 1 and disabled, the
/// device-line SPIs edge-triggered at one priority. DragonFly:
/// `lapic_init()`'s boot-CPU half.
///
/// # Safety
/// EL1 on the boot CPU, once, before any CPU calls [`init_cpu`]; the
/// distributor and every region are the GICv3's, mapped as device memory,
/// and used by nothing else.
///
/// # Panics
/// If `gicr` is empty, or longer than [`MAX_REDIST_REGIONS`], or holds a
/// 0; before anything is written.
pub unsafe fn init_distributor(gicd: usize, gicr: &[usize]) {
    assert!(
        !gicr.is_empty() && gicr.len() <= MAX_REDIST_REGIONS && !gicr.contains(&0),
        "lwkt-arch-aarch64: init_distributor: {} redistributor regions {gicr:x?} \
         (1 to {MAX_REDIST_REGIONS}, none at 0)",
        gicr.len()
    );
    // SAFETY: caller: the distributor's registers.
    unsafe {
        w32(gicd, GICD_CTLR, 0);
        wait_rwp(gicd);
        let lines = ((r32(gicd, GICD_TYPER) & 0x1f) as usize + 1) * 32;
        for n in 1..lines / 32 {
            w32(gicd, GICD_ICENABLER + 4 * n, u32::MAX);
            w32(gicd, GICD_IGROUPR + 4 * n, u32::MAX);
        }
        for id in 32..lines {
            w8(gicd, GICD_IPRIORITYR + id, PRIORITY);
        }
        for id in DEVICE_SPI_BASE as usize..(DEVICE_SPI_BASE + DEVICE_SPIS) as usize {
            if id < lines {
                let (reg, shift) = (GICD_ICFGR + 4 * (id / 16), 2 * (id % 16));
                let v = r32(gicd, reg);
                w32(gicd, reg, v | (0b10 << shift));
            }
        }
        wait_rwp(gicd);
        w32(gicd, GICD_CTLR, CTLR_ARE);
        wait_rwp(gicd);
        w32(gicd, GICD_CTLR, CTLR_ARE | CTLR_ENABLE_G1);
        wait_rwp(gicd);
    }
    for (slot, &region) in GICR.iter().zip(gicr) {
        slot.store(region, Ordering::Relaxed);
    }
    // Release: a CPU that sees the distributor sees the regions.
    GICD.store(gicd, Ordering::Release);
}

/// The affinity of this CPU in `GICR_TYPER`'s form (Aff3.Aff2.Aff1.Aff0).
fn typer_affinity(mpidr: u64) -> u32 {
    ((mpidr >> 8) & 0xff00_0000) as u32 | (mpidr & 0xff_ffff) as u32
}

/// The redistributor with affinity `want` (`GICR_TYPER`'s form) in the
/// region at `region`, walked frame by frame up to the one marked last.
///
/// # Safety
/// `region` is a redistributor region of the GICv3, mapped as device
/// memory.
unsafe fn find_redistributor(region: usize, want: u32) -> Option<usize> {
    let mut rd = region;
    loop {
        // SAFETY: caller: a frame of the region (the walk stops at the
        // frame marked last).
        let typer = unsafe { r64(rd, GICR_TYPER) };
        if (typer >> 32) as u32 == want {
            return Some(rd);
        }
        if typer & (1 << 4) != 0 {
            return None;
        }
        // GICv4 redistributors with virtual LPIs (`VLPIS`) have two more
        // 64 KiB frames.
        rd += if typer & (1 << 1) != 0 {
            2 * GICR_FRAME
        } else {
            GICR_FRAME
        };
    }
}

/// Set up this CPU's redistributor and CPU interface: wake the
/// redistributor, put SGIs and PPIs in group 1, enable SGIs 0–15 and the
/// timer PPI, enable the system-register interface, priority mask open,
/// group 1 on. DragonFly: `lapic_init()` on each CPU.
///
/// # Safety
/// EL1 on this CPU, once, IRQs masked, after [`init_distributor`]; the
/// CPU's vector table (with the IRQ entry) is installed before IRQs are
/// unmasked.
pub unsafe fn init_cpu() -> Result<(), GicError> {
    if GICD.load(Ordering::Acquire) == 0 {
        return Err(GicError::NoDistributor);
    }
    let want = typer_affinity(crate::percpu::mpidr_affinity());
    let rd = GICR
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .take_while(|&r| r != 0)
        // SAFETY: caller: each region is the GICv3's (`init_distributor`).
        .find_map(|region| unsafe { find_redistributor(region, want) })
        .ok_or(GicError::NoRedistributor { affinity: want })?;
    // SAFETY: caller; `rd` is this CPU's redistributor (its affinity).
    unsafe {
        let w = r32(rd, GICR_WAKER);
        w32(rd, GICR_WAKER, w & !WAKER_PROCESSOR_SLEEP);
        let mut spins = 0u32;
        while r32(rd, GICR_WAKER) & WAKER_CHILDREN_ASLEEP != 0 {
            spins += 1;
            if spins > 10_000_000 {
                return Err(GicError::RedistributorAsleep);
            }
            core::hint::spin_loop();
        }
        w32(rd, GICR_IGROUPR0, u32::MAX);
        for id in 0..32 {
            w8(rd, GICR_IPRIORITYR + id, PRIORITY);
        }
        w32(rd, GICR_ISENABLER0, 0xffff | (1 << TIMER_PPI));
        regs::icc_enable();
    }
    Ok(())
}

/// Whether [`init_cpu`] enabled this CPU's GIC interface.
///
/// # Safety
/// EL1.
pub unsafe fn cpu_ready() -> bool {
    // SAFETY: caller.
    unsafe { regs::icc_enabled() }
}

/// Send SGI `intid` (0–15) to the CPU with affinity `mpidr`.
/// A `dsb ishst` first, so that what this CPU wrote is visible to the
/// target's handler. DragonFly: `single_apic_ipi()`.
///
/// # Safety
/// EL1, on a CPU that ran [`init_cpu`]; the target's handler for the SGI
/// may run (for [`IPI_SGI`]: the target has installed its `PerCpu`).
pub unsafe fn send_sgi(intid: u32, mpidr: u64) {
    // SAFETY: caller.
    unsafe { regs::icc_sgi1r(crate::enc::sgi1r(intid, mpidr)) }
}

/// Send SGI `intid` to every CPU but this one (`IRM` = 1).
///
/// # Safety
/// As for [`send_sgi`], for every other CPU.
pub unsafe fn send_sgi_all_others(intid: u32) {
    // SAFETY: caller.
    unsafe { regs::icc_sgi1r(crate::enc::sgi1r_all_others(intid)) }
}

/// Acknowledge the highest-priority pending interrupt: its id, or 1023
/// (spurious: nothing pending).
///
/// # Safety
/// EL1, from this CPU's IRQ entry (an acknowledged interrupt must be ended
/// with [`eoi`]).
pub unsafe fn ack() -> u32 {
    // SAFETY: caller.
    unsafe { regs::icc_iar1() }
}

/// End interrupt `intid` (priority drop and deactivation: `EOImode` 0).
///
/// # Safety
/// EL1; `intid` was acknowledged on this CPU with [`ack`] and not ended.
pub unsafe fn eoi(intid: u32) {
    // SAFETY: caller.
    unsafe { regs::icc_eoir1(intid) }
}

/// Route SPI `intid` (32 and up) to the CPU with affinity `mpidr` and
/// enable it. For a device's own SPI, or a device line's
/// ([`device_spi`]).
///
/// # Safety
/// After [`init_distributor`]; the SPI's handler may run on that CPU.
pub unsafe fn route_spi(intid: u32, mpidr: u64) {
    let gicd = GICD.load(Ordering::Acquire);
    assert!(
        gicd != 0 && intid >= 32,
        "lwkt-arch-aarch64: route_spi({intid})"
    );
    let id = intid as usize;
    // SAFETY: caller: the distributor's registers for this SPI.
    unsafe {
        w64(gicd, GICD_IROUTER + 8 * id, mpidr & 0xff_00ff_ffff);
        w32(gicd, GICD_ISENABLER + 4 * (id / 32), 1 << (id % 32));
    }
}

/// Make SPI `intid` pending, as its device would (a test's stand-in for
/// a device: it arrives on the CPU the SPI is routed to).
///
/// # Safety
/// After [`init_distributor`]; the SPI's handler may run.
pub unsafe fn set_spi_pending(intid: u32) {
    let gicd = GICD.load(Ordering::Acquire);
    assert!(
        gicd != 0 && intid >= 32,
        "lwkt-arch-aarch64: set_spi_pending({intid})"
    );
    let id = intid as usize;
    // SAFETY: caller.
    unsafe { w32(gicd, GICD_ISPENDR + 4 * (id / 32), 1 << (id % 32)) };
}
