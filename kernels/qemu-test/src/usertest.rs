//! The user-mode tests (kernel option `user`, or `user-only`): user
//! programs ([`crate::uprog`]) on every CPU, each an lwkt thread that drops
//! to ring 3 (`usermode::run_user`) in its own address space
//! ([`crate::usermem`]), with system calls as messages
//! ([`crate::syscall`]).
//!
//! 1. main: on every CPU, `user-ops` synchronous and `user-ops`
//!    asynchronous system calls; every message counted on both sides (the
//!    program's REPORT and the kernel's counts must agree, every
//!    asynchronous reply collected exactly once);
//! 2. faults: on every CPU, programs that take #PF, #GP, #UD and a wild
//!    jump are ended with a report, and the kernel goes on;
//! 3. bad arguments: bad pointers, bad numbers, a reply port not the
//!    caller's, aborts of messages not in flight, a migration mid-program;
//! 4. time slicing: a user program that never traps shares its CPU with a
//!    CPU-bound kernel thread (only the timer, from ring 3, can switch
//!    them), while another CPU sends it IPIs;
//! 5. with `user-bench`: cycles per empty system call, per synchronous
//!    system call as a message completed inline, and per asynchronous one
//!    sent to a kernel thread on another CPU and collected.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use lwkt_arch_x86_64::usermode::{self, UserExit, UserProgram};
use lwkt_core::{CpuId, Cur, MyCpu, Priority, ThreadHandle};

use crate::boot::MAX_CPUS;
use crate::syscall::{self, Proc};
use crate::uprog::{self, *};
use crate::usermem;

/// The user-mode test options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserOpts {
    /// Run the user-mode tests (after the others).
    pub(crate) on: bool,
    /// Run only the user-mode tests.
    pub(crate) only: bool,
    /// Synchronous and asynchronous calls of each main program.
    pub(crate) ops: u64,
    /// Run the benchmark.
    pub(crate) bench: bool,
    /// Benchmark samples per kind.
    pub(crate) samples: u64,
    /// How programs enter the kernel (`uprog::USE_INT`): `None` probes.
    pub(crate) int: Option<u64>,
}

impl Default for UserOpts {
    fn default() -> Self {
        UserOpts {
            on: false,
            only: false,
            ops: 10_000,
            bench: false,
            samples: 1001,
            int: None,
        }
    }
}

/// Checks that failed.
static FAILS: AtomicUsize = AtomicUsize::new(0);
static RAN: AtomicBool = AtomicBool::new(false);

macro_rules! bad {
    ($($t:tt)*) => {{
        FAILS.fetch_add(1, Ordering::Relaxed);
        crate::kprintln!("user: FAILED: {}", format_args!($($t)*));
    }};
}

fn now() -> u64 {
    lwkt_arch_x86_64::time::now_ns().unwrap_or(0)
}

fn spawn(
    cur: &mut Cur,
    cpu: usize,
    name: &'static str,
    pri: Priority,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> ThreadHandle {
    cur.builder()
        .cpu(CpuId::new(cpu as u32))
        .name(name)
        .priority(pri)
        .spawn(f)
        .unwrap_or_else(|e| crate::fail!("spawn {name} on cpu {cpu}: {e}"))
}

fn join_all(cur: &mut Cur, hs: Vec<ThreadHandle>) {
    for h in &hs {
        cur.join(h);
    }
}

type Entry = extern "C" fn(*mut u64) -> !;

/// What a program did, as the kernel saw it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    exit: UserExit,
    sync_done: u64,
    async_sent: u64,
    async_collected: u64,
    reaped: u64,
    report: Option<[u64; 4]>,
}

