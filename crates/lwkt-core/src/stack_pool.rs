//! [`StackPool`]: thread stacks carved from one memory region, for a
//! bare-metal backend's [`Arch::alloc_stack`](crate::Arch::alloc_stack)
//! and [`Arch::free_stack`](crate::Arch::free_stack).
//!
//! The kernel hands the pool one region; the pool cuts it into equal slots
//! and keeps its bitmap of used slots at the start of the region itself,
//! so it has no limit of its own on the number of stacks. Each slot starts
//! with a canary word that `free` checks: without a guard page (an identity
//! map in 2 MiB or 1 GiB pages has none to give), an overrun is found when
//! the stack comes back. The pool's lock is held with interrupts off on
//! the calling CPU ([`IrqMask`]): an interrupt handler that frees a stack
//! (an IPI function reaping a thread), or a thread that preempts from the
//! interrupt frame, would otherwise spin for ever on the lock the
//! interrupted code holds.
//!
//! DragonFly takes thread stacks from the kernel's memory allocator
//! (`lwkt_alloc_thread` with `kmem_alloc_stack`) and keeps a per-CPU cache
//! of freed threads (`gd_tdfreeq`); a backend that has an allocator can
//! do the same instead of using this pool.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
// Not the crate's loom shim: the pool is a lock around plain data (no
// lock-free algorithm to model), and its constructor must be `const` for a
// backend's `static`.
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::Stack;

/// Written at the bottom of every slot; found changed when the stack comes
/// back, it means the thread overran its stack.
const CANARY: u64 = 0x5afe_57ac_c0de_ca4a;
/// Bytes below each stack's usable part, holding the canary (and keeping
/// the usable part 16-byte aligned).
const CANARY_ROOM: usize = 64;

/// How a backend keeps interrupts off the calling CPU while the pool's
/// lock is held.
///
/// ```
/// struct NoIrqs; // a host test: nothing interrupts
/// impl lwkt_core::IrqMask for NoIrqs {
///     fn without_interrupts<R>(f: impl FnOnce() -> R) -> R { f() }
/// }
/// ```
pub trait IrqMask {
    /// Run `f` with this CPU's interrupts masked, restoring their previous
    /// state afterwards (x86-64: `pushf; cli` ... `popf`; AArch64: DAIF).
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R;
}

/// The region once the pool has one.
struct Region {
    /// Start of slot 0 (after the bitmap). Slots are reached from this
    /// pointer (never from an address a caller passes back), so they keep
    /// the region's provenance.
    slots: NonNull<u8>,
    /// Bytes per slot, canary included.
    slot: usize,
    /// Number of slots.
    count: usize,
    /// The bitmap: `count` bits, one word per 64 slots, at the start of
    /// the region.
    used: NonNull<u64>,
    /// Bitmap words below this one are full (a search starts here).
    first_free_word: usize,
}

impl Region {
    fn words(&self) -> usize {
        self.count.div_ceil(64)
    }

    fn word(&self, w: usize) -> u64 {
        debug_assert!(w < self.words());
        // SAFETY: `w` is below the bitmap's length, which lies at the start
        // of the region the pool owns (`init`).
        unsafe { self.used.as_ptr().add(w).read() }
    }

    fn set_word(&mut self, w: usize, v: u64) {
        debug_assert!(w < self.words());
        // SAFETY: as in `word`; `&mut self` under the pool's lock.
        unsafe { self.used.as_ptr().add(w).write(v) }
    }
}

/// Thread stacks carved from one region in equal slots, for a bare-metal
/// backend (see the module documentation). `M` masks interrupts around
/// the pool's lock.
///
/// ```
/// use lwkt_core::{IrqMask, StackPool};
/// struct NoIrqs;
/// impl IrqMask for NoIrqs {
///     fn without_interrupts<R>(f: impl FnOnce() -> R) -> R { f() }
/// }
/// static POOL: StackPool<NoIrqs> = StackPool::new();
/// #[repr(C, align(16))]
/// struct Region([u8; 1 << 18]);
/// let region: &'static mut Region = Box::leak(Box::new(Region([0; 1 << 18])));
/// // SAFETY: a leaked (so lasting), writable, 16-byte aligned region used
/// // for nothing else.
/// unsafe { POOL.init(region.0.as_mut_ptr(), 1 << 18, 16 << 10) };
/// let s = POOL.alloc(8 << 10).unwrap();
/// assert!(s.len >= 8 << 10);
/// assert!(POOL.alloc(64 << 10).is_none()); // larger than a slot
/// // SAFETY: from this pool, and nothing runs on it.
/// unsafe { POOL.free(s) };
/// ```
pub struct StackPool<M: IrqMask> {
    locked: AtomicBool,
    region: UnsafeCell<Option<Region>>,
    _mask: PhantomData<fn() -> M>,
}

