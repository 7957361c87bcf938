//! For programs on a host OS: a page source over `mmap`, a CPU context
//! that maps OS threads to slots, and a `GlobalAlloc` built from them.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use lwkt_core::MAX_CPUS;

use crate::class::{is_small, route, PAGE_SIZE, ZONE_SIZE};
use crate::slab::large_bytes;
use crate::zone::Zone;
use crate::{CpuContext, Domain, DomainId, Flags, MallocStats, MallocType, PageSource, Slab};

/// A page source over the host's memory: zones are carved from one arena
/// reserved with `mmap` on first use (address space only; the host commits
/// pages as they are touched), large blocks are mapped one by one. At most
/// `capacity` bytes are handed out at once; past that, allocations fail
/// (which makes exhaustion testable).
///
/// ```
/// use lwkt_slab::{HostedPages, PageSource};
/// let pages = HostedPages::new(1 << 20);
/// let (z, zeroed) = pages.alloc_zone(false).unwrap();
/// assert!(zeroed && z.as_ptr() as usize % lwkt_slab::ZONE_SIZE == 0);
/// unsafe { pages.free_zone(z) };
/// ```
#[derive(Debug)]
pub struct HostedPages {
    capacity: usize,
    base: AtomicPtr<u8>,
    /// The mapping as `mmap` returned it (`base` is rounded up to a zone).
    mapping: AtomicPtr<u8>,
    /// Next never-used zone offset in the arena.
    bump: AtomicUsize,
    /// Bytes handed out now (zones and large blocks).
    used: AtomicUsize,
    /// Zones given back, linked through their first word.
    free: AtomicPtr<u8>,
    free_lock: AtomicBool,
}

impl HostedPages {
    /// A source of at most `capacity` bytes (rounded up to whole zones).
    pub const fn new(capacity: usize) -> HostedPages {
        HostedPages {
            capacity: capacity.div_ceil(ZONE_SIZE) * ZONE_SIZE,
            base: AtomicPtr::new(ptr::null_mut()),
            mapping: AtomicPtr::new(ptr::null_mut()),
            bump: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            free: AtomicPtr::new(ptr::null_mut()),
            free_lock: AtomicBool::new(false),
        }
    }

    /// Bytes handed out now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn arena(&self) -> Option<*mut u8> {
        let b = self.base.load(Ordering::Acquire);
        if !b.is_null() {
            return Some(b);
        }
        let len = self.capacity + ZONE_SIZE;
        // SAFETY: an anonymous private mapping; no memory is touched.
        let m = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return None;
        }
        let m = m.cast::<u8>();
        let aligned = m.map_addr(|a| (a + ZONE_SIZE - 1) & !(ZONE_SIZE - 1));
        match self.base.compare_exchange(
            ptr::null_mut(),
            aligned,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.mapping.store(m, Ordering::Release);
                Some(aligned)
            }
            Err(other) => {
                // Another thread mapped it first.
                // SAFETY: our own mapping, unused.
                unsafe { libc::munmap(m.cast(), len) };
                Some(other)
            }
        }
    }

    fn charge(&self, bytes: usize) -> bool {
        let mut u = self.used.load(Ordering::Relaxed);
        loop {
            if u + bytes > self.capacity {
                return false;
            }
            match self.used.compare_exchange_weak(
                u,
                u + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => u = now,
            }
        }
    }

    /// Run `f` under the free-zone lock. Holding it counts as being inside
    /// the allocator (`HELD`), so `GlobalSlab` serves a signal handler that
    /// interrupts the holder without this lock.
    fn with_free<R>(&self, f: impl FnOnce(&AtomicPtr<u8>) -> R) -> R {
        let _inside = Inside::enter();
        while self
            .free_lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        let r = f(&self.free);
        self.free_lock.store(false, Ordering::Release);
        r
    }
}

impl Drop for HostedPages {
    /// Unmap the arena (zones die with it; large blocks still out stay
    /// mapped).
    fn drop(&mut self) {
        let m = *self.mapping.get_mut();
        if !m.is_null() {
            // SAFETY: the mapping `arena` made, with its length; `&mut self`
            // means no zone of it is in use through this source any more.
            unsafe { libc::munmap(m.cast(), self.capacity + ZONE_SIZE) };
        }
    }
}