/// Run `entry` as a user program on this thread, in a fresh address
/// space whose data page `setup` fills in; reap its messages after.
fn run_program(me: &mut Cur, entry: Entry, setup: impl FnOnce(*mut u64)) -> Outcome {
    let space = usermem::alloc().unwrap_or_else(|| crate::fail!("user: no free address space"));
    let data = space.data as *mut u64;
    let (start, end) = usermem::range();
    // SAFETY: the slot's data page, ours until `free` (no program runs in
    // it yet).
    unsafe {
        data.add(D_PORT).write(space.slot as u64);
        data.add(D_NCPUS).write(me.my_cpu().ncpus() as u64);
        data.add(D_OTHER)
            .write(usermem::slot_addr(space.slot + 1) as u64);
        data.add(D_TEXT).write(start as u64);
        data.add(D_END).write(end as u64);
        data.add(D_KERNEL).write(0x10_0000);
        data.add(D_GUARD)
            .write((space.data + usermem::GUARD_PAGE * 4096) as u64);
    }
    setup(data);
    let mut proc = Proc::new(me, space.slot as u64);
    let prog = UserProgram {
        entry: entry as *const () as u64,
        // As after a call: the return address slot below a 16-byte
        // aligned top.
        stack: space.stack_top as u64 - 8,
        args: [space.data as u64, 0, 0],
        cr3: space.cr3,
        cookie: &*proc as *const Proc as u64,
        window: [space.data as u64, space.stack_top as u64],
    };
    // SAFETY: an lwkt thread outside critical sections, on a CPU that ran
    // `usermode::init_cpu` (all do, `setup_cpu`); the slot's tables map the
    // kernel as the boot tables do and only user pages in the user range;
    // the cookie is the pinned `Proc`, alive until after `reap`.
    let exit = unsafe { usermode::run_user(&prog) };
    proc.as_mut().reap(me);
    usermem::free(space);
    Outcome {
        exit,
        sync_done: proc.sync_done,
        async_sent: proc.async_sent,
        async_collected: proc.async_collected,
        reaped: proc.reaped,
        report: proc.report,
    }
}

/// Run every part; the servers live across them.
pub(crate) fn run(cur: &mut Cur, o: UserOpts) {
    RAN.store(true, Ordering::Relaxed);
    let n = cur.my_cpu().ncpus();
    let servers: Vec<_> = (0..n)
        .map(|c| spawn(cur, c, "sys-server", Priority::default(), syscall::server))
        .collect();
    while !(0..n).all(syscall::server_ready) {
        cur.sleep_for(Duration::from_micros(100));
    }
    choose_entry(cur, o.int);
    main_programs(cur, n, o.ops);
    crate::kprintln!("  user: system calls as messages: done");
    faults(cur, n);
    crate::kprintln!("  user: faulting programs: done");
    bad_args(cur, n);
    crate::kprintln!("  user: bad arguments: done");
    slicing(cur, n);
    crate::kprintln!("  user: time slicing and IPIs in user mode: done");
    if o.bench {
        bench(cur, n, o.samples);
    }
    syscall::stop_servers(cur.my_cpu(), n);
    join_all(cur, servers);
}

/// How programs enter the kernel (`uprog::USE_INT`).
const ENTRY_NAMES: [&str; 3] = [
    "syscall (sysretq)",
    "int 0xF0 (iretq)",
    "the trap system call ud1 (#UD, iretq)",
];

fn set_entry(how: u64) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: the flag lives in the user code page, read-only in the
        // programs' tables (and CR0.WP makes it so for the kernel too):
        // clear WP for this one store, interrupts off, no program running
        // (the tests start after this).
        unsafe {
            use x86_64::registers::control::{Cr0, Cr0Flags};
            Cr0::update(|f| f.remove(Cr0Flags::WRITE_PROTECT));
            uprog::USE_INT.store(how, Ordering::SeqCst);
            Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
        }
    });
    usermode::set_trap_syscall(how == 2);
}

/// Decide how programs enter the kernel: forced by the `syscall=` option,
/// or probed: `syscall`, then `int 0xF0`, then the trap system call, the
/// first with which a program's empty system call comes back.
fn choose_entry(cur: &mut Cur, force: Option<u64>) {
    let how =
        force.unwrap_or_else(|| {
            for how in 0..3u64 {
                set_entry(how);
                let o = run_program(cur, uprog::probe, |_| {});
                if o.exit == UserExit::Exited(7) {
                    return how;
                }
                crate::kprintln!(
                "user: note: a system call by {} failed here: {:x?}{}",
                ENTRY_NAMES[how as usize],
                o.exit,
                match o.exit {
                    UserExit::Fault { vector: 14, rip, .. } if rip == usermode::syscall_entry() =>
                        " (RIP became LSTAR, still in ring 3: the hypervisor emulated `syscall`)",
                    UserExit::Fault { vector: 6, .. } =>
                        " (#UD: the hypervisor could not emulate it)",
                    _ => "",
                }
            );
            }
            bad!("no way into the kernel works for a user program");
            0
        });
    set_entry(how);
    crate::kprintln!("user: system call entry: {}", ENTRY_NAMES[how as usize]);
}

