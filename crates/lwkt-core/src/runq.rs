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

    /// Move `td` behind the other threads of its priority (round-robin).
    /// O(1) in the usual case, where `td` runs and so heads its list.
    ///
    /// # Safety
    /// `td` is a live thread on this queue.
    #[inline]
    pub(crate) unsafe fn rotate(&mut self, td: *mut Thread) {
        // SAFETY: live queued thread (caller).
        let t = unsafe { &*td };
        let next = t.rq_next.get();
        if next.is_null() {
            return; // already last of its priority
        }
        let p = t.pri.get().get() as usize;
        if self.head[p] != td {
            // SAFETY: forwarded; rare (after a priority change).
            unsafe {
                self.remove(td);
                self.push_back(td);
            }
            return;
        }
        let tail = self.tail[p];
        // SAFETY: `next` and `tail` are live threads on this list.
        unsafe {
            (*next).rq_prev.set(ptr::null_mut());
            (*tail).rq_next.set(td);
        }
        self.head[p] = next;
        t.rq_prev.set(tail);
        t.rq_next.set(ptr::null_mut());
        self.tail[p] = td;
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

    fn check(ops: &[(u8, usize)]) {
        let ts = Threads::new();
        let mut rq = RunQueue::new();
        let mut model: Vec<(u8, usize)> = Vec::new();
        for &(op, i) in ops {
            let t = &ts.0[i];
            if op == 2 && t.has(tdf::RUNQ) {
                // SAFETY: a live thread block on the queue.
                unsafe { rq.rotate(ts.ptr(i)) };
                let e = model.remove(model.iter().position(|&(_, j)| j == i).unwrap());
                model.push(e);
            } else if op == 0 && !t.has(tdf::RUNQ) {
                // SAFETY: a live thread block not on the queue.
                unsafe { rq.push_back(ts.ptr(i)) };
                model.push((t.pri.get().get(), i));
            } else if op == 1 && t.has(tdf::RUNQ) {
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
        let ops = [
            (0, 0),
            (0, 4),
            (0, 1),
            (0, 5),
            (2, 0),
            (2, 4),
            (1, 1),
            (0, 1),
            (0, 3),
            (2, 3),
            (1, 0),
            (0, 7),
            (2, 7),
        ];
        check(&ops);
    }

    #[cfg(not(miri))]
    proptest::proptest! {
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec((0u8..3, 0usize..8), 0..200)) {
            check(&ops);
        }
    }
}
