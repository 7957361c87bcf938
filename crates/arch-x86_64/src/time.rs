//! Time: the TSC as lwkt's clock (`Arch::clock`) and each CPU's local
//! APIC timer as its one-shot timer (`Arch::set_timer`).
//!
//! **The clock** is the TSC scaled to nanoseconds since calibration: one
//! `rdtsc`, one 64×64-bit multiply and a shift ([`TimeBase::ticks_to_ns`]:
//! a fixed-point factor with 53 fraction bits, the product in `u128`, so
//! nothing overflows and a day drifts by well under a nanosecond). Deadlines
//! go back to TSC ticks by an exact division rounded up
//! ([`TimeBase::ns_to_ticks`]), so a timer programmed for a deadline never
//! fires before the clock reads it.
//!
//! **Calibration** ([`calibrate`], once, on the boot CPU) finds the TSC's
//! frequency from the first of:
//!
//! 1. CPUID leaf 0x15: core crystal frequency × TSC/crystal ratio, when
//!    all three are enumerated (recent Intel CPUs);
//! 2. leaf 0x15's ratio without the crystal, with leaf 0x16's base
//!    frequency (what Linux's `native_calibrate_tsc` does: the TSC runs at
//!    the base frequency);
//! 3. the PIT: channel 0 counts down from 0xFFFF at 1.193182 MHz; the TSC
//!    is read around two latched reads of the count about 10 ms apart
//!    ([`PIT_WINDOW_TICKS`]), and the measurement is repeated when a read
//!    took long enough to spoil it (more than 500 ppm of the window).
//!    Channel 0 rather than channel 2's gate: QEMU's `microvm` has no port
//!    0x61, which the gate needs. The PIT's interrupt (IRQ 0) is not used:
//!    the kernel keeps the 8259s masked.
//!
//! QEMU's TCG offers neither leaf, so under TCG (CI) the PIT path is the
//! one taken; KVM may pass the host's leaves through. [`TimeBase`]'s
//! `Display` says which path was taken; the test kernel prints it.
//!
//! **The timer**, per CPU ([`start_timer`] on each, then lwkt calls
//! `set_timer`), in the first mode that applies:
//!
//! - TSC-deadline (CPUID.1:ECX bit 24): `IA32_TSC_DEADLINE` gets the
//!   deadline's TSC value; 0 cancels. Nothing to calibrate.
//! - One-shot: the APIC timer counts down an initial count at its own rate
//!   divided by [`apic::TIMER_DIVISOR`]; the rate is measured once against
//!   the TSC over 2 ms ([`calibrate`]). A deadline becomes the count for
//!   the TSC ticks left, rounded up and clamped to `u32::MAX` (a deadline
//!   further away fires early: harmless, lwkt-core checks the clock and
//!   programs the rest); a count of 0 cancels.
//!
//! Either way the interrupt arrives on [`TIMER_VECTOR`], whose handler
//! records it ([`lwkt_core::Cpu::post_timer`]) and enters lwkt as the IPI
//! vector does: expired timers run at once, or at the interrupted critical
//! section's exit, or in the idle loop, whose `hlt` the interrupt ends.
//!
//! **The assumption: one TSC for the whole machine.** `Arch::clock` must
//! not go backwards, and a deadline computed on one CPU is compared with
//! the clock of the same CPU (a sleeping thread does not migrate), but
//! lwkt's timed waits are also measured across CPUs (a wake-up sent from
//! another CPU). This backend assumes the TSCs of all CPUs run at one rate
//! and were started together: true on CPUs with an invariant TSC
//! (CPUID.80000007H:EDX bit 8, reported as [`TimeBase::invariant_tsc`])
//! since Nehalem and Zen, true under KVM (which gives all vCPUs of a VM
//! one TSC offset, and advertises the invariant TSC with `-cpu host`), and
//! true under TCG, where every vCPU reads the host's TSC. It is not
//! checked at boot; the test kernel checks that a wake-up sent at time `t`
//! by one CPU is seen at a time `>= t` by the woken CPU. A CPU whose TSC
//! lags the calibrating CPU's reads 0 until it catches up (the clock
//! saturates rather than wraps).
//!
//! DragonFly: `tsc_init()` and `calibrate_clocks()`
//! (`sys/platform/pc64/isa/clock.c`), `lapic_timer_calibrate()`,
//! `lapic_timer_oneshot()`, `lapic_timer_tscdeadline_quick()`
//! (`sys/platform/pc64/apic/lapic.c`), behind the `cputimer` (the clock)
//! and `cputimer_intr` (the one-shot timer) interfaces.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use raw_cpuid::{CpuId, CpuIdReader};
use x86_64::instructions::port::Port;

