//! Unit tests with a page source over the host allocator and an explicit
//! CPU index, so Miri runs them (`cargo xtask miri`).

use core::alloc::Layout;
use core::ptr::NonNull;
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc};
use std::vec::Vec;

use crate::class::{CHUNK, ZONE_SIZE};
use crate::{CpuContext, Flags, MallocType, PageSource, Slab, SlabError};

/// Zones from the host allocator, counted.
struct TestPages {
    zones: core::sync::atomic::AtomicUsize,
    max: usize,
}

const ZONE: Layout = match Layout::from_size_align(ZONE_SIZE, ZONE_SIZE) {
    Ok(l) => l,
    Err(_) => panic!(),
};

// SAFETY: blocks come from the host allocator with the zone layout.
unsafe impl PageSource for TestPages {
    fn alloc_zone(&self, _: bool) -> Option<(NonNull<u8>, bool)> {
        use core::sync::atomic::Ordering::Relaxed;
        if self.zones.fetch_add(1, Relaxed) >= self.max {
            self.zones.fetch_sub(1, Relaxed);
            return None;
        }
        // SAFETY: a non-zero layout.
        NonNull::new(unsafe { alloc_zeroed(ZONE) }).map(|p| (p, true))
    }
    unsafe fn free_zone(&self, z: NonNull<u8>) {
        self.zones
            .fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: allocated above with `ZONE`.
        unsafe { dealloc(z.as_ptr(), ZONE) }
    }
    fn alloc_large(&self, layout: Layout, _: bool) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: non-zero sizes only (the slab refuses zero).
        NonNull::new(unsafe { alloc(layout) }).map(|p| (p, false))
    }
    unsafe fn free_large(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: allocated above with `layout`.
        unsafe { dealloc(p.as_ptr(), layout) }
    }
    unsafe fn realloc_large(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        _: bool,
    ) -> Option<NonNull<u8>> {
        // SAFETY: allocated above with `old` (the caller's contract); `new`
        // has its alignment and a non-zero size.
        NonNull::new(unsafe { realloc(p.as_ptr(), old, new.size()) })
    }
}

fn pages(max: usize) -> TestPages {
    TestPages {
        zones: core::sync::atomic::AtomicUsize::new(0),
        max,
    }
}

/// CPU `n`, in a single-threaded test: nothing else uses it.
struct On(usize);
// SAFETY: single-threaded tests; one index at a time.
unsafe impl CpuContext for On {
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        f(self.0)
    }
    fn domain(&self) -> crate::Domain {
        static ID: crate::DomainId = crate::DomainId::new();
        ID.domain()
    }
}

fn l(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn local_alloc_free_reuses_chunks_lifo() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(4), 1);
    let a = s.alloc(&On(0), l(24, 8), &T, Flags::NONE).unwrap();
    let b = s.alloc(&On(0), l(24, 8), &T, Flags::NONE).unwrap();
    assert_ne!(a, b);
    // SAFETY: allocated above with this layout.
    unsafe { s.free(&On(0), a, l(24, 8), &T) };
    let c = s.alloc(&On(0), l(24, 8), &T, Flags::NONE).unwrap();
    assert_eq!(a, c, "the last freed chunk comes back first");
    // SAFETY: as above.
    unsafe {
        s.free(&On(0), b, l(24, 8), &T);
        s.free(&On(0), c, l(24, 8), &T);
    }
    assert_eq!(T.stats().in_use, 0);
    s.check(&On(0)).unwrap();
}

#[test]
fn remote_frees_of_a_full_zone_come_back_to_the_owner() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(8), 2);
    let class_size = CHUNK[crate::class::class_of(4096)];
    let per_zone = (ZONE_SIZE - 4096) / class_size; // header rounded to a page
                                                    // Fill a zone on CPU 0 completely, and one more chunk.
    let ps: Vec<_> = (0..=per_zone)
        .map(|_| s.alloc(&On(0), l(4096, 8), &T, Flags::NONE).unwrap())
        .collect();
    let used = s.check(&On(0)).unwrap().zones;
    assert_eq!(used, 2);
    // CPU 1 frees all of the first zone: remote frees to a full zone queue
    // it for its owner.
    for p in &ps[..per_zone] {
        // SAFETY: allocated above.
        unsafe { s.free(&On(1), *p, l(4096, 8), &T) };
    }
    s.check(&On(0)).unwrap();
    // CPU 0 allocates again: the freed chunks come back before any new zone.
    let again: Vec<_> = (0..per_zone)
        .map(|_| s.alloc(&On(0), l(4096, 8), &T, Flags::NONE).unwrap())
        .collect();
    assert_eq!(s.check(&On(0)).unwrap().zones, 2, "no new zone was needed");
    for p in again.iter().chain(&ps[per_zone..]) {
        // SAFETY: allocated above, freed once.
        unsafe { s.free(&On(0), *p, l(4096, 8), &T) };
    }
    s.reclaim(&On(0));
    assert_eq!(T.stats().in_use, 0);
    assert_eq!(T.stats().bytes, 0);
}

