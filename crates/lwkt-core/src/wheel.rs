//! A per-CPU hierarchical timing wheel: the queue of armed timers behind
//! timed sleeps and callouts. DragonFly keeps two structures for this, a
//! sorted list of systimers (`kern_systimer.c`, precise, O(n) insert) and
//! a per-CPU callout wheel of `hz` ticks (`kern_timeout.c`, O(1), a tick's
//! precision); this wheel gives both at once: O(1) arm and stop, and a
//! timer fires at most one wheel tick ([`TICK_NS`], about a microsecond)
//! after its deadline, never before.
//!
//! Six levels of 64 slots. A level-0 slot spans one tick, a level-`l` slot
//! `64^l` ticks, so the levels reach about 65 µs, 4.2 ms, 268 ms, 17 s,
//! 18 min and 19.5 h ahead. A timer goes to the level of the highest
//! 6-bit digit in which its deadline tick differs from the wheel's
//! `elapsed` tick; when the wheel reaches a slot of a higher level its
//! timers move down ("cascade"). The top level wraps around: its slots
//! behind `elapsed`'s digit hold the next lap. A deadline further than 63
//! top-level slots waits in the slot that far ahead and is placed again
//! from there.
//!
//! Each level has a bitmap of its slots that may be non-empty, so the next
//! expiry is a few `trailing_zeros` away: arming sets a slot's bit, and a
//! bit whose slot has emptied is cleared by the next look for the earliest
//! slot ([`Wheel::next_deadline`], [`Wheel::pop_expired`]), not by the stop
//! that emptied it, so that a stop is a few stores. Slots are intrusive
//! doubly linked lists of [`Entry`]s embedded in the timers themselves
//! (each entry points at the link that points at it, so an unlink needs
//! neither the list nor a branch for its head): arming and stopping
//! allocate nothing.
//!
//! The wheel is owned by one CPU and touched only there, inside a critical
//! section; it is not a concurrent structure.
//!
//! Invariant (`check` in the tests): a non-empty slot's bit is set;
//! below the top level, a timer in
//! level `l`, slot `s` has the same digits as `elapsed` above level `l`,
//! and `s` is greater than `elapsed`'s digit at level `l` (or equal, for
//! level 0 only: due now); a top-level slot is never `elapsed`'s own. So
//! the lowest non-empty level holds the earliest timers.

use core::cell::Cell;
use core::ptr;

/// Nanoseconds per wheel tick (a power of two: 1024 ns).
pub(crate) const TICK_NS: u64 = 1 << TICK_SHIFT;
const TICK_SHIFT: u32 = 10;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
/// The top level's slot span, in ticks.
const TOP_SLOT: u64 = 1 << (SLOT_BITS * (LEVELS as u32 - 1));
/// How far ahead of `elapsed` a timer is placed, in ticks: a deadline
/// further away waits in the top level's slot this far ahead, and is
/// placed again from there. One top-level slot short of the whole wheel,
/// so a top-level slot never means both this lap and the next.
const REACH: u64 = (SLOTS as u64 - 1) * TOP_SLOT;

/// A link of a list: a list's head, or an entry's `next`.
type Link = Cell<*const Entry>;

/// A timer's link in the wheel, embedded in whatever the timer belongs to
/// (a callout, a sleeping thread). DragonFly: the `TAILQ_ENTRY` of a
/// `struct systimer` / `struct callout`.
/// `#[repr(C)]` with `next` first: a pointer to the entry is a pointer to
/// its `next` link.
#[repr(C)]
pub(crate) struct Entry {
    next: Link,
    /// The link that points at this entry (its list's head, or the `next`
    /// of the entry before it); null when the entry is on no list.
    /// DragonFly: the `tqe_prev` of a `TAILQ_ENTRY`.
    pprev: Cell<*const Link>,
    /// The deadline in nanoseconds of the backend's clock.
    deadline: Cell<u64>,
}

impl Entry {
    /// An unarmed entry.
    pub(crate) const fn new() -> Entry {
        Entry {
            next: Cell::new(ptr::null()),
            pprev: Cell::new(ptr::null()),
            deadline: Cell::new(0),
        }
    }

