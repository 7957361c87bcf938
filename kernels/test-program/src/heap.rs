//! The test kernels' heap: a bump allocator over one region of RAM, which
//! each kernel finds in what its firmware describes (x86-64: the PVH
//! start info's memory map; aarch64: the device tree's `/memory` node)
//! and hands to [`Bump::init`]. The kernels allocate the lwkt machine, its
//! rings (ncpus² of them: about 560 MiB at 256 CPUs), thread stacks and
//! leaked ports once and free almost nothing, so nothing is ever given
//! back.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The heap's region: from `image_end` (the end of the kernel image,
/// rounded up to 2 MiB) to the end of the RAM range (`start..end`, as
/// the firmware lists them) that holds the image, but no further than
/// `mapped_end` (where the kernel's identity map of cacheable RAM ends).
pub fn ram_above(
    image_end: usize,
    ram: impl IntoIterator<Item = (usize, usize)>,
    mapped_end: usize,
) -> Result<(usize, usize), &'static str> {
    let end = ram
        .into_iter()
        .find(|&(a, e)| a <= image_end && image_end < e)
        .map(|(_, e)| e.min(mapped_end))
        .ok_or("the kernel image is in no RAM range the firmware lists")?;
    let start = image_end.next_multiple_of(2 << 20);
    if end <= start {
        return Err("no RAM above the kernel image");
    }
    Ok((start, end))
}

/// A bump allocator; a kernel makes it its `#[global_allocator]`.
/// Allocations fail (null) until [`init`](Bump::init) gives it a region.
#[derive(Debug)]
pub struct Bump {
    /// Start of the region (0 before `init`).
    base: AtomicUsize,
    /// Length of the region (0 before `init`: every allocation fails).
    len: AtomicUsize,
    /// Offset of the first free byte from `base`.
    next: AtomicUsize,
}

impl Bump {
    /// An allocator with no region yet.
    pub const fn new() -> Bump {
        Bump {
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Allocate from `start..end` from now on (for instance what
    /// [`ram_above`] found). Returns the region's size in bytes.
    ///
    /// # Safety
    /// Once, before anything allocates; `start..end` is mapped, writable
    /// RAM that nothing else uses, for ever.
    pub unsafe fn init(&self, (start, end): (usize, usize)) -> usize {
        let len = end.saturating_sub(start);
        self.base.store(start, Ordering::Relaxed);
        // Release: an allocation that sees the length sees the base.
        self.len.store(len, Ordering::Release);
        len
    }

    /// Bytes handed out so far.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

impl Default for Bump {
    fn default() -> Self {
        Bump::new()
    }
}

// SAFETY: every block is a distinct, suitably aligned range of the region
// (RAM that nothing else uses: `init`'s contract) handed out once (the
// offset only grows, by compare-exchange); dealloc leaks. Before `init` the
// length is 0 and every allocation fails.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let len = self.len.load(Ordering::Acquire);
        let base = self.base.load(Ordering::Relaxed);
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(l.align()) - base;
            let Some(stop) = start.checked_add(l.size()).filter(|&s| s <= len) else {
                return core::ptr::null_mut();
            };
            match self
                .next
                .compare_exchange_weak(cur, stop, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_disjoint_and_bounded() {
        #[repr(C, align(64))]
        struct Region([u8; 256]);
        let mut r = Region([0; 256]);
        let start = r.0.as_mut_ptr() as usize;
        let b = Bump::new();
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        // SAFETY: before `init` nothing is handed out.
        assert!(unsafe { b.alloc(l(8, 8)) }.is_null(), "no region yet");
        // SAFETY: `r` outlives `b`'s use and is used for nothing else.
        assert_eq!(unsafe { b.init((start, start + 256)) }, 256);
        // SAFETY: a region is set; the blocks are only compared.
        let (x, y) = unsafe { (b.alloc(l(3, 1)), b.alloc(l(16, 16))) };
        assert_eq!(x as usize, start);
        assert_eq!(y as usize, start + 16, "aligned past the first block");
        assert_eq!(b.used(), 32);
        // SAFETY: as above.
        assert!(unsafe { b.alloc(l(256, 1)) }.is_null(), "past the end");
        assert_eq!(b.used(), 32, "a refused block takes nothing");
        // SAFETY: as above.
        assert_eq!(unsafe { b.alloc(l(224, 1)) } as usize, start + 32);
    }

    #[test]
    fn the_heap_is_the_ram_above_the_image_in_its_range() {
        const M: usize = 1 << 20;
        let ram = [(0, 640 << 10), (M, 128 * M), (4096 * M, 8192 * M)];
        assert_eq!(ram_above(3 * M + 5, ram, 3072 * M), Ok((4 * M, 128 * M)));
        assert_eq!(ram_above(3 * M, ram, 64 * M), Ok((4 * M, 64 * M)), "capped");
        assert_eq!(
            ram_above(200 * M, ram, 3072 * M),
            Err("the kernel image is in no RAM range the firmware lists")
        );
        assert_eq!(
            ram_above(127 * M, ram, 3072 * M),
            Err("no RAM above the kernel image")
        );
    }
}
