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

use crate::sync::{AtomicPtr, AtomicU64, Ordering};

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
/// block (a zone: less than 4 GiB from `base`), drained whole by the
/// consumer, whose head word holds the number of items on the list beside
/// the first item's offset from the block's start. A push of a chain says
/// how many items it brings, so the consumer learns the length of what it
/// takes from the swap itself: no walk of links last written on another
/// CPU (a cache miss each) just to count them.
///
/// The head word is `count << 32 | offset`, 0 when empty (every push adds
/// at least one to the count). Items are linked through [`Link::next`] as
/// full pointers; only the head is an offset, turned back into a pointer
/// from the block's base (keeping the block's provenance).
pub(crate) struct CountedStack<T> {
    head: AtomicU64,
    _items: PhantomData<AtomicPtr<T>>,
}

impl<T: Link> CountedStack<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        CountedStack {
            head: AtomicU64::new(0),
            _items: PhantomData,
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        CountedStack {
            head: AtomicU64::new(0),
            _items: PhantomData,
        }
    }

    /// Push a chain of `n` items, `first` to `last`, already linked (any
    /// CPU), with one compare-and-swap.
    ///
    /// # Safety
    /// `base` is the start of the block every item of this stack lies in
    /// (the same for every call on this stack), less than 4 GiB long; the
    /// `n >= 1` items from `first` to `last` are live, in that block,
    /// linked through [`Link::next`] from `first` to `last`, on no list,
    /// and the caller gives them up: after the push only the consumer may
    /// touch them.
    #[inline]
    pub(crate) unsafe fn push_chain(&self, base: *mut u8, first: *mut T, last: *mut T, n: u32) {
        debug_assert!(n >= 1);
        let off = first.addr().wrapping_sub(base.addr()) as u64;
        debug_assert!(off < 1 << 32, "an item outside the block");
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: forwarded; the head is an item of the block.
            let next = unsafe { Self::item(base, head) };
            // SAFETY: `last` is ours until the CAS publishes it.
            unsafe { T::set_next(last, next) };
            let count = (head >> 32) + u64::from(n);
            debug_assert!(count < 1 << 32, "more items than a block holds");
            match self.head.compare_exchange_weak(
                head,
                count << 32 | off,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
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
        if self.head.load(Ordering::Relaxed) == 0 {
            return (ptr::null_mut(), 0);
        }
        let head = self.head.swap(0, Ordering::Acquire);
        // SAFETY: forwarded; the head (if any) is an item of the block.
        (unsafe { Self::item(base, head) }, (head >> 32) as u32)
    }

    /// The item a head word names (null for an empty list).
    ///
    /// # Safety
    /// `base` is the block's start and `head` a word of this stack, whose
    /// offset lies in the block.
    #[inline(always)]
    unsafe fn item(base: *mut u8, head: u64) -> *mut T {
        if head == 0 {
            ptr::null_mut()
        } else {
            // SAFETY: the offset of an item of the block, from its start.
            unsafe { base.add(head as u32 as usize) }.cast()
        }
    }
}
