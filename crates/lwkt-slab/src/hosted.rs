//! For programs on a host OS: a page source over `mmap`, a CPU context
//! that maps OS threads to slots, and a `GlobalAlloc` built from them.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use lwkt_core::MAX_CPUS;

use crate::class::{is_small, route, small_class, Route, CHUNK, PAGE_SIZE, ZONE_LIMIT, ZONE_SIZE};
use crate::slab::large_bytes;
use crate::zone::Zone;
use crate::{CpuContext, Domain, DomainId, Flags, MallocStats, MallocType, PageSource, Slab};

/// Free zones a `HostedPages` keeps mapped for reuse; past this, freed
/// zones are given back to the host (`madvise(MADV_DONTNEED)`, the address
/// space stays reserved). DragonFly: `ZONE_RELS_THRESH` (32 zones).
pub const HOT_ZONES: usize = 32;

/// Bytes of freed large blocks (spans) a `HostedPages` keeps mapped for
/// reuse; a span freed past this is unmapped.
pub const SPAN_CACHE_BYTES: usize = 32 << 20;

/// `madvise` advice: commit (write-fault) the range now. Linux 5.14.
#[cfg(target_os = "linux")]
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A grown span's new tail is committed at once (`MADV_POPULATE_WRITE`)
/// only up to this size.
#[cfg(target_os = "linux")]
const POPULATE_MAX: usize = 8 << 20;

/// Spans above this size are never cached: mapped and unmapped each time.
const MAX_CACHED_SPAN: usize = 64 << 20;

/// Address space reserved for a large block that grows (`realloc`): it
/// grows in place up to this, with no copy and no system call, into pages
/// that stay resident when the reservation is freed and reused (a vector
/// grown to megabytes again and again). Reserved, not committed
/// (`MAP_NORESERVE`): only the pages a block touches use memory.
#[cfg(target_os = "linux")]
const GROW_RESERVE: usize = 64 << 20;

/// Growth reservations at most, in use and free together.
#[cfg(target_os = "linux")]
const GROW_SLOTS: usize = 64;

/// Bytes the free growth reservations may keep resident (as far as their
/// blocks reached); a reservation freed past this is unmapped. Twice the
/// span cache: 16 threads each growing a 3 MiB vector again and again
/// (`churn 16`) fault 77,000 pages with 32 MiB, 35,000 with 64 MiB.
#[cfg(target_os = "linux")]
const GROW_CACHE_BYTES: usize = 64 << 20;

/// A block entering a growth reservation from a span up to this long is
/// copied in (into pages likely resident, a free reservation's), and its
/// span cached for the next block of that size; a longer one has its
/// pages moved in (`mremap`), which unmaps its span.
#[cfg(target_os = "linux")]
const GROW_COPY_MAX: usize = 256 << 10;

/// Span size classes (see `span_len`): four per power of two up to
/// `MAX_CACHED_SPAN`.
const NBINS: usize = 56;

/// Address-space regions a growing source reserves at most (each at least
/// as large as all before it together, so this is never the limit).
const MAX_REGIONS: usize = 40;

/// Smallest region reserved when a larger one cannot be had.
const MIN_REGION: usize = 16 * ZONE_SIZE;

/// The length of the span serving `size` bytes: whole pages, rounded to
/// one of four steps per power of two above four pages (at most 1/4 of
/// address space wasted; untouched pages cost no memory). `None` on
/// overflow.
fn span_len(size: usize) -> Option<usize> {
    let pages = size.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE;
    let pages = if pages <= 4 {
        pages.max(1)
    } else {
        let step = 1usize << (usize::BITS - 3 - pages.leading_zeros());
        pages.checked_add(step - 1)? & !(step - 1)
    };
    pages.checked_mul(PAGE_SIZE)
}

/// The cache bin of a span length `span_len` returned, at most
/// `MAX_CACHED_SPAN`.
fn span_bin(len: usize) -> usize {
    let pages = len / PAGE_SIZE;
    if pages <= 4 {
        return pages - 1;
    }
    let e = (usize::BITS - 1 - pages.leading_zeros()) as usize;
    4 + (e - 2) * 4 + ((pages >> (e - 2)) - 4)
}

/// Map `len` bytes (page-rounded) aligned to `align`, fresh and zeroed:
/// for alignments above a page, map `align` more and unmap the ends.
/// Async-signal-safe (`mmap`, `munmap`).
fn map_span(len: usize, align: usize) -> Option<NonNull<u8>> {
    let total = len.checked_add(align.max(PAGE_SIZE) - PAGE_SIZE)?;
    // SAFETY: an anonymous private mapping; nothing else is touched.
    let m = unsafe {
        libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        return None;
    }
    let m = m.cast::<u8>();
    let head = m.align_offset(align.max(PAGE_SIZE));
    // SAFETY: `head <= total - len` (the mapping is page-aligned, so the
    // next `align` boundary is at most `align - PAGE_SIZE` on), and the
    // pieces unmapped are ours, outside the span kept.
    unsafe {
        let p = m.add(head);
        if head > 0 {
            libc::munmap(m.cast(), head);
        }
        let tail = total - head - len;
        if tail > 0 {
            libc::munmap(p.add(len).cast(), tail);
        }
        NonNull::new(p)
    }
}

/// A spin lock around the page source's lists. Holding it counts as being
/// inside the allocator (`HELD`), so `GlobalSlab` serves a signal handler
/// that interrupts the holder without this lock. A waiter spins briefly,
/// then yields its CPU (the holder may have been preempted).
struct Locked<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only under `held` (Acquire to take, Release
// to give back); what it holds (raw pointers to memory of the page source)
// belongs to no thread.
unsafe impl<T> Sync for Locked<T> {}

impl<T> Locked<T> {
    const fn new(value: T) -> Locked<T> {
        Locked {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _inside = Inside::enter();
        let mut spins = 0u32;
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff(&mut spins);
        }
        let _unlock = Unlock(&self.held);
        // SAFETY: we hold the lock: no other reference to the value.
        f(unsafe { &mut *self.value.get() })
    }
}

/// Wait a little for a lock or slot: spin a few times, then yield the CPU
/// (a holder preempted by the host would otherwise be waited for a whole
/// time slice).
#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 32 {
        core::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins += 1;
}

/// One reserved region of zones.
struct Region {
    /// The mapping as `mmap` returned it.
    map: AtomicPtr<u8>,
    map_len: AtomicUsize,
    /// First zone (the mapping rounded up to a zone) and zone bytes.
    base: AtomicUsize,
    len: AtomicUsize,
}

impl Region {
    const fn empty() -> Region {
        Region {
            map: AtomicPtr::new(ptr::null_mut()),
            map_len: AtomicUsize::new(0),
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
        }
    }
}

/// Zones not handed out (under `HostedPages::zones`).
struct ZoneLists {
    /// Freed zones still mapped, linked through their first word.
    hot: *mut u8,
    nhot: usize,
    /// Freed zones given back to the host, linked the same way (so only
    /// their first page is touched again).
    cold: *mut u8,
    /// Next never-used zone of the newest region, and its end.
    bump: *mut u8,
    end: *mut u8,
}

/// Freed spans kept mapped, per size class, linked through their first
/// word (under `HostedPages::spans`).
struct SpanCache {
    bins: [*mut u8; NBINS],
    bytes: usize,
}

/// What a [`HostedPages`] holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageStats {
    /// Handed out now: zones and large blocks.
    pub in_use: usize,
    /// Freed and kept mapped for reuse: zones (up to [`HOT_ZONES`]) and
    /// spans (up to [`SPAN_CACHE_BYTES`]).
    pub cached: usize,
    /// Freed zones given back to the host (their address space stays
    /// reserved; one page of each is touched again to link it).
    pub released: usize,
    /// Address space reserved for zones (all regions).
    pub reserved: usize,
}

impl PageStats {
    /// Bytes that may be resident: in use plus cached.
    pub fn mapped(&self) -> usize {
        self.in_use + self.cached
    }
}