use crate::apic::{self, TimerMode};
use crate::idt::TIMER_VECTOR;
use crate::percpu;

/// The PIT's input clock, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// PIT ticks in the calibration window: 10 ms.
pub const PIT_WINDOW_TICKS: u16 = 11_932;
/// How far past the window the closing read may land before the
/// measurement is thrown away (a long gap may hide a wrap of the count).
const PIT_WINDOW_SLACK: u16 = 8_000;
/// Give up on the PIT (its count never moves: there is none) after this
/// many TSC cycles, about a second at the TSC rates of today.
const PIT_TIMEOUT_CYCLES: u64 = 3_000_000_000;
/// A PIT measurement whose reads took longer than this, in parts per
/// million of the window, is repeated.
const MAX_ERROR_PPM: u64 = 500;
/// The same for the APIC timer's measurement, whose MMIO accesses are
/// slower under emulation (a few microseconds under TCG) and whose error
/// matters less: a one-shot timer that runs 0.2% fast fires early, and
/// lwkt-core programs the rest; one that runs slow is 0.2% late.
const APIC_MAX_ERROR_PPM: u64 = 2_000;
/// Measurements tried before the best one is taken anyway.
const ATTEMPTS: u32 = 4;
/// The APIC timer's calibration window, in nanoseconds of TSC.
const APIC_WINDOW_NS: u64 = 2_000_000;
/// Fraction bits of [`TimeBase`]'s nanoseconds-per-tick factor: with
/// under 1000 ns per tick (a TSC of at least 1 MHz) the factor fits in 63
/// bits, and a tick count times it in 127.
const NS_SHIFT: u32 = 53;

/// Where the TSC's frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15: `crystal_hz × numerator / denominator`.
    Cpuid15 {
        /// The core crystal clock, Hz (ECX).
        crystal_hz: u32,
        /// TSC/crystal ratio numerator (EBX).
        numerator: u32,
        /// TSC/crystal ratio denominator (EAX).
        denominator: u32,
    },
    /// CPUID leaf 0x15's ratio without a crystal frequency, and leaf
    /// 0x16's processor base frequency, which the TSC runs at.
    Cpuid16 {
        /// The base frequency, MHz (leaf 0x16 EAX).
        base_mhz: u16,
    },
    /// Measured against the PIT's channel 0.
    Pit {
        /// PIT ticks (1.193182 MHz) between the two reads.
        pit_ticks: u16,
        /// TSC ticks between the two reads (midpoints of each read).
        tsc_ticks: u64,
        /// How long the two reads took, in parts per million of the
        /// window: the measurement's uncertainty.
        error_ppm: u32,
        /// Measurements thrown away first (a read took too long).
        retries: u32,
    },
}

/// How each CPU's one-shot timer is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The local APIC's TSC-deadline mode (CPUID.1:ECX bit 24).
    TscDeadline,
    /// The local APIC timer in one-shot mode.
    OneShot {
        /// Its count rate after the divider ([`apic::TIMER_DIVISOR`]),
        /// measured against the TSC.
        apic_hz: u64,
        /// How long the reads around the measurement took, in parts per
        /// million of its window: its uncertainty.
        error_ppm: u32,
        /// Measurements thrown away first (a read took too long).
        retries: u32,
    },
}

/// Choices for [`calibrate`]; the default takes the best the CPU offers.
/// The test kernel's `tsc=pit` and `timer=oneshot` options set them, so
/// that KVM runs the paths TCG takes as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Calibrate against the PIT even where CPUID gives the frequency.
    pub force_pit: bool,
    /// Use the APIC timer's one-shot mode even where TSC-deadline mode is
    /// offered.
    pub force_oneshot: bool,
}

/// Why [`calibrate`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationError {
    /// CPUID gives no frequency and the PIT's count never moved (the
    /// machine has no PIT, or it is switched off: `-M microvm,pit=off`).
    NoPit,
    /// The frequency measured is not plausible (under 1 MHz or over
    /// 100 GHz).
    Implausible {
        /// What was measured, in Hz.
        hz: u64,
    },
    /// Every PIT measurement was disturbed: a read of the count came far
    /// past the window (the CPU was held up long enough for the count to
    /// wrap unseen).
    Disturbed,
    /// The local APIC timer did not count down.
    ApicTimerStopped,
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationError::NoPit => f.write_str(
                "no TSC frequency: CPUID leaves 0x15/0x16 give none and the PIT's channel 0 \
                 does not count",
            ),
            CalibrationError::Implausible { hz } => {
                write!(f, "implausible TSC frequency measured: {hz} Hz")
            }
            CalibrationError::Disturbed => {
                f.write_str("every PIT measurement was disturbed (a read came far past the window)")
            }
            CalibrationError::ApicTimerStopped => {
                f.write_str("the local APIC timer does not count down")
            }
        }
    }
}

