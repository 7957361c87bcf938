//! The EL1 exception vector table and its entries.
//!
//! - IRQs taken from EL1 with `SP_ELx` (the kernel's own state) save a
//!   full frame ([`Frame`]: x0–x30, `ELR_EL1`, `SPSR_EL1`, `FPSR`,
//!   `FPCR` and q0–q31: the interrupted code may use any SIMD register,
//!   and the upper halves of v8–v15 are not callee-saved), call
//!   `lwkt_a64_irq_entry`, restore and `eret`. `ELR`/`SPSR` live in the
//!   frame, not in the registers, because the handler may switch threads
//!   ([`lwkt_core::Cpu::preempt_from_interrupt`]) and another thread's
//!   interrupt overwrites them before this one returns.
//! - Every other vector (synchronous exceptions, FIQ, SError, anything
//!   from EL0 or from `SP_EL0`) saves the same frame and calls the fault
//!   handler ([`set_fault_handler`]) with `ESR_EL1` and `FAR_EL1`.
//!
//! The IRQ entry acknowledges the interrupt at the GIC and dispatches:
//! lwkt's IPI SGI, the virtual timer's PPI, the device lines' SGIs and
//! SPIs (see [`crate::gic`]); any other id goes to the kernel's handler
//! ([`set_irq_handler`]).
//!
//! DragonFly: `exception.S` / `Xipiq`, `Xtimer`, `Xintr` on x86-64.

use core::sync::atomic::{AtomicUsize, Ordering};

use aarch64_cpu::registers::{Readable, Writeable, ESR_EL1, FAR_EL1, VBAR_EL1};

use crate::gic;

/// The registers an exception entry saved, as laid out on the stack.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Frame {
    /// x0–x30.
    pub x: [u64; 31],
    /// `ELR_EL1`: where the exception was taken.
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted PSTATE.
    pub spsr: u64,
    /// `FPSR`.
    pub fpsr: u64,
    /// `FPCR`.
    pub fpcr: u64,
    /// Which vector: 0–15, in the table's order (4 = synchronous from
    /// EL1 with `SP_ELx`, 5 = its IRQ, ...).
    pub vector: u64,
    /// q0–q31.
    pub q: [u128; 32],
}

const _: () = assert!(core::mem::size_of::<Frame>() == 0x120 + 32 * 16);

/// What the fault handler is given: the frame, `ESR_EL1` and `FAR_EL1`.
#[derive(Debug)]
pub struct Fault<'a> {
    /// The saved registers.
    pub frame: &'a Frame,
    /// `ESR_EL1`: the syndrome.
    pub esr: u64,
    /// `FAR_EL1`: the faulting address (for aborts).
    pub far: u64,
}

impl Fault<'_> {
    /// The exception class, `ESR_EL1` bits 31:26.
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// What the class means ([`crate::enc::exception_class`]).
    pub fn ec_name(&self) -> &'static str {
        crate::enc::exception_class(self.ec())
    }
}

/// The fault handler: never returns.
pub type FaultHandler = fn(&Fault<'_>) -> !;
/// A handler for interrupt ids this backend does not own: given the id
/// and the interrupted frame, called before the EOI.
pub type IrqHandler = fn(u32, &Frame);

static FAULT_HANDLER: AtomicUsize = AtomicUsize::new(0);
static IRQ_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Set the function every exception other than an IRQ ends in.
/// DragonFly: `trap()`.
///
/// # Safety
/// `f` runs in exception context on whatever CPU faulted, IRQs masked,
/// possibly before that CPU installed its `PerCpu` block and in the middle
/// of any lwkt operation: it must not call into lwkt on that CPU (what it
/// calls must allow exception context, like `Cpu::snapshot`).
pub unsafe fn set_fault_handler(f: FaultHandler) {
    FAULT_HANDLER.store(f as usize, Ordering::Release);
}

/// Set the handler of the interrupt ids this backend does not own (SGIs
/// 1–7, PPIs but the timer's, SPIs outside the device lines'). Without
/// one they are acknowledged and ended, nothing else.
///
/// # Safety
/// `f` runs in the IRQ entry of any CPU, IRQs masked, possibly inside an
/// lwkt critical section of the interrupted thread; it must allow that
/// (no blocking, no lwkt call that may switch).
pub unsafe fn set_irq_handler(f: IrqHandler) {
    IRQ_HANDLER.store(f as usize, Ordering::Release);
}

#[no_mangle]
extern "C" fn lwkt_a64_fault(frame: &Frame) -> ! {
    let fault = Fault {
        frame,
        esr: ESR_EL1.get(),
        far: FAR_EL1.get(),
    };
    let f = FAULT_HANDLER.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `set_fault_handler` stores here, a `FaultHandler`.
        let f: FaultHandler = unsafe { core::mem::transmute::<usize, FaultHandler>(f) };
        f(&fault)
    }
    loop {
        aarch64_cpu::asm::wfi();
    }
}