/// A page source over the host's memory.
///
/// Zones are carved from regions of address space reserved with `mmap`
/// (`MAP_NORESERVE`: the host commits pages as they are touched). Large
/// blocks are spans of their own, mapped page-aligned (or aligned to the
/// layout's alignment, whatever it is); freed spans are kept for reuse up
/// to [`SPAN_CACHE_BYTES`], freed zones up to [`HOT_ZONES`], and the rest
/// is given back to the host. On Linux a large block grows or shrinks with
/// `mremap` instead of a copy.
///
/// [`new`](Self::new) is a hard cap, which makes exhaustion testable;
/// [`growing`](Self::growing) reserves more regions as needed (what
/// [`GlobalSlab`] uses).
///
/// ```
/// use lwkt_slab::{HostedPages, PageSource};
/// let pages = HostedPages::new(1 << 20);
/// let (z, zeroed) = pages.alloc_zone(false).unwrap();
/// assert!(zeroed && z.as_ptr() as usize % lwkt_slab::ZONE_SIZE == 0);
/// unsafe { pages.free_zone(z) };
/// assert_eq!(pages.stats().in_use, 0);
/// ```
pub struct HostedPages {
    /// The first region's size (whole zones).
    initial: usize,
    /// Bytes handed out at most (`usize::MAX`: no cap, regions grow).
    limit: usize,
    /// Bytes handed out now (zones and large blocks).
    used: AtomicUsize,
    /// Mirrors of the lists' sizes, for `stats`.
    hot_bytes: AtomicUsize,
    cold_bytes: AtomicUsize,
    span_bytes: AtomicUsize,
    /// Resident bytes (as far as blocks reached) of free growth
    /// reservations.
    #[cfg(target_os = "linux")]
    grow_bytes: AtomicUsize,
    /// Growth reservations: a block's address while in use, the address
    /// with its low bit set while free for reuse, 0 for an empty slot;
    /// beside each, the bytes its blocks reached (resident at most).
    #[cfg(target_os = "linux")]
    grown: [(AtomicUsize, AtomicUsize); GROW_SLOTS],
    reserved: AtomicUsize,
    nregions: AtomicUsize,
    regions: [Region; MAX_REGIONS],
    zones: Locked<ZoneLists>,
    spans: Locked<SpanCache>,
}