/// The calibrated clock and timer: the TSC's frequency and where it came
/// from, the clock's origin, and the timer mode. DragonFly: the
/// `struct cputimer` of the TSC (`tsc_cputimer`) and the `cputimer_intr`
/// of the local APIC (`lapic_cputimer_intr`).
///
/// ```
/// use lwkt_arch_x86_64::time::{TimeBase, TimerKind, TscSource};
/// let src = TscSource::Cpuid16 { base_mhz: 3000 };
/// let tb = TimeBase::new(3_000_000_000, 0, src, TimerKind::TscDeadline, true);
/// assert_eq!(tb.ticks_to_ns(3_000_000_000), 1_000_000_000);
/// assert_eq!(tb.ns_to_ticks(1), 3);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeBase {
    tsc_hz: u64,
    origin: u64,
    /// Nanoseconds per TSC tick, fixed point with [`NS_SHIFT`] fraction
    /// bits, rounded to nearest ([`ns_to_ticks`](Self::ns_to_ticks) is
    /// the exact inverse of this factor, so deadlines stay never early).
    ns_mult: u64,
    source: TscSource,
    timer: TimerKind,
    invariant_tsc: bool,
}

impl TimeBase {
    /// A time base for a TSC of `tsc_hz` whose clock reads 0 at TSC value
    /// `origin`.
    ///
    /// # Panics
    /// If `tsc_hz` is under 1 MHz, or a one-shot timer's rate is 0.
    pub fn new(
        tsc_hz: u64,
        origin: u64,
        source: TscSource,
        timer: TimerKind,
        invariant_tsc: bool,
    ) -> TimeBase {
        assert!(
            tsc_hz >= 1_000_000,
            "lwkt-arch-x86_64: a TSC of {tsc_hz} Hz (at least 1 MHz)"
        );
        // Under 1000 ns per tick: the factor stays below 2^63.
        let hz = u128::from(tsc_hz);
        let ns_mult = (((1_000_000_000u128 << NS_SHIFT) + hz / 2) / hz) as u64;
        if let TimerKind::OneShot { apic_hz, .. } = timer {
            assert!(
                apic_hz > 0,
                "lwkt-arch-x86_64: a one-shot APIC timer of 0 Hz"
            );
        }
        TimeBase {
            tsc_hz,
            origin,
            ns_mult,
            source,
            timer,
            invariant_tsc,
        }
    }

    /// The TSC's frequency, Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Where the frequency came from.
    pub fn source(&self) -> TscSource {
        self.source
    }

    /// How the one-shot timer is driven.
    pub fn timer(&self) -> TimerKind {
        self.timer
    }

    /// Whether CPUID advertises an invariant TSC (CPUID.80000007H:EDX bit
    /// 8): constant rate in every power state, the same on every core.
    pub fn invariant_tsc(&self) -> bool {
        self.invariant_tsc
    }

    /// The TSC value at which the clock reads 0.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// `ticks` TSC ticks in nanoseconds, rounded down (saturating).
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.ns_mult)) >> NS_SHIFT;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// The fewest TSC ticks that [`ticks_to_ns`](Self::ticks_to_ns) turns
    /// into at least `ns` (saturating): a deadline converted with it is
    /// never early by the clock.
    pub fn ns_to_ticks(&self, ns: u64) -> u64 {
        let t = (u128::from(ns) << NS_SHIFT).div_ceil(u128::from(self.ns_mult));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The clock at TSC value `tsc`: nanoseconds since the origin (0 for a
    /// value before it).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        self.ticks_to_ns(tsc.saturating_sub(self.origin))
    }

    /// The clock now, on this CPU. DragonFly: `sys_cputimer->count()`
    /// scaled by its frequency.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(rdtsc())
    }

    /// The TSC value at which the clock reads `ns` (saturating).
    pub fn deadline_tsc(&self, ns: u64) -> u64 {
        self.origin.saturating_add(self.ns_to_ticks(ns))
    }

    /// The one-shot count that covers `tsc_ticks` TSC ticks: rounded up,
    /// at least 1, at most `u32::MAX` (a longer wait fires early). 0 in
    /// TSC-deadline mode.
    pub fn apic_count(&self, tsc_ticks: u64) -> u32 {
        let TimerKind::OneShot { apic_hz, .. } = self.timer else {
            return 0;
        };
        let c = (u128::from(tsc_ticks) * u128::from(apic_hz)).div_ceil(u128::from(self.tsc_hz));
        u32::try_from(c).unwrap_or(u32::MAX).max(1)
    }
}

