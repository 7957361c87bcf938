//! The allocator: per-CPU zone lists per size class, lock-free local paths,
//! remote frees back to the owning CPU, large allocations straight from the
//! page source.
//!
//! DragonFly: `kmalloc()`, `kfree()`, `krealloc()`, `SLGlobalData`,
//! `slab_cleanup()`.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};

use crossbeam_utils::CachePadded;
use lwkt_core::MAX_CPUS;

use crate::class::{is_small, route, Route, CHUNK, NZONES, PAGE_SIZE};
use crate::cpu::Binding;
use crate::remote::{AtomicStack, Link};
use crate::zone::Zone;
use crate::{CpuContext, MallocType, PageSource, SlabError};

/// Free zones a CPU keeps for reuse before giving them back to the page
/// source (DragonFly `ZoneRelsThresh`, scaled down to 64 KiB zones).
pub const CACHED_ZONES: usize = 4;

/// Full zones the allocation slow path re-examines per call, in rotation,
/// for chunks freed remotely while nobody was told.
const SCAN_FULL: usize = 4;

/// Allocation flags. DragonFly: `M_ZERO`, `M_NOWAIT`.
///
/// ```
/// use lwkt_slab::Flags;
/// let f = Flags::ZERO | Flags::NOWAIT;
/// assert!(f.contains(Flags::ZERO));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u32);

impl Flags {
    /// No flags: may wait in the page source, memory not zeroed.
    pub const NONE: Flags = Flags(0);
    /// Zero-fill (skipped for memory known to be zero). `M_ZERO`.
    pub const ZERO: Flags = Flags(1);
    /// Never wait: the page source is asked not to block, and the slab does
    /// no reclaiming before failing. `M_NOWAIT`.
    pub const NOWAIT: Flags = Flags(2);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// An intrusive list of zones (owner only).
#[derive(Clone, Copy)]
struct List {
    head: *mut Zone,
    tail: *mut Zone,
}

impl List {
    const EMPTY: List = List {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
    };

    fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// # Safety
    /// `z` is a live zone on no list.
    unsafe fn push_front(&mut self, z: *mut Zone) {
        // SAFETY: forwarded; list members are live.
        unsafe {
            (*z).prev = ptr::null_mut();
            (*z).next = self.head;
            if self.head.is_null() {
                self.tail = z;
            } else {
                (*self.head).prev = z;
            }
        }
        self.head = z;
    }

    /// # Safety
    /// As for `push_front`.
    unsafe fn push_back(&mut self, z: *mut Zone) {
        // SAFETY: forwarded; list members are live.
        unsafe {
            (*z).next = ptr::null_mut();
            (*z).prev = self.tail;
            if self.tail.is_null() {
                self.head = z;
            } else {
                (*self.tail).next = z;
            }
        }
        self.tail = z;
    }

    /// # Safety
    /// `z` is on this list.
    unsafe fn remove(&mut self, z: *mut Zone) {
        // SAFETY: forwarded; neighbours are live members.
        unsafe {
            let (p, n) = ((*z).prev, (*z).next);
            if p.is_null() {
                self.head = n;
            } else {
                (*p).next = n;
            }
            if n.is_null() {
                self.tail = p;
            } else {
                (*n).prev = p;
            }
            (*z).next = ptr::null_mut();
            (*z).prev = ptr::null_mut();
        }
    }
}

/// One CPU's zones (owner only, in its critical section).
/// DragonFly: `SLGlobalData`.
struct CpuSlab {
    /// Zones with free chunks, per class. DragonFly `ZoneAry`.
    partial: [List; NZONES],
    /// Zones without, per class.
    full: [List; NZONES],
    /// Whole free zones kept for reuse. DragonFly `FreeZones`.
    cache: *mut Zone,
    ncache: usize,
}

struct PerCpu {
    own: UnsafeCell<CpuSlab>,
    /// Full zones that received remote frees, pushed by the freeing CPUs.
    queue: AtomicStack<Zone>,
}

/// A slab allocator over page source `P` for up to `ncpus` CPUs.
///
/// Allocation and free on a chunk's own CPU touch only that CPU's state,
/// inside its critical section: no lock, no atomic read-modify-write. A
/// chunk freed by another CPU goes on its zone's lock-free remote list,
/// which the owner drains when it runs out of free chunks.
///
/// ```
/// use core::alloc::Layout;
/// use lwkt_slab::{Flags, HostedPages, MallocType, Slab};
///
/// static M_TEST: MallocType = MallocType::new("test");
/// let slab = Slab::new(HostedPages::new(16 << 20), 1);
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let l = Layout::new::<[u64; 4]>();
///     let p = slab.alloc(cur, l, &M_TEST, Flags::ZERO).unwrap();
///     assert_eq!(unsafe { *p.as_ptr() }, 0);
///     unsafe { slab.free(cur, p, l, &M_TEST) };
/// });
/// assert_eq!(M_TEST.stats().in_use, 0);
/// ```
pub struct Slab<P: PageSource> {
    pages: P,
    ncpus: usize,
    /// The machine (or other [`Domain`](crate::Domain)) whose CPUs use it.
    binding: Binding,
    cpus: [CachePadded<PerCpu>; MAX_CPUS],
}

// SAFETY: a CPU's `own` state is touched only inside `with_cpu` for that
// CPU (the `CpuContext` contract excludes every other user of the index);
// `queue` and zone remote lists are atomic; the page source is `Sync`.
unsafe impl<P: PageSource> Sync for Slab<P> {}
// SAFETY: as above; zones are plain memory owned by the slab.
unsafe impl<P: PageSource + Send> Send for Slab<P> {}

impl<P: PageSource> Slab<P> {
    /// A slab for CPUs `0..ncpus` over `pages`.
    ///
    /// # Panics
    /// If `ncpus` is 0 or above [`MAX_CPUS`].
    pub const fn new(pages: P, ncpus: usize) -> Slab<P> {
        assert!(
            ncpus > 0 && ncpus <= MAX_CPUS,
            "lwkt-slab: 1..=MAX_CPUS CPUs"
        );
        Slab {
            pages,
            ncpus,
            binding: Binding::new(),
            cpus: [const {
                CachePadded::new(PerCpu {
                    own: UnsafeCell::new(CpuSlab {
                        partial: [List::EMPTY; NZONES],
                        full: [List::EMPTY; NZONES],
                        cache: ptr::null_mut(),
                        ncache: 0,
                    }),
                    queue: AtomicStack::new(),
                })
            }; MAX_CPUS],
        }
    }

