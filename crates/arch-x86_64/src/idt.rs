//! The interrupt descriptor table and its entry stubs.
//!
//! The `x86-interrupt` calling convention is not stable, so the entries
//! are assembly stubs calling `extern "C"` functions:
//!
//! - vectors 0–255 each have a 16-byte stub that pushes a zero error code
//!   (unless the CPU pushed one), then the vector, and jumps to a common
//!   path that calls the fault handler set with [`set_fault_handler`]
//!   (exceptions and any vector nobody expects end there);
//! - [`IPI_VECTOR`] saves the nine caller-saved registers, calls lwkt's IPI
//!   entry (EOI, then [`lwkt_core::Cpu::ipi_interrupt`]) and returns with
//!   `iretq` (5 frame words + 9 pushes keep the stack 16-byte aligned at
//!   the call);
//! - [`TIMER_VECTOR`] (the local APIC timer) has the same kind of stub,
//!   calling the timer entry (EOI, `Cpu::post_timer`, then
//!   `Cpu::ipi_interrupt`);
//! - the [`DEVICE_VECTORS`] from [`DEVICE_VECTOR_BASE`] are device
//!   interrupt lines 0–63 (lwkt-core's `irq`s, [`device_vector`]): each
//!   stub pushes its line and jumps to a common one that saves the
//!   caller-saved registers and calls the device entry (EOI,
//!   `Cpu::post_interrupt(irq)`, `Cpu::ipi_interrupt`, then
//!   `Cpu::preempt_from_interrupt`). An IOAPIC redirection entry, an MSI
//!   or another CPU's fixed IPI can target them;
//! - [`SPURIOUS_VECTOR`] returns at once, without EOI, as the SDM says.
//!
//! The gate encoding is ours (16 bytes, tested on the host); the `x86_64`
//! crate's table wants `x86-interrupt` handler types.
//!
//! DragonFly: `sys/platform/pc64/x86_64/exception.S`, `apic_vector.S`
//! (`Xipiq`), `setidt()`.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The vector lwkt's IPI kick uses.
pub const IPI_VECTOR: u8 = 0x40;
/// The vector of the local APIC timer ([`crate::time`]): its handler EOIs,
/// records the timer interrupt ([`lwkt_core::Cpu::post_timer`]) and enters
/// lwkt as the IPI vector does, so expired timers run at once, or at the
/// critical section's exit, or in the idle loop whose `hlt` it ends.
/// DragonFly: `Xtimer` (`apic_vector.S`).
pub const TIMER_VECTOR: u8 = 0x41;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// The first device-interrupt vector: vector `DEVICE_VECTOR_BASE + irq`
/// raises line `irq` of the CPU that takes it ([`device_vector`]).
/// DragonFly: `IDT_OFFSET` + the IRQ, the `Xintr` vectors of
/// `apic_vector.S`.
pub const DEVICE_VECTOR_BASE: u8 = 0x50;
/// How many device vectors there are: one per lwkt-core interrupt line
/// (`lwkt_core::intr::MAX_IRQS`).
pub const DEVICE_VECTORS: usize = 64;

const _: () = assert!(DEVICE_VECTORS == lwkt_core::intr::MAX_IRQS);
const _: () = assert!(DEVICE_VECTOR_BASE as usize + DEVICE_VECTORS <= SPURIOUS_VECTOR as usize);
const _: () = assert!(
    DEVICE_VECTOR_BASE as usize + DEVICE_VECTORS <= crate::usermode::SYSCALL_INT as usize
        && crate::usermode::SYSCALL_INT < SPURIOUS_VECTOR
);

