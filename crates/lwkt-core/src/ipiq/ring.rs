//! The single-producer single-consumer ring under each (source, target) CPU
//! pair: one cell of the paper's "software crossbar".
//!
//! DragonFly: `struct lwkt_ipiq` (`ip_windex`, `ip_rindex`, `ip_info[]`).
//!
//! Indices are free-running `u64`s (they do not wrap in practice: 2^64
//! entries at a billion a second take 584 years); a slot is `index % N`.
//! The producer owns `windex` and the consumer owns `rindex`.
//!
//! **Publication.** Entries are published in *runs*: a `push` is a run of
//! one, a `push_batch` of `n` a run of `n`. The producer writes the run's
//! entries with plain writes, then stores into the sequence word of the
//! run's *first* slot (its head) the index one past the run's end, with
//! Release: one publication per run, whatever its length. The sequence
//! words of the other slots of the run are not written. The consumer keeps,
//! on its private line, its index and the end of the run it is taking;
//! only when it reaches that end does it read a sequence word (the next
//! run's head) with Acquire, which makes the whole next run visible at
//! once. It publishes `rindex` (with Release, after reading the run's
//! entries) only when it finishes a run, so a run costs the consumer one
//! shared load and one shared store, not one per entry. Runs tile the
//! index space, so the consumer only ever reads the head of a run; a head
//! holds the index of its entry's run end, which is in `(index, index+N]`;
//! any older value in that slot (from an earlier lap, or 0) is at most
//! `index`, so it cannot be mistaken for a published run.
//!
//! The consumer tests the slot it would read next, not the producer's
//! index, so taking an entry from another CPU costs one cache line transfer
//! (the slot's), not two (the index's, then the slot's). The producer
//! keeps, on a line only it touches, its index and a cache of the
//! consumer's, as rtrb's handles do: a push reads nothing the consumer
//! writes unless its cache says the ring looks full. `windex` is still
//! published (for [`len`](Ring::len)), on a line no one else reads in the
//! normal course.
//!
//! DragonFly's `lwkt_process_ipiq_core` likewise reads the producer's
//! `ip_windex` once per pass and takes everything below it, but it advances
//! `ip_rindex` per message, and its sender stores `ip_windex` per message.

use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering, UnsafeCell};

/// A bounded SPSC ring of `N` entries of `T` (`N` a power of two).
///
/// Exactly one producer and one consumer may use it at a time; that is why
/// [`push`](Self::push) and [`pop`](Self::pop) are `unsafe`. lwkt-core keeps
/// the contract by giving the ring from CPU `s` to CPU `t` only to code running
/// on `s` (producer) and on `t` (consumer), inside a critical section.
///
/// The consumer side may be re-entered by the consumer itself (an IPI
/// callback that drains the same ring while an outer drain is running), as
/// DragonFly's nested `lwkt_process_ipiq` does: `pop` writes its index back
/// before returning the entry and re-reads it every time.
///
/// [`push_batch`](Self::push_batch) publishes its whole batch with one
/// Release store, and a consumer takes a published batch with one Acquire
/// load and frees it with one Release store (see the module's notes).
///
/// # Examples
///
/// ```
/// use lwkt_core::ipiq::Ring;
/// let ring: Ring<u32, 4> = Ring::new();
/// // SAFETY: this test is the only producer and the only consumer.
/// unsafe {
///     assert!(ring.push(7).is_ok());
///     assert_eq!(ring.push_batch(&[8, 9]), 2);
///     assert_eq!(ring.pop(), Some(7));
///     assert_eq!(ring.pop(), Some(8));
///     assert_eq!(ring.pop(), Some(9));
///     assert_eq!(ring.pop(), None);
/// }
/// ```
// `repr(C)`: the index lines first, in this order, then the slots (the
// measured layout; see `docs/benchmarks.md`).
#[repr(C)]
pub struct Ring<T: Copy, const N: usize> {
    /// The producer's write index, published for [`len`](Ring::len).
    windex: CachePadded<AtomicU64>,
    /// Producer-private: its write index and its cache of `rindex`.
    prod: CachePadded<Side>,
    /// The consumer's read index, published to the producer at the end of
    /// every run it takes (so always the head of a run).
    rindex: CachePadded<AtomicU64>,
    /// Consumer-private: its read index and the end of the run it takes.
    cons: CachePadded<Side>,
    slots: [Slot<T>; N],
}

