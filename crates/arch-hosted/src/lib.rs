//! The hosted (user-space) backend for lwkt: DragonFly's vkernel idea.
//!
//! N virtual CPUs are OS threads (pinned to host cores when the host
//! allows; N may exceed the host's cores, and then they are not pinned,
//! idle vCPUs yield their core rather than watch their rings, and kicks
//! never signal: see "More vCPUs than cores" below). LWKT threads are stackful
//! contexts on `mmap`ed stacks with a guard page, switched in user space by
//! a dozen instructions (no futex hand-off per switch). An IPI is a ring
//! write plus, when the target needs one, a kick: nothing while the target's
//! idle loop watches its rings, an unpark if it is parked, and if it is
//! running a posted check that it answers at its next critical-section exit
//! or switch. A per-machine watchdog thread turns a posted check that goes
//! unanswered (a thread spinning outside critical sections) into a SIGUSR1,
//! whose handler is the IPI interrupt entry and honours critical sections.
//! A machine shuts down
//! cleanly when its main thread returns: every vCPU is joined and the report
//! names the threads that never exited.
//!
//! ```
//! use lwkt_core::CpuId;
//! let report = lwkt_arch_hosted::Machine::new(4).unwrap().run_with_report(|cur| {
//!     let hs: Vec<_> = (0..4)
//!         .map(|c| cur.spawn_on(CpuId::new(c), |me| assert_eq!(me.cpu_id(), CpuId::new(me.cpu_id().get()))).unwrap())
//!         .collect();
//!     for h in &hs {
//!         cur.join(h);
//!     }
//! }).1;
//! assert_eq!(report.leaked_threads, 0);
//! assert_eq!(report.cpus.len(), 4);
//! ```
//!
//! IPI functions and signals: the signal handler runs only lwkt-core's own
//! IPI functions (scheduling and wake-ups, which touch nothing the
//! interrupted code can hold), through
//! [`Cpu::ipi_interrupt_async_safe`](lwkt_core::Cpu::ipi_interrupt_async_safe).
//! A user's IPI function, a `cpusync` function and lwkt-msg's port
//! functions run at the CPU's next critical-section exit, switch or idle
//! loop, never inside the handler, so they may allocate like any thread
//! code (the signal may have interrupted `malloc`). The cost: a thread that
//! spins in its own code, calling nothing of lwkt's, delays them until it
//! does (on bare metal the interrupt would run them at once).
//!
//! # More vCPUs than cores
//!
//! Testing an 8- or 16-CPU configuration on a laptop is the backend's
//! main use, so vCPUs may outnumber the host's cores, and then three
//! things change (all decided while the machine runs, over every machine
//! of the process, so two machines that together outnumber the cores
//! count too):
//!
//! - **no pinning**: the host balances the vCPUs over its cores (pinned,
//!   3 vCPUs on 2 cores split 2 + 1 and a runnable vCPU could not move to
//!   the core another left idle);
//! - **no idle watch, no spin for a reply**: an idle vCPU does not spin
//!   ([`Arch::idle_poll_cycles`](lwkt_core::Arch::idle_poll_cycles) is 0,
//!   so lwkt-core's idle loop and `watch_until` do not), so it never holds
//!   a core that a vCPU with work waits for. It gives its core away
//!   (`sched_yield`) and looks again each time the host runs it, for as
//!   long as its idle watch would have lasted, and only then parks: its
//!   senders' kicks stay posted flags, not futex wake-ups, and a yield
//!   switch is the cheapest host switch there is; spin-waits give the
//!   core away at once (`pause` yields), and lwkt-msg's cross-CPU `domsg`
//!   sleeps without first watching for the reply
//!   ([`Arch::spin_wait_pays`](lwkt_core::Arch::spin_wait_pays) is false);
//! - **no signal per kick**: a kick to a running vCPU is a posted check, as
//!   when the vCPUs fit (before, it was a SIGUSR1 each: most of the
//!   senders' time went to signal delivery, and a signal does not make a
//!   vCPU the host has preempted run any sooner).
//!
//! That still leaves every message to a vCPU the host is not running
//! waiting for a host switch (a `sched_yield` or a futex wake-up, about a
//! microsecond each on a virtualised host). So a machine can also run its
//! vCPUs **M:N**, several on one host thread, switched in user space as a
//! hypervisor runs vCPUs on fewer physical CPUs:
//! [`Machine::host_threads`]`(`[`host_cores()`]`)` (the demo and the
//! `msg_vcpus` bench do so when vCPUs outnumber cores; the default stays
//! one host thread per vCPU). Consecutive vCPUs share a host thread, for
//! good (a context never resumes on another OS thread: its frames may hold
//! the addresses of thread-locals). A vCPU gives its host thread to a
//! sibling only at cooperative points of lwkt's own code: when it idles
//! (`Arch::idle_wait`), busy-waits (`Arch::pause`: a full ring, a token, a
//! `cpusync`), yields with nothing else to run, or ends a time slice
//! (`Arch::yield_point`); never from a signal handler (the interrupted
//! code may hold the C library's allocator lock). A kick, timer or
//! interrupt for a vCPU that is not on its host thread marks it and
//! unparks the host thread; the host thread parks only when none of its
//! vCPUs has work. The cost is **the starvation rule**: a thread that
//! spins without calling lwkt keeps its host thread's other vCPUs from
//! running; the watchdog counts each such wait of a second or more
//! ([`Report::starved`]).
//!
//! Oversubscription then costs what the host's own thread switches cost,
//! or less (`docs/benchmark-notes.md`, "More vCPUs than cores" and
//! "Session 15: vCPUs multiplexed over host threads"; bench group
//! `msg_vcpus`).
//!
//! Reports and the `log` feature (off by default): with it, the shutdown
//! report goes through the [`log`](https://docs.rs/log/0.4) facade (a
//! warning when threads were left blocked, the totals at debug level), and
//! so does each signal the kick watchdog sends (debug level: which CPU,
//! and why); both run on ordinary OS threads. The stack-overflow report
//! cannot: it runs in a SIGSEGV handler, where a logger's lock or
//! allocation could deadlock, so it stays a `write(2)` to standard error
//! followed by `abort`. Nothing else in this crate prints.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod fault;
mod mux;
mod stack;
mod switch;
mod vcpu;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use lwkt_core::{Cpu, CpuId, CpuStatsSnapshot, Cur, IpiRing, Priority, MAX_CPUS};