// SAFETY: zones are distinct `ZONE_SIZE`-aligned slices of the arena (bump
// allocation, or a zone given back and handed out once again under the
// lock); large blocks are fresh mappings.
unsafe impl PageSource for HostedPages {
    fn alloc_zone(&self, _nowait: bool) -> Option<(NonNull<u8>, bool)> {
        if !self.charge(ZONE_SIZE) {
            return None;
        }
        let reused = self.with_free(|head| {
            let z = head.load(Ordering::Relaxed);
            if !z.is_null() {
                // SAFETY: a free zone's first word links the next one.
                head.store(unsafe { z.cast::<*mut u8>().read() }, Ordering::Relaxed);
            }
            z
        });
        if let Some(z) = NonNull::new(reused) {
            return Some((z, false));
        }
        let Some(base) = self.arena() else {
            self.used.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
            return None;
        };
        let off = self.bump.fetch_add(ZONE_SIZE, Ordering::Relaxed);
        if off + ZONE_SIZE > self.capacity {
            // Everything is out (some in the free list raced us): give up.
            self.bump.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
            self.used.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
            return None;
        }
        // SAFETY: inside the arena.
        Some((unsafe { NonNull::new_unchecked(base.add(off)) }, true))
    }

    unsafe fn free_zone(&self, z: NonNull<u8>) {
        self.with_free(|head| {
            // SAFETY: the zone is ours again; its first word links it.
            unsafe {
                z.as_ptr()
                    .cast::<*mut u8>()
                    .write(head.load(Ordering::Relaxed))
            };
            head.store(z.as_ptr(), Ordering::Relaxed);
        });
        self.used.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
    }

    fn alloc_large(&self, layout: Layout, _nowait: bool) -> Option<(NonNull<u8>, bool)> {
        let len = layout.size().checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
        if !self.charge(len) {
            return None;
        }
        // SAFETY: an anonymous private mapping (page-aligned, zeroed).
        let m = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            self.used.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        NonNull::new(m.cast()).map(|p| (p, true))
    }