    /// The page source.
    pub fn page_source(&self) -> &P {
        &self.pages
    }

    /// Allocate memory for `layout`, accounted to `ty`.
    /// DragonFly: `kmalloc(size, type, flags)`.
    ///
    /// # Errors
    /// [`SlabError`]: a zero size, the type's limit, or an exhausted page
    /// source (which may also refuse an alignment above a page: those
    /// requests go to it as large blocks). Nothing changes on error.
    #[inline]
    pub fn alloc(
        &self,
        cx: &impl CpuContext,
        layout: Layout,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<NonNull<u8>, SlabError> {
        if layout.align() > PAGE_SIZE {
            return self.alloc_overaligned(cx, layout, ty, flags);
        }
        let (p, zeroed) = match route(layout)? {
            Route::Small { class } => {
                let bytes = CHUNK[class];
                // The fast path: a chunk from the first partial zone, or
                // `None` for the slow path (which says why, if it fails).
                let fast = self.on_cpu(cx, |cpu| {
                    if !ty.admit(cpu, bytes) {
                        return None;
                    }
                    // SAFETY: `pop_chunk` needs `cpu`'s critical section,
                    // and `with_cpu` runs this closure inside it.
                    let got = unsafe { self.pop_chunk(cpu, class) }?;
                    // SAFETY: `cpu < MAX_CPUS` (`on_cpu`).
                    unsafe { ty.account_alloc(cpu, bytes) };
                    Some(got)
                });
                match fast {
                    Some(got) => got,
                    None => self.alloc_small_slow(cx, class, ty, flags)?,
                }
            }
            Route::Large => self.alloc_large(cx, layout, ty, flags)?,
        };
        Ok(zero_if_asked(p, zeroed, layout, flags))
    }

    /// An allocation aligned above a page: a large block of the page
    /// source, whatever its size (out of `route`, where it cost the hot
    /// paths 13 instructions per alloc+free pair).
    #[cold]
    #[inline(never)]
    fn alloc_overaligned(
        &self,
        cx: &impl CpuContext,
        layout: Layout,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<NonNull<u8>, SlabError> {
        if layout.size() == 0 {
            return Err(SlabError::ZeroSize);
        }
        let (p, zeroed) = self.alloc_large(cx, layout, ty, flags)?;
        Ok(zero_if_asked(p, zeroed, layout, flags))
    }

    /// A large allocation, straight from the page source; and whether it
    /// is known to be zero. Kept out of line: inlined, it cost the small
    /// fast path 13 instructions per alloc+free pair (`cargo xtask instr`),
    /// once any alignment above a page routed here.
    #[cold]
    #[inline(never)]
    fn alloc_large(
        &self,
        cx: &impl CpuContext,
        layout: Layout,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<(NonNull<u8>, bool), SlabError> {
        let bytes = large_bytes(layout)?;
        self.on_cpu(cx, |cpu| {
            if !ty.admit(cpu, bytes) {
                return Err(SlabError::LimitExceeded { ty: ty.name() });
            }
            let got = self
                .pages
                .alloc_large(layout, flags.contains(Flags::NOWAIT))
                .ok_or(SlabError::Exhausted)?;
            // SAFETY: `cpu < MAX_CPUS` (`on_cpu`).
            unsafe { ty.account_alloc(cpu, bytes) };
            Ok(got)
        })
    }

    /// Free `ptr`, allocated with `layout` and `ty` from this slab, on any
    /// CPU. DragonFly: `kfree(ptr, type)`.
    ///
    /// The chunk's size class and owner come from its zone header, so only
    /// the layout's rounded size is looked at (to tell chunks from large
    /// blocks). Debug builds check the pointer (a zone of this slab's page
    /// source, a chunk start, of `layout`'s size class) and catch double
    /// frees, with a panic naming the rule.
    ///
    /// # Safety
    /// `ptr` came from this slab's `alloc` (or `realloc`) with `layout` and
    /// `ty`, and is not used after.
    #[inline]
    pub unsafe fn free(
        &self,
        cx: &impl CpuContext,
        ptr: NonNull<u8>,
        layout: Layout,
        ty: &MallocType,
    ) {
        #[cfg(debug_assertions)]
        let checked = if layout.align() > PAGE_SIZE {
            Route::Large
        } else {
            route(layout).expect("lwkt-slab: free with a layout that alloc refuses")
        };
        if is_small(layout) {
            let p = ptr.as_ptr();
            let z = Zone::of(p);
            #[cfg(debug_assertions)]
            if let Route::Small { class } = checked {
                self.check_free(z, p, class);
            }
            self.on_cpu(cx, |cpu| {
                // SAFETY: `p` is an allocated chunk, so its zone is live;
                // its owner and size never change while chunks are
                // allocated.
                let (owner, chunk) = unsafe { ((*z).owner as usize, (*z).chunk as usize) };
                // SAFETY: `cpu < MAX_CPUS` (`on_cpu`).
                unsafe { ty.account_free(cpu, chunk) };
                if owner == cpu {
                    // SAFETY: in the owner's critical section.
                    unsafe { self.free_local(cpu, z, p) };
                } else {
                    // SAFETY: the chunk is given up here, and not touched
                    // after.
                    unsafe { Zone::remote_free(z, p, &self.cpus[owner].queue) };
                }
            });
        } else {
            // SAFETY: forwarded (the caller's contract).
            unsafe { self.free_large_block(cx, ptr, layout, ty) };
        }
    }

    /// [`free`](Self::free) of a large block, out of line like
    /// `alloc_large`.
    ///
    /// # Safety
    /// As for `free`, with a large `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn free_large_block(
        &self,
        cx: &impl CpuContext,
        ptr: NonNull<u8>,
        layout: Layout,
        ty: &MallocType,
    ) {
        let bytes = large_bytes(layout).expect("checked at allocation");
        self.on_cpu(cx, |cpu| {
            // SAFETY: `cpu < MAX_CPUS` (`on_cpu`).
            unsafe { ty.account_free(cpu, bytes) };
            // SAFETY: the caller's contract.
            unsafe { self.pages.free_large(ptr, layout) };
        });
    }

    /// Free a chunk without a CPU, from any context (the hosted
    /// allocator's path for a thread re-entered inside the slab): it goes
    /// on its zone's remote list, for its owner to take as from any other
    /// CPU. Accounted to `ty` without a CPU. Large blocks are the caller's
    /// to give back (the page source's own lock-free path).
    ///
    /// # Safety
    /// As for [`free`](Self::free), and `layout` is small (a chunk).
    #[cfg(feature = "std")]
    pub(crate) unsafe fn free_unowned(&self, ptr: NonNull<u8>, layout: Layout, ty: &MallocType) {
        let p = ptr.as_ptr();
        debug_assert!(is_small(layout));
        let z = Zone::of(p);
        #[cfg(debug_assertions)]
        if let Ok(Route::Small { class }) = route(layout) {
            self.check_free(z, p, class);
        }
        // SAFETY: `p` is an allocated chunk, so its zone is live and its
        // owner is one of our CPUs; the chunk is given up here.
        unsafe {
            let owner = (*z).owner as usize;
            ty.account_unowned(-((*z).chunk as isize));
            Zone::remote_free(z, p, &self.cpus[owner].queue);
        }
    }

    /// Give back a run of `n` chunks of one zone, linked from `first` to
    /// `last` through their first words, with no CPU: one push on the
    /// zone's remote list, for its owner to take as from any other CPU (a
    /// thread cache's frees of other CPUs' chunks, batched per zone). Not
    /// accounted (see `take_chunks`).
    ///
    /// # Safety
    /// The `n >= 1` chunks are of one zone of this slab, came from it
    /// (`take_chunks` or `alloc`) and are free: linked from `first` to
    /// `last`, used by nobody after this call.
    #[cfg(feature = "std")]
    pub(crate) unsafe fn give_run(&self, first: *mut u8, last: *mut u8, n: u32) {
        let z = Zone::of(first);
        #[cfg(debug_assertions)]
        {
            let mut c = first;
            for i in 0..n {
                // SAFETY: the run's chunks are allocated chunks of `z`,
                // whose header is live; each links the next.
                unsafe {
                    self.check_free(z, c, (*z).class as usize);
                    assert!(
                        (i + 1 == n) == (c == last),
                        "lwkt-slab: a run's count disagrees with its links"
                    );
                    c = c.cast::<*mut u8>().read();
                }
            }
        }
        // SAFETY: the chunks are allocated (the caller's), so their zone
        // is live and its owner (one of our CPUs) fixed; they are given up
        // here, linked, `n` of them.
        unsafe {
            let owner = (*z).owner as usize;
            Zone::remote_free_chain(z, first, last, n, &self.cpus[owner].queue);
        }
    }

    /// Take up to `n` chunks of `class` for a thread's cache (the hosted
    /// allocator's), linked through their first words; the list's head and
    /// length. Taking them is not accounted: the cache accounts each block
    /// it hands out, and `fold` runs first on the CPU to hand those counts
    /// over. Returns head, tail and length; the tail is null when a zone's
    /// whole local list came as it is (then up to `most` chunks: taken
    /// without a walk). Fewer than `n` come when the class's partial zones
    /// run out after the first chunk (no new zone is taken for the rest).
    ///
    /// # Errors
    /// [`SlabError::Exhausted`] when not even one chunk can be had.
    #[cfg(feature = "std")]
    pub(crate) fn take_chunks(
        &self,
        cx: &impl CpuContext,
        class: usize,
        n: usize,
        most: usize,
        fold: impl FnOnce(usize),
    ) -> Result<(*mut u8, *mut u8, usize), SlabError> {
        self.on_cpu(cx, |cpu| {
            fold(cpu);
            let mut head: *mut u8 = ptr::null_mut();
            let mut tail: *mut u8 = ptr::null_mut();
            let mut got = 0;
            while got < n {
                // Chunks on the first partial zone's local list go as
                // they are linked (no rewrite of each link).
                // SAFETY: in `cpu`'s critical section (`on_cpu`).
                let z = unsafe { self.cs_partial_head(cpu, class) };
                if !z.is_null() {
                    let first = got == 0;
                    // Only the first piece may be a whole list.
                    let most = if first {
                        most.min(u32::MAX as usize) as u32
                    } else {
                        0
                    };
                    // SAFETY: owner access to a live zone of our list, in
                    // `cpu`'s critical section.
                    if let Some((h, t, k)) = unsafe { (*z).take_local((n - got) as u32, most) } {
                        if t.is_null() {
                            // The zone's whole list, the first and only
                            // piece (its tail unknown).
                            debug_assert!(first);
                            // SAFETY: `z` is on the class's partial list.
                            if unsafe { (*z).nfree } == 0 {
                                // SAFETY: as above.
                                unsafe { self.zone_emptied(cpu, z) };
                            }
                            return Ok((h, t, k as usize));
                        }
                        // SAFETY: `t` is ours (just taken); `h`..`t` are
                        // linked.
                        unsafe { t.cast::<*mut u8>().write(head) };
                        if head.is_null() {
                            tail = t;
                        }
                        head = h;
                        got += k as usize;
                        // SAFETY: `z` is on the class's partial list.
                        if unsafe { (*z).nfree } == 0 {
                            // SAFETY: as above.
                            unsafe { self.zone_emptied(cpu, z) };
                        }
                        continue;
                    }
                }
                // SAFETY: in `cpu`'s critical section (`on_cpu`).
                match unsafe { self.pop_chunk(cpu, class) } {
                    Some((p, _)) => {
                        let c = p.as_ptr();
                        // SAFETY: a chunk just handed out: ours, at least
                        // 8 bytes and 8-aligned, so its first word holds
                        // the link.
                        unsafe { c.cast::<*mut u8>().write(head) };
                        if head.is_null() {
                            tail = c;
                        }
                        head = c;
                        got += 1;
                    }
                    None if got > 0 => break,
                    // SAFETY: in `cpu`'s critical section.
                    None => unsafe { self.refill(cpu, class, Flags::NONE)? },
                }
            }
            Ok((head, tail, got))
        })
    }

    /// Give back a thread cache's lists of chunks (each linked through
    /// their first words, `take_chunks`' format; null for an empty one),
    /// on whichever CPU `cx` gives, holding it once for all: each chunk
    /// goes to its zone as a local or remote free. Not accounted (see
    /// `take_chunks`); `fold` runs first on the CPU.
    ///
    /// # Safety
    /// Every chunk on the lists came from this slab (`take_chunks` or
    /// `alloc`) and is free: nobody uses it or holds it after this call.
    #[cfg(feature = "std")]
    pub(crate) unsafe fn give_chunks(
        &self,
        cx: &impl CpuContext,
        lists: &[*mut u8],
        fold: impl FnOnce(usize),
    ) {
        self.on_cpu(cx, |cpu| {
            fold(cpu);
            for &list in lists {
                // SAFETY: forwarded.
                unsafe { self.give_list(cpu, list) };
            }
        });
    }

    /// `give_chunks` of one list, on `cpu`.
    ///
    /// # Safety
    /// In `cpu`'s critical section; as for `give_chunks`.
    #[cfg(feature = "std")]
    unsafe fn give_list(&self, cpu: usize, mut c: *mut u8) {
        while !c.is_null() {
            // SAFETY: a chunk on the list (caller): its first word
            // links the next, its zone is live while it is allocated,
            // and its owner and class do not change meanwhile.
            unsafe {
                let mut next = c.cast::<*mut u8>().read();
                let z = Zone::of(c);
                #[cfg(debug_assertions)]
                self.check_free(z, c, (*z).class as usize);
                let owner = (*z).owner as usize;
                if owner == cpu {
                    self.free_local(cpu, z, c);
                } else {
                    // The run of chunks of the same zone that follows
                    // goes with it, in one push (they are linked
                    // already, through the same first words).
                    let (mut last, mut n) = (c, 1);
                    while !next.is_null() && Zone::of(next) == z {
                        #[cfg(debug_assertions)]
                        self.check_free(z, next, (*z).class as usize);
                        last = next;
                        n += 1;
                        next = next.cast::<*mut u8>().read();
                    }
                    Zone::remote_free_chain(z, c, last, n, &self.cpus[owner].queue);
                }
                c = next;
            }
        }
    }

    /// Resize: keep the block when the new size has the same size class;
    /// a large block to a large size the page source may resize itself
    /// ([`PageSource::realloc_large`]: `HostedPages` keeps the block when
    /// its span fits, and moves pages with `mremap` on Linux); otherwise
    /// allocate, copy, and free. DragonFly: `krealloc()`.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc), and [`SlabError::SizeOverflow`]; on
    /// error the old block is untouched and still allocated.
    ///
    /// # Safety
    /// As for [`free`](Self::free) of `ptr` with `old`.
    pub unsafe fn realloc(
        &self,
        cx: &impl CpuContext,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<NonNull<u8>, SlabError> {
        let new =
            Layout::from_size_align(new_size, old.align()).map_err(|_| SlabError::SizeOverflow)?;
        match (route(old), route(new)) {
            (Ok(Route::Small { class: a }), Ok(Route::Small { class: b })) if a == b => {
                return Ok(ptr);
            }
            (Ok(Route::Large), Ok(Route::Large)) if !flags.contains(Flags::ZERO) => {
                // SAFETY: forwarded (the caller's contract for `ptr`).
                if let Some(q) = unsafe { self.realloc_large(cx, ptr, old, new, ty, flags) }? {
                    return Ok(q);
                }
            }
            _ => {}
        }
        let q = self.alloc(cx, new, ty, flags)?;
        // SAFETY: distinct live blocks of at least the copied length.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), q.as_ptr(), old.size().min(new_size));
            self.free(cx, ptr, old, ty);
        }
        Ok(q)
    }

    /// A large block resized by the page source (`PageSource::realloc_large`),
    /// or `None` when it declines (the caller copies).
    ///
    /// # Safety
    /// As for [`free`](Self::free) of `ptr` with `old`; both layouts large.
    unsafe fn realloc_large(
        &self,
        cx: &impl CpuContext,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<Option<NonNull<u8>>, SlabError> {
        let (was, now) = (large_bytes(old)?, large_bytes(new)?);
        self.on_cpu(cx, |cpu| {
            if now > was && !ty.admit(cpu, now - was) {
                return Err(SlabError::LimitExceeded { ty: ty.name() });
            }
            // SAFETY: the caller's contract; both layouts are large and
            // share the alignment.
            let q = unsafe {
                self.pages
                    .realloc_large(ptr, old, new, flags.contains(Flags::NOWAIT))
            };
            if q.is_some() {
                // SAFETY: `cpu < MAX_CPUS` (`on_cpu`).
                unsafe {
                    ty.account_free(cpu, was);
                    ty.account_alloc(cpu, now);
                }
            }
            Ok(q)
        })
    }

    /// Reclaim this CPU's memory: absorb every remote free, give fully free
    /// zones (all but one per class) and the zone cache back to the page
    /// source. DragonFly: `slab_cleanup()`, which runs every 10 s.
    pub fn reclaim(&self, cx: &impl CpuContext) {
        self.on_cpu(cx, |cpu| {
            // SAFETY: in `cpu`'s critical section.
            unsafe {
                self.drain_queue(cpu);
                for class in 0..NZONES {
                    self.scan_full(cpu, class, usize::MAX);
                    let cs = self.cs(cpu);
                    let mut z = cs.partial[class].head;
                    while !z.is_null() {
                        let next = (*z).next;
                        Zone::absorb_remote(z);
                        if (*z).nfree == (*z).nmax {
                            self.release(cpu, z, 0);
                        }
                        z = next;
                    }
                }
                let cs = self.cs(cpu);
                while !cs.cache.is_null() {
                    let z = cs.cache;
                    cs.cache = (*z).next;
                    cs.ncache -= 1;
                    self.pages.free_zone(NonNull::new_unchecked(z.cast()));
                }
            }
        });
    }

    /// Check this CPU's structures (zone headers, list membership, free
    /// counts against the free lists); for tests and fuzzing.
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check(&self, cx: &impl CpuContext) -> Result<SlabUsage, &'static str> {
        self.on_cpu(cx, |cpu| {
            // SAFETY: in `cpu`'s critical section; list members are live.
            unsafe {
                let cs = self.cs(cpu);
                let mut u = SlabUsage::default();
                for class in 0..NZONES {
                    for (list, full) in [(&cs.partial[class], false), (&cs.full[class], true)] {
                        let mut z = list.head;
                        let mut prev = ptr::null_mut();
                        while !z.is_null() {
                            let zone = &*z;
                            if !zone.magic_ok() {
                                return Err("zone header overwritten");
                            }
                            if zone.owner as usize != cpu || zone.class as usize != class {
                                return Err("zone on the wrong CPU or class list");
                            }
                            if zone.prev != prev {
                                return Err("zone list links broken");
                            }
                            if zone.on_full != full {
                                return Err("zone's full mark disagrees with its list");
                            }
                            if full && zone.nfree != 0 {
                                return Err("full zone with free chunks");
                            }
                            if !full && zone.nfree == 0 {
                                return Err("partial zone without free chunks");
                            }
                            if zone.nfree != zone.local_len() + zone.unused() {
                                return Err("zone free count disagrees with its free list");
                            }
                            u.zones += 1;
                            u.free_chunks += zone.nfree as usize;
                            prev = z;
                            z = zone.next;
                        }
                        if list.tail != prev {
                            return Err("zone list tail broken");
                        }
                    }
                }
                u.cached_zones = cs.ncache;
                Ok(u)
            }
        })
    }

    // ---- internals -------------------------------------------------------

    /// Run `f` in `cx`'s critical section with its CPU index, after
    /// checking that `cx` is of the domain this slab serves (binding the
    /// slab to it on first use) and that the index is one of the slab's
    /// CPUs. Every per-CPU access goes through here.
    ///
    /// # Panics
    /// If `cx` is of another domain than the slab's, or its CPU index is
    /// not below the slab's CPU count.
    #[inline(always)]
    #[track_caller]
    fn on_cpu<R>(&self, cx: &impl CpuContext, f: impl FnOnce(usize) -> R) -> R {
        self.binding.check(cx.domain(), "slab");
        cx.with_cpu(|cpu| {
            assert!(
                cpu < self.ncpus,
                "lwkt-slab: CPU {cpu} on a slab built for {} CPUs",
                self.ncpus
            );
            f(cpu)
        })
    }

    /// Forget the machine (or other domain) this slab is bound to, so that
    /// the CPUs of another can use it: a static slab serving one machine
    /// after another. Its zones stay where they are and serve the CPUs
    /// with the same indices.
    ///
    /// ```
    /// use core::alloc::Layout;
    /// use lwkt_slab::{Flags, HostedPages, MallocType, Slab};
    /// static M: MallocType = MallocType::new("seq");
    /// static S: Slab<HostedPages> = Slab::new(HostedPages::new(1 << 20), 1);
    /// for _ in 0..2 {
    ///     lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///         let p = S.alloc(cur, Layout::new::<u64>(), &M, Flags::NONE).unwrap();
    ///         // SAFETY: `p` came from `S` with this layout and type, freed once.
    ///         unsafe { S.free(cur, p, Layout::new::<u64>(), &M) };
    ///     });
    ///     // SAFETY: the machine has stopped: nothing of it uses `S`.
    ///     unsafe { S.unbind() };
    /// }
    /// ```
    ///
    /// # Safety
    /// No context of the bound domain uses the slab any more: every use
    /// of it happens before this call (its machine has stopped and
    /// `run` returned; its threads are joined), and no other use runs
    /// during the call.
    pub unsafe fn unbind(&self) {
        // SAFETY: forwarded.
        unsafe { self.binding.unbind() }
    }

    /// # Safety
    /// In `cpu`'s critical section, with no other reference to its state.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn cs(&self, cpu: usize) -> &mut CpuSlab {
        // SAFETY: forwarded; `cpu < self.ncpus <= MAX_CPUS` (`on_cpu`).
        unsafe { &mut *self.cpus.get_unchecked(cpu).own.get() }
    }

    /// The first partial zone of `class` on `cpu` (null if none).
    ///
    /// # Safety
    /// In `cpu`'s critical section.
    #[cfg(feature = "std")]
    #[inline(always)]
    unsafe fn cs_partial_head(&self, cpu: usize, class: usize) -> *mut Zone {
        // SAFETY: forwarded; the borrow ends with this read.
        unsafe { self.cs(cpu) }.partial[class].head
    }

    /// Take a chunk of `class` from the first partial zone, if there is
    /// one; and whether it is known to be zero.
    ///
    /// # Safety
    /// In `cpu`'s critical section.
    #[inline]
    unsafe fn pop_chunk(&self, cpu: usize, class: usize) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: forwarded.
        let z = unsafe { self.cs(cpu) }.partial[class].head;
        if z.is_null() {
            return None;
        }
        let (p, zeroed) = Zone::pop(z);
        // SAFETY: owner access to a live zone of our list; `p` is one of
        // its chunks, so not null.
        unsafe {
            let zone = &mut *z;
            zone.nfree -= 1;
            #[cfg(debug_assertions)]
            zone.set_live(zone.index_of(p).expect("a chunk of the zone"));
            if zone.nfree == 0 {
                self.zone_emptied(cpu, z);
            }
            Some((NonNull::new_unchecked(p), zeroed))
        }
    }

