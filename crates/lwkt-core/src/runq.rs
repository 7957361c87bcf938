//! The per-CPU run queue: one FIFO per priority and a bitmap of non-empty
//! priorities, so enqueue, dequeue and "pick the best" are O(1).
//!
//! DragonFly: `gd_tdrunq`, `_lwkt_enqueue()`, `_lwkt_dequeue()`. DragonFly
//! keeps one sorted TAILQ; a bitmap of 32 FIFOs gives the same order (fixed
//! priority, round-robin within one) without the insertion scan.
//!
//! Each FIFO is a circular doubly linked list known by its head: the
//! head's `rq_prev` is the tail. Moving the head (the running thread) behind
//! its peers, what every `yield_now` does, is then one store: the head
//! becomes its successor.
//!
//! Only the owning CPU touches its run queue, inside a critical section.

use core::ptr;

use crate::thread::{tdf, Thread};

pub(crate) const NPRI: usize = 32;

/// `td`'s list. The mask is a no-op (priorities are 0..=31 by
/// construction) that spares the hot paths a bounds check.
#[inline(always)]
fn list(td: &Thread) -> usize {
    td.pri.get().get() as usize & (NPRI - 1)
}

#[derive(Debug)]
pub(crate) struct RunQueue {
    bitmap: u32,
    /// First thread of each priority, null when none.
    head: [*mut Thread; NPRI],
    count: usize,
}

impl RunQueue {
    pub(crate) const fn new() -> Self {
        RunQueue {
            bitmap: 0,
            head: [ptr::null_mut(); NPRI],
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The count through a raw pointer, creating no reference: for a hang
    /// report from an NMI handler, which may have interrupted an update.
    ///
    /// # Safety
    /// `q` points to a live run queue.
    pub(crate) unsafe fn len_racy(q: *const RunQueue) -> usize {
        // SAFETY: caller: `q` is live; a volatile read of one word, which a
        // concurrent update on this CPU can only make stale.
        unsafe { core::ptr::addr_of!((*q).count).read_volatile() }
    }

    /// The thread that should run: the head of the highest non-empty priority.
    #[inline(always)]
    pub(crate) fn first(&self) -> *mut Thread {
        if self.bitmap == 0 {
            return ptr::null_mut();
        }
        self.head[(31 - self.bitmap.leading_zeros()) as usize & (NPRI - 1)]
    }

    /// The next thread after `td` in run order (same priority first, then
    /// lower). `td` is on the queue.
    pub(crate) fn after(&self, td: &Thread) -> *mut Thread {
        let p = list(td);
        let n = td.rq_next.get();
        if n != self.head[p] {
            return n;
        }
        let lower = self.bitmap & ((1u32 << p) - 1);
        if lower == 0 {
            ptr::null_mut()
        } else {
            self.head[31 - lower.leading_zeros() as usize]
        }
    }

    /// Move `td` behind the other threads of its priority (round-robin)
    /// and return the thread that should run now ([`first`](Self::first)).
    /// One store in the usual case, where `td` runs and so heads its list;
    /// then, when no higher priority is queued, the answer is `td`'s
    /// successor, already at hand, so the caller's next step does not wait
    /// for the bitmap and head loads of `first`.
    ///
    /// # Safety
    /// `td` is a live thread on this queue.
    #[inline(always)]
    pub(crate) unsafe fn rotate(&mut self, td: *mut Thread) -> *mut Thread {
        // SAFETY: live queued thread (caller).
        let t = unsafe { &*td };
        let p = list(t);
        if self.head[p] == td {
            // The list is circular: its head's successor heads it now, and
            // `td` (the head's predecessor from now on) is its tail.
            let next = t.rq_next.get();
            self.head[p] = next;
            // Bit `p` is set (`td` is queued); nothing above it?
            if self.bitmap >> p == 1 {
                return next;
            }
        } else {
            // SAFETY: forwarded; rare (after a priority change).
            unsafe { self.rotate_slow(td) };
        }
        self.first()
    }

    #[cold]
    #[inline(never)]
    unsafe fn rotate_slow(&mut self, td: *mut Thread) {
        // SAFETY: forwarded.
        unsafe {
            self.remove(td);
            self.push_back(td);
        }
    }

    /// Append `td` at the tail of its priority (`_lwkt_enqueue`).
    ///
    /// # Safety
    /// `td` is a live thread of this CPU, not on the queue.
    pub(crate) unsafe fn push_back(&mut self, td: *mut Thread) {
        // SAFETY: live thread (caller).
        let t = unsafe { &*td };
        debug_assert!(!t.has(tdf::RUNQ));
        let p = list(t);
        let h = self.head[p];
        if h.is_null() {
            t.rq_next.set(td);
            t.rq_prev.set(td);
            self.head[p] = td;
            self.bitmap |= 1 << p;
        } else {
            // SAFETY: queued threads are live (they are removed before exit).
            unsafe {
                let tail = (*h).rq_prev.get();
                (*tail).rq_next.set(td);
                t.rq_prev.set(tail);
                t.rq_next.set(h);
                (*h).rq_prev.set(td);
            }
        }
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
        let p = list(t);
        let (n, pr) = (t.rq_next.get(), t.rq_prev.get());
        if n == td {
            self.head[p] = ptr::null_mut();
            self.bitmap &= !(1 << p);
        } else {
            // SAFETY: neighbours on the queue are live.
            unsafe {
                (*pr).rq_next.set(n);
                (*n).rq_prev.set(pr);
            }
            if self.head[p] == td {
                self.head[p] = n;
            }
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
                let first = unsafe { rq.rotate(ts.ptr(i)) };
                assert_eq!(first, rq.first(), "rotate returns the new first");
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
            // The whole run order, walked with `after`: by priority, FIFO within.
            let mut walked = Vec::new();
            let mut x = first;
            while !x.is_null() {
                walked.push(x);
                // SAFETY: a live thread block on the queue.
                x = rq.after(unsafe { &*x });
            }
            let mut order = model.clone();
            order.sort_by_key(|&(p, _)| core::cmp::Reverse(p));
            let order: Vec<_> = order.iter().map(|&(_, i)| ts.ptr(i)).collect();
            assert_eq!(walked, order);
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
