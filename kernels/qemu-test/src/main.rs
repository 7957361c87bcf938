//! lwkt's test kernel: boots under QEMU with the PVH entry, brings up every
//! application processor (INIT-SIPI-SIPI), installs the per-CPU blocks,
//! starts one lwkt scheduler per CPU and runs, on every CPU, thread
//! switches, cross-CPU scheduling by IPI message, IPI handshakes,
//! `cpusync` over all CPUs, a token taken from every CPU, messages
//! between CPUs, timed sleeps (the TSC clock, calibrated while the APs
//! take their INIT, and each CPU's local APIC timer), callouts armed on
//! every CPU and stopped from another, a CPU-bound thread preempted by
//! interrupt threads (from the interrupt frame) and `domsg_timeout`
//! against a server that does not reply in time. It prints a report
//! on COM1 and exits QEMU through isa-debug-exit: 33 for a pass, 35 for a
//! failure (a triple fault exits 0, a hang is killed by the runner: both
//! count as failures).
//!
//! Command line (`-append`): `rounds=N` (default 200), `apic=auto|xapic|
//! x2apic`, `fault=CPU` (that CPU executes `ud2` once online: the negative
//! test), `expect-cpus=N` (wait for N CPUs instead of fw_cfg's count),
//! `hang` (sleep forever after the tests), `attach-twice` (the BSP
//! attaches its `Cpu` a second time: `X86Arch::attach` must refuse with a
//! panic, the run fails with "attached already"), `tsc=auto|pit` (`pit`:
//! calibrate the TSC against the PIT even where CPUID gives its
//! frequency), `timer=auto|oneshot` (`oneshot`: the APIC timer's one-shot
//! mode even where TSC-deadline mode exists), `user` (after the tests, the
//! user-mode tests of `usertest.rs`: user programs on every CPU, system
//! calls as messages, faulting programs, bad arguments, time slicing of a
//! program that never traps), `user-only` (only those), `user-ops=N`
//! (synchronous and asynchronous calls per main program, default 10,000),
//! `user-bench` and `user-samples=N` (cycles per system call kind),
//! `syscall=auto|insn|int|trap` (how programs enter the kernel; `auto`
//! probes).
//! Anything else is refused.
//!
//! Run it with `cargo xtask qemu [--smp N]` from the repository root.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod boot;
mod heap;
#[macro_use]
mod hw;
// User mode (issue 20): address spaces, user programs, system calls as
// messages, and their tests.
mod syscall;
mod uprog;
mod usermem;
mod usertest;

use core::sync::atomic::{AtomicBool, Ordering};

use lwkt_arch_x86_64::apic::{self, Icr, Mode};
use lwkt_arch_x86_64::idt::{self, device_vector, FaultFrame, Idt, SPURIOUS_VECTOR};
use lwkt_arch_x86_64::percpu::{self, PerCpu};
use lwkt_arch_x86_64::time::{self, TimeBase};
use lwkt_arch_x86_64::usermode;
use lwkt_arch_x86_64::X86Arch;
use lwkt_core::{Cpu, MachineState, Priority};
use lwkt_test_program::bringup::{self, Bringup, HangLine};
use lwkt_test_program::opts;

use boot::MAX_CPUS;

const _: () = assert!(MAX_CPUS == lwkt_test_program::MAX_CPUS);

/// What the shared test program (`kernels/test-program`) needs from this
/// kernel.
struct X86Kernel;

impl lwkt_test_program::Kernel for X86Kernel {
    fn print(&self, args: core::fmt::Arguments<'_>) {
        hw::print(args)
    }

    fn fail(&self, args: core::fmt::Arguments<'_>) -> ! {
        fail!("{args}")
    }

    fn now_ns(&self) -> u64 {
        time::now_ns().unwrap_or_else(|| fail!("the clock is not calibrated"))
    }

    fn send_device_interrupt(&self, cpu: usize, line: usize) {
        let apic_id = PERCPU[cpu]
            .apic_id()
            .unwrap_or_else(|| fail!("cpu {cpu} has no APIC id"));
        let vector = device_vector(line).unwrap_or_else(|| fail!("{line}: not a device line"));
        // SAFETY: ring 0, this CPU's APIC enabled at boot; the vector is a
        // device vector of the IDT every CPU loaded, sent to an attached
        // CPU (its APIC id).
        unsafe { apic::send(Icr::fixed(vector, apic_id)) };
    }