    /// The allocation slow path: the type is near its limit, or the class
    /// has no partial zone (collect remote frees, then take a zone).
    #[cold]
    fn alloc_small_slow(
        &self,
        cx: &impl CpuContext,
        class: usize,
        ty: &MallocType,
        flags: Flags,
    ) -> Result<(NonNull<u8>, bool), SlabError> {
        let bytes = CHUNK[class];
        self.on_cpu(cx, |cpu| {
            if !ty.admit(cpu, bytes) {
                return Err(SlabError::LimitExceeded { ty: ty.name() });
            }
            loop {
                // SAFETY: in `cpu`'s critical section.
                unsafe {
                    if let Some(got) = self.pop_chunk(cpu, class) {
                        ty.account_alloc(cpu, bytes);
                        return Ok(got);
                    }
                    self.refill(cpu, class, flags)?;
                }
            }
        })
    }

    /// A partial zone handed out its last free chunk.
    ///
    /// # Safety
    /// In `cpu`'s critical section; `z` is on the class's partial list.
    #[cold]
    unsafe fn zone_emptied(&self, cpu: usize, z: *mut Zone) {
        // SAFETY: forwarded. The zone is reached through `z` each time, as
        // the list operations write its links through `z` too.
        unsafe {
            if Zone::absorb_remote(z) > 0 {
                return;
            }
            let cs = self.cs(cpu);
            let class = (*z).class as usize;
            cs.partial[class].remove(z);
            if Zone::mark_full(z) > 0 {
                (*z).mark_not_full();
                cs.partial[class].push_front(z);
            } else {
                (*z).on_full = true;
                cs.full[class].push_back(z);
            }
        }
    }

