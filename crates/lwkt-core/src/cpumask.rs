//! Sets of CPUs: [`CpuMask`] (a value) and `AtomicCpuMask` (shared, for
//! the interlock words that senders set and a CPU clears).
//!
//! DragonFly: `cpumask_t` (an array of 64-bit words since 2014, 256 CPUs by
//! default) and its `CPUMASK_*` / `ATOMIC_CPUMASK_*` macros.
//!
//! Both are arrays of machine words, so a 32-bit target needs no 64-bit
//! atomics for them. An operation on one CPU touches one word; a test of
//! the whole set reads [`MASK_WORDS`] words, which lie in one cache line
//! (32 bytes for 256 CPUs): a machine of 64 CPUs or fewer pays a few loads
//! from a line it reads anyway.

use core::fmt;

use crate::cpu::{CpuId, MAX_CPUS};
use crate::sync::{AtomicUsize, Ordering};

/// Bits per mask word (the target's word size).
const BITS: usize = usize::BITS as usize;

/// Words in a mask: [`MAX_CPUS`] bits.
pub(crate) const MASK_WORDS: usize = MAX_CPUS / BITS;

const _: () = assert!(
    MAX_CPUS % BITS == 0,
    "MAX_CPUS must be a whole number of words"
);

/// The word holding CPU `c`'s bit, and the bit.
#[inline(always)]
const fn place(c: CpuId) -> (usize, usize) {
    let i = c.index();
    (i / BITS, 1 << (i % BITS))
}

/// A set of CPUs (DragonFly `cpumask_t`), up to [`MAX_CPUS`].
///
/// ```
/// use lwkt_core::{CpuId, CpuMask};
/// let m = CpuMask::all(4).without(CpuId::new(1));
/// assert_eq!(m.iter().map(|c| c.get()).collect::<Vec<_>>(), vec![0, 2, 3]);
/// assert!(CpuMask::single(CpuId::new(200)).contains(CpuId::new(200)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CpuMask {
    words: [usize; MASK_WORDS],
}

impl CpuMask {
    /// No CPU.
    pub const EMPTY: CpuMask = CpuMask {
        words: [0; MASK_WORDS],
    };

    /// CPUs `0..n` (all of [`MAX_CPUS`] if `n` is larger).
    pub const fn all(n: usize) -> CpuMask {
        let mut words = [0; MASK_WORDS];
        let mut w = 0;
        while w < MASK_WORDS {
            let lo = w * BITS;
            words[w] = if n >= lo + BITS {
                usize::MAX
            } else if n > lo {
                (1 << (n - lo)) - 1
            } else {
                0
            };
            w += 1;
        }
        CpuMask { words }
    }

    /// Just `c`.
    ///
    /// # Panics
    /// If `c` is not below [`MAX_CPUS`].
    pub const fn single(c: CpuId) -> CpuMask {
        CpuMask::EMPTY.with(c)
    }

    /// This set plus `c`.
    ///
    /// # Panics
    /// If `c` is not below [`MAX_CPUS`].
    pub const fn with(mut self, c: CpuId) -> CpuMask {
        let (w, b) = place(c);
        self.words[w] |= b;
        self
    }

    /// This set less `c` (unchanged if `c` is beyond [`MAX_CPUS`]).
    pub const fn without(mut self, c: CpuId) -> CpuMask {
        let (w, b) = place(c);
        if w < MASK_WORDS {
            self.words[w] &= !b;
        }
        self
    }

    /// Is `c` in the set? (Never for a CPU beyond [`MAX_CPUS`].)
    pub const fn contains(self, c: CpuId) -> bool {
        let (w, b) = place(c);
        w < MASK_WORDS && self.words[w] & b != 0
    }

    /// Is the set empty?
    pub const fn is_empty(self) -> bool {
        let mut w = 0;
        while w < MASK_WORDS {
            if self.words[w] != 0 {
                return false;
            }
            w += 1;
        }
        true
    }

    /// The CPUs in both sets.
    pub const fn and(mut self, other: CpuMask) -> CpuMask {
        let mut w = 0;
        while w < MASK_WORDS {
            self.words[w] &= other.words[w];
            w += 1;
        }
        self
    }

    /// How many CPUs the set holds.
    pub const fn count(self) -> usize {
        let mut n = 0;
        let mut w = 0;
        while w < MASK_WORDS {
            n += self.words[w].count_ones() as usize;
            w += 1;
        }
        n
    }

    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        let mut w = 0;
        let mut bits = self.words[0];
        core::iter::from_fn(move || loop {
            if bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                return Some(CpuId::new((w * BITS + i) as u32));
            }
            w += 1;
            if w == MASK_WORDS {
                return None;
            }
            bits = self.words[w];
        })
    }
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.get())).finish()
    }
}

/// Hexadecimal, highest word first, leading zero words left out (`0x0`
/// for the empty set): what DragonFly's `CPUMASK_PRINT` shows.
impl fmt::LowerHex for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = (0..MASK_WORDS).rev().find(|&w| self.words[w] != 0);
        let Some(top) = top else {
            return fmt::LowerHex::fmt(&0usize, f);
        };
        fmt::LowerHex::fmt(&self.words[top], f)?;
        for w in (0..top).rev() {
            write!(f, "_{:0width$x}", self.words[w], width = BITS / 4)?;
        }
        Ok(())
    }
}

