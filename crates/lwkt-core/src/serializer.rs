//! Serializers: an exclusive lock that, unlike a token, stays held while its
//! holder blocks. For drivers and their helper threads, and the lock behind
//! a serializer port (lwkt-msg).
//!
//! DragonFly: `struct lwkt_serialize`, `lwkt_serialize_enter()`,
//! `lwkt_serialize_try()`, `lwkt_serialize_exit()`,
//! `ASSERT_SERIALIZED()`.
//!
//! The state word ([`State`]) holds the `HELD` bit and a count of waiters.
//! A waiter counts itself in and sleeps on the serializer's address until
//! it can set `HELD`; the holder clears `HELD` on exit and wakes the address
//! when the count is not zero. Not recursive. The word is pure (it sleeps
//! and wakes through closures), so the loom models at the end of this file
//! run it as it is.
//!
//! A serializer is held by a thread, never by interrupt context: an IPI or
//! `cpusync` function that runs on the holder's CPU interrupted the holder,
//! and is not it ([`Serializer::is_held_here`] answers `false` there).

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
    state: State,
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
            state: State(AtomicU32::new(0)),
            holder: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A free serializer (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Serializer {
        Serializer {
            state: State::new(),
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
        self.assert_not_held(cur);
        let chan = self.chan();
        self.state.acquire(|free| cur.sleep_until(chan, free));
        self.set_holder(cur);
    }

    /// Take the serializer if it is free. DragonFly: `lwkt_serialize_try()`.
    ///
    /// # Panics
    /// If the calling thread holds it already.
    #[track_caller]
    pub fn try_enter(&self, cur: &Cur) -> bool {
        self.assert_not_held(cur);
        let got = self.state.try_acquire();
        if got {
            self.set_holder(cur);
        }
        got
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
        self.state.release(|| cur.my_cpu().wakeup(self.chan()));
    }

    /// Whether `cur` holds the serializer. DragonFly: `IS_SERIALIZED()`.
    pub fn is_held_by(&self, cur: &Cur) -> bool {
        ptr::eq(self.holder.load(Ordering::Relaxed), cur.td())
    }

    /// Whether the code running on `my` is the thread that holds the
    /// serializer (for code that has only the CPU, such as a port
    /// operation). Always `false` in interrupt context (an IPI or
    /// `cpusync` function): it interrupted whatever thread runs on the CPU,
    /// maybe the holder in the middle of its work on what the serializer
    /// guards, and is not that thread. DragonFly: `ASSERT_SERIALIZED()`.
    ///
    /// ```
    /// use lwkt_core::Serializer;
    /// static S: Serializer = Serializer::new();
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     S.enter(cur);
    ///     assert!(S.is_held_here(cur.my_cpu()));
    ///     // A cpusync function runs here too, in interrupt context.
    ///     cur.cpusync(lwkt_core::CpuMask::all(1), &|my| assert!(!S.is_held_here(my)));
    ///     S.exit(cur);
    ///     assert!(!S.is_held_here(cur.my_cpu()));
    /// });
    /// ```
    pub fn is_held_here(&self, my: MyCpu<'_>) -> bool {
        let gd = my.cpu();
        // `intr_nesting` is this CPU's own (a `MyCpu` exists only on it):
        // nonzero exactly while an IPI or `cpusync` function runs here.
        gd.intr_nesting.get() == 0 && ptr::eq(self.holder.load(Ordering::Relaxed), gd.cur())
    }

    #[track_caller]
    fn assert_not_held(&self, cur: &Cur) {
        assert!(
            !self.is_held_by(cur),
            "lwkt: serializer entered twice by thread '{}' (rule: serializers are not recursive)",
            cur.name()
        );
    }

    fn set_holder(&self, cur: &Cur) {
        self.holder
            .store(cur.td() as *const Thread as *mut Thread, Ordering::Relaxed);
    }

    fn chan(&self) -> usize {
        self as *const Serializer as usize
    }
}

impl core::fmt::Debug for Serializer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (held, waiters) = self.state.get();
        f.debug_struct("Serializer")
            .field("held", &held)
            .field("waiters", &waiters)
            .finish()
    }
}

/// A serializer's state word: the `HELD` bit and the number of threads
/// waiting for it. Sleeping and waking are the caller's (closures), so the
/// word's protocol is all here, and the loom models run it unchanged.
/// DragonFly: `lwkt_serialize`'s `interlock_count`.
struct State(AtomicU32);

impl State {
    #[cfg(loom)]
    fn new() -> State {
        State(AtomicU32::new(0))
    }

