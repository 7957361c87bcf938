//! User mode: ring 3 threads that come back to the kernel on every trap.
//!
//! A *user thread* is an ordinary lwkt thread that calls [`run_user`]: it
//! drops to ring 3 at the program's entry and comes back to its own kernel
//! stack on every system call, exception and interrupt; it is scheduled,
//! blocked, woken and migrated like any other thread, and [`run_user`]
//! returns when the program ends (the exit system call calls
//! [`exit_user`]) or faults (the trap path ends it and records why).
//!
//! What this module provides (each CPU calls [`init_cpu`] once):
//!
//! - a per-CPU GDT (kernel code/data, user data/code in the order `sysret`
//!   wants, a TSS) and TSS whose `RSP0` is the running thread's kernel
//!   stack, kept current on every switch to a thread with a user side
//!   (lwkt-core's context words 1-3 carry the user state across
//!   switches: see `on_switch`); IST stacks for NMI, #DF and #MC;
//! - `syscall`/`sysret` through `STAR`/`LSTAR`/`SFMASK` (`SFMASK` clears
//!   IF, DF, TF, AC and NT at entry); the entry swaps GS (`syscall` comes
//!   only from ring 3), moves to the thread's kernel stack, builds a
//!   [`TrapFrame`], enables interrupts and calls the kernel's handler
//!   ([`set_syscall_handler`]);
//! - the exit to user mode (DragonFly `doreti`): with interrupts off, run
//!   any IPI work still pending and make any reschedule still wanted
//!   ([`lwkt_core::Cpu::preempt_from_interrupt`]) before `sysretq`/`iretq`;
//!   anything that arrives after that check is a hardware interrupt that
//!   is delivered right after the return, from user mode. A return address
//!   that is not a canonical lower-half address never reaches `sysretq`
//!   (Intel's `sysret` would take its #GP in ring 0 on the user stack): the
//!   program is ended instead, and the assembly falls back to `iretq` too;
//! - interrupt and exception stubs ([`crate::idt`]) that `swapgs` exactly
//!   when the saved CS has RPL 3, and NMI/#MC stubs that decide by the GS
//!   base MSR (the paranoid entry, see below);
//! - [`copyin`]/[`copyout`]: user addresses checked against the user range
//!   ([`set_user_range`], no overflow), the copy done by one `rep movsb`
//!   whose page fault the trap path turns into `Err(Fault)` (an exception
//!   fixup table of one entry), never a kernel crash.
//!
//! **The NMI in the `swapgs` window.** `syscall` and `sysret` do not switch
//! GS; between `syscall` and the entry's `swapgs`, and between the exit's
//! `swapgs` and `sysretq`, the CPU runs ring-0 code with the *user* GS base
//! (and, right after `syscall` or right before `sysretq`, on the *user*
//! stack). Interrupts are off there (`SFMASK` clears IF; the exit runs
//! `cli` first), but an NMI or a machine check is not. So: those two
//! vectors run on their own IST stacks (a known-good stack whatever RSP
//! was), and their entry does not trust the saved CS: CS = ring 0 is
//! exactly the window's case. It reads `IA32_GS_BASE` instead: this backend
//! keeps the user GS base 0 (user code cannot write it: no `wrgsbase`,
//! CR4.FSGSBASE is off, and MSRs are ring 0), and the kernel's is a
//! `PerCpu` block, never 0 once installed. GS base 0 means the user base is
//! live, so the entry swaps and swaps back before its `iretq`; otherwise
//! it leaves GS alone. This is Linux's `paranoid_entry` (which tests the
//! sign of the base: its kernel lives in the upper half) and DragonFly's
//! NMI entry (`Xnmi`, which also reads `MSR_GSBASE`).
//!
//! DragonFly: `sys/platform/pc64/x86_64/exception.S` (`Xfast_syscall`,
//! `doreti`), `machdep.c` (`init_gdt`, `gd_common_tss`), `support.s`
//! (`copyin`/`copyout` with `pcb_onfault`).

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicUsize, Ordering};

