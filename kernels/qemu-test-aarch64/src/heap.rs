//! The heap: the RAM above the kernel image, found in the device tree's
//! `/memory` node ([`init`]), so it grows with the guest's `-m`; the
//! allocator is the test program's bump allocator
//! ([`lwkt_test_program::heap`]), shared with the x86-64 kernel.

use lwkt_test_program::heap::{self, Bump};

use crate::boot::RAM_MAPPED_END;

#[global_allocator]
static ALLOC: Bump = Bump::new();

extern "C" {
    /// The end of the kernel image, BSS included (linker.ld).
    static __kernel_end: u8;
}

/// Take the RAM above the kernel image, up to the end of its `/memory`
/// range (or 4 GiB, where the boot table's map of RAM ends), as the heap.
/// Returns the heap's size in bytes.
///
/// # Safety
/// Once, on the boot CPU before anything allocates; `fdt` is the device
/// tree QEMU passed (it lies below the image, at the start of RAM), and
/// nothing else uses the RAM above the kernel image.
pub unsafe fn init(fdt: &fdt::Fdt<'_>) -> Result<usize, &'static str> {
    let image_end = core::ptr::addr_of!(__kernel_end) as usize;
    let ram = fdt
        .find_node("/memory")
        .and_then(|n| n.reg())
        .ok_or("the device tree has no /memory node with a reg")?
        .filter_map(|r| {
            let start = r.starting_address as usize;
            r.size.map(|size| (start, start.saturating_add(size)))
        });
    let region = heap::ram_above(image_end, ram, RAM_MAPPED_END)?;
    // SAFETY: caller (once, before anything allocates); the RAM above the
    // image up to the end of its range is ours, identity mapped as Normal
    // cacheable memory below `RAM_MAPPED_END` (boot.rs).
    Ok(unsafe { ALLOC.init(region) })
}

/// Bytes handed out so far.
pub fn used() -> usize {
    ALLOC.used()
}
