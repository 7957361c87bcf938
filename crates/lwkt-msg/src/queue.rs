//! An intrusive FIFO of message headers: a port's queue. Pushing links the
//! message's own header; nothing is allocated.
//!
//! DragonFly: `mp_msgq` (a `TAILQ` through `ms_node`).

use core::ptr;

use crate::header::Header;

/// Head, tail and length; the owner of the port synchronises access (the
/// owning CPU's critical section, or the port's spin lock).
pub(crate) struct Queue {
    head: *mut Header,
    tail: *mut Header,
    len: usize,
}

impl Queue {
    pub(crate) const fn new() -> Queue {
        Queue {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            len: 0,
        }
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Append `h`.
    ///
    /// # Safety
    /// `h` is a live header on no queue, and stays alive while queued.
    pub(crate) unsafe fn push(&mut self, h: *mut Header) {
        // SAFETY: `h` is live and ours to link.
        unsafe { (*h).next.with_mut(|n| *n = ptr::null_mut()) };
        if self.tail.is_null() {
            self.head = h;
        } else {
            // SAFETY: the tail is a live queued header.
            unsafe { (*self.tail).next.with_mut(|n| *n = h) };
        }
        self.tail = h;
        self.len += 1;
    }

    /// Take the oldest header.
    pub(crate) fn pop(&mut self) -> Option<*mut Header> {
        let h = self.head;
        if h.is_null() {
            return None;
        }
        // SAFETY: queued headers are live (`push` contract).
        self.head = unsafe { (*h).next.with(|n| *n) };
        if self.head.is_null() {
            self.tail = ptr::null_mut();
        }
        self.len -= 1;
        Some(h)
    }

    /// Unlink `h` if it is queued here; returns whether it was.
    pub(crate) fn remove(&mut self, h: *mut Header) -> bool {
        let mut prev: *mut Header = ptr::null_mut();
        let mut p = self.head;
        while !p.is_null() {
            // SAFETY: queued headers are live.
            let next = unsafe { (*p).next.with(|n| *n) };
            if p == h {
                if prev.is_null() {
                    self.head = next;
                } else {
                    // SAFETY: `prev` is a live queued header.
                    unsafe { (*prev).next.with_mut(|n| *n = next) };
                }
                if self.tail == h {
                    self.tail = prev;
                }
                self.len -= 1;
                return true;
            }
            prev = p;
            p = next;
        }
        false
    }
}
