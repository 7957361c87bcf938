//! The user programs: Rust functions placed in `.user_text`, the one 2 MiB
//! page user mode may execute (`usermem.rs`). They run in ring 3, touch
//! only their own data page and stack, and talk to the kernel only through
//! `syscall`. So they call nothing outside `.user_text`: every helper is
//! `#[inline(always)]`, there is no indexing that could panic, no
//! formatting, no `match` that could become a jump table in the kernel's
//! `.rodata` (each program is its own entry point instead). A mistake here
//! shows as a user fault on a kernel address, reported by the test.
//!
//! The data page (`rdi` at entry) holds words the kernel wrote before the
//! start: see the `D_*` indices.

// `(0..32).contains(&h)` is a call the compiler may leave out of line,
// in the kernel's `.text`, which ring 3 cannot execute: plain comparisons.
#![allow(clippy::manual_range_contains)]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// How programs enter the kernel: 0 `syscall`, 1 `int 0xF0`, 2 the trap
/// system call `ud1 eax, eax`. Set by the kernel before the programs run,
/// from what works on this machine; in the user code page, so programs
/// read it and cannot write it.
#[link_section = ".user_rodata"]
pub(crate) static USE_INT: AtomicU64 = AtomicU64::new(0);

/// System call numbers (`rax`). Arguments in `rdi`, `rsi`, `rdx`, `r10`;
/// results in `rax` (negative: an error) and `rdx`.
pub(crate) mod nr {
    /// Nothing: returns 0 at once, no message (the baseline).
    pub(crate) const NULL: u64 = 0;
    /// End the program with status `a`.
    pub(crate) const EXIT: u64 = 1;
    /// Synchronous message, completed inline: `a + b`.
    pub(crate) const ADD: u64 = 2;
    /// Synchronous message, completed inline: the CPU it ran on.
    pub(crate) const GETCPU: u64 = 3;
    /// Synchronous message that must wait: sent to a kernel thread on the
    /// next CPU, which sleeps `a` microseconds (at most 1 s) and replies.
    pub(crate) const SLEEP: u64 = 4;
    /// Synchronous, inline: copy in `b` bytes (at most 256) at user
    /// address `a` and return their sum.
    pub(crate) const SUM: u64 = 5;
    /// Synchronous, inline: copy out `b` bytes (at most 256) of value `c`
    /// to user address `a`.
    pub(crate) const FILL: u64 = 6;
    /// Move this thread to CPU `a` (the program goes on there).
    pub(crate) const MIGRATE: u64 = 7;
    /// Asynchronous: send operation `a` (ADD, SLEEP or HOLD) with
    /// arguments `b`, `c` to a kernel thread; returns a handle at once.
    pub(crate) const ASYNC: u64 = 8;
    /// Wait on reply port `a` (the program's own) for the next reply:
    /// returns its handle, and its result in `rdx`.
    pub(crate) const WAIT: u64 = 9;
    /// Abort the in-flight asynchronous message with handle `a`.
    pub(crate) const ABORT: u64 = 10;
    /// Tell the kernel the program's own counts `a`, `b`, `c`, `d`.
    pub(crate) const REPORT: u64 = 11;
    /// A benchmark sample: kind `a`, `b` cycles.
    pub(crate) const SAMPLE: u64 = 12;
    /// Asynchronous-only operation: the kernel thread holds the message
    /// until it is aborted (or 5 s pass).
    pub(crate) const HOLD: u64 = 13;
}

/// Error numbers (returned negated).
pub(crate) mod err {
    pub(crate) const EINTR: i64 = 4;
    pub(crate) const EBADF: i64 = 9;
    pub(crate) const ECHILD: i64 = 10;
    pub(crate) const EAGAIN: i64 = 11;
    pub(crate) const EFAULT: i64 = 14;
    pub(crate) const EINVAL: i64 = 22;
    pub(crate) const ENOSYS: i64 = 38;
    pub(crate) const EALREADY: i64 = 114;
}

/// Data page words the kernel fills in.
pub(crate) const D_SYNC: usize = 1;
pub(crate) const D_ASYNC: usize = 2;
pub(crate) const D_PORT: usize = 3;
pub(crate) const D_NCPUS: usize = 4;
pub(crate) const D_OTHER: usize = 5;
pub(crate) const D_TEXT: usize = 6;
pub(crate) const D_STOP: usize = 7;
pub(crate) const D_SPINS: usize = 8;
pub(crate) const D_SAMPLES: usize = 9;
pub(crate) const D_END: usize = 10;
pub(crate) const D_KERNEL: usize = 11;
pub(crate) const D_GUARD: usize = 12;
/// Handle -> sequence number table (32 words).
const D_TABLE: usize = 16;
/// A 256-byte buffer for SUM/FILL.
const D_BUF: usize = 64;
/// Outstanding asynchronous messages the main program keeps.
const WINDOW: u64 = 8;

