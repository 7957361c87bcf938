//! The single-producer single-consumer ring under each (source, target) CPU
//! pair: one cell of the paper's "software crossbar".
//!
//! DragonFly: `struct lwkt_ipiq` (`ip_windex`, `ip_rindex`, `ip_info[]`).
//!
//! Indices are free-running words of type `I` ([`RingIndex`]): `u64` by
//! default where the target has 64-bit atomics (they do not wrap in
//! practice: 2^64 entries at a billion a second take 584 years), `u32`
//! otherwise (they wrap; see "32-bit indices" below); a slot is
//! `index % N`. The producer owns `windex` and the consumer owns `rindex`.
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
//! **32-bit indices.** A `u32` index wraps after 2^32 entries, so "the
//! head's word is above `r`" is decided in wrapping arithmetic, in a window:
//! the word at `r` is published when `word - r` (wrapping) is in `[1, N]`.
//! That is exact only if every stale value the slot can hold is in
//! `[r - N, r]` (wrapping), a range disjoint from `[r + 1, r + N]` because
//! `2N <= 2^31 < 2^32` (`N <= 2^30`). With `u64` a slot that was a run's
//! head once and then only ever a run's tail keeps its old end for good,
//! harmlessly (it stays below `r`); with `u32` it would come round after
//! 2^32 entries and alias a published run. So a `u32` ring's producer also
//! writes, into the sequence word of each *tail* entry of a batch (every
//! entry but the head), that entry's own index, with the plain entry
//! writes before the head's Release store (no extra fence: the cache line
//! is the one it writes the entry to). Then, when the consumer looks at
//! slot `r` (`r >= N` in unwrapped terms; below, the slot still holds its
//! initial 0, which is in `[r - N, r]`), entry `r - N` has been produced
//! and taken (the consumer passed it), and the last write to the slot
//! before run `r`'s publication was entry `r - N`'s: either as a head (its
//! run's end, in `(r - N, r]`) or as a tail (`r - N` itself). The consumer
//! read that write or a later one (it read the Acquire head store of
//! `r - N`'s run, which follows it), and the only later one is run `r`'s
//! own publication: the producer writes slot `r` again only after the
//! consumer frees `r`. So the window holds, at any distance of the
//! indices from the wrap. A push of one entry is a head only: no extra
//! store. `u64` rings do none of this (`RingIndex` decides at compile
//! time): their code is what it was before `u32` rings existed.
//! `windex - rindex` is at most `N` in every case, so the wrapping
//! differences the producer computes are exact as well.
//!
//! DragonFly's `lwkt_process_ipiq_core` likewise reads the producer's
//! `ip_windex` once per pass and takes everything below it, but it advances
//! `ip_rindex` per message, and its sender stores `ip_windex` per message.

use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{Ordering, UnsafeCell};

/// A ring's index word: `u64` or `u32` (sealed). See the module notes:
/// a `u64` ring never wraps; a `u32` ring wraps, and also writes its
/// batches' tail entries' sequence words so that a wrapped index is never
/// misread. Only these two exist; `u64` only where the target has 64-bit
/// atomics.
pub trait RingIndex: sealed::Index {}

/// The index word of a [`Ring`] when none is named: `u64` where the target
/// has native 64-bit atomics, `u32` otherwise (never a lock-based 64-bit
/// emulation: IPI rings are used from interrupt context).
#[cfg(any(loom, target_has_atomic = "64"))]
pub type NativeIndex = u64;
/// The index word of a [`Ring`] when none is named: `u64` where the target
/// has native 64-bit atomics, `u32` otherwise (never a lock-based 64-bit
/// emulation: IPI rings are used from interrupt context).
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub type NativeIndex = u32;

#[cfg(any(loom, target_has_atomic = "64"))]
impl RingIndex for u64 {}
impl RingIndex for u32 {}

mod sealed {
    use crate::sync::Ordering;