    /// No partial zone for `class`: collect remote frees, then take a zone.
    ///
    /// # Safety
    /// In `cpu`'s critical section.
    #[cold]
    unsafe fn refill(&self, cpu: usize, class: usize, flags: Flags) -> Result<(), SlabError> {
        // SAFETY: forwarded.
        unsafe {
            self.drain_queue(cpu);
            if !self.cs(cpu).partial[class].is_empty() {
                return Ok(());
            }
            self.scan_full(cpu, class, SCAN_FULL);
            if !self.cs(cpu).partial[class].is_empty() {
                return Ok(());
            }
            let nowait = flags.contains(Flags::NOWAIT);
            let cs = self.cs(cpu);
            let (base, zeroed) = if !cs.cache.is_null() {
                let z = cs.cache;
                cs.cache = (*z).next;
                cs.ncache -= 1;
                (z.cast::<u8>(), false)
            } else if let Some((b, zeroed)) = self.pages.alloc_zone(nowait) {
                (b.as_ptr(), zeroed)
            } else {
                if !nowait {
                    // Out of pages: look at every full zone of the class
                    // before giving up.
                    self.scan_full(cpu, class, usize::MAX);
                    if !self.cs(cpu).partial[class].is_empty() {
                        return Ok(());
                    }
                }
                return Err(SlabError::Exhausted);
            };
            let z = Zone::init(base, cpu, class, zeroed);
            self.cs(cpu).partial[class].push_front(z);
            Ok(())
        }
    }

