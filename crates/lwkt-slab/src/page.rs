//! Where zones and large allocations come from: the kernel's page
//! allocator, behind a trait.
//!
//! DragonFly: `kmem_slab_alloc()` / `kmem_slab_free()` on `kernel_map`.

use core::alloc::Layout;
use core::ptr::NonNull;

/// The kernel's page allocator, as the slab needs it.
///
/// `nowait` is the caller's no-wait flag ([`Flags::NOWAIT`]): a source that
/// could block for memory must not when it is set. The slab calls these
/// methods inside the current CPU's critical section.
///
/// # Safety
/// `alloc_zone` returns blocks of [`ZONE_SIZE`] bytes aligned to
/// `ZONE_SIZE`, `alloc_large` blocks fitting `layout` (its size and its
/// alignment, which may be above a page), and `realloc_large` blocks
/// fitting `new` that hold the old block's bytes, each exclusively
/// the caller's until given back; neither overlaps anything else handed
/// out.
///
/// [`Flags::NOWAIT`]: crate::Flags::NOWAIT
/// [`ZONE_SIZE`]: crate::ZONE_SIZE
pub unsafe trait PageSource: Sync {
    /// A zone-sized, zone-aligned block, or `None` when out of memory.
    /// `zeroed` in the result says whether its bytes are known to be zero.
    fn alloc_zone(&self, nowait: bool) -> Option<(NonNull<u8>, bool)>;

    /// Give back a zone.
    ///
    /// # Safety
    /// `z` came from `alloc_zone` of this source and is no longer used.
    unsafe fn free_zone(&self, z: NonNull<u8>);

    /// A block for a large allocation, or `None`. `zeroed` as for zones.
    fn alloc_large(&self, layout: Layout, nowait: bool) -> Option<(NonNull<u8>, bool)>;

    /// Give back a large block.
    ///
    /// # Safety
    /// `p` came from `alloc_large(layout)` of this source and is no longer
    /// used.
    unsafe fn free_large(&self, p: NonNull<u8>, layout: Layout);

    /// Resize a large block in place or by moving its pages (`mremap`),
    /// without copying through the caller: `Some(q)` is the block for
    /// `new` (maybe `p` itself), holding `p`'s first `min(old, new)` bytes,
    /// and `p` is given up; `None` leaves `p` as it was (the slab then
    /// allocates, copies and frees). The default always says `None`.
    ///
    /// # Safety
    /// `p` came from `alloc_large(old)` (or this method with `old`) of this
    /// source and is not used by anyone else during the call; `new` has
    /// `old`'s alignment and is a large layout too.
    unsafe fn realloc_large(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        nowait: bool,
    ) -> Option<NonNull<u8>> {
        let _ = (p, old, new, nowait);
        None
    }

    /// Whether `zone` is a zone this source handed out (debug builds check
    /// every small free with it, so a stray pointer is reported rather than
    /// followed). The default trusts the caller.
    fn owns_zone(&self, zone: *const u8) -> bool {
        let _ = zone;
        true
    }
}