    /// What a ring does with its index word. Every method is the plain
    /// operation of the type, so a `Ring<_, _, u64>` compiles to what the
    /// ring did with `u64` written out.
    #[allow(unreachable_pub)] // sealed: nameable outside only as a bound
    pub trait Index: Copy + Ord + core::fmt::Debug + Send + Sync + 'static {
        /// The atomic of this width (loom's under loom).
        type Atomic: Send + Sync;
        /// A zero atomic, for `const` construction.
        #[cfg(not(loom))]
        #[allow(clippy::declare_interior_mutable_const)] // copied, never borrowed
        const ZERO: Self::Atomic;
        /// A zero atomic (loom's are not `const`).
        #[cfg(loom)]
        fn zero() -> Self::Atomic;
        /// 0.
        const NIL: Self;
        /// Whether a batch writes its tail entries' sequence words
        /// (wrapping indices: see the module notes).
        const WRAPS: bool;
        fn load(a: &Self::Atomic, o: Ordering) -> Self;
        fn store(a: &Self::Atomic, v: Self, o: Ordering);
        /// `n` as an index (`n <= 2^30`, or a small count).
        fn of(n: usize) -> Self;
        /// `self` as a `usize` (a slot number or a count up to `N`).
        fn to_usize(self) -> usize;
        fn wrapping_add(self, n: Self) -> Self;
        fn wrapping_sub(self, n: Self) -> Self;
        /// `self - n`, which does not overflow.
        fn minus(self, n: Self) -> Self;
        /// Whether sequence word `e` of the head slot of index `r`
        /// publishes a run at `r` (of at most `n` entries).
        fn published(e: Self, r: Self, n: usize) -> bool;
    }

    macro_rules! index {
        ($t:ty, $atomic:ty, $wraps:expr) => {
            impl Index for $t {
                type Atomic = $atomic;
                #[cfg(not(loom))]
                #[allow(clippy::declare_interior_mutable_const)] // copied, never borrowed
                const ZERO: $atomic = <$atomic>::new(0);
                #[cfg(loom)]
                fn zero() -> $atomic {
                    <$atomic>::new(0)
                }
                const NIL: $t = 0;
                const WRAPS: bool = $wraps;
                #[inline(always)]
                fn load(a: &$atomic, o: Ordering) -> $t {
                    a.load(o)
                }
                #[inline(always)]
                fn store(a: &$atomic, v: $t, o: Ordering) {
                    a.store(v, o)
                }
                #[inline(always)]
                fn of(n: usize) -> $t {
                    n as $t
                }
                #[inline(always)]
                fn to_usize(self) -> usize {
                    self as usize
                }
                #[inline(always)]
                fn wrapping_add(self, n: $t) -> $t {
                    <$t>::wrapping_add(self, n)
                }
                #[inline(always)]
                fn wrapping_sub(self, n: $t) -> $t {
                    <$t>::wrapping_sub(self, n)
                }
                #[inline(always)]
                fn minus(self, n: $t) -> $t {
                    self - n
                }
                #[inline(always)]
                fn published(e: $t, r: $t, n: usize) -> bool {
                    if $wraps {
                        // In the window: `e - r` (wrapping) in `[1, n]`.
                        e.wrapping_sub(r).wrapping_sub(1) < n as $t
                    } else {
                        // Stale values are at most `r`, published ones above.
                        let _ = n;
                        e > r
                    }
                }
            }
        };
    }

    #[cfg(any(loom, target_has_atomic = "64"))]
    index!(u64, crate::sync::AtomicU64, false);
    index!(u32, crate::sync::AtomicU32, true);
}

/// A bounded SPSC ring of `N` entries of `T` (`N` a power of two).
///
/// `I` is the index word ([`RingIndex`]): [`NativeIndex`] unless named.
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
pub struct Ring<T: Copy, const N: usize, I: RingIndex = NativeIndex> {
    /// The producer's write index, published for [`len`](Ring::len).
    windex: CachePadded<I::Atomic>,
    /// Producer-private: its write index and its cache of `rindex`.
    prod: CachePadded<Side<I>>,
    /// The consumer's read index, published to the producer at the end of
    /// every run it takes (so always the head of a run).
    rindex: CachePadded<I::Atomic>,
    /// Consumer-private: its read index and the end of the run it takes.
    cons: CachePadded<Side<I>>,
    slots: [Slot<T, I>; N],
}

/// One entry's place: the entry, and the sequence word that says, for the
/// head of a run, where the run ends.
#[repr(C)]
struct Slot<T, I: RingIndex> {
    /// For a run's head (its first entry) at index `i`: the index one past
    /// the run's last entry, in `(i, i + N]`, stored with Release after
    /// every entry of the run. Not written for the run's other entries.
    /// 0: never written. In a `u32` ring, a batch's tail entries get their
    /// own index here (see the module notes).
    seq: I::Atomic,
    val: UnsafeCell<MaybeUninit<T>>,
}

