//! From QEMU's PVH entry to `bsp_main` and `ap_main` in 64-bit mode.
//!
//! - The PVH ELF note (type 18, `XEN_ELFNOTE_PHYS32_ENTRY`) names
//!   `pvh_start32`; QEMU enters it in 32-bit protected mode, paging off,
//!   with EBX = the `hvm_start_info` address.
//! - Static page tables identity-map 0–4 GiB in 2 MiB pages (3–4 GiB
//!   uncached, for the local APIC); a four-entry GDT.
//! - The BSP and the APs share the 32-to-64-bit path; an AP arrives there
//!   from a 38-byte real-mode trampoline copied to 0x8000 (SIPI page 8),
//!   takes a ticket (its CPU index, 1..) and its stack, and calls
//!   `ap_main(index)`.
//!
//! See `shared/docs/QEMU-NOTES.md` for the facts this rests on.

/// Largest CPU count the kernel supports (AP stacks, per-CPU blocks).
pub const MAX_CPUS: usize = 256;
/// Each AP's boot stack.
pub const AP_STACK: usize = 64 * 1024;
/// Where the trampoline runs (SIPI page 8).
pub const TRAMPOLINE: usize = 0x8000;

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .p2align 2
    .quad pvh_start32

    .section .text.boot, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %edi
    lgdt gdt_ptr
    ljmp $0x18, $1f
1:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %esi, %esi
    jmp enter_long_mode

    .globl ap_start32
ap_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %esi
    xor %edi, %edi
    jmp enter_long_mode

enter_long_mode:
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $0x08, $long64

    .code64
long64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %edi, %edi
    mov %esi, %esi
    test %esi, %esi
    jnz 2f
    lea bsp_stack_top(%rip), %rsp
    call bsp_main
    ud2
2:
    mov $1, %eax
    lock xaddl %eax, ap_ticket(%rip)
    inc %eax
    cmp ${max}, %eax
    jae 3f
    mov %eax, %edi
    mov %rdi, %rax
    shl $16, %rax
    lea ap_stacks(%rip), %rsp
    add %rax, %rsp
    call ap_main
    ud2
3:
    cli
    hlt
    jmp 3b

    .section .rodata
    .code16
    .globl lwkt_tramp_start
    .globl lwkt_tramp_end
lwkt_tramp_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl {tramp} + (tramp_gdtr - lwkt_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $ap_start32
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
lwkt_tramp_end:
    .code64

    .section .data.pagetables, "aw"
    .p2align 12
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd + 3
    .quad pd + 0x1000 + 3
    .quad pd + 0x2000 + 3
    .quad pd + 0x3000 + 3
    .fill 508, 8, 0
pd:
    .set lwkt_addr, 0
    .rept 512 * 3
    .quad lwkt_addr + 0x83
    .set lwkt_addr, lwkt_addr + 0x200000
    .endr
    .rept 512
    .quad lwkt_addr + 0x9B
    .set lwkt_addr, lwkt_addr + 0x200000
    .endr

    .section .data
    .p2align 3
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CF9B000000FFFF
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .p2align 2
ap_ticket:
    .long 0

    .section .bss
    .p2align 12
bsp_stack:
    .space 65536
bsp_stack_top:
ap_stacks:
    .space {ap_stack} * {max}
    .text
"#,
    max = const MAX_CPUS,
    ap_stack = const AP_STACK,
    tramp = const TRAMPOLINE,
    options(att_syntax)
);

extern "C" {
    static lwkt_tramp_start: u8;
    static lwkt_tramp_end: u8;
}

/// Copy the AP trampoline to [`TRAMPOLINE`].
///
/// # Safety
/// Ring 0, identity-mapped low memory, nothing else at 0x8000.
pub unsafe fn install_trampoline() {
    let start = core::ptr::addr_of!(lwkt_tramp_start);
    let end = core::ptr::addr_of!(lwkt_tramp_end);
    let len = end as usize - start as usize;
    // SAFETY: caller; the trampoline is `len` bytes of rodata.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
}

/// The kernel command line from `hvm_start_info` (empty if none).
///
/// # Safety
/// `info` is the physical address QEMU passed in EBX (identity mapped).
pub unsafe fn cmdline(info: usize) -> &'static str {
    // SAFETY: caller; the layout is Xen's `hvm_start_info`.
    unsafe {
        let magic = (info as *const u32).read();
        if magic != 0x336e_c578 {
            return "";
        }
        let p = ((info + 24) as *const u64).read() as usize as *const u8;
        if p.is_null() {
            return "";
        }
        let mut n = 0;
        while *p.add(n) != 0 && n < 4096 {
            n += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(p, n)).unwrap_or("")
    }
}