/// The vector of device interrupt line `irq`, or `None` for a line
/// lwkt-core does not have. Program it into an IOAPIC redirection entry
/// or an MSI, or send it as a fixed IPI, to make that line's interrupt
/// thread run on the CPU it reaches.
///
/// ```
/// use lwkt_arch_x86_64::idt::{device_vector, DEVICE_VECTOR_BASE};
/// assert_eq!(device_vector(0), Some(DEVICE_VECTOR_BASE));
/// assert_eq!(device_vector(63), Some(DEVICE_VECTOR_BASE + 63));
/// assert_eq!(device_vector(64), None);
/// ```
pub const fn device_vector(irq: usize) -> Option<u8> {
    if irq < DEVICE_VECTORS {
        Some(DEVICE_VECTOR_BASE + irq as u8)
    } else {
        None
    }
}

/// One 16-byte IDT gate.
///
/// ```
/// use lwkt_arch_x86_64::idt::Gate;
/// let g = Gate::interrupt(0x1234_5678_9abc_def0, 0x08);
/// assert_eq!(g.handler(), 0x1234_5678_9abc_def0);
/// assert_eq!(
///     g.to_bytes(),
///     [0xf0, 0xde, 0x08, 0x00, 0x00, 0x8e, 0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    /// A present ring-0 64-bit interrupt gate (interrupts off on entry) to
    /// `handler` through code segment `selector`.
    pub const fn interrupt(handler: u64, selector: u16) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist: 0,
            attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    /// The same gate, switching to IST stack `ist` (1-7; 0: none) on
    /// entry: a known-good stack whatever RSP was (the NMI, #DF and #MC
    /// gates of [`Idt::new_user`]).
    pub const fn with_ist(mut self, ist: u8) -> Gate {
        self.ist = ist & 7;
        self
    }

    /// The same gate with descriptor privilege level 3: `int n` from ring
    /// 3 may raise it (every other gate is DPL 0: `int n` from user mode
    /// takes a #GP instead).
    pub const fn user_callable(mut self) -> Gate {
        self.attr = 0xEE;
        self
    }

    /// The handler address.
    pub const fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_mid as u64) << 16 | (self.offset_high as u64) << 32
    }

    /// The gate as the CPU reads it.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.offset_low.to_le_bytes());
        b[2..4].copy_from_slice(&self.selector.to_le_bytes());
        b[4] = self.ist;
        b[5] = self.attr;
        b[6..8].copy_from_slice(&self.offset_mid.to_le_bytes());
        b[8..12].copy_from_slice(&self.offset_high.to_le_bytes());
        b
    }
}

static_assertions::assert_eq_size!(Gate, [u8; 16]);

/// What the fault stub saw, as pushed on the stack.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct FaultFrame {
    /// The vector.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error: u64,
    /// Where it happened.
    pub rip: u64,
    /// Code segment.
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Stack segment.
    pub ss: u64,
}

/// A full trap frame: the nine caller-saved registers the stubs push, then
/// the [`FaultFrame`]. The `syscall` entry builds the same frame (its
/// `vector` is [`crate::usermode::SYSCALL_VECTOR`], its `rip`/`rflags`
/// from RCX/R11). DragonFly: `struct trapframe`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct TrapFrame {
    /// r11 (RFLAGS, after `syscall`).
    pub r11: u64,
    /// r10 (system call argument 4).
    pub r10: u64,
    /// r9 (system call argument 6).
    pub r9: u64,
    /// r8 (system call argument 5).
    pub r8: u64,
    /// rdi (system call argument 1).
    pub rdi: u64,
    /// rsi (system call argument 2).
    pub rsi: u64,
    /// rdx (system call argument 3).
    pub rdx: u64,
    /// rcx (the return RIP, after `syscall`).
    pub rcx: u64,
    /// rax (the system call number in, its result out).
    pub rax: u64,
    /// The vector and the CPU-pushed frame.
    pub fault: FaultFrame,
}

static_assertions::assert_eq_size!(TrapFrame, [u64; 16]);

/// An NMI handler ([`set_nmi_handler`]): returns true if it handled the
/// NMI (the interrupted code resumes), false to pass it to the fault
/// handler.
pub type NmiHandler = fn(&FaultFrame) -> bool;