/// One entry's place: the entry, and the sequence word that says, for the
/// head of a run, where the run ends.
#[repr(C)]
struct Slot<T> {
    /// For a run's head (its first entry) at index `i`: the index one past
    /// the run's last entry, in `(i, i + N]`, stored with Release after
    /// every entry of the run. Not written for the run's other entries.
    /// 0: never written.
    seq: AtomicU64,
    val: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    #[cfg(not(loom))]
    const fn new() -> Slot<T> {
        Slot {
            seq: AtomicU64::new(0),
            val: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    #[cfg(loom)]
    fn new() -> Slot<T> {
        Slot {
            seq: AtomicU64::new(0),
            val: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

/// One side's private state, on a line only that side touches: its own
/// index (for the producer, the value it last published; for the consumer,
/// the next entry to take) and `peer`: the producer's cache of the
/// consumer's index, or the end of the run the consumer is taking. The two
/// live in different 8-byte words: with both in one, a pop's load of
/// `peer` seemed to wait behind the previous pop's store to `own` (about
/// 10% of the unbatched throughput, measured A/B between two cores).
#[repr(C)]
struct Side {
    own: UnsafeCell<u64>,
    peer: UnsafeCell<u64>,
}

impl Side {
    #[cfg(not(loom))]
    const fn new() -> Side {
        Side {
            own: UnsafeCell::new(0),
            peer: UnsafeCell::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Side {
        Side {
            own: UnsafeCell::new(0),
            peer: UnsafeCell::new(0),
        }
    }

    /// # Safety
    /// Called by this side only.
    #[inline(always)]
    unsafe fn own(&self) -> u64 {
        // SAFETY: private to the caller's side (its contract), and never
        // borrowed across calls, so no reference to it is alive.
        self.own.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_own(&self, v: u64) {
        // SAFETY: as in `own`.
        self.own.with_mut(|p| unsafe { *p = v })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn peer(&self) -> u64 {
        // SAFETY: as in `own`.
        self.peer.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_peer(&self, v: u64) {
        // SAFETY: as in `own`.
        self.peer.with_mut(|p| unsafe { *p = v })
    }
}

// SAFETY: the ring hands `T` values from the producer's thread to the
// consumer's, so `T: Send` is required; every slot is accessed by one side at
// a time, ordered by the Release/Acquire protocol (see `push`/`pop`).
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
            windex: CachePadded::new(AtomicU64::new(0)),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(AtomicU64::new(0)),
            cons: CachePadded::new(Side::new()),
            slots: [const { Slot::new() }; N],
        }
    }

    /// An empty ring (loom build: loom's cells are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        Self {
            windex: CachePadded::new(AtomicU64::new(0)),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(AtomicU64::new(0)),
            cons: CachePadded::new(Side::new()),
            slots: core::array::from_fn(|_| Slot::new()),
        }
    }

    /// Capacity in entries.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries queued now (a snapshot; exact only for a quiescent ring).
    /// Entries of a run the consumer is part-way through count until it
    /// finishes the run.
    pub fn len(&self) -> usize {
        let w = self.windex.load(Ordering::Acquire);
        let r = self.rindex.load(Ordering::Acquire);
        w.wrapping_sub(r) as usize
    }

    /// The slot of entry `i`.
    #[inline(always)]
    fn slot(&self, i: u64) -> &Slot<T> {
        &self.slots[(i as usize) & (N - 1)]
    }

    /// Where the run headed at index `r` ends, if it is published: the
    /// head's sequence word, read with Acquire (which makes every entry of
    /// the run visible), when it is above `r`. `r` must be the head of a
    /// run (the consumer's index when it has taken its last run, or the
    /// published `rindex`). Every other value the slot can hold is at most
    /// `r`: 0, or the end of the run it headed a lap or more before (that
    /// head was at most `r - N`, its run at most `N` long).
    #[inline(always)]
    fn run_end(&self, r: u64) -> Option<u64> {
        let e = self.slot(r).seq.load(Ordering::Acquire);
        (e > r).then_some(e)
    }

    /// True when nothing is queued (a snapshot). It reads the consumer's
    /// published index (always the head of a run) and that slot's sequence
    /// word, as [`pop`](Self::pop) does, so a consumer that finds an entry
    /// here takes it from a line it already holds. A consumer part-way
    /// through a run has not published its index past the run's head, so
    /// the ring does not look empty while the run's rest is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.run_end(self.rindex.load(Ordering::Acquire)).is_none()
    }

    /// Free slots as the producer sees them, refreshing its cache of the
    /// consumer's index only when the cache says fewer than `want` are free.
    ///
    /// # Safety
    /// Producer only.
    #[inline(always)]
    unsafe fn free_slots(&self, w: u64, want: u64) -> u64 {
        // SAFETY: the caller is the producer.
        let cached = unsafe { self.prod.peer() };
        let free = N as u64 - w.wrapping_sub(cached);
        if free >= want {
            return free;
        }
        let r = self.rindex.load(Ordering::Acquire);
        // SAFETY: as above.
        unsafe { self.prod.set_peer(r) };
        N as u64 - w.wrapping_sub(r)
    }

    /// Fill level as the producer sees it (refreshes its cache).
    ///
    /// # Safety
    /// Producer only.
    pub unsafe fn producer_len(&self) -> usize {
        // SAFETY: forwarded producer contract.
        unsafe { N - self.free_slots(self.prod.own(), N as u64 + 1) as usize }
    }

    /// Appends `v` and publishes it (a run of one); gives `v` back if the
    /// ring is full.
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
    fn push_at(&self, own: &mut u64, peer: &mut u64, v: T) -> Result<(), T> {
        let w = *own;
        if N as u64 - w.wrapping_sub(*peer) == 0 {
            *peer = self.rindex.load(Ordering::Acquire);
            if N as u64 - w.wrapping_sub(*peer) == 0 {
                return Err(v);
            }
        }
        // SAFETY: slot `w` is free (the consumer's Release store of `rindex`
        // past it, read with Acquire here or by an earlier refresh, ordered
        // its last read before this write) and only the producer (the
        // caller) writes it.
        unsafe { self.write(w, v) };
        *own = w.wrapping_add(1);
        // A run of one: its head is its entry.
        self.slot(w).seq.store(*own, Ordering::Release);
        self.windex.store(*own, Ordering::Release);
        Ok(())
    }

    /// Appends as many items of `items` as fit, as one run published with
    /// one Release store; returns how many were taken.
    ///
    /// DragonFly: the bulk form of `lwkt_send_ipiq3`'s ring write.
    ///
    /// # Safety
    /// Same contract as [`push`](Self::push).
    #[inline]
    pub unsafe fn push_batch(&self, items: &[T]) -> usize {
        // SAFETY: forwarded producer contract.
        let w = unsafe { self.prod.own() };
        let want = items.len().min(N) as u64;
        // SAFETY: as above.
        let free = unsafe { self.free_slots(w, want) } as usize;
        let n = free.min(items.len());
        if n == 0 {
            return 0;
        }
        for (i, v) in items[..n].iter().enumerate() {
            // SAFETY: as in `push_at`, for each of the `n` free slots; none
            // of them is published before the store below.
            unsafe { self.write(w.wrapping_add(i as u64), *v) };
        }
        let end = w.wrapping_add(n as u64);
        // The run's publication: after every entry of it (Release).
        self.slot(w).seq.store(end, Ordering::Release);
        self.windex.store(end, Ordering::Release);
        // SAFETY: as above.
        unsafe { self.prod.set_own(end) };
        n
    }

    /// Write entry `w` into its slot (not published).
    ///
    /// # Safety
    /// The caller is the producer, and slot `w` is free.
    #[inline(always)]
    unsafe fn write(&self, w: u64, v: T) {
        // SAFETY: forwarded: ours to write until the run's publication.
        self.slot(w).val.with_mut(|p| unsafe { (*p).write(v) });
    }

    /// Takes the oldest entry, writing the consumer's index back before
    /// returning it.
    ///
    /// # Safety
    /// Only one consumer may call `pop`/`pop_if` on a ring (it may
    /// re-enter itself on the same thread of control, as a nested interrupt
    /// does).
    #[inline]
    pub unsafe fn pop(&self) -> Option<T> {
        // SAFETY: forwarded consumer contract; the indices are written back
        // before we return, so a nested pop sees them.
        let (mut own, mut end) = unsafe { (self.cons.own(), self.cons.peer()) };
        let v = self.pop_at(&mut own, &mut end);
        if v.is_some() {
            // SAFETY: as above. (A `None` changed neither.)
            unsafe {
                self.cons.set_own(own);
                self.cons.set_peer(end);
            }
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
        let (r, end) = unsafe { (self.cons.own(), self.cons.peer()) };
        if r == end {
            let e = self.run_end(r)?;
            // SAFETY: as above; the run up to `e` is published.
            unsafe { self.cons.set_peer(e) };
        }
        // SAFETY: entry `r` is published (as in `pop_at`); `T: Copy`, so
        // reading it without taking it leaves the slot intact.
        let v = unsafe { self.read(r) };
        if !take(&v) {
            return None;
        }
        // SAFETY: as in `pop`.
        unsafe { self.pop() }
    }

    /// Read entry `r`.
    ///
    /// # Safety
    /// The caller is the consumer and entry `r` is published to it: `r` is
    /// below the end of a run it read with Acquire ([`run_end`]), and not
    /// yet freed (its `rindex` is at most `r`).
    ///
    /// [`run_end`]: Self::run_end
    #[inline(always)]
    unsafe fn read(&self, r: u64) -> T {
        self.slot(r).val.with(|p| {
            // SAFETY: the producer wrote entry `r` before its Release store
            // of the run's end, which the caller read with Acquire; it
            // will not overwrite it before our `rindex` store passes `r`.
            unsafe { (*p).assume_init_read() }
        })
    }

    /// The pop itself, on the consumer's index and run end held by the
    /// caller. The caller is the consumer.
    #[inline(always)]
    fn pop_at(&self, own: &mut u64, end: &mut u64) -> Option<T> {
        let r = *own;
        if r == *end {
            // The last run is taken: `r` heads the next one.
            *end = self.run_end(r)?;
        }
        // SAFETY: `r < *end`, the end of a run read with Acquire, and the
        // consumer has not published `rindex` past `r`.
        let v = unsafe { self.read(r) };
        let next = r.wrapping_add(1);
        *own = next;
        if next == *end {
            // The run is taken: free its slots (after reading them).
            self.rindex.store(next, Ordering::Release);
        }
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
        // SAFETY: the caller is the consumer.
        let (own, end) = unsafe { (self.cons.own(), self.cons.peer()) };
        Consumer {
            ring: self,
            own,
            end,
        }
    }
}

/// Exclusive producer access to a [`Ring`] for a run of pushes (see
/// [`Ring::producer`]).
pub struct Producer<'a, T: Copy, const N: usize> {
    ring: &'a Ring<T, N>,
    own: u64,
    peer: u64,
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
    own: u64,
    end: u64,
}

impl<T: Copy, const N: usize> Consumer<'_, T, N> {
    /// Takes the oldest entry.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.ring.pop_at(&mut self.own, &mut self.end)
    }
}

impl<T: Copy, const N: usize> Drop for Consumer<'_, T, N> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle is the consumer (`Ring::consumer`).
        unsafe {
            self.ring.cons.set_own(self.own);
            self.ring.cons.set_peer(self.end);
        }
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
            // A run's slots are freed when its last entry is taken.
            assert_eq!(r.push(7), Err(7));
            assert!(!r.is_empty());
            assert_eq!(r.len(), 4);
            assert_eq!(r.pop(), Some(2));
            assert_eq!(r.pop(), Some(3));
            assert_eq!(r.len(), 1);
            assert!(r.push(7).is_ok());
            let all: std::vec::Vec<u64> = core::iter::from_fn(|| r.pop()).collect();
            assert_eq!(all, [4, 7]);
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

    #[test]
    fn pop_if_stops_inside_a_run_and_the_ring_stays_non_empty() {
        let r: Ring<u32, 8> = Ring::new();
        // SAFETY: this test is the only producer and consumer.
        unsafe {
            for lap in 0..20u32 {
                let b = lap * 5;
                assert_eq!(r.push_batch(&[b, b + 1, b + 2, b + 3, b + 4]), 5);
                assert_eq!(r.pop_if(|v| *v == b), Some(b));
                assert_eq!(r.pop_if(|v| *v == b + 99), None, "refused, left queued");
                assert!(!r.is_empty(), "the run's rest is still queued");
                assert_eq!(r.pop(), Some(b + 1));
                {
                    let mut c = r.consumer();
                    assert_eq!(c.pop(), Some(b + 2));
                }
                assert_eq!(r.pop_if(|_| true), Some(b + 3));
                assert_eq!(r.pop(), Some(b + 4));
                assert!(r.is_empty());
                assert_eq!(r.pop(), None);
                assert_eq!(r.pop_if(|_| true), None);
            }
        }
    }

    #[test]
    fn two_threads_move_batches_of_every_size_once() {
        const N: u64 = if cfg!(miri) { 300 } else { 200_000 };
        let r: Arc<Ring<u64, 8>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = std::thread::spawn(move || {
            let mut i = 0;
            let mut len = 1;
            while i < N {
                let k = len.min(N - i);
                let batch: std::vec::Vec<u64> = (i..i + k).collect();
                // SAFETY: the only producer.
                let n = unsafe { p.push_batch(&batch) } as u64;
                i += n;
                if n == 0 {
                    std::thread::yield_now();
                }
                len = len % 11 + 1; // 1..=11: some longer than the ring
            }
        });
        let mut next = 0;
        while next < N {
            // SAFETY: the only consumer.
            let got = unsafe {
                if next % 3 == 0 {
                    r.pop()
                } else {
                    r.consumer().pop()
                }
            };
            match got {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        t.join().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { r.pop() }, None);
    }
}
