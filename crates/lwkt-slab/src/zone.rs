//! A zone: a `ZONE_SIZE`-aligned block of `ZONE_SIZE` bytes, a header at
//! its start, and equal chunks of one size class after it. One CPU owns a
//! zone; only it allocates from it and frees to its local list. Other CPUs
//! free to its remote list.
//!
//! DragonFly: `struct SLZone`.

use core::ptr;

use crossbeam_utils::CachePadded;

use crate::class::{chunk_align, CHUNK, ZONE_SIZE};
use crate::remote::{AtomicStack, CountedStack, Link};
use crate::sync::{fence_seqcst, AtomicBool, Ordering};

const MAGIC: usize = 0x534c_5a4f_4e45_4c57_u64 as usize; // "SLZONELW" ("NELW" on 32 bits)

/// A free chunk: its first word links it into a list.
#[repr(C)]
pub(crate) struct Chunk {
    next: *mut Chunk,
}

// SAFETY: `next` is the first word of a free chunk, which nobody else uses
// while the chunk is free.
unsafe impl Link for Chunk {
    #[inline]
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: forwarded; chunks are at least 8 bytes and 8-aligned.
        unsafe { ptr::addr_of_mut!((*this).next).write(next) }
    }
    #[inline]
    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: forwarded.
        unsafe { ptr::addr_of!((*this).next).read() }
    }
}

/// Chunks per zone at most (8-byte chunks), for the debug bitmap.
#[cfg(debug_assertions)]
const MAX_CHUNKS: usize = ZONE_SIZE / 8;
/// Bits per word of the live bitmap: a native word (64 on a 64-bit
/// target, as before; 32 on a 32-bit one, which has no 64-bit atomics).
#[cfg(debug_assertions)]
const LIVE_BITS: usize = usize::BITS as usize;

/// The zone header, on three sets of cache lines: what never changes
/// while chunks are out (read by every free, from any CPU), what only the
/// owner writes (every local allocation and free), and the remote side.
/// Frees from other CPUs read the first and push on the last, so they do
/// not bounce the owner's line, nor the owner theirs.
#[repr(C)]
pub(crate) struct Zone {
    magic: usize,
    /// Owning CPU. DragonFly `z_Cpu`.
    pub(crate) owner: u32,
    /// Size class. DragonFly `z_ZoneIndex`.
    pub(crate) class: u32,
    /// DragonFly `z_ChunkSize`.
    pub(crate) chunk: u32,
    /// DragonFly `z_NMax`.
    pub(crate) nmax: u32,
    /// Offset of chunk 0 from the zone start.
    first: u32,
    /// Never-used chunks are known to be zero (fresh from the page source).
    zeroed: bool,
    /// Starts the owner's lines (no bytes; aligns what follows).
    _owner_lines: CachePadded<()>,
    /// Free chunks the owner can hand out: local list plus never used.
    /// DragonFly `z_NFree`.
    pub(crate) nfree: u32,
    /// Next never-used chunk. DragonFly `z_UIndex`.
    uindex: u32,
    /// On the owner's full list (owner only).
    pub(crate) on_full: bool,
    /// Local free list, LIFO. DragonFly `z_LChunks`.
    local: *mut Chunk,
    /// Owner's per-class list links.
    pub(crate) next: *mut Zone,
    pub(crate) prev: *mut Zone,
    /// Link in the owner's stack of zones with remote frees.
    qnext: *mut Zone,
    /// Remote side: DragonFly `z_RChunks`, with the number of chunks on
    /// it in its head word.
    remote: CachePadded<CountedStack<Chunk>>,
    /// Set by the owner when the zone went full (so remote frees must tell
    /// it); DragonFly `z_RSignal`.
    full: AtomicBool,
    /// On the owner's stack of zones with remote frees.
    queued: AtomicBool,
    /// Debug builds: one bit per chunk, set while allocated.
    #[cfg(debug_assertions)]
    live: [core::sync::atomic::AtomicUsize; MAX_CHUNKS / LIVE_BITS],
}

