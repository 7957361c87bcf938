//! The single-producer single-consumer ring under each (source, target) CPU
//! pair: one cell of the paper's "software crossbar".
//!
//! DragonFly: `struct lwkt_ipiq` (`ip_windex`, `ip_rindex`, `ip_info[]`).
//!
//! Indices are free-running `u32`s; a slot is `index % N`. The producer owns
//! `windex` and the consumer owns `rindex`. Each slot carries a sequence
//! word, stored by the producer after the entry: `index + 1` of the entry it
//! holds. The consumer tests the slot it would read next, not the
//! producer's index, so taking an entry from another CPU costs one cache
//! line transfer (the slot's), not two (the index's, then the slot's).
//! The producer keeps, on a line only it touches, its index and a cache of
//! the consumer's, as rtrb's handles do: a push reads nothing the consumer
//! writes unless its cache says the ring looks full. `windex` is still
//! published (for [`len`](Ring::len)), on a line no one else reads in the
//! normal course.

use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, Ordering, UnsafeCell};

/// A bounded SPSC ring of `N` entries of `T` (`N` a power of two).
///
/// Exactly one producer and one consumer may use it at a time; that is why
/// [`push`](Self::push) and [`pop`](Self::pop) are `unsafe`. lwkt-core keeps
/// the contract by giving the ring from CPU `s` to CPU `t` only to code running
/// on `s` (producer) and on `t` (consumer), inside a critical section.
///
/// The consumer side may be re-entered by the consumer itself (an IPI
/// callback that drains the same ring while an outer drain is running), as
/// DragonFly's nested `lwkt_process_ipiq` does: `pop` frees the slot before
/// returning the entry and re-reads its index every time.
///
/// # Examples
///
/// ```
/// use lwkt_core::ipiq::Ring;
/// let ring: Ring<u32, 4> = Ring::new();
/// // SAFETY: this test is the only producer and the only consumer.
/// unsafe {
///     assert!(ring.push(7).is_ok());
///     assert_eq!(ring.pop(), Some(7));
///     assert_eq!(ring.pop(), None);
/// }
/// ```
// `repr(C)`: the index lines first, in this order, then the slots (the
// measured layout; see `docs/benchmarks.md`).
#[repr(C)]
pub struct Ring<T: Copy, const N: usize> {
    /// The producer's write index, published for [`len`](Ring::len).
    windex: CachePadded<AtomicU32>,
    /// Producer-private: its write index and its cache of `rindex`.
    prod: CachePadded<Side>,
    /// The consumer's read index, published to the producer.
    rindex: CachePadded<AtomicU32>,
    /// Consumer-private: its read index.
    cons: CachePadded<UnsafeCell<u32>>,
    slots: [Slot<T>; N],
}