    /// Take the zones other CPUs queued (full zones that got remote frees).
    ///
    /// # Safety
    /// In `cpu`'s critical section.
    unsafe fn drain_queue(&self, cpu: usize) {
        let mut z = self.cpus[cpu].queue.take_all();
        while !z.is_null() {
            // SAFETY: taken off our queue: ours; queued zones are live.
            unsafe {
                let next = Zone::next(z);
                (*z).dequeued();
                self.absorbed(cpu, z);
                z = next;
            }
        }
    }

    /// Re-examine up to `n` full zones of `class`, rotating the list.
    ///
    /// # Safety
    /// In `cpu`'s critical section.
    unsafe fn scan_full(&self, cpu: usize, class: usize, n: usize) {
        // SAFETY: forwarded; members of our lists are live.
        unsafe {
            let mut seen = 0;
            let stop = self.cs(cpu).full[class].tail;
            while seen < n {
                let cs = self.cs(cpu);
                let z = cs.full[class].head;
                if z.is_null() {
                    break;
                }
                cs.full[class].remove(z);
                cs.full[class].push_back(z);
                self.absorbed(cpu, z);
                seen += 1;
                if z == stop {
                    break;
                }
            }
        }
    }

    /// Absorb `z`'s remote frees and move or release it as its counts say.
    ///
    /// # Safety
    /// In `cpu`'s critical section; `z` is a live zone of `cpu` on one of
    /// its lists.
    unsafe fn absorbed(&self, cpu: usize, z: *mut Zone) {
        // SAFETY: forwarded; `z` is used afresh around list operations.
        unsafe {
            Zone::absorb_remote(z);
            let class = (*z).class as usize;
            if (*z).on_full && (*z).nfree > 0 {
                let cs = self.cs(cpu);
                cs.full[class].remove(z);
                (*z).on_full = false;
                (*z).mark_not_full();
                cs.partial[class].push_front(z);
            }
            if !(*z).on_full && (*z).nfree == (*z).nmax {
                self.release(cpu, z, 1);
            }
        }
    }

