//! The lock-free list behind remote frees: any CPU pushes, only the owner
//! takes, and it takes everything at once. Because nothing is ever popped
//! one at a time, there is no ABA problem and no need for tags.
//!
//! DragonFly: `z_RChunks` (the chunk list) and the per-CPU list of zones
//! with remote frees waiting (what `RSignal` + `kfree_remote` achieve).
//!
//! Two kinds: [`AtomicStack`], of anything with a link (the per-CPU queue
//! of zones), and [`CountedStack`], of the chunks of one zone, whose head
//! word carries the number of chunks on it, so that the owner takes the
//! list and its length with one swap and never walks it to count.

use core::marker::PhantomData;
use core::ptr;

use crate::sync::{AtomicPtr, Ordering};

/// The word of a [`CountedStack`]'s head: `count << SHIFT | offset`.
/// `u64` (a 32-bit count beside a 32-bit offset: blocks under 4 GiB) where
/// the target has native 64-bit atomics, `u32` otherwise (16 and 16: blocks
/// of at most 64 KiB, which a zone is, of at most 2^16 - 1 items). The
/// head is pushed to by any CPU, also with interrupts enabled, so it is
/// always a native atomic, never a lock-based emulation of a wider one (an
/// interrupt handler freeing remotely would spin on the lock the code it
/// interrupted holds: see docs/porting.md).
pub(crate) trait HeadWord: Copy + Eq + core::fmt::Debug {
    /// The atomic of this width (loom's under loom).
    type Atomic;
    /// Bits of the offset (the count is above them).
    const SHIFT: u32;
    /// A zero atomic, for `const` construction.
    #[cfg(not(loom))]
    #[allow(clippy::declare_interior_mutable_const)] // copied, never borrowed
    const ZERO: Self::Atomic;
    /// A zero atomic (loom's are not `const`).
    #[cfg(loom)]
    fn zero() -> Self::Atomic;
    fn load(a: &Self::Atomic, o: Ordering) -> Self;
    fn swap_zero(a: &Self::Atomic, o: Ordering) -> Self;
    fn cas_weak(a: &Self::Atomic, old: Self, new: Self) -> Result<Self, Self>;
    /// The word with `n` more items, the first at `off` (which fits).
    fn bumped(self, n: u32, off: usize) -> Self;
    /// The count (bits above `SHIFT`).
    fn count(self) -> u32;
    /// The offset (bits below `SHIFT`).
    fn offset(self) -> usize;
    fn is_zero(self) -> bool;
}

macro_rules! head_word {
    ($t:ty, $atomic:ty, $shift:expr) => {
        impl HeadWord for $t {
            type Atomic = $atomic;
            const SHIFT: u32 = $shift;
            #[cfg(not(loom))]
            #[allow(clippy::declare_interior_mutable_const)] // copied, never borrowed
            const ZERO: $atomic = <$atomic>::new(0);
            #[cfg(loom)]
            fn zero() -> $atomic {
                <$atomic>::new(0)
            }
            #[inline(always)]
            fn load(a: &$atomic, o: Ordering) -> $t {
                a.load(o)
            }
            #[inline(always)]
            fn swap_zero(a: &$atomic, o: Ordering) -> $t {
                a.swap(0, o)
            }
            #[inline(always)]
            fn cas_weak(a: &$atomic, old: $t, new: $t) -> Result<$t, $t> {
                a.compare_exchange_weak(old, new, Ordering::Release, Ordering::Relaxed)
            }
            #[inline(always)]
            fn bumped(self, n: u32, off: usize) -> $t {
                let count = (self >> $shift) + n as $t;
                debug_assert!(
                    count >> (<$t>::BITS - $shift) == 0,
                    "more items than a block holds"
                );
                count << $shift | off as $t
            }
            #[inline(always)]
            fn count(self) -> u32 {
                (self >> $shift) as u32
            }
            #[inline(always)]
            fn offset(self) -> usize {
                (self & ((1 << $shift) - 1)) as usize
            }
            #[inline(always)]
            fn is_zero(self) -> bool {
                self == 0
            }
        }
    };
}

#[cfg(any(loom, target_has_atomic = "64"))]
head_word!(u64, crate::sync::AtomicU64, 32);
head_word!(u32, crate::sync::AtomicU32, 16);

