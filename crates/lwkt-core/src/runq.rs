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

    /// Put `to` in the running thread `td`'s place and take `td` off the
    /// queue, when `to` would then be the thread to run
    /// ([`first`](Self::first)) anyway or by taking `td`'s turn: `td`
    /// heads its list, `to` has the same priority and is not queued, and no
    /// higher priority is queued. Returns whether it did; otherwise nothing
    /// changed. One relink in place of a [`remove`](Self::remove) and a
    /// [`push_back`](Self::push_back); `to` runs ahead of `td`'s
    /// equal-priority peers (it has `td`'s turn), never ahead of a higher
    /// priority. The direct hand-off's step (`Cur::block_for`).
    ///
    /// # Safety
    /// `td` and `to` are live threads of this CPU; `to` is neither idle,
    /// migrating nor exiting (the caller checked its flags).
    #[inline(always)]
    pub(crate) unsafe fn hand_over(&mut self, td: *mut Thread, to: *mut Thread) -> bool {
        // SAFETY: live threads (caller).
        let (old, new) = unsafe { (&*td, &*to) };
        let p = list(old);
        if self.head[p] != td || new.pri.get() != old.pri.get() || self.bitmap >> p != 1 {
            return false;
        }
        debug_assert!(old.has(tdf::RUNQ) && !new.has(tdf::RUNQ));
        let (n, pr) = (old.rq_next.get(), old.rq_prev.get());
        if n == td {
            new.rq_next.set(to);
            new.rq_prev.set(to);
        } else {
            new.rq_next.set(n);
            new.rq_prev.set(pr);
            // SAFETY: neighbours on the queue are live.
            unsafe {
                (*pr).rq_next.set(to);
                (*n).rq_prev.set(to);
            }
        }
        self.head[p] = to;
        old.rq_next.set(ptr::null_mut());
        old.rq_prev.set(ptr::null_mut());
        old.clear(tdf::RUNQ);
        new.set(tdf::RUNQ);
        true
    }

    /// Put `to` ahead of the running thread `td`, which stays queued right
    /// behind it, when `to` would then take `td`'s turn and nobody else's:
    /// `td` heads its list and is alone in it, `to` has the same priority
    /// and is not queued, and no higher priority is queued. Returns whether
    /// it did; otherwise nothing changed. The reply's hand-back to a
    /// synchronous sender of this CPU (`MyCpu::unpark_hand_back`): the two
    /// take turns as a caller and a called procedure would.
    ///
    /// # Safety
    /// `td` and `to` are live threads of this CPU; `to` is neither idle,
    /// migrating nor exiting (the caller checked its flags).
    #[inline(always)]
    pub(crate) unsafe fn hand_back(&mut self, td: *mut Thread, to: *mut Thread) -> bool {
        // SAFETY: live threads (caller).
        let (old, new) = unsafe { (&*td, &*to) };
        let p = list(old);
        if self.head[p] != td
            || old.rq_next.get() != td
            || new.pri.get() != old.pri.get()
            || self.bitmap >> p != 1
        {
            return false;
        }
        debug_assert!(old.has(tdf::RUNQ) && !new.has(tdf::RUNQ));
        new.rq_next.set(td);
        new.rq_prev.set(td);
        old.rq_next.set(to);
        old.rq_prev.set(to);
        self.head[p] = to;
        new.set(tdf::RUNQ);
        self.count += 1;
        true
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
                Threads::with_priorities(|i| (i % 4) as u8 * 3)
            }
            pub(super) fn with_priorities(pri: impl Fn(usize) -> u8) -> Self {
                Threads(core::array::from_fn(|i| {
                    Thread::new(
                        &NO_ARCH,
                        0,
                        core::ptr::null(),
                        CpuId::new(0),
                        Priority(pri(i)),
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
        check_with(&Threads::new(), ops);
    }

    fn check_with(ts: &Threads, ops: &[(u8, usize)]) {
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
            } else if op == 3 && t.has(tdf::RUNQ) {
                // Hand over from `i` to the next block not queued, if any.
                let j = (1..8)
                    .map(|k| (i + k) % 8)
                    .find(|&j| !ts.0[j].has(tdf::RUNQ));
                if let Some(j) = j {
                    let heads = model_first(&model) == Some(i) && ts.0[j].pri.get() == t.pri.get();
                    // SAFETY: live thread blocks, `i` queued, `j` not.
                    let done = unsafe { rq.hand_over(ts.ptr(i), ts.ptr(j)) };
                    assert_eq!(
                        done, heads,
                        "hand_over exactly when `i` runs and `j` is its peer"
                    );
                    if done {
                        let at = model.iter().position(|&(_, k)| k == i).unwrap();
                        model[at] = (t.pri.get().get(), j);
                        assert_eq!(rq.first(), ts.ptr(j), "the thread handed to runs next");
                    }
                }
            } else if op == 4 && t.has(tdf::RUNQ) {
                // Hand back from `i` to the next block not queued, if any.
                let j = (1..8)
                    .map(|k| (i + k) % 8)
                    .find(|&j| !ts.0[j].has(tdf::RUNQ));
                if let Some(j) = j {
                    let p = t.pri.get();
                    let alone = model.iter().filter(|&&(q, _)| q == p.get()).count() == 1;
                    let heads = model_first(&model) == Some(i) && alone && ts.0[j].pri.get() == p;
                    // SAFETY: live thread blocks, `i` queued, `j` not.
                    let done = unsafe { rq.hand_back(ts.ptr(i), ts.ptr(j)) };
                    assert_eq!(
                        done, heads,
                        "hand_back exactly when `i` runs alone at its priority and `j` is its peer"
                    );
                    if done {
                        let at = model.iter().position(|&(_, k)| k == i).unwrap();
                        model.insert(at, (p.get(), j));
                        assert_eq!(rq.first(), ts.ptr(j), "the thread handed back to runs next");
                        assert_eq!(
                            rq.after(&ts.0[j]),
                            ts.ptr(i),
                            "the running thread right behind"
                        );
                    }
                }
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
        // Hand-overs (op 3, from `i` to the next block not queued): 3 -> 7
        // (both priority 9, the highest queued), then 7 -> 0 refused
        // (priority 0); 5 -> 1 (both 3) refused while 6 and 7 (higher)
        // are queued, done once they are gone.
        check(&[(0, 3), (0, 4), (0, 5), (0, 6), (3, 3), (3, 7)]);
    }

    #[test]
    fn hand_over_takes_the_turn_never_a_higher_priority() {
        // Priorities: 0 and 4: 0; 1 and 5: 3; 2 and 6: 6; 3 and 7: 9.
        let ts = Threads::new();
        let mut rq = RunQueue::new();
        // SAFETY: live thread blocks; those passed as queued are on `rq`,
        // those handed to are not.
        unsafe {
            // 1 runs, 0 (lower) waits: 5 (1's priority) takes 1's place.
            rq.push_back(ts.ptr(1));
            rq.push_back(ts.ptr(0));
            assert!(rq.hand_over(ts.ptr(1), ts.ptr(5)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(5), 2));
            assert!(!ts.0[1].has(tdf::RUNQ) && ts.0[5].has(tdf::RUNQ));
            assert_eq!(rq.after(&ts.0[5]), ts.ptr(0));
            // 2 (higher) queued: 5 -> 1 refused, nothing changed.
            rq.push_back(ts.ptr(2));
            assert!(!rq.hand_over(ts.ptr(5), ts.ptr(1)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(2), 3));
            assert!(ts.0[5].has(tdf::RUNQ) && !ts.0[1].has(tdf::RUNQ));
            // 2 runs, 6 (same priority) behind it: 6 is not the head, so
            // 6 -> ... refused; 2 -> ... has no free peer of priority 6
            // here, 5 is not 2's priority: refused.
            rq.push_back(ts.ptr(6));
            assert!(!rq.hand_over(ts.ptr(6), ts.ptr(1)));
            assert!(!rq.hand_over(ts.ptr(2), ts.ptr(1)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(2), 4));
        }
    }

    #[test]
    fn hand_back_only_to_a_peer_of_a_thread_alone_at_the_top() {
        // Priorities: 0 to 3: 3; 4 and 5: 0; 6 and 7: 6.
        let ts = Threads::with_priorities(|i| [3, 3, 3, 3, 0, 0, 6, 6][i]);
        let mut rq = RunQueue::new();
        // SAFETY: live thread blocks; those passed as queued are on `rq`,
        // those handed back to are not.
        unsafe {
            // 0 runs alone at its priority, 4 (lower) waits: 1 goes ahead
            // of 0, which stays queued right behind it.
            rq.push_back(ts.ptr(0));
            rq.push_back(ts.ptr(4));
            assert!(rq.hand_back(ts.ptr(0), ts.ptr(1)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(1), 3));
            assert!(ts.0[0].has(tdf::RUNQ) && ts.0[1].has(tdf::RUNQ));
            assert_eq!(rq.after(&ts.0[1]), ts.ptr(0));
            assert_eq!(rq.after(&ts.0[0]), ts.ptr(4));
            // 1 runs with a peer (0) queued: 1 -> 2 refused (2 would run
            // ahead of 0), nothing changed.
            assert!(!rq.hand_back(ts.ptr(1), ts.ptr(2)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(1), 3));
            assert!(!ts.0[2].has(tdf::RUNQ));
            // 0 gone, 6 (higher) queued: 1 -> 2 refused.
            rq.remove(ts.ptr(0));
            rq.push_back(ts.ptr(6));
            assert!(!rq.hand_back(ts.ptr(1), ts.ptr(2)));
            assert_eq!((rq.first(), rq.len()), (ts.ptr(6), 3));
            // 6 alone at the top, 2 is not its priority: refused.
            assert!(!rq.hand_back(ts.ptr(6), ts.ptr(2)));
            assert!(!ts.0[2].has(tdf::RUNQ));
        }
    }

    #[cfg(not(miri))]
    proptest::proptest! {
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec((0u8..5, 0usize..8), 0..200)) {
            check(&ops);
        }

        #[test]
        fn matches_reference_model_with_four_peers(ops in proptest::collection::vec((0u8..5, 0usize..8), 0..200)) {
            check_with(&Threads::with_priorities(|i| [3, 3, 3, 3, 0, 0, 6, 6][i]), &ops);
        }
    }
}