static NMI_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Set the handler NMIs (and machine checks) go to first. It runs on the
/// NMI's IST stack (with [`Idt::new_user`]), with GS made the kernel's by
/// the paranoid entry (decided from the GS base MSR, not the saved CS),
/// possibly inside any code, including lwkt's critical sections.
///
/// # Safety
/// `f` allows NMI context: no locks the interrupted code may hold, no lwkt
/// calls on this CPU but those documented as NMI-safe (`Cpu::snapshot`).
pub unsafe fn set_nmi_handler(f: NmiHandler) {
    NMI_HANDLER.store(f as usize, Ordering::Release);
}

/// The fault handler: never returns (a test kernel prints and exits).
pub type FaultHandler = fn(&FaultFrame) -> !;

static FAULT_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Set the function every exception and unexpected vector ends in.
/// DragonFly: `trap()` reached from `exception.S`.
///
/// # Safety
/// `f` runs in exception context: on whatever CPU faulted (an NMI too),
/// interrupts off, possibly before that CPU installed its `PerCpu` block
/// and in the middle of any lwkt operation (a run-queue update, a token
/// hand-off, an IPI). It must not call into lwkt on the faulting CPU
/// (`ThreadHandle::wake`, anything that reads the current CPU through
/// [`X86Arch`](crate::X86Arch)) nor trust GS ([`crate::percpu::bases`]
/// finds the block without it); what it calls must allow exception context
/// (like `Cpu::snapshot`'s contract). It never returns, so the interrupted
/// code never resumes.
///
/// ```compile_fail,E0133
/// use lwkt_arch_x86_64::idt::{self, FaultFrame};
/// fn on_fault(_: &FaultFrame) -> ! {
///     loop {}
/// }
/// idt::set_fault_handler(on_fault);
/// ```
pub unsafe fn set_fault_handler(f: FaultHandler) {
    FAULT_HANDLER.store(f as usize, Ordering::Release);
}

/// Every exception and unexpected vector (from the common stub): a fault
/// in ring 3 ends the user program ([`crate::usermode`]); a page or
/// protection fault at a user-copy instruction resumes at its fixup;
/// anything else goes to the fault handler.
#[no_mangle]
extern "C" fn lwkt_x86_trap(frame: &mut TrapFrame) {
    if frame.fault.cs & 3 == 3 {
        if frame.fault.vector == 6 && crate::usermode::trap_syscall(frame) {
            return;
        }
        // Returns only if the thread is not a user thread.
        crate::usermode::user_fault(&frame.fault);
    } else if matches!(frame.fault.vector, 13 | 14) {
        if let Some(fix) = crate::usermode::fixup(frame.fault.rip) {
            frame.fault.rip = fix;
            return;
        }
    }
    lwkt_x86_fault(&frame.fault)
}

/// The paranoid entry's handler (NMI, #MC): the NMI handler, then the
/// fault handler if it did not take it.
#[no_mangle]
extern "C" fn lwkt_x86_nmi(frame: &mut TrapFrame) {
    let f = NMI_HANDLER.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `set_nmi_handler` stores here, an `NmiHandler`.
        let f: NmiHandler = unsafe { core::mem::transmute::<usize, NmiHandler>(f) };
        if f(&frame.fault) {
            return;
        }
    }
    lwkt_x86_fault(&frame.fault)
}