use lwkt_core::Context;
use x86_64::registers::control::{Cr0, Cr0Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::{Segment, CS, SS};
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

use crate::idt::{FaultFrame, TrapFrame};
use crate::percpu::{self, PerCpu};

/// The kernel code selector (also the IDT's).
pub const KERNEL_CS: u16 = 0x08;
/// The kernel data (stack) selector.
pub const KERNEL_SS: u16 = 0x10;
/// The user data (stack) selector, RPL 3 (`STAR`'s sysret base + 8).
pub const USER_SS: u16 = 0x23;
/// The 64-bit user code selector, RPL 3 (`STAR`'s sysret base + 16).
pub const USER_CS: u16 = 0x2B;
/// The TSS selector.
pub const TSS_SEL: u16 = 0x30;
/// The IST slot (1-based, as the gate holds it) of the NMI stack.
pub const NMI_IST: u8 = 1;
/// The IST slot of the double-fault stack.
pub const DF_IST: u8 = 2;
/// The IST slot of the machine-check stack.
pub const MC_IST: u8 = 3;
/// The `vector` word of a [`TrapFrame`] built by the `syscall` entry.
pub const SYSCALL_VECTOR: u64 = 0x100;
/// Bytes of each IST stack.
const IST_STACK: usize = 16 << 10;

/// The user-mode part of a [`PerCpu`] block (at `gs:[40]`): what the
/// entry assembly reads. Its values are the running thread's; they move to
/// and from lwkt-core's [`Context`] words 1-3 on every switch
/// (`on_switch`).
#[derive(Debug)]
#[repr(C)]
pub struct UserCpu {
    /// `gs:[40]`: the user RSP, kept by the `syscall` entry for a moment.
    scratch: AtomicUsize,
    /// `gs:[48]`: the running thread's kernel stack top for traps from
    /// ring 3 (also in the TSS's RSP0), 0 for a thread with no user side.
    kstack: AtomicUsize,
    /// `gs:[56]`: this CPU's TSS, once [`init_cpu`] ran.
    tss: AtomicUsize,
    /// `gs:[64]`: the running thread's page-table root (CR3), 0 for none.
    cr3: AtomicUsize,
    /// `gs:[72]`: the running thread's [`UserCtx`], 0 for none.
    uctx: AtomicUsize,
    /// `gs:[80]`: the CR3 loaded on this CPU (0: the boot value).
    loaded_cr3: AtomicUsize,
}

/// `gs` offsets the assembly uses.
pub(crate) const GS_SCRATCH: usize = 40;
pub(crate) const GS_KSTACK: usize = 48;
pub(crate) const GS_TSS: usize = 56;

impl UserCpu {
    pub(crate) const fn new() -> UserCpu {
        UserCpu {
            scratch: AtomicUsize::new(0),
            kstack: AtomicUsize::new(0),
            tss: AtomicUsize::new(0),
            cr3: AtomicUsize::new(0),
            uctx: AtomicUsize::new(0),
            loaded_cr3: AtomicUsize::new(0),
        }
    }
}

/// One CPU's descriptor tables and IST stacks, given to [`init_cpu`]:
/// keep one per CPU in a `static` (it is 48 KiB, mostly stacks).
/// DragonFly: `gdt[]` per CPU, `common_tss`, the `dblfault_stack`.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: UnsafeCell<GlobalDescriptorTable>,
    tss: UnsafeCell<TaskStateSegment>,
    ist: UnsafeCell<[[u8; IST_STACK]; 3]>,
}

// SAFETY: a `CpuTables` is written only by `init_cpu`, once, on the CPU
// that owns it (its contract), and after that only by that CPU (`RSP0`,
// in `on_switch`/`enter_user`) and the CPU's own hardware.
unsafe impl Sync for CpuTables {}

impl core::fmt::Debug for CpuTables {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuTables").finish_non_exhaustive()
    }
}