pub use vcpu::{current_vcpu, HostedArch, HOSTED, IPI_SIGNAL};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Stack size of the main thread [`Machine::run`] starts on CPU 0.
pub const MAIN_STACK: usize = 1024 * 1024;

/// Why a machine could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostedError {
    /// Zero CPUs were asked for.
    NoCpus,
    /// More CPUs than lwkt supports.
    TooManyCpus {
        /// How many were asked for.
        requested: usize,
    },
}

impl fmt::Display for HostedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostedError::NoCpus => {
                f.write_str("lwkt-arch-hosted: a machine needs at least 1 CPU (got 0)")
            }
            HostedError::TooManyCpus { requested } => write!(
                f,
                "lwkt-arch-hosted: {requested} CPUs asked for, at most {MAX_CPUS} are supported"
            ),
        }
    }
}

impl std::error::Error for HostedError {}

/// What a machine did, per CPU, once it has shut down.
#[derive(Debug, Clone)]
pub struct Report {
    /// Counters of each CPU, in CPU order.
    pub cpus: Vec<CpuStatsSnapshot>,
    /// Kicks delivered as signals to running vCPUs, per CPU (as target).
    pub signals: Vec<usize>,
    /// Kicks delivered as unparks to idle vCPUs, per CPU (as target).
    pub unparks: Vec<usize>,
    /// Kicks posted to running vCPUs for their next critical-section exit
    /// or switch, per CPU (as sender); the watchdog turns those not
    /// answered within about 40 µs into signals (counted in `signals`).
    pub soft_kicks: Vec<usize>,
    /// Timer interrupts delivered by each vCPU's own kernel timer (a POSIX
    /// timer signalling the vCPU thread at the deadline), per CPU; all 0
    /// when the host refused the timers and the watchdog delivered them.
    pub timer_signals: Vec<usize>,
    /// Times each vCPU waited a second or more with work while a sibling
    /// on its host thread ran without giving the thread back (a thread
    /// spinning without calling lwkt: the starvation rule of
    /// [`Machine::host_threads`]), per CPU; all 0 on a 1:1 machine.
    pub starved: Vec<usize>,
    /// Host threads that ran the vCPUs (the vCPU count on a 1:1 machine).
    pub host_threads: usize,
    /// Threads still alive (blocked) at shutdown: they never exited. Their
    /// stacks are leaked rather than freed under them.
    pub leaked_threads: usize,
    /// Wall-clock time from boot to shutdown.
    pub elapsed: Duration,
}

