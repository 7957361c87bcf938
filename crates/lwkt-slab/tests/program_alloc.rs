//! `GlobalSlab` as a program's allocator, at its edges: alignments above a
//! page, an arena that grows past its first reservation, memory given back
//! to the host after frees, and more threads than slots. This test binary
//! runs on a `GlobalSlab` with a small first reservation (64 MiB) and 4
//! slots. The tests take turns (`ONE_AT_A_TIME`): they read the
//! allocator's counters, which the others would move.

mod common;

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::sync::mpsc;
use std::sync::Mutex;

use lwkt_slab::{GlobalSlab, PageStats, SPAN_CACHE_BYTES, ZONE_SIZE};

const FIRST: usize = 64 << 20;

#[global_allocator]
static ALLOC: GlobalSlab = GlobalSlab::new(FIRST, 4).thread_cached(&ALLOC);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn pages() -> PageStats {
    ALLOC.slab().page_source().stats()
}

#[repr(C, align(8192))]
struct Page2([u8; 100]);

#[test]
fn alignments_above_a_page_are_served() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A boxed type aligned to 8 KiB (`Box::new` aborted on null before).
    let boxes: Vec<Box<Page2>> = (0..64u8).map(|i| Box::new(Page2([i; 100]))).collect();
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(&**b as *const Page2 as usize % 8192, 0);
        assert!(b.0.iter().all(|&x| x == i as u8));
    }
    drop(boxes);
    for align in [8192, 64 << 10, 1 << 20, 16 << 20] {
        for size in [1, 100, 5000, 20_000, 3 << 20] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(l) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: `p` is a live block of `size` bytes.
            unsafe {
                p.write_bytes(0xA5, size);
                assert_eq!(*p.add(size - 1), 0xA5);
            }
            // Grown and shrunk, the block keeps its alignment and bytes.
            let mut q = p;
            let mut old = l;
            for new_size in [size * 2 + 1, 40_000, size.max(2) / 2] {
                // SAFETY: `q` is live with `old`; sizes are non-zero.
                q = unsafe { realloc(q, old, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0, "realloc to {new_size} align {align}");
                let kept = old.size().min(new_size);
                // SAFETY: at least `kept` bytes are live.
                unsafe {
                    assert_eq!(*q, 0xA5);
                    assert_eq!(*q.add(kept - 1), 0xA5);
                    q.write_bytes(0xA5, new_size);
                }
                old = Layout::from_size_align(new_size, align).unwrap();
            }
            // SAFETY: freed once, with its layout.
            unsafe { dealloc(q, old) };
        }
    }
}

#[test]
fn large_blocks_grow_and_shrink_keeping_their_bytes() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Page-aligned spans: kept when the class holds, copied into a cached
    // span, or moved with `mremap`; twice, so the second round finds the
    // first round's spans cached.
    for round in 0..2u64 {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..(8u64 << 20) / 8 {
            v.push(i ^ round);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ round));
        v.truncate(5000);
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ round));
        let mut s = String::new();
        for i in 0..200_000u32 {
            s.push(char::from(b'a' + (i % 26) as u8));
        }
        assert!(s
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'a' + (i % 26) as u8));
    }
    for align in [8, PAGE] {
        let l = Layout::from_size_align(20_000, align).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null() && p as usize % align == 0);
        // SAFETY: `p` is live with `l`; each step keeps what it copies.
        unsafe {
            p.write_bytes(7, 20_000);
            let q = realloc(p, l, 5 << 20);
            assert!(!q.is_null() && q as usize % align == 0);
            assert_eq!((*q, *q.add(19_999)), (7, 7));
            q.add(20_000).write_bytes(8, (5 << 20) - 20_000);
            let r = realloc(q, Layout::from_size_align(5 << 20, align).unwrap(), 30_000);
            assert!(!r.is_null() && r as usize % align == 0);
            assert_eq!((*r, *r.add(19_999), *r.add(29_999)), (7, 7, 8));
            dealloc(r, Layout::from_size_align(30_000, align).unwrap());
        }
    }
}

const PAGE: usize = 4096;