impl CpuTables {
    /// Empty tables, filled by [`init_cpu`].
    pub const fn new() -> CpuTables {
        CpuTables {
            gdt: UnsafeCell::new(GlobalDescriptorTable::empty()),
            tss: UnsafeCell::new(TaskStateSegment::new()),
            ist: UnsafeCell::new([[0; IST_STACK]; 3]),
        }
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}

/// The page-table root every CPU booted with (restored when a user thread
/// ends), recorded by the first [`init_cpu`].
static KERNEL_CR3: AtomicUsize = AtomicUsize::new(0);
/// The user range `[start, end)` ([`set_user_range`]); empty until set.
static USER_START: AtomicUsize = AtomicUsize::new(0);
static USER_END: AtomicUsize = AtomicUsize::new(0);
/// The kernel's system call handler.
static SYSCALL_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Load this CPU's GDT and TSS from `t`, and turn on `syscall`/`sysret`
/// (`EFER.SCE`, `STAR`, `LSTAR`, `SFMASK`), `CR0.WP` (so a kernel write
/// through [`copyout`] to a read-only user page faults, as the user's
/// own would) and `CR0.EM` (x87/MMX instructions fault: no FPU state is
/// switched between threads, so a program may not use any). DragonFly: `init_secondary()`/`hammer_time()`'s GDT, TSS
/// and `MSR_STAR`/`MSR_LSTAR`/`MSR_SF_MASK` writes.
///
/// # Safety
/// Ring 0, interrupts off, once per CPU, after [`percpu::install`] of
/// `pcpu` on this CPU; `t` is this CPU's alone and unused before; the
/// kernel's code and data selectors are 0x08 and 0x10 (they are reloaded
/// from the new GDT), and it loads no segment selector into GS afterwards.
/// The IDT the CPU uses is [`crate::idt::Idt::new_user`]'s or
/// [`crate::idt::Idt::new`]'s (whose stubs `swapgs` by the saved CS).
pub unsafe fn init_cpu(pcpu: &'static PerCpu, t: &'static CpuTables) {
    let tss_ptr = t.tss.get();
    // SAFETY: caller: `t` is this CPU's and nothing else uses it yet.
    let (tss, gdt, ist) = unsafe { (&mut *tss_ptr, &mut *t.gdt.get(), &mut *t.ist.get()) };
    for (i, s) in ist.iter_mut().enumerate() {
        let top = (s.as_mut_ptr() as u64 + IST_STACK as u64) & !15;
        tss.interrupt_stack_table[i] = VirtAddr::new(top);
    }
    let kc = gdt.append(Descriptor::kernel_code_segment());
    let kd = gdt.append(Descriptor::kernel_data_segment());
    // 0x18: a 32-bit user code segment, unused: `STAR`'s sysret base.
    gdt.append(Descriptor::UserSegment(0x00cf_fa00_0000_ffff));
    let ud = gdt.append(Descriptor::user_data_segment());
    let uc = gdt.append(Descriptor::user_code_segment());
    // SAFETY: the TSS lives in `t`, 'static, for as long as the GDT.
    let ts = gdt.append(unsafe { Descriptor::tss_segment_unchecked(tss_ptr) });
    assert!(
        kc.0 == KERNEL_CS
            && kd.0 == KERNEL_SS
            && ud.0 == USER_SS
            && uc.0 == USER_CS
            && ts.0 == TSS_SEL,
        "lwkt-arch-x86_64: unexpected GDT layout"
    );
    // SAFETY: ring 0, interrupts off (caller); the GDT is 'static and
    // its code/data selectors are the ones loaded (same meaning as the
    // boot GDT's 0x08/0x10); GS's selector is not touched, so its base
    // stays; the TSS descriptor is available (never loaded before).
    unsafe {
        gdt.load_unsafe();
        CS::set_reg(SegmentSelector(KERNEL_CS));
        SS::set_reg(SegmentSelector(KERNEL_SS));
        x86_64::instructions::tables::load_tss(ts);
        Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS));
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
        // No FPU/SIMD state is switched (the target is soft-float): x87
        // and MMX instructions raise #NM (CR0.EM), SSE ones #UD (CR4.OSFXSR
        // stays clear), so a user program cannot see or leave state in
        // registers another one uses: it is ended instead.
        Cr0::update(|f| f.insert(Cr0Flags::EMULATE_COPROCESSOR));
    }
    Star::write(uc, ud, kc, kd).expect("lwkt-arch-x86_64: STAR layout");
    LStar::write(VirtAddr::new(lwkt_x86_syscall_entry as *const () as u64));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
    let cr3 = x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64() as usize;
    let _ = KERNEL_CR3.compare_exchange(0, cr3, Ordering::AcqRel, Ordering::Acquire);
    pcpu.user.tss.store(tss_ptr as usize, Ordering::Release);
    pcpu.user.loaded_cr3.store(cr3, Ordering::Relaxed);
}

/// Whether [`init_cpu`] ran on the CPU of `pcpu`.
pub fn cpu_ready(pcpu: &PerCpu) -> bool {
    pcpu.user.tss.load(Ordering::Acquire) != 0
}

/// Declare `[start, end)` the user range: the addresses [`copyin`] and
/// [`copyout`] accept. DragonFly: `VM_MAX_USER_ADDRESS`.
///
/// # Safety
/// Every page table a user thread runs on ([`UserProgram::cr3`]) maps in
/// this range, *user-accessible*, only pages of that program or read-only
/// pages every program may read (other programs' pages may be mapped
/// supervisor-only, so kernel threads can reach them whatever CR3 is
/// loaded: [`UserProgram::window`] keeps copies inside the program's
/// own); the kernel keeps nothing of its own there; `start < end`.
pub unsafe fn set_user_range(start: usize, end: usize) {
    assert!(start < end, "lwkt-arch-x86_64: an empty user range");
    USER_START.store(start, Ordering::Relaxed);
    USER_END.store(end, Ordering::Release);
}

/// The user range set by [`set_user_range`].
pub fn user_range() -> (usize, usize) {
    (
        USER_START.load(Ordering::Relaxed),
        USER_END.load(Ordering::Acquire),
    )
}

/// The kernel's system call handler: called on the calling thread's kernel
/// stack, interrupts on, with the user's registers (`rax` the number;
/// `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9` the arguments; its `rax` is
/// what the user gets back). It may block, be preempted and migrate.
pub type SyscallHandler = fn(&mut TrapFrame);

/// Set the system call handler (before any user thread runs).
///
/// # Safety
/// `f` treats every register of the frame as untrusted user input, and
/// changes `rip`/`rflags`/`rsp` only to values a user program could have
/// reached itself (the exit path sanitises RFLAGS and refuses a
/// non-canonical return address, nothing more).
pub unsafe fn set_syscall_handler(f: SyscallHandler) {
    SYSCALL_HANDLER.store(f as usize, Ordering::Release);
}