    /// Set `HELD` if it is clear. Acquire: the last holder's writes
    /// happen before the new holder's.
    fn try_acquire(&self) -> bool {
        let mut s = self.0.load(Ordering::Relaxed);
        while s & HELD == 0 {
            match self
                .0
                .compare_exchange_weak(s, s | HELD, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    /// Set `HELD`, waiting for it with `sleep_until(free)`: `sleep_until`
    /// returns once `free()` returned `true` (which takes the word), and
    /// loses no wake-up made after one of its checks of `free`
    /// ([`Cur::sleep_until`]). The waiter counts itself in first, so a
    /// release that finds the count zero comes before the count's increment
    /// in the word's order, and the first check then finds `HELD` clear.
    fn acquire(&self, sleep_until: impl FnOnce(&dyn Fn() -> bool)) {
        if self.try_acquire() {
            return;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        sleep_until(&|| self.try_acquire());
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Clear `HELD` (Release: publishes the holder's writes) and call
    /// `wake` if anybody counted itself in as a waiter.
    fn release(&self, wake: impl FnOnce()) {
        let prev = self.0.fetch_and(!HELD, Ordering::Release);
        debug_assert!(prev & HELD != 0, "lwkt: serializer released while free");
        if prev & !HELD != 0 {
            wake();
        }
    }

    /// (held, waiters), for `Debug` and the models.
    fn get(&self) -> (bool, u32) {
        let s = self.0.load(Ordering::Relaxed);
        (s & HELD != 0, s & !HELD)
    }
}

/// Loom models of the state word (run with `cargo xtask loom`): the real
/// [`State`], with lwkt's sleep replaced by what it guarantees (a wake-up
/// made after a check of the condition is not lost, and carries the
/// waker's writes: lwkt's sleep queues are changed by their CPU only, and
/// a wake-up reaches another CPU by an IPI ring's Release/Acquire). Here a
/// count of wake-ups under a mutex, and a condition variable.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::cell::UnsafeCell;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    use super::State;

    struct Shared {
        state: State,
        /// Wake-ups of the serializer's channel so far.
        wakeups: Mutex<u32>,
        woken: Condvar,
        /// What the serializer guards.
        data: UnsafeCell<u32>,
    }

    impl Shared {
        fn new() -> Arc<Shared> {
            Arc::new(Shared {
                state: State::new(),
                wakeups: Mutex::new(0),
                woken: Condvar::new(),
                data: UnsafeCell::new(0),
            })
        }

        /// `Cur::sleep_until`: note the wake-ups so far (the interlock),
        /// check, and wait for a later wake-up before checking again.
        fn sleep_until(&self, cond: &dyn Fn() -> bool) {
            loop {
                let seen = *self.wakeups.lock().unwrap();
                if cond() {
                    return;
                }
                let mut n = self.wakeups.lock().unwrap();
                while *n == seen {
                    n = self.woken.wait(n).unwrap();
                }
            }
        }

        /// `MyCpu::wakeup` of the channel.
        fn wakeup(&self) {
            *self.wakeups.lock().unwrap() += 1;
            self.woken.notify_all();
        }

        /// `enter`, a write to the guarded data, `exit`.
        fn enter_work_exit(&self) {
            self.state.acquire(|free| self.sleep_until(free));
            // SAFETY: the serializer is held (loom checks it).
            self.data.with_mut(|p| unsafe { *p += 1 });
            self.state.release(|| self.wakeup());
        }
    }

    /// Three threads enter, write and exit: never two inside at once (loom
    /// checks the cell), nobody sleeps for good (a lost wake-up leaves a
    /// waiter blocked: loom reports the deadlock), and the word ends free
    /// with no waiter counted.
    #[test]
    fn serializer_excludes_and_loses_no_wakeup() {
        loom::model(|| {
            let s = Shared::new();
            let ts: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    thread::spawn(move || s.enter_work_exit())
                })
                .collect();
            s.enter_work_exit();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(s.state.get(), (false, 0));
            // SAFETY: every thread has finished.
            assert_eq!(s.data.with(|p| unsafe { *p }), 3);
        });
    }

    /// `try_enter` against `enter` and `exit`: it takes the serializer only
    /// while nobody holds it.
    #[test]
    fn try_enter_against_enter_and_exit() {
        loom::model(|| {
            let s = Shared::new();
            let t = {
                let s = s.clone();
                thread::spawn(move || s.enter_work_exit())
            };
            let got = s.state.try_acquire();
            if got {
                // SAFETY: held (loom checks it).
                s.data.with_mut(|p| unsafe { *p += 1 });
                s.state.release(|| s.wakeup());
            }
            t.join().unwrap();
            assert_eq!(s.state.get(), (false, 0));
            // SAFETY: both threads have finished.
            assert_eq!(s.data.with(|p| unsafe { *p }), 1 + u32::from(got));
        });
    }
}