    /// # Safety
    /// In `cpu`'s critical section; `p` is an allocated chunk of `z`, owned
    /// by `cpu`.
    #[inline]
    unsafe fn free_local(&self, cpu: usize, z: *mut Zone, p: *mut u8) {
        // SAFETY: forwarded.
        let zone = unsafe { &mut *z };
        zone.push_local(p);
        let was = zone.nfree;
        zone.nfree = was + 1;
        if was == 0 {
            // It was full: back to the partial list.
            // SAFETY: forwarded.
            unsafe { self.free_local_unfull(cpu, z) };
        } else if was + 1 == zone.nmax && !(zone.prev.is_null() && zone.next.is_null()) {
            // Whole again, and not its class's only partial zone (a zone
            // on the partial list has no neighbours only when alone).
            // SAFETY: forwarded; `z` is on its class's partial list.
            unsafe { self.release(cpu, z, 1) };
        }
    }

    /// A local free gave the full zone `z` a free chunk: move it to the
    /// partial list.
    ///
    /// # Safety
    /// In `cpu`'s critical section; `z` is a live zone of `cpu` on its
    /// class's full list.
    #[cold]
    unsafe fn free_local_unfull(&self, cpu: usize, z: *mut Zone) {
        // SAFETY: forwarded; `z` is used afresh around list operations.
        unsafe {
            debug_assert!((*z).on_full);
            let cs = self.cs(cpu);
            let class = (*z).class as usize;
            cs.full[class].remove(z);
            (*z).on_full = false;
            (*z).mark_not_full();
            cs.partial[class].push_front(z);
            if (*z).nfree == (*z).nmax && !((*z).prev.is_null() && (*z).next.is_null()) {
                self.release(cpu, z, 1);
            }
        }
    }