// SAFETY: `qnext` is used only while the zone is on a stack, by the pusher
// that won `queued` and then by the owner that took it.
unsafe impl Link for Zone {
    #[inline]
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: forwarded.
        unsafe { ptr::addr_of_mut!((*this).qnext).write(next) }
    }
    #[inline]
    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: forwarded.
        unsafe { ptr::addr_of!((*this).qnext).read() }
    }
}

impl Zone {
    /// Write a fresh header into the block at `base` for `class`, owned by
    /// `owner`.
    ///
    /// # Safety
    /// `base` is a `ZONE_SIZE`-aligned block of `ZONE_SIZE` bytes that the
    /// caller owns and that no chunk of which is in use.
    pub(crate) unsafe fn init(
        base: *mut u8,
        owner: usize,
        class: usize,
        zeroed: bool,
    ) -> *mut Zone {
        debug_assert_eq!(base as usize % ZONE_SIZE, 0);
        let chunk = CHUNK[class];
        let hdr = core::mem::size_of::<Zone>();
        let align = chunk_align(class);
        let first = (hdr + align - 1) & !(align - 1);
        let nmax = (ZONE_SIZE - first) / chunk;
        let z = base.cast::<Zone>();
        // SAFETY: the block is ours and large enough for the header.
        unsafe {
            z.write(Zone {
                magic: MAGIC,
                owner: owner as u32,
                class: class as u32,
                chunk: chunk as u32,
                nmax: nmax as u32,
                first: first as u32,
                zeroed,
                _owner_lines: CachePadded::new(()),
                nfree: nmax as u32,
                uindex: 0,
                on_full: false,
                local: ptr::null_mut(),
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                qnext: ptr::null_mut(),
                remote: CachePadded::new(CountedStack::new()),
                full: AtomicBool::new(false),
                queued: AtomicBool::new(false),
                #[cfg(debug_assertions)]
                live: [const { core::sync::atomic::AtomicUsize::new(0) }; MAX_CHUNKS / LIVE_BITS],
            });
        }
        z
    }

    /// The zone a chunk pointer lies in (its address rounded down; the
    /// pointer keeps the zone block's provenance).
    #[inline]
    pub(crate) fn of(p: *mut u8) -> *mut Zone {
        p.map_addr(|a| a & !(ZONE_SIZE - 1)).cast()
    }

    /// Whether the header is intact.
    pub(crate) fn magic_ok(&self) -> bool {
        self.magic == MAGIC
    }

    /// Invalidate the header (the zone leaves the slab or changes class).
    pub(crate) fn clear_magic(&mut self) {
        self.magic = 0;
    }

    /// Owner: take a free chunk (`nfree > 0`), and whether it is known to be
    /// zero. Does not change `nfree`.
    #[inline]
    pub(crate) fn pop(this: *mut Zone) -> (*mut u8, bool) {
        // SAFETY: owner access to a live zone (callers).
        let z = unsafe { &mut *this };
        let c = z.local;
        if !c.is_null() {
            // SAFETY: a chunk on our local list.
            z.local = unsafe { Chunk::next(c) };
            return (c.cast(), false);
        }
        debug_assert!(z.uindex < z.nmax, "pop from a zone with nothing free");
        let off = z.first as usize + z.uindex as usize * z.chunk as usize;
        z.uindex += 1;
        // SAFETY: the offset is inside the zone block.
        (unsafe { this.cast::<u8>().add(off) }, z.zeroed)
    }

    /// Owner: put a chunk back on the local list. Does not change `nfree`.
    #[inline]
    pub(crate) fn push_local(&mut self, p: *mut u8) {
        let c = p.cast::<Chunk>();
        // SAFETY: the chunk is free and ours.
        unsafe { Chunk::set_next(c, self.local) };
        self.local = c;
    }