/// Why [`run_user`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserExit {
    /// The program called the exit system call ([`exit_user`]).
    Exited(u64),
    /// The program took an exception in ring 3 and was ended.
    Fault {
        /// The vector (6 #UD, 13 #GP, 14 #PF, ...).
        vector: u64,
        /// The CPU's error code (0 if none).
        error: u64,
        /// Where.
        rip: u64,
        /// CR2 for a page fault, else 0.
        addr: u64,
    },
}

/// What [`run_user`] starts.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct UserProgram {
    /// The entry point (a user-accessible address in `cr3`'s tables).
    pub entry: u64,
    /// The initial user stack pointer.
    pub stack: u64,
    /// `rdi`, `rsi`, `rdx` at entry.
    pub args: [u64; 3],
    /// The page-table root the program runs on (physical address).
    pub cr3: u64,
    /// The kernel's word for this program, which its system call handler
    /// reads back with [`user_cookie`] (a pointer to its process state).
    pub cookie: u64,
    /// `[start, end)`: the program's own memory, the only addresses
    /// [`copyin`]/[`copyout`] accept for it (inside the user range). The
    /// page tables keep the program out of everything else; this keeps the
    /// kernel from copying to or from another program's pages on its
    /// behalf (which the kernel may reach: see [`set_user_range`]).
    pub window: [u64; 2],
}

/// A running user thread's kernel-side state, on [`run_user`]'s frame.
#[repr(C)]
struct UserCtx {
    /// The kernel stack pointer [`exit_user`] and a user fault go back to.
    jmp: Cell<usize>,
    exit: Cell<Option<UserExit>>,
    cookie: u64,
    window: [u64; 2],
}

/// Run `p` in ring 3 on this thread until it exits or faults.
/// DragonFly: `cpu_set_upcall`/`fork_trampoline` -> `doreti` into user
/// mode; the return is `exit1()` or `trapsignal()` ending the process.
///
/// # Safety
/// Called from an lwkt thread (interrupts on, outside any critical
/// section, no token held) of a CPU whose [`init_cpu`] ran, on a machine
/// whose every CPU ran it and uses an IDT of [`crate::idt`]. `p.cr3` is a
/// valid page-table root that maps the kernel exactly as the boot tables
/// do (every interrupt and trap runs on it) and user-accessible pages only
/// in the user range; `p.entry` and `p.stack` may be anything (a bad
/// value ends the program with a fault).
pub unsafe fn run_user(p: &UserProgram) -> UserExit {
    let ctx = UserCtx {
        jmp: Cell::new(0),
        exit: Cell::new(None),
        cookie: p.cookie,
        window: p.window,
    };
    x86_64::instructions::interrupts::disable();
    // SAFETY: a thread of a CPU with its block installed (caller).
    let u = unsafe { &percpu::current().user };
    assert!(
        u.tss.load(Ordering::Relaxed) != 0,
        "lwkt-arch-x86_64: run_user on a CPU whose usermode::init_cpu did not run"
    );
    u.uctx
        .store(&ctx as *const UserCtx as usize, Ordering::Relaxed);
    u.cr3.store(p.cr3 as usize, Ordering::Relaxed);
    // SAFETY: ring 0; `p.cr3` maps the kernel as the boot tables (caller).
    unsafe { load_cr3(u, p.cr3 as usize) };
    // SAFETY: interrupts off, thread context, registers need no saving
    // (a normal call).
    unsafe { doreti() };
    // SAFETY: `jmp` is this frame's; the entry records the kernel stack and
    // RSP0 from the current stack pointer; interrupts are off.
    unsafe { lwkt_x86_enter_user(ctx.jmp.as_ptr(), p) };
    // Back from `leave_user`, interrupts off, perhaps on another CPU.
    // SAFETY: as above.
    let u = unsafe { &percpu::current().user };
    u.kstack.store(0, Ordering::Relaxed);
    u.uctx.store(0, Ordering::Relaxed);
    u.cr3.store(0, Ordering::Relaxed);
    // SAFETY: the boot tables map the kernel.
    unsafe { load_cr3(u, KERNEL_CR3.load(Ordering::Relaxed)) };
    x86_64::instructions::interrupts::enable();
    ctx.exit.get().unwrap_or(UserExit::Exited(u64::MAX))
}

/// Load `cr3` unless it is loaded already.
///
/// # Safety
/// Ring 0; `cr3` maps the kernel as the boot tables do.
unsafe fn load_cr3(u: &UserCpu, cr3: usize) {
    if cr3 != 0 && u.loaded_cr3.load(Ordering::Relaxed) != cr3 {
        // SAFETY: caller.
        unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
        u.loaded_cr3.store(cr3, Ordering::Relaxed);
    }
}

