//! User address spaces for the user-mode tests.
//!
//! The kernel is identity mapped in 2 MiB pages (`boot.rs`), none of them
//! user-accessible. The linker script puts the user programs' code
//! (`.user_text`) in a 2 MiB page of its own, and 2 MiB of user memory
//! (`.user_bss`) after it. That memory is cut in [`SLOTS`] slots of
//! [`SLOT_BYTES`]: one data page and the rest stack, one slot per running
//! program. Each slot has its own page tables, built once at boot: a copy
//! of the boot PML4, PDPT and first-GiB page directory, in which
//!
//! - the `.user_text` 2 MiB page is user-readable, not writable (CR0.WP is
//!   set, so the kernel's `copyout` cannot write it either);
//! - the `.user_bss` 2 MiB page is a page table in which only the slot's
//!   own 4 KiB pages are user-accessible (writable), except its second
//!   page, a guard page that is not mapped at all (a `copyin` from it
//!   takes a page fault, turned into an error). Other slots' pages are
//!   mapped supervisor-only: a program cannot touch them, while kernel
//!   threads, which run on whatever tables were loaded last (CR3 is
//!   switched lazily), can reach every program's memory; `copyin` on a
//!   program's behalf is kept to its own slot by `UserProgram::window`;
//! - everything else is the kernel's, supervisor-only.
//!
//! So the user range (`usermode::set_user_range`) is `.user_text` +
//! `.user_bss`, and in it each program's tables map only its own pages or
//! the shared read-only code.

use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes per program slot: one data page, seven of stack.
pub(crate) const SLOT_BYTES: usize = 32 << 10;
/// The page of each slot left unmapped in its own tables.
pub(crate) const GUARD_PAGE: usize = 1;
/// Slots in the 2 MiB of user memory.
pub(crate) const SLOTS: usize = (2 << 20) / SLOT_BYTES;

extern "C" {
    static __user_start: u8;
    static __user_end: u8;
}

#[repr(C, align(4096))]
struct Tables([[u64; 512]; 4 * SLOTS]);

static mut TABLES: Tables = Tables([[0; 512]; 4 * SLOTS]);

/// A 2 MiB page of the user's memory, in its own section.
#[repr(C, align(2097152))]
struct UserMem([u8; 2 << 20]);

#[link_section = ".user_bss"]
static mut USER_MEM: UserMem = UserMem([0; 2 << 20]);

/// Slots in use, one bit each.
static USED: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(SLOTS == 64);

/// One program's address space: its slot, page tables and pages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Space {
    pub(crate) slot: usize,
    pub(crate) cr3: u64,
    /// The data page (user and kernel address: identity mapped).
    pub(crate) data: usize,
    /// The top of the stack.
    pub(crate) stack_top: usize,
}

/// `[start, end)` of the user range.
pub(crate) fn range() -> (usize, usize) {
    // Linker symbols: only their addresses are taken.
    (
        core::ptr::addr_of!(__user_start) as usize,
        core::ptr::addr_of!(__user_end) as usize,
    )
}

fn mem_base() -> usize {
    core::ptr::addr_of!(USER_MEM) as usize
}

/// Build every slot's page tables from the boot tables (CR3 now).
///
/// # Safety
/// Once, on the BSP, before any user program runs; CR3 holds the boot
/// tables (`boot.rs`: PML4 -> one PDPT -> four page directories of 2 MiB
/// pages).
pub(crate) unsafe fn init() {
    let (text, end) = range();
    let mem = mem_base();
    assert!(
        text % (2 << 20) == 0
            && mem == text + (2 << 20)
            && end == mem + (2 << 20)
            && end <= 1 << 30,
        "user memory layout: text {text:#x}, mem {mem:#x}, end {end:#x}"
    );
    let (frame, _) = x86_64::registers::control::Cr3::read_raw();
    let kpml4 = frame.start_address().as_u64() as *const u64;
    // SAFETY: identity-mapped boot tables (caller).
    let kpdpt = (unsafe { kpml4.read() } & !0xFFF) as *const u64;
    // SAFETY: as above.
    let kpd0 = (unsafe { kpdpt.read() } & !0xFFF) as *const u64;
    // SAFETY: once, before any user program (caller): nothing else
    // touches the tables.
    let t = unsafe { &mut *core::ptr::addr_of_mut!(TABLES) };
    for s in 0..SLOTS {
        let [pml4, pdpt, pd, pt] = [4 * s, 4 * s + 1, 4 * s + 2, 4 * s + 3];
        let addr = |i: usize| t.0[i].as_ptr() as u64;
        let (a_pdpt, a_pd, a_pt) = (addr(pdpt), addr(pd), addr(pt));
        for i in 0..512 {
            // SAFETY: the boot tables are 512 entries each.
            unsafe {
                t.0[pml4][i] = kpml4.add(i).read();
                t.0[pdpt][i] = kpdpt.add(i).read();
                t.0[pd][i] = kpd0.add(i).read();
            }
        }
        // Present | writable | user on the path to the user pages: the
        // leaves decide (the kernel's stay supervisor-only).
        t.0[pml4][0] = a_pdpt | 7;
        t.0[pdpt][0] = a_pd | 7;
        // The code: present | user | 2 MiB, read-only.
        t.0[pd][text >> 21] = text as u64 | 0x85;
        // The user memory: this slot's pages only.
        t.0[pd][mem >> 21] = a_pt | 7;
        for p in 0..(2 << 20) / 4096 {
            let page = mem + p * 4096;
            let own = p / (SLOT_BYTES / 4096) == s;
            t.0[pt][p] = match (own, p % (SLOT_BYTES / 4096)) {
                (true, GUARD_PAGE) => 0,
                (true, _) => page as u64 | 7,
                (false, _) => page as u64 | 3,
            };
        }
    }
}

/// Take a free slot, zeroed: `None` if all are in use.
pub(crate) fn alloc() -> Option<Space> {
    let mut cur = USED.load(Ordering::Relaxed);
    let slot = loop {
        if cur == u64::MAX {
            return None;
        }
        let s = (!cur).trailing_zeros() as usize;
        match USED.compare_exchange(cur, cur | 1 << s, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break s,
            Err(c) => cur = c,
        }
    };
    let data = mem_base() + slot * SLOT_BYTES;
    // SAFETY: the slot is ours (the bit above) and no program runs in it;
    // identity mapped kernel memory, mapped in every slot's tables but the
    // guard page in its own (left alone: nothing writes it).
    unsafe {
        core::ptr::write_bytes(data as *mut u8, 0, GUARD_PAGE * 4096);
        let rest = (GUARD_PAGE + 1) * 4096;
        core::ptr::write_bytes((data + rest) as *mut u8, 0, SLOT_BYTES - rest);
    }
    // SAFETY: a shared reference to the tables built by `init`, read only.
    let cr3 = unsafe { (*core::ptr::addr_of!(TABLES)).0[4 * slot].as_ptr() as u64 };
    Some(Space {
        slot,
        cr3,
        data,
        stack_top: data + SLOT_BYTES,
    })
}

/// Give a slot back (its program has ended).
pub(crate) fn free(s: Space) {
    USED.fetch_and(!(1 << s.slot), Ordering::Release);
}

/// An address in `slot`'s memory (another program's, for the tests).
pub(crate) fn slot_addr(slot: usize) -> usize {
    mem_base() + (slot % SLOTS) * SLOT_BYTES
}
