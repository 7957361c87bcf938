//! Loom models of the remote-free path: the zone's lock-free list (pushes
//! from other CPUs while the owner drains), and the hand-off between a
//! remote free and the owner marking the zone full; and of the object
//! cache's depot (per-CPU magazines traded through the shared depot). They
//! run this crate's own `AtomicStack`, `Zone` and `ObjCache` code. Run with
//! `cargo xtask loom`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::vec::Vec;

use loom::sync::Arc;
use loom::thread;

use crate::class::ZONE_SIZE;
use crate::remote::{AtomicStack, CountedStack, Link};
use crate::zone::{Chunk, Zone};

/// A zone-aligned block, freed at the end of the model run.
struct Block(*mut u8);
// SAFETY: the block is plain memory shared under the protocol under test.
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}
const ZL: Layout = match Layout::from_size_align(ZONE_SIZE, ZONE_SIZE) {
    Ok(l) => l,
    Err(_) => panic!(),
};
impl Block {
    fn new() -> Block {
        // SAFETY: non-zero layout.
        Block(unsafe { alloc_zeroed(ZL) })
    }
    fn chunk(&self, i: usize) -> *mut Chunk {
        // SAFETY: inside the block (chunks of 64 bytes from offset 4 KiB).
        unsafe { self.0.add(4096 + 64 * i).cast() }
    }
}
impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with `ZL`.
        unsafe { dealloc(self.0, ZL) }
    }
}

/// Take the whole list; check its count against its length.
fn drain(s: &CountedStack<Chunk>, base: *mut u8, into: &mut Vec<usize>) {
    // SAFETY: every push used `base`, the block the chunks lie in.
    let (mut c, n) = unsafe { s.take_all(base) };
    let mut len = 0;
    while !c.is_null() {
        into.push(c as usize);
        len += 1;
        // SAFETY: taken off the stack: ours.
        c = unsafe { Chunk::next(c) };
    }
    assert_eq!(len, n, "the head word's count is the list's length");
}

