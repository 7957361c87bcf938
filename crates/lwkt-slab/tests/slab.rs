//! The slab on the hosted backend: every size class, alignment, zero fill,
//! large blocks, exhaustion, remote frees from every CPU, statistics, and
//! bad input.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;
use lwkt_slab::{
    Flags, HostedPages, MallocType, PageSource, Slab, SlabError, PAGE_SIZE, ZONE_LIMIT, ZONE_SIZE,
};

fn l(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Addresses cross threads as integers.
fn nn(a: usize) -> NonNull<u8> {
    NonNull::new(a as *mut u8).unwrap()
}

#[test]
fn every_size_class_and_alignment_up_to_a_page() {
    static T: MallocType = MallocType::new("classes");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(256 << 20), 1);
    Machine::new(1).unwrap().run(|cur| {
        let mut live = Vec::new();
        let mut size = 1;
        while size < 2 * ZONE_LIMIT {
            let mut align = 1;
            while align <= PAGE_SIZE {
                let lay = l(size, align);
                let p = S.alloc(cur, lay, &T, Flags::NONE).unwrap();
                assert_eq!(p.as_ptr() as usize % align, 0, "size {size} align {align}");
                // SAFETY: `size` bytes of ours.
                unsafe { p.as_ptr().write_bytes((size % 251) as u8, size) };
                live.push((p, lay));
                align *= 4;
            }
            size = if size < 256 { size + 7 } else { size * 5 / 4 };
        }
        for (p, lay) in &live {
            // SAFETY: still ours; nobody else wrote it.
            let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), lay.size()) };
            assert!(
                bytes.iter().all(|&b| b == (lay.size() % 251) as u8),
                "overlap at size {}",
                lay.size()
            );
        }
        for (p, lay) in live {
            // SAFETY: allocated above with `lay`.
            unsafe { S.free(cur, p, lay, &T) };
        }
        S.reclaim(cur);
        S.check(cur).unwrap();
    });
    let st = T.stats();
    assert_eq!((st.in_use, st.bytes), (0, 0));
    assert!(st.total > 0 && st.high_water > 0);
}

#[test]
fn zero_fill_and_large_blocks() {
    static T: MallocType = MallocType::new("zero");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 1);
    Machine::new(1).unwrap().run(|cur| {
        for size in [8, 100, 4000, ZONE_LIMIT, 100_000] {
            let lay = l(size, 8);
            let p = S.alloc(cur, lay, &T, Flags::NONE).unwrap();
            // SAFETY: ours.
            unsafe { p.as_ptr().write_bytes(0xEE, size) };
            // SAFETY: allocated above.
            unsafe { S.free(cur, p, lay, &T) };
            let q = S.alloc(cur, lay, &T, Flags::ZERO).unwrap();
            // SAFETY: ours.
            let b = unsafe { core::slice::from_raw_parts(q.as_ptr(), size) };
            assert!(b.iter().all(|&x| x == 0), "size {size} not zeroed");
            // SAFETY: allocated above.
            unsafe { S.free(cur, q, lay, &T) };
        }
    });
    assert_eq!(T.stats().in_use, 0);
}

#[test]
fn exhaustion_is_an_error_and_the_allocator_works_after() {
    static T: MallocType = MallocType::new("exhaust");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(4 * ZONE_SIZE), 2);
    Machine::new(2).unwrap().run(|cur| {
        let lay = l(1000, 8);
        let mut ps = Vec::new();
        let err = loop {
            match S.alloc(cur, lay, &T, Flags::NONE) {
                Ok(p) => ps.push(p),
                Err(e) => break e,
            }
        };
        assert_eq!(err, SlabError::Exhausted);
        assert_eq!(
            S.alloc(cur, l(50_000, 8), &T, Flags::NOWAIT),
            Err(SlabError::Exhausted)
        );
        assert!(ps.len() > 100);
        // Free half from another CPU: they come back to us.
        let half: Vec<usize> = ps
            .drain(..ps.len() / 2)
            .map(|p| p.as_ptr() as usize)
            .collect();
        let n = half.len();
        let t = cur
            .spawn_on(CpuId::new(1), move |me| {
                for a in half {
                    // SAFETY: allocated on CPU 0 with `lay`, freed once.
                    unsafe { S.free(me, nn(a), lay, &T) };
                }
            })
            .unwrap();
        cur.join(&t);
        for _ in 0..n {
            ps.push(
                S.alloc(cur, lay, &T, Flags::NONE)
                    .expect("remote frees came back"),
            );
        }
        for p in ps {
            // SAFETY: allocated above.
            unsafe { S.free(cur, p, lay, &T) };
        }
        S.check(cur).unwrap();
    });
    assert_eq!(T.stats().in_use, 0);
}

