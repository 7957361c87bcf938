//! The one place that says "loom": atomics and cells come from `loom` under
//! `--cfg loom` and from `core` otherwise, so the models run this crate's
//! own protocol code (the approach of tokio's `src/loom/`).

#[cfg(all(not(loom), not(feature = "bench-counters")))]
pub(crate) use core::sync::atomic::AtomicU32;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU32;
#[cfg(all(not(loom), feature = "bench-counters"))]
pub(crate) use lwkt_core::token::sync_events::AtomicU32;

pub(crate) use core::sync::atomic::Ordering;

/// Busy-wait hint; under loom, a yield so the model can make progress.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// `UnsafeCell` with loom's closure API, so access is tracked under loom.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `UnsafeCell` with loom's closure API, so access is tracked under loom.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self(core::cell::UnsafeCell::new(v))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
