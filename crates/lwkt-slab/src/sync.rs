//! The one place that says "loom": the remote-free list's atomics come from
//! `loom` under `--cfg loom` and from `core` otherwise, so the model runs
//! this crate's own list (the approach of tokio's `src/loom/`).

#[cfg(all(not(loom), not(feature = "bench-counters")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr};
#[cfg(all(not(loom), feature = "bench-counters"))]
pub(crate) use lwkt_core::token::sync_events::{AtomicBool, AtomicPtr};

pub(crate) use core::sync::atomic::Ordering;

/// A full fence (the Dekker-style hand-off between a remote free and the
/// owner marking a zone full).
#[inline(always)]
pub(crate) fn fence_seqcst() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::fence(Ordering::SeqCst);
}