    fn cpu_header(&self) -> &'static str {
        "apic  gs-base            gs"
    }

    fn cpu_columns(&self, i: usize) -> bool {
        let gs = GS_OK[i].load(Ordering::Relaxed);
        kprint!(
            "{:>4}  {:#018x}  {}",
            PERCPU[i].apic_id().map_or(-1, i64::from),
            &PERCPU[i] as *const PerCpu as usize,
            if gs { "ok" } else { "NO" }
        );
        gs
    }
}

/// The backend, with its stack pool.
// SAFETY: every CPU runs `setup_cpu` (which installs its `PerCpu` block in
// GS) before it calls into lwkt: the BSP before it spawns the test thread
// or enters its idle loop, each AP first thing in `ap_main`; user programs
// (usertest.rs) run in ring 3 only inside `usermode::run_user`, and every
// entry from ring 3 swaps the kernel block in before any lwkt code runs
// (the stubs `swapgs` by the saved CS, NMIs by the GS base MSR), so kernel
// code always sees the kernel block in GS. The fault
// handler finds the CPU through the GS base MSR and calls no lwkt code but
// `Cpu::snapshot` on a CPU that is attached.
static ARCH: X86Arch = unsafe { X86Arch::new() };
/// Each CPU's GS block.
static PERCPU: [PerCpu; MAX_CPUS] = lwkt_test_program::per_cpu_blocks!(PerCpu, MAX_CPUS);
static IDT: spin::Once<Idt> = spin::Once::new();
/// Each CPU's GDT, TSS and IST stacks (user mode).
static CPU_TABLES: [usermode::CpuTables; MAX_CPUS] =
    [const { usermode::CpuTables::new() }; MAX_CPUS];
static MACHINE: spin::Once<&'static MachineState> = spin::Once::new();
static CPUS: spin::Once<&'static [Cpu]> = spin::Once::new();
static OPTS: spin::Once<Opts> = spin::Once::new();
/// Bring-up: APs online, the BSP's go, APs out of their idle loops.
static BRINGUP: Bringup = Bringup::new();
/// Per CPU: did `gs:[0]` and the GS MSRs read back as installed?
static GS_OK: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The waits of AP start-up after the INIT and after each SIPI, in ns.
const INIT_DELAY_NS: u64 = 10_000_000;
const SIPI_DELAY_NS: u64 = 200_000;

/// The command line, parsed: the test program's options
/// ([`lwkt_test_program::opts`]) and this kernel's own.
#[derive(Debug, Clone, Copy)]
struct Opts {
    common: opts::Opts,
    apic: Option<Mode>,
    /// `tsc=pit` and `timer=oneshot`: the paths TCG takes, under KVM too.
    time: time::Options,
    /// `user`, `user-only`, `user-ops=N`, `user-bench`, `user-samples=N`.
    user: usertest::UserOpts,
}

