//! Allocation types: who allocated what, per CPU, with an optional limit.
//!
//! DragonFly: `struct malloc_type`, `MALLOC_DEFINE()`, `ks_use[]`,
//! `ks_loosememuse`, `ks_limit`.

use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// A call or free count: the target's widest native atomic word, 64 bits
/// where it has 64-bit atomics, else 32 (wrapping at 2^32: `in_use` stays
/// exact as a wrapping difference, `total` is then the count mod 2^32).
/// Never a lock-based wider atomic: these are updated on every allocation.
#[cfg(target_has_atomic = "64")]
type Count = u64;
#[cfg(target_has_atomic = "64")]
type AtomicCount = core::sync::atomic::AtomicU64;
#[cfg(not(target_has_atomic = "64"))]
type Count = u32;
#[cfg(not(target_has_atomic = "64"))]
type AtomicCount = core::sync::atomic::AtomicU32;

use crossbeam_utils::CachePadded;
use lwkt_core::MAX_CPUS;

use crate::class::ZONE_SIZE;

/// Per-CPU counters, written only by their CPU inside its critical section
/// (a load and a store: no read-modify-write), read by anyone. A CPU's
/// bytes (`folded + pending`) may go negative when it frees what others
/// allocated; only the sums mean something. Objects in use are
/// `calls - frees`, so each call updates two words. DragonFly: `ks_use[cpu]`
/// (`memuse`, `inuse`, `calls`, `loosememuse`).
struct Use {
    calls: AtomicCount,
    frees: AtomicCount,
    /// Bytes not yet folded into the type's loose total: within
    /// `(-ZONE_SIZE, ZONE_SIZE)` between calls.
    pending: AtomicIsize,
    /// Bytes this CPU has folded into the loose total.
    folded: AtomicIsize,
}

/// An allocation type: statistics and a limit for a family of allocations.
///
/// DragonFly: `struct malloc_type` (`MALLOC_DEFINE(M_DEVBUF, "devbuf", ..)`).
///
/// ```
/// use lwkt_slab::MallocType;
/// static M_PACKETS: MallocType = MallocType::new("packets");
/// static M_SMALL: MallocType = MallocType::with_limit("small", 1 << 20);
/// assert_eq!(M_PACKETS.stats().in_use, 0);
/// ```
pub struct MallocType {
    name: &'static str,
    limit: usize,
    per_cpu: [CachePadded<Use>; MAX_CPUS],
    /// Allocations made and freed without a CPU (the hosted allocator's
    /// path for a thread re-entered inside the slab), updated with
    /// read-modify-writes; `folded` holds their bytes, `pending` is unused.
    unowned: CachePadded<Use>,
    /// Sum of folded-in deltas: within `ncpus * ZONE_SIZE` of the truth.
    loose: AtomicIsize,
    high_water: AtomicUsize,
}

/// A snapshot of an allocation type's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MallocStats {
    /// Allocations not yet freed.
    pub in_use: isize,
    /// Bytes held by them (rounded to chunk or page size).
    pub bytes: isize,
    /// Allocations ever made (mod 2^32 on a target without 64-bit atomics).
    pub total: u64,
    /// The highest `bytes` seen, measured at `ZONE_SIZE` granularity per
    /// CPU (DragonFly's loose accounting), and never below `bytes`.
    pub high_water: usize,
}

impl MallocType {
    /// A type without limit. DragonFly: `MALLOC_DEFINE()`.
    pub const fn new(name: &'static str) -> MallocType {
        MallocType::with_limit(name, 0)
    }

    /// A type whose allocations may hold at most `limit` bytes (0: none);
    /// past it, allocations fail with [`SlabError::LimitExceeded`].
    ///
    /// [`SlabError::LimitExceeded`]: crate::SlabError::LimitExceeded
    pub const fn with_limit(name: &'static str, limit: usize) -> MallocType {
        MallocType {
            name,
            limit,
            per_cpu: [const {
                CachePadded::new(Use {
                    calls: AtomicCount::new(0),
                    frees: AtomicCount::new(0),
                    pending: AtomicIsize::new(0),
                    folded: AtomicIsize::new(0),
                })
            }; MAX_CPUS],
            unowned: CachePadded::new(Use {
                calls: AtomicCount::new(0),
                frees: AtomicCount::new(0),
                pending: AtomicIsize::new(0),
                folded: AtomicIsize::new(0),
            }),
            loose: AtomicIsize::new(0),
            high_water: AtomicUsize::new(0),
        }
    }

    /// The name given at definition.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sum the per-CPU counters.
    pub fn stats(&self) -> MallocStats {
        let (mut bytes, mut total, mut frees): (isize, Count, Count) = (0, 0, 0);
        for u in self.per_cpu.iter().chain([&self.unowned]) {
            bytes += u.folded.load(Ordering::Relaxed) + u.pending.load(Ordering::Relaxed);
            total = total.wrapping_add(u.calls.load(Ordering::Relaxed));
            frees = frees.wrapping_add(u.frees.load(Ordering::Relaxed));
        }
        MallocStats {
            in_use: total.wrapping_sub(frees) as isize,
            bytes,
            #[allow(clippy::useless_conversion)] // u64 -> u64 where `Count` is u64
            total: u64::from(total),
            high_water: self
                .high_water
                .load(Ordering::Relaxed)
                .max(bytes.max(0) as usize),
        }
    }

