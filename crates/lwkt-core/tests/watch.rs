//! The watch of the IPI rings on the hosted backend (whose
//! `idle_poll_cycles` is not 0): `Cur::watch_until` serves IPIs in the
//! waiting thread, senders do not kick a watching CPU, threads look at the
//! rings at their critical-section exits, a thread spinning outside them is
//! interrupted by the watchdog, and the watch ends once it finds nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lwkt_arch_hosted::{Machine, Report};
use lwkt_core::{CpuId, Cur, MyCpu};

/// The tests take turns: the harness runs tests in parallel, and with more
/// vCPUs than host cores the hosted backend kicks by signal.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Enough cycles for any wait below (the backend caps it at its own
/// `idle_poll_cycles`).
const FOREVER: u64 = u64::MAX;

/// Set by the one IPI each test sends.
static FLAG: AtomicBool = AtomicBool::new(false);
/// Set by the target thread when it is ready for that IPI.
static READY: AtomicBool = AtomicBool::new(false);

fn set(_: MyCpu<'_>, _: usize, _: usize) {
    FLAG.store(true, Ordering::SeqCst);
}

fn flag() -> bool {
    FLAG.load(Ordering::SeqCst)
}

/// The target says it is ready for the IPI.
fn ready() {
    READY.store(true, Ordering::SeqCst);
}

/// Put the target's CPU into a watch: a short `watch_until` that finds
/// nothing (the watch outlives it).
fn start_watching(me: &mut Cur) {
    me.watch_until(1_000, || false);
}

/// Run `target` on CPU 1 of a two-CPU machine; once it calls [`ready`],
/// send CPU 1 one IPI that sets [`FLAG`] and join the target. Returns the
/// kicks that send cost its sender, and the machine's report.
fn one_ipi_to(target: fn(&mut Cur)) -> (u64, Report) {
    FLAG.store(false, Ordering::SeqCst);
    READY.store(false, Ordering::SeqCst);
    Machine::new(2).unwrap().run_with_report(|cur| {
        let t = cur.spawn_on(CpuId::new(1), target).unwrap();
        while !READY.load(Ordering::SeqCst) {
            cur.yield_now();
        }
        let before = cur.my_cpu().stats().kicks_sent;
        cur.my_cpu().send_ipi(CpuId::new(1), set, 0, 0).unwrap();
        let kicks = cur.my_cpu().stats().kicks_sent - before;
        cur.join(&t);
        kicks
    })
}

/// A thread waiting in `watch_until` runs the IPI that satisfies it itself:
/// it never switches away, and the sender sees the watch and kicks no one.
#[test]
fn watch_until_serves_an_ipi_in_the_waiting_thread() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (kicks, _) = one_ipi_to(|me| {
        start_watching(me);
        let switches = me.switch_count();
        ready();
        while !me.watch_until(FOREVER, flag) {}
        assert_eq!(me.switch_count(), switches, "the waiter switched away");
    });
    assert_eq!(kicks, 0, "a watching CPU was kicked");
}

/// Senders do not kick a watching CPU, so a thread that spins there outside
/// any critical section (where a watching CPU looks) would never see their
/// messages; the hosted watchdog sees the entries wait unrun and signals it.
/// The message is one of lwkt's own (making a thread of that CPU runnable):
/// the signal handler runs only those; a user's IPI function waits for the
/// spinner's next critical-section exit (tests/ipi.rs).
#[test]
fn a_watching_cpu_whose_thread_spins_is_interrupted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    READY.store(false, Ordering::SeqCst);
    let (kicks, report) = Machine::new(2).unwrap().run_with_report(|cur| {
        let sleeper = cur
            .spawn_on(CpuId::new(1), |me| {
                me.deschedule_self();
                me.switch();
            })
            .unwrap();
        let spinner = cur
            .spawn_on(CpuId::new(1), |me| {
                start_watching(me);
                let before = me.my_cpu().stats().ipis_received;
                ready();
                while me.my_cpu().stats().ipis_received == before {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        while !READY.load(Ordering::SeqCst) {
            cur.yield_now();
        }
        let before = cur.my_cpu().stats().kicks_sent;
        cur.my_cpu().schedule(&sleeper);
        let kicks = cur.my_cpu().stats().kicks_sent - before;
        cur.join(&spinner);
        cur.join(&sleeper);
        kicks
    });
    assert_eq!(kicks, 0, "a watching CPU was kicked");
    // The watchdog's signal, or the vCPU's own timer signal (its kernel
    // timer, armed for the time slice or another deadline, may fire first
    // on a loaded host): either runs the IPI in the signal handler (as in
    // tests/ipi.rs).
    assert!(
        report.signals[1] + report.timer_signals[1] >= 1,
        "no signal reached the spinner: {report} (timer signals {:?})",
        report.timer_signals
    );
}

/// While a CPU watches, its threads look at the rings at their
/// critical-section exits: a thread that only enters and leaves critical
/// sections sees the message with no kick and no signal. A run is clean
/// unless the host disturbed it: the watch ended before the send (the
/// sender's vCPU descheduled for longer than the watch), or the looper's
/// vCPU was descheduled long enough for the watchdog to signal it; at least
/// one of a few runs must be clean.
#[test]
fn a_watching_cpu_looks_at_critical_section_exits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut runs = Vec::new();
    for _ in 0..5 {
        let (kicks, report) = one_ipi_to(|me| {
            start_watching(me);
            ready();
            while !flag() {
                me.crit_enter();
                me.crit_exit();
            }
        });
        if kicks == 0 && report.signals[1] == 0 {
            return;
        }
        runs.push((kicks, report.signals[1]));
    }
    panic!("no clean run; (kicks, signals to the looper) per run: {runs:?}");
}

/// A watch that finds nothing for the backend's `idle_poll_cycles` ends (at
/// a critical-section exit of the thread that runs meanwhile): senders kick
/// again, and nothing pays for looks that find nothing.
#[test]
fn a_watch_that_finds_nothing_ends() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (kicks, _) = one_ipi_to(|me| {
        start_watching(me);
        // Critical sections and nothing to find, for far longer than the
        // hosted backend's watch (about 75 us).
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(20) {
            me.crit_enter();
            me.crit_exit();
        }
        ready();
        while !flag() {
            me.crit_enter();
            me.crit_exit();
        }
    });
    assert_eq!(kicks, 1, "the watch did not end: the sender did not kick");
}
