//! An object cache for fixed-type objects: constructed objects are kept in
//! per-CPU magazines (a loaded and a previous one) and a shared depot of
//! full and empty magazines, so a get or put is usually a push or pop on
//! this CPU's magazine, in its critical section, and the constructor runs
//! once per object, not once per allocation (Bonwick's magazine design).
//!
//! DragonFly: `objcache_create()`, `objcache_get()`, `objcache_put()`,
//! `objcache_reclaimlist()`, `struct magazine`, `struct percpu_objcache`,
//! `struct magazinedepot`.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crossbeam_utils::CachePadded;
/// CPUs a cache has blocks for: lwkt's `MAX_CPUS`, or, in the loom
/// models, 4 (a cache is built on the model thread's stack, and 256 blocks
/// overflow loom's coroutine stack).
#[cfg(not(loom))]
use lwkt_core::MAX_CPUS;
#[cfg(loom)]
const MAX_CPUS: usize = 4;

use crate::cpu::Binding;
use crate::sync::{
    load_wide, spin_loop, AtomicBool, AtomicUsize, AtomicWord, Ordering, UnsafeCell,
};
use crate::CpuContext;
#[cfg(not(loom))]
use crate::{Flags, MallocType, PageSource, Slab};

/// Where an object cache gets raw memory for its objects and magazines.
///
/// # Safety
/// `alloc` returns blocks fitting `layout`, exclusively the caller's until
/// given back with `free` and the same layout.
pub unsafe trait RawSource: Sync {
    /// A block for `layout`, or `None`.
    fn alloc(&self, cx: &impl CpuContext, layout: Layout) -> Option<NonNull<u8>>;
    /// Give a block back.
    ///
    /// # Safety
    /// `p` came from `alloc(layout)` of this source and is no longer used.
    unsafe fn free(&self, cx: &impl CpuContext, p: NonNull<u8>, layout: Layout);
}

/// Objects and magazines from a [`Slab`], accounted to a [`MallocType`].
/// DragonFly: `objcache_create_mbacked()`.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct SlabSource<'a, P: PageSource> {
    /// The slab.
    pub slab: &'a Slab<P>,
    /// The allocation type charged.
    pub ty: &'a MallocType,
}

// SAFETY: forwards to the slab's alloc and free with the same layout.
#[cfg(not(loom))]
unsafe impl<P: PageSource> RawSource for SlabSource<'_, P> {
    fn alloc(&self, cx: &impl CpuContext, layout: Layout) -> Option<NonNull<u8>> {
        self.slab.alloc(cx, layout, self.ty, Flags::NONE).ok()
    }
    unsafe fn free(&self, cx: &impl CpuContext, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.slab.free(cx, p, layout, self.ty) }
    }
}

/// Why a get failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjCacheError {
    /// The cluster limit of constructed objects is reached (DragonFly's
    /// `cluster_limit`); a put makes room.
    LimitReached,
    /// The source has no memory.
    Exhausted,
}

impl fmt::Display for ObjCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjCacheError::LimitReached => "object cache at its limit of constructed objects",
            ObjCacheError::Exhausted => "object cache source out of memory",
        })
    }
}

impl core::error::Error for ObjCacheError {}

/// A magazine: a stack of up to `M` constructed objects. DragonFly:
/// `struct magazine`.
struct Magazine<T, const M: usize> {
    rounds: usize,
    next: *mut Magazine<T, M>,
    objs: [*mut T; M],
}

/// One CPU's magazines and counters (owner only, in its critical section;
/// counters read by anyone). DragonFly: `struct percpu_objcache`.
struct PerCpu<T, const M: usize> {
    mags: UnsafeCell<Mags<T, M>>,
    gets: AtomicWord,
    puts: AtomicWord,
    depot_hits: AtomicWord,
}

/// A CPU's loaded and previous magazines (either may be null).
struct Mags<T, const M: usize> {
    loaded: *mut Magazine<T, M>,
    previous: *mut Magazine<T, M>,
}