/// The IRQ entry (called by the vector's stub with the saved frame).
#[no_mangle]
extern "C" fn lwkt_a64_irq(frame: &Frame) {
    // SAFETY: in this CPU's IRQ entry; the id is ended below on every
    // path.
    let intid = unsafe { gic::ack() };
    if intid >= 1020 {
        return; // spurious: nothing to end
    }
    match intid {
        gic::IPI_SGI => {
            // SAFETY: acknowledged above.
            unsafe { gic::eoi(intid) };
            // SAFETY: the IRQ entry, frame saved by the stub.
            unsafe { crate::arch::ipi_entry() };
        }
        gic::TIMER_PPI => {
            // The timer's interrupt is level: disable it before the EOI,
            // or it is taken again at once. `set_timer` arms it again.
            crate::time::disarm();
            // SAFETY: acknowledged above.
            unsafe { gic::eoi(intid) };
            // SAFETY: as above.
            unsafe { crate::arch::timer_entry() };
        }
        _ => {
            let line = if (gic::DEVICE_SGI_BASE..gic::DEVICE_SGI_BASE + gic::DEVICE_SGIS)
                .contains(&intid)
            {
                Some((intid - gic::DEVICE_SGI_BASE) as usize)
            } else if (gic::DEVICE_SPI_BASE..gic::DEVICE_SPI_BASE + gic::DEVICE_SPIS)
                .contains(&intid)
            {
                Some((intid - gic::DEVICE_SPI_BASE) as usize)
            } else {
                None
            };
            match line {
                Some(irq) => {
                    // SAFETY: acknowledged above (edge-triggered: ended at
                    // once).
                    unsafe { gic::eoi(intid) };
                    // SAFETY: as above.
                    unsafe { crate::arch::device_entry(irq) };
                }
                None => {
                    let h = IRQ_HANDLER.load(Ordering::Acquire);
                    if h != 0 {
                        // SAFETY: only `set_irq_handler` stores here.
                        let h: IrqHandler = unsafe { core::mem::transmute::<usize, IrqHandler>(h) };
                        h(intid, frame);
                    }
                    // SAFETY: acknowledged above.
                    unsafe { gic::eoi(intid) };
                }
            }
        }
    }
}

