//! The local APIC, in xAPIC (MMIO) or x2APIC (MSR) mode, chosen at run
//! time: enable, EOI, inter-processor interrupts, and the timer
//! (one-shot or TSC-deadline; [`crate::time`] drives it).
//!
//! Written here rather than taken from the `x2apic` crate: lwkt needs
//! exactly fixed IPIs to one APIC id, the INIT/SIPI broadcast, EOI and the
//! spurious vector, with the xAPIC ICR written high-then-low with
//! interrupts off in between (a handler that sends an IPI between the two
//! stores would redirect the interrupted one), and the encodings testable
//! on the host. That is the 150 lines below.
//!
//! IPIs carry no count: two with the same vector coalesce into one IRR bit,
//! so lwkt never counts them; queued work lives in lwkt-core's IPI rings.
//!
//! DragonFly: `sys/platform/pc64/apic/lapic.c` (`lapic_init()`,
//! `single_apic_ipi()`, `apic_ipi()`).

use core::sync::atomic::{AtomicU8, Ordering};

/// xAPIC MMIO base (IA32_APIC_BASE's default).
pub const XAPIC_BASE: usize = 0xFEE0_0000;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;

/// xAPIC register offsets.
mod xreg {
    pub(super) const ID: usize = 0x20;
    pub(super) const TPR: usize = 0x80;
    pub(super) const EOI: usize = 0xB0;
    pub(super) const SVR: usize = 0xF0;
    pub(super) const ICR_LOW: usize = 0x300;
    pub(super) const ICR_HIGH: usize = 0x310;
    pub(super) const LVT_LINT1: usize = 0x360;
    pub(super) const LVT_TIMER: usize = 0x320;
    pub(super) const TIMER_INITIAL: usize = 0x380;
    pub(super) const TIMER_CURRENT: usize = 0x390;
    pub(super) const TIMER_DIVIDE: usize = 0x3E0;
}

/// x2APIC MSRs.
mod x2reg {
    pub(super) const ID: u32 = 0x802;
    pub(super) const TPR: u32 = 0x808;
    pub(super) const EOI: u32 = 0x80B;
    pub(super) const SVR: u32 = 0x80F;
    pub(super) const ICR: u32 = 0x830;
    pub(super) const LVT_LINT1: u32 = 0x835;
    pub(super) const LVT_TIMER: u32 = 0x832;
    pub(super) const TIMER_INITIAL: u32 = 0x838;
    pub(super) const TIMER_CURRENT: u32 = 0x839;
    pub(super) const TIMER_DIVIDE: u32 = 0x83E;
}

/// IA32_TSC_DEADLINE: in TSC-deadline mode the local APIC timer fires
/// when the TSC reaches the value written here (0 disarms it).
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;

/// ICR delivery modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Delivery {
    /// Deliver the vector.
    Fixed = 0,
    /// An NMI (the vector is ignored).
    Nmi = 4,
    /// INIT.
    Init = 5,
    /// Start-up (SIPI): the vector is the 4 KiB page of the AP's entry.
    Startup = 6,
}

/// ICR destination shorthands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Shorthand {
    /// The destination field names the target.
    None = 0,
    /// The sending CPU.
    SelfOnly = 1,
    /// Every CPU.
    All = 2,
    /// Every CPU but the sender.
    AllButSelf = 3,
}

/// An interrupt command, encodable for either APIC mode.
///
/// ```
/// use lwkt_arch_x86_64::apic::Icr;
/// assert_eq!(Icr::init_all_but_self().xapic_low(), 0x000C_4500);
/// assert_eq!(Icr::startup_all_but_self(0x08).xapic_low(), 0x000C_4608);
/// let ipi = Icr::fixed(0x40, 3);
/// assert_eq!((ipi.xapic_low(), ipi.xapic_high()), (0x4040, 3 << 24));
/// assert_eq!(ipi.x2apic(), (3u64 << 32) | 0x4040);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icr {
    /// Vector (or SIPI page).
    pub vector: u8,
    /// Delivery mode.
    pub delivery: Delivery,
    /// Level bit: assert (set for everything lwkt sends).
    pub assert: bool,
    /// Destination shorthand.
    pub shorthand: Shorthand,
    /// Destination APIC id, when `shorthand` is `None`.
    pub dest: u32,
}