/// `hz` as MHz with three decimals.
struct Mhz(u64);

impl fmt::Display for Mhz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:03} MHz",
            self.0 / 1_000_000,
            self.0 / 1_000 % 1_000
        )
    }
}

/// One line for a boot log: the frequency, the path that found it, and
/// the timer mode.
impl fmt::Display for TimeBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TSC {} ", Mhz(self.tsc_hz))?;
        match self.source {
            TscSource::Cpuid15 {
                crystal_hz,
                numerator,
                denominator,
            } => write!(
                f,
                "from CPUID 0x15 (crystal {} x {numerator}/{denominator})",
                Mhz(u64::from(crystal_hz))
            )?,
            TscSource::Cpuid16 { base_mhz } => {
                write!(f, "from CPUID 0x15/0x16 (base frequency {base_mhz} MHz)")?
            }
            TscSource::Pit {
                pit_ticks,
                error_ppm,
                retries,
                ..
            } => write!(
                f,
                "calibrated against the PIT (channel 0, {pit_ticks} ticks = {} us, \
                 +-{error_ppm} ppm, {retries} retries)",
                u64::from(pit_ticks) * 1_000_000 / PIT_HZ
            )?,
        }
        write!(
            f,
            ", invariant TSC: {}; timer: ",
            if self.invariant_tsc { "yes" } else { "no" }
        )?;
        match self.timer {
            TimerKind::TscDeadline => f.write_str("local APIC TSC-deadline"),
            TimerKind::OneShot {
                apic_hz,
                error_ppm,
                retries,
            } => write!(
                f,
                "local APIC one-shot at {} (divide by {}, +-{error_ppm} ppm, {retries} retries)",
                Mhz(apic_hz),
                apic::TIMER_DIVISOR
            ),
        }
    }
}

static BASE: spin::Once<TimeBase> = spin::Once::new();
static CALIBRATING: AtomicBool = AtomicBool::new(false);

/// The time base, once [`calibrate`] has succeeded.
pub fn base() -> Option<&'static TimeBase> {
    BASE.get()
}

