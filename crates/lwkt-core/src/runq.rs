//! The per-CPU run queue: one FIFO per priority and a bitmap of non-empty
//! priorities, so enqueue, dequeue and "pick the best" are O(1).
//!
//! DragonFly: `gd_tdrunq`, `_lwkt_enqueue()`, `_lwkt_dequeue()`. DragonFly
//! keeps one sorted TAILQ; a bitmap of 32 FIFOs gives the same order (fixed
//! priority, round-robin within one) without the insertion scan.
//!
//! Only the owning CPU touches its run queue, inside a critical section.

use core::ptr;

use crate::thread::{tdf, Thread};

pub(crate) const NPRI: usize = 32;

#[derive(Debug)]
pub(crate) struct RunQueue {
    bitmap: u32,
    head: [*mut Thread; NPRI],
    tail: [*mut Thread; NPRI],
    count: usize,
}

impl RunQueue {
    pub(crate) const fn new() -> Self {
        RunQueue {
            bitmap: 0,
            head: [ptr::null_mut(); NPRI],
            tail: [ptr::null_mut(); NPRI],
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The thread that should run: the head of the highest non-empty priority.
    #[inline]
    pub(crate) fn first(&self) -> *mut Thread {
        if self.bitmap == 0 {
            return ptr::null_mut();
        }
        self.head[31 - self.bitmap.leading_zeros() as usize]
    }

    /// Is any thread other than `td` queued at `td`'s priority or above?
    pub(crate) fn has_peer_or_better(&self, td: &Thread) -> bool {
        let p = td.pri.get().get() as u32;
        let above = self.bitmap & !((1u32 << p) - 1) & !(1u32 << p);
        let h = self.head[p as usize];
        above != 0
            || (!h.is_null() && (!core::ptr::eq(h, td) || !td.rq_next.get().is_null()))
    }

    /// Append `td` at the tail of its priority (`_lwkt_enqueue`).
    ///
    /// # Safety
    /// `td` is a live thread of this CPU, not on the queue.
    pub(crate) unsafe fn push_back(&mut self, td: *mut Thread) {
        // SAFETY: live thread (caller).
        let t = unsafe { &*td };
        debug_assert!(!t.has(tdf::RUNQ));
        let p = t.pri.get().get() as usize;
        t.rq_next.set(ptr::null_mut());
        t.rq_prev.set(self.tail[p]);
        if self.tail[p].is_null() {
            self.head[p] = td;
            self.bitmap |= 1 << p;
        } else {
            // SAFETY: queued threads are live (they are removed before exit).
            unsafe { (*self.tail[p]).rq_next.set(td) };
        }
        self.tail[p] = td;
        t.set(tdf::RUNQ);
        self.count += 1;
    }

    /// Unlink `td` (`_lwkt_dequeue`).
    ///
    /// # Safety
    /// `td` is a live thread on this queue.
    pub(crate) unsafe fn remove(&mut self, td: *mut Thread) {
        // SAFETY: live thread (caller).
        let t = unsafe { &*td };
        debug_assert!(t.has(tdf::RUNQ));
        let p = t.pri.get().get() as usize;
        let (n, pr) = (t.rq_next.get(), t.rq_prev.get());
        if pr.is_null() {
            self.head[p] = n;
        } else {
            // SAFETY: neighbours on the queue are live.
            unsafe { (*pr).rq_next.set(n) };
        }
        if n.is_null() {
            self.tail[p] = pr;
        } else {
            // SAFETY: as above.
            unsafe { (*n).rq_prev.set(pr) };
        }
        if self.head[p].is_null() {
            self.bitmap &= !(1 << p);
        }
        t.rq_next.set(ptr::null_mut());
        t.rq_prev.set(ptr::null_mut());
        t.clear(tdf::RUNQ);
        self.count -= 1;
    }
}