/// One entry's place: the entry, and the sequence word that says which
/// entry it holds.
#[repr(C)]
struct Slot<T> {
    /// `index + 1` of the entry in `val` (0: never written), stored with
    /// Release after `val`; the consumer waits for the value it expects.
    seq: AtomicU32,
    val: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    #[cfg(not(loom))]
    const fn new() -> Slot<T> {
        Slot {
            seq: AtomicU32::new(0),
            val: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    #[cfg(loom)]
    fn new() -> Slot<T> {
        Slot {
            seq: AtomicU32::new(0),
            val: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

/// The producer's private state: its own index (the value it last
/// published) and its cache of the consumer's. The two live in different
/// 8-byte words: with both in one, a pop's load of `peer` seemed to wait
/// behind the previous pop's store to `own` (about 10% of the unbatched
/// throughput, measured A/B between two cores, when the consumer had one
/// too).
#[repr(C)]
struct Side {
    own: UnsafeCell<u32>,
    _apart: u32,
    peer: UnsafeCell<u32>,
}

impl Side {
    #[cfg(not(loom))]
    const fn new() -> Side {
        Side {
            own: UnsafeCell::new(0),
            _apart: 0,
            peer: UnsafeCell::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Side {
        Side {
            own: UnsafeCell::new(0),
            _apart: 0,
            peer: UnsafeCell::new(0),
        }
    }

    /// # Safety
    /// Called by this side only.
    #[inline(always)]
    unsafe fn own(&self) -> u32 {
        // SAFETY: private to the caller's side, never borrowed across calls.
        self.own.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_own(&self, v: u32) {
        // SAFETY: as in `own`.
        self.own.with_mut(|p| unsafe { *p = v })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn peer(&self) -> u32 {
        // SAFETY: as in `own`.
        self.peer.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_peer(&self, v: u32) {
        // SAFETY: as in `own`.
        self.peer.with_mut(|p| unsafe { *p = v })
    }
}

// SAFETY: the ring hands `T` values from the producer's thread to the
// consumer's, so `T: Send` is required; every slot is accessed by one side at
// a time, ordered by the Release/Acquire index protocol (see `push`/`pop`).
unsafe impl<T: Copy + Send, const N: usize> Sync for Ring<T, N> {}
// SAFETY: as above; owning a ring only owns `T` values.
unsafe impl<T: Copy + Send, const N: usize> Send for Ring<T, N> {}

impl<T: Copy, const N: usize> core::fmt::Debug for Ring<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &N)
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Copy, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize> Ring<T, N> {
    const CHECK: () = assert!(
        N.is_power_of_two() && N <= (1 << 30),
        "ring capacity must be a power of two"
    );

    /// An empty ring.
    ///
    /// ```
    /// let r: lwkt_core::ipiq::Ring<usize, 8> = lwkt_core::ipiq::Ring::new();
    /// assert!(r.is_empty());
    /// ```
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        Self {
            windex: CachePadded::new(AtomicU32::new(0)),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(AtomicU32::new(0)),
            cons: CachePadded::new(UnsafeCell::new(0)),
            slots: [const { Slot::new() }; N],
        }
    }

    /// An empty ring (loom build: loom's cells are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        Self {
            windex: CachePadded::new(AtomicU32::new(0)),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(AtomicU32::new(0)),
            cons: CachePadded::new(UnsafeCell::new(0)),
            slots: core::array::from_fn(|_| Slot::new()),
        }
    }

    /// Capacity in entries.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries queued now (a snapshot; exact only for a quiescent ring).
    pub fn len(&self) -> usize {
        let w = self.windex.load(Ordering::Acquire);
        let r = self.rindex.load(Ordering::Acquire);
        w.wrapping_sub(r) as usize
    }

    /// True when nothing is queued (a snapshot). It reads the consumer's
    /// index and the slot it would take next, as [`pop`](Self::pop) does,
    /// so a consumer that finds an entry here takes it from a line it
    /// already holds.
    #[inline]
    pub fn is_empty(&self) -> bool {
        let r = self.rindex.load(Ordering::Acquire);
        self.slots[(r as usize) & (N - 1)]
            .seq
            .load(Ordering::Acquire)
            != r.wrapping_add(1)
    }

    /// Free slots as the producer sees them, refreshing its cache of the
    /// consumer's index only when the cache says fewer than `want` are free.
    ///
    /// # Safety
    /// Producer only.
    #[inline(always)]
    unsafe fn free_slots(&self, w: u32, want: u32) -> u32 {
        // SAFETY: the caller is the producer.
        let cached = unsafe { self.prod.peer() };
        let free = N as u32 - w.wrapping_sub(cached);
        if free >= want {
            return free;
        }
        let r = self.rindex.load(Ordering::Acquire);
        // SAFETY: as above.
        unsafe { self.prod.set_peer(r) };
        N as u32 - w.wrapping_sub(r)
    }

    /// Fill level as the producer sees it (refreshes its cache).
    ///
    /// # Safety
    /// Producer only.
    pub unsafe fn producer_len(&self) -> usize {
        // SAFETY: forwarded producer contract.
        unsafe { N - self.free_slots(self.prod.own(), N as u32 + 1) as usize }
    }

    /// Appends `v` and publishes it; gives `v` back if the ring is full.
    ///
    /// # Safety
    /// Only one producer may call `push`/`push_batch`/`producer_len` on a
    /// ring, ever at a time.
    #[inline]
    pub unsafe fn push(&self, v: T) -> Result<(), T> {
        // SAFETY: forwarded producer contract.
        let (mut own, peer0) = unsafe { (self.prod.own(), self.prod.peer()) };
        let mut peer = peer0;
        let r = self.push_at(&mut own, &mut peer, v);
        // Write back only what changed: an unconditional store of both
        // words made every push wait on the previous one's stores (14 ns
        // against 8.6 ns per message, measured).
        // SAFETY: as above.
        unsafe {
            if r.is_ok() {
                self.prod.set_own(own);
            }
            if peer != peer0 {
                self.prod.set_peer(peer);
            }
        }
        r
    }

    /// The push itself, on the producer's index and cache held by the
    /// caller (the ring's private line for `push`, a [`Producer`]'s fields).
    /// The caller is the producer.
    #[inline(always)]
    fn push_at(&self, own: &mut u32, peer: &mut u32, v: T) -> Result<(), T> {
        let w = *own;
        if N as u32 - w.wrapping_sub(*peer) == 0 {
            *peer = self.rindex.load(Ordering::Acquire);
            if N as u32 - w.wrapping_sub(*peer) == 0 {
                return Err(v);
            }
        }
        // SAFETY: slot `w` is free (the consumer's Release store of `rindex`
        // past it, read with Acquire here or by an earlier refresh, ordered
        // its last read before this write) and only the producer (the
        // caller) writes it.
        unsafe { self.fill(w, v) };
        *own = w.wrapping_add(1);
        self.windex.store(*own, Ordering::Release);
        Ok(())
    }

    /// Appends as many items of `items` as fit and publishes them with one
    /// store; returns how many were taken.
    ///
    /// # Safety
    /// Same contract as [`push`](Self::push).
    #[inline]
    pub unsafe fn push_batch(&self, items: &[T]) -> usize {
        // SAFETY: forwarded producer contract.
        let w = unsafe { self.prod.own() };
        // SAFETY: as above.
        let free = unsafe { self.free_slots(w, items.len() as u32) } as usize;
        let n = free.min(items.len());
        for (i, v) in items[..n].iter().enumerate() {
            // SAFETY: as in `push_at`, for each of the `n` free slots.
            unsafe { self.fill(w.wrapping_add(i as u32), *v) };
        }
        if n > 0 {
            let w = w.wrapping_add(n as u32);
            self.windex.store(w, Ordering::Release);
            // SAFETY: as above.
            unsafe { self.prod.set_own(w) };
        }
        n
    }

    /// Write entry `w` into its slot and publish it (its sequence word).
    ///
    /// # Safety
    /// The caller is the producer, and slot `w` is free.
    #[inline(always)]
    unsafe fn fill(&self, w: u32, v: T) {
        let slot = &self.slots[(w as usize) & (N - 1)];
        // SAFETY: forwarded: ours to write until the store below.
        slot.val.with_mut(|p| unsafe { (*p).write(v) });
        slot.seq.store(w.wrapping_add(1), Ordering::Release);
    }

    /// Takes the oldest entry, freeing its slot before returning it.
    ///
    /// # Safety
    /// Only one consumer may call `pop` on a ring (it may re-enter itself on
    /// the same thread of control, as a nested interrupt does).
    #[inline]
    pub unsafe fn pop(&self) -> Option<T> {
        // SAFETY: forwarded consumer contract; the index is written back
        // before we return, so a nested pop sees it.
        let mut own = self.cons.with(|p| unsafe { *p });
        let v = self.pop_at(&mut own);
        if v.is_some() {
            // SAFETY: as above.
            self.cons.with_mut(|p| unsafe { *p = own });
        }
        v
    }

    /// Take the oldest entry if `take` accepts it; leave it (and every
    /// later one) queued otherwise.
    ///
    /// # Safety
    /// Consumer only, as for [`pop`](Ring::pop).
    #[inline]
    pub unsafe fn pop_if(&self, take: impl FnOnce(&T) -> bool) -> Option<T> {
        // SAFETY: forwarded consumer contract.
        let r = self.cons.with(|p| unsafe { *p });
        let slot = &self.slots[(r as usize) & (N - 1)];
        if slot.seq.load(Ordering::Acquire) != r.wrapping_add(1) {
            return None;
        }
        let v = slot.val.with(|p| {
            // SAFETY: entry `r` is here (as in `pop_at`); `T: Copy`, so
            // reading it without taking it leaves the slot intact.
            unsafe { (*p).assume_init_read() }
        });
        if !take(&v) {
            return None;
        }
        // SAFETY: as in `pop`.
        unsafe { self.pop() }
    }

    /// The pop itself, on the consumer's index held by the caller. The
    /// caller is the consumer.
    #[inline(always)]
    fn pop_at(&self, own: &mut u32) -> Option<T> {
        let r = *own;
        let slot = &self.slots[(r as usize) & (N - 1)];
        if slot.seq.load(Ordering::Acquire) != r.wrapping_add(1) {
            return None;
        }
        let v = slot.val.with(|p| {
            // SAFETY: the sequence word says entry `r` is here: the producer
            // wrote it before its Release store of the word, read above with
            // Acquire; it will not overwrite it before our `rindex` store.
            unsafe { (*p).assume_init_read() }
        });
        *own = r.wrapping_add(1);
        self.rindex.store(*own, Ordering::Release);
        Some(v)
    }

    /// The producer side as a handle that keeps the producer's index and
    /// its cache of the consumer's in the handle (in registers, in a loop)
    /// and writes them back to the ring when dropped: a run of pushes
    /// through one handle does no store-to-load round trip through the
    /// ring's private line per push, as `rtrb`'s handles do not.
    ///
    /// ```
    /// use lwkt_core::ipiq::Ring;
    /// let ring: Ring<u32, 8> = Ring::new();
    /// // SAFETY: this test is the only producer and the only consumer.
    /// unsafe {
    ///     let mut p = ring.producer();
    ///     for i in 0..3 { p.push(i).unwrap(); }
    ///     drop(p);
    ///     let mut c = ring.consumer();
    ///     assert_eq!((c.pop(), c.pop(), c.pop(), c.pop()), (Some(0), Some(1), Some(2), None));
    /// }
    /// ```
    ///
    /// # Safety
    /// As for [`push`](Self::push), for the handle's whole life: no other
    /// producer access (another handle, `push`, `push_batch`) meanwhile.
    #[inline(always)]
    pub unsafe fn producer(&self) -> Producer<'_, T, N> {
        // SAFETY: the caller is the producer.
        let (own, peer) = unsafe { (self.prod.own(), self.prod.peer()) };
        Producer {
            ring: self,
            own,
            peer,
        }
    }

    /// The consumer side as a handle, as [`producer`](Self::producer) is
    /// for the producer.
    ///
    /// # Safety
    /// As for [`pop`](Self::pop), for the handle's whole life: no other
    /// consumer access (another handle, a nested `pop`) meanwhile.
    #[inline(always)]
    pub unsafe fn consumer(&self) -> Consumer<'_, T, N> {
        Consumer {
            ring: self,
            // SAFETY: the caller is the consumer.
            own: self.cons.with(|p| unsafe { *p }),
        }
    }
}

/// Exclusive producer access to a [`Ring`] for a run of pushes (see
/// [`Ring::producer`]).
pub struct Producer<'a, T: Copy, const N: usize> {
    ring: &'a Ring<T, N>,
    own: u32,
    peer: u32,
}

impl<T: Copy, const N: usize> Producer<'_, T, N> {
    /// Appends `v` and publishes it; gives `v` back if the ring is full.
    #[inline]
    pub fn push(&mut self, v: T) -> Result<(), T> {
        self.ring.push_at(&mut self.own, &mut self.peer, v)
    }
}

impl<T: Copy, const N: usize> Drop for Producer<'_, T, N> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle is the producer (`Ring::producer`).
        unsafe {
            self.ring.prod.set_own(self.own);
            self.ring.prod.set_peer(self.peer);
        }
    }
}