#[test]
fn exhaustion_is_an_error_and_the_slab_works_after() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(1), 1);
    let mut ps = Vec::new();
    let err = loop {
        match s.alloc(&On(0), l(2000, 8), &T, Flags::NONE) {
            Ok(p) => ps.push(p),
            Err(e) => break e,
        }
    };
    assert_eq!(err, SlabError::Exhausted);
    assert!(!ps.is_empty());
    let p = ps.pop().unwrap();
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), p, l(2000, 8), &T) };
    let q = s.alloc(&On(0), l(2000, 8), &T, Flags::NONE).unwrap();
    assert_eq!(p, q);
    ps.push(q);
    for p in ps {
        // SAFETY: allocated above.
        unsafe { s.free(&On(0), p, l(2000, 8), &T) };
    }
    s.check(&On(0)).unwrap();
}

#[test]
fn zero_fill_of_a_reused_chunk() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(2), 1);
    let p = s.alloc(&On(0), l(64, 8), &T, Flags::NONE).unwrap();
    // SAFETY: 64 bytes of ours.
    unsafe { p.as_ptr().write_bytes(0xAB, 64) };
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), p, l(64, 8), &T) };
    let q = s.alloc(&On(0), l(64, 8), &T, Flags::ZERO).unwrap();
    assert_eq!(p, q);
    // SAFETY: 64 bytes of ours.
    assert!(unsafe { core::slice::from_raw_parts(q.as_ptr(), 64) }
        .iter()
        .all(|&b| b == 0));
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), q, l(64, 8), &T) };
}

#[test]
fn realloc_keeps_contents_across_classes() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(4), 1);
    let mut p = s.alloc(&On(0), l(10, 1), &T, Flags::NONE).unwrap();
    let mut size = 10;
    // SAFETY: our block of `size` bytes throughout.
    unsafe {
        for i in 0..10u8 {
            p.as_ptr().add(i as usize).write(i);
        }
        for new in [12, 100, 3000, 20_000, 50] {
            p = s
                .realloc(&On(0), p, l(size, 1), new, &T, Flags::NONE)
                .unwrap();
            size = new;
            for i in 0..10u8 {
                assert_eq!(p.as_ptr().add(i as usize).read(), i);
            }
        }
        s.free(&On(0), p, l(size, 1), &T);
    }
    assert_eq!(T.stats().in_use, 0);
}

#[test]
fn large_realloc_goes_through_the_page_source_and_is_accounted() {
    static T: MallocType = MallocType::new("grow");
    let s = Slab::new(pages(4), 1);
    let (a, b) = (l(20_000, 8), l(100_000, 8));
    let p = s.alloc(&On(0), a, &T, Flags::NONE).unwrap();
    // SAFETY: `p` is a live block of `a.size()` bytes.
    unsafe { p.as_ptr().write_bytes(5, a.size()) };
    // SAFETY: `p` came from `s` with `a` and `T`.
    let q = unsafe { s.realloc(&On(0), p, a, b.size(), &T, Flags::NONE) }.unwrap();
    // SAFETY: `q` holds `p`'s bytes.
    assert!(unsafe { core::slice::from_raw_parts(q.as_ptr(), a.size()) }
        .iter()
        .all(|&x| x == 5));
    assert_eq!((T.stats().in_use, T.stats().bytes), (1, 102_400));
    // SAFETY: `q` is live with `b`.
    unsafe { s.free(&On(0), q, b, &T) };
    assert_eq!((T.stats().in_use, T.stats().bytes), (0, 0));
}

#[test]
fn type_limit_is_an_error() {
    static T: MallocType = MallocType::with_limit("limited", 1000);
    let s = Slab::new(pages(2), 1);
    let a = s.alloc(&On(0), l(512, 8), &T, Flags::NONE).unwrap();
    assert_eq!(
        s.alloc(&On(0), l(512, 8), &T, Flags::NONE),
        Err(SlabError::LimitExceeded { ty: "limited" })
    );
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), a, l(512, 8), &T) };
    let b = s.alloc(&On(0), l(512, 8), &T, Flags::NONE).unwrap();
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), b, l(512, 8), &T) };
}

#[cfg(debug_assertions)]
#[test]
fn double_free_is_caught_in_debug_builds() {
    static T: MallocType = MallocType::new("t");
    let s = Slab::new(pages(2), 1);
    let p = s.alloc(&On(0), l(32, 8), &T, Flags::NONE).unwrap();
    let keep = s.alloc(&On(0), l(32, 8), &T, Flags::NONE).unwrap();
    // SAFETY: allocated above.
    unsafe { s.free(&On(0), p, l(32, 8), &T) };
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: deliberately wrong: the second free must be refused
        // before it touches anything.
        unsafe { s.free(&On(0), p, l(32, 8), &T) }
    }))
    .expect_err("double free accepted");
    let msg = err.downcast_ref::<std::string::String>().unwrap();
    assert!(msg.contains("double free"), "{msg}");
    // A free with the wrong size class is refused too.
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: deliberately wrong, refused before any change.
        unsafe { s.free(&On(0), keep, l(200, 8), &T) }
    }))
    .expect_err("wrong-size free accepted");
    let msg = err.downcast_ref::<std::string::String>().unwrap();
    assert!(msg.contains("size class"), "{msg}");
    // SAFETY: the right layout this time.
    unsafe { s.free(&On(0), keep, l(32, 8), &T) };
    s.check(&On(0)).unwrap();
}

