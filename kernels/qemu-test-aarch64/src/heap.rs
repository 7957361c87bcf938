//! A bump allocator over a static region: the test kernel allocates the
//! lwkt machine, rings and leaked ports once and frees almost nothing.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP: usize = 16 << 20;

#[repr(C, align(4096))]
struct Region([u8; HEAP]);

static mut REGION: Region = Region([0; HEAP]);
static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Bump;

// SAFETY: every block is a distinct, suitably aligned range of `REGION`
// handed out once (the offset only grows); dealloc leaks.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let base = core::ptr::addr_of_mut!(REGION) as usize;
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(l.align()) - base;
            let end = start + l.size();
            if end > HEAP {
                return core::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

/// Bytes handed out so far.
pub fn used() -> usize {
    NEXT.load(Ordering::Relaxed)
}