/// Two CPUs push two chunks each while the owner drains, one a chunk at a
/// time, the other as a chain in one push: every chunk is drained exactly
/// once, and each drain's count (from the head word) is the length of
/// what it took.
#[test]
fn remote_list_loses_nothing_and_duplicates_nothing() {
    loom::model(|| {
        let block = Arc::new(Block::new());
        let stack = Arc::new(CountedStack::<Chunk>::new());
        let pushers: Vec<_> = (0..2)
            .map(|t| {
                let (b, s) = (block.clone(), stack.clone());
                thread::spawn(move || {
                    if t == 0 {
                        for i in 0..2 {
                            // SAFETY: each chunk is pushed once, by one
                            // thread.
                            unsafe {
                                let c = b.chunk(2 * t + i);
                                s.push_chain(b.0, c, c, 1);
                            }
                        }
                    } else {
                        // A chain of two in one push (a thread cache's
                        // spill).
                        let (first, last) = (b.chunk(2 * t), b.chunk(2 * t + 1));
                        // SAFETY: ours until pushed, once, by this thread.
                        unsafe {
                            Chunk::set_next(first, last);
                            s.push_chain(b.0, first, last, 2);
                        }
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        drain(&stack, block.0, &mut got);
        for p in pushers {
            p.join().unwrap();
        }
        drain(&stack, block.0, &mut got);
        got.sort_unstable();
        let mut want: Vec<usize> = (0..4).map(|i| block.chunk(i) as usize).collect();
        want.sort_unstable();
        assert_eq!(got, want);
    });
}

/// A remote free of a chain of two chunks (one push, as a thread cache
/// spills) racing the owner marking the zone full: no chunk is ever
/// lost. Either the owner's drain absorbs it, or the freer saw the zone
/// full and queued it for the owner, or it waits on the remote list for the
/// owner's scan of full zones; and a queued zone is marked queued.
#[test]
fn remote_free_against_mark_full() {
    loom::model(|| {
        let block = Arc::new(Block::new());
        // SAFETY: a fresh zone-aligned block; chunks of class 7 (64 B).
        let z = unsafe { Zone::init(block.0, 0, 7, true) } as usize;
        let queue = Arc::new(AtomicStack::<Zone>::new());
        let (first, last) = (block.chunk(0) as usize, block.chunk(1) as usize);
        let freer = {
            let (q, b) = (queue.clone(), block.clone());
            thread::spawn(move || {
                let _keep = b;
                // SAFETY: two "allocated" chunks of the live zone, linked
                // and given up in one push.
                unsafe {
                    Chunk::set_next(first as *mut Chunk, last as *mut Chunk);
                    Zone::remote_free_chain(
                        z as *mut Zone,
                        first as *mut u8,
                        last as *mut u8,
                        2,
                        &q,
                    )
                };
            })
        };
        let zp = z as *mut Zone;
        // SAFETY: the owner's side of the live zone.
        unsafe { (*zp).nfree = 0 };
        let absorbed = Zone::mark_full(zp);
        freer.join().unwrap();
        let queued = queue.take_all();
        let later = Zone::absorb_remote(zp);
        assert_eq!(absorbed + later, 2, "each chunk is absorbed exactly once");
        // SAFETY: as above.
        let zone = unsafe { &*zp };
        assert_eq!(zone.local_len(), 2, "the local list holds what was counted");
        if !queued.is_null() {
            assert_eq!(queued as usize, z);
            assert!(zone.is_queued());
        }
    });
}

/// The object cache's depot: CPU 0 fills magazines until one goes to the
/// depot while CPU 1 gets (perhaps that full magazine, perhaps a fresh
/// object) and puts back. Every object is handed to one user at a time
/// (its flag says so), and after both CPUs reclaim, every object
/// constructed was destroyed once: nothing lost or duplicated in the
/// exchange. Runs `ObjCache::get`/`put`/`reclaim` themselves, through the
/// crate's sync shim (the depot lock, the magazine cells, the counters).
#[test]
fn objcache_depot_hands_each_object_to_one_user() {
    use core::alloc::Layout;
    use core::ptr::NonNull;

    use loom::sync::atomic::{AtomicBool, Ordering};

    use crate::objcache::{ObjCache, RawSource};
    use crate::{CpuContext, Domain, DomainId};

    /// Memory from the host heap.
    struct Heap;
    // SAFETY: blocks from the global allocator, given back with their
    // layout.
    unsafe impl RawSource for Heap {
        fn alloc(&self, _: &impl CpuContext, layout: Layout) -> Option<NonNull<u8>> {
            // SAFETY: objects and magazines have a non-zero size.
            NonNull::new(unsafe { std::alloc::alloc(layout) })
        }
        unsafe fn free(&self, _: &impl CpuContext, p: NonNull<u8>, layout: Layout) {
            // SAFETY: from `alloc` with `layout` (caller).
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) }
        }
    }

    /// CPU `n`: each model thread is one CPU, and uses only its own.
    struct On(usize);
    static ID: DomainId = DomainId::new();
    // SAFETY: each index is used by one model thread at a time (the
    // spawned threads use 0 and 1; the main thread uses them only before
    // spawning and after joining).
    unsafe impl CpuContext for On {
        fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
            f(self.0)
        }
        fn domain(&self) -> Domain {
            ID.domain()
        }
    }

    type Cache = ObjCache<AtomicBool, Heap, 1>;

    fn take(c: &Cache, cx: &On) -> NonNull<AtomicBool> {
        let o = c.get(cx).unwrap();
        // SAFETY: a live object of the cache, ours until put.
        let was = unsafe { o.as_ref() }.swap(true, Ordering::Relaxed);
        assert!(!was, "an object handed to two users");
        o
    }

    fn give(c: &Cache, cx: &On, o: NonNull<AtomicBool>) {
        // SAFETY: ours until the put below.
        unsafe { o.as_ref() }.store(false, Ordering::Relaxed);
        // SAFETY: from `get`, given up here.
        unsafe { c.put(cx, o) };
    }

    loom::model(|| {
        let cache: Arc<Cache> =
            Arc::new(ObjCache::new(Heap, 2, 0, || AtomicBool::new(false), None));
        let filler = {
            let c = cache.clone();
            thread::spawn(move || {
                let cx = On(0);
                let objs: Vec<_> = (0..3).map(|_| take(&c, &cx)).collect();
                // The third put sends a full magazine to the depot.
                for o in objs {
                    give(&c, &cx, o);
                }
            })
        };
        let taker = {
            let c = cache.clone();
            thread::spawn(move || {
                let cx = On(1);
                let o = take(&c, &cx);
                give(&c, &cx, o);
            })
        };
        filler.join().unwrap();
        taker.join().unwrap();
        cache.reclaim(&On(0));
        cache.reclaim(&On(1));
        let st = cache.stats();
        assert_eq!(st.live, 0, "{st:?}");
        assert_eq!(st.constructed, st.destroyed, "{st:?}");
        assert!(st.constructed <= 4, "{st:?}");
    });
}