    /// Whether the entry is in a wheel (armed, or expired and not yet
    /// handed out).
    pub(crate) fn is_linked(&self) -> bool {
        !self.pprev.get().is_null()
    }

    /// The deadline it was last armed for (nanoseconds).
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.get()
    }
}

impl Default for Entry {
    fn default() -> Entry {
        Entry::new()
    }
}

/// An intrusive doubly linked list of entries (a slot, or the pending
/// list): `pprev` of the first entry points at `head`. It must not move
/// while it has entries (it is in a [`Wheel`], which is in a CPU block,
/// which does not move once it runs).
struct List {
    head: Link,
}

impl List {
    const fn new() -> List {
        List {
            head: Cell::new(ptr::null()),
        }
    }

    fn is_empty(&self) -> bool {
        self.head.get().is_null()
    }

    /// # Safety
    /// `e` is live and on no list, and this list does not move while `e`
    /// is on it.
    #[inline]
    unsafe fn push(&self, e: *const Entry) {
        // SAFETY: `e` is live (contract); the old head, if any, is a live
        // entry of this list (every linked entry is live: `Wheel::insert`).
        unsafe {
            let old = self.head.get();
            (*e).next.set(old);
            (*e).pprev.set(&self.head);
            if !old.is_null() {
                // `next` is the entry's first field (`#[repr(C)]`).
                (*old).pprev.set(e.cast::<Link>());
            }
        }
        self.head.set(e);
    }
}

/// Take `e` off its list.
///
/// # Safety
/// `e` is live and on a list (whose entries are all live, and which has
/// not moved since `e` was pushed).
#[inline(always)]
unsafe fn unlink(e: *const Entry) {
    // SAFETY: `e` is live and linked (contract), so `pprev` is the live
    // link that points at it, and `next` null or a live entry of its list.
    unsafe {
        let (next, pprev) = ((*e).next.get(), (*e).pprev.get());
        (*pprev).set(next);
        if !next.is_null() {
            (*next).pprev.set(pprev);
        }
        // `next` is left as it is: read only while linked (`pprev` says
        // whether it is), written by `push`.
        (*e).pprev.set(ptr::null());
    }
}

/// The wheel. DragonFly: a CPU's `systimerq` and `softclock_pcpu`
/// together.
pub(crate) struct Wheel {
    /// The tick the wheel has advanced to: every timer whose slot starts
    /// at or before it has been handed out or moved down.
    elapsed: Cell<u64>,
    /// Per level, a bit per slot that may be non-empty: set by `place`,
    /// cleared by whoever finds the slot empty (`next_slot`, `pop_any`,
    /// `pop_expired`); a stop leaves it.
    occupied: [Cell<u64>; LEVELS],
    /// The slots, level by level (`level * SLOTS + slot`).
    lists: [List; LEVELS * SLOTS],
    /// The entries of expired slots not yet handed out or placed again.
    pending: List,
    /// Armed entries, kept for the tests' invariant checks only.
    #[cfg(test)]
    len: Cell<usize>,
}

impl Wheel {
    /// An empty wheel at time 0.
    pub(crate) const fn new() -> Wheel {
        Wheel {
            elapsed: Cell::new(0),
            occupied: [const { Cell::new(0) }; LEVELS],
            lists: [const { List::new() }; LEVELS * SLOTS],
            pending: List::new(),
            #[cfg(test)]
            len: Cell::new(0),
        }
    }

    /// Slot `slot` of level `level`.
    #[inline(always)]
    fn slot(&self, level: usize, slot: usize) -> &List {
        &self.lists[level * SLOTS + slot]
    }

    /// Count `delta` entries armed (`len`, tests only).
    #[inline(always)]
    fn count(&self, delta: isize) {
        #[cfg(test)]
        self.len.set(self.len.get().wrapping_add_signed(delta));
        #[cfg(not(test))]
        let _ = delta;
    }

