//! A bump allocator over the RAM above the kernel image: the test kernel
//! allocates the lwkt machine, its rings (ncpus² of them: about 560 MiB at
//! 255 CPUs), thread stacks and leaked ports once and frees almost
//! nothing. The region comes from the PVH start info's memory map
//! ([`init`]), so it grows with the guest's `-m`.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Start and end of the heap (0 and 0 before [`init`]: allocations fail).
static BASE: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
/// Offset of the first free byte from `BASE`.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The identity map's cacheable part ends here (3-4 GiB is mapped
/// uncached for the local APIC: boot.rs).
const CACHEABLE_END: u64 = 3 << 30;

extern "C" {
    /// The end of the kernel image, BSS included (linker.ld).
    static __kernel_end: u8;
}

/// Take the RAM above the kernel image, up to the end of its memory-map
/// entry (or 3 GiB), as the heap. Returns the heap's size in bytes.
///
/// # Safety
/// Once, on the BSP before anything allocates; `info` is the physical
/// address QEMU's PVH entry passed in EBX (identity mapped), and nothing
/// else uses the RAM above the kernel image.
pub unsafe fn init(info: usize) -> Result<usize, &'static str> {
    let image_end = core::ptr::addr_of!(__kernel_end) as u64;
    let start = image_end.next_multiple_of(2 << 20);
    // SAFETY: caller; Xen's `hvm_start_info` layout (version 1 and later
    // carry the memory map: its address at byte 40, its entry count at 48;
    // each entry is an address, a size, a type (1 = RAM) and a reserved
    // word).
    let end = unsafe {
        let magic = (info as *const u32).read();
        let version = ((info + 4) as *const u32).read();
        if magic != 0x336e_c578 || version < 1 {
            return Err("no PVH memory map (start info version 0)");
        }
        let map = ((info + 40) as *const u64).read() as usize;
        let n = ((info + 48) as *const u32).read() as usize;
        (0..n)
            .map(|i| {
                let e = map + 24 * i;
                let addr = (e as *const u64).read();
                let size = ((e + 8) as *const u64).read();
                let kind = ((e + 16) as *const u32).read();
                (addr, addr.saturating_add(size), kind)
            })
            .find(|&(a, e, kind)| kind == 1 && a <= image_end && image_end < e)
            .map(|(_, e, _)| e.min(CACHEABLE_END))
            .ok_or("the kernel image is in no RAM entry of the memory map")?
    };
    if end <= start {
        return Err("no RAM above the kernel image");
    }
    BASE.store(start as usize, Ordering::Relaxed);
    END.store(end as usize, Ordering::Release);
    Ok((end - start) as usize)
}

struct Bump;

// SAFETY: every block is a distinct, suitably aligned range of the heap
// region (RAM above the kernel image that nothing else uses: `init`'s
// contract) handed out once (the offset only grows); dealloc leaks.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let end = END.load(Ordering::Acquire);
        let base = BASE.load(Ordering::Relaxed);
        let len = end - base;
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(l.align()) - base;
            let Some(stop) = start.checked_add(l.size()).filter(|&s| s <= len) else {
                return core::ptr::null_mut();
            };
            match NEXT.compare_exchange_weak(cur, stop, Ordering::Relaxed, Ordering::Relaxed) {
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