/// The head word this target uses: see [`HeadWord`].
#[cfg(any(loom, target_has_atomic = "64"))]
pub(crate) type NativeHead = u64;
/// The head word this target uses: see [`HeadWord`].
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(crate) type NativeHead = u32;

// A zone is the block of a `CountedStack<_, NativeHead>`: its offsets and
// its chunk count (at most one per 8 bytes) fit the head word's halves.
const _: () = assert!(
    crate::class::ZONE_SIZE <= 1 << <NativeHead as HeadWord>::SHIFT,
    "a zone does not fit the remote-free head word"
);

/// Something with a link word the list may use while it holds the item.
///
/// # Safety
/// `set_next`/`next` access a field of `*this` that nothing else uses while
/// the item is on a list.
pub(crate) unsafe trait Link {
    /// # Safety
    /// `this` is live and owned by the caller.
    unsafe fn set_next(this: *mut Self, next: *mut Self);
    /// # Safety
    /// `this` is live and was taken off a list by the caller.
    unsafe fn next(this: *mut Self) -> *mut Self;
}

/// A multi-producer, single-consumer stack that the consumer drains whole.
pub(crate) struct AtomicStack<T> {
    head: AtomicPtr<T>,
}

impl<T: Link> AtomicStack<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        AtomicStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        AtomicStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Push `item` (any CPU).
    ///
    /// # Safety
    /// `item` is live, on no list, and the caller gives it up: after the
    /// push only the consumer may touch it.
    #[inline]
    pub(crate) unsafe fn push(&self, item: *mut T) {
        // SAFETY: forwarded; a one-item chain.
        unsafe { self.push_chain(item, item) }
    }

    /// Push a chain of items, `first` to `last`, already linked (any CPU),
    /// with one compare-and-swap.
    ///
    /// # Safety
    /// The items from `first` to `last` are live, linked through
    /// [`Link::next`] from `first` to `last`, on no list, and the caller
    /// gives them up: after the push only the consumer may touch them.
    #[inline]
    pub(crate) unsafe fn push_chain(&self, first: *mut T, last: *mut T) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `last` is ours until the CAS publishes it.
            unsafe { T::set_next(last, head) };
            match self
                .head
                .compare_exchange_weak(head, first, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Take every item (the consumer only); walk them with [`Link::next`].
    #[inline]
    pub(crate) fn take_all(&self) -> *mut T {
        if self.head.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

/// A multi-producer, single-consumer stack of items that all lie in one
/// block (a zone: less than 2^`W::SHIFT` bytes from `base`, 4 GiB for the
/// `u64` word, 64 KiB for `u32`), drained whole by the
/// consumer, whose head word holds the number of items on the list beside
/// the first item's offset from the block's start. A push of a chain says
/// how many items it brings, so the consumer learns the length of what it
/// takes from the swap itself: no walk of links last written on another
/// CPU (a cache miss each) just to count them.
///
/// The head word is `count << W::SHIFT | offset` (`SHIFT` 32 in a `u64`,
/// 16 in a `u32`: see [`HeadWord`]), 0 when empty (every push adds at
/// least one to the count). Items are linked through [`Link::next`] as
/// full pointers; only the head is an offset, turned back into a pointer
/// from the block's base (keeping the block's provenance).
pub(crate) struct CountedStack<T, W: HeadWord = NativeHead> {
    head: W::Atomic,
    _items: PhantomData<AtomicPtr<T>>,
}

impl<T: Link, W: HeadWord> CountedStack<T, W> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        CountedStack {
            head: W::ZERO,
            _items: PhantomData,
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        CountedStack {
            head: W::zero(),
            _items: PhantomData,
        }
    }

    /// Push a chain of `n` items, `first` to `last`, already linked (any
    /// CPU), with one compare-and-swap.
    ///
    /// # Safety
    /// `base` is the start of the block every item of this stack lies in
    /// (the same for every call on this stack), less than 2^`W::SHIFT`
    /// bytes long (4 GiB with `u64`, 64 KiB with `u32`); the
    /// `n >= 1` items from `first` to `last` are live, in that block,
    /// linked through [`Link::next`] from `first` to `last`, on no list,
    /// and the caller gives them up: after the push only the consumer may
    /// touch them.
    #[inline]
    pub(crate) unsafe fn push_chain(&self, base: *mut u8, first: *mut T, last: *mut T, n: u32) {
        debug_assert!(n >= 1);
        let off = first.addr().wrapping_sub(base.addr());
        debug_assert!(off >> W::SHIFT == 0, "an item outside the block");
        let mut head = W::load(&self.head, Ordering::Relaxed);
        loop {
            // SAFETY: forwarded; the head is an item of the block.
            let next = unsafe { Self::item(base, head) };
            // SAFETY: `last` is ours until the CAS publishes it.
            unsafe { T::set_next(last, next) };
            match W::cas_weak(&self.head, head, head.bumped(n, off)) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Take every item and their number (the consumer only); walk them
    /// with [`Link::next`] (the last one's link is null). `(null, 0)` when
    /// the stack is empty.
    ///
    /// # Safety
    /// `base` is the block's start, as given to every push.
    #[inline]
    pub(crate) unsafe fn take_all(&self, base: *mut u8) -> (*mut T, u32) {
        if W::load(&self.head, Ordering::Relaxed).is_zero() {
            return (ptr::null_mut(), 0);
        }
        let head = W::swap_zero(&self.head, Ordering::Acquire);
        // SAFETY: forwarded; the head (if any) is an item of the block.
        (unsafe { Self::item(base, head) }, head.count())
    }

    /// The item a head word names (null for an empty list).
    ///
    /// # Safety
    /// `base` is the block's start and `head` a word of this stack, whose
    /// offset lies in the block.
    #[inline(always)]
    unsafe fn item(base: *mut u8, head: W) -> *mut T {
        if head.is_zero() {
            ptr::null_mut()
        } else {
            // SAFETY: the offset of an item of the block, from its start.
            unsafe { base.add(head.offset()) }.cast()
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{CountedStack, HeadWord, Link};
    use crate::class::ZONE_SIZE;
    use crate::zone::Chunk;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Push chunks all over a zone-sized block, single and as chains, up
    /// to every 8-byte chunk of it at once, then drain: the count matches
    /// the list and every chunk comes back once, for both head words (the
    /// `u32` one is what a target without 64-bit atomics uses).
    fn every_offset_and_count<W: HeadWord>() {
        let layout = Layout::from_size_align(ZONE_SIZE, ZONE_SIZE).unwrap();
        // SAFETY: non-zero layout.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        let s: CountedStack<Chunk, W> = CountedStack::new();
        let all = ZONE_SIZE / 8;
        // SAFETY: `base` is the block; every chunk pushed is in it, each
        // once, and linked by us before its push.
        unsafe {
            let chunk = |i: usize| base.add(8 * i).cast::<Chunk>();
            // Singles at both ends of the block (offset 0 and the last).
            s.push_chain(base, chunk(all - 1), chunk(all - 1), 1);
            // The rest as chains of 1..=7, last chunk first.
            let mut i = 0;
            let mut len = 1;
            while i < all - 1 {
                let n = len.min(all - 1 - i);
                for k in i..i + n - 1 {
                    Chunk::set_next(chunk(k), chunk(k + 1));
                }
                s.push_chain(base, chunk(i), chunk(i + n - 1), n as u32);
                i += n;
                len = len % 7 + 1;
            }
            let (mut c, n) = s.take_all(base);
            assert_eq!(n as usize, all, "the head word holds the count");
            let mut seen = std::vec![false; all];
            while !c.is_null() {
                let k = (c as usize - base as usize) / 8;
                assert!(!seen[k], "chunk {k} twice");
                seen[k] = true;
                c = Chunk::next(c);
            }
            assert!(seen.iter().all(|&b| b));
            assert_eq!(s.take_all(base), (core::ptr::null_mut(), 0));
            dealloc(base, layout);
        }
    }

    #[test]
    fn u64_head_word() {
        every_offset_and_count::<u64>();
    }

    #[test]
    fn u32_head_word_fits_a_zone() {
        every_offset_and_count::<u32>();
        let w = <u32 as HeadWord>::bumped(0, (ZONE_SIZE / 8) as u32 - 1, ZONE_SIZE - 8);
        assert_eq!(
            (w.count(), w.offset()),
            ((ZONE_SIZE / 8) as u32 - 1, ZONE_SIZE - 8)
        );
        let w = w.bumped(1, 0);
        assert_eq!((w.count(), w.offset()), ((ZONE_SIZE / 8) as u32, 0));
    }
}