    /// Armed entries (pending ones included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    /// Arm `e` for `deadline` (nanoseconds of the clock `pop_expired` is
    /// given); re-arms it if it is armed here already. O(1).
    /// DragonFly: `systimer_init_oneshot()`, `callout_reset()`.
    ///
    /// # Safety
    /// `e` stays live and does not move until it is unlinked (by
    /// [`remove`](Self::remove) or handed out by
    /// [`pop_expired`](Self::pop_expired)), and is in no other wheel.
    #[inline]
    pub(crate) unsafe fn insert(&self, e: *const Entry, deadline: u64) {
        // SAFETY: forwarded contract.
        unsafe {
            if (*e).is_linked() {
                self.unlink(e);
            }
            self.insert_unlinked(e, deadline);
        }
    }

    /// [`insert`](Self::insert) of an entry known to be on no list.
    ///
    /// # Safety
    /// As [`insert`](Self::insert), and `e` is not linked.
    #[inline(always)]
    pub(crate) unsafe fn insert_unlinked(&self, e: *const Entry, deadline: u64) {
        // SAFETY: forwarded contract.
        unsafe {
            debug_assert!(!(*e).is_linked());
            (*e).deadline.set(deadline);
            self.place(e);
        }
        self.count(1);
    }

    /// Stop `e` if it is armed here: returns whether it was. O(1).
    /// DragonFly: `systimer_del()`, `callout_stop()`.
    ///
    /// # Safety
    /// `e` is live, and in this wheel if it is linked.
    #[inline]
    pub(crate) unsafe fn remove(&self, e: *const Entry) -> bool {
        // SAFETY: `e` is live (contract).
        if !unsafe { (*e).is_linked() } {
            return false;
        }
        // SAFETY: live, and linked here (contract).
        unsafe { self.unlink(e) };
        true
    }

    /// Stop `e`, known to be armed here: [`remove`](Self::remove) without
    /// the look at whether it is. O(1).
    ///
    /// # Safety
    /// `e` is live and linked in this wheel.
    #[inline(always)]
    pub(crate) unsafe fn unlink(&self, e: *const Entry) {
        debug_assert!(
            // SAFETY: live (contract).
            unsafe { (*e).is_linked() }
        );
        // SAFETY: live and linked in this wheel (contract), whose lists
        // hold only live entries and do not move (the wheel is in a CPU
        // block). Its slot's bit stays: the next `next_slot` clears it.
        unsafe { unlink(e) };
        self.count(-1);
    }

    /// Hand out any armed entry, unlinked, whatever its deadline, or `None`
    /// when the wheel is empty: for emptying a wheel whose CPU stops.
    pub(crate) fn pop_any(&self) -> Option<*const Entry> {
        let mut e = self.pending.head.get();
        while e.is_null() {
            let level = self.occupied.iter().position(|b| b.get() != 0)?;
            let bits = &self.occupied[level];
            let slot = bits.get().trailing_zeros() as usize;
            let list = self.slot(level, slot);
            e = list.head.get();
            if e.is_null() {
                // Emptied by stops: its bit was left.
                bits.set(bits.get() & !(1 << slot));
            }
        }
        // SAFETY: the head of a list of this wheel: a linked entry of this
        // wheel, live (`insert`).
        unsafe { unlink(e) };
        self.count(-1);
        Some(e)
    }