fn lwkt_x86_fault(frame: &FaultFrame) -> ! {
    let f = FAULT_HANDLER.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `set_fault_handler` stores here, a `FaultHandler`
        // whose setter promised it may run here.
        let f: FaultHandler = unsafe { core::mem::transmute::<usize, FaultHandler>(f) };
        f(frame)
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

core::arch::global_asm!(
    ".text",
    // The nine caller-saved registers of the SysV ABI, saved and restored
    // around an `extern "C"` interrupt handler.
    ".macro lwkt_x86_push_scratch",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    ".endm",
    ".macro lwkt_x86_pop_scratch",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    ".endm",
    ".p2align 4",
    ".globl lwkt_x86_vectors",
    "lwkt_x86_vectors:",
    ".set lwkt_vec, 0",
    ".rept 256",
    ".p2align 4",
    // The CPU pushes an error code for 8, 10-14, 17, 21, 29 and 30.
    ".if (lwkt_vec == 8) | ((lwkt_vec >= 10) & (lwkt_vec <= 14)) | (lwkt_vec == 17) | (lwkt_vec == 21) | (lwkt_vec == 29) | (lwkt_vec == 30)",
    ".else",
    "push 0",
    ".endif",
    "push lwkt_vec",
    "jmp lwkt_x86_fault_common",
    ".set lwkt_vec, lwkt_vec + 1",
    ".endr",
    "",
    // 7 words (vector, error, the CPU's 5) from a 16-byte aligned RSP,
    // then 9 registers: aligned at the call. `swapgs` exactly when the
    // saved CS is ring 3, on the way in and out.
    "lwkt_x86_fault_common:",
    "test byte ptr [rsp + 24], 3",
    "jz 2f",
    "swapgs",
    "2:",
    "lwkt_x86_push_scratch",
    "mov rdi, rsp",
    "cld",
    "call lwkt_x86_trap",
    "lwkt_x86_pop_scratch",
    "test byte ptr [rsp + 24], 3",
    "jz 3f",
    "swapgs",
    "3:",
    "add rsp, 16",
    "iretq",
    "",
    // The paranoid entry (NMI, #MC): the saved CS does not say which GS
    // is live (the `swapgs` window of the syscall entry and exit runs in
    // ring 0 with the user's), so read IA32_GS_BASE: 0 is the user's (this
    // backend keeps it 0), anything else a kernel block. Swap if it is the
    // user's, and back before `iretq`. rbx (callee-saved) remembers.
    ".p2align 4",
    ".globl lwkt_x86_nmi_stub",
    "lwkt_x86_nmi_stub:",
    "push 0",
    "push 2",
    "jmp lwkt_x86_paranoid_common",
    ".p2align 4",
    ".globl lwkt_x86_mc_stub",
    "lwkt_x86_mc_stub:",
    "push 0",
    "push 18",
    "jmp lwkt_x86_paranoid_common",
    "lwkt_x86_paranoid_common:",
    "lwkt_x86_push_scratch",
    "push rbx",
    "sub rsp, 8",
    "xor ebx, ebx",
    "mov ecx, 0xC0000101",
    "rdmsr",
    "or eax, edx",
    "jnz 4f",
    "swapgs",
    "mov ebx, 1",
    "4:",
    "lea rdi, [rsp + 16]",
    "cld",
    "call lwkt_x86_nmi",
    "test ebx, ebx",
    "jz 5f",
    "swapgs",
    "5:",
    "add rsp, 8",
    "pop rbx",
    "lwkt_x86_pop_scratch",
    "add rsp, 16",
    "iretq",
    "",
    // An interrupt stub: save the caller-saved registers, call the
    // `extern "C"` handler, restore, `iretq`.
    ".macro lwkt_x86_irq_stub name, handler",
    ".p2align 4",
    ".globl \\name",
    "\\name:",
    "test byte ptr [rsp + 8], 3",
    "jz 2f",
    "swapgs",
    "2:",
    "lwkt_x86_push_scratch",
    "cld",
    "call \\handler",
    "lwkt_x86_pop_scratch",
    "test byte ptr [rsp + 8], 3",
    "jz 3f",
    "swapgs",
    "3:",
    "iretq",
    ".endm",
    "lwkt_x86_irq_stub lwkt_x86_ipi_stub, lwkt_x86_ipi_entry",
    "lwkt_x86_irq_stub lwkt_x86_timer_stub, lwkt_x86_timer_entry",
    "",
    // Device vectors: 16 bytes each, `push irq; jmp` to the common stub.
    // The common stub has 5 frame words + the line + 9 registers on the
    // stack (120 bytes: 8 off alignment), so it drops 8 more before the
    // call and takes them back after.
    ".p2align 4",
    ".globl lwkt_x86_device_vectors",
    "lwkt_x86_device_vectors:",
    ".set lwkt_irq, 0",
    ".rept 64",
    ".p2align 4",
    "push lwkt_irq",
    "jmp lwkt_x86_device_common",
    ".set lwkt_irq, lwkt_irq + 1",
    ".endr",
    "",
    "lwkt_x86_device_common:",
    "test byte ptr [rsp + 16], 3",
    "jz 2f",
    "swapgs",
    "2:",
    "lwkt_x86_push_scratch",
    "mov rdi, [rsp + 72]",
    "sub rsp, 8",
    "cld",
    "call lwkt_x86_device_entry",
    "add rsp, 8",
    "lwkt_x86_pop_scratch",
    "add rsp, 8",
    "test byte ptr [rsp + 8], 3",
    "jz 3f",
    "swapgs",
    "3:",
    "iretq",
    "",
    ".p2align 4",
    ".globl lwkt_x86_spurious_stub",
    "lwkt_x86_spurious_stub:",
    "iretq",
);

extern "C" {
    static lwkt_x86_vectors: u8;
    fn lwkt_x86_ipi_stub();
    fn lwkt_x86_timer_stub();
    static lwkt_x86_device_vectors: u8;
    fn lwkt_x86_spurious_stub();
    fn lwkt_x86_nmi_stub();
    fn lwkt_x86_mc_stub();
}

/// A full table: every vector to its stub.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Idt {
    gates: [Gate; 256],
}

