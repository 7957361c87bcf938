//! Thread stacks: anonymous mappings with an unmapped guard page below, so
//! an overflow faults (and is reported by name, see `fault.rs`) instead of
//! corrupting the neighbouring memory.

use core::ptr::NonNull;

use lwkt_core::Stack;

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

/// Map `size` bytes (rounded up to pages) plus one guard page.
pub(crate) fn alloc(size: usize) -> Option<Stack> {
    let page = page_size();
    let len = size.checked_add(page - 1)? & !(page - 1);
    let total = len.checked_add(page)?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the first page of our own mapping.
    if unsafe { libc::mprotect(p, page, libc::PROT_NONE) } != 0 {
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(p, total) };
        return None;
    }
    let base = NonNull::new((p as usize + page) as *mut u8)?;
    Some(Stack { base, len })
}

/// Unmap a stack from [`alloc`].
///
/// # Safety
/// `s` came from `alloc` and nothing uses it.
pub(crate) unsafe fn free(s: Stack) {
    let page = page_size();
    let start = s.base.as_ptr() as usize - page;
    // SAFETY: exactly the mapping `alloc` made (caller).
    unsafe { libc::munmap(start as *mut libc::c_void, s.len + page) };
}

/// Is `addr` in the guard page below `s`?
pub(crate) fn in_guard(s: &Stack, addr: usize) -> bool {
    let base = s.base.as_ptr() as usize;
    addr < base && addr >= base - page_size()
}