    /// Owner: move every remotely freed chunk of zone `this` to its local
    /// list; returns how many came. DragonFly: the `z_RChunks` drain in
    /// `kmalloc`.
    ///
    /// The remote list's head word counts its chunks, so nothing is walked
    /// to count them (their links were last written by the CPUs that freed
    /// them: each read a cache miss). When the local list is empty (a zone
    /// that ran out, the usual case) the chain becomes the local list as
    /// it is; otherwise the shorter of the two lists is walked to its tail
    /// to join them.
    pub(crate) fn absorb_remote(this: *mut Zone) -> u32 {
        // SAFETY: owner access to a live zone (callers); `this` points to
        // the whole zone block, where every chunk of the list lies.
        let (head, n) = unsafe { (*this).remote.take_all(this.cast()) };
        if n == 0 {
            return 0;
        }
        // SAFETY: as above.
        let z = unsafe { &mut *this };
        if !z.local.is_null() {
            let local_len = z.nfree - z.unused();
            // Walk the shorter list to its tail (the last one's link is
            // null) and link the other after it.
            let (first, second) = if local_len <= n {
                (z.local, head)
            } else {
                (head, z.local)
            };
            let mut tail = first;
            loop {
                // SAFETY: chunks of our local list or taken off the remote
                // stack: ours.
                let next = unsafe { Chunk::next(tail) };
                if next.is_null() {
                    break;
                }
                tail = next;
            }
            // SAFETY: `tail` is ours (as above).
            unsafe { Chunk::set_next(tail, second) };
            z.local = first;
        } else {
            z.local = head;
        }
        z.nfree += n;
        n
    }

    /// Owner: unlink chunks from the front of the local list, as they are
    /// linked (one write, at the cut): the whole list when it holds at
    /// most `most` (its length is known: `nfree` less the never-used
    /// chunks, so nothing is walked; the tail is then not known and
    /// returned null), else up to `n` (`n >= 1`). Head, tail and count, or
    /// `None` when the list is empty. Lowers `nfree`.
    #[cfg(feature = "std")]
    pub(crate) fn take_local(&mut self, n: u32, most: u32) -> Option<(*mut u8, *mut u8, u32)> {
        let head = self.local;
        if head.is_null() {
            return None;
        }
        let all = self.nfree - self.unused();
        if all <= most {
            self.local = ptr::null_mut();
            self.nfree -= all;
            #[cfg(debug_assertions)]
            {
                let mut c = head;
                while !c.is_null() {
                    self.set_live(self.index_of(c.cast()).expect("a chunk of the zone"));
                    // SAFETY: a chunk of the list just taken.
                    c = unsafe { Chunk::next(c) };
                }
            }
            return Some((head.cast(), ptr::null_mut(), all));
        }
        let (mut tail, mut got) = (head, 1);
        while got < n {
            // SAFETY: a chunk of our local list.
            let next = unsafe { Chunk::next(tail) };
            if next.is_null() {
                break;
            }
            tail = next;
            got += 1;
        }
        // SAFETY: as above; the cut's link is ours to clear.
        unsafe {
            self.local = Chunk::next(tail);
            Chunk::set_next(tail, ptr::null_mut());
        }
        self.nfree -= got;
        #[cfg(debug_assertions)]
        {
            let mut c = head;
            while !c.is_null() {
                self.set_live(self.index_of(c.cast()).expect("a chunk of the zone"));
                // SAFETY: as above.
                c = unsafe { Chunk::next(c) };
            }
        }
        Some((head.cast(), tail.cast(), got))
    }

    /// Owner: the zone has no free chunk left and goes on the full list.
    /// Announce it, so that remote frees from now on queue the zone, then
    /// absorb what arrived before. Returns chunks absorbed (if any, the zone
    /// is not full after all). A remote free that read `full` just before
    /// this store and pushes just after the drain leaves its chunk on the
    /// list unannounced; the owner's rotating scan of full zones (and
    /// `Slab::reclaim`) finds it, as DragonFly's `slab_cleanup` does.
    pub(crate) fn mark_full(this: *mut Zone) -> u32 {
        // SAFETY: owner access to a live zone (callers).
        unsafe { (*this).full.store(true, Ordering::Relaxed) };
        fence_seqcst();
        Zone::absorb_remote(this)
    }

    /// Owner: the zone left the full list.
    pub(crate) fn mark_not_full(&mut self) {
        self.full.store(false, Ordering::Relaxed);
    }