/// A set of CPUs that CPUs update concurrently: one atomic word per
/// [`usize::BITS`] CPUs (DragonFly `ATOMIC_CPUMASK_ORBIT` and friends).
pub(crate) struct AtomicCpuMask {
    words: [AtomicUsize; MASK_WORDS],
}

impl AtomicCpuMask {
    /// The empty set.
    pub(crate) fn new() -> AtomicCpuMask {
        AtomicCpuMask::from(CpuMask::EMPTY)
    }

    /// The set `m`.
    pub(crate) fn from(m: CpuMask) -> AtomicCpuMask {
        AtomicCpuMask {
            words: core::array::from_fn(|w| AtomicUsize::new(m.words[w])),
        }
    }

    /// Add `c` (one read-modify-write of its word).
    #[inline]
    pub(crate) fn set(&self, c: CpuId, order: Ordering) {
        let (w, b) = place(c);
        self.words[w].fetch_or(b, order);
    }

    /// Remove `c` (one read-modify-write of its word).
    #[inline]
    pub(crate) fn clear(&self, c: CpuId, order: Ordering) {
        let (w, b) = place(c);
        self.words[w].fetch_and(!b, order);
    }

    /// Is `c` in the set?
    #[inline]
    pub(crate) fn contains(&self, c: CpuId, order: Ordering) -> bool {
        let (w, b) = place(c);
        self.words[w].load(order) & b != 0
    }

    /// The set now, word by word (each word read atomically, the set as a
    /// whole not: callers need only each CPU's bit).
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> CpuMask {
        CpuMask {
            words: core::array::from_fn(|w| self.words[w].load(order)),
        }
    }

    /// Is the set empty (word by word, as [`load`](Self::load))?
    #[inline]
    pub(crate) fn is_empty(&self, order: Ordering) -> bool {
        self.words.iter().all(|w| w.load(order) == 0)
    }
}

impl fmt::Debug for AtomicCpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.load(Ordering::Relaxed), f)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::{format, vec, vec::Vec};

    fn ids(m: CpuMask) -> Vec<u32> {
        m.iter().map(CpuId::get).collect()
    }

    #[test]
    fn all_covers_exactly_n() {
        for n in [0, 1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 200, MAX_CPUS] {
            let m = CpuMask::all(n);
            assert_eq!(m.count(), n, "n = {n}");
            assert_eq!(ids(m), (0..n as u32).collect::<Vec<_>>());
        }
        assert_eq!(CpuMask::all(MAX_CPUS + 7), CpuMask::all(MAX_CPUS));
    }

    #[test]
    fn single_with_without_contains_across_words() {
        let hi = CpuId::new(MAX_CPUS as u32 - 1);
        let m = CpuMask::single(CpuId::new(0)).with(CpuId::new(64)).with(hi);
        assert_eq!(ids(m), vec![0, 64, MAX_CPUS as u32 - 1]);
        assert!(m.contains(hi) && !m.contains(CpuId::new(63)));
        assert!(!m.contains(CpuId::new(MAX_CPUS as u32 + 3)));
        assert_eq!(m.without(CpuId::new(MAX_CPUS as u32 + 3)), m);
        assert!(m
            .without(CpuId::new(0))
            .without(CpuId::new(64))
            .without(hi)
            .is_empty());
        assert_eq!(
            m.and(CpuMask::all(65)),
            CpuMask::single(CpuId::new(0)).with(CpuId::new(64))
        );
    }

    #[test]
    #[should_panic]
    fn single_beyond_max_panics() {
        let _ = CpuMask::single(CpuId::new(MAX_CPUS as u32));
    }

    #[test]
    fn hex_shows_high_words_first() {
        assert_eq!(format!("{:#x}", CpuMask::EMPTY), "0x0");
        assert_eq!(format!("{:x}", CpuMask::all(4)), "f");
        let m = CpuMask::single(CpuId::new(BITS as u32)).with(CpuId::new(1));
        assert_eq!(format!("{:x}", m), format!("1_{:0w$x}", 2, w = BITS / 4));
        assert_eq!(format!("{m:?}"), format!("{{1, {BITS}}}"));
    }

    #[test]
    fn atomic_set_clear_load() {
        let a = AtomicCpuMask::new();
        assert!(a.is_empty(Ordering::Relaxed));
        a.set(CpuId::new(3), Ordering::Relaxed);
        a.set(CpuId::new(130), Ordering::Relaxed);
        assert!(a.contains(CpuId::new(130), Ordering::Relaxed));
        assert_eq!(
            a.load(Ordering::Relaxed),
            CpuMask::single(CpuId::new(3)).with(CpuId::new(130))
        );
        a.clear(CpuId::new(3), Ordering::Relaxed);
        a.clear(CpuId::new(130), Ordering::Relaxed);
        assert!(a.is_empty(Ordering::Relaxed));
        let b = AtomicCpuMask::from(CpuMask::all(70));
        assert_eq!(b.load(Ordering::Relaxed).count(), 70);
    }
}