/// The checks of [`bad_args`], one bit each.
pub(crate) const BAD_CHECKS: u32 = 20;
/// Names of the checks, by bit (for the kernel's report).
pub(crate) const BAD_NAMES: [&str; BAD_CHECKS as usize] = [
    "SUM of a kernel address -> EFAULT",
    "SUM of another program's page -> EFAULT",
    "SUM wrapping the address space -> EFAULT",
    "SUM crossing the end of the user range -> EFAULT",
    "FILL of the read-only user text -> EFAULT",
    "SUM of its own buffer -> the sum",
    "FILL of its own buffer -> 0, bytes written",
    "system call 9999 -> ENOSYS",
    "system call u64::MAX -> ENOSYS",
    "WAIT on a reply port not its own -> EBADF",
    "ABORT of a handle not in flight -> EINVAL",
    "ABORT of a handle out of range -> EINVAL",
    "ASYNC HOLD, ABORT -> 0, WAIT -> that handle, EINTR",
    "ABORT of the handle just collected -> EINVAL",
    "MIGRATE to the next CPU, GETCPU there, own buffer still readable",
    "ASYNC of an unknown operation -> ENOSYS",
    "SLEEP of more than 1 s -> EINVAL",
    "SUM of more than 256 bytes -> EINVAL",
    "WAIT with nothing in flight -> ECHILD",
    "SUM of its own unmapped guard page -> EFAULT (the page fault caught)",
];

#[inline(always)]
fn sys(n: u64, a: u64, b: u64, c: u64, d: u64) -> (i64, u64) {
    let r: i64;
    let r2: u64;
    // SAFETY: `syscall` to this kernel: it preserves every register but
    // rax, rdx (results), rcx and r11 (the CPU's), and memory is only
    // changed where a FILL names it.
    unsafe {
        let how = USE_INT.load(Ordering::Relaxed);
        if how == 0 {
            asm!(
                "syscall",
                inlateout("rax") n as i64 => r,
                in("rdi") a,
                in("rsi") b,
                inlateout("rdx") c => r2,
                in("r10") d,
                out("rcx") _,
                out("r11") _,
                options(nostack)
            );
        } else if how == 1 {
            asm!(
                "int 0xf0",
                inlateout("rax") n as i64 => r,
                in("rdi") a,
                in("rsi") b,
                inlateout("rdx") c => r2,
                in("r10") d,
                out("rcx") _,
                out("r11") _,
                options(nostack)
            );
        } else {
            // `ud1 eax, eax`: the trap system call.
            asm!(
                ".byte 0x0f, 0xb9, 0xc0",
                inlateout("rax") n as i64 => r,
                in("rdi") a,
                in("rsi") b,
                inlateout("rdx") c => r2,
                in("r10") d,
                out("rcx") _,
                out("r11") _,
                options(nostack)
            );
        }
    }
    (r, r2)
}

#[inline(always)]
fn rd(data: *mut u64, i: usize) -> u64 {
    // SAFETY: the program's own data page (4 KiB: `i` < 512 everywhere).
    unsafe { data.wrapping_add(i).read_volatile() }
}

#[inline(always)]
fn wr(data: *mut u64, i: usize, v: u64) {
    // SAFETY: as in `rd`.
    unsafe { data.wrapping_add(i).write_volatile(v) }
}

