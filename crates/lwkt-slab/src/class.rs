//! Size classes: DragonFly's 72 zones, from 8-byte steps below 128 bytes to
//! 1 KiB steps below 16 KiB, so rounding wastes at most 1/8 of a chunk
//! above 128 bytes (and at most 7 bytes below).
//!
//! DragonFly: `zoneindex()`, `ZoneSize`, `ZoneLimit`, `NZONES`.

use core::alloc::Layout;

use crate::SlabError;

/// Bytes in a zone; zones are aligned to their size, so a chunk's zone is
/// its address rounded down. DragonFly picks 32–128 KiB by memory size.
pub const ZONE_SIZE: usize = 64 * 1024;

/// Requests of this size and above bypass the zones (DragonFly
/// `ZoneLimit` = `min(ZoneSize / 4, 16 KiB)`).
pub const ZONE_LIMIT: usize = 16 * 1024;

/// The page size, and the largest alignment a zone chunk has: `Slab`
/// sends requests aligned more to the page source as large blocks.
pub const PAGE_SIZE: usize = 4096;

/// Number of size classes (DragonFly `NZONES`).
pub const NZONES: usize = 72;

/// (upper bound, step, index base) per range: `index = ceil(size / step) + base`.
const RANGES: [(usize, usize, isize); 8] = [
    (128, 8, -1),
    (256, 16, 7),
    (512, 32, 15),
    (1024, 64, 23),
    (2048, 128, 31),
    (4096, 256, 39),
    (8192, 512, 47),
    (16384, 1024, 55),
];

/// Chunk size of every class.
pub(crate) const CHUNK: [usize; NZONES] = chunk_table();

const fn chunk_table() -> [usize; NZONES] {
    let mut t = [0; NZONES];
    let mut r = 0;
    while r < RANGES.len() {
        let (_, step, base) = RANGES[r];
        // The indices this range produces: sizes (lower, upper).
        let mut k = 1;
        while k <= 16 {
            let idx = k as isize + base;
            if idx >= 0 && (idx as usize) < NZONES && t[idx as usize] == 0 {
                t[idx as usize] = k * step;
            }
            k += 1;
        }
        r += 1;
    }
    t
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A chunk of class `class`.
    Small { class: usize },
    /// Straight to the page source.
    Large,
}

/// Route `layout`: refuse zero sizes and alignments above a page (which
/// `Slab::alloc` sends to the page source before it routes: tested there,
/// out of the way, they cost the hot paths nothing; a `Route::Large` for
/// them here cost a 64-byte alloc+free pair 13 instructions), round the
/// size up to the alignment, and pick the class.
#[inline]
pub(crate) fn route(layout: Layout) -> Result<Route, SlabError> {
    let (size, align) = (layout.size(), layout.align());
    if size == 0 {
        return Err(SlabError::ZeroSize);
    }
    if align > PAGE_SIZE {
        return Err(SlabError::AlignTooLarge { align });
    }
    // `Layout` guarantees size rounded up to align does not overflow isize.
    let size = (size + align - 1) & !(align - 1);
    if size >= ZONE_LIMIT {
        return Ok(Route::Large);
    }
    Ok(Route::Small {
        class: class_of(size),
    })
}

/// Whether a block of `layout` (one `alloc` accepted) is a zone chunk rather
/// than a large block: [`route`]'s test without the rest.
#[inline(always)]
pub(crate) fn is_small(layout: Layout) -> bool {
    let align = layout.align();
    (layout.size() + align - 1) & !(align - 1) < ZONE_LIMIT && align <= PAGE_SIZE
}

/// The class of a size in `1..ZONE_LIMIT`. DragonFly: `zoneindex()`.
///
/// Two table lookups instead of DragonFly's chain of range tests: below
/// 1 KiB every class boundary is a multiple of 8, above it a multiple of
/// 128, so the size rounded up to that grain indexes a byte table.
#[inline]
pub(crate) fn class_of(size: usize) -> usize {
    debug_assert!(size > 0 && size < ZONE_LIMIT);
    let class = if size <= FINE_LIMIT {
        FINE[(size + 7) >> 3] as usize
    } else {
        COARSE[(size + 127) >> 7] as usize
    };
    // SAFETY: every table entry is below `NZONES` (`grain_table` asserts it
    // when the tables are built, at compile time). Telling the compiler
    // spares each per-class array access its bounds check.
    unsafe { core::hint::assert_unchecked(class < NZONES) };
    class
}

