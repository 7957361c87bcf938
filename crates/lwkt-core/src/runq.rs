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

    /// The next thread after `td` in run order (same priority first, then lower).
    pub(crate) fn after(&self, td: &Thread) -> *mut Thread {
        let n = td.rq_next.get();
        if !n.is_null() {
            return n;
        }
        let p = td.pri.get().get() as u32;
        let lower = self.bitmap & ((1u32 << p) - 1);
        if lower == 0 {
            ptr::null_mut()
        } else {
            self.head[31 - lower.leading_zeros() as usize]
        }
    }

    /// Is any thread other than `td` queued at `td`'s priority or above?
    pub(crate) fn has_peer_or_better(&self, td: &Thread) -> bool {
        let p = td.pri.get().get() as u32;
        let above = self.bitmap & !((1u32 << p) - 1) & !(1u32 << p);
        let h = self.head[p as usize];
        above != 0 || (!h.is_null() && (!core::ptr::eq(h, td) || !td.rq_next.get().is_null()))
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::RunQueue;
    use crate::cpu::{CpuId, NO_ARCH};
    use crate::thread::{tdf, Priority, Thread};
    use alloc_free::Threads;
    use std::vec::Vec;

    /// Thread blocks for run-queue tests, without a machine.
    mod alloc_free {
        use super::*;
        pub(super) struct Threads(pub(super) [Thread; 8]);
        impl Threads {
            pub(super) fn new() -> Self {
                Threads(core::array::from_fn(|i| {
                    Thread::new(
                        &NO_ARCH,
                        0,
                        core::ptr::null(),
                        CpuId::new(0),
                        Priority((i % 4) as u8 * 3),
                        None,
                        "t",
                    )
                }))
            }
            pub(super) fn ptr(&self, i: usize) -> *mut Thread {
                &self.0[i] as *const Thread as *mut Thread
            }
        }
    }

    /// Reference model: a list of (priority, id) in insertion order; the
    /// next to run is the earliest-inserted of the highest priority.
    fn model_first(model: &[(u8, usize)]) -> Option<usize> {
        let best = model.iter().map(|&(p, _)| p).max()?;
        model.iter().find(|&&(p, _)| p == best).map(|&(_, i)| i)
    }

    fn check(ops: &[(bool, usize)]) {
        let ts = Threads::new();
        let mut rq = RunQueue::new();
        let mut model: Vec<(u8, usize)> = Vec::new();
        for &(insert, i) in ops {
            let t = &ts.0[i];
            if insert && !t.has(tdf::RUNQ) {
                // SAFETY: a live thread block not on the queue.
                unsafe { rq.push_back(ts.ptr(i)) };
                model.push((t.pri.get().get(), i));
            } else if !insert && t.has(tdf::RUNQ) {
                // SAFETY: a live thread block on the queue.
                unsafe { rq.remove(ts.ptr(i)) };
                model.retain(|&(_, j)| j != i);
            }
            assert_eq!(rq.len(), model.len());
            let first = rq.first();
            let want = model_first(&model).map(|i| ts.ptr(i));
            assert_eq!((!first.is_null()).then_some(first), want);
        }
        // Drain in run order and compare with the model's order.
        while let Some(i) = model_first(&model) {
            assert_eq!(rq.first(), ts.ptr(i));
            // SAFETY: on the queue.
            unsafe { rq.remove(ts.ptr(i)) };
            model.retain(|&(_, j)| j != i);
        }
        assert!(rq.first().is_null());
    }

    #[test]
    fn fixed_priority_then_fifo_small() {
        check(&[
            (true, 0),
            (true, 4),
            (true, 1),
            (true, 5),
            (false, 1),
            (true, 1),
            (true, 3),
            (false, 0),
            (true, 7),
        ]);
    }

    #[cfg(not(miri))]
    proptest::proptest! {
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..8), 0..200)) {
            check(&ops);
        }
    }
}
