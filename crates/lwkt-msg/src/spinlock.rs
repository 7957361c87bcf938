//! The spin lock of a spin port. Taken only inside a critical section, so an
//! IPI function on the same CPU can never spin on a lock its CPU holds.
//!
//! DragonFly: `struct spinlock` (`spin_lock()` / `spin_unlock()`).

use core::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    pub(crate) const fn new() -> SpinLock {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Run `f` holding the lock.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        let r = f();
        self.locked.store(false, Ordering::Release);
        r
    }
}
