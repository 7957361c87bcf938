//! Regression tests for the holes an outside audit found in lwkt-core's
//! safe API (issue 15): each misuse now gets a clear panic or error, or is
//! refused by the compiler (those are `compile_fail` doctests next to the
//! item: `MachineState::new`, `Cpu::set_arch_word`, `Arch::kick`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, CpuMask, SpawnError};

/// Hole 5: a handle kept past its machine. `wake` read the dead machine
/// through the thread's CPU pointer (use after free); now it panics.
#[test]
#[should_panic(expected = "outside every CPU of the thread's machine")]
fn wake_after_the_machine_stopped_panics() {
    let h = Machine::new(1).unwrap().run(|cur| cur.handle());
    h.wake();
}

/// Hole 5, across machines: a handle of machine A woken from machine B.
#[test]
fn wake_from_another_machine_panics() {
    let h = Machine::new(1).unwrap().run(|cur| cur.handle());
    let msg = Machine::new(1).unwrap().run(move |cur| {
        assert!(!h.is_of_machine(cur.my_cpu()));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.wake()));
        *r.unwrap_err().downcast::<&str>().unwrap()
    });
    assert!(
        msg.contains("outside every CPU of the thread's machine"),
        "{msg}"
    );
}

/// `join` of a handle of another machine could never see it exit.
#[test]
fn join_of_another_machines_thread_panics() {
    let h = Machine::new(1).unwrap().run(|cur| cur.handle());
    let msg = Machine::new(1).unwrap().run(move |cur| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cur.join(&h)));
        *r.unwrap_err().downcast::<&str>().unwrap()
    });
    assert!(msg.contains("another machine"), "{msg}");
}

/// Hole 6: a `cpusync` function that panics used to unwind out of the
/// master's wait, freeing the descriptor the other CPUs still read. Now a
/// panic in interrupt context aborts, with the rule in the message.
#[test]
fn panicking_cpusync_function_aborts() {
    if common::is_child() {
        Machine::new(2).unwrap().run(|cur| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cur.cpusync(CpuMask::all(2), &|my| {
                    if my.id() == CpuId::new(0) {
                        panic!("boom in cpusync");
                    }
                })
            }));
            // Never reached: the panic aborts.
            eprintln!("unwound out of cpusync: {}", r.is_err());
        });
        return;
    }
    let (ok, err) = common::run_child("panicking_cpusync_function_aborts");
    assert!(!ok);
    assert!(err.contains("boom in cpusync"), "stderr: {err}");
    assert!(
        err.contains("a cpusync function panicked; a panic cannot unwind out of interrupt context"),
        "stderr: {err}"
    );
    assert!(!err.contains("unwound out of cpusync"), "stderr: {err}");
}

/// Hole 6, the IPI path: an IPI function run while another CPU's
/// `cpusync` waits on us.
#[test]
fn panicking_ipi_function_aborts() {
    if common::is_child() {
        fn bad(_: lwkt_core::MyCpu<'_>, _: usize, _: usize) {
            panic!("boom in an IPI function");
        }
        Machine::new(2).unwrap().run(|cur| {
            cur.my_cpu().send_ipi(CpuId::new(1), bad, 0, 0).unwrap();
            loop {
                cur.yield_now();
            }
        });
        return;
    }
    let (ok, err) = common::run_child("panicking_ipi_function_aborts");
    assert!(!ok);
    assert!(err.contains("boom in an IPI function"), "stderr: {err}");
    assert!(err.contains("an IPI function panicked"), "stderr: {err}");
}

/// A thread body's panic cannot unwind past its first frame: it aborts
/// with a message that says so.
#[test]
fn panicking_thread_body_aborts_with_the_rule() {
    if common::is_child() {
        Machine::new(1).unwrap().run(|_| panic!("boom in a thread"));
        return;
    }
    let (ok, err) = common::run_child("panicking_thread_body_aborts_with_the_rule");
    assert!(!ok);
    assert!(err.contains("boom in a thread"), "stderr: {err}");
    assert!(err.contains("a thread body panicked"), "stderr: {err}");
}