/// End the calling user thread's program with status `code`: from the
/// system call handler (or anything it calls) of a user thread. Its
/// [`run_user`] returns [`UserExit::Exited`]. DragonFly: `exit1()`.
///
/// # Safety
/// On the user thread's own kernel stack, from its system call handler,
/// with nothing on the stack between [`run_user`] and here that must be
/// dropped or unlocked (no token, no critical section, no guard, no
/// message in flight): that stack is abandoned.
pub unsafe fn exit_user(code: u64) -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: a user thread's kernel side (caller): GS is the kernel's.
    let u = unsafe { &percpu::current().user };
    let ctx = u.uctx.load(Ordering::Relaxed) as *const UserCtx;
    assert!(
        !ctx.is_null(),
        "lwkt-arch-x86_64: exit_user off a user thread"
    );
    // SAFETY: `uctx` names the live `UserCtx` of `run_user`'s frame below.
    let ctx = unsafe { &*ctx };
    ctx.exit.set(Some(UserExit::Exited(code)));
    // SAFETY: back to `run_user`'s frame, which is live (caller).
    unsafe { lwkt_x86_leave_user(ctx.jmp.get()) }
}

/// The [`UserProgram::cookie`] of the running user thread, or `None` on a
/// thread that is not one.
pub fn user_cookie() -> Option<u64> {
    // SAFETY: as in `in_user_thread`.
    let ctx = unsafe { percpu::current() }
        .user
        .uctx
        .load(Ordering::Relaxed) as *const UserCtx;
    // SAFETY: a non-null `uctx` names the running thread's live `UserCtx`
    // (it moves with the thread on every switch).
    (!ctx.is_null()).then(|| unsafe { (*ctx).cookie })
}

/// Whether the running thread is a user thread (inside [`run_user`]).
pub fn in_user_thread() -> bool {
    // SAFETY: called from kernel code of a CPU with its block installed
    // (GS holds it): everything that can call this runs in ring 0 after
    // `install` on a machine of this backend.
    unsafe { percpu::current() }
        .user
        .uctx
        .load(Ordering::Relaxed)
        != 0
}

/// The user state moves with the thread: save the CPU's into `from`'s
/// context words 1-3, load `to`'s, and point RSP0 and CR3 at it. A thread
/// without a user side has zeros there, and leaves RSP0 and CR3 as they
/// are (lazily: no TLB flush for kernel threads). DragonFly:
/// `cpu_lwkt_switch` loading `PCB_RSP0`/`pcb_cr3`.
///
/// # Safety
/// On this CPU, interrupts off or in lwkt-core's switch (a critical
/// section), `from` the running thread's context and `to` the next one's.
#[inline(always)]
pub(crate) unsafe fn on_switch(from: &Context, to: &Context) {
    // SAFETY: lwkt runs only on CPUs with their block installed.
    let u = unsafe { &percpu::current().user };
    from.words[1].set(u.kstack.load(Ordering::Relaxed));
    from.words[2].set(u.cr3.load(Ordering::Relaxed));
    from.words[3].set(u.uctx.load(Ordering::Relaxed));
    let ks = to.words[1].get();
    let cr3 = to.words[2].get();
    u.kstack.store(ks, Ordering::Relaxed);
    u.cr3.store(cr3, Ordering::Relaxed);
    u.uctx.store(to.words[3].get(), Ordering::Relaxed);
    if ks != 0 {
        let tss = u.tss.load(Ordering::Relaxed) as *mut u8;
        // SAFETY: a thread has a user side only on CPUs whose `init_cpu`
        // ran (`run_user`'s contract), so `tss` is this CPU's TSS; RSP0 is
        // at byte 4 (the struct is packed).
        unsafe { tss.add(4).cast::<u64>().write_unaligned(ks as u64) };
    }
    // Not only when `ks` is set: a thread switched away inside `run_user`
    // before its first entry (its `doreti` check) has its tables but no
    // trap stack yet.
    // SAFETY: `cr3` came from `run_user`'s caller, who vouched for it
    // (`load_cr3` skips 0).
    unsafe { load_cr3(u, cr3) };
}

/// A fault taken in ring 3: end the program and go back to [`run_user`].
pub(crate) fn user_fault(f: &FaultFrame) {
    // SAFETY: the fault stub swapped GS (the saved CS was ring 3), so GS
    // holds this CPU's block.
    let u = unsafe { &percpu::current().user };
    let ctx = u.uctx.load(Ordering::Relaxed) as *const UserCtx;
    if ctx.is_null() {
        return; // not a user thread: the caller treats it as fatal
    }
    let addr = if f.vector == 14 {
        x86_64::registers::control::Cr2::read_raw()
    } else {
        0
    };
    // SAFETY: `uctx` names the live `UserCtx` of the thread's `run_user`
    // frame; the fault came from ring 3, so the kernel stack holds only
    // this trap frame below it.
    let ctx = unsafe { &*ctx };
    ctx.exit.set(Some(UserExit::Fault {
        vector: f.vector,
        error: f.error,
        rip: f.rip,
        addr,
    }));
    // SAFETY: as above.
    unsafe { lwkt_x86_leave_user(ctx.jmp.get()) }
}