impl Icr {
    /// A fixed interrupt with `vector` to the CPU with APIC id `dest`.
    pub const fn fixed(vector: u8, dest: u32) -> Icr {
        Icr {
            vector,
            delivery: Delivery::Fixed,
            assert: true,
            shorthand: Shorthand::None,
            dest,
        }
    }

    /// An NMI to the CPU with APIC id `dest` (the user-mode tests' NMIs).
    ///
    /// ```
    /// use lwkt_arch_x86_64::apic::Icr;
    /// assert_eq!(Icr::nmi(2).xapic_low(), 0x4400);
    /// ```
    pub const fn nmi(dest: u32) -> Icr {
        Icr {
            vector: 0,
            delivery: Delivery::Nmi,
            assert: true,
            shorthand: Shorthand::None,
            dest,
        }
    }

    /// INIT to every other CPU.
    pub const fn init_all_but_self() -> Icr {
        Icr {
            vector: 0,
            delivery: Delivery::Init,
            assert: true,
            shorthand: Shorthand::AllButSelf,
            dest: 0,
        }
    }

    /// Start-up to every other CPU at physical page `page` (entry at
    /// `page << 12`).
    pub const fn startup_all_but_self(page: u8) -> Icr {
        Icr {
            vector: page,
            delivery: Delivery::Startup,
            assert: true,
            shorthand: Shorthand::AllButSelf,
            dest: 0,
        }
    }

    /// The low ICR word (both modes share it).
    pub const fn xapic_low(self) -> u32 {
        self.vector as u32
            | (self.delivery as u32) << 8
            | (self.assert as u32) << 14
            | (self.shorthand as u32) << 18
    }

    /// The xAPIC high ICR word: the 8-bit destination in bits 31:24.
    pub const fn xapic_high(self) -> u32 {
        (self.dest & 0xFF) << 24
    }

    /// The x2APIC ICR MSR value: the 32-bit destination in bits 63:32.
    pub const fn x2apic(self) -> u64 {
        (self.dest as u64) << 32 | self.xapic_low() as u64
    }
}

/// Which interface the local APICs are driven through (the same on every
/// CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Memory-mapped at [`XAPIC_BASE`].
    XApic,
    /// MSRs (CPUID.1:ECX bit 21).
    X2Apic,
}

const MODE_UNSET: u8 = 0;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// Whether the CPU has x2APIC (CPUID.1:ECX bit 21).
pub fn has_x2apic() -> bool {
    raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_x2apic())
}

/// Whether the local APIC timer has TSC-deadline mode (CPUID.1:ECX bit
/// 24).
pub fn has_tsc_deadline() -> bool {
    raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_tsc_deadline())
}

/// The mode chosen by [`enable`], if any CPU has enabled its APIC.
pub fn mode() -> Option<Mode> {
    match MODE.load(Ordering::Acquire) {
        1 => Some(Mode::XApic),
        2 => Some(Mode::X2Apic),
        _ => None,
    }
}

/// IA32_APIC_BASE bit 11: the APIC is enabled.
const BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bit 10: x2APIC mode.
const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bits 12 and up: the xAPIC page's physical address.
const BASE_ADDR: u64 = !0xFFF & ((1 << 52) - 1);

/// Enable this CPU's local APIC in `mode` with spurious vector
/// `spurious` and task priority 0. The first call fixes the mode for
/// every CPU. DragonFly: `lapic_init()`.
///
/// Checked before anything is written: the mode is the first CPU's; for
/// xAPIC, the firmware has not put this APIC in x2APIC mode already
/// (leaving it takes a disable, which this does not do) nor moved its page
/// from [`XAPIC_BASE`].
///
/// # Safety
/// Ring 0; `mode` is supported (x2APIC only if [`has_x2apic`]); in xAPIC
/// mode [`XAPIC_BASE`] is mapped uncached at its physical address.
///
/// # Panics
/// If a check above fails.
///
/// ```compile_fail,E0133
/// use lwkt_arch_x86_64::apic::{self, Mode};
/// apic::enable(Mode::XApic, 0xFF);
/// ```
pub unsafe fn enable(mode: Mode, spurious: u8) {
    let m = match mode {
        Mode::XApic => 1,
        Mode::X2Apic => 2,
    };
    // SAFETY: ring 0 (caller); IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(MSR_APIC_BASE) };
    if mode == Mode::XApic {
        assert!(
            base & BASE_EXTD == 0,
            "lwkt-arch-x86_64: this local APIC is in x2APIC mode already (the firmware \
             enabled it): use Mode::X2Apic"
        );
        assert!(
            base & BASE_ADDR == XAPIC_BASE as u64,
            "lwkt-arch-x86_64: this local APIC's xAPIC page is at {:#x}, not {XAPIC_BASE:#x}",
            base & BASE_ADDR
        );
    }
    if let Err(prev) = MODE.compare_exchange(MODE_UNSET, m, Ordering::AcqRel, Ordering::Acquire) {
        assert_eq!(
            prev, m,
            "lwkt-arch-x86_64: every CPU must use the same APIC mode"
        );
    }
    // SAFETY: ring 0 (caller); every access below is to this CPU's own
    // APIC (its MSRs, or the xAPIC page the caller mapped, checked above
    // to be where this APIC decodes it).
    unsafe {
        match mode {
            Mode::XApic => {
                wrmsr(MSR_APIC_BASE, base | BASE_EN);
                xwrite(xreg::TPR, 0);
                xwrite(xreg::SVR, 0x100 | u32::from(spurious));
            }
            Mode::X2Apic => {
                wrmsr(MSR_APIC_BASE, base | BASE_EN | BASE_EXTD);
                wrmsr(x2reg::TPR, 0);
                wrmsr(x2reg::SVR, 0x100 | u64::from(spurious));
            }
        }
    }
}