/// Every CPU frees a share of what CPU 0 allocated; after CPU 0 reclaims,
/// every chunk is back: all of its zones are whole again and the page
/// source has them all back.
#[test]
fn remote_frees_from_every_cpu_come_back() {
    const N: u32 = 4;
    static T: MallocType = MallocType::new("remote");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(256 << 20), N as usize);
    Machine::new(N as usize).unwrap().run(|cur| {
        let sizes = [16usize, 48, 200, 1000, 3000];
        let mut all: Vec<(usize, Layout)> = Vec::new();
        for i in 0..20_000usize {
            let lay = l(sizes[i % sizes.len()], 8);
            let p = S.alloc(cur, lay, &T, Flags::NONE).unwrap();
            all.push((p.as_ptr() as usize, lay));
        }
        let before = S.page_source().used();
        let shares: Vec<Vec<(usize, Layout)>> = (0..N as usize)
            .map(|c| all.iter().copied().skip(c).step_by(N as usize).collect())
            .collect();
        let hs: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(c, share)| {
                cur.spawn_on(CpuId::new(c as u32), move |me| {
                    for (a, lay) in share {
                        // SAFETY: allocated on CPU 0, freed once.
                        unsafe { S.free(me, nn(a), lay, &T) };
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
        assert_eq!(T.stats().in_use, 0, "every free accounted");
        S.reclaim(cur);
        let u = S.check(cur).unwrap();
        assert_eq!(u.cached_zones, 0);
        assert!(
            u.zones <= sizes.len(),
            "at most one whole zone per class kept: {u:?}"
        );
        assert!(
            S.page_source().used() < before / 4,
            "zones went back to the page source"
        );
    });
    let st = T.stats();
    assert_eq!((st.in_use, st.bytes, st.total), (0, 0, 20_000));
}

/// Threads on every CPU allocate, hand blocks to each other through a
/// shared list, and free what they receive; statistics return to zero.
#[test]
fn statistics_return_to_zero_after_a_mixed_workload() {
    const N: u32 = 4;
    static A: MallocType = MallocType::new("a");
    static B: MallocType = MallocType::new("b");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(256 << 20), N as usize);
    let pool: Arc<Mutex<Vec<(usize, Layout, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    Machine::new(N as usize).unwrap().run(move |cur| {
        let hs: Vec<_> = (0..N)
            .map(|c| {
                let pool = pool.clone();
                cur.spawn_on(CpuId::new(c), move |me| {
                    let mut x = 0x9E37_79B9u64 + u64::from(c);
                    for i in 0..5000usize {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let size = 1 + (x % 3000) as usize;
                        let ty_a = x & 1 == 0;
                        let lay = l(size, 1 << (x >> 60 & 3));
                        let p = S
                            .alloc(me, lay, if ty_a { &A } else { &B }, Flags::NONE)
                            .unwrap();
                        pool.lock().unwrap().push((p.as_ptr() as usize, lay, ty_a));
                        if i % 3 != 0 {
                            let got = pool.lock().unwrap().pop();
                            if let Some((a, lay, ty_a)) = got {
                                // SAFETY: allocated by some CPU, freed once.
                                unsafe { S.free(me, nn(a), lay, if ty_a { &A } else { &B }) };
                            }
                        }
                        if i % 500 == 0 {
                            me.yield_now();
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
        for (a, lay, ty_a) in pool.lock().unwrap().drain(..) {
            // SAFETY: as above.
            unsafe { S.free(cur, nn(a), lay, if ty_a { &A } else { &B }) };
        }
        for c in 0..N {
            let t = cur
                .spawn_on(CpuId::new(c), |me| {
                    S.reclaim(me);
                    S.check(me).unwrap();
                })
                .unwrap();
            cur.join(&t);
        }
    });
    for t in [&A, &B] {
        let st = t.stats();
        assert_eq!((st.in_use, st.bytes), (0, 0), "{}", t.name());
    }
    assert_eq!(A.stats().total + B.stats().total, u64::from(N) * 5000);
}

#[test]
fn bad_requests_are_refused_and_nothing_changes() {
    static T: MallocType = MallocType::new("bad");
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(16 << 20), 1);
    Machine::new(1).unwrap().run(|cur| {
        assert_eq!(
            S.alloc(cur, l(0, 1), &T, Flags::NONE),
            Err(SlabError::ZeroSize)
        );
        // Alignments above a page are large blocks of the page source.
        let a = S.alloc(cur, l(64, 2 * PAGE_SIZE), &T, Flags::NONE).unwrap();
        assert_eq!(a.as_ptr() as usize % (2 * PAGE_SIZE), 0);
        // SAFETY: allocated above with this layout.
        unsafe { S.free(cur, a, l(64, 2 * PAGE_SIZE), &T) };
        let p = S.alloc(cur, l(8, 8), &T, Flags::NONE).unwrap();
        // SAFETY: allocated above.
        let r = unsafe { S.realloc(cur, p, l(8, 8), usize::MAX - 4, &T, Flags::NONE) };
        assert_eq!(r, Err(SlabError::SizeOverflow));
        // SAFETY: the realloc failed, so `p` is still ours.
        unsafe { S.free(cur, p, l(8, 8), &T) };
    });
    assert_eq!(T.stats().in_use, 0);
    assert!(
        HostedPages::new(1).alloc_zone(false).is_some(),
        "capacity rounds up to a zone"
    );
}