static MAIN: [[AtomicU64; 6]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 6] }; MAX_CPUS];

/// NMIs while the main programs run: the paranoid entry (decided by the GS
/// base MSR) must leave the kernel GS in place for the handler wherever
/// the NMI lands: in ring 3, in the kernel, or inside the `syscall`
/// entry and exit, between `syscall` and `swapgs` or `swapgs` and
/// `sysretq`.
static NMI_TEST: AtomicBool = AtomicBool::new(false);
static NMI_SENT: AtomicU64 = AtomicU64::new(0);
static NMI_TAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static NMI_USER: AtomicU64 = AtomicU64::new(0);
static NMI_ENTRY: AtomicU64 = AtomicU64::new(0);
static NMI_WINDOW: AtomicU64 = AtomicU64::new(0);
static NMI_BAD_GS: AtomicU64 = AtomicU64::new(0);
static MAIN_DONE: AtomicBool = AtomicBool::new(false);

/// The NMI handler (`idt::set_nmi_handler`): while the test runs, count
/// the NMI, check GS, and resume; otherwise leave it to the fault handler
/// (the hang dump).
pub(crate) fn nmi_handler(f: &lwkt_arch_x86_64::idt::FaultFrame) -> bool {
    if !NMI_TEST.load(Ordering::Acquire) || f.vector != 2 {
        return false;
    }
    // SAFETY: ring 0; this CPU's APIC is enabled (the test runs after
    // every CPU attached).
    let apic = unsafe { lwkt_arch_x86_64::apic::id() };
    let Some(c) = crate::PERCPU.iter().position(|p| p.apic_id() == Some(apic)) else {
        NMI_BAD_GS.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    // The paranoid entry swapped if it found the user GS live: now the
    // GS base must be this CPU's block, whatever the saved CS says.
    if crate::cpu_here() != Some(c) {
        NMI_BAD_GS.fetch_add(1, Ordering::Relaxed);
    }
    NMI_TAKEN[c].fetch_add(1, Ordering::Relaxed);
    let entry = usermode::syscall_entry();
    if f.cs & 3 == 3 {
        NMI_USER.fetch_add(1, Ordering::Relaxed);
    } else if usermode::in_swapgs_window(f.rip) {
        NMI_WINDOW.fetch_add(1, Ordering::Relaxed);
    } else if (entry..entry + 0x80).contains(&f.rip) {
        NMI_ENTRY.fetch_add(1, Ordering::Relaxed);
    }
    true
}

fn main_programs(cur: &mut Cur, n: usize, ops: u64) {
    MAIN_DONE.store(false, Ordering::Release);
    NMI_TEST.store(true, Ordering::Release);
    let nmi = (n > 1).then(|| {
        spawn(cur, 0, "nmi-sender", Priority::default(), move |me| {
            let mut t = 1;
            while !MAIN_DONE.load(Ordering::Acquire) {
                if let Some(a) = crate::PERCPU[t].apic_id() {
                    // SAFETY: ring 0, this CPU's APIC enabled; an NMI to an
                    // attached CPU, whose IDT's NMI gate (IST 1) leads to
                    // the paranoid entry and `nmi_handler`.
                    unsafe { lwkt_arch_x86_64::apic::send(lwkt_arch_x86_64::apic::Icr::nmi(a)) };
                    NMI_SENT.fetch_add(1, Ordering::Relaxed);
                }
                t = if t + 1 >= n { 1 } else { t + 1 };
                me.sleep_for(Duration::from_micros(50));
            }
        })
    });
    let hs = (0..n)
        .map(|c| {
            spawn(cur, c, "user-main", Priority::default(), move |me| {
                let o = run_program(me, uprog::main_program, |d| {
                    // SAFETY: the program's data page, not running yet.
                    unsafe {
                        d.add(D_SYNC).write(ops);
                        d.add(D_ASYNC).write(ops);
                    }
                });
                let want_sync = ops + ops / 2500 + u64::from(ops % 2500 > 1234);
                let r = o.report.unwrap_or([0; 4]);
                let ok = o.exit == UserExit::Exited(0)
                    && r == [ops, ops, ops, 0]
                    && o.sync_done == want_sync
                    && o.async_sent == ops
                    && o.async_collected == ops
                    && o.reaped == 0;
                for (i, v) in [r[0], r[2], o.sync_done, o.async_sent, o.async_collected]
                    .into_iter()
                    .enumerate()
                {
                    MAIN[c][i].store(v, Ordering::Relaxed);
                }
                MAIN[c][5].store(u64::from(ok), Ordering::Relaxed);
                if !ok {
                    bad!(
                        "cpu {c}: main program: {:?}, its report {r:?} (want [{ops}, {ops}, {ops}, 0]), \
                         kernel: {} sync (want {want_sync}), {} async sent, {} collected, {} reaped",
                        o.exit,
                        o.sync_done,
                        o.async_sent,
                        o.async_collected,
                        o.reaped
                    );
                }
            })
        })
        .collect();
    join_all(cur, hs);
    MAIN_DONE.store(true, Ordering::Release);
    if let Some(h) = nmi {
        cur.join(&h);
    }
    // NMIs still in flight land before the flag goes down: wait a little.
    cur.sleep_for(Duration::from_millis(2));
    NMI_TEST.store(false, Ordering::Release);
    let taken: u64 = NMI_TAKEN.iter().map(|x| x.load(Ordering::Relaxed)).sum();
    let sent = NMI_SENT.load(Ordering::Relaxed);
    crate::kprintln!(
        "user-nmi: {sent} NMIs sent to CPUs running user programs, {taken} taken ({} in ring 3, \
         {} in the swapgs window of the syscall entry/exit, {} elsewhere in that assembly), \
         {} with a wrong GS",
        NMI_USER.load(Ordering::Relaxed),
        NMI_WINDOW.load(Ordering::Relaxed),
        NMI_ENTRY.load(Ordering::Relaxed),
        NMI_BAD_GS.load(Ordering::Relaxed)
    );
    if NMI_BAD_GS.load(Ordering::Relaxed) != 0 || taken > sent || (n > 1 && taken == 0) {
        bad!("NMIs: {sent} sent, {taken} taken, some with a wrong GS or none taken");
    }
}

/// The faulting programs and the vector each must end with.
const FAULTS: [(&str, Entry, u64); 6] = [
    ("page-fault", uprog::page_fault, 14),
    ("protection-fault", uprog::protection_fault, 13),
    ("invalid-opcode", uprog::invalid_opcode, 6),
    ("wild-jump", uprog::wild_jump, 14),
    ("x87", uprog::fpu_use, 7),
    ("sse", uprog::sse_use, 6),
];

fn faults(cur: &mut Cur, n: usize) {
    let hs = (0..n)
        .map(|c| {
            spawn(cur, c, "user-faults", Priority::default(), move |me| {
                for (name, entry, want) in FAULTS {
                    let o = run_program(me, entry, |_| {});
                    match o.exit {
                        UserExit::Fault {
                            vector,
                            error,
                            rip,
                            addr,
                        } if vector == want => crate::kprintln!(
                            "user-fault: cpu {c}: program '{name}' ended: vector {vector} \
                             error {error:#x} rip {rip:#x} addr {addr:#x} (expected)"
                        ),
                        // PVM (where programs enter by the `ud1` trap) runs
                        // x87 and SSE in the guest's ring 3 whatever CR0.EM
                        // and CR4.OSFXSR say: noted, not failed, there.
                        UserExit::Exited(0)
                            if matches!(name, "x87" | "sse")
                                && uprog::USE_INT.load(Ordering::Relaxed) == 2 =>
                        {
                            crate::kprintln!(
                                "user: note: cpu {c}: program '{name}' ran to its end: this \
                                 hypervisor does not enforce CR0.EM/CR4.OSFXSR in ring 3"
                            )
                        }
                        e => bad!("cpu {c}: program '{name}': {e:?}, want vector {want}"),
                    }
                }
            })
        })
        .collect();
    join_all(cur, hs);
}

fn bad_args(cur: &mut Cur, n: usize) {
    let hs = (0..n)
        .map(|c| {
            spawn(cur, c, "user-bad-args", Priority::default(), move |me| {
                let o = run_program(me, uprog::bad_args, |_| {});
                let all = (1u64 << BAD_CHECKS) - 1;
                match o.exit {
                    UserExit::Exited(bits) if bits == all && o.reaped == 0 => crate::kprintln!(
                        "user-bad-args: cpu {c}: all {BAD_CHECKS} checks answered as they must"
                    ),
                    UserExit::Exited(bits) => {
                        for (k, name) in BAD_NAMES.iter().enumerate() {
                            if bits & (1 << k) == 0 {
                                bad!("cpu {c}: bad-args check {k} failed: {name}");
                            }
                        }
                        if o.reaped != 0 {
                            bad!("cpu {c}: bad-args left {} messages in flight", o.reaped);
                        }
                    }
                    e => bad!("cpu {c}: bad-args program: {e:?}"),
                }
            })
        })
        .collect();
    join_all(cur, hs);
}

static SPIN_DATA: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
static SPIN_TURNS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static PINGS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SPIN_DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
const TURNS_WANTED: u64 = 3;
const PINGS_WANTED: u64 = 5;

fn ping(my: MyCpu<'_>, _: usize, _: usize) {
    PINGS[my.id().index()].fetch_add(1, Ordering::Relaxed);
}

fn read_spins(c: usize) -> u64 {
    let d = SPIN_DATA[c].load(Ordering::Acquire);
    if d == 0 {
        return 0;
    }
    // SAFETY: the spinner's data page (identity mapped kernel memory),
    // published before the program starts and until it ends.
    unsafe { (d as *const u64).add(D_SPINS).read_volatile() }
}

fn slicing(cur: &mut Cur, n: usize) {
    let mut hs = Vec::new();
    for c in 0..n {
        hs.push(spawn(
            cur,
            c,
            "user-spinner",
            Priority::default(),
            move |me| {
                let o = run_program(me, uprog::spinner, |d| {
                    SPIN_DATA[c].store(d as usize, Ordering::Release);
                });
                SPIN_DATA[c].store(0, Ordering::Release);
                if o.exit != UserExit::Exited(0) {
                    bad!("cpu {c}: spinner: {:?}", o.exit);
                }
            },
        ));
        // The kernel peer: CPU-bound, same priority, never yields.
        hs.push(spawn(
            cur,
            c,
            "kernel-spinner",
            Priority::default(),
            move |_me| {
                let t0 = now();
                let mut last = read_spins(c);
                loop {
                    let s = read_spins(c);
                    if s != last {
                        // The user program ran between two of our iterations:
                        // the timer switched it in and back out, from ring 3.
                        last = s;
                        SPIN_TURNS[c].fetch_add(1, Ordering::Relaxed);
                    }
                    if SPIN_TURNS[c].load(Ordering::Relaxed) >= TURNS_WANTED
                        && PINGS[c].load(Ordering::Relaxed) >= PINGS_WANTED
                    {
                        break;
                    }
                    if now() - t0 > 20_000_000_000 {
                        bad!(
                            "cpu {c}: user spinner: {} turns, {} IPIs in 20 s",
                            SPIN_TURNS[c].load(Ordering::Relaxed),
                            PINGS[c].load(Ordering::Relaxed)
                        );
                        break;
                    }
                    core::hint::spin_loop();
                }
                SPIN_DONE[c].store(true, Ordering::Release);
                let d = SPIN_DATA[c].load(Ordering::Acquire);
                if d != 0 {
                    // SAFETY: the spinner's data page; the word it polls.
                    unsafe { (d as *mut u64).add(D_STOP).write_volatile(1) };
                }
            },
        ));
        // The IPI sender, on the next CPU, above the spinners' priority:
        // each of its wake-ups (every 500 µs) preempts a spinner there, so
        // a quantum's end often comes due at the same time as a
        // preemption. (Until session 14 the preemption consumed the
        // round-robin the spinner owed, and the kernel spinner starved:
        // this part hung at 4 CPUs under single-threaded TCG.)
        hs.push(spawn(
            cur,
            (c + 1) % n,
            "user-pinger",
            Priority::SOFT_NORM,
            move |me| {
                while !SPIN_DONE[c].load(Ordering::Acquire) {
                    if c != me.my_cpu().id().index() {
                        me.my_cpu()
                            .send_ipi(CpuId::new(c as u32), ping, 0, 0)
                            .unwrap_or_else(|e| crate::fail!("send_ipi to {c}: {e:?}"));
                    } else {
                        PINGS[c].fetch_add(1, Ordering::Relaxed);
                    }
                    me.sleep_for(Duration::from_micros(500));
                }
            },
        ));
    }
    join_all(cur, hs);
}

fn median(k: usize) -> (u64, usize) {
    let n = (syscall::NSAMPLES[k].load(Ordering::Relaxed) as usize).min(syscall::MAX_SAMPLES);
    let mut v: Vec<u64> = syscall::SAMPLES[k][..n]
        .iter()
        .map(|x| x.load(Ordering::Relaxed))
        .collect();
    v.sort_unstable();
    (v.get(n / 2).copied().unwrap_or(0), n)
}

fn bench(cur: &mut Cur, n: usize, samples: u64) {
    let samples = samples.min(syscall::MAX_SAMPLES as u64);
    let h = spawn(cur, 0, "user-bench", Priority::default(), move |me| {
        let o = run_program(me, uprog::bench, |d| {
            // SAFETY: the program's data page, not running yet.
            unsafe { d.add(D_SAMPLES).write(samples) };
        });
        if o.exit != UserExit::Exited(0) {
            bad!("bench program: {:?}", o.exit);
        }
    });
    cur.join(&h);
    let (empty, k) = median(0);
    let (sync, _) = median(1);
    let (asy, _) = median(2);
    crate::kprintln!(
        "user-bench: cycles per op (TSC, medians of {k} samples, each the mean of 16 ops): \
         empty syscall {empty}, sync syscall-as-message completed inline {sync} ({:.2}x the empty one), \
         async syscall to a kernel thread on cpu {} and collected {asy}",
        sync as f64 / empty.max(1) as f64,
        1 % n
    );
}

/// Print the user-mode summary; whether every check held.
pub(crate) fn report(n: usize) -> bool {
    if !RAN.load(Ordering::Relaxed) {
        return true;
    }
    crate::kprintln!("cpu  user-sync  user-async  kernel-sync  async-sent  async-collected  ok  spin-turns  ipis-in-user-test");
    for (c, m) in MAIN.iter().enumerate().take(n) {
        let v: Vec<u64> = m.iter().map(|x| x.load(Ordering::Relaxed)).collect();
        crate::kprintln!(
            "{c:>3}  {:>9}  {:>10}  {:>11}  {:>10}  {:>15}  {:>2}  {:>10}  {:>17}",
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            if v[5] == 1 { "ok" } else { "NO" },
            SPIN_TURNS[c].load(Ordering::Relaxed),
            PINGS[c].load(Ordering::Relaxed)
        );
    }
    let sent = syscall::K_ASYNC_SENT.load(Ordering::Relaxed);
    let collected = syscall::K_ASYNC_COLLECTED.load(Ordering::Relaxed);
    let served: u64 = syscall::K_SERVED
        .iter()
        .take(n)
        .map(|x| x.load(Ordering::Relaxed))
        .sum();
    let stray = syscall::K_STRAY.load(Ordering::Relaxed);
    crate::kprintln!(
        "user: async messages: {sent} sent, {collected} collected, {served} served by kernel threads \
         (incl. sync SLEEPs), {stray} stray replies"
    );
    if sent != collected || stray != 0 {
        bad!("async messages: {sent} sent, {collected} collected, {stray} stray");
    }
    let fails = FAILS.load(Ordering::Relaxed);
    crate::kprintln!("user: {fails} checks failed");
    fails == 0
}