#[test]
fn the_arena_grows_past_its_first_reservation() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 256 MiB of small blocks (zones) on a 64 MiB first reservation, and
    // large ones besides.
    let small: Vec<Box<[u64]>> = (0..(256usize << 20) / 4096)
        .map(|i| vec![i as u64; 4000 / 8].into_boxed_slice())
        .collect();
    let large: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
    let st = pages();
    assert!(
        st.reserved > 4 * FIRST,
        "zone regions reserved: {} bytes",
        st.reserved
    );
    assert!(st.in_use >= (256 << 20) + (64 << 20), "{st:?}");
    for (i, b) in small.iter().enumerate() {
        assert!(b[0] == i as u64 && b[b.len() - 1] == i as u64);
    }
    for (i, v) in large.iter().enumerate() {
        assert!(v.iter().all(|&x| x == i as u8));
    }
}

/// Resident set size, from `/proc/self/statm` (pages).
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn freed_memory_goes_back_to_the_host() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (before, rss_before) = (pages(), rss_bytes());
    // 128 MiB of small blocks and 128 MiB of large ones, all touched.
    let small: Vec<Box<[u8]>> = (0..(128usize << 20) / 2048)
        .map(|_| vec![1u8; 2000].into_boxed_slice())
        .collect();
    let large: Vec<Vec<u8>> = (0..32).map(|_| vec![1u8; 4 << 20]).collect();
    let (held, rss_held) = (pages(), rss_bytes());
    assert!(held.mapped() >= before.mapped() + (250 << 20), "{held:?}");
    drop(small);
    drop(large);
    ALLOC.reclaim();
    let (after, rss_after) = (pages(), rss_bytes());
    // What stays mapped: the caches (spans, `HOT_ZONES` zones, each slot's
    // few zones); everything else went back.
    let slack = SPAN_CACHE_BYTES + 4 * 72 * ZONE_SIZE + (8 << 20);
    assert!(
        after.mapped() <= before.mapped() + slack,
        "before {before:?}, held {held:?}, after {after:?}"
    );
    assert!(after.released > before.released, "{after:?}");
    // The host agrees, give or take (other tests' threads are idle).
    assert!(
        rss_held > rss_before + (200 << 20),
        "{rss_before} -> {rss_held}"
    );
    assert!(
        rss_after < rss_held - (150 << 20),
        "RSS {rss_before} -> {rss_held} -> {rss_after}"
    );
}

#[test]
fn more_threads_than_slots_churn_and_lose_nothing() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const THREADS: usize = 32;
    let before = ALLOC.stats().in_use;
    common::within_seconds(300, "32 threads on 4 slots", || {
        // A ring: each thread hands boxes to the next, which frees them
        // (remote frees across slots).
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
            .map(|_| mpsc::channel::<Vec<Box<[u32]>>>())
            .unzip();
        let hs: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(t, rx)| {
                let tx = txs[(t + 1) % THREADS].clone();
                std::thread::spawn(move || {
                    let mut sum = 0u64;
                    for round in 0..200u32 {
                        let batch: Vec<Box<[u32]>> = (0..50u32)
                            .map(|i| {
                                let n = 1 + ((round * 31 + i * 17) as usize % 5000);
                                vec![t as u32 ^ i; n].into_boxed_slice()
                            })
                            .collect();
                        let mut s = String::new();
                        for c in 0..(round % 64) {
                            s.push(char::from(b'a' + (c % 26) as u8));
                        }
                        assert_eq!(s.len() as u32, round % 64);
                        tx.send(batch).unwrap();
                        while let Ok(got) = rx.try_recv() {
                            sum += got.iter().map(|b| b.len() as u64).sum::<u64>();
                        }
                    }
                    drop(tx);
                    // The ring closes once every thread dropped its sender.
                    for got in rx {
                        sum += got.iter().map(|b| b.len() as u64).sum::<u64>();
                    }
                    sum
                })
            })
            .collect();
        drop(txs);
        let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        // Every box was received and freed once: 32 threads' batches.
        let per_thread: u64 = (0..200u32)
            .flat_map(|round| (0..50u32).map(move |i| 1 + ((round * 31 + i * 17) % 5000) as u64))
            .sum();
        assert_eq!(total, THREADS as u64 * per_thread);
    });
    let after = ALLOC.stats().in_use;
    assert!(
        (after - before).abs() < 64,
        "objects in use {before} -> {after}"
    );
    for _ in 0..4 {
        ALLOC.reclaim();
        ALLOC.slab().check(ALLOC.slots()).unwrap();
    }
}