    unsafe fn free_large(&self, p: NonNull<u8>, layout: Layout) {
        let len = (layout.size() + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        // SAFETY: the caller gives back a mapping `alloc_large` made.
        unsafe { libc::munmap(p.as_ptr().cast(), len) };
        self.used.fetch_sub(len, Ordering::Relaxed);
    }

    fn owns_zone(&self, zone: *const u8) -> bool {
        let b = self.base.load(Ordering::Acquire) as usize;
        b != 0 && (zone as usize) >= b && (zone as usize) < b + self.capacity
    }
}

std::thread_local! {
    /// This thread's preferred slot (a hint shared by every `ThreadSlots`).
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Slots of any `ThreadSlots`, and `HostedPages` free-zone locks, this
    /// thread holds now: non-zero when a signal handler (or a nested call)
    /// interrupts this thread inside the allocator.
    /// A const-initialised `Cell` without destructor: reading it in a
    /// signal handler touches only the thread's static TLS block.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// Whether this OS thread holds a slot of some `ThreadSlots` or a page
/// source's lock now (so code running here interrupted, or was called
/// from, an operation holding one).
fn this_thread_is_inside() -> bool {
    HELD.with(Cell::get) != 0
}

/// This thread counts as inside the allocator (`HELD`) while the guard
/// lives. Entered before the slot or lock it covers is taken and left
/// after that is given back, so a signal handler never finds the thread
/// holding one while not marked inside (it would wait for the code it
/// interrupted). The compiler fences keep that order as a handler on this
/// thread sees it (they emit no instruction).
struct Inside;

impl Inside {
    #[inline(always)]
    fn enter() -> Inside {
        HELD.with(|h| h.set(h.get() + 1));
        compiler_fence(Ordering::SeqCst);
        Inside
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        HELD.with(|h| h.set(h.get() - 1));
    }
}

/// A CPU context for OS threads: each thread is given one of `n` slots
/// (round-robin at its first allocation) and takes that slot's lock around
/// each operation, so the slab's per-CPU state is never shared. The lock is
/// uncontended while threads do not outnumber slots; a thread that finds
/// its slot busy uses the next free one. Costs one compare-and-swap per
/// operation, which LWKT's critical sections do not.
///
/// Each `ThreadSlots` is its own [`Domain`](crate::Domain): a slab used
/// with one refuses every other context.
///
/// Re-entry: a signal handler (or a nested call) that uses a `ThreadSlots`
/// while its thread already holds a slot never waits for a slot, since
/// the holder it would wait for may be the code it interrupted; it takes
/// any free slot, and panics if every slot is busy (with one slot,
/// always) rather than deadlock. [`GlobalSlab`] does not get there: it
/// serves a re-entered thread without a slot.
///
/// ```
/// use lwkt_slab::{CpuContext, ThreadSlots};
/// static SLOTS: ThreadSlots = ThreadSlots::new(2);
/// let a = SLOTS.with_cpu(|cpu| cpu);
/// assert!(a < 2);
/// ```
#[derive(Debug)]
pub struct ThreadSlots {
    n: usize,
    next: AtomicUsize,
    busy: [CachePadded<AtomicBool>; MAX_CPUS],
    id: DomainId,
}

impl ThreadSlots {
    /// `n` slots (use the slab's CPU count).
    ///
    /// # Panics
    /// If `n` is 0 or above `MAX_CPUS`.
    pub const fn new(n: usize) -> ThreadSlots {
        assert!(n > 0 && n <= MAX_CPUS, "lwkt-slab: 1..=MAX_CPUS slots");
        ThreadSlots {
            n,
            next: AtomicUsize::new(0),
            busy: [const { CachePadded::new(AtomicBool::new(false)) }; MAX_CPUS],
            id: DomainId::new(),
        }
    }

    /// Take slot `s` if it is free.
    #[inline]
    fn try_take(&self, s: usize) -> bool {
        !self.busy[s].load(Ordering::Relaxed) && !self.busy[s].swap(true, Ordering::Acquire)
    }

    /// Take a free slot, starting at `s`: waiting for one, unless this
    /// thread already holds a slot (then one round, and `None`).
    fn take_from(&self, mut s: usize, reentered: bool) -> Option<usize> {
        let mut tried = 0;
        loop {
            if self.try_take(s) {
                return Some(s);
            }
            s = (s + 1) % self.n;
            tried += 1;
            if reentered && tried >= self.n {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Run `f` holding slot `s` (taken by `try_take`), given back when
    /// `f` returns or unwinds.
    #[inline]
    fn hold<R>(&self, s: usize, f: impl FnOnce(usize) -> R) -> R {
        struct Leave<'a>(&'a AtomicBool);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _leave = Leave(&self.busy[s]);
        f(s)
    }

    /// This thread's preferred slot.
    #[inline]
    fn preferred(&self) -> usize {
        let mut s = SLOT.with(Cell::get);
        if s >= self.n {
            s = self.next.fetch_add(1, Ordering::Relaxed) % self.n;
            SLOT.with(|c| c.set(s));
        }
        s
    }
}

// SAFETY: an index is used only while its `busy` flag is held (Acquire on
// taking, Release on leaving), so no two callers use one index at once;
// the domain is this instance's own `DomainId`, which no other context
// reports.
unsafe impl CpuContext for ThreadSlots {
    #[inline]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let reentered = this_thread_is_inside();
        // Inside from before the slot is taken until after it is given
        // back (`hold` returns first).
        let _inside = Inside::enter();
        let s = self.preferred();
        let s = if self.try_take(s) {
            s
        } else {
            self.take_from(s, reentered).unwrap_or_else(|| {
                panic!(
                    "lwkt-slab: ThreadSlots re-entered (a signal handler or a nested call) \
                     on a thread that holds a slot, with every slot busy"
                )
            })
        };
        self.hold(s, f)
    }

    #[inline]
    fn domain(&self) -> Domain {
        self.id.domain()
    }
}

/// A whole program's allocator on the slab: `#[global_allocator]`.
///
/// Signal handlers may allocate and free through it, even when they
/// interrupt their thread inside it (holding its slot, or the page
/// source's lock): a thread re-entered so neither waits for a slot nor
/// takes a lock; it maps a block of its own for each allocation (page
/// granular, with `mmap`, which is async-signal-safe) and frees chunks
/// onto their zone's remote list, as another CPU would. Those blocks are
/// told from chunks by address (outside the zone arena), so either side
/// may free what the other allocated.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: lwkt_slab::GlobalSlab = lwkt_slab::GlobalSlab::new(1 << 30, 8);
/// fn main() {
///     let v: Vec<u32> = (0..1000).collect();
///     assert_eq!(ALLOC.stats().in_use > 0, true);
///     drop(v);
/// }
/// ```
#[derive(Debug)]
pub struct GlobalSlab {
    slab: Slab<HostedPages>,
    slots: ThreadSlots,
    ty: MallocType,
}

impl GlobalSlab {
    /// An allocator of at most `capacity` bytes with `slots` per-CPU slabs.
    pub const fn new(capacity: usize, slots: usize) -> GlobalSlab {
        GlobalSlab {
            slab: Slab::new(HostedPages::new(capacity), slots),
            slots: ThreadSlots::new(slots),
            ty: MallocType::new("global"),
        }
    }

    /// Statistics of everything allocated through it.
    pub fn stats(&self) -> MallocStats {
        self.ty.stats()
    }

    /// The slab underneath.
    pub fn slab(&self) -> &Slab<HostedPages> {
        &self.slab
    }

    /// The CPU context it uses (for [`Slab::check`] and [`Slab::reclaim`]).
    pub fn slots(&self) -> &ThreadSlots {
        &self.slots
    }
}

impl GlobalSlab {
    /// Whether this thread is inside the allocator already (a signal
    /// handler interrupted it there, or a nested call): then it must not
    /// wait for a slot or the page source's lock, whose holder may be the
    /// code it interrupted.
    #[inline]
    fn reentered() -> bool {
        this_thread_is_inside()
    }

    /// Whether `ptr` (with a small layout) is a block of the re-entered
    /// path rather than a chunk: chunks lie in the page source's zone
    /// arena, those blocks are mappings of their own.
    #[inline]
    fn is_unowned_block(&self, ptr: *mut u8, layout: Layout) -> bool {
        is_small(layout) && !self.slab.page_source().owns_zone(Zone::of(ptr).cast())
    }

    /// The re-entered path: a block mapped for this allocation alone (page
    /// granular, zeroed), with no slot and no lock, accounted without a
    /// CPU. `mmap` is async-signal-safe.
    #[cold]
    fn alloc_unowned(&self, layout: Layout) -> *mut u8 {
        let Ok(bytes) = route(layout).and_then(|_| large_bytes(layout)) else {
            return ptr::null_mut();
        };
        match self.slab.page_source().alloc_large(layout, true) {
            Some((p, _zeroed)) => {
                self.ty.account_unowned(bytes as isize);
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    /// Free on the re-entered path, or a block it made.
    ///
    /// # Safety
    /// `ptr` came from this allocator with `layout` and is not used after.
    #[cold]
    unsafe fn dealloc_unowned(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` is not null (`GlobalAlloc` contract).
        let p = unsafe { NonNull::new_unchecked(ptr) };
        if self.is_unowned_block(ptr, layout) {
            let bytes = large_bytes(layout).expect("checked at allocation");
            self.ty.account_unowned(-(bytes as isize));
            // SAFETY: `alloc_unowned` mapped it with `alloc_large(layout)`.
            unsafe { self.slab.page_source().free_large(p, layout) };
        } else {
            // SAFETY: a chunk or large block of the slab (caller).
            unsafe { self.slab.free_unowned(p, layout, &self.ty) };
        }
    }
}

// SAFETY: forwards to the slab, which returns blocks fitting the layout or
// an error (returned as null), or (re-entered) to `alloc_unowned`, whose
// blocks are page-rounded mappings fitting the layout; each free goes back
// the way its block came: `is_unowned_block` tells a mapping of the
// re-entered path from a chunk, and the re-entered free needs no slot.
unsafe impl GlobalAlloc for GlobalSlab {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::reentered() {
            return self.alloc_unowned(layout);
        }
        self.slab
            .alloc(&self.slots, layout, &self.ty, Flags::NONE)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::reentered() {
            // Fresh mappings are zero.
            return self.alloc_unowned(layout);
        }
        self.slab
            .alloc(&self.slots, layout, &self.ty, Flags::ZERO)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::reentered() || self.is_unowned_block(ptr, layout) {
            // SAFETY: forwarded.
            return unsafe { self.dealloc_unowned(ptr, layout) };
        }
        // SAFETY: `GlobalAlloc` contract: `ptr` came from us with `layout`.
        unsafe {
            self.slab
                .free(&self.slots, NonNull::new_unchecked(ptr), layout, &self.ty)
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::reentered() || self.is_unowned_block(ptr, layout) {
            // Allocate, copy and free, each on its own path.
            let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            // SAFETY: `new` has a non-zero size (`GlobalAlloc` contract).
            let q = unsafe { self.alloc(new) };
            if !q.is_null() {
                // SAFETY: distinct live blocks of at least the copied
                // length; `ptr` is ours to free (caller).
                unsafe {
                    ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            return q;
        }
        // SAFETY: as in `dealloc`.
        unsafe {
            self.slab.realloc(
                &self.slots,
                NonNull::new_unchecked(ptr),
                layout,
                new_size,
                &self.ty,
                Flags::NONE,
            )
        }
        .map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}