impl<T: Copy, const N: usize> core::fmt::Debug for Producer<'_, T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// Exclusive consumer access to a [`Ring`] for a run of pops (see
/// [`Ring::consumer`]).
pub struct Consumer<'a, T: Copy, const N: usize> {
    ring: &'a Ring<T, N>,
    own: u32,
}

impl<T: Copy, const N: usize> Consumer<'_, T, N> {
    /// Takes the oldest entry, freeing its slot before returning it.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.ring.pop_at(&mut self.own)
    }
}

impl<T: Copy, const N: usize> Drop for Consumer<'_, T, N> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle is the consumer (`Ring::consumer`).
        self.ring.cons.with_mut(|p| unsafe { *p = self.own });
    }
}

impl<T: Copy, const N: usize> core::fmt::Debug for Consumer<'_, T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Ring;
    use std::sync::Arc;

    #[test]
    fn handles_and_plain_calls_share_the_indices() {
        let r: Ring<u32, 4> = Ring::new();
        let mut next_out = 0;
        // SAFETY: this test is the only producer and the only consumer.
        unsafe {
            for lap in 0..50u32 {
                let base = lap * 4;
                {
                    let mut p = r.producer();
                    p.push(base).unwrap();
                    p.push(base + 1).unwrap();
                }
                r.push(base + 2).unwrap();
                {
                    let mut p = r.producer();
                    p.push(base + 3).unwrap();
                    assert_eq!(p.push(99), Err(99), "full after four");
                }
                assert_eq!(r.pop(), Some(next_out));
                next_out += 1;
                {
                    let mut c = r.consumer();
                    while let Some(v) = c.pop() {
                        assert_eq!(v, next_out);
                        next_out += 1;
                    }
                }
                assert_eq!(r.pop(), None);
            }
        }
        assert_eq!(next_out, 200);
    }

    #[test]
    fn many_laps_keep_order() {
        let r: Ring<u32, 4> = Ring::new();
        let mut next = 0;
        for i in 0..1000u32 {
            // SAFETY: this test is the only producer and consumer.
            unsafe {
                assert!(r.push(i).is_ok());
                if i % 3 == 2 {
                    while let Some(v) = r.pop() {
                        assert_eq!(v, next);
                        next += 1;
                    }
                }
            }
        }
        // SAFETY: as above.
        while let Some(v) = unsafe { r.pop() } {
            assert_eq!(v, next);
            next += 1;
        }
        assert_eq!(next, 1000);
    }

    #[test]
    fn full_ring_refuses_and_batches_take_what_fits() {
        let r: Ring<u64, 4> = Ring::new();
        // SAFETY: this test is the only producer and consumer.
        unsafe {
            assert_eq!(r.push_batch(&[1, 2, 3]), 3);
            assert_eq!(r.push_batch(&[4, 5, 6]), 1);
            assert_eq!(r.push(7), Err(7));
            assert_eq!(r.len(), 4);
            assert_eq!(r.producer_len(), 4);
            assert_eq!(r.pop(), Some(1));
            assert!(r.push(7).is_ok());
            let all: std::vec::Vec<u64> = core::iter::from_fn(|| r.pop()).collect();
            assert_eq!(all, [2, 3, 4, 7]);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn two_threads_move_every_value_once() {
        const N: u64 = if cfg!(miri) { 200 } else { 100_000 };
        let r: Arc<Ring<u64, 8>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                // SAFETY: the only producer.
                if unsafe { p.push(i) }.is_ok() {
                    i += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < N {
            // SAFETY: the only consumer.
            match unsafe { r.pop() } {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        t.join().unwrap();
    }
}
