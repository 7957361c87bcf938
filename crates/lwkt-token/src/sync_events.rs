//! Counted synchronisation events (feature `bench-counters`): every atomic
//! read-modify-write (a locked instruction on x86-64) and every atomic
//! store the lwkt crates perform, summed over all threads.
//!
//! The crates' `sync` shims (the same place loom's atomics come in) switch
//! to the counting atomics below when the feature is on, so every atomic
//! operation of lwkt-token, lwkt-core, lwkt-msg and lwkt-slab is counted
//! without touching a call site. The counters are themselves atomics, so a
//! counting build is for counting, never for timing. This crate hosts them
//! because it is the one every other lwkt crate depends on.
//!
//! ```
//! # #[cfg(feature = "bench-counters")] {
//! use lwkt_token::sync_events;
//! sync_events::reset();
//! let t = lwkt_token::Token::new("counted");
//! let _ = t.try_shared(false);
//! assert!(sync_events::snapshot().rmw >= 1);
//! # }
//! ```

use core::sync::atomic::{AtomicU64 as RawU64, Ordering};

static RMW: RawU64 = RawU64::new(0);
static STORES: RawU64 = RawU64::new(0);

/// Events counted since the last [`reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncEvents {
    /// Atomic read-modify-writes: compare-exchange, swap, fetch-and-op.
    pub rmw: u64,
    /// Atomic stores: publications to another CPU, and writes to atomics
    /// only their own CPU uses (a thread's critical-section count is one).
    pub stores: u64,
}

/// The counts so far.
pub fn snapshot() -> SyncEvents {
    SyncEvents {
        rmw: RMW.load(Ordering::Relaxed),
        stores: STORES.load(Ordering::Relaxed),
    }
}

/// Start counting from zero.
pub fn reset() {
    RMW.store(0, Ordering::Relaxed);
    STORES.store(0, Ordering::Relaxed);
}

#[inline(always)]
fn rmw() {
    RMW.fetch_add(1, Ordering::Relaxed);
}

#[inline(always)]
fn store() {
    STORES.fetch_add(1, Ordering::Relaxed);
}

/// Methods that exist with the same shape on every wrapped type.
macro_rules! common_fns {
    ($t:ty, $raw:ty) => {
        /// As `core`'s `new`.
        pub const fn new(v: $t) -> Self {
            Self(<$raw>::new(v))
        }
        /// As `core`'s `load` (not counted).
        #[inline(always)]
        pub fn load(&self, o: Ordering) -> $t {
            self.0.load(o)
        }
        /// As `core`'s `store` (counted as a store).
        #[inline(always)]
        pub fn store(&self, v: $t, o: Ordering) {
            store();
            self.0.store(v, o)
        }
        /// As `core`'s `swap` (counted as a read-modify-write).
        #[inline(always)]
        pub fn swap(&self, v: $t, o: Ordering) -> $t {
            rmw();
            self.0.swap(v, o)
        }
        /// As `core`'s `compare_exchange` (counted).
        #[inline(always)]
        pub fn compare_exchange(&self, c: $t, n: $t, s: Ordering, f: Ordering) -> Result<$t, $t> {
            rmw();
            self.0.compare_exchange(c, n, s, f)
        }
        /// As `core`'s `compare_exchange_weak` (counted).
        #[inline(always)]
        pub fn compare_exchange_weak(
            &self,
            c: $t,
            n: $t,
            s: Ordering,
            f: Ordering,
        ) -> Result<$t, $t> {
            rmw();
            self.0.compare_exchange_weak(c, n, s, f)
        }
    };
}

/// A counting wrapper of a `core` integer or bool atomic, with the
/// fetch-and-op methods listed.
macro_rules! counted {
    ($name:ident, $t:ty $(, $op:ident)*) => {
        /// A counting wrapper of the `core` atomic of the same name.
        #[derive(Debug, Default)]
        #[repr(transparent)]
        pub struct $name(core::sync::atomic::$name);

        impl $name {
            common_fns!($t, core::sync::atomic::$name);
            $(
                /// As `core`'s method of the same name (counted as a
                /// read-modify-write).
                #[inline(always)]
                pub fn $op(&self, v: $t, o: Ordering) -> $t {
                    rmw();
                    self.0.$op(v, o)
                }
            )*
        }
    };
}

counted!(AtomicU32, u32, fetch_add, fetch_sub, fetch_or, fetch_and, fetch_xor);
counted!(AtomicU64, u64, fetch_add, fetch_sub, fetch_or, fetch_and, fetch_xor);
counted!(
    AtomicUsize,
    usize,
    fetch_add,
    fetch_sub,
    fetch_or,
    fetch_and,
    fetch_xor
);
counted!(AtomicBool, bool);

/// A counting wrapper of `core`'s `AtomicPtr`.
#[derive(Debug)]
#[repr(transparent)]
pub struct AtomicPtr<T>(core::sync::atomic::AtomicPtr<T>);

impl<T> Default for AtomicPtr<T> {
    fn default() -> Self {
        Self::new(core::ptr::null_mut())
    }
}

impl<T> AtomicPtr<T> {
    common_fns!(*mut T, core::sync::atomic::AtomicPtr<T>);
}