    /// The deadline of the earliest timer's slot, in nanoseconds, or
    /// `None` when nothing is armed: when to program the CPU's one-shot
    /// timer. It may come before that timer's own deadline (a slot of a
    /// higher level, whose timers then move down); never after.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if !self.pending.is_empty() {
            return Some(self.elapsed.get() << TICK_SHIFT);
        }
        self.next_slot().map(|(_, _, tick)| tick << TICK_SHIFT)
    }

    /// Hand out one due timer, unlinked, or `None` when no more are due. A
    /// timer is due once `now` (nanoseconds) has reached its deadline
    /// rounded up to a whole tick: never early, at most [`TICK_NS`] late. The caller
    /// fires it, and may arm and stop timers between calls (from the fired
    /// timer's callback, too). `now` should not go backwards; if it does,
    /// nothing fires early.
    pub(crate) fn pop_expired(&self, now: u64) -> Option<*const Entry> {
        let now_tick = now >> TICK_SHIFT;
        loop {
            let e = self.pending.head.get();
            if !e.is_null() {
                // SAFETY: a linked entry of this wheel is live (`insert`).
                unsafe {
                    unlink(e);
                    if due_tick((*e).deadline.get()) <= now_tick {
                        self.count(-1);
                        return Some(e);
                    }
                    // A higher level's slot (or a far deadline parked at
                    // the window's end): place it again, lower down.
                    self.place(e);
                }
                continue;
            }
            match self.next_slot() {
                Some((level, slot, tick)) if tick <= now_tick => {
                    self.elapsed.set(self.elapsed.get().max(tick));
                    let list = self.slot(level, slot);
                    // Move the whole slot to the pending list.
                    let mut e = list.head.get();
                    list.head.set(ptr::null());
                    let bits = &self.occupied[level];
                    bits.set(bits.get() & !(1 << slot));
                    while !e.is_null() {
                        // SAFETY: live entries of the slot just emptied.
                        unsafe {
                            let next = (*e).next.get();
                            self.pending.push(e);
                            e = next;
                        }
                    }
                }
                _ => {
                    // Nothing due: every slot starts after `now`, so moving
                    // `elapsed` up to it keeps the invariant.
                    self.elapsed.set(self.elapsed.get().max(now_tick));
                    return None;
                }
            }
        }
    }

    /// Put `e` (deadline set, on no list) in its slot.
    ///
    /// # Safety
    /// As [`insert`](Self::insert).
    #[inline]
    unsafe fn place(&self, e: *const Entry) {
        let elapsed = self.elapsed.get();
        // SAFETY: live (contract).
        let deadline = unsafe { (*e).deadline.get() };
        let tick = place_tick(deadline, elapsed);
        let differ = (tick ^ elapsed) | (SLOTS as u64 - 1);
        let digit = LEVEL_OF_BIT[(63 - differ.leading_zeros()) as usize];
        let (level, first) = (usize::from(digit.level), usize::from(digit.first));
        // SAFETY: every level in the table is below `LEVELS`.
        unsafe { core::hint::assert_unchecked(level < LEVELS) };
        let slot = ((tick >> digit.shift) as usize) & (SLOTS - 1);
        // SAFETY: the table's first slot of a level is `level * SLOTS`,
        // and `slot` is below `SLOTS`: an index of `lists`. `e` is live
        // and on no list (contract); the wheel's lists do not move (it is
        // in a CPU block).
        unsafe { self.lists.get_unchecked(first + slot).push(e) };
        let bits = &self.occupied[level];
        bits.set(bits.get() | 1 << slot);
    }

    /// The earliest non-empty slot: its level, index and starting tick.
    /// Clears the bits of the empty slots it meets on the way (emptied by
    /// stops, which leave them), so every slot before the one it returns
    /// has its bit clear, and a slot is never handed out empty.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let elapsed = self.elapsed.get();
        for level in 0..LEVELS {
            let shift = SLOT_BITS * level as u32;
            let here = ((elapsed >> shift) as usize) & (SLOTS - 1);
            let window = elapsed & !((1u64 << (shift + SLOT_BITS)) - 1);
            let occupied = &self.occupied[level];
            loop {
                let bits = occupied.get();
                let ahead = bits & (u64::MAX << here);
                let (slot, start) = if ahead != 0 {
                    let slot = ahead.trailing_zeros() as usize;
                    (slot, window + ((slot as u64) << shift))
                } else if bits != 0 {
                    // Slots behind `elapsed`'s own: the top level's next
                    // lap (below the top their bits are clear: the
                    // invariant, and this clearing on the way).
                    debug_assert_eq!(level, LEVELS - 1);
                    let slot = bits.trailing_zeros() as usize;
                    let lap = 1u64 << (shift + SLOT_BITS);
                    (slot, window + lap + ((slot as u64) << shift))
                } else {
                    break;
                };
                if !self.slot(level, slot).is_empty() {
                    return Some((level, slot, start));
                }
                occupied.set(bits & !(1 << slot));
            }
        }
        None
    }
}