impl core::fmt::Debug for HostedPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostedPages")
            .field("initial", &self.initial)
            .field("limit", &self.limit)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl HostedPages {
    /// A source of at most `capacity` bytes handed out at once (rounded up
    /// to whole zones): past that, allocations fail.
    pub const fn new(capacity: usize) -> HostedPages {
        let capacity = capacity.div_ceil(ZONE_SIZE) * ZONE_SIZE;
        HostedPages::build(capacity, capacity)
    }

    /// A source without a cap: `initial` bytes of address space reserved
    /// at first use, more regions (each as large as all before together)
    /// when they are used up.
    pub const fn growing(initial: usize) -> HostedPages {
        let initial = if initial < MIN_REGION {
            MIN_REGION
        } else {
            initial.div_ceil(ZONE_SIZE) * ZONE_SIZE
        };
        HostedPages::build(initial, usize::MAX)
    }

    const fn build(initial: usize, limit: usize) -> HostedPages {
        HostedPages {
            initial,
            limit,
            used: AtomicUsize::new(0),
            hot_bytes: AtomicUsize::new(0),
            cold_bytes: AtomicUsize::new(0),
            span_bytes: AtomicUsize::new(0),
            #[cfg(target_os = "linux")]
            grow_bytes: AtomicUsize::new(0),
            #[cfg(target_os = "linux")]
            grown: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; GROW_SLOTS],
            reserved: AtomicUsize::new(0),
            nregions: AtomicUsize::new(0),
            regions: [const { Region::empty() }; MAX_REGIONS],
            zones: Locked::new(ZoneLists {
                hot: ptr::null_mut(),
                nhot: 0,
                cold: ptr::null_mut(),
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
            spans: Locked::new(SpanCache {
                bins: [ptr::null_mut(); NBINS],
                bytes: 0,
            }),
        }
    }

    /// Bytes handed out now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// What the source holds now (each figure read on its own: a snapshot
    /// only when nothing allocates meanwhile).
    pub fn stats(&self) -> PageStats {
        PageStats {
            in_use: self.used.load(Ordering::Relaxed),
            cached: self.hot_bytes.load(Ordering::Relaxed)
                + self.span_bytes.load(Ordering::Relaxed)
                + self.grow_cached(),
            released: self.cold_bytes.load(Ordering::Relaxed),
            reserved: self.reserved.load(Ordering::Relaxed),
        }
    }

    fn charge(&self, bytes: usize) -> bool {
        if self.limit == usize::MAX {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        }
        let mut u = self.used.load(Ordering::Relaxed);
        loop {
            if u + bytes > self.limit {
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

    /// Reserve the next region and make it the bump region (under the
    /// zone lock). A capped source has one region only.
    fn grow(&self, l: &mut ZoneLists) -> bool {
        let n = self.nregions.load(Ordering::Relaxed);
        if n == MAX_REGIONS || (n > 0 && self.limit != usize::MAX) {
            return false;
        }
        let mut len = self.initial.max(self.reserved.load(Ordering::Relaxed));
        loop {
            // SAFETY: an anonymous private mapping; no memory is touched.
            let m = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len + ZONE_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if m != libc::MAP_FAILED {
                let m = m.cast::<u8>();
                // SAFETY: at most `ZONE_SIZE - 1` on, inside the mapping.
                let base = unsafe { m.add(m.align_offset(ZONE_SIZE)) };
                let r = &self.regions[n];
                r.map.store(m, Ordering::Relaxed);
                r.map_len.store(len + ZONE_SIZE, Ordering::Relaxed);
                r.base.store(base as usize, Ordering::Relaxed);
                r.len.store(len, Ordering::Relaxed);
                // Published for `owns_zone` before any zone of it is out.
                self.nregions.store(n + 1, Ordering::Release);
                self.reserved.fetch_add(len, Ordering::Relaxed);
                l.bump = base;
                // SAFETY: `len` bytes from `base` lie in the mapping.
                l.end = unsafe { base.add(len) };
                return true;
            }
            if len / 2 < MIN_REGION {
                return false;
            }
            len = (len / 2).div_ceil(ZONE_SIZE) * ZONE_SIZE;
        }
    }

    /// A cached span of `len` bytes (a `span_len`, at most
    /// `MAX_CACHED_SPAN`) aligned to `align`, if the cache has one at the
    /// head of its bin.
    fn take_cached(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let bin = span_bin(len);
        self.spans.with(|c| {
            let p = c.bins[bin];
            if p.is_null() || (p as usize) & (align - 1) != 0 {
                return None;
            }
            // SAFETY: a cached span's first word links the next one.
            c.bins[bin] = unsafe { p.cast::<*mut u8>().read() };
            c.bytes -= len;
            self.span_bytes.store(c.bytes, Ordering::Relaxed);
            NonNull::new(p)
        })
    }

    /// A fresh span for `layout` straight from the host: no lock, so the
    /// re-entered path of `GlobalSlab` (a signal handler) may use it.
    fn alloc_direct(&self, layout: Layout) -> Option<NonNull<u8>> {
        let len = span_len(layout.size())?;
        if !self.charge(len) {
            return None;
        }
        let p = map_span(len, layout.align());
        if p.is_none() {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
        p
    }

    /// Unmap a span, with no lock.
    ///
    /// # Safety
    /// `p` came from `alloc_large(layout)`, `realloc_large(.., layout, ..)`
    /// or `alloc_direct(layout)` of this source and is not used after.
    unsafe fn free_direct(&self, p: NonNull<u8>, layout: Layout) {
        let len = span_len(layout.size()).expect("checked at allocation");
        #[cfg(target_os = "linux")]
        if let Some(slot) = self.grow_slot(p.as_ptr().addr()) {
            // SAFETY: a growth reservation in use by this block, given
            // back (the caller's): unmapped whole, its slot emptied.
            unsafe { self.grow_unmap(slot) };
            self.used.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        // SAFETY: the caller gives back a span of this length.
        unsafe { libc::munmap(p.as_ptr().cast(), len) };
        self.used.fetch_sub(len, Ordering::Relaxed);
    }

    /// Bytes of free growth reservations that may be resident.
    fn grow_cached(&self) -> usize {
        #[cfg(target_os = "linux")]
        return self.grow_bytes.load(Ordering::Relaxed);
        #[cfg(not(target_os = "linux"))]
        0
    }

    /// The slot of the growth reservation in use by the block at `addr`.
    /// Lock-free: each slot is claimed, changed and emptied only by the
    /// owner of its block (or of the free reservation, once it took it
    /// with a compare-and-swap), so a block's own slot never changes under
    /// its owner's search.
    #[cfg(target_os = "linux")]
    #[inline]
    fn grow_slot(&self, addr: usize) -> Option<usize> {
        self.grown
            .iter()
            .position(|(a, _)| a.load(Ordering::Acquire) == addr)
    }

    /// Unmap the reservation of `slot` and empty the slot.
    ///
    /// # Safety
    /// The caller owns the slot's reservation (its block, given back, or
    /// a free one it took) and nothing uses it any more.
    #[cfg(target_os = "linux")]
    unsafe fn grow_unmap(&self, slot: usize) {
        let (a, _) = &self.grown[slot];
        let base = a.load(Ordering::Relaxed) & !1;
        // SAFETY: the caller's; a reservation is `GROW_RESERVE` bytes.
        unsafe { libc::munmap(base as *mut libc::c_void, GROW_RESERVE) };
        a.store(0, Ordering::Release);
    }

    /// A growth reservation for a block of layout `old` at `p` (`was`
    /// bytes of span) growing to `now` bytes: a free one taken (its pages
    /// resident as far as its last block reached) or a fresh one, with
    /// `p`'s bytes copied to its start (a short span, then cached) or its
    /// pages moved there (no copy; `p`'s span is unmapped). `None` (and
    /// `p` untouched) when every slot is in use or the host refuses.
    ///
    /// # Safety
    /// `p` is a span of `was` bytes (page-aligned) for `old`, ours, not in
    /// a reservation; `now <= GROW_RESERVE`.
    #[cfg(target_os = "linux")]
    unsafe fn grow_into_reserve(
        &self,
        p: NonNull<u8>,
        old: Layout,
        was: usize,
        now: usize,
    ) -> Option<NonNull<u8>> {
        // A free reservation, taken by the compare-and-swap that marks it
        // in use; else an empty slot, claimed the same way for a fresh one.
        // The one this thread freed last first: its pages are likely still
        // in this CPU's caches.
        let mine = LAST_RESERVE.with(Cell::get) % GROW_SLOTS;
        let mut got = None;
        for slot in (mine..GROW_SLOTS).chain(0..mine) {
            let (a, high) = &self.grown[slot];
            let v = a.load(Ordering::Relaxed);
            if v & 1 == 1
                && a.compare_exchange(v, v & !1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.grow_bytes
                    .fetch_sub(high.load(Ordering::Relaxed), Ordering::Relaxed);
                got = Some((slot, v & !1));
                break;
            }
        }
        let (slot, base) = match got {
            Some(g) => g,
            None => {
                // SAFETY: an anonymous private reservation; nothing is
                // touched.
                let m = unsafe {
                    libc::mmap(
                        ptr::null_mut(),
                        GROW_RESERVE,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    )
                };
                if m == libc::MAP_FAILED {
                    return None;
                }
                let base = m.addr();
                let Some(slot) = self.grown.iter().position(|(a, _)| {
                    a.compare_exchange(0, base, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                }) else {
                    // SAFETY: just mapped, ours, unused.
                    unsafe { libc::munmap(m, GROW_RESERVE) };
                    return None;
                };
                self.grown[slot].1.store(0, Ordering::Relaxed);
                (slot, base)
            }
        };
        let high = &self.grown[slot].1;
        high.store(high.load(Ordering::Relaxed).max(now), Ordering::Relaxed);
        if was <= GROW_COPY_MAX {
            // SAFETY: distinct mappings, ours; `p` holds `old.size()`
            // live bytes, the reservation more than `was >= old.size()`.
            // `p` is then given back as a span: still charged here, so
            // charged once more for `free_large` to uncharge.
            unsafe {
                ptr::copy_nonoverlapping(p.as_ptr(), base as *mut u8, old.size());
                self.used.fetch_add(was, Ordering::Relaxed);
                self.free_large(p, old);
            }
            return NonNull::new(base as *mut u8);
        }
        // SAFETY: `p` is ours, `was` bytes; the reservation is ours and
        // at least `was` long: its first `was` bytes are replaced by
        // `p`'s pages (the kernel moves them, keeping their contents),
        // and `p`'s range is unmapped.
        let q = unsafe {
            libc::mremap(
                p.as_ptr().cast(),
                was,
                was,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                base as *mut libc::c_void,
            )
        };
        if q == libc::MAP_FAILED {
            // SAFETY: the reservation is ours, unused.
            unsafe { self.grow_unmap(slot) };
            return None;
        }
        NonNull::new(q.cast())
    }
}

impl Drop for HostedPages {
    /// Unmap the regions (zones die with them) and the cached spans (large
    /// blocks still out stay mapped).
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        for (a, _) in &mut self.grown {
            let v = *a.get_mut();
            if v & 1 == 1 {
                // SAFETY: a free reservation of ours, unused.
                unsafe { libc::munmap((v & !1) as *mut libc::c_void, GROW_RESERVE) };
            }
        }
        let n = *self.nregions.get_mut();
        for r in &mut self.regions[..n] {
            // SAFETY: a mapping `grow` made, with its length; `&mut self`
            // means no zone of it is in use through this source any more.
            unsafe { libc::munmap(r.map.get_mut().cast(), *r.map_len.get_mut()) };
        }
        let c = self.spans.value.get_mut();
        for (bin, head) in c.bins.iter_mut().enumerate() {
            while !head.is_null() {
                let p = *head;
                // SAFETY: a cached span: ours, its first word links the
                // next; its length is its bin's.
                unsafe {
                    *head = p.cast::<*mut u8>().read();
                    libc::munmap(p.cast(), bin_len(bin));
                }
            }
        }
    }
}

/// The length of the spans in `bin` (the inverse of `span_bin`).
fn bin_len(bin: usize) -> usize {
    let pages = if bin < 4 {
        bin + 1
    } else {
        let (e, m) = ((bin - 4) / 4 + 2, (bin - 4) % 4 + 4);
        m << (e - 2)
    };
    pages * PAGE_SIZE
}

// SAFETY: zones are distinct `ZONE_SIZE`-aligned slices of the regions
// (bump allocation, or a zone given back and handed out once again under
// the lock); large blocks are spans (`map_span` aligns them to the layout),
// each on one list at most while free and handed out once under the lock.
unsafe impl PageSource for HostedPages {
    fn alloc_zone(&self, _nowait: bool) -> Option<(NonNull<u8>, bool)> {
        if !self.charge(ZONE_SIZE) {
            return None;
        }
        let got = self.zones.with(|l| {
            if !l.hot.is_null() {
                let z = l.hot;
                // SAFETY: a free zone's first word links the next one.
                l.hot = unsafe { z.cast::<*mut u8>().read() };
                l.nhot -= 1;
                self.hot_bytes.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
                return Some((z, false));
            }
            if !l.cold.is_null() {
                let z = l.cold;
                // SAFETY: as above; the rest of the zone is zero since it
                // was given back, so clearing the link makes it all zero.
                unsafe {
                    l.cold = z.cast::<*mut u8>().read();
                    z.cast::<*mut u8>().write(ptr::null_mut());
                }
                self.cold_bytes.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
                return Some((z, true));
            }
            if l.bump == l.end && !self.grow(l) {
                return None;
            }
            let z = l.bump;
            // SAFETY: `bump < end`, both in one region, zone-aligned.
            l.bump = unsafe { z.add(ZONE_SIZE) };
            Some((z, true))
        });
        match got {
            // SAFETY: zones are inside a mapping: not null.
            Some((z, zeroed)) => Some((unsafe { NonNull::new_unchecked(z) }, zeroed)),
            None => {
                self.used.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
                None
            }
        }
    }

    unsafe fn free_zone(&self, z: NonNull<u8>) {
        self.used.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
        let z = z.as_ptr();
        let kept = self.zones.with(|l| {
            if l.nhot >= HOT_ZONES {
                return false;
            }
            // SAFETY: the caller gave the zone back (`free_zone`'s
            // contract), so nothing else uses it; it is a zone-aligned,
            // writable slice of a region we mapped, and its first word,
            // aligned for a pointer, links it on the hot list.
            unsafe { z.cast::<*mut u8>().write(l.hot) };
            l.hot = z;
            l.nhot += 1;
            self.hot_bytes.fetch_add(ZONE_SIZE, Ordering::Relaxed);
            true
        });
        if kept {
            return;
        }
        // Past the threshold: give the pages back (outside the lock), then
        // list the zone as cold.
        // SAFETY: the zone is ours and unused; it stays reserved.
        unsafe { libc::madvise(z.cast(), ZONE_SIZE, libc::MADV_DONTNEED) };
        self.zones.with(|l| {
            // SAFETY: as above.
            unsafe { z.cast::<*mut u8>().write(l.cold) };
            l.cold = z;
            self.cold_bytes.fetch_add(ZONE_SIZE, Ordering::Relaxed);
        });
    }

    fn alloc_large(&self, layout: Layout, _nowait: bool) -> Option<(NonNull<u8>, bool)> {
        let len = span_len(layout.size())?;
        if !self.charge(len) {
            return None;
        }
        if len <= MAX_CACHED_SPAN {
            if let Some(p) = self.take_cached(len, layout.align()) {
                return Some((p, false));
            }
        }
        let p = map_span(len, layout.align());
        if p.is_none() {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
        p.map(|p| (p, true))
    }

    unsafe fn free_large(&self, p: NonNull<u8>, layout: Layout) {
        let len = span_len(layout.size()).expect("checked at allocation");
        #[cfg(target_os = "linux")]
        if let Some(slot) = self.grow_slot(p.as_ptr().addr()) {
            // A growth reservation: kept for the next block that grows
            // while the free ones' resident bytes stay within the span
            // cache's bound, else unmapped.
            self.used.fetch_sub(len, Ordering::Relaxed);
            let (a, high) = &self.grown[slot];
            let h = high.load(Ordering::Relaxed);
            if self.grow_bytes.fetch_add(h, Ordering::Relaxed) + h <= GROW_CACHE_BYTES {
                a.store(p.as_ptr().addr() | 1, Ordering::Release);
                LAST_RESERVE.with(|c| c.set(slot));
            } else {
                self.grow_bytes.fetch_sub(h, Ordering::Relaxed);
                // SAFETY: the block's reservation, given back (the
                // caller's contract).
                unsafe { self.grow_unmap(slot) };
            }
            return;
        }
        if len <= MAX_CACHED_SPAN {
            let bin = span_bin(len);
            let kept = self.spans.with(|c| {
                if c.bytes + len > SPAN_CACHE_BYTES {
                    return false;
                }
                // SAFETY: the span is ours again; its first word links it.
                unsafe { p.as_ptr().cast::<*mut u8>().write(c.bins[bin]) };
                c.bins[bin] = p.as_ptr();
                c.bytes += len;
                self.span_bytes.store(c.bytes, Ordering::Relaxed);
                true
            });
            if kept {
                self.used.fetch_sub(len, Ordering::Relaxed);
                return;
            }
        }
        // SAFETY: forwarded.
        unsafe { self.free_direct(p, layout) };
    }

    unsafe fn realloc_large(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        _nowait: bool,
    ) -> Option<NonNull<u8>> {
        let (was, now) = (span_len(old.size())?, span_len(new.size())?);
        #[cfg(target_os = "linux")]
        if let Some(slot) = self.grow_slot(p.as_ptr().addr()) {
            // A block in a growth reservation: it grows or shrinks in
            // place within the reservation.
            if now > GROW_RESERVE {
                return None;
            }
            if now > was && !self.charge(now - was) {
                return None;
            }
            if now < was {
                self.used.fetch_sub(was - now, Ordering::Relaxed);
            }
            let high = &self.grown[slot].1;
            high.store(high.load(Ordering::Relaxed).max(now), Ordering::Relaxed);
            return Some(p);
        }
        if was == now {
            return Some(p);
        }
        #[cfg(target_os = "linux")]
        if now > was && now <= GROW_RESERVE && old.align() <= PAGE_SIZE {
            // A block that grows goes into a growth reservation (its
            // pages moved, not copied), where it grows in place from now
            // on.
            if !self.charge(now - was) {
                return None;
            }
            // SAFETY: `p` is a span of `was` bytes, ours (the caller's
            // contract), not in a reservation (searched above).
            if let Some(q) = unsafe { self.grow_into_reserve(p, old, was, now) } {
                return Some(q);
            }
            self.used.fetch_sub(now - was, Ordering::Relaxed);
        }
        if now > was && now <= MAX_CACHED_SPAN {
            // Growing, and the cache has a span of the new size: copy into
            // it (its pages are resident) and cache the old one. Cheaper
            // than growing in place, which faults in fresh pages, and in a
            // steady state (vectors grown and dropped) it faults none.
            if !self.charge(now) {
                return None;
            }
            if let Some(q) = self.take_cached(now, old.align()) {
                // SAFETY: distinct spans, `p` of at least `old.size()`
                // live bytes, `q` of `now > was >= old.size()`; `p` is
                // ours to give back (the caller's contract).
                unsafe {
                    ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), old.size());
                    self.free_large(p, old);
                }
                return Some(q);
            }
            self.used.fetch_sub(now, Ordering::Relaxed);
        }
        #[cfg(target_os = "linux")]
        if old.align() <= PAGE_SIZE {
            if now > was && !self.charge(now - was) {
                return None;
            }
            // SAFETY: `p` is a span of `was` bytes (the caller's
            // contract); the kernel moves its pages (keeping their
            // contents) to a page-aligned span of `now` bytes.
            let q = unsafe { libc::mremap(p.as_ptr().cast(), was, now, libc::MREMAP_MAYMOVE) };
            if q == libc::MAP_FAILED {
                if now > was {
                    self.used.fetch_sub(now - was, Ordering::Relaxed);
                }
                return None;
            }
            if now < was {
                self.used.fetch_sub(was - now, Ordering::Relaxed);
            } else if now - was <= was.min(POPULATE_MAX) {
                // A block growing by at most its size (a vector pushed
                // past its capacity) is being filled: have the host commit
                // the new tail in one call rather than fault it in page by
                // page (best effort: older kernels refuse, harmlessly). A
                // bigger leap (a `reserve` far ahead) is left to faults,
                // so memory never written is never committed.
                // SAFETY: the tail lies in the span just grown, ours.
                unsafe {
                    libc::madvise(
                        q.cast::<u8>().add(was).cast(),
                        now - was,
                        MADV_POPULATE_WRITE,
                    )
                };
            }
            return NonNull::new(q.cast());
        }
        None
    }

    #[inline]
    fn owns_zone(&self, zone: *const u8) -> bool {
        let z = zone as usize;
        let n = self.nregions.load(Ordering::Acquire);
        self.regions[..n].iter().any(|r| {
            let b = r.base.load(Ordering::Relaxed);
            z >= b && z - b < r.len.load(Ordering::Relaxed)
        })
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
    /// The growth reservation slot this thread freed last (a hint shared
    /// by every `HostedPages`).
    static LAST_RESERVE: Cell<usize> = const { Cell::new(0) };
}

/// Whether this OS thread holds a slot of some `ThreadSlots` or a page
/// source's lock now (so code running here interrupted, or was called
/// from, an operation holding one).
#[inline(always)]
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

    /// [`enter`](Self::enter) for a thread just seen outside (`HELD` 0):
    /// one store in, one store out. A signal handler that runs between
    /// the look and the store leaves `HELD` as it found it, and nested
    /// entries inside give it back before this guard's drop.
    #[inline(always)]
    fn enter_from_outside() -> Outside {
        HELD.with(|h| h.set(1));
        compiler_fence(Ordering::SeqCst);
        Outside
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        HELD.with(|h| h.set(h.get() - 1));
    }
}

/// The guard of [`Inside::enter_from_outside`]: outside again on drop.
struct Outside;

impl Drop for Outside {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        HELD.with(|h| h.set(0));
    }
}

/// A CPU context for OS threads: each thread is given one of `n` slots
/// (round-robin at its first allocation) and takes that slot's lock around
/// each operation, so the slab's per-CPU state is never shared. The lock is
/// uncontended while threads do not outnumber slots; a thread that finds
/// its slot busy takes the next free one and keeps it as its own from then
/// on (so threads that collide spread out), and when every slot is busy it
/// spins briefly, then yields its CPU between rounds: more threads than
/// slots cost waiting, never a stall on a preempted holder. Costs one
/// atomic swap per operation, which LWKT's critical sections do not.
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

    /// Take a free slot other than `s` (found busy), looking at each once
    /// per round from `s` on; a slot taken becomes this thread's preferred
    /// one, so threads that collide spread out. Between rounds, wait
    /// briefly, then yield the CPU (a holder preempted by the host would
    /// otherwise be waited for a whole time slice). A thread that already
    /// holds a slot tries one round only, and gets `None`.
    #[cold]
    fn take_other(&self, s: usize, reentered: bool) -> Option<usize> {
        let mut spins = 0;
        loop {
            for i in 1..=self.n {
                let t = (s + i) % self.n;
                if self.try_take(t) {
                    if !reentered {
                        SLOT.with(|c| c.set(t));
                    }
                    return Some(t);
                }
            }
            if reentered {
                return None;
            }
            backoff(&mut spins);
        }
    }

    /// Run `f` holding slot `s` (taken by `try_take`), given back when
    /// `f` returns or unwinds.
    #[inline]
    fn hold<R>(&self, s: usize, f: impl FnOnce(usize) -> R) -> R {
        struct Leave<'a>(&'a AtomicBool);
        impl Drop for Leave<'_> {
            #[inline(always)]
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
            self.take_other(s, reentered).unwrap_or_else(|| {
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

/// Hint the CPU to bring the line at `p` into its cache (nothing where no
/// hint is known). Never faults, whatever `p` is (null included).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it reads nothing the program can
    // see and never faults, even for a dangling or null address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Size classes a thread cache holds: chunks up to 1 KiB (the classes
/// `small_class` gives).
const TC_CLASSES: usize = crate::class::FINE_CLASSES;
const _: () = assert!(TC_CLASSES == 40 && CHUNK[TC_CLASSES - 1] == 1024);

/// Chunks a thread cache's bin takes frees into, per class: about 16 KiB
/// of them, at least 16 and at most 128; frees beyond it gather on the
/// class's outgoing list, given back half of this at a time. A refill
/// asks for half of this, and takes a zone's whole local list as it is
/// linked instead (up to a zone's worth, past the cap) rather than walk
/// it to cut it: each of those links was likely last written on another
/// CPU, a miss each.
const TC_CAP: [u32; TC_CLASSES] = {
    let mut t = [0; TC_CLASSES];
    let mut c = 0;
    while c < TC_CLASSES {
        let n = ZONE_LIMIT / CHUNK[c];
        t[c] = if n < 16 {
            16
        } else if n > 128 {
            128
        } else {
            n as u32
        };
        c += 1;
    }
    t
};

/// One class's free chunks in a thread cache, linked through their first
/// words.
struct Bin {
    head: Cell<*mut u8>,
    n: Cell<u32>,
}

/// Chunks of one class freed while the class's bin was full, linked
/// through their first words, `n` of them: given back to the slab in one
/// go once there are half a bin's worth.
struct Out {
    head: Cell<*mut u8>,
    n: Cell<u32>,
}

/// Runs of freed chunks of other slots' zones a thread cache gathers
/// before pushing each on its zone's remote list: one per zone at a time,
/// placed by the zone's address (direct-mapped). A power of two: 64, as
/// a thread that frees another's blocks of many classes meets as many
/// zones (with 16, xmalloc's consumers pushed runs cut short by a
/// colliding zone, and `flush_run` took three times the samples).
const RUNS: usize = 64;

/// Chunks a run gathers at most before it is pushed.
const RUN_MAX: u32 = 32;

/// Freed chunks of one zone of another slot, linked through their first
/// words from `first` (the newest) to `last` (null link), `n` of them (0:
/// no run).
struct Run {
    first: Cell<*mut u8>,
    last: Cell<*mut u8>,
    n: Cell<u32>,
}

/// A thread's cache of free chunks of one [`GlobalSlab`] (the first one
/// made with [`GlobalSlab::thread_cached`] that the thread uses), with the
/// counts of what it handed out and took back not yet told to the slab's
/// `MallocType`. Touched only by its thread, and only while the thread
/// counts as inside the allocator (`Inside`), so a signal handler that
/// interrupts an operation on it takes the re-entered path instead.
struct ThreadCache {
    owner: Cell<Option<&'static GlobalSlab>>,
    /// The thread's exit hook gave the cache back: it serves nothing from
    /// now on (later destructors' calls go to the slab).
    gone: Cell<bool>,
    bins: [Bin; TC_CLASSES],
    outs: [Out; TC_CLASSES],
    runs: [Run; RUNS],
    calls: Cell<u64>,
    frees: Cell<u64>,
    bytes: Cell<isize>,
}

impl ThreadCache {
    const fn new() -> ThreadCache {
        ThreadCache {
            owner: Cell::new(None),
            gone: Cell::new(false),
            bins: [const {
                Bin {
                    head: Cell::new(ptr::null_mut()),
                    n: Cell::new(0),
                }
            }; TC_CLASSES],
            outs: [const {
                Out {
                    head: Cell::new(ptr::null_mut()),
                    n: Cell::new(0),
                }
            }; TC_CLASSES],
            runs: [const {
                Run {
                    first: Cell::new(ptr::null_mut()),
                    last: Cell::new(ptr::null_mut()),
                    n: Cell::new(0),
                }
            }; RUNS],
            calls: Cell::new(0),
            frees: Cell::new(0),
            bytes: Cell::new(0),
        }
    }

    /// Whether the cache serves `g`.
    #[inline(always)]
    fn serves(&self, g: &GlobalSlab) -> bool {
        self.owner.get().is_some_and(|o| ptr::eq(o, g))
    }
}

/// Gives this thread's cache back when the thread exits (its
/// destructor), registered when the cache first serves an allocator. The
/// cache itself has no destructor, so that reaching it is a plain
/// thread-local access, with no state to check on every call.
struct ExitHook;

impl Drop for ExitHook {
    /// The thread exits: every chunk of its cache goes back to the slab,
    /// the counts to its type. Calls after this (later destructors) find
    /// the cache gone and go to the slab directly.
    fn drop(&mut self) {
        let _ = CACHE.try_with(|tc| {
            tc.gone.set(true);
            if let Some(g) = tc.owner.take() {
                g.drain(tc);
            }
        });
    }
}

std::thread_local! {
    /// This thread's cache of free chunks. Const-initialised, without a
    /// destructor (see `ExitHook`): the first access allocates nothing.
    static CACHE: ThreadCache = const { ThreadCache::new() };
    /// The cache's exit hook (the C library records its destructor at the
    /// first access).
    static EXIT: ExitHook = const { ExitHook };
}

/// A whole program's allocator on the slab: `#[global_allocator]`.
///
/// Small blocks (below 16 KiB, alignment up to a page) are chunks of the
/// per-slot zones; larger ones, and any with a larger alignment (every
/// power of two a `Layout` can carry), are spans of pages, reused from a
/// cache and grown or shrunk with `mremap` on Linux. Freed memory goes
/// back to the host past a threshold ([`HOT_ZONES`] zones,
/// [`SPAN_CACHE_BYTES`] of spans): resident memory follows what is in use,
/// give or take those caches and each slot's partly used zones.
///
/// `capacity` is the first reservation of address space for zones, not a
/// cap: more regions are reserved as needed (a program holds as much as
/// the host gives it). `slots` is the number of per-CPU slabs; threads
/// beyond it share slots (see [`ThreadSlots`]): pick at least the number
/// of threads that allocate at once, up to the number of cores times two.
///
/// Signal handlers may allocate and free through it, even when they
/// interrupt their thread inside it (holding its slot, or one of the page
/// source's locks): a thread re-entered so neither waits for a slot nor
/// takes a lock; it maps a span of its own for each allocation (page
/// granular, with `mmap`, which is async-signal-safe), unmaps large
/// blocks, and frees chunks onto their zone's remote list, as another CPU
/// would. Spans made for small layouts are told from chunks by address
/// (outside the zone regions), so either side may free what the other
/// allocated.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: lwkt_slab::GlobalSlab = lwkt_slab::GlobalSlab::new(1 << 30, 8);
/// fn main() {
///     let v: Vec<u32> = (0..1000).collect();
///     assert_eq!(ALLOC.stats().in_use > 0, true);
///     drop(v);
///     println!("{:?}", ALLOC.slab().page_source().stats());
/// }
/// ```
pub struct GlobalSlab {
    slab: Slab<HostedPages>,
    slots: ThreadSlots,
    ty: MallocType,
    /// Where this allocator lives for good, if it was told
    /// ([`thread_cached`](Self::thread_cached)): thread caches are used
    /// only when it is here.
    home: Option<&'static GlobalSlab>,
}

impl core::fmt::Debug for GlobalSlab {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GlobalSlab")
            .field("slab", &self.slab)
            .field("slots", &self.slots)
            .field("ty", &self.ty)
            .field("thread_cached", &self.caches_here())
            .finish()
    }
}

impl GlobalSlab {
    /// An allocator reserving `capacity` bytes of address space first
    /// (more when used up), with `slots` per-CPU slabs.
    ///
    /// # Panics
    /// If `slots` is 0 or above `MAX_CPUS` (at compile time in a
    /// `static`).
    pub const fn new(capacity: usize, slots: usize) -> GlobalSlab {
        GlobalSlab {
            slab: Slab::new(HostedPages::growing(capacity), slots),
            slots: ThreadSlots::new(slots),
            ty: MallocType::new("global"),
            home: None,
        }
    }

    /// The same allocator with per-thread caches of free chunks (up to
    /// 1 KiB), for a `static` that names itself: `home` must be the
    /// allocator being built, and caches are used only when it is (a
    /// `&'static` to it proves it is never moved nor dropped, so a thread's
    /// exit can give its cache back to it). Each thread then allocates and
    /// frees small blocks from its own cache, without an atomic operation,
    /// and takes or returns chunks by the list (about 8 KiB of a class, or
    /// a zone's whole free list) from the slab in one go, holding its slot
    /// once for all.
    ///
    /// Blocks in a cache count as in use to the page source and the slab
    /// (not to [`stats`](Self::stats), which counts what the program
    /// holds); a thread's cache goes back when the thread exits, or on
    /// [`reclaim`](Self::reclaim) from it.
    ///
    /// ```no_run
    /// use lwkt_slab::GlobalSlab;
    /// #[global_allocator]
    /// static ALLOC: GlobalSlab = GlobalSlab::new(1 << 30, 8).thread_cached(&ALLOC);
    /// fn main() {
    ///     let v: Vec<Box<u32>> = (0..1000).map(Box::new).collect();
    ///     drop(v);
    ///     assert!(ALLOC.stats().in_use < 100);
    /// }
    /// ```
    pub const fn thread_cached(mut self, home: &'static GlobalSlab) -> GlobalSlab {
        self.home = Some(home);
        self
    }

    /// Whether thread caches serve this allocator (it was built with
    /// [`thread_cached`](Self::thread_cached) naming itself).
    #[inline(always)]
    fn caches_here(&self) -> bool {
        self.home.is_some_and(|h| ptr::eq(h, self))
    }

    /// Statistics of everything allocated through it. The counts of other
    /// threads' caches (see [`thread_cached`](Self::thread_cached)) are
    /// told as they take or return chunks, and at their thread's exit; the
    /// calling thread's, now (unless it is inside the allocator: a signal
    /// handler that interrupted it there).
    pub fn stats(&self) -> MallocStats {
        // Not from inside the allocator (a signal handler that interrupted
        // it): telling the counts takes the thread's slot.
        if self.caches_here() && !Self::reentered() {
            let _ = CACHE.try_with(|tc| {
                if tc.serves(self) && tc.calls.get() | tc.frees.get() != 0 {
                    // SAFETY: an empty list gives nothing back.
                    unsafe {
                        self.slab
                            .give_chunks(&self.slots, &[], |cpu| self.fold(tc, cpu))
                    };
                }
            });
        }
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

    /// Give this thread's slot's free memory back: [`Slab::reclaim`] on
    /// the slot this thread uses (zones beyond the page source's cache go
    /// back to the host).
    pub fn reclaim(&self) {
        if self.caches_here() {
            let _ = CACHE.try_with(|tc| {
                if tc.serves(self) {
                    self.drain(tc);
                }
            });
        }
        self.slab.reclaim(&self.slots);
    }

    /// Hand a thread cache's counts to the type. On `cpu`, in its critical
    /// section (the thread counts as inside: the cache is not in use).
    fn fold(&self, tc: &ThreadCache, cpu: usize) {
        // SAFETY: `cpu < MAX_CPUS`: the slab's `on_cpu` gave it.
        unsafe {
            self.ty
                .account_batch(cpu, tc.calls.take(), tc.frees.take(), tc.bytes.take())
        };
    }

    /// Give every chunk of `tc` (this thread's cache, serving `self`) back
    /// to the slab, and its counts to the type.
    fn drain(&self, tc: &ThreadCache) {
        // Take every list off the cache, as inside the allocator (the
        // cache is in use meanwhile); the lists go back as they are
        // linked, each walked once (its chunks may be cold: a refill's
        // whole zone list).
        let mut lists = [ptr::null_mut(); 2 * TC_CLASSES];
        {
            let _inside = Inside::enter();
            for r in &tc.runs {
                self.flush_run(r);
            }
            let bins = tc.bins.iter().map(|b| (&b.head, &b.n));
            let all = bins.chain(tc.outs.iter().map(|o| (&o.head, &o.n)));
            for (l, (head, n)) in lists.iter_mut().zip(all) {
                *l = head.replace(ptr::null_mut());
                n.set(0);
            }
        }
        // SAFETY: free chunks of this slab, off the cache: nobody holds
        // them.
        unsafe {
            self.slab
                .give_chunks(&self.slots, &lists, |cpu| self.fold(tc, cpu))
        };
    }

    /// Push a thread cache's run (if any) on its zone's remote list, and
    /// empty it. Inside the allocator (`Inside`), on the cache's thread.
    fn flush_run(&self, r: &Run) {
        let n = r.n.replace(0);
        if n > 0 {
            // SAFETY: the run holds `n` free chunks of one zone of this
            // slab, linked from `first` to `last`, off the cache now.
            unsafe { self.slab.give_run(r.first.get(), r.last.get(), n) };
        }
    }

    /// Free chunk `p` of zone `z`, another slot's, into this thread's
    /// run for `z`: pushed on the zone's remote list once it holds
    /// `RUN_MAX` chunks, or when a chunk of another zone needs its place.
    /// Inside the allocator, on the cache's thread.
    ///
    /// # Safety
    /// `p` is an allocated chunk of this slab in zone `z`, given up.
    #[inline(always)]
    unsafe fn free_to_run(&self, tc: &ThreadCache, p: *mut u8, z: *mut Zone) {
        let r = &tc.runs[(z.addr() / ZONE_SIZE) & (RUNS - 1)];
        let n = r.n.get();
        let first = r.first.get();
        if n > 0 && Zone::of(first) == z {
            // SAFETY: the chunk is ours; its first word links the run.
            unsafe { p.cast::<*mut u8>().write(first) };
            r.first.set(p);
            r.n.set(n + 1);
            if n + 1 == RUN_MAX {
                self.flush_run(r);
            }
            return;
        }
        self.flush_run(r);
        // SAFETY: as above; the run's last link is null.
        unsafe { p.cast::<*mut u8>().write(ptr::null_mut()) };
        r.first.set(p);
        r.last.set(p);
        r.n.set(1);
    }

    /// The size class of `layout` when it is one of the usual layouts (1
    /// to 1024 bytes, aligned to at most 8, which the classes' 8-byte
    /// grain honours): one table lookup; the calls' fast paths serve
    /// these, the rest goes the slow way.
    #[inline(always)]
    fn fast_class(layout: Layout) -> Option<usize> {
        let (size, align) = (layout.size(), layout.align());
        (size.wrapping_sub(1) < CHUNK[TC_CLASSES - 1] && align <= 8).then(|| small_class(size))
    }

    /// The size class a thread cache serves `layout` from, if any.
    #[inline]
    fn cache_class(layout: Layout) -> Option<usize> {
        if let Some(class) = Self::fast_class(layout) {
            return Some(class);
        }
        if layout.align() > PAGE_SIZE {
            return None;
        }
        match route(layout) {
            Ok(Route::Small { class }) if class < TC_CLASSES => Some(class),
            _ => None,
        }
    }

    /// A chunk of `class` from this thread's cache; `None` when its bin
    /// is empty, no cache serves this allocator here yet, or the thread is
    /// inside the allocator already (a signal handler): then
    /// `alloc_slow` decides.
    #[inline(always)]
    fn tc_alloc(&self, class: usize) -> Option<*mut u8> {
        CACHE.with(|tc| {
            if this_thread_is_inside() || !tc.serves(self) {
                return None;
            }
            let _inside = Inside::enter_from_outside();
            let b = &tc.bins[class];
            let p = b.head.get();
            if p.is_null() {
                return None;
            }
            // SAFETY: a free chunk of the cache: its first word links the
            // next.
            let next = unsafe { p.cast::<*mut u8>().read() };
            b.head.set(next);
            // The next allocation of the class reads `next`'s link: ask
            // for its line now, so that the miss (it was likely freed on
            // another CPU) overlaps the caller's work instead of stalling
            // that allocation.
            prefetch(next);
            b.n.set(b.n.get() - 1);
            tc.calls.set(tc.calls.get() + 1);
            tc.bytes.set(tc.bytes.get() + CHUNK[class] as isize);
            Some(p)
        })
    }

    /// The cache's class is empty (or the cache serves nothing yet): take
    /// half a bin's worth from the slab, or the first partial zone's whole
    /// local list, holding the slot once, and hand out the first.
    #[cold]
    #[inline(never)]
    fn refill_cached(&self, class: usize) -> Option<*mut u8> {
        CACHE
            .try_with(|tc| {
                if !self.bind(tc) {
                    return None;
                }
                let want = (TC_CAP[class] / 2) as usize;
                let (head, tail, n) = self
                    .slab
                    .take_chunks(&self.slots, class, want, usize::MAX, |cpu| {
                        self.fold(tc, cpu)
                    })
                    .ok()?;
                let _inside = Inside::enter();
                // SAFETY: chunks just taken, ours: the first word of each
                // links the next, the last's is null; `tail` is the last
                // or null (`n >= 1`).
                unsafe {
                    let rest = head.cast::<*mut u8>().read();
                    if n > 1 {
                        let b = &tc.bins[class];
                        let old = b.head.get();
                        if !old.is_null() {
                            // A signal handler refilled the bin meanwhile:
                            // append it (walking to the tail if unknown).
                            let mut t = tail;
                            if t.is_null() {
                                t = rest;
                                while !t.cast::<*mut u8>().read().is_null() {
                                    t = t.cast::<*mut u8>().read();
                                }
                            }
                            t.cast::<*mut u8>().write(old);
                        }
                        b.head.set(rest);
                        b.n.set(b.n.get() + n as u32 - 1);
                    }
                }
                tc.calls.set(tc.calls.get() + 1);
                tc.bytes.set(tc.bytes.get() + CHUNK[class] as isize);
                Some(head)
            })
            .ok()
            .flatten()
    }

    /// Make `tc` (this thread's cache) serve `self` if it serves nothing
    /// yet, has not been given back at the thread's exit, and `self` is at
    /// home; whether it serves `self`. The first binding registers the
    /// exit hook that gives the cache back (if the thread is exiting
    /// already, the cache stays unbound).
    fn bind(&self, tc: &ThreadCache) -> bool {
        let _inside = Inside::enter();
        if tc.owner.get().is_none() && !tc.gone.get() {
            if let Some(home) = self.home.filter(|h| ptr::eq(*h, self)) {
                if EXIT.try_with(|_| ()).is_ok() {
                    tc.owner.set(Some(home));
                }
            }
        }
        tc.serves(self)
    }

    /// Free chunk `p` of `class` through this thread's cache: into its bin
    /// (a full bin's frees gather on the class's outgoing list, which goes
    /// back to the slab half a cap at a time, holding the slot once), or,
    /// for another slot's chunk, into the zone's run.
    /// `false` when no cache serves this allocator here yet, the thread is
    /// inside the allocator already (a signal handler), or `p` is a span
    /// of the re-entered path: then `dealloc_slow` decides.
    ///
    /// # Safety
    /// `p` is a block of this allocator with a layout of size class
    /// `class`, given up by the caller.
    #[inline(always)]
    unsafe fn tc_free(&self, p: *mut u8, class: usize) -> bool {
        if p.addr() & (ZONE_SIZE - 1) == 0 {
            // A span of the re-entered path: no chunk starts a zone.
            return false;
        }
        CACHE.with(|tc| {
            if this_thread_is_inside() || !tc.serves(self) {
                return false;
            }
            #[cfg(debug_assertions)]
            self.slab.check_chunk(p, class);
            let spill = {
                let _inside = Inside::enter_from_outside();
                tc.frees.set(tc.frees.get() + 1);
                tc.bytes.set(tc.bytes.get() - CHUNK[class] as isize);
                let z = Zone::of(p);
                // SAFETY: `p` is an allocated chunk (not at a zone's
                // start), so its zone is live and its owner fixed.
                let owner = unsafe { (*z).owner } as usize;
                if owner != SLOT.with(Cell::get) {
                    // Another slot's chunk (or this thread has none yet):
                    // back to its zone, with others of the zone in one
                    // push, rather than into this thread's cache. Its
                    // owner reuses it (lines it wrote itself), and nobody
                    // walks a chain of it later.
                    // SAFETY: forwarded (given up by the caller).
                    unsafe { self.free_to_run(tc, p, z) };
                    return true;
                }
                let b = &tc.bins[class];
                let n = b.n.get();
                if n < TC_CAP[class] {
                    // SAFETY: the chunk is given up to us; its first word
                    // links the cache.
                    unsafe { p.cast::<*mut u8>().write(b.head.get()) };
                    b.head.set(p);
                    b.n.set(n + 1);
                    return true;
                }
                // SAFETY: forwarded (given up by the caller).
                let spill = unsafe { Self::free_to_out(&tc.outs[class], p, class) };
                if spill.is_null() {
                    return true;
                }
                spill
            };
            // Outside again: giving back takes the slot.
            // SAFETY: free chunks of this slab, off the cache.
            unsafe { self.give_spill(tc, spill) };
            true
        })
    }

    /// The bin of `class` is full: put chunk `p` on the class's outgoing
    /// list instead, and hand that list back (null-terminated) once it
    /// holds half a bin's worth; null until then. The list's length is
    /// counted as it grows, so nothing is walked to cut it off the bin,
    /// and a bin that a refill filled past its cap keeps its chunks: only
    /// the frees beyond the cap go back.
    ///
    /// # Safety
    /// `p` is a chunk of this slab of size class `class`, given up.
    #[cold]
    #[inline(never)]
    unsafe fn free_to_out(o: &Out, p: *mut u8, class: usize) -> *mut u8 {
        // SAFETY: the chunk is ours; its first word links the list.
        unsafe { p.cast::<*mut u8>().write(o.head.get()) };
        let n = o.n.get() + 1;
        if n < TC_CAP[class] / 2 {
            o.head.set(p);
            o.n.set(n);
            return ptr::null_mut();
        }
        o.head.set(ptr::null_mut());
        o.n.set(0);
        p
    }

    /// Give an outgoing list back to the slab, holding the slot once.
    ///
    /// # Safety
    /// The list's chunks are free chunks of this slab, off the cache.
    #[cold]
    #[inline(never)]
    unsafe fn give_spill(&self, tc: &ThreadCache, list: *mut u8) {
        // SAFETY: forwarded.
        unsafe {
            self.slab
                .give_chunks(&self.slots, &[list], |cpu| self.fold(tc, cpu))
        };
    }
}

impl GlobalSlab {
    /// `realloc` by moving: allocate `new`, copy what both hold, free the
    /// old block; null (the old block kept) when the allocation fails.
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s: `ptr` is a live block of ours allocated
    /// with `layout`, and `new` has a non-zero size.
    unsafe fn move_block(&self, ptr: *mut u8, layout: Layout, new: Layout) -> *mut u8 {
        // SAFETY: `new` has a non-zero size (contract).
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: distinct live blocks of at least the copied length;
            // `ptr` is ours to free (contract).
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, layout.size().min(new.size()));
                self.dealloc(ptr, layout);
            }
        }
        q
    }
    /// Whether this thread is inside the allocator already (a signal
    /// handler interrupted it there, or a nested call): then it must not
    /// wait for a slot or a page source lock, whose holder may be the code
    /// it interrupted.
    #[inline]
    fn reentered() -> bool {
        this_thread_is_inside()
    }

    /// Whether `ptr` (with a small layout) is a span of the re-entered
    /// path rather than a chunk: those spans are mapped aligned to a zone
    /// (`alloc_unowned`), and no chunk starts a zone (its header is there).
    #[inline(always)]
    fn is_unowned_block(ptr: *mut u8, layout: Layout) -> bool {
        is_small(layout) && ptr.addr() & (ZONE_SIZE - 1) == 0
    }

    /// The re-entered path: a span mapped for this allocation alone (page
    /// granular, zeroed), with no slot and no lock, accounted without a
    /// CPU. `mmap` is async-signal-safe.
    #[cold]
    fn alloc_unowned(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 {
            return ptr::null_mut();
        }
        let Ok(bytes) = large_bytes(layout) else {
            return ptr::null_mut();
        };
        // A small block's span starts a zone-aligned address, where no
        // chunk can (`is_unowned_block`).
        let map = if is_small(layout) {
            Layout::from_size_align(layout.size(), ZONE_SIZE).ok()
        } else {
            Some(layout)
        };
        match map.and_then(|m| self.slab.page_source().alloc_direct(m)) {
            Some(p) => {
                self.ty.account_unowned(bytes as isize);
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    /// Free on the re-entered path, or a span it made: spans (large
    /// blocks, and small ones of the re-entered path) are unmapped, chunks
    /// go on their zone's remote list; no slot, no lock.
    ///
    /// # Safety
    /// `ptr` came from this allocator with `layout` and is not used after.
    #[cold]
    unsafe fn dealloc_unowned(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` is not null (`GlobalAlloc` contract).
        let p = unsafe { NonNull::new_unchecked(ptr) };
        if !is_small(layout) || Self::is_unowned_block(ptr, layout) {
            let bytes = large_bytes(layout).expect("checked at allocation");
            self.ty.account_unowned(-(bytes as isize));
            // SAFETY: a span of the page source for `layout`: a large
            // block (`alloc_large`/`realloc_large`) or a re-entered
            // path's (`alloc_direct`).
            unsafe { self.slab.page_source().free_direct(p, layout) };
        } else {
            // SAFETY: a chunk of the slab (caller).
            unsafe { self.slab.free_unowned(p, layout, &self.ty) };
        }
    }
}

// SAFETY: forwards to the slab, which returns blocks fitting the layout or
// an error (returned as null), or (re-entered) to `alloc_unowned`, whose
// blocks are spans fitting the layout (`map_span` aligns them); each free
// goes back the way its block came: `is_unowned_block` tells a span of the
// re-entered path from a chunk, spans of either path are the same kind of
// mapping (`span_len` of the layout), and the re-entered free needs no
// slot and no lock.
unsafe impl GlobalAlloc for GlobalSlab {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.caches_here() {
            if let Some(class) = Self::fast_class(layout) {
                if let Some(p) = self.tc_alloc(class) {
                    return p;
                }
            }
        }
        self.alloc_slow(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.caches_here() {
            if let Some(class) = Self::fast_class(layout) {
                if let Some(p) = self.tc_alloc(class) {
                    // SAFETY: a chunk of at least `layout.size()` bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                    return p;
                }
            }
        }
        self.alloc_slow(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.caches_here() {
            if let Some(class) = Self::fast_class(layout) {
                // SAFETY: the caller's (`GlobalAlloc` contract).
                if unsafe { self.tc_free(ptr, class) } {
                    return;
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { self.dealloc_slow(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::reentered() || Self::is_unowned_block(ptr, layout) {
            // Allocate, copy and free, each on its own path.
            let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            // SAFETY: forwarded (`GlobalAlloc::realloc`'s contract).
            return unsafe { self.move_block(ptr, layout, new) };
        }
        if self.caches_here() {
            if let Some(class) = Self::cache_class(layout) {
                // A small block through the caches: kept when the class
                // stays, else allocate, copy and free.
                let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
                    return ptr::null_mut();
                };
                if Self::cache_class(new) == Some(class) {
                    return ptr;
                }
                // SAFETY: forwarded (`GlobalAlloc::realloc`'s contract).
                return unsafe { self.move_block(ptr, layout, new) };
            }
        }
        // SAFETY: `GlobalAlloc` contract: `ptr` came from us with `layout`.
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

impl GlobalSlab {
    /// Every allocation the thread cache did not serve: a re-entered
    /// thread's (a span of its own), a cache bin to refill (or bind), and
    /// the slab's (large blocks, or no thread cache).
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout, zero: bool) -> *mut u8 {
        if Self::reentered() {
            // Fresh mappings are zero.
            return self.alloc_unowned(layout);
        }
        if self.caches_here() {
            if let Some(class) = Self::cache_class(layout) {
                // The fast path serves only `fast_class` layouts.
                if let Some(p) = self.tc_alloc(class).or_else(|| self.refill_cached(class)) {
                    if zero {
                        // SAFETY: a chunk of at least `layout.size()` bytes.
                        unsafe { ptr::write_bytes(p, 0, layout.size()) };
                    }
                    return p;
                }
            }
        }
        let flags = if zero { Flags::ZERO } else { Flags::NONE };
        self.slab
            .alloc(&self.slots, layout, &self.ty, flags)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    /// Every free the thread cache did not take: a re-entered thread's, a
    /// span of the re-entered path, a consumer's first free (its cache
    /// binds here), and the slab's (large blocks, or no thread cache).
    ///
    /// # Safety
    /// `GlobalAlloc::dealloc`'s: `ptr` came from us with `layout`.
    #[inline(never)]
    unsafe fn dealloc_slow(&self, ptr: *mut u8, layout: Layout) {
        if Self::reentered() || Self::is_unowned_block(ptr, layout) {
            // SAFETY: forwarded.
            return unsafe { self.dealloc_unowned(ptr, layout) };
        }
        if self.caches_here() {
            if let Some(class) = Self::cache_class(layout) {
                // A thread that frees before it allocates (a consumer)
                // binds its cache here.
                // SAFETY: forwarded (a chunk: not a span, tested above).
                if CACHE.with(|tc| self.bind(tc)) && unsafe { self.tc_free(ptr, class) } {
                    return;
                }
            }
        }
        // SAFETY: forwarded.
        unsafe {
            self.slab
                .free(&self.slots, NonNull::new_unchecked(ptr), layout, &self.ty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large block that grows moves into a growth reservation once (its
    /// pages moved, its bytes kept), then grows and shrinks in place; once
    /// freed, the reservation serves the next block that grows.
    #[cfg(target_os = "linux")]
    #[cfg_attr(
        miri,
        ignore = "maps with MAP_NORESERVE and mremap, which Miri's mmap refuses"
    )]
    #[test]
    fn a_growing_block_grows_in_place_in_its_reservation() {
        let pages = HostedPages::growing(1 << 20);
        let l = |n: usize| Layout::from_size_align(n, 8).unwrap();
        let (p, _) = pages.alloc_large(l(20_000), false).unwrap();
        // SAFETY: the block is ours, 20,000 bytes and more.
        unsafe { p.as_ptr().write_bytes(7, 20_000) };
        // SAFETY: `p` is ours with the old layout; each step keeps what
        // it holds.
        let q = unsafe { pages.realloc_large(p, l(20_000), l(40_000), false) }.unwrap();
        assert!(pages.grow_slot(q.as_ptr().addr()).is_some());
        let mut size = 40_000;
        for next in [100_000, 3 << 20, 50_000, 9 << 20] {
            // SAFETY: as above.
            let r = unsafe { pages.realloc_large(q, l(size), l(next), false) }.unwrap();
            assert_eq!(r, q, "in place, {size} -> {next}");
            // SAFETY: the block holds `next` bytes; the first 20,000 are 7.
            unsafe {
                assert_eq!((*r.as_ptr(), *r.as_ptr().add(19_999)), (7, 7));
                r.as_ptr()
                    .add(20_000)
                    .write_bytes(8, next.min(50_000) - 20_000);
            }
            size = next;
        }
        assert_eq!(pages.stats().in_use, span_len(9 << 20).unwrap());
        // Past the reservation: declined (the slab copies).
        // SAFETY: as above.
        assert!(unsafe { pages.realloc_large(q, l(size), l(GROW_RESERVE + 1), false) }.is_none());
        // SAFETY: given back with its layout.
        unsafe { pages.free_large(q, l(size)) };
        assert_eq!(pages.stats().in_use, 0);
        assert!(pages.stats().cached >= 9 << 20, "{:?}", pages.stats());
        // The next block that grows takes the free reservation.
        let (p2, _) = pages.alloc_large(l(30_000), false).unwrap();
        // SAFETY: ours, then grown once.
        unsafe {
            p2.as_ptr().write_bytes(5, 30_000);
            let q2 = pages
                .realloc_large(p2, l(30_000), l(70_000), false)
                .unwrap();
            assert_eq!(q2, q, "the free reservation reused");
            assert_eq!((*q2.as_ptr(), *q2.as_ptr().add(29_999)), (5, 5));
            // Freed on the lock-free path (a re-entered thread's).
            pages.free_direct(q2, l(70_000));
        }
        assert!(pages.grow_slot(q.as_ptr().addr()).is_none());
        assert_eq!(pages.stats().in_use, 0);
    }

    /// A thread cache's bin takes frees up to its cap; frees beyond it
    /// gather on the class's outgoing list and go back half a cap at a
    /// time. A refill takes a zone's whole local list, past the cap, and
    /// the bin keeps it: the next frees go out, not the refilled chunks.
    #[cfg_attr(
        miri,
        ignore = "GlobalSlab maps its zones with MAP_NORESERVE, which Miri's mmap refuses"
    )]
    #[test]
    fn a_full_bin_sends_frees_out_and_a_refill_may_pass_its_cap() {
        static G: GlobalSlab = GlobalSlab::new(1 << 24, 1).thread_cached(&G);
        std::thread::spawn(|| {
            let l = Layout::from_size_align(64, 8).unwrap();
            let class = small_class(64);
            let (cap, half) = (TC_CAP[class], TC_CAP[class] / 2);
            let counts = || {
                CACHE.with(|tc| {
                    assert!(tc.serves(&G));
                    (tc.bins[class].n.get(), tc.outs[class].n.get())
                })
            };
            let n = 4 * cap as usize;
            // SAFETY: each block is G's, freed once with its layout.
            let v: Vec<*mut u8> = (0..n).map(|_| unsafe { G.alloc(l) }).collect();
            assert!(v.iter().all(|p| !p.is_null()));
            for (i, &p) in v.iter().enumerate() {
                // SAFETY: as above.
                unsafe { G.dealloc(p, l) };
                let (bin, out) = counts();
                assert_eq!(bin, (i as u32 + 1).min(cap), "after {} frees", i + 1);
                assert_eq!(out, (i as u32 + 1).saturating_sub(cap) % half);
            }
            // Empty the bin, then refill: the zone's local list (the
            // `n - cap` chunks given back from the outgoing list) comes
            // whole, one of them handed out.
            // SAFETY: as above.
            let w: Vec<*mut u8> = (0..=cap).map(|_| unsafe { G.alloc(l) }).collect();
            let whole = n as u32 - cap - 1;
            assert_eq!(counts(), (whole, 0), "a whole list, past the cap");
            // SAFETY: as above.
            unsafe { G.dealloc(w[0], l) };
            assert_eq!(counts(), (whole, 1), "a free past the cap goes out");
            for &p in &w[1..] {
                // SAFETY: as above.
                unsafe { G.dealloc(p, l) };
            }
            G.reclaim();
            assert_eq!(counts(), (0, 0));
            assert_eq!(G.stats().in_use, 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn span_classes_round_up_by_at_most_a_quarter_and_bins_invert() {
        let mut last_bin = 0;
        for pages in 1..=MAX_CACHED_SPAN / PAGE_SIZE {
            let len = span_len(pages * PAGE_SIZE - 1).unwrap();
            assert!(len >= pages * PAGE_SIZE - 1 && len <= MAX_CACHED_SPAN);
            assert!(len - (pages - 1) * PAGE_SIZE <= PAGE_SIZE.max(pages * PAGE_SIZE / 4));
            assert_eq!(span_len(len), Some(len), "a class length is its own class");
            let bin = span_bin(len);
            assert!(bin < NBINS && bin >= last_bin);
            assert_eq!(bin_len(bin), len);
            last_bin = bin;
        }
        assert_eq!(span_len(usize::MAX), None);
    }
}