#[inline(always)]
fn exit(code: u64) -> ! {
    sys(nr::EXIT, code, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

#[inline(always)]
fn tsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` is allowed in ring 3 (CR4.TSD clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The main program: `D_SYNC` synchronous system calls as messages (a few
/// of them SLEEPs, which block this thread while a kernel thread on the
/// next CPU holds the message), then `D_ASYNC` asynchronous ones with up to
/// [`WINDOW`] outstanding, each reply collected with WAIT and checked
/// against what was sent. Reports its counts, exits with its error count.
#[link_section = ".user_text"]
pub(crate) extern "C" fn main_program(data: *mut u64) -> ! {
    let n_sync = rd(data, D_SYNC);
    let n_async = rd(data, D_ASYNC);
    let port = rd(data, D_PORT);
    let mut errs = 0u64;
    let mut ok = 0u64;
    let mut i = 0u64;
    while i < n_sync {
        let (r, _) = sys(nr::ADD, i, 3, 0, 0);
        if r as u64 == i.wrapping_add(3) {
            ok += 1;
        } else {
            errs += 1;
        }
        if i % 2500 == 1234 {
            let (r, _) = sys(nr::SLEEP, 50, 0, 0, 0);
            if r != 0 {
                errs += 1;
            }
        }
        i += 1;
    }
    let mut sent = 0u64;
    let mut got = 0u64;
    let mut limit = n_async;
    while got < limit {
        while sent < limit && sent - got < WINDOW {
            let (h, _) = sys(nr::ASYNC, nr::ADD, sent, 5, 0);
            if h < 0 || h >= 32 {
                errs += 1;
                limit = sent;
                break;
            }
            wr(data, D_TABLE + h as usize, sent);
            sent += 1;
        }
        if got >= sent {
            break;
        }
        let (h, v) = sys(nr::WAIT, port, 0, 0, 0);
        if h < 0 || h >= 32 {
            errs += 1;
            break;
        }
        if v != rd(data, D_TABLE + h as usize).wrapping_add(5) {
            errs += 1;
        }
        got += 1;
    }
    sys(nr::REPORT, ok, sent, got, errs);
    exit(errs)
}

/// Reads a kernel page: #PF.
#[link_section = ".user_text"]
pub(crate) extern "C" fn page_fault(data: *mut u64) -> ! {
    let k = rd(data, D_KERNEL) as *const u64;
    // SAFETY: not safe at all, on purpose: the kernel's page is
    // supervisor-only, so this faults and the kernel ends the program.
    let v = unsafe { k.read_volatile() };
    exit(v)
}

/// One empty system call, then exit 7: the kernel's probe of `syscall`.
#[link_section = ".user_text"]
pub(crate) extern "C" fn probe(_data: *mut u64) -> ! {
    sys(nr::NULL, 0, 0, 0, 0);
    exit(7)
}

/// `cli` in ring 3: #GP.
#[link_section = ".user_text"]
pub(crate) extern "C" fn protection_fault(_data: *mut u64) -> ! {
    // SAFETY: a privileged instruction in ring 3, on purpose: #GP.
    unsafe { asm!("cli") };
    exit(0)
}

/// `ud2`: #UD.
#[link_section = ".user_text"]
pub(crate) extern "C" fn invalid_opcode(_data: *mut u64) -> ! {
    // SAFETY: on purpose: #UD.
    unsafe { asm!("ud2") };
    exit(0)
}

/// An x87 instruction: #NM (no FPU state is switched, so none may be
/// used).
#[link_section = ".user_text"]
pub(crate) extern "C" fn fpu_use(_data: *mut u64) -> ! {
    // SAFETY: on purpose: CR0.EM makes it #NM.
    unsafe { asm!("fninit") };
    exit(0)
}

/// An SSE instruction: #UD (CR4.OSFXSR is clear).
#[link_section = ".user_text"]
pub(crate) extern "C" fn sse_use(_data: *mut u64) -> ! {
    // SAFETY: on purpose: #UD without OSFXSR.
    unsafe { asm!("xorps xmm0, xmm0", out("xmm0") _) };
    exit(0)
}

/// A jump into the kernel's code: #PF on the instruction fetch.
#[link_section = ".user_text"]
pub(crate) extern "C" fn wild_jump(data: *mut u64) -> ! {
    let k = rd(data, D_KERNEL);
    // SAFETY: on purpose: the target is a supervisor page.
    unsafe { asm!("jmp {}", in(reg) k, options(noreturn)) }
}

/// Bad pointers, bad numbers, a reply port not its own, aborts of
/// messages not in flight, a migration: each check sets its bit when the
/// kernel answered as it must ([`BAD_NAMES`]); exits with the bits.
#[link_section = ".user_text"]
pub(crate) extern "C" fn bad_args(data: *mut u64) -> ! {
    let port = rd(data, D_PORT);
    let buf = data.wrapping_add(D_BUF) as u64;
    let efault = -err::EFAULT;
    let mut bits = 0u64;
    // A macro, not a closure: a closure the compiler does not inline
    // would be a function outside `.user_text`.
    macro_rules! bit {
        ($k:expr, $ok:expr) => {
            if $ok {
                bits |= 1 << $k;
            }
        };
    }
    bit!(0, sys(nr::SUM, rd(data, D_KERNEL), 16, 0, 0).0 == efault);
    bit!(1, sys(nr::SUM, rd(data, D_OTHER), 16, 0, 0).0 == efault);
    bit!(2, sys(nr::SUM, u64::MAX - 7, 16, 0, 0).0 == efault);
    bit!(
        3,
        sys(nr::SUM, rd(data, D_END).wrapping_sub(8), 16, 0, 0).0 == efault
    );
    bit!(4, sys(nr::FILL, rd(data, D_TEXT), 16, 0x90, 0).0 == efault);
    let b = buf as *mut u8;
    let mut k = 0u64;
    while k < 16 {
        // SAFETY: the program's own buffer, in its data page.
        unsafe { b.wrapping_add(k as usize).write_volatile(k as u8 + 1) };
        k += 1;
    }
    bit!(5, sys(nr::SUM, buf, 16, 0, 0).0 == 136);
    let filled = sys(nr::FILL, buf, 16, 7, 0).0 == 0;
    // SAFETY: as above.
    let byte = unsafe { b.wrapping_add(15).read_volatile() };
    bit!(6, filled && byte == 7);
    bit!(7, sys(9999, 0, 0, 0, 0).0 == -err::ENOSYS);
    bit!(8, sys(u64::MAX, 0, 0, 0, 0).0 == -err::ENOSYS);
    bit!(9, sys(nr::WAIT, port + 1, 0, 0, 0).0 == -err::EBADF);
    bit!(10, sys(nr::ABORT, 5, 0, 0, 0).0 == -err::EINVAL);
    bit!(11, sys(nr::ABORT, 1000, 0, 0, 0).0 == -err::EINVAL);
    let (h, _) = sys(nr::ASYNC, nr::HOLD, 0, 0, 0);
    let aborted = h >= 0 && sys(nr::ABORT, h as u64, 0, 0, 0).0 == 0;
    let (h2, v) = sys(nr::WAIT, port, 0, 0, 0);
    bit!(12, aborted && h2 == h && v as i64 == -err::EINTR);
    bit!(13, sys(nr::ABORT, h as u64, 0, 0, 0).0 == -err::EINVAL);
    let n = rd(data, D_NCPUS);
    let (c0, _) = sys(nr::GETCPU, 0, 0, 0, 0);
    let mut next = c0 as u64 + 1;
    if next >= n {
        next = 0;
    }
    let moved = sys(nr::MIGRATE, next, 0, 0, 0).0 == 0;
    let (c1, _) = sys(nr::GETCPU, 0, 0, 0, 0);
    bit!(
        14,
        moved && c1 as u64 == next && sys(nr::SUM, buf, 16, 0, 0).0 == 16 * 7
    );
    bit!(15, sys(nr::ASYNC, 99, 0, 0, 0).0 == -err::ENOSYS);
    bit!(16, sys(nr::SLEEP, 2_000_000, 0, 0, 0).0 == -err::EINVAL);
    bit!(17, sys(nr::SUM, buf, 257, 0, 0).0 == -err::EINVAL);
    bit!(18, sys(nr::WAIT, port, 0, 0, 0).0 == -err::ECHILD);
    bit!(19, sys(nr::SUM, rd(data, D_GUARD), 16, 0, 0).0 == efault);
    exit(bits)
}

/// Never traps: counts in its data page until the kernel sets the stop
/// word. Only the timer can take the CPU from it.
#[link_section = ".user_text"]
pub(crate) extern "C" fn spinner(data: *mut u64) -> ! {
    let mut n = 0u64;
    while rd(data, D_STOP) == 0 {
        n += 1;
        wr(data, D_SPINS, n);
    }
    exit(0)
}

/// The benchmark: `D_SAMPLES` samples of each kind, each the mean of a
/// batch of 16 operations timed with `rdtsc` in ring 3, handed to the
/// kernel with SAMPLE (outside the timed part): kind 0 the empty system
/// call, 1 a synchronous system call as a message completed inline, 2 an
/// asynchronous one sent to a kernel thread on the next CPU and collected
/// with WAIT.
#[link_section = ".user_text"]
pub(crate) extern "C" fn bench(data: *mut u64) -> ! {
    let samples = rd(data, D_SAMPLES);
    let port = rd(data, D_PORT);
    const BATCH: u64 = 16;
    let mut errs = 0u64;
    let mut kind = 0u64;
    while kind < 3 {
        let mut s = 0u64;
        while s < samples {
            let t0 = tsc();
            let mut j = 0u64;
            while j < BATCH {
                if kind == 0 {
                    sys(nr::NULL, 0, 0, 0, 0);
                } else if kind == 1 {
                    if sys(nr::ADD, j, 1, 0, 0).0 as u64 != j + 1 {
                        errs += 1;
                    }
                } else {
                    let (h, _) = sys(nr::ASYNC, nr::ADD, j, 1, 0);
                    let (h2, v) = sys(nr::WAIT, port, 0, 0, 0);
                    if h < 0 || h2 != h || v != j + 1 {
                        errs += 1;
                    }
                }
                j += 1;
            }
            let t = tsc() - t0;
            sys(nr::SAMPLE, kind, t / BATCH, 0, 0);
            s += 1;
        }
        kind += 1;
    }
    exit(errs)
}
