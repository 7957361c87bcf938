//! The hosted allocator re-entered on one thread: a signal handler that
//! allocates and frees while the code it interrupted is inside the
//! allocator (holding its slot or the page source's lock), with one slot
//! so that the handler cannot take another. Blocks also cross between the
//! handler and the interrupted code both ways.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lwkt_slab::GlobalSlab;

#[global_allocator]
static ALLOC: GlobalSlab = GlobalSlab::new(8 << 30, 1).thread_cached(&ALLOC);

/// A block the handler made, for the main thread to check and free.
static FROM_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// A block the main thread made, for the handler to free.
static FROM_MAIN: AtomicUsize = AtomicUsize::new(0);
static RUNS: AtomicUsize = AtomicUsize::new(0);

type Small = [u8; 100];
type Mid = [u8; 3000];

extern "C" fn on_signal(_: libc::c_int) {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    // Allocate and free, small and large, growing a vector (realloc).
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(n % 700) as u64 {
        v.push(i);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    drop(v);
    let big = vec![3u8; 100_000];
    assert_eq!(big[99_999], 3);
    drop(big);
    let b = Box::into_raw(Box::new([7u8; 100])) as usize;
    let old = FROM_HANDLER.swap(b, Ordering::AcqRel);
    if old != 0 {
        // SAFETY: a `Box<Small>` nobody else has.
        drop(unsafe { Box::from_raw(old as *mut Small) });
    }
    let m = FROM_MAIN.swap(0, Ordering::AcqRel);
    if m != 0 {
        // SAFETY: a `Box<Mid>` the main thread gave up.
        let m = unsafe { Box::from_raw(m as *mut Mid) };
        assert!(m.iter().all(|&x| x == 9));
    }
}

#[test]
fn a_signal_handler_allocates_while_the_thread_is_inside_the_allocator() {
    // SAFETY: installing a handler for SIGUSR2, which nothing else in this
    // test binary uses; the handler only allocates and touches atomics.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &sa, core::ptr::null_mut()),
            0
        );
    }
    // SAFETY: `pthread_self` has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    static STOP: AtomicBool = AtomicBool::new(false);
    let before = ALLOC.stats().in_use;
    common::within_seconds(60, "re-entered allocator", || {
        let sender = std::thread::spawn(move || {
            while !STOP.load(Ordering::Relaxed) {
                // SAFETY: `me` is the test thread, alive until it joins us.
                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        let end = Instant::now() + Duration::from_secs(2);
        let mut round = 0usize;
        while Instant::now() < end || RUNS.load(Ordering::Relaxed) < 2000 {
            round += 1;
            let keep: Vec<Box<[u64]>> = (0..64)
                .map(|i| vec![i as u64; 1 + (round * 7 + i * 13) % 3000].into_boxed_slice())
                .collect();
            for (i, b) in keep.iter().enumerate() {
                assert!(b.iter().all(|&x| x == i as u64));
            }
            drop(keep);
            let h = FROM_HANDLER.swap(0, Ordering::AcqRel);
            if h != 0 {
                // SAFETY: a `Box<Small>` the handler gave up.
                let h = unsafe { Box::from_raw(h as *mut Small) };
                assert!(h.iter().all(|&x| x == 7));
            }
            let m = Box::into_raw(Box::new([9u8; 3000])) as usize;
            let old = FROM_MAIN.swap(m, Ordering::AcqRel);
            if old != 0 {
                // SAFETY: ours again; the handler did not take it.
                drop(unsafe { Box::from_raw(old as *mut Mid) });
            }
        }
        STOP.store(true, Ordering::Relaxed);
        sender.join().unwrap();
    });
    // Leave nothing behind: take back what is still exchanged.
    for (slot, is_small) in [(&FROM_HANDLER, true), (&FROM_MAIN, false)] {
        let a = slot.swap(0, Ordering::AcqRel);
        if a != 0 {
            // SAFETY: the boxes exchanged above, now nobody's.
            unsafe {
                if is_small {
                    drop(Box::from_raw(a as *mut Small));
                } else {
                    drop(Box::from_raw(a as *mut Mid));
                }
            }
        }
    }
    assert!(RUNS.load(Ordering::Relaxed) >= 2000);
    let s = ALLOC.slab();
    s.reclaim(ALLOC.slots());
    s.check(ALLOC.slots()).unwrap();
    // Within a few allocations of the test harness's own.
    let after = ALLOC.stats().in_use;
    assert!((after - before).abs() < 64, "in use {before} -> {after}");
}