impl Idt {
    /// The table lwkt needs, with kernel code segment `selector`.
    pub fn new(selector: u16) -> Idt {
        let base = core::ptr::addr_of!(lwkt_x86_vectors) as u64;
        let mut gates = [Gate::default(); 256];
        for (v, g) in gates.iter_mut().enumerate() {
            *g = Gate::interrupt(base + 16 * v as u64, selector);
        }
        gates[usize::from(IPI_VECTOR)] =
            Gate::interrupt(lwkt_x86_ipi_stub as *const () as u64, selector);
        gates[usize::from(TIMER_VECTOR)] =
            Gate::interrupt(lwkt_x86_timer_stub as *const () as u64, selector);
        let dev = core::ptr::addr_of!(lwkt_x86_device_vectors) as u64;
        for irq in 0..DEVICE_VECTORS {
            gates[usize::from(DEVICE_VECTOR_BASE) + irq] =
                Gate::interrupt(dev + 16 * irq as u64, selector);
        }
        gates[usize::from(SPURIOUS_VECTOR)] =
            Gate::interrupt(lwkt_x86_spurious_stub as *const () as u64, selector);
        gates[2] = Gate::interrupt(lwkt_x86_nmi_stub as *const () as u64, selector);
        gates[18] = Gate::interrupt(lwkt_x86_mc_stub as *const () as u64, selector);
        Idt { gates }
    }

    /// [`Idt::new`] for a kernel with user mode ([`crate::usermode`]):
    /// the `int 0xF0` system call gate (DPL 3: the one gate user mode may
    /// raise; the `syscall` instruction is the usual way in); NMI, #DF and
    /// #MC switch to their IST stacks, which every CPU's TSS
    /// must hold ([`crate::usermode::init_cpu`]) before it loads this
    /// table. DragonFly: `setidt(IDT_NMI, ..., 2)` (IST 2), `IDT_DF` (1).
    pub fn new_user(selector: u16) -> Idt {
        use crate::usermode::{DF_IST, MC_IST, NMI_IST};
        let mut idt = Idt::new(selector);
        idt.gates[2] = idt.gates[2].with_ist(NMI_IST);
        idt.gates[8] = idt.gates[8].with_ist(DF_IST);
        idt.gates[18] = idt.gates[18].with_ist(MC_IST);
        idt.gates[usize::from(crate::usermode::SYSCALL_INT)] =
            Gate::interrupt(crate::usermode::int_syscall_entry(), selector).user_callable();
        idt
    }