    /// A fully free partial zone: keep it if it is one of the class's last
    /// `keep` partial zones or still queued; otherwise cache it or give it
    /// back to the page source.
    ///
    /// # Safety
    /// In `cpu`'s critical section; `z` is on its class's partial list and
    /// has no allocated chunk.
    #[cold]
    unsafe fn release(&self, cpu: usize, z: *mut Zone, keep: usize) {
        // SAFETY: forwarded; `z` is used afresh around list operations.
        unsafe {
            if (*z).is_queued() {
                return;
            }
            let cs = self.cs(cpu);
            let class = (*z).class as usize;
            if keep > 0 {
                let l = &cs.partial[class];
                let only = l.head == z && l.tail == z;
                if only {
                    return;
                }
            }
            cs.partial[class].remove(z);
            (*z).clear_magic();
            if cs.ncache < CACHED_ZONES {
                (*z).next = cs.cache;
                cs.cache = z;
                cs.ncache += 1;
            } else {
                self.pages.free_zone(NonNull::new_unchecked(z.cast()));
            }
        }
    }

    /// Debug builds: `p` is a chunk start of a live zone of this slab, of
    /// size class `class` (what `check_free` checks, without the live bit:
    /// for a free into a thread cache).
    #[cfg(all(debug_assertions, feature = "std"))]
    #[track_caller]
    pub(crate) fn check_chunk(&self, p: *mut u8, class: usize) {
        let z = Zone::of(p);
        assert!(
            self.pages.owns_zone(z.cast()),
            "lwkt-slab: free of {p:p}, which this slab did not allocate"
        );
        // SAFETY: the page source handed this zone out, so its header is
        // readable (live or cached).
        let zone = unsafe { &*z };
        assert!(
            zone.magic_ok() && zone.class as usize == class && zone.index_of(p).is_some(),
            "lwkt-slab: free of {p:p} with a layout of size class {class}: not a chunk of that class"
        );
    }