    /// CPU `cpu`, in its critical section: may `bytes` more be allocated?
    #[inline]
    pub(crate) fn admit(&self, cpu: usize, bytes: usize) -> bool {
        if self.limit == 0 {
            return true;
        }
        let near = self.loose.load(Ordering::Relaxed)
            + self.per_cpu[cpu].pending.load(Ordering::Relaxed)
            + bytes as isize;
        if near <= self.limit as isize {
            return true;
        }
        // Near the limit: sum exactly (DragonFly does the same).
        self.stats().bytes + bytes as isize <= self.limit as isize
    }

    /// CPU `cpu`, in its critical section: account an allocation of
    /// `bytes`.
    ///
    /// # Safety
    /// `cpu < MAX_CPUS` (the slab's `check_cpu`).
    #[inline]
    pub(crate) unsafe fn account_alloc(&self, cpu: usize, bytes: usize) {
        // SAFETY: forwarded.
        let u = unsafe { self.use_of(cpu) };
        u.calls.store(
            u.calls.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        let p = u.pending.load(Ordering::Relaxed) + bytes as isize;
        if p >= ZONE_SIZE as isize {
            self.fold(u, p);
        } else {
            u.pending.store(p, Ordering::Relaxed);
        }
    }

    /// CPU `cpu`, in its critical section: account a free of `bytes`.
    ///
    /// # Safety
    /// `cpu < MAX_CPUS` (the slab's `check_cpu`).
    #[inline]
    pub(crate) unsafe fn account_free(&self, cpu: usize, bytes: usize) {
        // SAFETY: forwarded.
        let u = unsafe { self.use_of(cpu) };
        u.frees.store(
            u.frees.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        let p = u.pending.load(Ordering::Relaxed) - bytes as isize;
        if p <= -(ZONE_SIZE as isize) {
            self.fold(u, p);
        } else {
            u.pending.store(p, Ordering::Relaxed);
        }
    }

    /// CPU `cpu`, in its critical section: account `calls` allocations and
    /// `frees` frees that changed the bytes in use by `bytes` (a thread
    /// cache's counts, handed over in one go).
    ///
    /// # Safety
    /// `cpu < MAX_CPUS` (the slab's `check_cpu`).
    #[cfg(feature = "std")]
    pub(crate) unsafe fn account_batch(&self, cpu: usize, calls: u64, frees: u64, bytes: isize) {
        // SAFETY: forwarded.
        let u = unsafe { self.use_of(cpu) };
        u.calls.store(
            u.calls.load(Ordering::Relaxed).wrapping_add(calls as Count),
            Ordering::Relaxed,
        );
        u.frees.store(
            u.frees.load(Ordering::Relaxed).wrapping_add(frees as Count),
            Ordering::Relaxed,
        );
        let p = u.pending.load(Ordering::Relaxed) + bytes;
        if p.unsigned_abs() >= ZONE_SIZE {
            self.fold(u, p);
        } else {
            u.pending.store(p, Ordering::Relaxed);
        }
    }

    /// Account an allocation (`bytes > 0`) or a free (`bytes < 0`) made
    /// without a CPU, from any context. Limits are not applied (the caller
    /// has no CPU to ask with); the bytes count towards them.
    #[cfg(feature = "std")]
    pub(crate) fn account_unowned(&self, bytes: isize) {
        let u = &self.unowned;
        if bytes >= 0 {
            u.calls.fetch_add(1, Ordering::Relaxed);
        } else {
            u.frees.fetch_add(1, Ordering::Relaxed);
        }
        u.folded.fetch_add(bytes, Ordering::Relaxed);
        let now = self.loose.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > 0 {
            self.high_water.fetch_max(now as usize, Ordering::Relaxed);
        }
    }

    /// # Safety
    /// `cpu < MAX_CPUS`.
    #[inline(always)]
    unsafe fn use_of(&self, cpu: usize) -> &Use {
        debug_assert!(cpu < MAX_CPUS);
        // SAFETY: in range (caller).
        unsafe { self.per_cpu.get_unchecked(cpu) }
    }

    /// Move a CPU's pending bytes (a zone's worth or more) into the loose
    /// total, and raise the high-water mark to it.
    #[cold]
    fn fold(&self, u: &Use, delta: isize) {
        u.folded
            .store(u.folded.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
        u.pending.store(0, Ordering::Relaxed);
        let now = self.loose.fetch_add(delta, Ordering::Relaxed) + delta;
        if now > 0 {
            self.high_water.fetch_max(now as usize, Ordering::Relaxed);
        }
    }
}

impl core::fmt::Debug for MallocType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MallocType")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("stats", &self.stats())
            .finish()
    }
}