impl<T, I: RingIndex> Slot<T, I> {
    #[cfg(not(loom))]
    const fn new() -> Slot<T, I> {
        Slot {
            seq: I::ZERO,
            val: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    #[cfg(loom)]
    fn new() -> Slot<T, I> {
        Slot {
            seq: I::zero(),
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
struct Side<I> {
    own: UnsafeCell<I>,
    peer: UnsafeCell<I>,
}

impl<I: RingIndex> Side<I> {
    #[cfg(not(loom))]
    const fn new() -> Side<I> {
        Side {
            own: UnsafeCell::new(I::NIL),
            peer: UnsafeCell::new(I::NIL),
        }
    }

    #[cfg(loom)]
    fn new() -> Side<I> {
        Side {
            own: UnsafeCell::new(I::NIL),
            peer: UnsafeCell::new(I::NIL),
        }
    }

    /// # Safety
    /// Called by this side only.
    #[inline(always)]
    unsafe fn own(&self) -> I {
        // SAFETY: private to the caller's side (its contract), and never
        // borrowed across calls, so no reference to it is alive.
        self.own.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_own(&self, v: I) {
        // SAFETY: as in `own`.
        self.own.with_mut(|p| unsafe { *p = v })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn peer(&self) -> I {
        // SAFETY: as in `own`.
        self.peer.with(|p| unsafe { *p })
    }

    /// # Safety
    /// As for [`own`](Self::own).
    #[inline(always)]
    unsafe fn set_peer(&self, v: I) {
        // SAFETY: as in `own`.
        self.peer.with_mut(|p| unsafe { *p = v })
    }
}

// SAFETY: the ring hands `T` values from the producer's thread to the
// consumer's, so `T: Send` is required; every slot is accessed by one side at
// a time, ordered by the Release/Acquire protocol (see `push`/`pop`).
unsafe impl<T: Copy + Send, const N: usize, I: RingIndex> Sync for Ring<T, N, I> {}
// SAFETY: as above; owning a ring only owns `T` values.
unsafe impl<T: Copy + Send, const N: usize, I: RingIndex> Send for Ring<T, N, I> {}

impl<T: Copy, const N: usize, I: RingIndex> core::fmt::Debug for Ring<T, N, I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &N)
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Copy, const N: usize, I: RingIndex> Default for Ring<T, N, I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize, I: RingIndex> Ring<T, N, I> {
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
            windex: CachePadded::new(I::ZERO),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(I::ZERO),
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
            windex: CachePadded::new(I::zero()),
            prod: CachePadded::new(Side::new()),
            rindex: CachePadded::new(I::zero()),
            cons: CachePadded::new(Side::new()),
            slots: core::array::from_fn(|_| Slot::new()),
        }
    }

    /// A ring whose indices all start at `start` instead of 0, in the
    /// state a ring reaches when entry `start - 1` was the tail of a batch
    /// and everything is taken: every slot's word holds the index of the
    /// lap before (what a tail write leaves), the most a wrapped index
    /// can see. For tests of the wrap-around.
    #[cfg(all(test, not(loom)))]
    fn starting_at(start: I) -> Self {
        let r = Self::new();
        for k in 1..=N {
            let i = start.wrapping_sub(I::of(k));
            if I::WRAPS || i < start {
                I::store(&r.slot(i).seq, i, Ordering::Relaxed);
            }
        }
        I::store(&r.windex, start, Ordering::Relaxed);
        I::store(&r.rindex, start, Ordering::Relaxed);
        // SAFETY: the ring is ours alone.
        unsafe {
            r.prod.set_own(start);
            r.prod.set_peer(start);
            r.cons.set_own(start);
            r.cons.set_peer(start);
        }
        r
    }

    /// Capacity in entries.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries queued now (a snapshot; exact only for a quiescent ring).
    /// Entries of a run the consumer is part-way through count until it
    /// finishes the run.
    pub fn len(&self) -> usize {
        let w = I::load(&self.windex, Ordering::Acquire);
        let r = I::load(&self.rindex, Ordering::Acquire);
        w.wrapping_sub(r).to_usize()
    }

    /// The slot of entry `i`.
    #[inline(always)]
    fn slot(&self, i: I) -> &Slot<T, I> {
        &self.slots[i.to_usize() & (N - 1)]
    }

    /// Where the run headed at index `r` ends, if it is published: the
    /// head's sequence word, read with Acquire (which makes every entry of
    /// the run visible), when it is above `r`. `r` must be the head of a
    /// run (the consumer's index when it has taken its last run, or the
    /// published `rindex`). Every other value the slot can hold is at most
    /// `r`: 0, or the end of the run it headed a lap or more before (that
    /// head was at most `r - N`, its run at most `N` long). (For a `u32`
    /// ring, "above" and "at most" are in a window of wrapping arithmetic;
    /// see the module notes.)
    #[inline(always)]
    fn run_end(&self, r: I) -> Option<I> {
        let e = I::load(&self.slot(r).seq, Ordering::Acquire);
        I::published(e, r, N).then_some(e)
    }

    /// True when nothing is queued (a snapshot). It reads the consumer's
    /// published index (always the head of a run) and that slot's sequence
    /// word, as [`pop`](Self::pop) does, so a consumer that finds an entry
    /// here takes it from a line it already holds. A consumer part-way
    /// through a run has not published its index past the run's head, so
    /// the ring does not look empty while the run's rest is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.run_end(I::load(&self.rindex, Ordering::Acquire))
            .is_none()
    }

    /// Free slots as the producer sees them, refreshing its cache of the
    /// consumer's index only when the cache says fewer than `want` are free.
    ///
    /// # Safety
    /// Producer only.
    #[inline(always)]
    unsafe fn free_slots(&self, w: I, want: I) -> I {
        // SAFETY: the caller is the producer.
        let cached = unsafe { self.prod.peer() };
        let free = I::of(N).minus(w.wrapping_sub(cached));
        if free >= want {
            return free;
        }
        let r = I::load(&self.rindex, Ordering::Acquire);
        // SAFETY: as above.
        unsafe { self.prod.set_peer(r) };
        I::of(N).minus(w.wrapping_sub(r))
    }

    /// Fill level as the producer sees it (refreshes its cache).
    ///
    /// # Safety
    /// Producer only.
    pub unsafe fn producer_len(&self) -> usize {
        // SAFETY: forwarded producer contract.
        unsafe { N - self.free_slots(self.prod.own(), I::of(N + 1)).to_usize() }
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
    fn push_at(&self, own: &mut I, peer: &mut I, v: T) -> Result<(), T> {
        let w = *own;
        if I::of(N).minus(w.wrapping_sub(*peer)) == I::NIL {
            *peer = I::load(&self.rindex, Ordering::Acquire);
            if I::of(N).minus(w.wrapping_sub(*peer)) == I::NIL {
                return Err(v);
            }
        }
        // SAFETY: slot `w` is free (the consumer's Release store of `rindex`
        // past it, read with Acquire here or by an earlier refresh, ordered
        // its last read before this write) and only the producer (the
        // caller) writes it.
        unsafe { self.write(w, v) };
        *own = w.wrapping_add(I::of(1));
        // A run of one: its head is its entry.
        I::store(&self.slot(w).seq, *own, Ordering::Release);
        I::store(&self.windex, *own, Ordering::Release);
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
        let want = I::of(items.len().min(N));
        // SAFETY: as above.
        let free = unsafe { self.free_slots(w, want) }.to_usize();
        let n = free.min(items.len());
        if n == 0 {
            return 0;
        }
        for (i, v) in items[..n].iter().enumerate() {
            // SAFETY: as in `push_at`, for each of the `n` free slots; none
            // of them is published before the store below.
            unsafe { self.write(w.wrapping_add(I::of(i)), *v) };
        }
        if I::WRAPS {
            // The tail entries of a `u32` ring's run: each sequence word
            // gets its entry's own index, which no later look at the slot
            // can take for a published run (the module notes). Ordered
            // before the consumer's next look by the Release store below.
            // (A separate loop: a `u64` ring's code stays as it was.)
            for i in 1..n {
                let at = w.wrapping_add(I::of(i));
                I::store(&self.slot(at).seq, at, Ordering::Relaxed);
            }
        }
        let end = w.wrapping_add(I::of(n));
        // The run's publication: after every entry of it (Release).
        I::store(&self.slot(w).seq, end, Ordering::Release);
        I::store(&self.windex, end, Ordering::Release);
        // SAFETY: as above.
        unsafe { self.prod.set_own(end) };
        n
    }

    /// Write entry `w` into its slot (not published).
    ///
    /// # Safety
    /// The caller is the producer, and slot `w` is free.
    #[inline(always)]
    unsafe fn write(&self, w: I, v: T) {
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
    unsafe fn read(&self, r: I) -> T {
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
    fn pop_at(&self, own: &mut I, end: &mut I) -> Option<T> {
        let r = *own;
        if r == *end {
            // The last run is taken: `r` heads the next one.
            *end = self.run_end(r)?;
        }
        // SAFETY: `r < *end`, the end of a run read with Acquire, and the
        // consumer has not published `rindex` past `r`.
        let v = unsafe { self.read(r) };
        let next = r.wrapping_add(I::of(1));
        *own = next;
        if next == *end {
            // The run is taken: free its slots (after reading them).
            I::store(&self.rindex, next, Ordering::Release);
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
    pub unsafe fn producer(&self) -> Producer<'_, T, N, I> {
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
    pub unsafe fn consumer(&self) -> Consumer<'_, T, N, I> {
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
pub struct Producer<'a, T: Copy, const N: usize, I: RingIndex = NativeIndex> {
    ring: &'a Ring<T, N, I>,
    own: I,
    peer: I,
}

impl<T: Copy, const N: usize, I: RingIndex> Producer<'_, T, N, I> {
    /// Appends `v` and publishes it; gives `v` back if the ring is full.
    #[inline]
    pub fn push(&mut self, v: T) -> Result<(), T> {
        self.ring.push_at(&mut self.own, &mut self.peer, v)
    }
}

impl<T: Copy, const N: usize, I: RingIndex> Drop for Producer<'_, T, N, I> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle is the producer (`Ring::producer`).
        unsafe {
            self.ring.prod.set_own(self.own);
            self.ring.prod.set_peer(self.peer);
        }
    }
}

impl<T: Copy, const N: usize, I: RingIndex> core::fmt::Debug for Producer<'_, T, N, I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// Exclusive consumer access to a [`Ring`] for a run of pops (see
/// [`Ring::consumer`]).
pub struct Consumer<'a, T: Copy, const N: usize, I: RingIndex = NativeIndex> {
    ring: &'a Ring<T, N, I>,
    own: I,
    end: I,
}

impl<T: Copy, const N: usize, I: RingIndex> Consumer<'_, T, N, I> {
    /// Takes the oldest entry.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.ring.pop_at(&mut self.own, &mut self.end)
    }
}

impl<T: Copy, const N: usize, I: RingIndex> Drop for Consumer<'_, T, N, I> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle is the consumer (`Ring::consumer`).
        unsafe {
            self.ring.cons.set_own(self.own);
            self.ring.cons.set_peer(self.end);
        }
    }
}