impl Report {
    /// Sum of a counter over all CPUs.
    pub fn total(&self, f: impl Fn(&CpuStatsSnapshot) -> u64) -> u64 {
        self.cpus.iter().map(f).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>4} {:>9} {:>10} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>8}",
            "cpu",
            "threads",
            "switches",
            "ipis sent",
            "ipis run",
            "kicks",
            "batched",
            "signals",
            "unparks",
            "polled"
        )?;
        for (i, c) in self.cpus.iter().enumerate() {
            writeln!(
                f,
                "{:>4} {:>9} {:>10} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>8}",
                i,
                c.threads_created,
                c.switches,
                c.ipis_sent,
                c.ipis_received,
                c.kicks_sent,
                c.kicks_avoided,
                self.signals[i],
                self.unparks[i],
                self.soft_kicks[i]
            )?;
        }
        let starved: usize = self.starved.iter().sum();
        if starved != 0 {
            writeln!(
                f,
                "vCPUs starved on their host thread (a thread spun without calling lwkt): {starved} time(s), per CPU {:?}",
                self.starved
            )?;
        }
        write!(
            f,
            "threads never exited: {}; elapsed {:.3} s",
            self.leaked_threads,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A machine of N virtual CPUs. Build it, then [`run`](Machine::run) a main
/// thread on CPU 0; the machine lives exactly as long as that call.
#[derive(Debug)]
pub struct Machine {
    ncpus: usize,
    pin: bool,
    host_threads: usize,
}

impl Machine {
    /// A machine of `ncpus` virtual CPUs (any number from 1 to
    /// [`MAX_CPUS`], also more than the host has cores).
    ///
    /// ```
    /// assert!(lwkt_arch_hosted::Machine::new(0).is_err());
    /// assert_eq!(
    ///     lwkt_arch_hosted::Machine::new(0).unwrap_err().to_string(),
    ///     "lwkt-arch-hosted: a machine needs at least 1 CPU (got 0)"
    /// );
    /// ```
    pub fn new(ncpus: usize) -> Result<Machine, HostedError> {
        if ncpus == 0 {
            return Err(HostedError::NoCpus);
        }
        if ncpus > MAX_CPUS {
            return Err(HostedError::TooManyCpus { requested: ncpus });
        }
        Ok(Machine {
            ncpus,
            pin: true,
            host_threads: ncpus,
        })
    }

    /// Run the vCPUs on `h` host threads (clamped to 1..=the vCPU count;
    /// default: one each), consecutive vCPUs on the same host thread (host
    /// thread `j` runs vCPUs `j*n/h` to `(j+1)*n/h - 1`) for good, and
    /// switch between the vCPUs of a host thread in user space (M:N), as a
    /// hypervisor runs vCPUs on fewer physical CPUs. With more vCPUs than
    /// host cores, `host_threads(`[`host_cores()`]`)` makes a message to a
    /// vCPU the host is not running cost a user-space switch (tens of
    /// nanoseconds) instead of a host thread switch (a microsecond or
    /// more): see "More vCPUs than cores" in the crate docs.
    ///
    /// **The starvation rule**: a vCPU gives its host thread to a sibling
    /// only when it idles or busy-waits inside lwkt (`Arch::idle_wait`,
    /// `Arch::pause`), never from a signal. A thread that spins on memory
    /// without calling lwkt (or that runs for long without blocking while a
    /// sibling has work) keeps the sibling vCPUs of its host thread from
    /// running: a flag it waits for that one of them would set is never
    /// set. The watchdog counts each such wait over a second
    /// ([`Report::starved`], and a `log` warning with the `log` feature).
    /// Spin through lwkt (tokens, `cpusync`, `yield_now`, messages) or
    /// keep the default.
    ///
    /// With the `asan` feature the machine stays 1:1 (the fiber
    /// annotations know one stack per vCPU thread).
    ///
    /// ```
    /// use lwkt_core::CpuId;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// let sum = Arc::new(AtomicU32::new(0));
    /// let report = lwkt_arch_hosted::Machine::new(8)
    ///     .unwrap()
    ///     .host_threads(2)
    ///     .run_with_report(|cur| {
    ///         let hs: Vec<_> = (0..8)
    ///             .map(|c| {
    ///                 let sum = sum.clone();
    ///                 cur.spawn_on(CpuId::new(c), move |me| {
    ///                     sum.fetch_add(me.cpu_id().get(), Ordering::Relaxed);
    ///                 })
    ///                 .unwrap()
    ///             })
    ///             .collect();
    ///         for h in &hs {
    ///             cur.join(h);
    ///         }
    ///     })
    ///     .1;
    /// assert_eq!(sum.load(Ordering::Relaxed), 28);
    /// assert_eq!(report.host_threads, if cfg!(feature = "asan") { 8 } else { 2 });
    /// ```
    pub fn host_threads(mut self, h: usize) -> Machine {
        self.host_threads = h.clamp(1, self.ncpus);
        self
    }

    /// Pin vCPU `i` (host thread `i` with [`host_threads`](Machine::host_threads))
    /// to online host core `i`
    /// (default: on; where the host refuses, the vCPU stays unpinned). A
    /// machine with more host threads than cores is never pinned: the host's
    /// scheduler then balances them over the cores.
    pub fn pin(mut self, pin: bool) -> Machine {
        self.pin = pin;
        self
    }

    /// Boot, run `f` as the main thread on CPU 0, shut down when it returns.
    pub fn run<R: Send>(self, f: impl FnOnce(&mut Cur) -> R + Send) -> R {
        self.run_with_report(f).0
    }

    /// [`run`](Machine::run), also returning what every CPU did.
    pub fn run_with_report<R: Send>(self, f: impl FnOnce(&mut Cur) -> R + Send) -> (R, Report) {
        vcpu::install_signal_handler();
        let n = self.ncpus;
        let start = Instant::now();
        let cpus: Box<[Cpu]> = (0..n).map(|i| Cpu::new(CpuId::new(i as u32))).collect();
        let rings: Box<[IpiRing]> = (0..lwkt_core::MachineState::rings_needed(n))
            .map(|_| IpiRing::new())
            .collect();
        let vcpus: Box<[vcpu::Vcpu]> = (0..n).map(|_| vcpu::Vcpu::new()).collect();
        for (c, v) in cpus.iter().zip(vcpus.iter()) {
            // SAFETY: we are the backend building this machine, before it
            // starts; `vcpus` outlives every use of the word (the CPUs stop
            // before it is dropped).
            unsafe { c.set_arch_word(0, v as *const vcpu::Vcpu as usize) };
        }
        // SAFETY: `cpus` and `rings` are boxed, never moved, and dropped
        // after `machine` (declared before it).
        let machine = unsafe { lwkt_core::MachineState::new(&HOSTED, &cpus, &rings) };
        // SAFETY: `machine`, `cpus` and `rings` are not moved (boxed or
        // local and only borrowed below) and outlive the scope that runs
        // every CPU; the blocks are dropped right after the machine, unused;
        // `bind` runs once, before any CPU starts.
        unsafe { machine.bind() };

        let result: Mutex<Option<R>> = Mutex::new(None);
        let m = &machine;
        let slot = &result;
        let main = move |cur: &mut Cur| {
            let r = f(cur);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            for i in 0..m.ncpus() {
                if let Some(c) = m.cpu(CpuId::new(i as u32)) {
                    c.request_shutdown();
                }
            }
        };
        // SAFETY: CPU 0 has not started; `main` borrows `result`, `machine`
        // and the caller's captures, all of which outlive the scope below,
        // which returns only after every CPU has left its idle loop.
        let main_handle =
            unsafe { cpus[0].spawn_boot_thread(Priority::default(), MAIN_STACK, "main", main) }
                .unwrap_or_else(|e| panic!("lwkt-arch-hosted: cannot create the main thread: {e}"));

        // Pinned only when every vCPU can have a core of its own: with more
        // vCPUs than cores, pinning splits them unevenly (3 on 2 cores: two
        // share one, the third has the other) and forbids the host to move a
        // runnable vCPU to a core another left idle, which made a 3-vCPU
        // machine on 2 cores slower than an 8-vCPU one.
        // With `asan` a vCPU's idle thread must be its OS thread's context
        // (`switch::asan`): no multiplexing.
        let h = if cfg!(feature = "asan") {
            n
        } else {
            self.host_threads
        };
        let cores = match self.pin {
            true => Some(allowed_cores())
                .filter(|c| h <= c.len())
                .unwrap_or_default(),
            false => Vec::new(),
        };
        let barrier = Barrier::new(h);
        let running = AtomicUsize::new(n);
        // Host thread `j` runs a run of consecutive vCPUs, for good.
        let groups: Box<[mux::Group]> = if h < n {
            (0..h)
                .map(|j| {
                    let members: Vec<&Cpu> = host_thread_vcpus(j, n, h).map(|i| &cpus[i]).collect();
                    mux::Group::new(&members, &running)
                })
                .collect()
        } else {
            Box::default()
        };
        for (j, g) in groups.iter().enumerate() {
            for (k, i) in host_thread_vcpus(j, n, h).enumerate() {
                vcpus[i]
                    .group
                    .store(g as *const mux::Group as usize, Ordering::Relaxed);
                vcpus[i].slot.store(k, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            let (cpus_ref, vcpus_ref, running_ref) = (&cpus, &vcpus, &running);
            std::thread::Builder::new()
                .name("lwkt-kick-watchdog".into())
                .spawn_scoped(s, move || vcpu::watchdog(cpus_ref, vcpus_ref, running_ref))
                .expect("lwkt-arch-hosted: cannot spawn the kick watchdog");
            for (j, g) in groups.iter().enumerate() {
                let (barrier, cores) = (&barrier, &cores);
                std::thread::Builder::new()
                    .name(format!("lwkt-host{j}"))
                    .spawn_scoped(s, move || {
                        if !cores.is_empty() {
                            pin_to(cores[j % cores.len()]);
                        }
                        for i in host_thread_vcpus(j, n, h) {
                            let v = &vcpus_ref[i];
                            // SAFETY: pthread_self has no preconditions.
                            v.pthread
                                .store(unsafe { libc::pthread_self() } as usize, Ordering::Release);
                            let _ = v.thread.set(std::thread::current());
                        }
                        barrier.wait();
                        // SAFETY: the machine is bound and outlives this
                        // scope; these CPUs run only here; `groups` is not
                        // moved while the scope runs.
                        unsafe { mux::run_group(g) };
                    })
                    .expect("lwkt-arch-hosted: cannot spawn a host thread");
            }
            for i in (0..n).filter(|_| h == n) {
                let (cpu, v, barrier, cores) = (&cpus[i], &vcpus[i], &barrier, &cores);
                let running = &running;
                std::thread::Builder::new()
                    .name(format!("lwkt-cpu{i}"))
                    .spawn_scoped(s, move || {
                        if !cores.is_empty() {
                            pin_to(cores[i % cores.len()]);
                        }
                        // SAFETY: pthread_self has no preconditions.
                        v.pthread
                            .store(unsafe { libc::pthread_self() } as usize, Ordering::Release);
                        let _ = v.thread.set(std::thread::current());
                        barrier.wait();
                        // SAFETY: the machine is bound and outlives this scope;
                        // each CPU runs on exactly one thread.
                        unsafe { vcpu::run_vcpu(cpu) };
                        // The thread is detached: its pthread_t dies with
                        // it, and the watchdog may be about to signal it.
                        vcpu::retire_pthread(v);
                        running.fetch_sub(1, Ordering::Release);
                    })
                    .expect("lwkt-arch-hosted: cannot spawn a vCPU thread");
            }
        });
        drop(main_handle);

        let cpus_stats: Vec<CpuStatsSnapshot> = cpus.iter().map(Cpu::stats).collect();
        let leaked = cpus.iter().map(Cpu::live_threads).sum();
        let report = Report {
            cpus: cpus_stats,
            signals: vcpus
                .iter()
                .map(|v| v.signals_sent.load(Ordering::Relaxed))
                .collect(),
            unparks: vcpus
                .iter()
                .map(|v| v.unparks_sent.load(Ordering::Relaxed))
                .collect(),
            soft_kicks: vcpus
                .iter()
                .map(|v| v.soft_kicks.load(Ordering::Relaxed))
                .collect(),
            timer_signals: vcpus
                .iter()
                .map(|v| v.timer_signals.load(Ordering::Relaxed))
                .collect(),
            starved: vcpus
                .iter()
                .map(|v| v.starved.load(Ordering::Relaxed))
                .collect(),
            host_threads: h,
            leaked_threads: leaked,
            elapsed: start.elapsed(),
        };
        #[cfg(feature = "log")]
        log_report(&report);
        let r = result
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("lwkt-arch-hosted: the main thread did not finish");
        (r, report)
    }
}

/// The shutdown report through `log` (feature `log`): a warning for threads
/// left blocked, the totals at debug level. Runs on the thread that called
/// `run`, after every vCPU has stopped: any logger may be called there.
#[cfg(feature = "log")]
fn log_report(r: &Report) {
    if r.leaked_threads > 0 {
        log::warn!(
            "lwkt-arch-hosted: {} thread(s) still blocked at shutdown; their stacks are leaked",
            r.leaked_threads
        );
    }
    log::debug!(
        "lwkt-arch-hosted: machine of {} CPUs stopped after {:?}: {} switches, {} IPIs, {} signals",
        r.cpus.len(),
        r.elapsed,
        r.total(|c| c.switches),
        r.total(|c| c.ipis_received),
        r.signals.iter().sum::<usize>()
    );
}

/// The vCPUs host thread `j` of `h` runs on a machine of `n`: a run of
/// consecutive ones, so that neighbours (a CPU and the next, which
/// workloads often pair) talk through user-space switches.
fn host_thread_vcpus(j: usize, n: usize, h: usize) -> core::ops::Range<usize> {
    j * n / h..(j + 1) * n / h
}

/// The host cores this process may use (`available_parallelism`; 1 if
/// unknown): the host thread count that [`Machine::host_threads`] wants
/// when vCPUs outnumber them.
///
/// ```
/// assert!(lwkt_arch_hosted::host_cores() >= 1);
/// ```
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Host cores online (empty if unknown). Not the calling thread's affinity:
/// a caller that pinned itself would otherwise put every vCPU on its core.
fn allowed_cores() -> Vec<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (0..usize::try_from(n).unwrap_or(0)).collect()
}

fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; we add one core and apply it to
    // the calling thread. Failure (a restricted host) leaves it unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