core::arch::global_asm!(
    // Save the rest of the frame (see `Frame`; the vector entry saved x0
    // and x1 and put the vector number in x1): 0x120 bytes of integer
    // state, then q0-q31 (0x200 bytes); x0 = the frame.
    ".macro lwkt_a64_save_rest",
    "stp x2, x3, [sp, #0x10]",
    "stp x4, x5, [sp, #0x20]",
    "stp x6, x7, [sp, #0x30]",
    "stp x8, x9, [sp, #0x40]",
    "stp x10, x11, [sp, #0x50]",
    "stp x12, x13, [sp, #0x60]",
    "stp x14, x15, [sp, #0x70]",
    "stp x16, x17, [sp, #0x80]",
    "stp x18, x19, [sp, #0x90]",
    "stp x20, x21, [sp, #0xa0]",
    "stp x22, x23, [sp, #0xb0]",
    "stp x24, x25, [sp, #0xc0]",
    "stp x26, x27, [sp, #0xd0]",
    "stp x28, x29, [sp, #0xe0]",
    "mrs x0, elr_el1",
    "stp x30, x0, [sp, #0xf0]",
    "mrs x0, spsr_el1",
    "mrs x2, fpsr",
    "stp x0, x2, [sp, #0x100]",
    "mrs x0, fpcr",
    "stp x0, x1, [sp, #0x110]",
    "add x0, sp, #0x120",
    "stp q0, q1, [x0, #0x000]",
    "stp q2, q3, [x0, #0x020]",
    "stp q4, q5, [x0, #0x040]",
    "stp q6, q7, [x0, #0x060]",
    "stp q8, q9, [x0, #0x080]",
    "stp q10, q11, [x0, #0x0a0]",
    "stp q12, q13, [x0, #0x0c0]",
    "stp q14, q15, [x0, #0x0e0]",
    "stp q16, q17, [x0, #0x100]",
    "stp q18, q19, [x0, #0x120]",
    "stp q20, q21, [x0, #0x140]",
    "stp q22, q23, [x0, #0x160]",
    "stp q24, q25, [x0, #0x180]",
    "stp q26, q27, [x0, #0x1a0]",
    "stp q28, q29, [x0, #0x1c0]",
    "stp q30, q31, [x0, #0x1e0]",
    "mov x0, sp",
    ".endm",
    "",
    // A vector entry (at most 32 instructions): room for the frame, x0
    // and x1 saved, the vector number in x1, on to the common path.
    ".macro lwkt_a64_vector vec, target",
    ".balign 0x80",
    "sub sp, sp, #0x320",
    "stp x0, x1, [sp, #0x00]",
    "mov x1, #\\vec",
    "b \\target",
    ".endm",
    "",
    ".text",
    ".balign 0x800",
    ".globl lwkt_a64_vectors",
    "lwkt_a64_vectors:",
    // Current EL with SP_EL0: not used by this kernel.
    "lwkt_a64_vector 0, lwkt_a64_fault_stub",
    "lwkt_a64_vector 1, lwkt_a64_fault_stub",
    "lwkt_a64_vector 2, lwkt_a64_fault_stub",
    "lwkt_a64_vector 3, lwkt_a64_fault_stub",
    // Current EL with SP_ELx: the kernel's own exceptions and IRQs.
    "lwkt_a64_vector 4, lwkt_a64_fault_stub",
    "lwkt_a64_vector 5, lwkt_a64_irq_stub",
    "lwkt_a64_vector 6, lwkt_a64_fault_stub",
    "lwkt_a64_vector 7, lwkt_a64_fault_stub",
    // Lower EL, AArch64 and AArch32: no user mode here.
    "lwkt_a64_vector 8, lwkt_a64_fault_stub",
    "lwkt_a64_vector 9, lwkt_a64_fault_stub",
    "lwkt_a64_vector 10, lwkt_a64_fault_stub",
    "lwkt_a64_vector 11, lwkt_a64_fault_stub",
    "lwkt_a64_vector 12, lwkt_a64_fault_stub",
    "lwkt_a64_vector 13, lwkt_a64_fault_stub",
    "lwkt_a64_vector 14, lwkt_a64_fault_stub",
    "lwkt_a64_vector 15, lwkt_a64_fault_stub",
    "",
    "lwkt_a64_fault_stub:",
    "lwkt_a64_save_rest",
    "bl lwkt_a64_fault",
    "brk #0",
    "",
    "lwkt_a64_irq_stub:",
    "lwkt_a64_save_rest",
    "bl lwkt_a64_irq",
    "add x0, sp, #0x120",
    "ldp q0, q1, [x0, #0x000]",
    "ldp q2, q3, [x0, #0x020]",
    "ldp q4, q5, [x0, #0x040]",
    "ldp q6, q7, [x0, #0x060]",
    "ldp q8, q9, [x0, #0x080]",
    "ldp q10, q11, [x0, #0x0a0]",
    "ldp q12, q13, [x0, #0x0c0]",
    "ldp q14, q15, [x0, #0x0e0]",
    "ldp q16, q17, [x0, #0x100]",
    "ldp q18, q19, [x0, #0x120]",
    "ldp q20, q21, [x0, #0x140]",
    "ldp q22, q23, [x0, #0x160]",
    "ldp q24, q25, [x0, #0x180]",
    "ldp q26, q27, [x0, #0x1a0]",
    "ldp q28, q29, [x0, #0x1c0]",
    "ldp q30, q31, [x0, #0x1e0]",
    "ldp x0, x1, [sp, #0x100]",
    "msr spsr_el1, x0",
    "msr fpsr, x1",
    "ldr x0, [sp, #0x110]",
    "msr fpcr, x0",
    "ldp x30, x0, [sp, #0xf0]",
    "msr elr_el1, x0",
    "ldp x0, x1, [sp, #0x00]",
    "ldp x2, x3, [sp, #0x10]",
    "ldp x4, x5, [sp, #0x20]",
    "ldp x6, x7, [sp, #0x30]",
    "ldp x8, x9, [sp, #0x40]",
    "ldp x10, x11, [sp, #0x50]",
    "ldp x12, x13, [sp, #0x60]",
    "ldp x14, x15, [sp, #0x70]",
    "ldp x16, x17, [sp, #0x80]",
    "ldp x18, x19, [sp, #0x90]",
    "ldp x20, x21, [sp, #0xa0]",
    "ldp x22, x23, [sp, #0xb0]",
    "ldp x24, x25, [sp, #0xc0]",
    "ldp x26, x27, [sp, #0xd0]",
    "ldp x28, x29, [sp, #0xe0]",
    "add sp, sp, #0x320",
    "eret",
);

extern "C" {
    static lwkt_a64_vectors: u8;
}

/// Install the vector table on this CPU (`VBAR_EL1`).
///
/// # Safety
/// EL1, IRQs masked, the stack in use is 16-byte aligned and the kernel's
/// (the entries run on `SP_EL1`). The IRQ entry reads `TPIDR_EL1` for
/// lwkt's IPI, timer and device ids: they must reach this CPU only once
/// it has installed its `PerCpu` block (the backend sends them only to
/// attached CPUs; a kernel routing a device line's SPI must keep this).
pub unsafe fn install() {
    VBAR_EL1.set(core::ptr::addr_of!(lwkt_a64_vectors) as u64);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
