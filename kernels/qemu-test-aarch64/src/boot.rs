//! From QEMU's entry to `bsp_main` and `ap_main`, with the MMU on.
//!
//! - QEMU's ELF loader starts CPU 0 at `_start` at EL1 (QEMU virt without
//!   `virtualization=on`/`secure=on` has no EL2/EL3), MMU off, the device
//!   tree at the start of RAM. The other CPUs stay off until PSCI
//!   `CPU_ON` starts them at `secondary_entry` with their index in x0.
//! - Every CPU: IRQs masked, FP/SIMD enabled (`CPACR_EL1.FPEN`: the
//!   `aarch64-unknown-none` target uses SIMD registers in ordinary code),
//!   `TPIDR_EL1` cleared (so a fault before `percpu::install` finds no
//!   block), its stack, then the MMU on with one static level-1 table of
//!   1 GiB blocks, identity mapped: 0–1 GiB Device-nGnRnE (the GIC, the
//!   PL011, fw_cfg), 1–4 GiB Normal write-back cacheable, inner
//!   shareable (RAM: exclusive loads/stores, unaligned accesses and the
//!   caches need Normal memory), and 256–257 GiB Device-nGnRnE (QEMU
//!   virt's second GICv3 redistributor region, there with more than 123
//!   CPUs).
//! - The boot CPU zeroes `.bss` (with the caches on) and calls
//!   `bsp_main(dtb)`.

/// Largest CPU count the kernel supports.
pub const MAX_CPUS: usize = lwkt_test_program::MAX_CPUS;
/// Each CPU's boot stack (the boot CPU's and the secondaries').
pub const BOOT_STACK: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stacks([u8; BOOT_STACK * MAX_CPUS]);

/// The boot stacks, CPU i's at `i * BOOT_STACK` (the secondary entry
/// finds its own from its index).
#[no_mangle]
static mut LWKT_BOOT_STACKS: Stacks = Stacks([0; BOOT_STACK * MAX_CPUS]);

/// A level-1 table (4 KiB granule, 39-bit addresses: T0SZ = 25) of
/// 1 GiB blocks.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Block descriptor bits: valid block, the access flag.
const BLOCK: u64 = 0b01 | (1 << 10);
/// Device-nGnRnE (MAIR index 0), never executable (PXN, UXN).
const DEVICE: u64 = BLOCK | (1 << 53) | (1 << 54);
/// Normal write-back (MAIR index 1), inner shareable.
const NORMAL: u64 = BLOCK | (1 << 2) | (0b11 << 8);

#[no_mangle]
static LWKT_BOOT_L1: Table = {
    let mut t = [0u64; 512];
    t[0] = DEVICE;
    t[1] = (1 << 30) | NORMAL;
    t[2] = (2 << 30) | NORMAL;
    t[3] = (3 << 30) | NORMAL;
    t[HIGH_DEVICE_GIB] = (HIGH_DEVICE_GIB as u64) << 30 | DEVICE;
    Table(t)
};

/// The 1 GiB block of high device memory the table maps (QEMU virt's
/// `VIRT_HIGH_GIC_REDIST2` at 256 GiB).
const HIGH_DEVICE_GIB: usize = 256;

/// Where the table maps Normal cacheable RAM: 1 GiB up to here.
pub const RAM_MAPPED_END: usize = 4 << 30;

/// Whether `start..start + len` lies in device memory the boot table maps
/// (0–1 GiB, or the high block at 256 GiB).
pub fn device_mapped(start: usize, len: usize) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    let high = HIGH_DEVICE_GIB << 30;
    end <= 1 << 30 || (start >= high && end <= high + (1 << 30))
}

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
_start:
    msr daifset, #0xf
    mov x19, x0
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    isb
    msr tpidr_el1, xzr
    ldr x1, =LWKT_BOOT_STACKS
    add x1, x1, #{stack}
    mov sp, x1
    bl lwkt_boot_mmu_on
    ldr x1, =__bss_start
    ldr x2, =__bss_end
1:
    cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
2:
    mov x0, x19
    bl bsp_main
    b .

    .globl lwkt_secondary_entry
lwkt_secondary_entry:
    msr daifset, #0xf
    mov x19, x0
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    isb
    msr tpidr_el1, xzr
    ldr x1, =LWKT_BOOT_STACKS
    add x2, x19, #1
    mov x3, #{stack}
    madd x1, x2, x3, x1
    mov sp, x1
    bl lwkt_boot_mmu_on
    mov x0, x19
    bl ap_main
    b .

    // MAIR: index 0 Device-nGnRnE (0x00), index 1 Normal WB RW-allocate
    // (0xff). TCR: T0SZ 25, walks inner/outer WB cacheable, inner
    // shareable, 4 KiB granule, TTBR1 walks off (EPD1), 40-bit PAs.
lwkt_boot_mmu_on:
    mov x1, #0xff00
    msr mair_el1, x1
    ldr x1, =0x200803519
    msr tcr_el1, x1
    ldr x1, =LWKT_BOOT_L1
    msr ttbr0_el1, x1
    dsb ish
    tlbi vmalle1
    dsb ish
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #(1 << 0)
    orr x1, x1, #(1 << 2)
    orr x1, x1, #(1 << 12)
    bic x1, x1, #(1 << 1)
    msr sctlr_el1, x1
    isb
    ret
    "#,
    stack = const BOOT_STACK,
);

extern "C" {
    static lwkt_secondary_entry: u8;
}

/// Where PSCI `CPU_ON` starts a secondary CPU (a physical address: the
/// kernel is identity mapped).
pub fn secondary_entry() -> usize {
    core::ptr::addr_of!(lwkt_secondary_entry) as usize
}
