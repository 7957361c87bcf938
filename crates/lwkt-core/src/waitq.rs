//! A wait queue: block until signalled.
//!
//! DragonFly (2003-2006, the paper's Table I): `lwkt_block()` /
//! `lwkt_signal()`. DragonFly later replaced these with `tsleep`/`wakeup`;
//! here the wait queue is a generation counter on top of
//! [`Cur::sleep_until`], so it inherits its no-lost-wake-up argument: a
//! waiter reads the generation, then sleeps until it changes; a signal
//! bumps it, then wakes the queue's channel on every CPU with sleepers.

use crate::sync::{AtomicWord, Ordering};
use crate::{Cur, MyCpu};

/// Threads block here until another thread or an IPI function signals.
/// Every waiter blocked before a [`signal`](WaitQueue::signal) is woken by it.
///
/// ```
/// use lwkt_core::{CpuId, WaitQueue};
/// static Q: WaitQueue = WaitQueue::new();
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let gen = Q.generation();
///     let t = cur.spawn_on(CpuId::new(1), |me| Q.signal(me.my_cpu())).unwrap();
///     Q.block_since(cur, gen);
///     cur.join(&t);
/// });
/// ```
#[derive(Debug)]
pub struct WaitQueue {
    /// The signal count: the target's widest native atomic word
    /// (`sync::Word`), so 32 bits, wrapping, on a target without 64-bit
    /// atomics. A waiter compares it only for inequality with its
    /// snapshot, and every signal wakes it to look again, so a wrapped
    /// count hides a signal from it only if exactly a multiple of 2^32
    /// signals land between two of its looks (see docs/porting.md).
    gen: AtomicWord,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    /// An empty wait queue.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        WaitQueue {
            gen: AtomicWord::new(0),
        }
    }

    /// An empty wait queue.
    #[cfg(loom)]
    pub fn new() -> Self {
        WaitQueue {
            gen: AtomicWord::new(0),
        }
    }

    fn chan(&self) -> usize {
        self as *const WaitQueue as usize
    }

    /// The number of signals so far; pass it to
    /// [`block_since`](Self::block_since) to wait for the next one without a
    /// window where a signal could be missed. On a target without 64-bit
    /// atomics the count is 32 bits wide and wraps (modulo 2^32).
    pub fn generation(&self) -> u64 {
        self.gen_now()
    }

    /// The count now, widened (a no-op with 64-bit atomics).
    #[inline(always)]
    #[allow(clippy::useless_conversion)] // u64 -> u64 where `Word` is u64
    fn gen_now(&self) -> u64 {
        u64::from(self.gen.load(Ordering::SeqCst))
    }

    /// Block until the next signal. DragonFly: `lwkt_block()`.
    pub fn block(&self, cur: &mut Cur) {
        let g = self.generation();
        self.block_since(cur, g);
    }

    /// Block until a signal after generation `gen` (returns at once if one
    /// has happened already).
    pub fn block_since(&self, cur: &mut Cur, gen: u64) {
        cur.sleep_until(self.chan(), || self.gen_now() != gen);
    }

    /// [`block_since`](Self::block_since) with a time limit: `Ok` once a
    /// signal after `gen` has happened, `Err(TimedOut)` if none came within
    /// `timeout` (a signal racing the timeout counts). Limits as
    /// [`Cur::sleep_until_timeout`].
    ///
    /// # Panics
    /// If the backend has no clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lwkt_core::{TimedOut, WaitQueue};
    /// static Q: WaitQueue = WaitQueue::new();
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let gen = Q.generation();
    ///     assert_eq!(Q.block_since_timeout(cur, gen, Duration::from_millis(1)), Err(TimedOut));
    ///     Q.signal(cur.my_cpu());
    ///     assert_eq!(Q.block_since_timeout(cur, gen, Duration::from_secs(60)), Ok(()));
    /// });
    /// ```
    #[track_caller]
    pub fn block_since_timeout(
        &self,
        cur: &mut Cur,
        gen: u64,
        timeout: core::time::Duration,
    ) -> Result<(), crate::TimedOut> {
        cur.sleep_until_timeout(self.chan(), timeout, || self.gen_now() != gen)
    }

    /// Wake every thread blocked here. DragonFly: `lwkt_signal()`.
    pub fn signal(&self, my: MyCpu<'_>) {
        self.gen.fetch_add(1, Ordering::SeqCst);
        my.wakeup(self.chan());
    }
}