impl<T: Copy, const N: usize, I: RingIndex> core::fmt::Debug for Consumer<'_, T, N, I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Ring, RingIndex};
    use std::sync::Arc;

    #[test]
    fn the_u32_window_tells_published_from_stale_across_the_wrap() {
        use super::sealed::Index;
        const N: usize = 8;
        for r in [0u32, 1, 7, 8, u32::MAX - 8, u32::MAX - 1, u32::MAX] {
            // Published: run ends in (r, r + N].
            for k in 1..=N as u32 {
                assert!(u32::published(r.wrapping_add(k), r, N), "r={r} k={k}");
            }
            // Stale: anything in [r - N, r] (a lap-old head's end or
            // tail's index, or the initial 0 on the first lap).
            for k in 0..=N as u32 {
                assert!(!u32::published(r.wrapping_sub(k), r, N), "r={r} -{k}");
            }
        }
        // The largest ring: the two windows still do not meet.
        let n = 1usize << 30;
        let r = u32::MAX - 3;
        assert!(u32::published(r.wrapping_add(n as u32), r, n));
        assert!(!u32::published(r.wrapping_sub(n as u32), r, n));
        assert!(!u32::published(r.wrapping_add(n as u32 + 1), r, n));
        // u64 indices never wrap: a plain comparison.
        assert!(u64::published(9, 8, N) && !u64::published(8, 8, N) && !u64::published(0, 8, N));
    }

    /// Many laps through the wrap of a `u32` ring (and the same for
    /// `u64`, past 2^32 without wrapping), with runs of every length so
    /// that heads and tails change places from lap to lap, taken by `pop`,
    /// handles and `pop_if`: every value once, in order.
    fn laps_across<I: RingIndex>(start: I) {
        const N: usize = 8;
        let r: Ring<u64, N, I> = Ring::starting_at(start);
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
        let (mut next_in, mut next_out) = (0u64, 0u64);
        let mut len = 1usize;
        let steps = if cfg!(miri) { 150 } else { 2_000u64 };
        for step in 0..steps {
            let batch: std::vec::Vec<u64> = (next_in..next_in + len as u64).collect();
            // SAFETY: this test is the only producer and the only consumer.
            unsafe {
                let n = if len == 1 && step % 2 == 0 {
                    usize::from(r.push(next_in).is_ok())
                } else {
                    r.push_batch(&batch)
                };
                next_in += n as u64;
                assert!(r.len() <= N);
                // A run's slots are freed when its last entry is taken.
                let queued = (next_in - next_out) as usize;
                assert!((queued..=N).contains(&r.producer_len()));
                // Take some, sometimes all, sometimes stop inside a run.
                let take = (step % 5) as usize + 1;
                for k in 0..take {
                    let got = match k % 3 {
                        0 => r.pop(),
                        1 => r.consumer().pop(),
                        _ => r.pop_if(|_| true),
                    };
                    match got {
                        Some(v) => {
                            assert_eq!(v, next_out);
                            next_out += 1;
                        }
                        None => {
                            assert_eq!(next_out, next_in, "nothing lost");
                            assert!(r.is_empty());
                            // Empty: no slot reads as published for any
                            // index it may be looked at for next.
                            let at = I::load(&r.rindex, std::sync::atomic::Ordering::Relaxed);
                            for j in 0..N {
                                assert_eq!(r.run_end(at.wrapping_add(I::of(j))), None);
                            }
                            break;
                        }
                    }
                }
                if next_out < next_in {
                    assert!(!r.is_empty());
                }
            }
            len = len % (N + 3) + 1; // 1..=N+3: some longer than the ring
        }
        // SAFETY: as above.
        while let Some(v) = unsafe { r.pop() } {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert!(r.is_empty());
    }

    #[test]
    fn u32_indices_wrap_cleanly() {
        for start in [0, 5, u32::MAX - 300, u32::MAX - 7, u32::MAX] {
            laps_across::<u32>(start);
        }
    }

    #[test]
    fn u64_indices_cross_2_to_the_32_unchanged() {
        // (Never near 2^64: a `u64` ring does not wrap, by design.)
        for start in [0, u64::from(u32::MAX) - 300, 1 << 40] {
            laps_across::<u64>(start);
        }
    }

    /// A slot that headed a run once and then, for laps, was only ever a
    /// tail: a `u32` ring keeps its word in the window (the tail writes),
    /// so once the indices wrap past it, it still reads as stale.
    #[test]
    fn a_u32_slot_that_was_a_head_long_ago_is_not_taken_for_one() {
        const N: usize = 4;
        let r: Ring<u32, N, u32> = Ring::starting_at(u32::MAX - 1);
        // SAFETY: this test is the only producer and the only consumer.
        unsafe {
            // One single push: slot of index MAX-1 is a head.
            assert!(r.push(1).is_ok());
            assert_eq!(r.pop(), Some(1));
            // Full batches from index MAX: slot (MAX-1) % 4 is a tail in
            // every one of them, across the wrap.
            for lap in 0..10u32 {
                let b = [lap, lap, lap, lap];
                assert_eq!(r.push_batch(&b), 4);
                for _ in 0..4 {
                    assert_eq!(r.pop(), Some(lap));
                }
                assert_eq!(r.pop(), None);
                assert!(r.is_empty());
            }
        }
    }

    #[test]
    fn two_threads_move_batches_across_the_u32_wrap() {
        const N: u64 = if cfg!(miri) { 300 } else { 100_000 };
        let r: Arc<Ring<u64, 8, u32>> = Arc::new(Ring::starting_at(u32::MAX - 1000));
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
                len = len % 11 + 1;
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
