//! Regression tests for the holes an outside audit found in lwkt-core's
//! safe API (issue 15): each misuse now gets a clear panic or error, or is
//! refused by the compiler (those are `compile_fail` doctests next to the
//! item: `Machine::new`, `Cpu::set_arch_word`, `Arch::kick`).

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
    assert!(msg.contains("outside every CPU of the thread's machine"), "{msg}");
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
    assert!(!ran, "a 200 KiB stack cannot hold two 64 KiB-aligned copies and a minimal stack");
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
