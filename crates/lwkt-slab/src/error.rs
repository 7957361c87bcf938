//! Why an allocation failed.

use core::fmt;

/// An allocation the slab refused. Nothing is lost or corrupted: the slab
/// works as before after any of these.
///
/// ```
/// use lwkt_slab::SlabError;
/// assert_eq!(SlabError::ZeroSize.to_string(), "zero-size allocation");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabError {
    /// A request for zero bytes (DragonFly returns a special pointer; Rust
    /// code has no use for one).
    ZeroSize,
    /// An alignment the page source cannot serve. The slab itself no longer
    /// returns it (alignments above a page go to the page source as large
    /// blocks); kept so that code matching on it still compiles.
    AlignTooLarge {
        /// The alignment asked for.
        align: usize,
    },
    /// A size whose rounding or layout overflows.
    SizeOverflow,
    /// The page source has no memory left.
    Exhausted,
    /// The allocation type's limit would be exceeded (DragonFly `ks_limit`).
    LimitExceeded {
        /// The type's name.
        ty: &'static str,
    },
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlabError::ZeroSize => f.write_str("zero-size allocation"),
            SlabError::AlignTooLarge { align } => {
                write!(f, "alignment {align} is above the page size")
            }
            SlabError::SizeOverflow => f.write_str("allocation size overflows"),
            SlabError::Exhausted => f.write_str("out of memory: the page source is exhausted"),
            SlabError::LimitExceeded { ty } => {
                write!(f, "allocation type '{ty}' is at its limit")
            }
        }
    }
}

impl core::error::Error for SlabError {}