/// The exit to user mode's pending-work check (DragonFly `doreti`'s
/// `splz` and AST check): interrupts off, run IPI work still queued and
/// make a preemption or round-robin still asked for. Returns with
/// interrupts off.
///
/// # Safety
/// Ring 0 on a thread of an attached CPU, interrupts off, outside any
/// critical section, with the registers of the code to return to saved.
#[inline(always)]
unsafe fn doreti() {
    // SAFETY: caller: GS holds the kernel block.
    let Some(cpu) = (unsafe { percpu::current() }).cpu() else {
        return;
    };
    if cpu.has_pending() {
        // SAFETY: on this CPU, interrupts off, registers saved (caller):
        // as from the IPI vector's handler.
        unsafe { cpu.ipi_interrupt() };
    }
    // SAFETY: as above; a switch returns here with interrupts off again
    // (RFLAGS is per thread), perhaps on another CPU.
    unsafe { cpu.preempt_from_interrupt() };
}

/// RFLAGS bits a user program may set: CF, PF, AF, ZF, SF, DF, OF (TF, AC,
/// IOPL and NT are dropped); IF and bit 1 are always set.
const USER_FLAGS: u64 = 0xCD5;

/// Whether `a` is a canonical lower-half address.
fn canonical_low(a: u64) -> bool {
    a >> 47 == 0
}

#[no_mangle]
extern "C" fn lwkt_x86_syscall(f: &mut TrapFrame) {
    let h = SYSCALL_HANDLER.load(Ordering::Acquire);
    if h == 0 {
        f.rax = u64::MAX;
    } else {
        // SAFETY: only `set_syscall_handler` stores here, a
        // `SyscallHandler`.
        let h: SyscallHandler = unsafe { core::mem::transmute::<usize, SyscallHandler>(h) };
        h(f);
    }
    f.fault.rflags = (f.fault.rflags & USER_FLAGS) | 0x202;
    f.fault.cs = u64::from(USER_CS);
    f.fault.ss = u64::from(USER_SS);
    if !canonical_low(f.fault.rip) {
        x86_64::instructions::interrupts::disable();
        user_fault(&FaultFrame {
            vector: 13,
            error: 0,
            ..f.fault
        });
    }
    x86_64::instructions::interrupts::disable();
    // SAFETY: interrupts off, on the user thread's kernel stack, its user
    // registers saved in `f`.
    unsafe { doreti() };
}

/// Copy `dst.len()` bytes from user address `src` into `dst`. DragonFly:
/// `copyin()`.
///
/// # Errors
/// [`Fault`] if the range is not inside the user range (or overflows), if
/// this is not a user thread, or if a page of it is not mapped readable
/// for the program (the page fault is turned into this error).
pub fn copyin(src: usize, dst: &mut [u8]) -> Result<(), Fault> {
    check(src, dst.len())?;
    // SAFETY: `dst` is writable kernel memory of that length; `src..+len`
    // lies in the user range, which the running user thread's tables map
    // only to its own pages or not at all (`set_user_range`), and a fault
    // on it is caught by the fixup entry of `lwkt_x86_copy_user`.
    let r = unsafe { lwkt_x86_copy_user(dst.as_mut_ptr(), src as *const u8, dst.len()) };
    if r == 0 {
        Ok(())
    } else {
        Err(Fault)
    }
}

/// Copy `src` to user address `dst`. DragonFly: `copyout()`.
///
/// # Errors
/// As for [`copyin`] (a read-only user page faults too: `CR0.WP`).
pub fn copyout(src: &[u8], dst: usize) -> Result<(), Fault> {
    check(dst, src.len())?;
    // SAFETY: as in `copyin`, the other way round.
    let r = unsafe { lwkt_x86_copy_user(dst as *mut u8, src.as_ptr(), src.len()) };
    if r == 0 {
        Ok(())
    } else {
        Err(Fault)
    }
}

/// A bad user address (DragonFly's `EFAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

fn check(addr: usize, len: usize) -> Result<(), Fault> {
    let (start, end) = user_range();
    let last = addr.checked_add(len).ok_or(Fault)?;
    if addr < start || last > end {
        return Err(Fault);
    }
    // SAFETY: only a user thread (kernel code in ring 0 with GS the
    // kernel's) gets past the range check with a range to copy; see
    // `in_user_thread`.
    let ctx = unsafe { percpu::current() }
        .user
        .uctx
        .load(Ordering::Relaxed) as *const UserCtx;
    if ctx.is_null() {
        return Err(Fault);
    }
    // SAFETY: the running thread's live `UserCtx`.
    let [ws, we] = unsafe { (*ctx).window };
    if (addr as u64) < ws || last as u64 > we {
        return Err(Fault);
    }
    Ok(())
}