mod objcache {
    use super::{On, TestPages};
    use crate::objcache::{ObjCache, ObjCacheError, SlabSource};
    use crate::{MallocType, Slab};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CTORS: AtomicUsize = AtomicUsize::new(0);
    static DTORS: AtomicUsize = AtomicUsize::new(0);

    struct Obj {
        v: [u64; 4],
    }

    fn make() -> Obj {
        CTORS.fetch_add(1, Ordering::Relaxed);
        Obj { v: [7; 4] }
    }

    fn unmake(o: &mut Obj) {
        assert_eq!(o.v, [7; 4]);
        DTORS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn constructor_runs_once_per_object_and_objects_move_between_cpus() {
        static T: MallocType = MallocType::new("objcache");
        let slab = Slab::new(super::pages(8), 2);
        let c: ObjCache<Obj, _, 4> = ObjCache::new(
            SlabSource {
                slab: &slab,
                ty: &T,
            },
            2,
            0,
            make,
            Some(unmake),
        );
        let before = CTORS.load(Ordering::Relaxed);
        // Many get/put pairs on one CPU: one object.
        for _ in 0..1000 {
            let o = c.get(&On(0)).unwrap();
            // SAFETY: from `get`, given back once.
            unsafe { c.put(&On(0), o) };
        }
        assert_eq!(c.stats().constructed, 1);
        // Ten objects out on CPU 0, back on CPU 1 (through its magazines and
        // the depot), then out again on CPU 0: no new construction.
        let os: std::vec::Vec<_> = (0..10).map(|_| c.get(&On(0)).unwrap()).collect();
        for o in &os {
            // SAFETY: as above.
            unsafe { c.put(&On(1), *o) };
        }
        // CPU 1 keeps two magazines (up to 2 x 4 objects); a full one went
        // to the depot, where CPU 0 finds it.
        let again: std::vec::Vec<_> = (0..10).map(|_| c.get(&On(0)).unwrap()).collect();
        let moved = again.iter().filter(|o| os.contains(o)).count();
        assert!(moved >= 4, "a full magazine crossed CPUs: {moved}");
        let st = c.stats();
        assert!(st.constructed <= 10 + 2 * 4, "{st:?}");
        assert!(st.depot_hits > 0);
        for o in again {
            // SAFETY: as above.
            unsafe { c.put(&On(0), o) };
        }
        let built = CTORS.load(Ordering::Relaxed) - before;
        assert_eq!(built as u64, c.stats().constructed);
        c.reclaim(&On(0));
        c.reclaim(&On(1));
        let st = c.stats();
        assert_eq!(st.live, 0, "{st:?}");
        assert_eq!(st.destroyed, st.constructed);
        assert_eq!(T.stats().in_use, 0, "every object and magazine went back");
    }

    #[test]
    fn the_limit_is_an_error_and_a_put_makes_room() {
        static T: MallocType = MallocType::new("objcache-limit");
        let slab = Slab::new(super::pages(4), 1);
        let c: ObjCache<Obj, _, 2> = ObjCache::new(
            SlabSource {
                slab: &slab,
                ty: &T,
            },
            1,
            3,
            make,
            None,
        );
        let os: std::vec::Vec<_> = (0..3).map(|_| c.get(&On(0)).unwrap()).collect();
        assert_eq!(c.get(&On(0)).err(), Some(ObjCacheError::LimitReached));
        // SAFETY: from `get`.
        unsafe { c.put(&On(0), os[0]) };
        let o = c.get(&On(0)).unwrap();
        assert_eq!(o, os[0]);
        for o in [o, os[1], os[2]] {
            // SAFETY: from `get`, once each.
            unsafe { c.put(&On(0), o) };
        }
        c.reclaim(&On(0));
        assert_eq!(c.stats().live, 0);
        assert_eq!(T.stats().in_use, 0);
    }

    #[test]
    fn exhaustion_of_the_source_is_an_error() {
        static T: MallocType = MallocType::new("objcache-exhaust");
        let slab = Slab::new(
            TestPages {
                zones: Default::default(),
                max: 0,
            },
            1,
        );
        let c: ObjCache<Obj, _, 2> = ObjCache::new(
            SlabSource {
                slab: &slab,
                ty: &T,
            },
            1,
            0,
            make,
            None,
        );
        assert_eq!(c.get(&On(0)).err(), Some(ObjCacheError::Exhausted));
    }
}
