//! The GICv3 CPU-interface system registers (`ICC_*_EL1`), which the
//! `aarch64-cpu` crate does not cover (it has `ICC_CTLR_EL1` and
//! `ICC_SRE_EL2` only). Written by their encodings so that no assembler
//! feature is needed.

/// Enable the system-register interface (`ICC_SRE_EL1.SRE`), open the
/// priority mask (`ICC_PMR_EL1` = 0xff), one priority group
/// (`ICC_BPR1_EL1` = 0), group 1 on (`ICC_IGRPEN1_EL1` = 1).
///
/// # Safety
/// EL1, IRQs masked, this CPU's redistributor awake.
pub(crate) unsafe fn icc_enable() {
    // SAFETY: caller; these registers configure only this CPU's interface.
    unsafe {
        core::arch::asm!(
            "mrs {t}, S3_0_C12_C12_5",
            "orr {t}, {t}, #1",
            "msr S3_0_C12_C12_5, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr S3_0_C4_C6_0, {t}",
            "msr S3_0_C12_C12_3, xzr",
            "mov {t}, #1",
            "msr S3_0_C12_C12_7, {t}",
            "isb",
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}

/// Write `ICC_SGI1R_EL1` after a `dsb ishst`.
///
/// # Safety
/// EL1, the interface enabled ([`icc_enable`]).
pub(crate) unsafe fn icc_sgi1r(v: u64) {
    // SAFETY: caller.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "msr S3_0_C12_C11_5, {v}",
            "isb",
            v = in(reg) v,
            options(nostack, preserves_flags)
        )
    };
}

/// Read `ICC_IAR1_EL1` (acknowledge).
///
/// # Safety
/// EL1, in the IRQ entry.
pub(crate) unsafe fn icc_iar1() -> u32 {
    let v: u64;
    // SAFETY: caller.
    unsafe {
        core::arch::asm!("mrs {v}, S3_0_C12_C12_0", v = out(reg) v, options(nostack, preserves_flags))
    };
    v as u32
}

/// Write `ICC_EOIR1_EL1` (end of interrupt).
///
/// # Safety
/// EL1; `intid` acknowledged here and not ended.
pub(crate) unsafe fn icc_eoir1(intid: u32) {
    // SAFETY: caller.
    unsafe {
        core::arch::asm!(
            "msr S3_0_C12_C12_1, {v}",
            "isb",
            v = in(reg) u64::from(intid),
            options(nostack, preserves_flags)
        )
    };
}

/// Whether this CPU's interface is enabled as [`icc_enable`] leaves it
/// (`ICC_SRE_EL1.SRE` and `ICC_IGRPEN1_EL1.Enable` set).
///
/// # Safety
/// EL1.
pub(crate) unsafe fn icc_enabled() -> bool {
    let (sre, grpen): (u64, u64);
    // SAFETY: caller; reading them changes nothing.
    unsafe {
        core::arch::asm!(
            "mrs {s}, S3_0_C12_C12_5",
            "mrs {g}, S3_0_C12_C12_7",
            s = out(reg) sre,
            g = out(reg) grpen,
            options(nostack, preserves_flags, nomem)
        )
    };
    sre & 1 == 1 && grpen & 1 == 1
}