/// The level of a timer whose deadline tick first differs from `elapsed`
/// in bit `b` (counting from bit 0), and the shift of its digit there:
/// level `b / SLOT_BITS`, and past the top level's window (the next lap)
/// the top level. A table: one load instead of a division, a clamp and a
/// multiplication on every arm.
const LEVEL_OF_BIT: [Digit; 64] = {
    let mut t = [Digit {
        shift: 0,
        level: 0,
        first: 0,
    }; 64];
    let mut b = 0;
    while b < 64 {
        let l = b / SLOT_BITS as usize;
        let l = if l < LEVELS { l } else { LEVELS - 1 };
        t[b] = Digit {
            shift: (SLOT_BITS * l as u32) as u8,
            level: l as u8,
            first: (l * SLOTS) as u16,
        };
        b += 1;
    }
    t
};

/// A [`LEVEL_OF_BIT`] entry: where a timer goes.
#[derive(Clone, Copy)]
struct Digit {
    /// The shift of its digit in the tick.
    shift: u8,
    /// Its level.
    level: u8,
    /// The index of the level's first slot in [`Wheel::lists`].
    first: u16,
}

/// The tick whose slot a timer due at `deadline` (nanoseconds) goes to
/// when the wheel has advanced to `elapsed`: the first tick at or after
/// the deadline (rounded up, so a timer never fires early), or `elapsed`
/// for one already due, or `elapsed + REACH` for one further away.
#[inline(always)]
fn place_tick(deadline: u64, elapsed: u64) -> u64 {
    // The common case, where neither clamp applies, in fewer operations
    // than `due_tick` and two clamps: the tick is at most `REACH` ahead.
    match deadline.checked_add(TICK_NS - 1) {
        Some(d) if (d >> TICK_SHIFT).wrapping_sub(elapsed) <= REACH => d >> TICK_SHIFT,
        _ => clamped_tick(deadline, elapsed),
    }
}

/// [`place_tick`] of a timer already due or further than `REACH` ahead.
#[cold]
#[inline(never)]
fn clamped_tick(deadline: u64, elapsed: u64) -> u64 {
    due_tick(deadline).clamp(elapsed, elapsed + REACH)
}

