//! The pure parts of the backend, compiled on every host so that they are
//! unit-tested there: the `ICC_SGI1R_EL1` encoding, the generic timer's
//! tick/nanosecond conversion, and `ESR_EL1`'s exception classes.

/// `ICC_SGI1R_EL1` for SGI `intid` to the one CPU with affinity `mpidr`
/// (`MPIDR_EL1`'s Aff3 in bits 39:32, Aff2..Aff0 in 23:0): Aff3, Aff2,
/// Aff1 go in their fields, Aff0 as the range selector (`RS` =
/// Aff0 / 16) and one bit of the target list (Aff0 % 16).
///
/// ```
/// use lwkt_arch_aarch64::enc::sgi1r;
/// assert_eq!(sgi1r(0, 3), 1 << 3);
/// assert_eq!(sgi1r(14, 0x0102_0311), (14 << 24) | (1 << 44) | (1 << 1) | (3 << 16) | (2 << 32));
/// ```
pub const fn sgi1r(intid: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    ((intid as u64 & 0xf) << 24)
        | (aff3 << 48)
        | ((aff0 / 16) << 44)
        | (aff2 << 32)
        | (aff1 << 16)
        | (1 << (aff0 % 16))
}

/// `ICC_SGI1R_EL1` for SGI `intid` to every CPU but the sender (`IRM`).
pub const fn sgi1r_all_others(intid: u32) -> u64 {
    ((intid as u64 & 0xf) << 24) | (1 << 40)
}

/// Fraction bits of [`TimeBase`]'s nanoseconds-per-tick factor.
const NS_SHIFT: u32 = 40;

/// The generic timer's counter as a clock: its frequency (`CNTFRQ_EL0`),
/// the count at which the clock reads 0, and the fixed-point factor that
/// turns ticks into nanoseconds. DragonFly: a `struct cputimer`.
///
/// ```
/// use lwkt_arch_aarch64::enc::TimeBase;
/// let tb = TimeBase::new(62_500_000, 100);
/// assert_eq!(tb.ns_at(100 + 62_500_000), 1_000_000_000);
/// assert_eq!(tb.ns_to_ticks(16), 1);
/// assert_eq!(tb.ns_to_ticks(17), 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeBase {
    hz: u64,
    origin: u64,
    ns_mult: u64,
}

impl TimeBase {
    /// A clock for a counter of `hz` that reads 0 at count `origin`.
    ///
    /// # Panics
    /// If `hz` is under 1 kHz or over 10 GHz.
    pub fn new(hz: u64, origin: u64) -> TimeBase {
        assert!(
            (1_000..=10_000_000_000).contains(&hz),
            "lwkt-arch-aarch64: a counter of {hz} Hz"
        );
        let h = u128::from(hz);
        let ns_mult = (((1_000_000_000u128 << NS_SHIFT) + h / 2) / h) as u64;
        TimeBase {
            hz,
            origin,
            ns_mult,
        }
    }

    /// The counter's frequency, Hz.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// The count at which the clock reads 0.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// `ticks` in nanoseconds, rounded down (saturating).
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.ns_mult)) >> NS_SHIFT;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// The fewest ticks that [`ticks_to_ns`](Self::ticks_to_ns) turns into
    /// at least `ns` (saturating): a deadline converted with it is never
    /// early by the clock.
    pub fn ns_to_ticks(&self, ns: u64) -> u64 {
        let t = (u128::from(ns) << NS_SHIFT).div_ceil(u128::from(self.ns_mult));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The clock at count `count` (0 before the origin).
    pub fn ns_at(&self, count: u64) -> u64 {
        self.ticks_to_ns(count.saturating_sub(self.origin))
    }

    /// The count at which the clock reads `ns` (saturating).
    pub fn deadline_count(&self, ns: u64) -> u64 {
        self.origin.saturating_add(self.ns_to_ticks(ns))
    }
}

/// What exception class `ec` (`ESR_EL1` bits 31:26) means, for a fault
/// report.
///
/// ```
/// use lwkt_arch_aarch64::enc::exception_class;
/// assert_eq!(exception_class(0x25), "data abort from EL1");
/// ```
pub const fn exception_class(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason (an undefined instruction)",
        0x01 => "WFI/WFE trapped",
        0x07 => "SIMD/FP access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC from AArch64",
        0x16 => "HVC from AArch64",
        0x17 => "SMC from AArch64",
        0x18 => "MSR/MRS/system instruction trapped",
        0x20 => "instruction abort from EL0",
        0x21 => "instruction abort from EL1",
        0x22 => "PC alignment fault",
        0x24 => "data abort from EL0",
        0x25 => "data abort from EL1",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_never_early() {
        for hz in [1_000, 24_000_000, 62_500_000, 1_000_000_000, 1_953_125] {
            let tb = TimeBase::new(hz, 7);
            for ns in [0, 1, 15, 16, 17, 999, 1_000_000, 123_456_789_012, 1 << 50] {
                let t = tb.ns_to_ticks(ns);
                assert!(tb.ticks_to_ns(t) >= ns, "hz {hz} ns {ns}");
                if t > 0 {
                    assert!(
                        tb.ticks_to_ns(t - 1) < ns,
                        "hz {hz} ns {ns}: not the fewest"
                    );
                }
            }
        }
    }

    #[test]
    fn sgi_targets() {
        // Aff0 17: range selector 1, bit 1.
        let v = sgi1r(0, 17);
        assert_eq!((v >> 44) & 0xf, 1);
        assert_eq!(v & 0xffff, 1 << 1);
        assert_eq!(sgi1r_all_others(1), (1 << 24) | (1 << 40));
        assert_eq!(sgi1r(15, 0xab_0000_0000) >> 48, 0xab);
    }
}
