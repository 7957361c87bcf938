//! The lock-free list behind remote frees: any CPU pushes, only the owner
//! takes, and it takes everything at once. Because nothing is ever popped
//! one at a time, there is no ABA problem and no need for tags.
//!
//! DragonFly: `z_RChunks` (the chunk list) and the per-CPU list of zones
//! with remote frees waiting (what `RSignal` + `kfree_remote` achieve).

use core::ptr;

use crate::sync::{AtomicPtr, Ordering};

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