    /// The gate of vector `v`.
    pub fn gate(&self, v: u8) -> Gate {
        self.gates[usize::from(v)]
    }

    /// Load it on this CPU (each CPU loads the same table).
    ///
    /// # Safety
    /// Ring 0; `self` stays valid and unchanged while any CPU uses it, and
    /// its selector is a 64-bit code segment of the loaded GDT. The stubs
    /// `swapgs` when the saved CS is ring 3 (the NMI and #MC stubs when the
    /// GS base MSR is 0): ring 3 runs only under [`crate::usermode`], with
    /// the kernel block in `IA32_KERNEL_GS_BASE`. A table of
    /// [`Idt::new_user`] needs this CPU's TSS loaded first
    /// ([`crate::usermode::init_cpu`]). The IPI
    /// vector's handler reads GS: an interrupt on [`IPI_VECTOR`] reaches
    /// this CPU only once it has installed its `PerCpu` block
    /// ([`X86Arch`](crate::X86Arch)'s kick sends it only to attached CPUs;
    /// a kernel sending it itself, or routing a device to it, must keep
    /// this).
    pub unsafe fn load(&'static self) {
        let ptr = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: x86_64::VirtAddr::new(self as *const Idt as u64),
        };
        // SAFETY: caller.
        unsafe { x86_64::instructions::tables::lidt(&ptr) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_are_16_bytes_apart_and_special_vectors_have_their_own() {
        let idt = Idt::new(0x08);
        let base = idt.gate(0).handler();
        assert_eq!(base % 16, 0);
        for v in [1u8, 6, 8, 13, 14, 0x3F, 0x42, 0x4F, 0x90, 0xFE] {
            assert_eq!(
                idt.gate(v).handler(),
                base + 16 * u64::from(v),
                "vector {v}"
            );
        }
        assert_eq!(
            idt.gate(IPI_VECTOR).handler(),
            lwkt_x86_ipi_stub as *const () as u64
        );
        assert_eq!(
            idt.gate(TIMER_VECTOR).handler(),
            lwkt_x86_timer_stub as *const () as u64
        );
        let dev = core::ptr::addr_of!(lwkt_x86_device_vectors) as u64;
        assert_eq!(dev % 16, 0);
        for irq in [0usize, 1, 17, 63] {
            let v = device_vector(irq).unwrap();
            assert_eq!(idt.gate(v).handler(), dev + 16 * irq as u64, "irq {irq}");
        }
        assert_eq!(
            idt.gate(SPURIOUS_VECTOR).handler(),
            lwkt_x86_spurious_stub as *const () as u64
        );
        assert!(idt
            .gates
            .iter()
            .all(|g| g.to_bytes()[5] == 0x8E && g.to_bytes()[2] == 8));
    }

    #[test]
    fn error_code_vectors_skip_the_dummy_push() {
        // A stub with a dummy push starts with `push 0` (6a 00); the CPU
        // pushes the error code itself for #DF, #TS..#PF, #AC, #CP, #VC, #SX.
        let idt = Idt::new(0x08);
        // SAFETY: the stubs are 16 readable bytes of code each.
        let first = |v: u8| unsafe { *(idt.gate(v).handler() as *const [u8; 2]) };
        for v in 0u8..32 {
            let has_error = matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30);
            assert_eq!(first(v) == [0x6a, 0x00], !has_error, "vector {v}");
        }
    }
}