/// The mode this CPU's local APIC is in, as IA32_APIC_BASE says (`None`:
/// disabled). [`X86Arch::attach`](crate::X86Arch::attach) checks it against
/// [`mode`]: every CPU that sends kicks then writes its ICR in the mode its
/// APIC decodes.
///
/// # Safety
/// Ring 0 (`rdmsr` faults elsewhere).
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::apic::mode_here();
/// ```
pub unsafe fn mode_here() -> Option<Mode> {
    // SAFETY: caller; IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(MSR_APIC_BASE) };
    match (base & BASE_EN != 0, base & BASE_EXTD != 0) {
        (false, _) => None,
        (true, false) => Some(Mode::XApic),
        (true, true) => Some(Mode::X2Apic),
    }
}

/// Deliver this CPU's LINT1 pin as an NMI (it is masked at reset). That
/// is how a chipset's NMI reaches the CPUs, and how QEMU's monitor command
/// `nmi` does; a test kernel's NMI handler can then report a hang.
/// DragonFly: `lapic_init()` programs `LVT_LINT1` for NMI (on the BSP).
///
/// # Safety
/// Ring 0, after [`enable`] on this CPU; the kernel has an NMI (vector 2)
/// handler.
pub unsafe fn lint1_as_nmi() {
    /// Delivery mode NMI, edge triggered, not masked.
    const NMI: u32 = 0b100 << 8;
    // SAFETY: caller (ring 0, this CPU's APIC enabled).
    unsafe {
        match current_mode() {
            Mode::XApic => xwrite(xreg::LVT_LINT1, NMI),
            Mode::X2Apic => wrmsr(x2reg::LVT_LINT1, u64::from(NMI)),
        }
    }
}

/// The local APIC timer's modes (LVT timer bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TimerMode {
    /// Counts the initial count down once, then interrupts.
    OneShot = 0,
    /// Counts down, interrupts and starts over.
    Periodic = 1,
    /// Interrupts when the TSC reaches `IA32_TSC_DEADLINE` (CPUID.1:ECX
    /// bit 24); the initial count is ignored.
    TscDeadline = 2,
}

/// The LVT timer entry for `vector` in `mode`, masked or not.
///
/// ```
/// use lwkt_arch_x86_64::apic::{lvt_timer, TimerMode};
/// assert_eq!(lvt_timer(0x41, TimerMode::OneShot, false), 0x41);
/// assert_eq!(lvt_timer(0x41, TimerMode::TscDeadline, false), 0x4_0041);
/// assert_eq!(lvt_timer(0x41, TimerMode::OneShot, true), 0x1_0041);
/// ```
pub const fn lvt_timer(vector: u8, mode: TimerMode, masked: bool) -> u32 {
    vector as u32 | (masked as u32) << 16 | (mode as u32) << 17
}

/// What the local APIC timer's counter is divided by: 16, as Linux and
/// DragonFly's default. At QEMU's 1 GHz APIC clock one count is 16 ns and
/// the longest one-shot about 68.7 s.
pub const TIMER_DIVISOR: u32 = 16;
/// The divide configuration register's value for [`TIMER_DIVISOR`]
/// (bits 3, 1:0 = 0b0011).
const TIMER_DIVIDE_16: u32 = 0b0011;