/// The exception fixup table: a fault in ring 0 at `insn` resumes at
/// `fixup`. DragonFly: `pcb_onfault`.
pub(crate) fn fixup(rip: u64) -> Option<u64> {
    let insn = lwkt_x86_copy_user_insn as *const () as u64;
    (rip == insn).then_some(lwkt_x86_copy_user_fixup as *const () as u64)
}

/// The address `syscall` jumps to (`LSTAR`): a user fault reported there
/// means the CPU did not switch to ring 0 (the machine's `syscall` is
/// broken; use the `int 0xF0` gate instead).
pub fn syscall_entry() -> u64 {
    lwkt_x86_syscall_entry as *const () as u64
}

/// Whether `rip` (saved by an NMI or #MC taken in ring 0) is inside the
/// `syscall` path's `swapgs` window: the entry's first instruction (its
/// `swapgs` not yet run) or the exit's `sysretq`/`iretq` (its `swapgs`
/// run): the places where ring 0 runs on the user's GS, which only the
/// paranoid entry's GS base test gets right. For tests and diagnostics.
pub fn in_swapgs_window(rip: u64) -> bool {
    rip == lwkt_x86_syscall_entry as *const () as u64
        || rip == lwkt_x86_sysret_insn as *const () as u64
        || rip == lwkt_x86_sysexit_iret_insn as *const () as u64
}

/// The `int 0xF0` system call gate's handler (`Idt::new_user`).
pub(crate) fn int_syscall_entry() -> u64 {
    lwkt_x86_int_syscall_stub as *const () as u64
}

/// Whether a `ud1 eax, eax` (`0F B9 C0`) in ring 3 is a system call
/// ([`set_trap_syscall`]).
static TRAP_SYSCALL: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The bytes of the trap system call instruction, `ud1 eax, eax`.
pub const TRAP_SYSCALL_INSN: [u8; 3] = [0x0F, 0xB9, 0xC0];

/// Accept `ud1 eax, eax` from ring 3 as a system call (the #UD it raises
/// enters the handler like `syscall`, and the program resumes after it),
/// for machines where neither `syscall` nor `int n` from ring 3 works: a
/// hypervisor that emulates both instead of running them (PVM, a
/// software KVM, does for guests that are not PVM-aware). Any other #UD
/// still ends the program.
pub fn set_trap_syscall(on: bool) {
    TRAP_SYSCALL.store(on, Ordering::Release);
}

/// A #UD from ring 3 ([`crate::idt`]'s trap dispatch): if it is the trap
/// system call, run it and return true (the stub returns to the program
/// after the instruction).
pub(crate) fn trap_syscall(f: &mut TrapFrame) -> bool {
    if !TRAP_SYSCALL.load(Ordering::Acquire) {
        return false;
    }
    let (start, end) = user_range();
    let rip = f.fault.rip as usize;
    if rip < start || rip.checked_add(3).is_none_or(|e| e > end) {
        return false;
    }
    let mut insn = [0u8; 3];
    // SAFETY: a user-range address (checked), read on the faulting user
    // thread's own tables; a page fault on it is caught by the fixup.
    let r = unsafe { lwkt_x86_copy_user(insn.as_mut_ptr(), rip as *const u8, 3) };
    if r != 0 || insn != TRAP_SYSCALL_INSN {
        return false;
    }
    f.fault.rip += 3;
    x86_64::instructions::interrupts::enable();
    lwkt_x86_syscall(f);
    true
}

/// The vector of the `int` system call gate (above the device vectors,
/// below the spurious one).
pub const SYSCALL_INT: u8 = 0xF0;

