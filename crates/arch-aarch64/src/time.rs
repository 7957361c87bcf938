//! Time: the generic timer's virtual counter (`CNTVCT_EL0`) as lwkt's
//! clock, and each CPU's EL1 virtual timer (`CNTV_CVAL_EL0`,
//! `CNTV_CTL_EL0`, PPI 27) as its one-shot timer.
//!
//! Nothing is calibrated: `CNTFRQ_EL0` holds the counter's frequency
//! (firmware sets it; QEMU makes it 62.5 MHz), and the system counter is
//! one for the whole machine, so every CPU reads the same count (the
//! architecture requires it; a hypervisor gives all vCPUs one
//! `CNTVOFF_EL2`). The clock is [`TimeBase`]: ticks since [`init`]
//! scaled to nanoseconds; a deadline goes back to a count rounded up, so
//! the timer never fires before the clock reads the deadline.
//!
//! The timer's interrupt is level-triggered while `CNTVCT >= CVAL`: the
//! IRQ entry disables it (`disarm`) before the EOI, and
//! `Arch::set_timer` arms it again for the next deadline.
//!
//! DragonFly: the `cputimer` (clock) and `cputimer_intr` (one-shot timer)
//! interfaces; on x86-64 the TSC and the local APIC timer.

use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
};

use crate::enc::TimeBase;
use crate::percpu;

static BASE: spin::Once<TimeBase> = spin::Once::new();

/// The counter now (`isb` first, so the read is not hoisted above what
/// precedes it).
pub fn count() -> u64 {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    CNTVCT_EL0.get()
}

/// Set the clock's origin to now and read the counter's frequency, once
/// (later calls return the first result). DragonFly: `cputimer_register()`.
///
/// # Panics
/// If `CNTFRQ_EL0` reads an implausible frequency (firmware did not set it).
pub fn init() -> &'static TimeBase {
    BASE.call_once(|| TimeBase::new(CNTFRQ_EL0.get(), count()))
}

/// The time base, once [`init`] ran.
pub fn base() -> Option<&'static TimeBase> {
    BASE.get()
}

/// The clock in nanoseconds since [`init`], `None` before it.
pub fn now_ns() -> Option<u64> {
    base().map(|tb| tb.ns_at(count()))
}

/// Set up this CPU's virtual timer: disabled until lwkt asks for a
/// deadline. Its PPI is enabled by [`gic::init_cpu`](crate::gic::init_cpu).
///
/// # Safety
/// EL1, after [`percpu::install`] on this CPU.
pub unsafe fn start_timer() {
    disarm();
    // SAFETY: caller.
    unsafe { percpu::current() }.set_timer_started();
}

/// Disable this CPU's virtual timer (its interrupt line drops).
pub(crate) fn disarm() {
    CNTV_CTL_EL0.set(0);
}

/// Program this CPU's timer for clock deadline `ns`, or disable it.
pub(crate) fn program(tb: &TimeBase, deadline: Option<u64>) {
    match deadline {
        None => disarm(),
        Some(ns) => {
            CNTV_CVAL_EL0.set(tb.deadline_count(ns));
            CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
        }
    }
}