/// Hole 12: a closure aligned to 64 KiB on a 200 KiB stack. `spawn`
/// counted the closure once, but the new thread copies it onto its stack
/// too: `Ok`, then a stack overflow. Now the copy is counted.
#[test]
fn overaligned_closure_is_counted_on_the_stack() {
    #[repr(C, align(65536))]
    struct Big([u8; 65536]);
    let ran = Machine::new(1).unwrap().run(|cur| {
        let big = Big([7; 65536]);
        let r = cur
            .builder()
            .stack_size(200 * 1024)
            .spawn(move |_| assert_eq!(std::hint::black_box(&big).0[4095], 7));
        match r {
            Ok(h) => {
                cur.join(&h);
                true
            }
            Err(SpawnError::StackTooSmall { requested }) => {
                assert_eq!(requested, 200 * 1024);
                false
            }
            Err(e) => panic!("{e}"),
        }
    });
    assert!(
        !ran,
        "a 200 KiB stack cannot hold two 64 KiB-aligned copies and a minimal stack"
    );
    // With room for both copies it runs.
    let done = AtomicUsize::new(0);
    Machine::new(1).unwrap().run(|cur| {
        let big = Big([9; 65536]);
        let d = &done;
        let h = cur.builder().stack_size(512 * 1024).spawn(move |_| {
            assert_eq!(std::hint::black_box(&big).0[100], 9);
        });
        cur.join(&h.unwrap());
        d.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(done.load(Ordering::Relaxed), 1);
}

/// The panic policy's other half: a panic in code a thread runs inside
/// lwkt's frames (a `crit` closure, a sleep condition, a watch test)
/// unwinds, and lwkt puts the thread back as it was: out of the critical
/// section and off the sleep queue. Before, the count stayed raised (every
/// IPI to the CPU waited for ever) and the thread stayed on the queue.
#[test]
fn callbacks_in_thread_context_unwind_cleanly() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    static FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    Machine::new(2).unwrap().run(|cur| {
        let r = catch_unwind(AssertUnwindSafe(|| cur.my_cpu().crit(|| panic!("in crit"))));
        assert!(r.is_err());
        assert_eq!(
            cur.crit_count(),
            0,
            "crit left raised by an unwound closure"
        );

        let r = catch_unwind(AssertUnwindSafe(|| {
            cur.sleep_until(0x5eed, || panic!("in cond"))
        }));
        assert!(r.is_err());
        assert_eq!(
            cur.crit_count(),
            0,
            "sleep_until left the critical section raised"
        );

        let r = catch_unwind(AssertUnwindSafe(|| {
            cur.watch_until(1_000, || panic!("in ready"))
        }));
        assert!(r.is_err());
        assert_eq!(
            cur.crit_count(),
            0,
            "watch_until left the critical section raised"
        );

        // The thread sleeps and is woken normally afterwards, and a wakeup
        // of the first channel does nothing to it.
        cur.my_cpu().wakeup(0x5eed);
        let me = cur.handle();
        let waker = cur
            .spawn_on(CpuId::new(1), move |w| {
                FLAG.store(true, Ordering::SeqCst);
                w.my_cpu().wakeup(0xbeef);
                drop(me);
            })
            .unwrap();
        cur.sleep_until(0xbeef, || FLAG.load(Ordering::SeqCst));
        cur.join(&waker);
        // An IPI to this CPU still runs (the count is really back to 0).
        // CPU 1 sends one explicitly: a join's wake-up IPI is sent only
        // when the joiner already waits, which a slow CPU 0 (an emulated
        // one, under qemu-user) may not yet do when the thread exits.
        static IPI_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn mark(_: lwkt_core::MyCpu<'_>, _: usize, _: usize) {
            IPI_RAN.store(true, Ordering::SeqCst);
        }
        let before = cur.my_cpu().stats().ipis_received;
        let h = cur
            .spawn_on(CpuId::new(1), |w| {
                w.my_cpu().send_ipi(CpuId::new(0), mark, 0, 0).unwrap();
            })
            .unwrap();
        cur.join(&h);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !IPI_RAN.load(Ordering::SeqCst) && std::time::Instant::now() < end {
            cur.yield_now();
        }
        assert!(
            IPI_RAN.load(Ordering::SeqCst),
            "an IPI to this CPU never ran"
        );
        assert!(cur.my_cpu().stats().ipis_received > before);
    });
}
