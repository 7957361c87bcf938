//! lwkt's aarch64 test kernel: boots under QEMU `virt` (GICv3) at EL1,
//! turns the MMU on (an identity map of 1 GiB blocks), starts every other
//! CPU with PSCI `CPU_ON`, installs the per-CPU blocks, starts one lwkt
//! scheduler per CPU and runs the shared test program
//! (`kernels/test-program`, the one the x86-64 kernel runs): thread
//! switches, cross-CPU sleep/wakeup, IPI handshakes, `cpusync`, a token
//! taken from every CPU, messages, timed sleeps on each CPU's virtual
//! timer, callouts, preemption by interrupt threads, `domsg_timeout` and
//! time slicing. It prints a report on the PL011 and exits QEMU through
//! semihosting: 33 for a pass, 35 for a failure (a hang is ended by the
//! runner, which first asks for a per-CPU dump by sending a character to
//! the UART).
//!
//! What it needs of the machine it reads from the device tree: the RAM
//! (`/memory`: the heap is the RAM above the image, `heap.rs`), the CPUs'
//! affinities, the GICv3's distributor and redistributor regions (two on
//! QEMU `virt` with more than 123 CPUs) and the command line. It runs
//! with up to 256 CPUs (`boot::MAX_CPUS`, lwkt's `MAX_CPUS`).
//!
//! Command line (`-append`): `rounds=N` (default 200), `fault=CPU` (that
//! CPU executes an undefined instruction once online: the negative test),
//! `expect-cpus=N` (wait for N CPUs instead of the device tree's count),
//! `hang` (sleep forever after the tests), `attach-twice` (the boot CPU
//! attaches its `Cpu` a second time: `A64Arch::attach` must refuse).
//! Anything else is refused.
//!
//! Run it with `cargo xtask qemu --arch aarch64 [--smp N]`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod boot;
mod heap;
#[macro_use]
mod hw;

use core::sync::atomic::{AtomicBool, Ordering};

use lwkt_arch_aarch64::percpu::{self, PerCpu};
use lwkt_arch_aarch64::psci::{self, Conduit};
use lwkt_arch_aarch64::vectors::{self, Fault, Frame};
use lwkt_arch_aarch64::{gic, time, A64Arch};
use lwkt_core::{Cpu, Priority};
use lwkt_test_program::bringup::{self, Bringup, HangLine};
use lwkt_test_program::opts::{self, Opts};

use boot::MAX_CPUS;

/// Where QEMU puts the device tree for an ELF kernel: the start of RAM.
const FDT_AT: usize = 0x4000_0000;
/// The SGI that asks every CPU for its hang dump (a kernel SGI: lwkt's
/// backend leaves SGIs 1-7 to the kernel).
const DUMP_SGI: u32 = 1;

/// The backend, with its stack pool.
// SAFETY: every CPU runs `setup_cpu` (which installs its `PerCpu` block in
// TPIDR_EL1) before it calls into lwkt: the boot CPU before it spawns the
// test thread, each secondary first thing in `ap_main`. The fault handler
// finds the CPU by comparing TPIDR_EL1 (cleared at boot) with the blocks'
// addresses and calls no lwkt code but `Cpu::snapshot`.
static ARCH: A64Arch = unsafe { A64Arch::new() };
/// Each CPU's block.
static PERCPU: [PerCpu; MAX_CPUS] = lwkt_test_program::per_cpu_blocks!(PerCpu, MAX_CPUS);
static CPUS: spin::Once<&'static [Cpu]> = spin::Once::new();
static OPTS: spin::Once<Opts> = spin::Once::new();
/// Bring-up: CPUs online, the boot CPU's go, CPUs out of their idle loops.
static BRINGUP: Bringup = Bringup::new();
/// Per CPU: did TPIDR_EL1 read back as its block?
static TP_OK: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// What the shared test program needs from this kernel.
struct A64Kernel;

impl lwkt_test_program::Kernel for A64Kernel {
    fn print(&self, args: core::fmt::Arguments<'_>) {
        hw::print(args)
    }

    fn fail(&self, args: core::fmt::Arguments<'_>) -> ! {
        fail!("{args}")
    }

    fn now_ns(&self) -> u64 {
        time::now_ns().unwrap_or_else(|| fail!("the clock is not set up"))
    }