/// Program this CPU's local APIC timer: divide by [`TIMER_DIVISOR`], the
/// LVT entry for `vector` in `mode` (masked or not), counter stopped
/// (initial count 0). In TSC-deadline mode, a fence follows the LVT
/// write, which the SDM asks for before the first write of
/// [`MSR_TSC_DEADLINE`] (10.5.4.1). DragonFly: `lapic_timer_set_divisor()`
/// and the LVT set-up of `lapic_timer_intr_enable()`.
///
/// # Safety
/// Ring 0, after [`enable`] on this CPU; unmasked, `vector` has an IDT
/// handler that EOIs; [`TimerMode::TscDeadline`] only where CPUID.1:ECX
/// bit 24 says the APIC has it.
///
/// ```compile_fail,E0133
/// use lwkt_arch_x86_64::apic::{self, TimerMode};
/// apic::timer_setup(0x41, TimerMode::OneShot, true);
/// ```
pub unsafe fn timer_setup(vector: u8, mode: TimerMode, masked: bool) {
    let lvt = lvt_timer(vector, mode, masked);
    // SAFETY: caller (ring 0, this CPU's APIC enabled in `current_mode()`,
    // the vector handled, the mode offered).
    unsafe {
        match current_mode() {
            Mode::XApic => {
                xwrite(xreg::TIMER_INITIAL, 0);
                xwrite(xreg::TIMER_DIVIDE, TIMER_DIVIDE_16);
                xwrite(xreg::LVT_TIMER, lvt);
            }
            Mode::X2Apic => {
                wrmsr(x2reg::TIMER_INITIAL, 0);
                wrmsr(x2reg::TIMER_DIVIDE, u64::from(TIMER_DIVIDE_16));
                wrmsr(x2reg::LVT_TIMER, u64::from(lvt));
            }
        }
    }
    if mode == TimerMode::TscDeadline {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// Write the timer's initial count: in one-shot mode the timer counts it
/// down and interrupts once; 0 stops it. DragonFly:
/// `lapic_timer_oneshot_quick()`.
///
/// # Safety
/// Ring 0, after [`timer_setup`] on this CPU.
///
/// ```compile_fail,E0133
/// lwkt_arch_x86_64::apic::timer_count(1000);
/// ```
pub unsafe fn timer_count(count: u32) {
    // SAFETY: caller (this CPU's APIC, enabled in `current_mode()`).
    unsafe {
        match current_mode() {
            Mode::XApic => xwrite(xreg::TIMER_INITIAL, count),
            Mode::X2Apic => wrmsr(x2reg::TIMER_INITIAL, u64::from(count)),
        }
    }
}

/// The timer's current count (0 once a one-shot has run out).
///
/// # Safety
/// Ring 0, after [`enable`] on this CPU.
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::apic::timer_current();
/// ```
pub unsafe fn timer_current() -> u32 {
    // SAFETY: caller (this CPU's APIC, enabled in `current_mode()`).
    unsafe {
        match current_mode() {
            Mode::XApic => xread(xreg::TIMER_CURRENT),
            Mode::X2Apic => rdmsr(x2reg::TIMER_CURRENT) as u32,
        }
    }
}

/// Arm the TSC-deadline timer for TSC value `tsc` (0 disarms it; a value
/// already passed interrupts at once). DragonFly:
/// `lapic_timer_tscdeadline_quick()`.
///
/// # Safety
/// Ring 0, after [`timer_setup`] in [`TimerMode::TscDeadline`] on this
/// CPU (the MSR exists only where CPUID.1:ECX bit 24 says so).
///
/// ```compile_fail,E0133
/// lwkt_arch_x86_64::apic::timer_tsc_deadline(0);
/// ```
pub unsafe fn timer_tsc_deadline(tsc: u64) {
    // SAFETY: caller.
    unsafe { wrmsr(MSR_TSC_DEADLINE, tsc) }
}

fn current_mode() -> Mode {
    mode().expect("lwkt-arch-x86_64: the local APIC is not enabled yet")
}

/// This CPU's APIC id.
///
/// # Safety
/// Ring 0, after [`enable`] on this CPU: in x2APIC mode the read is an
/// `rdmsr` that faults unless this APIC is in x2APIC mode; in xAPIC mode
/// an MMIO read of [`XAPIC_BASE`], which [`enable`]'s contract maps.
/// ([`mode`] is global: it says which mode the first CPU chose, not that
/// this one has enabled its APIC.)
///
/// # Panics
/// If no CPU has enabled its APIC.
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::apic::id();
/// ```
pub unsafe fn id() -> u32 {
    // SAFETY: reads of this CPU's own APIC, enabled in `current_mode()`
    // (caller).
    unsafe {
        match current_mode() {
            Mode::XApic => xread(xreg::ID) >> 24,
            Mode::X2Apic => rdmsr(x2reg::ID) as u32,
        }
    }
}

/// Signal end of interrupt.
///
/// # Safety
/// Ring 0, from an interrupt handler of a fixed-vector interrupt.
pub unsafe fn eoi() {
    // SAFETY: caller; the write value is ignored by hardware.
    unsafe {
        match current_mode() {
            Mode::XApic => xwrite(xreg::EOI, 0),
            Mode::X2Apic => wrmsr(x2reg::EOI, 0),
        }
    }
}

/// Send `icr`, in the mode [`mode`] reports. In xAPIC mode the two ICR
/// stores happen with interrupts off and after the previous IPI has left
/// (delivery-status bit clear). DragonFly: `single_apic_ipi()`.
///
/// # Safety
/// Ring 0; this CPU's APIC was enabled with [`enable`] (so it decodes the
/// mode [`mode`] reports: an x2APIC ICR write to an APIC in xAPIC mode
/// faults, an xAPIC one to an x2APIC is lost); not from an NMI handler in
/// xAPIC mode (an NMI can land between the two ICR stores and redirect
/// the interrupted IPI); an INIT or SIPI is the caller's to mean.
///
/// ```compile_fail,E0133
/// use lwkt_arch_x86_64::apic::{self, Icr};
/// apic::send(Icr::fixed(0x40, 1));
/// ```
pub unsafe fn send(icr: Icr) {
    match current_mode() {
        Mode::X2Apic => {
            // SAFETY: caller; one MSR write sends it, nothing to interleave.
            unsafe { wrmsr(x2reg::ICR, icr.x2apic()) }
        }
        Mode::XApic => x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: caller; interrupts are off, so no handler's IPI can
            // slip between the high and the low store.
            unsafe {
                while xread(xreg::ICR_LOW) & (1 << 12) != 0 {
                    core::hint::spin_loop();
                }
                xwrite(xreg::ICR_HIGH, icr.xapic_high());
                xwrite(xreg::ICR_LOW, icr.xapic_low());
            }
        }),
    }
}

