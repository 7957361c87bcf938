//! Serializers: an exclusive lock that, unlike a token, stays held while its
//! holder blocks. For drivers and their helper threads, and the lock behind
//! a serializer port (lwkt-msg).
//!
//! DragonFly: `struct lwkt_serialize`, `lwkt_serialize_enter()`,
//! `lwkt_serialize_try()`, `lwkt_serialize_exit()`,
//! `ASSERT_SERIALIZED()`.
//!
//! The state word holds the `HELD` bit and a count of waiters. A waiter
//! counts itself in and sleeps on the serializer's address until it can set
//! `HELD`; the holder clears `HELD` on exit and wakes the address when the
//! count is not zero. Not recursive.

use core::ptr;

use crate::sync::{AtomicPtr, AtomicU32, Ordering};
use crate::thread::Thread;
use crate::{Cur, MyCpu};

const HELD: u32 = 1 << 31;

/// An exclusive lock that may be held across blocking.
/// DragonFly: `struct lwkt_serialize`.
///
/// ```
/// use lwkt_core::Serializer;
/// static S: Serializer = Serializer::new();
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     S.enter(cur);
///     assert!(S.is_held_by(cur));
///     cur.yield_now();            // still held while others run
///     S.exit(cur);
///     assert!(S.try_enter(cur));
///     S.exit(cur);
/// });
/// ```
pub struct Serializer {
    state: AtomicU32,
    holder: AtomicPtr<Thread>,
}

impl Default for Serializer {
    fn default() -> Self {
        Self::new()
    }
}

impl Serializer {
    /// A free serializer. DragonFly: `lwkt_serialize_init()`.
    #[cfg(not(loom))]
    pub const fn new() -> Serializer {
        Serializer {
            state: AtomicU32::new(0),
            holder: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A free serializer (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Serializer {
        Serializer {
            state: AtomicU32::new(0),
            holder: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Take the serializer, sleeping until it is free.
    /// DragonFly: `lwkt_serialize_enter()`.
    ///
    /// # Panics
    /// If the calling thread holds it already (it is not recursive).
    #[track_caller]
    pub fn enter(&self, cur: &mut Cur) {
        if self.try_enter(cur) {
            return;
        }
        self.state.fetch_add(1, Ordering::Relaxed);
        let chan = self.chan();
        cur.sleep_until(chan, || self.try_set_held());
        self.state.fetch_sub(1, Ordering::Relaxed);
        self.holder
            .store(cur.td() as *const Thread as *mut Thread, Ordering::Relaxed);
    }

    /// Take the serializer if it is free. DragonFly: `lwkt_serialize_try()`.
    ///
    /// # Panics
    /// If the calling thread holds it already.
    #[track_caller]
    pub fn try_enter(&self, cur: &Cur) -> bool {
        assert!(
            !self.is_held_by(cur),
            "lwkt: serializer entered twice by thread '{}' (rule: serializers are not recursive)",
            cur.name()
        );
        if self.try_set_held() {
            self.holder
                .store(cur.td() as *const Thread as *mut Thread, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Release the serializer, waking a waiter if there is one.
    /// DragonFly: `lwkt_serialize_exit()`.
    ///
    /// # Panics
    /// If the calling thread does not hold it.
    #[track_caller]
    pub fn exit(&self, cur: &Cur) {
        assert!(
            self.is_held_by(cur),
            "lwkt: serializer released by thread '{}', which does not hold it",
            cur.name()
        );
        self.holder.store(ptr::null_mut(), Ordering::Relaxed);
        let prev = self.state.fetch_and(!HELD, Ordering::Release);
        if prev & !HELD != 0 {
            cur.my_cpu().wakeup(self.chan());
        }
    }

    /// Whether `cur` holds the serializer. DragonFly: `IS_SERIALIZED()`.
    pub fn is_held_by(&self, cur: &Cur) -> bool {
        ptr::eq(self.holder.load(Ordering::Relaxed), cur.td())
    }

    /// Whether the thread running on `my` holds the serializer (for code
    /// that has only the CPU, such as a port operation).
    /// DragonFly: `ASSERT_SERIALIZED()`.
    pub fn is_held_here(&self, my: MyCpu<'_>) -> bool {
        ptr::eq(self.holder.load(Ordering::Relaxed), my.cpu().cur())
    }

    fn try_set_held(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        while s & HELD == 0 {
            match self.state.compare_exchange_weak(
                s,
                s | HELD,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    fn chan(&self) -> usize {
        self as *const Serializer as usize
    }
}

impl core::fmt::Debug for Serializer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Serializer")
            .field("held", &(s & HELD != 0))
            .field("waiters", &(s & !HELD))
            .finish()
    }
}
