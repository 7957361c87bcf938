//! The heap: the RAM above the kernel image, found in the PVH start
//! info's memory map ([`init`]), so it grows with the guest's `-m`; the
//! allocator is the test program's bump allocator
//! ([`lwkt_test_program::heap`]), shared with the aarch64 kernel.

use lwkt_test_program::heap::{self, Bump};

#[global_allocator]
static ALLOC: Bump = Bump::new();

/// The identity map's cacheable part ends here (3-4 GiB is mapped
/// uncached for the local APIC: boot.rs).
const CACHEABLE_END: usize = 3 << 30;

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
    let image_end = core::ptr::addr_of!(__kernel_end) as usize;
    // SAFETY: caller; Xen's `hvm_start_info` layout (version 1 and later
    // carry the memory map: its address at byte 40, its entry count at 48;
    // each entry is an address, a size, a type (1 = RAM) and a reserved
    // word).
    let region = unsafe {
        let magic = (info as *const u32).read();
        let version = ((info + 4) as *const u32).read();
        if magic != 0x336e_c578 || version < 1 {
            return Err("no PVH memory map (start info version 0)");
        }
        let map = ((info + 40) as *const u64).read() as usize;
        let n = ((info + 48) as *const u32).read() as usize;
        let ram = (0..n).filter_map(|i| {
            let e = map + 24 * i;
            let addr = (e as *const u64).read() as usize;
            let size = ((e + 8) as *const u64).read() as usize;
            let kind = ((e + 16) as *const u32).read();
            (kind == 1).then_some((addr, addr.saturating_add(size)))
        });
        heap::ram_above(image_end, ram, CACHEABLE_END)?
    };
    // SAFETY: caller (once, before anything allocates); the RAM above the
    // image up to the end of its map entry is ours, identity mapped
    // (cacheable below `CACHEABLE_END`).
    Ok(unsafe { ALLOC.init(region) })
}

/// Bytes handed out so far.
pub fn used() -> usize {
    ALLOC.used()
}