    fn send_device_interrupt(&self, cpu: usize, line: usize) {
        let mpidr = PERCPU[cpu]
            .mpidr()
            .unwrap_or_else(|| fail!("cpu {cpu} is not attached"));
        let sgi = gic::device_sgi(line).unwrap_or_else(|| fail!("line {line} has no SGI"));
        // SAFETY: EL1, this CPU's GIC interface set up at boot; the SGI
        // is a device line's, sent to an attached CPU (its block is
        // installed, as the IRQ entry needs).
        unsafe { gic::send_sgi(sgi, mpidr) };
    }

    fn relax(&self) {
        relax()
    }

    fn cpu_header(&self) -> &'static str {
        "mpidr  tpidr_el1          tp"
    }

    fn cpu_columns(&self, i: usize) -> bool {
        let ok = TP_OK[i].load(Ordering::Relaxed);
        kprint!(
            "{:>5}  {:#018x}  {}",
            PERCPU[i].mpidr().map_or(-1, |m| m as i64),
            &PERCPU[i] as *const PerCpu as usize,
            if ok { "ok" } else { "NO" }
        );
        ok
    }
}

/// The body of every spin loop: `yield` (see `A64Arch::pause`), so that
/// the spinning vCPU lets the others run under single-threaded TCG.
fn relax() {
    // SAFETY: a hint with no effect on state.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// The index of the CPU this runs on, found without trusting TPIDR_EL1:
/// it is compared with the blocks' addresses (it reads 0 before
/// `percpu::install`: the boot code clears it).
fn cpu_here() -> Option<usize> {
    let tp = percpu::raw();
    PERCPU.iter().position(|p| p as *const PerCpu as u64 == tp)
}

fn on_fault(f: &Fault<'_>) -> ! {
    let cpu = cpu_here().map_or_else(
        || "? (TPIDR_EL1 not installed)".into(),
        |c| alloc::format!("{c}"),
    );
    fail!(
        "EXCEPTION ec={:#x} ({}) esr={:#x} elr={:#x} far={:#x} vector={} on cpu {cpu}",
        f.ec(),
        f.ec_name(),
        f.esr,
        f.frame.elr,
        f.far,
        f.frame.vector
    )
}

/// Interrupts the backend leaves to the kernel: the UART's (the xtask's
/// request for a hang dump: a character) and the dump SGI.
fn on_irq(intid: u32, frame: &Frame) {
    match intid {
        hw::UART_INTID if hw::drain_rx() => {
            // SAFETY: EL1, GIC set up; every other online CPU has its
            // block installed and takes the SGI in its kernel hook.
            unsafe { gic::send_sgi_all_others(DUMP_SGI) };
            dump(frame)
        }
        DUMP_SGI => dump(frame),
        _ => {}
    }
}

/// A hang dump: print where this CPU was and its LWKT state, one line,
/// then stop; the last CPU to print ends the run as a failure. A CPU with
/// IRQs masked for good never answers (there is no NMI here; see the
/// README).
fn dump(frame: &Frame) -> ! {
    let cpu = cpu_here();
    let attached = cpu.and_then(|i| PERCPU[i].cpu());
    // SAFETY: on this CPU, in its IRQ entry, the `Cpu` attached to it.
    let line = unsafe { HangLine::here("pc", frame.elr, cpu, attached) };
    hw::print_dump(format_args!("{line}"));
    if BRINGUP.dumped() {
        hw::exit(false)
    }
    loop {
        aarch64_cpu::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => fail!("PANIC at {}:{}: {}", l.file(), l.line(), info.message()),
        None => fail!("PANIC: {}", info.message()),
    }
}

/// Install the vectors and this CPU's block, set up its redistributor and
/// timer, attach lwkt's CPU block.
///
/// # Safety
/// Once per CPU, on CPU `idx`, IRQs masked, after `gic::init_distributor`
/// and `time::init`.
unsafe fn setup_cpu(idx: usize, cpus: &'static [Cpu]) {
    let pcpu = &PERCPU[idx];
    // SAFETY: caller (EL1, once on this CPU, IRQs masked); the block is a
    // static.
    unsafe {
        vectors::install();
        percpu::install(pcpu);
        if let Err(e) = gic::init_cpu() {
            fail!("cpu {idx}: {e}");
        }
        time::start_timer();
        ARCH.attach(pcpu, &cpus[idx]);
        let ok = percpu::raw() == pcpu as *const PerCpu as u64
            && core::ptr::eq(percpu::current(), pcpu)
            && percpu::current().index == idx;
        TP_OK[idx].store(ok, Ordering::Relaxed);
    }
}

/// The boot CPU's entry from `boot.rs`, with x0 as QEMU left it.
#[no_mangle]
extern "C" fn bsp_main(x0: usize) -> ! {
    // SAFETY: EL1, IRQs masked; `on_fault` trusts no TPIDR_EL1 and calls
    // no lwkt code but `Cpu::snapshot`... not even that: it prints.
    unsafe {
        vectors::install();
        vectors::set_fault_handler(on_fault);
    }
    // QEMU passes the device tree in x0 to a Linux image only; an ELF
    // finds it at the start of RAM.
    let at = if x0 != 0 { x0 } else { FDT_AT };
    // SAFETY: RAM, identity mapped; nothing writes the tree.
    let fdt = unsafe { hw::fdt(at) };
    // SAFETY: once, on the boot CPU, before anything allocates; the tree
    // is QEMU's (below the image); the RAM above the image is ours.
    match unsafe { heap::init(&fdt) } {
        Ok(n) => kprintln!("lwkt-qemu-test-aarch64: heap {} MiB", n >> 20),
        Err(e) => fail!("heap: {e}"),
    }
    let m = hw::machine(&fdt).unwrap_or_else(|e| fail!("{e}"));
    kprintln!("lwkt-qemu-test-aarch64: cmdline '{}'", m.cmdline);
    let opts = match opts::parse(m.cmdline, "", |_, _, _| Ok(false)) {
        Ok(o) => *OPTS.call_once(|| o),
        Err(e) => fail!("{e}"),
    };
    let ncpus = opts
        .ncpus(m.mpidrs.len(), MAX_CPUS)
        .unwrap_or_else(|e| fail!("{e}"));
    if m.mpidrs.first().copied() != Some(percpu::mpidr_affinity()) {
        fail!(
            "the boot CPU's affinity {:#x} is not the device tree's first CPU {:?}",
            percpu::mpidr_affinity(),
            m.mpidrs.first()
        );
    }
    if m.gicr.len() > gic::MAX_REDIST_REGIONS {
        fail!(
            "{} GICv3 redistributor regions: the backend takes at most {}",
            m.gicr.len(),
            gic::MAX_REDIST_REGIONS
        );
    }
    // SAFETY: the boot CPU, once, before any CPU's `init_cpu`; the GICv3
    // the device tree names, its registers in the boot table's device
    // blocks (checked by `hw::machine`).
    unsafe { gic::init_distributor(m.gicd, &m.gicr) };
    let tb = time::init();
    kprintln!(
        "lwkt-qemu-test-aarch64: clock: generic timer, virtual counter at {}.{:03} MHz, timer PPI {}",
        tb.hz() / 1_000_000,
        tb.hz() / 1_000 % 1_000,
        gic::TIMER_PPI
    );

    // SAFETY: no CPU runs lwkt yet; every CPU attaches to `ARCH`.
    let (_, cpus) = unsafe { bringup::build_machine(&ARCH, ncpus) };
    CPUS.call_once(|| cpus);
    let (stacks, stack_len) =
        bringup::stack_region(ncpus, heap::used).unwrap_or_else(|e| fail!("{e}"));
    // SAFETY: a fresh heap block, page aligned, never freed, used for
    // nothing else.
    unsafe { ARCH.stacks().init(stacks, stack_len, bringup::STACK_SLOT) };
    // SAFETY: CPU 0, once, IRQs masked.
    unsafe { setup_cpu(0, cpus) };
    // SAFETY: the kernel's IRQ hook prints and stops; it takes no lock an
    // interrupted thread of this CPU could hold but the UART's, which it
    // waits for a bounded time.
    unsafe { vectors::set_irq_handler(on_irq) };
    if opts.attach_twice {
        kprintln!("attaching cpu 0 a second time (attach-twice)");
        // SAFETY: EL1 on CPU 0, after `install` and `init_cpu`; no CPU
        // has started. `attach` must refuse (a panic).
        unsafe { ARCH.attach(&PERCPU[0], &cpus[0]) };
        fail!("attach-twice: the second attach was accepted");
    }
    kprintln!(
        "lwkt-qemu-test-aarch64: {ncpus} CPUs expected ({} in the device tree), GICv3, boot cpu mpidr {:#x}",
        m.mpidrs.len(),
        percpu::mpidr_affinity()
    );

    let t = time::count();
    for i in 1..ncpus {
        let Some(&mpidr) = m.mpidrs.get(i) else {
            kprintln!("cpu {i}: not in the device tree: not started");
            continue;
        };
        let entry = boot::secondary_entry();
        // SAFETY: the secondary entry sets up its stack, vectors and MMU
        // itself; the CPU is one of this machine's, not yet started.
        let on = unsafe { psci::cpu_on(Conduit::Hvc, mpidr, entry, i as u64) };
        if let Err(e) = on {
            kprintln!("cpu {i}: PSCI CPU_ON({mpidr:#x}) failed: {e:?}");
        }
    }
    let since = |t: u64| move || tb.ticks_to_ns(time::count() - t);
    if let Err(up) = BRINGUP.wait_online(ncpus, since(t), relax) {
        fail!("only {up} of {ncpus} CPUs came online: a CPU never started");
    }
    kprintln!(
        "lwkt-qemu-test-aarch64: all {ncpus} CPUs online {} us after the first CPU_ON",
        tb.ticks_to_ns(time::count() - t) / 1_000
    );
    // The hang dump's request: a character on the UART, to CPU 0.
    // SAFETY: the PL011's SPI, routed to this (attached) CPU, whose IRQ
    // hook handles it.
    unsafe { gic::route_spi(hw::UART_INTID, percpu::mpidr_affinity()) };
    hw::enable_rx_interrupt();

    // SAFETY: CPU 0 has not entered its idle loop; the test borrows only
    // statics.
    unsafe {
        cpus[0]
            .spawn_boot_thread(Priority::default(), 64 << 10, "test-main", move |cur| {
                lwkt_test_program::run(&A64Kernel, cur, opts.rounds, cpus);
                lwkt_test_program::end_test_thread(&A64Kernel, cur, opts.hang, cpus);
            })
            .unwrap_or_else(|e| fail!("cannot create the test thread: {e}"));
    }
    BRINGUP.go();
    // SAFETY: unmasking IRQs: the vectors, the block and the GIC are set
    // up on this CPU.
    unsafe { core::arch::asm!("msr daifclr, #2") };
    // SAFETY: on CPU 0, once, after `bind`.
    unsafe { cpus[0].idle_loop() };
    // SAFETY: masking IRQs has no precondition.
    unsafe { core::arch::asm!("msr daifset, #2") };

    if BRINGUP
        .wait_done(ncpus, since(time::count()), relax)
        .is_err()
    {
        fail!("a CPU did not leave its idle loop after shutdown");
    }
    let ok = lwkt_test_program::report(cpus);
    if lwkt_test_program::verdict(&A64Kernel, ok, heap::used()) {
        hw::exit(true)
    }
    fail!("a check failed (see above)")
}

/// A secondary CPU's entry from `boot.rs`, with its index (1..).
#[no_mangle]
extern "C" fn ap_main(idx: usize) -> ! {
    let cpus = *CPUS
        .get()
        .expect("the boot CPU built the machine before CPU_ON");
    if idx >= cpus.len() {
        fail!("cpu {idx} started but only {} expected", cpus.len());
    }
    // SAFETY: this CPU, once, IRQs masked (boot code); the boot CPU set up
    // the distributor and the clock before CPU_ON.
    unsafe { setup_cpu(idx, cpus) };
    BRINGUP.online();
    if OPTS.get().and_then(|o| o.fault) == Some(idx) {
        kprintln!("cpu {idx}: faulting on purpose (fault={idx})");
        // SAFETY: the negative test: an undefined instruction, reported by
        // the fault handler with its exception class.
        unsafe { core::arch::asm!("udf #0") };
    }
    BRINGUP.wait_go(relax);
    // SAFETY: as on the boot CPU.
    unsafe { core::arch::asm!("msr daifclr, #2") };
    // SAFETY: on this CPU, once, after `bind`.
    unsafe { cpus[idx].idle_loop() };
    // SAFETY: masking IRQs has no precondition.
    unsafe { core::arch::asm!("msr daifset, #2") };
    BRINGUP.left_idle_loop();
    loop {
        aarch64_cpu::asm::wfi();
    }
}