impl Opts {
    fn parse(cmdline: &str) -> Result<Opts, alloc::string::String> {
        let (mut apic, mut t, mut user) = (
            None,
            time::Options::default(),
            usertest::UserOpts::default(),
        );
        let known = "apic=auto|xapic|x2apic tsc=auto|pit timer=auto|oneshot user user-only \
                     user-ops=N user-bench user-samples=N syscall=auto|insn|int|trap";
        let common = opts::parse(cmdline, known, |w, k, v| {
            let bad = |what: &str| Err(alloc::format!("option '{w}': {what}"));
            match k {
                "user" => user.on = true,
                "user-only" => user.only = true,
                "user-ops" => user.ops = opts::number(w, v)?,
                "user-bench" => user.bench = true,
                "user-samples" => user.samples = opts::number(w, v)?.max(1),
                "syscall" => {
                    user.int = match v {
                        "auto" => None,
                        "insn" => Some(0),
                        "int" => Some(1),
                        "trap" => Some(2),
                        _ => return bad("syscall=auto|insn|int|trap"),
                    }
                }
                "tsc" => {
                    t.force_pit = match v {
                        "auto" => false,
                        "pit" => true,
                        _ => return bad("tsc=auto|pit"),
                    }
                }
                "timer" => {
                    t.force_oneshot = match v {
                        "auto" => false,
                        "oneshot" => true,
                        _ => return bad("timer=auto|oneshot"),
                    }
                }
                "apic" => {
                    apic = match v {
                        "auto" => None,
                        "xapic" => Some(Mode::XApic),
                        "x2apic" => Some(Mode::X2Apic),
                        _ => return bad("apic=auto|xapic|x2apic"),
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Opts {
            common,
            apic,
            time: t,
            user,
        })
    }
}

/// The index of the CPU this runs on, found without trusting GS: an
/// exception or NMI may arrive before this CPU installed its block (GS
/// then reads address 0). The GS base MSR is compared with the blocks'
/// addresses; nothing is read through it.
fn cpu_here() -> Option<usize> {
    // SAFETY: ring 0 (all of this kernel runs there).
    let (gs, _) = unsafe { percpu::bases() };
    PERCPU.iter().position(|p| p as *const PerCpu as u64 == gs)
}

fn on_fault(f: &FaultFrame) -> ! {
    let cpu = cpu_here();
    if f.vector == 2 {
        nmi_dump(cpu, f)
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let cpu = cpu.map_or_else(|| "? (GS not installed)".into(), |c| alloc::format!("{c}"));
    fail!(
        "EXCEPTION vector={:#x} error={:#x} rip={:#x} cr2={:#x} on cpu {cpu}",
        f.vector,
        f.error,
        f.rip,
        cr2
    )
}

/// An NMI: the xtask sends one to every CPU (QEMU's monitor command `nmi`)
/// when a run times out. Print where this CPU was and its LWKT state, one
/// line, then stop; the last CPU to print ends the run as a failure.
fn nmi_dump(cpu: Option<usize>, f: &FaultFrame) -> ! {
    // The `Cpu` this CPU's installed block is attached to, if any.
    let attached = cpu.and_then(|i| PERCPU[i].cpu());
    // SAFETY: on this CPU (its own NMI), the `Cpu` attached to it.
    let line = unsafe { HangLine::here("rip", f.rip, cpu, attached) };
    hw::print_nmi(format_args!("{line}"));
    if BRINGUP.dumped() {
        hw::exit(false)
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// One line (the xtask reports the `FAIL` line): where, then the message.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => fail!("PANIC at {}:{}: {}", l.file(), l.line(), info.message()),
        None => fail!("PANIC: {}", info.message()),
    }
}

/// Load the IDT, enable the APIC, install GS and attach lwkt's CPU block.
///
/// # Safety
/// Once per CPU, on CPU `idx`, interrupts off.
unsafe fn setup_cpu(idx: usize, mode: Mode, cpus: &'static [Cpu]) {
    let pcpu = &PERCPU[idx];
    // SAFETY: caller (ring 0, once on this CPU, interrupts off); this
    // CPU's tables, used by no other; the kernel's selectors are 0x08 and
    // 0x10 (boot.rs) and nothing loads GS's selector. First, so that the
    // IDT's IST gates find their stacks.
    unsafe { usermode::init_cpu(pcpu, &CPU_TABLES[idx]) };
    // SAFETY: caller (ring 0, once on this CPU, interrupts off); the IDT
    // and the per-CPU block are statics.
    unsafe {
        IDT.get().expect("IDT built by the BSP").load();
        apic::enable(mode, SPURIOUS_VECTOR);
        // A hang report: the xtask's NMI on timeout reaches us here.
        apic::lint1_as_nmi();
        percpu::install(pcpu);
        ARCH.attach(pcpu, &cpus[idx]);
        let (gs, kgs) = percpu::bases();
        let ok = gs == pcpu as *const PerCpu as u64
            && kgs == 0
            && core::ptr::eq(percpu::current(), pcpu)
            && percpu::current_index() == idx;
        GS_OK[idx].store(ok, Ordering::Relaxed);
    }
}

/// Calibrate the clock (and the APIC timer), print which path was taken,
/// and start the BSP's timer.
fn calibrate_clock(opts: time::Options) -> &'static TimeBase {
    let t = hw::tsc();
    // SAFETY: ring 0 on the BSP, once; its APIC is enabled (`setup_cpu`);
    // the 8259s are masked (IRQ 0 of the PIT goes nowhere) and nothing
    // else here uses the PIT.
    let tb = match unsafe { time::calibrate(opts) } {
        Ok(tb) => tb,
        Err(e) => fail!("clock: {e}"),
    };
    kprintln!(
        "lwkt-qemu-test: clock: {tb} ({} us to calibrate)",
        tb.ticks_to_ns(hw::tsc() - t) / 1_000
    );
    // SAFETY: on the BSP, after `setup_cpu` (IDT, APIC, GS) and
    // `calibrate`.
    unsafe { time::start_timer() };
    tb
}

/// The BSP's entry from `boot.rs`, with the `hvm_start_info` address.
#[no_mangle]
extern "C" fn bsp_main(info: usize) -> ! {
    // SAFETY: once, on the BSP, before anything allocates; EBX from QEMU's
    // PVH entry (identity mapped); the RAM above the image is ours.
    match unsafe { heap::init(info) } {
        Ok(n) => kprintln!("lwkt-qemu-test: heap {} MiB", n >> 20),
        Err(e) => fail!("heap: {e}"),
    }
    // SAFETY: EBX from QEMU's PVH entry, identity mapped.
    let cmdline = unsafe { boot::cmdline(info) };
    kprintln!("lwkt-qemu-test: cmdline '{cmdline}'");
    let opts = match Opts::parse(cmdline) {
        Ok(o) => *OPTS.call_once(|| o),
        Err(e) => fail!("{e}"),
    };
    // SAFETY: `on_fault` trusts no GS (it finds the CPU through the MSR)
    // and calls no lwkt code but `Cpu::snapshot` on this CPU's own block.
    unsafe { idt::set_fault_handler(on_fault) };
    // SAFETY: the user-mode tests' NMI handler touches only atomics, the
    // APIC id register and the GS base MSR; outside its test it passes
    // every NMI on to `on_fault` (the hang dump).
    unsafe { idt::set_nmi_handler(usertest::nmi_handler) };
    let ncpus = opts
        .common
        .ncpus(
            opts.common.expect_cpus.unwrap_or_else(hw::fw_cfg_ncpus),
            MAX_CPUS,
        )
        .unwrap_or_else(|e| fail!("{e}"));
    let mode = match opts.apic {
        Some(Mode::X2Apic) if !apic::has_x2apic() => {
            fail!("apic=x2apic: this CPU has no x2APIC (TCG in QEMU 7.2 offers only xAPIC)")
        }
        Some(m) => m,
        None if apic::has_x2apic() => Mode::X2Apic,
        None => Mode::XApic,
    };
    hw::mask_pics();
    IDT.call_once(|| Idt::new_user(0x08));
    // SAFETY: on the BSP, once, before any user program; CR3 holds the
    // boot tables. The user range is exactly the user text and memory,
    // which each slot's tables map only to that slot's pages (or the
    // read-only code); the handler trusts no register.
    unsafe {
        usermem::init();
        let (start, end) = usermem::range();
        usermode::set_user_range(start, end);
        usermode::set_syscall_handler(syscall::handler);
    }

    // The lwkt machine: CPU blocks, ncpus^2 IPI rings, the backend.
    // SAFETY: no CPU runs lwkt yet; every CPU attaches to `ARCH`.
    let (machine, cpus) = unsafe { bringup::build_machine(&ARCH, ncpus) };
    MACHINE.call_once(|| machine);
    CPUS.call_once(|| cpus);
    let (stacks, stack_len) =
        bringup::stack_region(ncpus, heap::used).unwrap_or_else(|e| fail!("{e}"));
    // SAFETY: a fresh heap block, page aligned, never freed, used for
    // nothing else.
    unsafe { ARCH.stacks().init(stacks, stack_len, bringup::STACK_SLOT) };
    // SAFETY: CPU 0, once, interrupts off (PVH entry state).
    unsafe { setup_cpu(0, mode, cpus) };
    if opts.common.attach_twice {
        kprintln!("attaching cpu 0 a second time (attach-twice)");
        // SAFETY: ring 0 on CPU 0, after `install` and `apic::enable`
        // here; no CPU has started. `attach` must refuse (a panic).
        unsafe { ARCH.attach(&PERCPU[0], &cpus[0]) };
        fail!("attach-twice: the second attach was accepted");
    }
    // SAFETY: ring 0, after `apic::enable` on this CPU (`setup_cpu`).
    let bsp_apic = unsafe { apic::id() };
    kprintln!("lwkt-qemu-test: {ncpus} CPUs expected (fw_cfg), {mode:?}, bsp apic id {bsp_apic}");

    // Start the APs: INIT, wait, SIPI, wait, SIPI (broadcast to all
    // others). The clock is calibrated during the wait after the INIT (the
    // PIT path takes about 12 ms of the 10 the APs need), then the rest of
    // the wait is measured with it.
    let t = hw::tsc();
    if ncpus > 1 {
        // SAFETY: low memory at 0x8000 is free; INIT to the other CPUs,
        // which firmware left parked.
        unsafe {
            boot::install_trampoline();
            apic::send(Icr::init_all_but_self());
        }
    }
    let tb = calibrate_clock(opts.time);
    if ncpus > 1 {
        let page = (boot::TRAMPOLINE >> 12) as u8;
        hw::delay(t, tb.ns_to_ticks(INIT_DELAY_NS));
        // SAFETY: SIPIs to the other CPUs, which took the INIT above; the
        // trampoline is in place.
        unsafe { apic::send(Icr::startup_all_but_self(page)) };
        hw::delay(hw::tsc(), tb.ns_to_ticks(SIPI_DELAY_NS));
        // SAFETY: as above (APs already running ignore it).
        unsafe { apic::send(Icr::startup_all_but_self(page)) };
    }
    let since = |t: u64| move || tb.ticks_to_ns(hw::tsc() - t);
    if let Err(up) = BRINGUP.wait_online(ncpus, since(t), core::hint::spin_loop) {
        fail!("only {up} of {ncpus} CPUs came online: a CPU never started");
    }
    kprintln!(
        "lwkt-qemu-test: all {ncpus} CPUs online {} us after the INIT",
        tb.ticks_to_ns(hw::tsc() - t) / 1_000
    );

    // SAFETY: CPU 0 has not entered its idle loop; the test borrows only
    // statics.
    unsafe {
        cpus[0]
            .spawn_boot_thread(Priority::default(), 64 << 10, "test-main", move |cur| {
                if !opts.user.only {
                    lwkt_test_program::run(&X86Kernel, cur, opts.common.rounds, cpus);
                }
                if opts.user.on || opts.user.only {
                    usertest::run(cur, opts.user);
                }
                lwkt_test_program::end_test_thread(&X86Kernel, cur, opts.common.hang, cpus);
            })
            .unwrap_or_else(|e| fail!("cannot create the test thread: {e}"));
    }
    BRINGUP.go();
    x86_64::instructions::interrupts::enable();
    // SAFETY: on CPU 0, once, after `bind`.
    unsafe { cpus[0].idle_loop() };
    x86_64::instructions::interrupts::disable();

    if BRINGUP
        .wait_done(ncpus, since(hw::tsc()), core::hint::spin_loop)
        .is_err()
    {
        fail!("a CPU did not leave its idle loop after shutdown");
    }
    let ok = if opts.user.only {
        GS_OK[..ncpus].iter().all(|g| g.load(Ordering::Relaxed))
    } else {
        lwkt_test_program::report(cpus)
    };
    let ok = usertest::report(ncpus) && ok;
    if lwkt_test_program::verdict(&X86Kernel, ok, heap::used()) {
        hw::exit(true)
    }
    fail!("a check failed (see above)")
}

/// An AP's entry from `boot.rs`, with its CPU index (1..).
#[no_mangle]
extern "C" fn ap_main(idx: usize) -> ! {
    let cpus = *CPUS
        .get()
        .expect("the BSP built the machine before the SIPI");
    if idx >= cpus.len() {
        fail!("AP {idx} started but fw_cfg said {} CPUs", cpus.len());
    }
    let mode = apic::mode().expect("the BSP enabled its APIC first");
    // SAFETY: this AP, once, interrupts off (trampoline `cli`); the BSP
    // calibrated the clock before the SIPI; `setup_cpu` loaded the IDT,
    // enabled the APIC and installed GS.
    unsafe {
        setup_cpu(idx, mode, cpus);
        time::start_timer();
    }
    BRINGUP.online();
    if OPTS.get().and_then(|o| o.common.fault) == Some(idx) {
        kprintln!("cpu {idx}: faulting on purpose (fault={idx})");
        // SAFETY: the negative test: #UD, reported by the fault handler.
        unsafe { core::arch::asm!("ud2") };
    }
    BRINGUP.wait_go(core::hint::spin_loop);
    x86_64::instructions::interrupts::enable();
    // SAFETY: on this CPU, once, after `bind` (the BSP bound before SIPI).
    unsafe { cpus[idx].idle_loop() };
    x86_64::instructions::interrupts::disable();
    BRINGUP.left_idle_loop();
    loop {
        x86_64::instructions::hlt();
    }
}