    /// Another CPU frees chunk `p` of zone `this`; if the zone is full,
    /// queue it on `owner_queue` (once) so its owner finds the chunk.
    ///
    /// Everything that reads the header happens before the push: once the
    /// chunk is on the remote list the owner may absorb it and free the
    /// zone. A zone we queue cannot be freed (its owner checks `queued`),
    /// so pushing it afterwards is safe.
    ///
    /// # Safety
    /// `p` is an allocated chunk of the live zone `this`, given up by the
    /// caller; the caller does not touch the zone afterwards.
    #[inline]
    pub(crate) unsafe fn remote_free(this: *mut Zone, p: *mut u8, owner_queue: &AtomicStack<Zone>) {
        // SAFETY: forwarded; a chain of one chunk.
        unsafe { Zone::remote_free_chain(this, p, p, 1, owner_queue) }
    }

    /// [`remote_free`](Self::remote_free) of a chain of `n` chunks of
    /// zone `this`, `first` to `last`, linked through their first words
    /// (`Chunk`'s link): one push for all, which adds `n` to the remote
    /// list's count. DragonFly batches remote frees per zone the same way.
    ///
    /// # Safety
    /// The `n >= 1` chunks from `first` to `last` are allocated chunks of
    /// the live zone `this`, given up by the caller, and they are linked
    /// from `first` to `last`; the caller does not touch the zone
    /// afterwards.
    #[inline]
    pub(crate) unsafe fn remote_free_chain(
        this: *mut Zone,
        first: *mut u8,
        last: *mut u8,
        n: u32,
        owner_queue: &AtomicStack<Zone>,
    ) {
        // SAFETY: our chunks are allocated, so the zone is live until the
        // push.
        let z = unsafe { &*this };
        let queue = z.full.load(Ordering::Relaxed) && !z.queued.swap(true, Ordering::AcqRel);
        // SAFETY: `n` free chunks of `this`, linked, given up by the
        // caller; `this` is their zone's start (every chunk of the zone's
        // list lies in its block, 64 KiB).
        unsafe {
            z.remote
                .push_chain(this.cast(), first.cast(), last.cast(), n)
        };
        if queue {
            // SAFETY: `queued` is ours, so the zone stays alive and its
            // queue link is ours to use.
            unsafe { owner_queue.push(this) };
        }
    }

    /// Owner: the zone was taken off the queue of zones with remote frees.
    pub(crate) fn dequeued(&mut self) {
        self.queued.store(false, Ordering::Release);
    }

    /// Whether the zone is on its owner's queue (then it must not be freed).
    pub(crate) fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// Chunk index of `p`, if `p` is a chunk start of this zone.
    #[cfg(debug_assertions)]
    pub(crate) fn index_of(&self, p: *const u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self as *const Zone as usize);
        let rel = off.checked_sub(self.first as usize)?;
        let i = rel / self.chunk as usize;
        (rel % self.chunk as usize == 0 && i < self.nmax as usize).then_some(i)
    }

    /// Debug builds: record chunk `i` allocated.
    #[cfg(debug_assertions)]
    pub(crate) fn set_live(&self, i: usize) {
        let prev = self.live[i / LIVE_BITS].fetch_or(1 << (i % LIVE_BITS), Ordering::Relaxed);
        assert!(
            prev & (1 << (i % LIVE_BITS)) == 0,
            "lwkt-slab: chunk handed out twice"
        );
    }

    /// Debug builds: record chunk `i` freed; panics on a double free.
    #[cfg(debug_assertions)]
    #[track_caller]
    pub(crate) fn clear_live(&self, i: usize, p: *const u8) {
        let prev = self.live[i / LIVE_BITS].fetch_and(!(1 << (i % LIVE_BITS)), Ordering::Relaxed);
        assert!(
            prev & (1 << (i % LIVE_BITS)) != 0,
            "lwkt-slab: double free of {p:p} (rule: free each allocation once)"
        );
    }

    /// Count the local free list (for invariant checks).
    pub(crate) fn local_len(&self) -> u32 {
        let mut n = 0;
        let mut c = self.local;
        while !c.is_null() {
            n += 1;
            // SAFETY: chunks on our local list.
            c = unsafe { Chunk::next(c) };
        }
        n
    }

    /// Never-used chunks left.
    pub(crate) fn unused(&self) -> u32 {
        self.nmax - self.uindex
    }
}
