//! Atomics from loom under `--cfg loom`, from core otherwise.

#[cfg(all(not(loom), feature = "bench-counters"))]
pub(crate) use crate::sync_events::AtomicUsize;
#[cfg(all(not(loom), not(feature = "bench-counters")))]
pub(crate) use core::sync::atomic::AtomicUsize;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicUsize;

pub(crate) use core::sync::atomic::Ordering;

/// Busy-wait hint; under loom, a yield so the model can make progress.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Tries of a contended token before handing the wait to the scheduler
/// (one under loom, to keep the models small).
pub(crate) const SPIN_TRIES: u32 = if cfg!(loom) { 1 } else { 16 };
