//! The one place that says "loom": the remote-free list's and the object
//! cache's atomics and cells come from
//! `loom` under `--cfg loom` and from `core` otherwise, so the model runs
//! this crate's own list (the approach of tokio's `src/loom/`).

#[cfg(all(not(loom), not(feature = "bench-counters"), target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;
#[cfg(all(not(loom), not(feature = "bench-counters")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(all(not(loom), feature = "bench-counters"))]
pub(crate) use lwkt_core::token::sync_events::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};

/// An `UnsafeCell` reached only through `with_mut`, so that under loom
/// every access is checked against the others (the object cache's per-CPU
/// magazines and its depot).
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);
#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(v))
    }
    /// Run `f` with a pointer to the contents; the caller excludes every
    /// other access for the call.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

pub(crate) use core::sync::atomic::Ordering;

/// The widest atomic word the target has natively: 64 bits where
/// `target_has_atomic = "64"` (exactly `AtomicU64` there), else 32. The
/// object cache's counters use it; never a lock-based wider atomic (see
/// docs/porting.md, "32-bit targets and targets without 64-bit atomics").
#[cfg(any(loom, target_has_atomic = "64"))]
pub(crate) type AtomicWord = AtomicU64;
/// The widest atomic word the target has natively (see the 64-bit one).
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(crate) type AtomicWord = AtomicU32;

/// A counter's value read from an [`AtomicWord`], widened to `u64` (a
/// no-op where the word is 64 bits; it wraps at 2^32 otherwise).
#[inline(always)]
pub(crate) fn load_wide(a: &AtomicWord, o: Ordering) -> u64 {
    #[allow(clippy::useless_conversion)] // u64 -> u64 with 64-bit atomics
    u64::from(a.load(o))
}

/// A full fence (the Dekker-style hand-off between a remote free and the
/// owner marking a zone full).
#[inline(always)]
pub(crate) fn fence_seqcst() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// A spin-wait hint; under loom, a yield, so that a model of a spin lock
/// lets the holder run.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
