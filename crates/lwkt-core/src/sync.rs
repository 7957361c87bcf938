//! The one place that says "loom": atomics and cells come from `loom` under
//! `--cfg loom` and from `core` otherwise, so the models run this crate's own
//! code (the approach of tokio's `src/loom/`).

#[cfg(all(not(loom), not(feature = "bench-counters"), target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;
#[cfg(all(not(loom), not(feature = "bench-counters")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(all(not(loom), feature = "bench-counters"))]
pub(crate) use lwkt_token::sync_events::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};

/// The widest atomic word the target has natively (lock-free, safe from
/// interrupt context): 64 bits where `target_has_atomic = "64"` (x86-64,
/// AArch64, RISC-V 64: the code is exactly what `AtomicU64` gives), else
/// 32 bits. lwkt-core never uses an atomic wider than this: a wider one
/// would come from a lock-based emulation (`portable-atomic`'s fallback),
/// which an interrupt handler on the CPU that holds the lock would wait
/// for forever (see docs/porting.md, "32-bit targets and targets without
/// 64-bit atomics").
#[cfg(any(loom, target_has_atomic = "64"))]
pub(crate) type AtomicWord = AtomicU64;
/// The value type of [`AtomicWord`].
#[cfg(any(loom, target_has_atomic = "64"))]
pub(crate) type Word = u64;
/// The widest atomic word the target has natively (see the 64-bit
/// definition).
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(crate) type AtomicWord = AtomicU32;
/// The value type of [`AtomicWord`].
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(crate) type Word = u32;

pub(crate) use core::sync::atomic::Ordering;

/// Orders this thread's memory accesses against a signal or interrupt
/// handler running on the same CPU (a compiler barrier, no instruction).
#[inline(always)]
pub(crate) fn signal_fence() {
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// A full fence between CPUs.
#[inline(always)]
pub(crate) fn fence_seqcst() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Busy-wait hint; under loom, a yield so the model can make progress.
#[allow(dead_code)]
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

/// The life of an object other CPUs use by address (a descriptor on its
/// owner's stack): every user calls [`touch`](Life::touch) at each use, and
/// the owner calls [`end`](Life::end) once it no longer guarantees the
/// object. Under loom it is a cell that `touch` reads and `end` writes, so
/// a use not ordered before the end is reported as a data race (in a
/// kernel, a use after free); otherwise it is nothing at all.
#[derive(Debug)]
pub(crate) struct Life {
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<()>,
}

impl Life {
    #[inline(always)]
    #[cfg_attr(loom, track_caller)]
    pub(crate) fn new() -> Self {
        Life {
            #[cfg(loom)]
            cell: loom::cell::UnsafeCell::new(()),
        }
    }

    /// A user's access: it must happen before [`end`](Life::end).
    #[inline(always)]
    #[cfg_attr(loom, track_caller)]
    pub(crate) fn touch(&self) {
        #[cfg(loom)]
        self.cell.with(|_| ());
    }

    /// The owner ends the object's life.
    #[inline(always)]
    #[cfg_attr(loom, track_caller)]
    pub(crate) fn end(&self) {
        #[cfg(loom)]
        self.cell.with_mut(|_| ());
    }
}

/// A counter written only by its owner CPU and read by anyone: a plain
/// load and store (no locked read-modify-write), atomic only so that
/// concurrent readers are not a data race.
///
/// It is an [`AtomicWord`]: 64 bits where the target has 64-bit atomics,
/// else 32 bits, wrapping at 2^32 (these are statistics; a torn or
/// lock-based 64-bit counter would be worse: see [`AtomicWord`]).
#[derive(Debug, Default)]
pub(crate) struct OwnerCounter(AtomicWord);

impl OwnerCounter {
    /// Owner only.
    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n as Word), Ordering::Relaxed);
    }
    #[inline(always)]
    pub(crate) fn get(&self) -> u64 {
        #[allow(clippy::useless_conversion)] // u64 -> u64 where `Word` is u64
        u64::from(self.0.load(Ordering::Relaxed))
    }
}