/// The class of a size in `1..=1024` (one table lookup; the 8-byte grain
/// of the table is also every alignment up to 8).
#[cfg(feature = "std")]
#[inline(always)]
pub(crate) fn small_class(size: usize) -> usize {
    debug_assert!(size > 0 && size <= FINE_LIMIT);
    let class = FINE[(size + 7) >> 3] as usize;
    // SAFETY: every entry of the table is below `FINE_CLASSES` (checked
    // at compile time below). Telling the compiler spares a thread
    // cache's per-class arrays their bounds check.
    unsafe { core::hint::assert_unchecked(class < FINE_CLASSES) };
    class
}

/// Classes of the sizes up to `FINE_LIMIT` (`small_class`'s results are
/// below it): the class of `FINE_LIMIT` and those before.
pub(crate) const FINE_CLASSES: usize = FINE[FINE_LIMIT / 8] as usize + 1;

const _: () = {
    let mut i = 0;
    while i < FINE.len() {
        assert!((FINE[i] as usize) < FINE_CLASSES);
        i += 1;
    }
};

/// Sizes up to this use the 8-byte-grain table.
const FINE_LIMIT: usize = 1024;
/// Class by `ceil(size / 8)`, for sizes up to `FINE_LIMIT`.
const FINE: [u8; FINE_LIMIT / 8 + 1] = grain_table::<{ FINE_LIMIT / 8 + 1 }>(8);
/// Class by `ceil(size / 128)`, for sizes up to `ZONE_LIMIT`.
const COARSE: [u8; ZONE_LIMIT / 128 + 1] = grain_table::<{ ZONE_LIMIT / 128 + 1 }>(128);

/// Entry `i`: the class of size `i * grain` (DragonFly's range formula).
const fn grain_table<const N: usize>(grain: usize) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 1;
    while i < N {
        let class = class_by_ranges(i * grain);
        assert!(class < NZONES);
        t[i] = class as u8;
        i += 1;
    }
    t
}

/// DragonFly's `zoneindex()`: find the size's range, then divide by its
/// step. Builds the tables; `size` in `1..=ZONE_LIMIT`.
const fn class_by_ranges(size: usize) -> usize {
    let mut r = 0;
    while r + 1 < RANGES.len() && size >= RANGES[r].0 {
        r += 1;
    }
    let (_, step, base) = RANGES[r];
    (size.div_ceil(step) as isize + base) as usize
}

/// The alignment every chunk of `class` has: the largest power of two
/// dividing its size, at most a page.
#[inline]
pub(crate) fn chunk_align(class: usize) -> usize {
    let c = CHUNK[class];
    (c & c.wrapping_neg()).min(PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_and_are_increasing() {
        for w in CHUNK.windows(2) {
            assert!(w[0] < w[1], "{CHUNK:?}");
        }
        assert_eq!(CHUNK[0], 8);
        assert_eq!(CHUNK[NZONES - 1], ZONE_LIMIT);
        for size in 1..ZONE_LIMIT {
            let c = class_of(size);
            assert!(CHUNK[c] >= size, "size {size} class {c}");
            if c > 0 {
                assert!(CHUNK[c - 1] < size, "size {size} fits a smaller class");
            }
            // Waste: at most 7 bytes, or 1/8 of the chunk above 128 bytes.
            assert!(CHUNK[c] - size <= 7.max(CHUNK[c] / 8), "size {size}");
        }
    }

    #[test]
    fn aligned_requests_get_chunks_that_are_multiples_of_the_alignment() {
        let mut align = 1;
        while align <= PAGE_SIZE {
            for size in [1, 3, 8, 100, 129, 1000, 4095, 4096, 9000] {
                let l = Layout::from_size_align(size, align).unwrap();
                if let Route::Small { class } = route(l).unwrap() {
                    assert_eq!(CHUNK[class] % align, 0, "size {size} align {align}");
                    assert!(chunk_align(class) >= align);
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            route(Layout::from_size_align(0, 1).unwrap()),
            Err(SlabError::ZeroSize)
        );
        assert_eq!(
            route(Layout::from_size_align(8, 8192).unwrap()),
            Err(SlabError::AlignTooLarge { align: 8192 })
        );
        assert_eq!(
            route(Layout::from_size_align(ZONE_LIMIT, 8).unwrap()),
            Ok(Route::Large)
        );
    }
}