extern "C" {
    fn lwkt_x86_syscall_entry();
    fn lwkt_x86_sysret_insn();
    fn lwkt_x86_sysexit_iret_insn();
    fn lwkt_x86_int_syscall_stub();
    fn lwkt_x86_enter_user(jmp: *mut usize, p: *const UserProgram);
    fn lwkt_x86_leave_user(jmp: usize) -> !;
    fn lwkt_x86_copy_user(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn lwkt_x86_copy_user_insn();
    fn lwkt_x86_copy_user_fixup();
}

core::arch::global_asm!(
    ".text",
    // syscall: RCX = user RIP, R11 = user RFLAGS, IF/DF/TF/AC clear
    // (SFMASK), still on the user stack with the user GS.
    ".p2align 4",
    ".globl lwkt_x86_syscall_entry",
    "lwkt_x86_syscall_entry:",
    "swapgs",
    "mov gs:[{scratch}], rsp",
    "mov rsp, gs:[{kstack}]",
    "push {uss}",
    "push qword ptr gs:[{scratch}]",
    "push r11",
    "push {ucs}",
    "push rcx",
    "push 0",
    "push {sysvec}",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "mov rdi, rsp",
    "sti",
    "call lwkt_x86_syscall",
    // lwkt_x86_syscall returns with interrupts off (its doreti).
    "cli",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 16",
    "mov rcx, [rsp]",
    "mov r11, rcx",
    "shr r11, 47",
    "jnz 7f",
    "mov r11, [rsp + 16]",
    "mov rsp, [rsp + 24]",
    "swapgs",
    ".globl lwkt_x86_sysret_insn",
    "lwkt_x86_sysret_insn:",
    "sysretq",
    "7:",
    "swapgs",
    ".globl lwkt_x86_sysexit_iret_insn",
    "lwkt_x86_sysexit_iret_insn:",
    "iretq",
    "",
    // `int 0xF0` (a DPL-3 interrupt gate, `Idt::new_user`): the same
    // system call, for machines whose `syscall` misbehaves (seen under
    // KVM nested in another hypervisor: RIP became LSTAR but the CPU
    // stayed in ring 3). Only ring 3 can get here (a ring-0 `int 0xF0`
    // would find the kernel GS and swap it away: the kernel never issues
    // one). The frame is the CPU's; the return is `iretq`.
    ".p2align 4",
    ".globl lwkt_x86_int_syscall_stub",
    "lwkt_x86_int_syscall_stub:",
    // Raised in ring 0 (a kernel `int 0xF0`, or a stray interrupt on this
    // vector): nothing to do, and GS must not be swapped.
    "test byte ptr [rsp + 8], 3",
    "jnz 6f",
    "iretq",
    "6:",
    "swapgs",
    "push 0",
    "push {sysvec}",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "mov rdi, rsp",
    "sti",
    "call lwkt_x86_syscall",
    "cli",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 16",
    "swapgs",
    "iretq",
    "",
    // lwkt_x86_enter_user(jmp: rdi, program: rsi), interrupts off.
    ".p2align 4",
    ".globl lwkt_x86_enter_user",
    "lwkt_x86_enter_user:",
    "pushfq",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rax, rsp",
    "and rax, -16",
    "mov gs:[{kstack}], rax",
    "mov rcx, gs:[{tss}]",
    "mov [rcx + 4], rax",
    "push {uss}",
    "push qword ptr [rsi + 8]",
    "push 0x202",
    "push {ucs}",
    "push qword ptr [rsi]",
    "mov rdi, [rsi + 16]",
    "mov rdx, [rsi + 32]",
    "mov rsi, [rsi + 24]",
    "xor eax, eax",
    "xor ebx, ebx",
    "xor ecx, ecx",
    "xor ebp, ebp",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    "swapgs",
    "iretq",
    "",
    // lwkt_x86_leave_user(jmp: rdi): back into enter_user's caller.
    ".p2align 4",
    ".globl lwkt_x86_leave_user",
    "lwkt_x86_leave_user:",
    "cli",
    "mov rsp, rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "popfq",
    "ret",
    "",
    // lwkt_x86_copy_user(dst, src, len) -> 0, or 1 after a fault.
    ".p2align 4",
    ".globl lwkt_x86_copy_user",
    ".globl lwkt_x86_copy_user_insn",
    ".globl lwkt_x86_copy_user_fixup",
    "lwkt_x86_copy_user:",
    "mov rcx, rdx",
    "lwkt_x86_copy_user_insn:",
    "rep movsb",
    "xor eax, eax",
    "ret",
    "lwkt_x86_copy_user_fixup:",
    "mov eax, 1",
    "ret",
    scratch = const GS_SCRATCH,
    kstack = const GS_KSTACK,
    tss = const GS_TSS,
    uss = const USER_SS,
    ucs = const USER_CS,
    sysvec = const SYSCALL_VECTOR,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gs_offsets_are_what_the_asm_reads() {
        let base = core::mem::offset_of!(PerCpu, user);
        assert_eq!(base + core::mem::offset_of!(UserCpu, scratch), GS_SCRATCH);
        assert_eq!(base + core::mem::offset_of!(UserCpu, kstack), GS_KSTACK);
        assert_eq!(base + core::mem::offset_of!(UserCpu, tss), GS_TSS);
    }

    #[test]
    fn canonical_and_flags() {
        assert!(canonical_low(0x40_0000));
        assert!(canonical_low(0x7fff_ffff_f000));
        assert!(!canonical_low(0x8000_0000_0000));
        assert!(!canonical_low(0xffff_8000_0000_0000));
        // TF (0x100), AC (0x40000), IOPL (0x3000) and NT (0x4000) go.
        assert_eq!((0x4_7fff & USER_FLAGS) | 0x202, 0xed7);
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        // Outside a user thread everything is refused; the overflow check
        // comes first.
        assert_eq!(check(usize::MAX, 2), Err(Fault));
    }
}