/// The first tick at or after `deadline` (in nanoseconds).
#[inline]
fn due_tick(deadline: u64) -> u64 {
    deadline.div_ceil(TICK_NS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    impl Wheel {
        /// The invariant of the module docs, and the counts.
        fn check(&self) {
            let elapsed = self.elapsed.get();
            let mut n = 0;
            for level in 0..LEVELS {
                let shift = SLOT_BITS * level as u32;
                let here = ((elapsed >> shift) as usize) & (SLOTS - 1);
                for slot in 0..SLOTS {
                    let list = self.slot(level, slot);
                    let bit = self.occupied[level].get() >> slot & 1 == 1;
                    if list.is_empty() {
                        // A stop leaves the bit; `next_slot` clears it.
                        continue;
                    }
                    assert!(bit, "bitmap of level {level} slot {slot}");
                    match level {
                        0 => assert!(slot >= here),
                        l if l == LEVELS - 1 => assert_ne!(slot, here),
                        _ => assert!(slot > here),
                    }
                    let mut e = list.head.get();
                    let mut pprev: *const Link = &list.head;
                    while !e.is_null() {
                        // SAFETY: test entries live for the whole test.
                        let en = unsafe { &*e };
                        assert_eq!(en.pprev.get(), pprev);
                        n += 1;
                        pprev = &en.next;
                        e = en.next.get();
                    }
                }
            }
            let mut e = self.pending.head.get();
            while !e.is_null() {
                n += 1;
                // SAFETY: as above.
                e = unsafe { (*e).next.get() };
            }
            assert_eq!(n, self.len());
        }
    }

    /// Entries that stay put: the vector is never resized.
    fn entries(n: usize) -> Vec<Entry> {
        (0..n).map(|_| Entry::new()).collect()
    }

    fn drain(w: &Wheel, now: u64) -> Vec<*const Entry> {
        core::iter::from_fn(|| w.pop_expired(now)).collect()
    }

    #[test]
    fn fires_at_its_deadline_never_before() {
        let w = Wheel::new();
        let es = entries(3);
        // SAFETY: the entries outlive the wheel's use of them.
        unsafe {
            w.insert(&es[0], 5_000);
            w.insert(&es[1], 70_000_000); // level 3
            w.insert(&es[2], 1_000);
        }
        assert_eq!(w.next_deadline(), Some(1024));
        assert!(drain(&w, 999).is_empty());
        assert_eq!(drain(&w, 1024), [&es[2] as *const Entry]);
        assert!(drain(&w, 4_999).is_empty());
        assert_eq!(drain(&w, 6_000), [&es[0] as *const Entry]);
        w.check();
        assert!(drain(&w, 69_999_999).is_empty());
        w.check();
        assert_eq!(drain(&w, 70_000_000 + TICK_NS), [&es[1] as *const Entry]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_past_deadline_is_due_at_once() {
        let w = Wheel::new();
        let es = entries(1);
        assert!(drain(&w, 1 << 30).is_empty());
        // SAFETY: as above.
        unsafe { w.insert(&es[0], 5) };
        w.check();
        assert_eq!(w.next_deadline(), Some(1 << 30));
        assert_eq!(drain(&w, 1 << 30).len(), 1);
    }

    #[test]
    fn far_deadlines_wait_at_the_top_and_come_down() {
        let w = Wheel::new();
        let es = entries(2);
        let far = 100 * 3600 * 1_000_000_000u64; // 100 hours
                                                 // SAFETY: as above.
        unsafe {
            w.insert(&es[0], far);
            w.insert(&es[1], u64::MAX);
        }
        w.check();
        let mut steps = 0;
        loop {
            let next = w.next_deadline().unwrap();
            if next >= far {
                break;
            }
            assert!(drain(&w, next).is_empty());
            w.check();
            steps += 1;
        }
        assert!(drain(&w, far - 1).is_empty());
        assert_eq!(drain(&w, far + TICK_NS), [&es[0] as *const Entry]);
        assert!(steps < 100, "{steps} cascades for 100 hours");
        // SAFETY: as above.
        assert!(unsafe { w.remove(&es[1]) });
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn re_arm_and_stop_from_between_pops() {
        let w = Wheel::new();
        let es = entries(3);
        // SAFETY: as above.
        unsafe {
            w.insert(&es[0], 100);
            w.insert(&es[1], 100);
            w.insert(&es[2], 100);
            w.insert(&es[2], 3_000); // re-armed: counted once
        }
        assert_eq!(w.len(), 3);
        let first = w.pop_expired(5_000).unwrap();
        // Its slot-mate is pending now: stop it, and re-arm the fired one
        // for later.
        let other = if ptr::eq(first, &es[0]) {
            &es[1]
        } else {
            &es[0]
        };
        // SAFETY: as above.
        unsafe {
            assert!(w.remove(other));
            assert!(!w.remove(other));
            w.insert(first, 10_000);
        }
        w.check();
        assert_eq!(drain(&w, 5_000), [&es[2] as *const Entry]);
        assert_eq!(drain(&w, 11_000), [first]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_stop_leaves_no_deadline_behind() {
        let w = Wheel::new();
        let es = entries(3);
        // SAFETY: as above.
        unsafe {
            w.insert(&es[0], 3_000);
            w.insert(&es[1], 70_000_000);
            w.insert(&es[2], 70_000_000);
            assert!(w.remove(&es[0]));
            assert!(w.remove(&es[1]));
        }
        // The emptied level-0 slot's bit was left by the stop; the look
        // for the next deadline clears it and skips the slot.
        assert_eq!(
            w.next_deadline(),
            Some(70_000_000u64.div_ceil(TICK_NS) >> 12 << 22)
        );
        assert_eq!(w.occupied[0].get(), 0);
        // SAFETY: as above.
        assert!(unsafe { w.remove(&es[2]) });
        assert_eq!(w.next_deadline(), None);
        assert!(w.occupied.iter().all(|b| b.get() == 0));
        assert!(drain(&w, u64::MAX).is_empty());
        w.check();
    }

    #[test]
    fn pop_any_empties_the_wheel() {
        let w = Wheel::new();
        let es = entries(4);
        // SAFETY: as above.
        unsafe {
            w.insert(&es[0], 100);
            w.insert(&es[1], u64::MAX);
            w.insert(&es[2], 70_000_000);
            w.insert(&es[3], 100);
        }
        let first = w.pop_expired(5_000).unwrap();
        assert_eq!(w.len(), 3);
        let mut n = 0;
        while let Some(e) = w.pop_any() {
            // SAFETY: as above.
            assert!(!unsafe { &*e }.is_linked());
            assert!(!ptr::eq(e, first));
            n += 1;
            w.check();
        }
        assert_eq!((n, w.len(), w.next_deadline()), (3, 0, None));
    }

    #[test]
    fn place_tick_is_the_clamped_due_tick() {
        let edges = [
            0,
            1,
            1023,
            1024,
            1025,
            REACH,
            REACH << TICK_SHIFT,
            u64::MAX - 1024,
        ];
        for e in [0u64, 1, 63, 64, 1 << 20, (u64::MAX >> TICK_SHIFT) - REACH] {
            for d in edges.iter().flat_map(|&x| {
                let base = e << TICK_SHIFT;
                [x, base.wrapping_add(x), base.wrapping_sub(x), u64::MAX - x]
            }) {
                let want = due_tick(d).clamp(e, e + REACH);
                assert_eq!(place_tick(d, e), want, "deadline {d} elapsed {e}");
            }
        }
    }

    proptest::proptest! {
        // Few cases under Miri (every operation checks the whole wheel).
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 3 } else { 64 }))]
        /// Against a model: arm, stop and advance at random; every timer
        /// fires exactly once, not before its deadline and at most a tick
        /// after the `now` at which it became due.
        #[test]
        fn matches_a_sorted_set(ops in proptest::collection::vec((0u8..4, 0usize..16, 0u64..1 << 40), 1..200)) {
            let w = Wheel::new();
            let es = entries(16);
            let mut model: BTreeSet<(u64, usize)> = BTreeSet::new();
            let mut armed = [None; 16];
            let mut now = 0u64;
            for (op, i, x) in ops {
                match op {
                    0 | 1 => {
                        let d = now + (x >> (x % 40));
                        if let Some(old) = armed[i].take() { model.remove(&(old, i)); }
                        // SAFETY: as above.
                        unsafe { w.insert(&es[i], d) };
                        armed[i] = Some(d);
                        model.insert((d, i));
                    }
                    2 => {
                        let was = armed[i].take();
                        if let Some(old) = was { model.remove(&(old, i)); }
                        // SAFETY: as above.
                        proptest::prop_assert_eq!(unsafe { w.remove(&es[i]) }, was.is_some());
                    }
                    _ => {
                        now += x >> (x % 40);
                        let mut fired: Vec<usize> = drain(&w, now)
                            .into_iter()
                            .map(|e| es.iter().position(|b| ptr::eq(b, e)).unwrap())
                            .collect();
                        fired.sort();
                        let mut due: Vec<usize> = model
                            .iter()
                            .filter(|(d, _)| due_tick(*d) <= now >> TICK_SHIFT)
                            .map(|&(_, i)| i)
                            .collect();
                        due.sort();
                        proptest::prop_assert_eq!(&fired, &due);
                        for i in fired {
                            model.remove(&(armed[i].take().unwrap(), i));
                        }
                    }
                }
                w.check();
                proptest::prop_assert_eq!(w.len(), model.len());
                if let Some(&(d, _)) = model.iter().next() {
                    let next = w.next_deadline().unwrap();
                    proptest::prop_assert!(next <= d.div_ceil(TICK_NS) * TICK_NS);
                }
            }
        }
    }
}