unsafe fn xread(off: usize) -> u32 {
    // SAFETY: caller: ring 0, the xAPIC page is mapped at its address.
    unsafe { core::ptr::read_volatile((XAPIC_BASE + off) as *const u32) }
}

unsafe fn xwrite(off: usize, v: u32) {
    // SAFETY: as for `xread`.
    unsafe { core::ptr::write_volatile((XAPIC_BASE + off) as *mut u32, v) }
}

/// Read an MSR.
///
/// # Safety
/// Ring 0 and `msr` exists (else #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Write an MSR.
///
/// # Safety
/// Ring 0, `msr` exists and the value is one the caller means.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_base_fields() {
        // An xAPIC at its default page, enabled, on the BSP (bit 8).
        let base: u64 = 0xFEE0_0900;
        assert_eq!(base & BASE_ADDR, XAPIC_BASE as u64);
        assert_ne!(base & BASE_EN, 0);
        assert_eq!(base & BASE_EXTD, 0);
        assert_eq!(BASE_ADDR, 0x000F_FFFF_FFFF_F000);
    }

    #[test]
    fn icr_encodings() {
        // The values QEMU-NOTES.md proved on QEMU 7.2 (pc, q35, microvm).
        assert_eq!(Icr::init_all_but_self().xapic_low(), 0x000C_4500);
        assert_eq!(Icr::startup_all_but_self(0x08).xapic_low(), 0x000C_4608);
        let f = Icr::fixed(0xFE, 0x1_0203);
        assert_eq!(f.xapic_low(), 0x40FE);
        assert_eq!(f.xapic_high(), 0x0300_0000, "xAPIC ids are 8 bits");
        assert_eq!(f.x2apic(), 0x0001_0203_0000_40FE);
        let s = Icr {
            shorthand: Shorthand::SelfOnly,
            ..Icr::fixed(0x41, 0)
        };
        assert_eq!(s.xapic_low(), 0x0004_4041);
    }
}