    #[cfg(debug_assertions)]
    #[track_caller]
    fn check_free(&self, z: *mut Zone, p: *mut u8, class: usize) {
        assert!(
            self.pages.owns_zone(z.cast()),
            "lwkt-slab: free of {p:p}, which this slab did not allocate"
        );
        // SAFETY: the page source handed this zone out, so its header is
        // readable (live or cached).
        let zone = unsafe { &*z };
        assert!(
            zone.magic_ok(),
            "lwkt-slab: free of {p:p}, which lies in no live zone of this slab"
        );
        assert!(
            zone.class as usize == class,
            "lwkt-slab: free of {p:p} with a layout of size class {class} ({} bytes); \
             it was allocated in class {} ({} bytes)",
            CHUNK[class],
            zone.class,
            zone.chunk
        );
        let i = zone.index_of(p).unwrap_or_else(|| {
            panic!("lwkt-slab: free of {p:p}, which is not the start of a chunk")
        });
        zone.clear_live(i, p);
    }
}

impl<P: PageSource> Drop for Slab<P> {
    /// Give every zone back to the page source (allocations still
    /// outstanding die with them; large blocks are left to the source).
    fn drop(&mut self) {
        for c in 0..self.ncpus {
            let cs = self.cpus[c].own.get_mut();
            for class in 0..NZONES {
                for list in [&mut cs.partial[class], &mut cs.full[class]] {
                    let mut z = list.head;
                    while !z.is_null() {
                        // SAFETY: list members are live zones of this slab.
                        unsafe {
                            let next = (*z).next;
                            (*z).clear_magic();
                            self.pages.free_zone(NonNull::new_unchecked(z.cast()));
                            z = next;
                        }
                    }
                    *list = List::EMPTY;
                }
            }
            while !cs.cache.is_null() {
                let z = cs.cache;
                // SAFETY: cached zones are live blocks of this slab.
                unsafe {
                    cs.cache = (*z).next;
                    self.pages.free_zone(NonNull::new_unchecked(z.cast()));
                }
            }
            cs.ncache = 0;
        }
    }
}

/// What [`Slab::check`] counted on one CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlabUsage {
    /// Zones on the CPU's lists.
    pub zones: usize,
    /// Free chunks in them (local lists and never used).
    pub free_chunks: usize,
    /// Whole free zones kept for reuse.
    pub cached_zones: usize,
}

/// Bytes a large allocation accounts for (its size rounded to pages).
pub(crate) fn large_bytes(layout: Layout) -> Result<usize, SlabError> {
    layout
        .size()
        .checked_add(PAGE_SIZE - 1)
        .map(|s| s & !(PAGE_SIZE - 1))
        .ok_or(SlabError::SizeOverflow)
}

impl<P: PageSource> core::fmt::Debug for Slab<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slab")
            .field("ncpus", &self.ncpus)
            .finish_non_exhaustive()
    }
}

/// `p`, a fresh block for `layout`, zeroed if `flags` asks for it and it
/// is not known to be zero already (`M_ZERO`).
#[inline(always)]
fn zero_if_asked(p: NonNull<u8>, zeroed: bool, layout: Layout, flags: Flags) -> NonNull<u8> {
    if flags.contains(Flags::ZERO) && !zeroed {
        // SAFETY: `p` is a fresh block of at least `layout.size()`, ours.
        unsafe { ptr::write_bytes(p.as_ptr(), 0, layout.size()) };
    }
    p
}