/// The clock in nanoseconds since calibration, on this CPU, or `None`
/// before [`calibrate`]: what [`X86Arch`](crate::X86Arch)'s
/// `Arch::clock` returns.
pub fn now_ns() -> Option<u64> {
    base().map(TimeBase::now_ns)
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions in ring 0 (and outside it faults
    // at worst, with CR4.TSD set: it never touches memory).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC frequency CPUID gives, if any: leaf 0x15 with its crystal, or
/// its ratio with leaf 0x16's base frequency.
pub fn tsc_from_cpuid<R: CpuIdReader>(cpuid: &CpuId<R>) -> Option<(u64, TscSource)> {
    let ratio = cpuid
        .get_tsc_info()
        .filter(|t| t.numerator() != 0 && t.denominator() != 0)?;
    if ratio.nominal_frequency() != 0 {
        let hz = u64::from(ratio.nominal_frequency()) * u64::from(ratio.numerator())
            / u64::from(ratio.denominator());
        return Some((
            hz,
            TscSource::Cpuid15 {
                crystal_hz: ratio.nominal_frequency(),
                numerator: ratio.numerator(),
                denominator: ratio.denominator(),
            },
        ));
    }
    let base_mhz = cpuid
        .get_processor_frequency_info()
        .map(|f| f.processor_base_frequency())
        .filter(|&m| m != 0)?;
    Some((
        u64::from(base_mhz) * 1_000_000,
        TscSource::Cpuid16 { base_mhz },
    ))
}

/// One read of the PIT's count, between two reads of the TSC.
#[derive(Debug, Clone, Copy)]
struct Sample {
    before: u64,
    count: u16,
    after: u64,
}

impl Sample {
    fn mid(&self) -> u64 {
        self.before + (self.after - self.before) / 2
    }

    fn width(&self) -> u64 {
        self.after - self.before
    }
}

/// Latch channel 0's count and read it.
///
/// # Safety
/// Ring 0; nothing else uses the PIT meanwhile.
unsafe fn pit_sample() -> Sample {
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch0: Port<u8> = Port::new(0x40);
    let before = rdtsc();
    // SAFETY: caller: the PIT's command and channel 0 ports, ours now.
    let (lo, hi) = unsafe {
        cmd.write(0x00); // counter latch, channel 0
        (ch0.read(), ch0.read())
    };
    let after = rdtsc();
    Sample {
        before,
        count: u16::from_le_bytes([lo, hi]),
        after,
    }
}

/// One measurement: start channel 0 counting down from 0xFFFF (mode 0,
/// binary, low then high byte), take the first read once the count
/// moves, then the first read at least [`PIT_WINDOW_TICKS`] later.
///
/// # Safety
/// As [`pit_sample`].
unsafe fn pit_measure() -> Result<(Sample, Sample), CalibrationError> {
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch0: Port<u8> = Port::new(0x40);
    // SAFETY: caller.
    unsafe {
        cmd.write(0x30);
        ch0.write(0xFF);
        ch0.write(0xFF);
    }
    let give_up = rdtsc().wrapping_add(PIT_TIMEOUT_CYCLES);
    // SAFETY: caller.
    let first = unsafe { pit_sample() };
    let start = loop {
        // SAFETY: caller.
        let s = unsafe { pit_sample() };
        if s.count != first.count {
            break s;
        }
        if s.after > give_up {
            return Err(CalibrationError::NoPit);
        }
        core::hint::spin_loop();
    };
    loop {
        // SAFETY: caller.
        let s = unsafe { pit_sample() };
        if start.count.wrapping_sub(s.count) >= PIT_WINDOW_TICKS {
            return Ok((start, s));
        }
        if s.after > give_up {
            return Err(CalibrationError::NoPit);
        }
        core::hint::spin_loop();
    }
}

/// The TSC frequency measured against the PIT.
///
/// # Safety
/// Ring 0; nothing else uses the PIT meanwhile (its channel 0 is left
/// counting in mode 0; its interrupt, IRQ 0, is the kernel's to mask).
unsafe fn pit_calibrate() -> Result<(u64, TscSource), CalibrationError> {
    let mut best: Option<(u64, TscSource)> = None;
    for attempt in 0..ATTEMPTS {
        // SAFETY: caller.
        let (a, b) = unsafe { pit_measure()? };
        let pit_ticks = a.count.wrapping_sub(b.count);
        let tsc_ticks = b.mid() - a.mid();
        let spread = (a.width() + b.width()) / 2;
        let error_ppm = (u128::from(spread) * 1_000_000 / u128::from(tsc_ticks.max(1))) as u64;
        // A read that lands far past the window followed a long pause
        // (a host that descheduled us): the count may have wrapped.
        let in_window = pit_ticks <= PIT_WINDOW_TICKS + PIT_WINDOW_SLACK;
        let hz = (u128::from(tsc_ticks) * u128::from(PIT_HZ) / u128::from(pit_ticks)) as u64;
        let got = (
            hz,
            TscSource::Pit {
                pit_ticks,
                tsc_ticks,
                error_ppm: error_ppm.min(u64::from(u32::MAX)) as u32,
                retries: attempt,
            },
        );
        if in_window && error_ppm <= MAX_ERROR_PPM {
            return Ok(got);
        }
        let better = |old: &(u64, TscSource)| match old.1 {
            TscSource::Pit { error_ppm: e, .. } => u64::from(e) > error_ppm,
            _ => true,
        };
        if in_window && best.as_ref().is_none_or(better) {
            best = Some(got);
        }
    }
    best.ok_or(CalibrationError::Disturbed)
}

/// The local APIC timer's rate (after the divider), measured against the
/// TSC over [`APIC_WINDOW_NS`]. Leaves the timer masked and stopped.
/// DragonFly: `lapic_timer_calibrate()`.
///
/// # Safety
/// Ring 0, after [`apic::enable`] on this CPU.
unsafe fn apic_calibrate(tsc_hz: u64) -> Result<TimerKind, CalibrationError> {
    let window = tsc_hz / (1_000_000_000 / APIC_WINDOW_NS);
    let mut best: Option<TimerKind> = None;
    for retries in 0..ATTEMPTS {
        // SAFETY: caller; masked, so the vector is never raised.
        unsafe { apic::timer_setup(TIMER_VECTOR, TimerMode::OneShot, true) };
        let a = rdtsc();
        // SAFETY: set up just above.
        unsafe { apic::timer_count(u32::MAX) };
        let b = rdtsc();
        while rdtsc().wrapping_sub(b) < window {
            core::hint::spin_loop();
        }
        let c = rdtsc();
        // SAFETY: caller.
        let left = unsafe { apic::timer_current() };
        let d = rdtsc();
        // SAFETY: set up above: stop it.
        unsafe { apic::timer_count(0) };
        let counted = u32::MAX - left;
        if counted == 0 {
            return Err(CalibrationError::ApicTimerStopped);
        }
        let tsc = (c + (d - c) / 2) - (a + (b - a) / 2);
        let error_ppm = ((b - a) + (d - c)) / 2 * 1_000_000 / tsc.max(1);
        let apic_hz = (u128::from(counted) * u128::from(tsc_hz) / u128::from(tsc.max(1))) as u64;
        let got = TimerKind::OneShot {
            apic_hz,
            error_ppm: error_ppm.min(u64::from(u32::MAX)) as u32,
            retries,
        };
        if error_ppm <= APIC_MAX_ERROR_PPM {
            return Ok(got);
        }
        let better = |old: TimerKind| match old {
            TimerKind::OneShot { error_ppm: e, .. } => u64::from(e) > error_ppm,
            TimerKind::TscDeadline => true,
        };
        if best.is_none_or(better) {
            best = Some(got);
        }
    }
    best.ok_or(CalibrationError::ApicTimerStopped)
}

/// Find the TSC's frequency (CPUID leaf 0x15, leaves 0x15 and 0x16, or
/// the PIT: see the module docs) and, without TSC-deadline mode, the
/// local APIC timer's rate; from then on [`now_ns`] (and so
/// `Arch::clock`) reads the clock, 0 now. Takes about 12 ms on the PIT
/// path (10 ms of PIT, 2 ms of APIC timer), under 1 ms otherwise; a
/// kernel can overlap it with the 10 ms wait after the INIT of AP
/// start-up, as the test kernel does. DragonFly: `tsc_init()`,
/// `calibrate_clocks()`, `lapic_timer_calibrate()`.
///
/// # Safety
/// Ring 0, once, on a CPU whose local APIC is enabled ([`apic::enable`]);
/// nothing else uses the PIT meanwhile, and the PIT's interrupt (IRQ 0)
/// is masked or routed nowhere (channel 0 is left counting). The local
/// APIC timer of this CPU is reprogrammed (masked and stopped at the
/// end).
///
/// # Panics
/// If called a second time.
///
/// ```compile_fail,E0133
/// let _ = lwkt_arch_x86_64::time::calibrate(Default::default());
/// ```
pub unsafe fn calibrate(opts: Options) -> Result<&'static TimeBase, CalibrationError> {
    assert!(
        !CALIBRATING.swap(true, Ordering::AcqRel),
        "lwkt-arch-x86_64: time::calibrate called twice"
    );
    let cpuid = CpuId::new();
    let invariant_tsc = cpuid
        .get_advanced_power_mgmt_info()
        .is_some_and(|a| a.has_invariant_tsc());
    let from_cpuid = if opts.force_pit {
        None
    } else {
        tsc_from_cpuid(&cpuid)
    };
    let (tsc_hz, source) = match from_cpuid {
        Some(f) => f,
        // SAFETY: caller (ring 0, the PIT is ours).
        None => unsafe { pit_calibrate()? },
    };
    if !(1_000_000..=100_000_000_000).contains(&tsc_hz) {
        return Err(CalibrationError::Implausible { hz: tsc_hz });
    }
    let deadline = !opts.force_oneshot && apic::has_tsc_deadline();
    let timer = if deadline {
        TimerKind::TscDeadline
    } else {
        // SAFETY: caller (ring 0, this CPU's APIC enabled).
        match unsafe { apic_calibrate(tsc_hz)? } {
            TimerKind::OneShot { apic_hz: 0, .. } => {
                return Err(CalibrationError::ApicTimerStopped)
            }
            t => t,
        }
    };
    let tb = TimeBase::new(tsc_hz, rdtsc(), source, timer, invariant_tsc);
    Ok(BASE.call_once(|| tb))
}

/// Set up this CPU's local APIC timer for lwkt in the mode [`calibrate`]
/// chose, on [`TIMER_VECTOR`], stopped; `Arch::set_timer` then programs
/// it. Every CPU that runs timed waits calls it once before entering its
/// idle loop (`set_timer` panics on a CPU that did not). DragonFly: the
/// timer part of `lapic_init()`.
///
/// # Safety
/// Ring 0 on this CPU, after [`apic::enable`] and
/// [`percpu::install`] here, with an IDT loaded whose [`TIMER_VECTOR`]
/// gate is [`crate::idt::Idt`]'s (its handler reads GS).
///
/// # Panics
/// Before [`calibrate`].
///
/// ```compile_fail,E0133
/// lwkt_arch_x86_64::time::start_timer();
/// ```
pub unsafe fn start_timer() {
    let tb = base().expect("lwkt-arch-x86_64: time::start_timer before time::calibrate");
    // SAFETY: caller (ring 0, this CPU's APIC enabled, the vector's gate
    // loaded); TSC-deadline only where `calibrate` saw CPUID offer it.
    unsafe {
        match tb.timer {
            TimerKind::TscDeadline => {
                apic::timer_setup(TIMER_VECTOR, TimerMode::TscDeadline, false);
                apic::timer_tsc_deadline(0);
            }
            TimerKind::OneShot { .. } => {
                apic::timer_setup(TIMER_VECTOR, TimerMode::OneShot, false);
            }
        }
    }
    // SAFETY: caller: `install` ran on this CPU.
    unsafe { percpu::current() }.set_timer_started();
}

/// Program this CPU's timer for `deadline` (nanoseconds of the clock), or
/// stop it. DragonFly: `lapic_timer_intr_reload()`.
///
/// # Safety
/// Ring 0, after [`start_timer`] on this CPU.
pub(crate) unsafe fn program(tb: &TimeBase, deadline: Option<u64>) {
    // SAFETY: caller: the timer is set up in `tb.timer`'s mode.
    unsafe {
        match (tb.timer, deadline) {
            (TimerKind::TscDeadline, None) => apic::timer_tsc_deadline(0),
            (TimerKind::TscDeadline, Some(ns)) => {
                apic::timer_tsc_deadline(tb.deadline_tsc(ns).max(1))
            }
            (TimerKind::OneShot { .. }, None) => apic::timer_count(0),
            (TimerKind::OneShot { .. }, Some(ns)) => {
                let left = tb.deadline_tsc(ns).saturating_sub(rdtsc());
                apic::timer_count(tb.apic_count(left))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw_cpuid::CpuIdResult;

    fn tb(hz: u64) -> TimeBase {
        TimeBase::new(
            hz,
            1_000,
            TscSource::Cpuid16 { base_mhz: 0 },
            TimerKind::OneShot {
                apic_hz: 62_500_000,
                error_ppm: 0,
                retries: 0,
            },
            false,
        )
    }

    #[test]
    fn deadlines_are_never_early_and_as_early_as_possible() {
        for hz in [
            1_000_000,
            1_193_182,
            2_593_912_345,
            2_600_000_000,
            3_000_000_000,
            4_999_999_999,
            25_000_000_000,
        ] {
            let t = tb(hz);
            let mut ns = 1u64;
            while ns < u64::MAX / 8 {
                for n in [ns - 1, ns, ns + 1, ns * 3 + 7, u64::MAX - ns] {
                    let ticks = t.ns_to_ticks(n);
                    if ticks == u64::MAX {
                        // Beyond the TSC's range (centuries away): the
                        // conversion saturates, as documented.
                        continue;
                    }
                    assert!(t.ticks_to_ns(ticks) >= n, "{hz} Hz, {n} ns: early");
                    if ticks > 0 {
                        assert!(
                            t.ticks_to_ns(ticks - 1) < n,
                            "{hz} Hz, {n} ns: not the first"
                        );
                    }
                }
                ns = ns * 7 / 3 + 1;
            }
        }
    }

    #[test]
    fn conversions_are_exact_enough_and_never_overflow() {
        let t = tb(2_600_000_000);
        // A day of TSC ticks: within a nanosecond per second.
        let day = 86_400 * 2_600_000_000u64;
        let ns = t.ticks_to_ns(day);
        assert!(ns.abs_diff(86_400_000_000_000) < 86_400, "{ns}");
        // No overflow anywhere near the ends.
        let far = t.ticks_to_ns(u64::MAX);
        let exact = (u128::from(u64::MAX) * 10 / 26) as u64;
        assert!(
            far.abs_diff(exact) < exact / 1_000_000_000,
            "{far} vs {exact}"
        );
        assert_eq!(t.ns_to_ticks(u64::MAX), u64::MAX, "saturates");
        assert_eq!(t.deadline_tsc(u64::MAX), u64::MAX, "saturates");
        // The clock starts at the origin, and before it reads 0.
        assert_eq!(t.ns_at(1_000), 0);
        assert_eq!(t.ns_at(10), 0);
        // 2600 ticks are 1000 ns, give or take the factor's rounding.
        assert!((999..=1_000).contains(&t.ns_at(1_000 + 2_600)));
        let d = t.deadline_tsc(1_000);
        assert!((1_000 + 2_600..=1_000 + 2_601).contains(&d), "{d}");
        assert!(t.ns_at(d) >= 1_000 && t.ns_at(d - 1) < 1_000);
    }

    #[test]
    fn one_shot_counts_round_up_and_clamp() {
        // 62.5 MHz APIC beside a 2.5 GHz TSC: 40 TSC ticks per count.
        let t = TimeBase::new(
            2_500_000_000,
            0,
            TscSource::Cpuid16 { base_mhz: 2500 },
            TimerKind::OneShot {
                apic_hz: 62_500_000,
                error_ppm: 0,
                retries: 0,
            },
            true,
        );
        assert_eq!(t.apic_count(0), 1, "a deadline passed fires at once");
        assert_eq!(t.apic_count(1), 1);
        assert_eq!(t.apic_count(40), 1);
        assert_eq!(t.apic_count(41), 2);
        assert_eq!(t.apic_count(40_000_000), 1_000_000);
        assert_eq!(t.apic_count(u64::MAX), u32::MAX, "clamped: fires early");
        let d = TimeBase::new(
            2_500_000_000,
            0,
            TscSource::Cpuid16 { base_mhz: 2500 },
            TimerKind::TscDeadline,
            true,
        );
        assert_eq!(d.apic_count(1_000), 0);
    }

    /// A CPU answering CPUID from a table (leaf 0: max leaf 0x16, Intel).
    #[derive(Clone)]
    struct Fake {
        l15: CpuIdResult,
        l16: CpuIdResult,
        max: u32,
    }

    impl CpuIdReader for Fake {
        fn cpuid2(&self, eax: u32, _ecx: u32) -> CpuIdResult {
            let r = |eax, ebx, ecx, edx| CpuIdResult { eax, ebx, ecx, edx };
            match eax {
                // "GenuineIntel" in EBX, EDX, ECX.
                0 => r(self.max, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
                0x15 => self.l15,
                0x16 => self.l16,
                _ => r(0, 0, 0, 0),
            }
        }
    }

    fn fake(max: u32, l15: [u32; 3], base_mhz: u32) -> CpuId<Fake> {
        let r = |eax, ebx, ecx| CpuIdResult {
            eax,
            ebx,
            ecx,
            edx: 0,
        };
        CpuId::with_cpuid_reader(Fake {
            l15: r(l15[0], l15[1], l15[2]),
            l16: r(base_mhz, 0, 0),
            max,
        })
    }

    #[test]
    fn cpuid_paths_are_taken_in_order() {
        // Leaf 0x15 complete: 24 MHz crystal x 216/2 = 2.592 GHz.
        let (hz, src) = tsc_from_cpuid(&fake(0x16, [2, 216, 24_000_000], 2600)).unwrap();
        assert_eq!(hz, 2_592_000_000);
        assert!(matches!(src, TscSource::Cpuid15 { numerator: 216, .. }));
        // The ratio without the crystal: leaf 0x16's base frequency.
        let (hz, src) = tsc_from_cpuid(&fake(0x16, [2, 216, 0], 2600)).unwrap();
        assert_eq!(
            (hz, src),
            (2_600_000_000, TscSource::Cpuid16 { base_mhz: 2600 })
        );
        // No ratio: nothing from CPUID (0x16 alone is not the TSC's rate).
        assert_eq!(tsc_from_cpuid(&fake(0x16, [0, 0, 0], 2600)), None);
        assert_eq!(tsc_from_cpuid(&fake(0x16, [2, 0, 24_000_000], 2600)), None);
        // Leaves 0x15 and 0x16 beyond the maximum leaf (QEMU's TCG).
        assert_eq!(tsc_from_cpuid(&fake(0xd, [2, 216, 24_000_000], 2600)), None);
        // 0x15's ratio, no crystal, and 0x16 beyond the maximum or zero.
        assert_eq!(tsc_from_cpuid(&fake(0x15, [2, 216, 0], 2600)), None);
        assert_eq!(tsc_from_cpuid(&fake(0x16, [2, 216, 0], 0)), None);
    }

    #[test]
    fn the_boot_line_names_the_path() {
        let pit = TimeBase::new(
            2_593_912_345,
            0,
            TscSource::Pit {
                pit_ticks: 11_932,
                tsc_ticks: 25_939_123,
                error_ppm: 12,
                retries: 0,
            },
            TimerKind::OneShot {
                apic_hz: 62_500_000,
                error_ppm: 3,
                retries: 1,
            },
            false,
        );
        let s = std::format!("{pit}");
        assert_eq!(
            s,
            "TSC 2593.912 MHz calibrated against the PIT (channel 0, 11932 ticks = 10000 us, \
             +-12 ppm, 0 retries), invariant TSC: no; timer: local APIC one-shot at 62.500 MHz \
             (divide by 16, +-3 ppm, 1 retries)"
        );
        let c = TimeBase::new(
            2_592_000_000,
            0,
            TscSource::Cpuid15 {
                crystal_hz: 24_000_000,
                numerator: 216,
                denominator: 2,
            },
            TimerKind::TscDeadline,
            true,
        );
        assert_eq!(
            std::format!("{c}"),
            "TSC 2592.000 MHz from CPUID 0x15 (crystal 24.000 MHz x 216/2), invariant TSC: yes; \
             timer: local APIC TSC-deadline"
        );
    }
}