// SAFETY: the region is read and written only by the holder of `locked`
// (an acquire/release spin lock), and the pointers in it refer to memory
// the pool owns for ever (`init`'s contract), so any CPU may use the pool.
unsafe impl<M: IrqMask> Sync for StackPool<M> {}
// SAFETY: as above: the pool owns its region, whichever thread holds it.
unsafe impl<M: IrqMask> Send for StackPool<M> {}

impl<M: IrqMask> fmt::Debug for StackPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|r| match r {
            Some(r) => f
                .debug_struct("StackPool")
                .field("slot", &r.slot)
                .field("count", &r.count)
                .finish_non_exhaustive(),
            None => f.write_str("StackPool(no region)"),
        })
    }
}

impl<M: IrqMask> Default for StackPool<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: IrqMask> StackPool<M> {
    /// A pool without a region: [`alloc`](Self::alloc) returns `None`
    /// until [`init`](Self::init).
    pub const fn new() -> StackPool<M> {
        StackPool {
            locked: AtomicBool::new(false),
            region: UnsafeCell::new(None),
            _mask: PhantomData,
        }
    }

    /// Run `f` on the region under the lock, interrupts masked.
    fn with<R>(&self, f: impl FnOnce(&mut Option<Region>) -> R) -> R {
        M::without_interrupts(|| {
            while self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
            /// Releases the lock even if `f` panics (a refused `free`).
            struct Unlock<'a>(&'a AtomicBool);
            impl Drop for Unlock<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _unlock = Unlock(&self.locked);
            // SAFETY: we hold the lock, so no other reference to the
            // region exists; interrupts are masked, so no handler of this
            // CPU takes it meanwhile.
            f(unsafe { &mut *self.region.get() })
        })
    }

    /// Hand the pool `len` bytes at `base`, cut in slots of `slot` bytes
    /// after a bitmap of one bit per slot at the region's start.
    ///
    /// # Safety
    /// The region is writable, 16-byte aligned, used for nothing else, and
    /// lives as long as the pool.
    ///
    /// # Panics
    /// If the pool already has a region, a slot is under 4 KiB or not a
    /// multiple of 16, `base` is null or not 16-byte aligned, the region
    /// wraps around the address space, or it is too small for one slot.
    ///
    /// ```compile_fail,E0133
    /// # struct NoIrqs;
    /// # impl lwkt_core::IrqMask for NoIrqs {
    /// #     fn without_interrupts<R>(f: impl FnOnce() -> R) -> R { f() }
    /// # }
    /// let pool = lwkt_core::StackPool::<NoIrqs>::new();
    /// pool.init(8 as *mut u8, 1 << 20, 64 << 10); // any pointer: unsafe
    /// ```
    pub unsafe fn init(&self, base: *mut u8, len: usize, slot: usize) {
        assert!(
            slot >= 4096 && slot % 16 == 0,
            "lwkt: stack slots of at least 4 KiB, a multiple of 16 bytes"
        );
        assert!(
            !base.is_null() && base.addr() % 16 == 0 && base.addr().checked_add(len).is_some(),
            "lwkt: the stack region must be non-null, 16-byte aligned and not wrap"
        );
        // The most slots that fit after their own bitmap (rounded up to
        // 16 bytes, so every slot stays 16-byte aligned).
        let bitmap_room = |n: usize| (n.div_ceil(64) * 8).next_multiple_of(16);
        let mut count = len / slot;
        while count > 0 && bitmap_room(count) + count * slot > len {
            count -= 1;
        }
        assert!(
            count > 0,
            "lwkt: the stack region holds no {slot}-byte slot"
        );
        self.with(|r| {
            assert!(r.is_none(), "lwkt: the stack pool has its region already");
            let used = base.cast::<u64>();
            for w in 0..count.div_ceil(64) {
                // SAFETY: the bitmap's words lie at the start of the
                // region, which is writable and 8-byte aligned (caller).
                unsafe { used.add(w).write(0) };
            }
            *r = Some(Region {
                // SAFETY: the bitmap's room is inside the region (`count`
                // was chosen so), and the region does not wrap, so the
                // result is in bounds and not null.
                slots: unsafe { NonNull::new_unchecked(base.add(bitmap_room(count))) },
                slot,
                count,
                // SAFETY: `base` is not null (checked).
                used: unsafe { NonNull::new_unchecked(used) },
                first_free_word: 0,
            });
        });
    }

    /// Number of slots, or 0 before [`init`](Self::init).
    pub fn capacity(&self) -> usize {
        self.with(|r| r.as_ref().map_or(0, |r| r.count))
    }

    /// A free stack of at least `size` usable bytes (a whole slot less its
    /// canary), or `None` when every slot is taken, `size` does not fit a
    /// slot, or the pool has no region.
    pub fn alloc(&self, size: usize) -> Option<Stack> {
        self.with(|r| {
            let r = r.as_mut()?;
            if size > r.slot - CANARY_ROOM {
                return None;
            }
            let w = (r.first_free_word..r.words()).find(|&w| r.word(w) != u64::MAX)?;
            let bits = r.word(w);
            let i = w * 64 + bits.trailing_ones() as usize;
            if i >= r.count {
                return None;
            }
            r.set_word(w, bits | 1 << (i % 64));
            r.first_free_word = w;
            // SAFETY: slot `i` (below `count`) lies inside the region
            // (`init`), which does not wrap: in bounds, 16-byte aligned,
            // not null, and free, so nothing else uses it.
            unsafe {
                let start = r.slots.as_ptr().add(i * r.slot);
                start.cast::<u64>().write(CANARY);
                Some(Stack {
                    base: NonNull::new_unchecked(start.add(CANARY_ROOM)),
                    len: r.slot - CANARY_ROOM,
                })
            }
        })
    }

    /// Give back a stack from [`alloc`](Self::alloc).
    ///
    /// # Safety
    /// Nothing runs on `s` any more, nor will (the slot is handed out
    /// again).
    ///
    /// # Panics
    /// If `s` is not a stack this pool handed out and has not taken back,
    /// or the thread overran it (its canary changed).
    pub unsafe fn free(&self, s: Stack) {
        self.with(|r| {
            let r = r
                .as_mut()
                .expect("lwkt: free of a stack before the pool has a region");
            // Addresses only, to find the slot; its memory is reached from
            // the pool's own pointer below.
            let start = s.base.as_ptr().addr().wrapping_sub(CANARY_ROOM);
            let off = start.wrapping_sub(r.slots.as_ptr().addr());
            let i = off / r.slot;
            assert!(
                start >= r.slots.as_ptr().addr()
                    && off % r.slot == 0
                    && i < r.count
                    && r.word(i / 64) & (1 << (i % 64)) != 0,
                "lwkt: free of a stack the pool did not hand out"
            );
            // SAFETY: slot `i` is in use, so `alloc` wrote its first word;
            // in bounds as there.
            let canary = unsafe { r.slots.as_ptr().add(i * r.slot).cast::<u64>().read() };
            assert_eq!(
                canary, CANARY,
                "lwkt: a thread overran its {}-byte stack at {:#x}",
                s.len, start
            );
            let w = i / 64;
            r.set_word(w, r.word(w) & !(1 << (i % 64)));
            r.first_free_word = r.first_free_word.min(w);
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    struct NoIrqs;
    impl IrqMask for NoIrqs {
        fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
    }

    /// A 16-byte aligned region (u128s), freed when the test ends (after
    /// the pool that uses it, declared later).
    fn region(len: usize) -> Box<[u128]> {
        vec![0u128; len / 16].into_boxed_slice()
    }

    fn pool(r: &mut [u128], slot: usize) -> StackPool<NoIrqs> {
        let p = StackPool::new();
        // SAFETY: the region outlives the pool (the caller declares it
        // first) and is used by this pool only.
        unsafe { p.init(r.as_mut_ptr().cast(), r.len() * 16, slot) };
        p
    }

    fn panic_message(f: impl FnOnce()) -> String {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        e.downcast_ref::<&str>()
            .map(|s| String::from(*s))
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    }

    #[test]
    fn more_than_256_stacks_and_every_one_distinct() {
        let mut r = region(1000 * 4096 + 4096);
        let p = pool(&mut r, 4096);
        let n = p.capacity();
        assert!(n >= 1000, "{n} slots");
        let mut got: Vec<Stack> = (0..n).map(|_| p.alloc(1024).unwrap()).collect();
        assert!(p.alloc(1024).is_none(), "more stacks than slots");
        let mut bases: Vec<usize> = got.iter().map(|s| s.base.as_ptr().addr()).collect();
        bases.sort_unstable();
        bases.dedup();
        assert_eq!(bases.len(), n);
        assert!(bases.windows(2).all(|w| w[1] - w[0] >= 4096 - CANARY_ROOM));
        // Free one in the middle: the next alloc gets exactly it.
        let s = got.remove(500);
        let b = s.base;
        // SAFETY: ours, unused.
        unsafe { p.free(s) };
        assert_eq!(p.alloc(1).unwrap().base, b);
    }

    #[test]
    fn slots_are_16_byte_aligned_after_the_bitmap() {
        let mut r = region(70 * 8192);
        let p = pool(&mut r, 8192);
        let s = p.alloc(100).unwrap();
        assert_eq!(s.base.as_ptr().addr() % 16, 0);
        assert_eq!(s.len, 8192 - CANARY_ROOM);
        assert_eq!(p.capacity(), 69, "70 slots less room for the bitmap");
    }

    #[test]
    fn refuses_bad_regions_foreign_stacks_and_overruns() {
        let mut spare = region(1 << 16);
        let b = spare.as_mut_ptr().cast::<u8>();
        assert!(panic_message(|| {
            // SAFETY: refused before it is used.
            unsafe { StackPool::<NoIrqs>::new().init(b, 1 << 16, 100) }
        })
        .contains("at least 4 KiB"));
        assert!(panic_message(|| {
            // SAFETY: refused before it is used.
            unsafe {
                StackPool::<NoIrqs>::new().init(core::ptr::without_provenance_mut(8), 1 << 20, 4096)
            }
        })
        .contains("16-byte aligned"));
        let mut r = region(64 << 10);
        let p = pool(&mut r, 8192);
        assert!(panic_message(|| {
            // SAFETY: refused before it is used.
            unsafe { p.init(b, 1 << 16, 8192) }
        })
        .contains("has its region already"));
        let s = p.alloc(4096).unwrap();
        let foreign = Stack {
            base: NonNull::new(s.base.as_ptr().wrapping_add(16)).unwrap(),
            len: s.len,
        };
        // SAFETY: refused before it touches anything.
        assert!(panic_message(|| unsafe { p.free(foreign) }).contains("did not hand out"));
        // The lock was released by the panic: the pool still works.
        let t = p.alloc(4096).unwrap();
        // An overrun: the canary below the stack is overwritten.
        // SAFETY: the canary word of our own slot.
        unsafe { t.base.as_ptr().sub(CANARY_ROOM).cast::<u64>().write(0) };
        let tb = Stack {
            base: t.base,
            len: t.len,
        };
        // SAFETY: ours, unused (the overrun is what is checked).
        assert!(panic_message(|| unsafe { p.free(tb) }).contains("overran"));
        // SAFETY: ours, unused.
        unsafe { p.free(s) };
        let again = Stack {
            base: NonNull::new(s_base(&p)).unwrap(),
            len: 0,
        };
        // SAFETY: already given back: refused before it touches anything.
        let msg = panic_message(|| unsafe { p.free(again) });
        assert!(msg.contains("did not hand out"), "{msg}");
    }

    /// The base of the first slot (free now).
    fn s_base(p: &StackPool<NoIrqs>) -> *mut u8 {
        p.with(|r| r.as_ref().unwrap().slots.as_ptr().wrapping_add(CANARY_ROOM))
    }

    #[test]
    fn no_region_no_stacks() {
        let p = StackPool::<NoIrqs>::new();
        assert!(p.alloc(1).is_none());
        assert_eq!(p.capacity(), 0);
        assert_eq!(std::format!("{p:?}"), "StackPool(no region)");
    }
}
