//! Thread stacks: anonymous mappings with an unmapped guard page below, so
//! an overflow faults (and is reported by name, see `fault.rs`) instead of
//! corrupting the neighbouring memory.
//!
//! With the cargo feature `asan`, one more page lies below the guard page:
//! its first word keeps the fake stack AddressSanitizer gave the thread
//! (see `switch::asan`), out of reach of the thread's own frames.

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

/// Pages mapped below a stack's usable memory: the guard page, and with
/// `asan` the fake-stack slot's page below it.
const PAGES_BELOW: usize = if cfg!(feature = "asan") { 2 } else { 1 };

/// Map `size` bytes (rounded up to pages) plus the pages below (the guard).
pub(crate) fn alloc(size: usize) -> Option<Stack> {
    let page = page_size();
    let len = size.checked_add(page - 1)? & !(page - 1);
    let below = PAGES_BELOW * page;
    let total = len.checked_add(below)?;
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
    let guard = (p as usize + below - page) as *mut libc::c_void;
    // SAFETY: the last page below the stack, in our own mapping.
    if unsafe { libc::mprotect(guard, page, libc::PROT_NONE) } != 0 {
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(p, total) };
        return None;
    }
    let base = NonNull::new((p as usize + below) as *mut u8)?;
    Some(Stack { base, len })
}

/// Where the thread on `s` keeps its ASan fake stack while switched out:
/// the first word of the page below the guard page. `s` is a stack from
/// [`alloc`] or a part of one with the same base (lwkt-core hands
/// `init_context` the bottom part, below the thread block); a fresh
/// mapping makes it null.
#[cfg(feature = "asan")]
pub(crate) fn fake_stack_slot(s: &Stack) -> *mut *mut core::ffi::c_void {
    (s.base.as_ptr() as usize - 2 * page_size()) as *mut *mut core::ffi::c_void
}

/// Unmap a stack from [`alloc`].
///
/// # Safety
/// `s` came from `alloc` and nothing uses it.
pub(crate) unsafe fn free(s: Stack) {
    #[cfg(feature = "asan")]
    // SAFETY: `s` came from `alloc` (so its slot is mapped) and nothing
    // runs on it (caller); the IPI signal handler, which may drop a
    // thread's last reference, never runs inside a switch (critical section).
    unsafe {
        crate::switch::asan::stack_freed(fake_stack_slot(&s), s.base.as_ptr().cast(), s.len)
    };
    let below = PAGES_BELOW * page_size();
    let start = s.base.as_ptr() as usize - below;
    // SAFETY: exactly the mapping `alloc` made (caller).
    unsafe { libc::munmap(start as *mut libc::c_void, s.len + below) };
}

/// Is `addr` in the guard page below `s`?
pub(crate) fn in_guard(s: &Stack, addr: usize) -> bool {
    let base = s.base.as_ptr() as usize;
    addr < base && addr >= base - page_size()
}