/// Full and empty magazines, under a spin lock. DragonFly:
/// `struct magazinedepot`.
struct Depot<T, const M: usize> {
    full: *mut Magazine<T, M>,
    empty: *mut Magazine<T, M>,
}

/// A snapshot of an object cache's counters. On a target without 64-bit
/// atomics each underlying counter (per CPU, for the `gets`, `puts` and
/// `depot_hits` sums) is 32 bits wide and wraps at 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjCacheStats {
    /// Objects constructed and not yet destroyed (cached or handed out).
    pub live: usize,
    /// Constructor calls ever.
    pub constructed: u64,
    /// Destructions ever.
    pub destroyed: u64,
    /// Gets and puts.
    pub gets: u64,
    /// Puts.
    pub puts: u64,
    /// Magazine exchanges with the depot.
    pub depot_hits: u64,
}

/// A cache of constructed `T`s over raw source `S`, with magazines of `M`
/// objects. DragonFly: `struct objcache`.
///
/// Dropping the cache does not free what it caches (freeing needs a CPU
/// context): call [`reclaim`](Self::reclaim) on every CPU first, as
/// DragonFly's `objcache_destroy()` drains its magazines.
///
/// ```
/// use lwkt_slab::objcache::{ObjCache, SlabSource};
/// use lwkt_slab::{HostedPages, MallocType, Slab};
///
/// static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(16 << 20), 1);
/// static M_CONN: MallocType = MallocType::new("conn");
/// struct Conn { buf: [u8; 100] }
///
/// let cache: ObjCache<Conn, _, 16> =
///     ObjCache::new(SlabSource { slab: &SLAB, ty: &M_CONN }, 1, 0, || Conn { buf: [0; 100] }, None);
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     for _ in 0..1000 {
///         let c = cache.get(cur).unwrap();
///         unsafe { cache.put(cur, c) };
///     }
/// });
/// assert_eq!(cache.stats().constructed, 1); // one object, reused 1000 times
/// ```
pub struct ObjCache<T, S: RawSource, const M: usize = 32> {
    source: S,
    ctor: fn() -> T,
    dtor: Option<fn(&mut T)>,
    ncpus: usize,
    /// The machine (or other domain) whose CPUs use it.
    binding: Binding,
    limit: usize,
    live: AtomicUsize,
    constructed: AtomicWord,
    destroyed: AtomicWord,
    cpus: [CachePadded<PerCpu<T, M>>; MAX_CPUS],
    lock: CachePadded<AtomicBool>,
    depot: UnsafeCell<Depot<T, M>>,
    _owns: PhantomData<T>,
}

// SAFETY: per-CPU magazines are touched only in `on_cpu`, inside
// `with_cpu` for their CPU of the one domain the cache is bound to; the
// depot only under `lock`; objects cross CPUs through them, hence
// `T: Send`.
unsafe impl<T: Send, S: RawSource, const M: usize> Sync for ObjCache<T, S, M> {}
// SAFETY: as above.
unsafe impl<T: Send, S: RawSource + Send, const M: usize> Send for ObjCache<T, S, M> {}

impl<T, S: RawSource, const M: usize> ObjCache<T, S, M> {
    /// A cache for `ncpus` CPUs whose objects are made by `ctor` (once per
    /// object) and, when destroyed, passed to `dtor` then dropped; at most
    /// `limit` objects exist at once (0: no limit).
    /// DragonFly: `objcache_create(name, cluster_limit, nom_cache, ctor,
    /// dtor, ...)`.
    ///
    /// # Panics
    /// If `ncpus` is 0 or above `MAX_CPUS`, or `M` is 0.
    pub fn new(
        source: S,
        ncpus: usize,
        limit: usize,
        ctor: fn() -> T,
        dtor: Option<fn(&mut T)>,
    ) -> Self {
        assert!(
            ncpus > 0 && ncpus <= MAX_CPUS,
            "lwkt-slab: 1..=MAX_CPUS CPUs"
        );
        assert!(M > 0, "lwkt-slab: magazines hold at least one object");
        ObjCache {
            source,
            ctor,
            dtor,
            ncpus,
            binding: Binding::new(),
            limit,
            live: AtomicUsize::new(0),
            constructed: AtomicWord::new(0),
            destroyed: AtomicWord::new(0),
            cpus: core::array::from_fn(|_| {
                CachePadded::new(PerCpu {
                    mags: UnsafeCell::new(Mags {
                        loaded: ptr::null_mut(),
                        previous: ptr::null_mut(),
                    }),
                    gets: AtomicWord::new(0),
                    puts: AtomicWord::new(0),
                    depot_hits: AtomicWord::new(0),
                })
            }),
            lock: CachePadded::new(AtomicBool::new(false)),
            depot: UnsafeCell::new(Depot {
                full: ptr::null_mut(),
                empty: ptr::null_mut(),
            }),
            _owns: PhantomData,
        }
    }

    /// A constructed object: from this CPU's magazines, else a full
    /// magazine from the depot, else a new one (constructor run).
    /// DragonFly: `objcache_get()`.
    ///
    /// # Errors
    /// [`ObjCacheError`]: the limit is reached, or the source is out of
    /// memory.
    #[inline]
    pub fn get(&self, cx: &impl CpuContext) -> Result<NonNull<T>, ObjCacheError> {
        let cached = self.on_cpu(cx, |pc, mags| {
            bump(&pc.gets);
            let Mags { loaded, previous } = mags;
            // SAFETY: in `cpu`'s critical section: its magazines are ours.
            unsafe {
                if let Some(o) = pop(*loaded) {
                    return Some(o);
                }
                if !previous.is_null() && (**previous).rounds > 0 {
                    core::mem::swap(loaded, previous);
                    return pop(*loaded);
                }
                // The depot: trade our empty magazine for a full one.
                let full = self.with_depot(|d| {
                    let f = d.full;
                    if f.is_null() {
                        return None;
                    }
                    d.full = (*f).next;
                    if !previous.is_null() {
                        (**previous).next = d.empty;
                        d.empty = *previous;
                    }
                    Some(f)
                })?;
                bump(&pc.depot_hits);
                *previous = *loaded;
                *loaded = full;
                pop(full)
            }
        });
        if let Some(o) = cached {
            // SAFETY: magazines hold only constructed, live objects.
            return Ok(unsafe { NonNull::new_unchecked(o) });
        }
        self.construct(cx)
    }

    /// Give back an object from [`get`](Self::get): into this CPU's
    /// magazines, else trade a full magazine for an empty one in the depot,
    /// else destroy it. DragonFly: `objcache_put()`.
    ///
    /// # Safety
    /// `obj` came from this cache's `get`, is a valid `T`, and is not used
    /// after.
    #[inline]
    pub unsafe fn put(&self, cx: &impl CpuContext, obj: NonNull<T>) {
        let mut spare: *mut Magazine<T, M> = ptr::null_mut();
        loop {
            let done = self.on_cpu(cx, |pc, mags| {
                let Mags { loaded, previous } = mags;
                // SAFETY: in `cpu`'s critical section.
                unsafe {
                    if push(*loaded, obj.as_ptr()) {
                        bump(&pc.puts);
                        return true;
                    }
                    if !previous.is_null() && (**previous).rounds < M {
                        core::mem::swap(loaded, previous);
                        bump(&pc.puts);
                        return push(*loaded, obj.as_ptr());
                    }
                    // Both full (or absent): trade one for an empty magazine.
                    let empty = if spare.is_null() {
                        self.with_depot(|d| {
                            let e = d.empty;
                            if !e.is_null() {
                                d.empty = (*e).next;
                            }
                            e
                        })
                    } else {
                        core::mem::replace(&mut spare, ptr::null_mut())
                    };
                    if empty.is_null() {
                        return false;
                    }
                    if !previous.is_null() {
                        let full = *previous;
                        self.with_depot(|d| {
                            (*full).next = d.full;
                            d.full = full;
                        });
                    }
                    bump(&pc.depot_hits);
                    bump(&pc.puts);
                    *previous = *loaded;
                    *loaded = empty;
                    push(empty, obj.as_ptr())
                }
            });
            if done {
                if !spare.is_null() {
                    // A magazine we made but did not need.
                    // SAFETY: ours, empty.
                    unsafe { self.free_magazine(cx, spare) };
                }
                return;
            }
            // No empty magazine anywhere: make one (outside the critical
            // section), or destroy the object if there is no memory.
            match self.new_magazine(cx) {
                Some(m) => spare = m,
                None => {
                    // SAFETY: the caller gave the object up.
                    unsafe { self.destroy(cx, obj.as_ptr()) };
                    return;
                }
            }
        }
    }

    /// Destroy every object cached in the depot and in this CPU's
    /// magazines, and give the empty magazines back to the source.
    /// DragonFly: `objcache_reclaimlist()`.
    pub fn reclaim(&self, cx: &impl CpuContext) {
        // Take this CPU's magazines and everything in the depot, then work
        // outside the critical section and the lock.
        let mut mags: *mut Magazine<T, M> = ptr::null_mut();
        self.on_cpu(cx, |_, own| {
            for m in [&mut own.loaded, &mut own.previous] {
                let mag = core::mem::replace(m, ptr::null_mut());
                if !mag.is_null() {
                    // SAFETY: this CPU's magazine, taken off it: ours.
                    unsafe { (*mag).next = mags };
                    mags = mag;
                }
            }
            self.with_depot(|d| {
                for list in [&mut d.full, &mut d.empty] {
                    let mut m = core::mem::replace(list, ptr::null_mut());
                    while !m.is_null() {
                        // SAFETY: depot magazines are live.
                        let next = unsafe { (*m).next };
                        // SAFETY: as above.
                        unsafe { (*m).next = mags };
                        mags = m;
                        m = next;
                    }
                }
            });
        });
        while !mags.is_null() {
            // SAFETY: taken out of every list: ours.
            unsafe {
                let next = (*mags).next;
                while let Some(o) = pop(mags) {
                    self.destroy(cx, o);
                }
                self.free_magazine(cx, mags);
                mags = next;
            }
        }
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> ObjCacheStats {
        let mut s = ObjCacheStats {
            live: self.live.load(Ordering::Relaxed),
            constructed: load_wide(&self.constructed, Ordering::Relaxed),
            destroyed: load_wide(&self.destroyed, Ordering::Relaxed),
            ..ObjCacheStats::default()
        };
        for pc in &self.cpus[..self.ncpus] {
            s.gets += load_wide(&pc.gets, Ordering::Relaxed);
            s.puts += load_wide(&pc.puts, Ordering::Relaxed);
            s.depot_hits += load_wide(&pc.depot_hits, Ordering::Relaxed);
        }
        s
    }

    /// Forget the machine (or other domain) this cache is bound to, so
    /// that another's CPUs can use it (see [`Slab::unbind`]).
    ///
    /// # Safety
    /// As for [`Slab::unbind`]: every use by the bound domain happens
    /// before this call, and none runs during it.
    pub unsafe fn unbind(&self) {
        // SAFETY: forwarded.
        unsafe { self.binding.unbind() }
    }

    // ---- internals -------------------------------------------------------

    /// Run `f` in `cx`'s critical section with its CPU's magazines, after
    /// checking that `cx` is of the domain this cache serves (binding it on
    /// first use) and that the index is one of the cache's CPUs.
    ///
    /// # Panics
    /// If `cx` is of another domain than the cache's, or its CPU index is
    /// not below the cache's CPU count.
    #[inline(always)]
    #[track_caller]
    fn on_cpu<R>(
        &self,
        cx: &impl CpuContext,
        f: impl FnOnce(&PerCpu<T, M>, &mut Mags<T, M>) -> R,
    ) -> R {
        self.binding.check(cx.domain(), "object cache");
        cx.with_cpu(|cpu| {
            assert!(
                cpu < self.ncpus,
                "lwkt-slab: CPU {cpu} on an object cache built for {} CPUs",
                self.ncpus
            );
            let pc = &self.cpus[cpu];
            // SAFETY: inside `cpu`'s critical section of the cache's
            // domain (checked above), which the `CpuContext` contract gives
            // to this call alone: nothing else reaches this CPU's magazines.
            pc.mags.with_mut(|m| f(pc, unsafe { &mut *m }))
        })
    }

    #[cold]
    fn construct(&self, cx: &impl CpuContext) -> Result<NonNull<T>, ObjCacheError> {
        if self.live.fetch_add(1, Ordering::Relaxed) >= self.limit && self.limit != 0 {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(ObjCacheError::LimitReached);
        }
        let Some(p) = self.source.alloc(cx, Layout::new::<T>()) else {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(ObjCacheError::Exhausted);
        };
        let p = p.cast::<T>();
        // SAFETY: a fresh block fitting `T`.
        unsafe { p.as_ptr().write((self.ctor)()) };
        self.constructed.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    /// # Safety
    /// `o` is a constructed object of this cache nobody uses.
    unsafe fn destroy(&self, cx: &impl CpuContext, o: *mut T) {
        // SAFETY: a valid `T`, ours.
        unsafe {
            if let Some(d) = self.dtor {
                d(&mut *o);
            }
            ptr::drop_in_place(o);
            self.source
                .free(cx, NonNull::new_unchecked(o.cast()), Layout::new::<T>());
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.destroyed.fetch_add(1, Ordering::Relaxed);
    }

    fn new_magazine(&self, cx: &impl CpuContext) -> Option<*mut Magazine<T, M>> {
        let m = self
            .source
            .alloc(cx, Layout::new::<Magazine<T, M>>())?
            .cast::<Magazine<T, M>>()
            .as_ptr();
        // SAFETY: a fresh block fitting a magazine.
        unsafe {
            m.write(Magazine {
                rounds: 0,
                next: ptr::null_mut(),
                objs: [ptr::null_mut(); M],
            })
        };
        Some(m)
    }

    /// # Safety
    /// `m` is an empty magazine of this cache on no list.
    unsafe fn free_magazine(&self, cx: &impl CpuContext, m: *mut Magazine<T, M>) {
        // SAFETY: forwarded.
        unsafe {
            self.source.free(
                cx,
                NonNull::new_unchecked(m.cast()),
                Layout::new::<Magazine<T, M>>(),
            )
        }
    }

    fn with_depot<R>(&self, f: impl FnOnce(&mut Depot<T, M>) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_loop();
        }
        // SAFETY: under the lock.
        let r = self.depot.with_mut(|d| f(unsafe { &mut *d }));
        self.lock.store(false, Ordering::Release);
        r
    }
}

impl<T, S: RawSource, const M: usize> fmt::Debug for ObjCache<T, S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjCache")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Pop an object from a magazine (null or empty: `None`).
///
/// # Safety
/// `m` is null or a magazine the caller owns.
#[inline]
unsafe fn pop<T, const M: usize>(m: *mut Magazine<T, M>) -> Option<*mut T> {
    // SAFETY: forwarded.
    unsafe {
        if m.is_null() || (*m).rounds == 0 {
            return None;
        }
        (*m).rounds -= 1;
        Some((*m).objs[(*m).rounds])
    }
}

/// Push an object on a magazine; false if it is null or full.
///
/// # Safety
/// As for `pop`.
#[inline]
unsafe fn push<T, const M: usize>(m: *mut Magazine<T, M>, o: *mut T) -> bool {
    // SAFETY: forwarded.
    unsafe {
        if m.is_null() || (*m).rounds == M {
            return false;
        }
        (*m).objs[(*m).rounds] = o;
        (*m).rounds += 1;
        true
    }
}

/// A per-CPU counter: only its CPU writes it (load + store, no RMW). A
/// native word: it wraps at 2^32 on a target without 64-bit atomics.
#[inline]
fn bump(c: &AtomicWord) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}
