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
//! let _ = t.try_exclusive(1, false);
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
    /// Atomic stores (each one a write another CPU may be reading).
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

macro_rules! counted_int {
    ($name:ident, $raw:ident, $t:ty) => {
        /// A counting wrapper of the `core` atomic of the same name.
        #[derive(Debug, Default)]
        #[repr(transparent)]
        pub struct $name(core::sync::atomic::$raw);

        impl $name {
            /// As `core`'s `new`.
            pub const fn new(v: $t) -> Self {
                Self(core::sync::atomic::$raw::new(v))
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
            pub fn compare_exchange(
                &self,
                c: $t,
                n: $t,
                s: Ordering,
                f: Ordering,
            ) -> Result<$t, $t> {
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
            /// As `core`'s `fetch_add` (counted).
            #[inline(always)]
            pub fn fetch_add(&self, v: $t, o: Ordering) -> $t {
                rmw();
                self.0.fetch_add(v, o)
            }
            /// As `core`'s `fetch_sub` (counted).
            #[inline(always)]
            pub fn fetch_sub(&self, v: $t, o: Ordering) -> $t {
                rmw();
                self.0.fetch_sub(v, o)
            }
            /// As `core`'s `fetch_or` (counted).
            #[inline(always)]
            pub fn fetch_or(&self, v: $t, o: Ordering) -> $t {
                rmw();
                self.0.fetch_or(v, o)
            }
            /// As `core`'s `fetch_and` (counted).
            #[inline(always)]
            pub fn fetch_and(&self, v: $t, o: Ordering) -> $t {
                rmw();
                self.0.fetch_and(v, o)
            }
            /// As `core`'s `fetch_xor` (counted).
            #[inline(always)]
            pub fn fetch_xor(&self, v: $t, o: Ordering) -> $t {
                rmw();
                self.0.fetch_xor(v, o)
            }
            /// As `core`'s `get_mut` (not an atomic operation).
            #[inline(always)]
            pub fn get_mut(&mut self) -> &mut $t {
                self.0.get_mut()
            }
            /// As `core`'s `into_inner`.
            #[inline(always)]
            pub fn into_inner(self) -> $t {
                self.0.into_inner()
            }
        }
    };
}

counted_int!(AtomicU32, AtomicU32, u32);
counted_int!(AtomicU64, AtomicU64, u64);
counted_int!(AtomicUsize, AtomicUsize, usize);

/// A counting wrapper of `core`'s `AtomicBool`.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct AtomicBool(core::sync::atomic::AtomicBool);

impl AtomicBool {
    /// As `core`'s `new`.
    pub const fn new(v: bool) -> Self {
        Self(core::sync::atomic::AtomicBool::new(v))
    }
    /// As `core`'s `load` (not counted).
    #[inline(always)]
    pub fn load(&self, o: Ordering) -> bool {
        self.0.load(o)
    }
    /// As `core`'s `store` (counted as a store).
    #[inline(always)]
    pub fn store(&self, v: bool, o: Ordering) {
        store();
        self.0.store(v, o)
    }
    /// As `core`'s `swap` (counted).
    #[inline(always)]
    pub fn swap(&self, v: bool, o: Ordering) -> bool {
        rmw();
        self.0.swap(v, o)
    }
    /// As `core`'s `compare_exchange` (counted).
    #[inline(always)]
    pub fn compare_exchange(
        &self,
        c: bool,
        n: bool,
        s: Ordering,
        f: Ordering,
    ) -> Result<bool, bool> {
        rmw();
        self.0.compare_exchange(c, n, s, f)
    }
}

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
    /// As `core`'s `new`.
    pub const fn new(p: *mut T) -> Self {
        Self(core::sync::atomic::AtomicPtr::new(p))
    }
    /// As `core`'s `load` (not counted).
    #[inline(always)]
    pub fn load(&self, o: Ordering) -> *mut T {
        self.0.load(o)
    }
    /// As `core`'s `store` (counted as a store).
    #[inline(always)]
    pub fn store(&self, p: *mut T, o: Ordering) {
        store();
        self.0.store(p, o)
    }
    /// As `core`'s `swap` (counted).
    #[inline(always)]
    pub fn swap(&self, p: *mut T, o: Ordering) -> *mut T {
        rmw();
        self.0.swap(p, o)
    }
    /// As `core`'s `compare_exchange` (counted).
    #[inline(always)]
    pub fn compare_exchange(
        &self,
        c: *mut T,
        n: *mut T,
        s: Ordering,
        f: Ordering,
    ) -> Result<*mut T, *mut T> {
        rmw();
        self.0.compare_exchange(c, n, s, f)
    }
    /// As `core`'s `compare_exchange_weak` (counted).
    #[inline(always)]
    pub fn compare_exchange_weak(
        &self,
        c: *mut T,
        n: *mut T,
        s: Ordering,
        f: Ordering,
    ) -> Result<*mut T, *mut T> {
        rmw();
        self.0.compare_exchange_weak(c, n, s, f)
    }
}
