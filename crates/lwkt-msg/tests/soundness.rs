//! Regression tests for the holes issue 15's audit found in lwkt-msg, and
//! the panic policy for the callbacks lwkt-msg runs on another's behalf.
//! Misuse that must abort runs in a child process (`common::run_child`).

mod common;

use core::pin::{pin, Pin};
use core::task::{Context, Waker};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use common::{is_child, run_child};
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, MyCpu, Serializer};
use lwkt_msg::{Incoming, Msg, MsgHandle, Port, Replied};

/// Run `test` in a child with `case` in the environment variable named
/// after the test (tests run in parallel: one variable each).
fn expect_child_failure(test: &str, case: &str, rule: &str) {
    std::env::set_var(test, case);
    let (ok, stderr) = run_child(test);
    assert!(
        !ok,
        "{test} ({case}): the child should have failed:\n{stderr}"
    );
    assert!(
        stderr.contains(rule),
        "{test} ({case}): expected {rule:?} in the child's stderr:\n{stderr}"
    );
}

fn case(test: &str) -> String {
    std::env::var(test).unwrap_or_default()
}

/// A message that lives for good: a child that must fail may leave it in
/// flight, and must not abort for that instead.
fn leaked_msg(v: u64) -> Pin<&'static mut Msg<u64>> {
    Pin::static_mut(Box::leak(Box::new(Msg::new(v))))
}

/// Hole 8: a serializer port's holder loops `sendmsg`/`getport`/`reply`
/// on CPU 0 while another CPU keeps sending IPI functions to CPU 0 that put
/// on the port whenever `is_held_here` says the serializer is held. The
/// IPI function interrupted the holder, it is not the holder: before the
/// fix it was taken for it, and its puts raced the holder's on the queue
/// (messages lost). Now it is never taken for the holder, and every
/// message comes back.
#[test]
fn an_ipi_function_is_not_the_serializer_holder() {
    const ROUNDS: u64 = 20_000;
    static SLZ: Serializer = Serializer::new();
    static PORT: Port<u64> = Port::serializer(&SLZ);
    static HELD_IN_IPI: AtomicUsize = AtomicUsize::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    static POOL: Mutex<Vec<Pin<&'static mut Msg<u64>>>> = Mutex::new(Vec::new());

    fn from_ipi(my: MyCpu<'_>, _: usize, _: usize) {
        if SLZ.is_held_here(my) {
            HELD_IN_IPI.fetch_add(1, Ordering::Relaxed);
            // The audit's put (the pool's lock is never held long).
            if let Ok(mut pool) = POOL.try_lock() {
                if let Some(m) = pool.pop() {
                    PORT.sendmsg(my, m);
                }
            }
        }
    }

    POOL.lock()
        .unwrap()
        .extend((0..256).map(|_| leaked_msg(u64::MAX)));
    let (lost, from_ipis) = Machine::new(2).unwrap().run(|cur| {
        let pinger = cur
            .spawn_on(CpuId::new(1), |me| {
                while !STOP.load(Ordering::Acquire) {
                    me.my_cpu().send_ipi(CpuId::new(0), from_ipi, 0, 0).unwrap();
                    for _ in 0..200 {
                        core::hint::spin_loop();
                    }
                }
            })
            .unwrap();
        SLZ.enter(cur);
        let mut m = leaked_msg(0);
        let (mut lost, mut from_ipis) = (false, 0u64);
        'rounds: for _ in 0..ROUNDS {
            PORT.sendmsg(cur.my_cpu(), m.as_mut());
            let mut empty = 0u32;
            while !m.is_done() {
                match PORT.getport(cur) {
                    Some(Incoming::Request(h)) => {
                        from_ipis += u64::from(*h == u64::MAX);
                        h.reply(cur.my_cpu(), Ok(()));
                    }
                    Some(Incoming::Reply(_) | Incoming::Closed) => unreachable!(),
                    None => {
                        empty += 1;
                        if empty > 1_000_000 {
                            lost = true;
                            break 'rounds;
                        }
                    }
                }
            }
        }
        SLZ.exit(cur);
        STOP.store(true, Ordering::Release);
        cur.join(&pinger);
        (lost, from_ipis)
    });
    assert_eq!(
        HELD_IN_IPI.load(Ordering::Relaxed),
        0,
        "IPI functions were taken for the serializer's holder ({from_ipis} of their puts served)"
    );
    assert!(!lost, "a message sent to the serializer port never arrived");
}

/// Hole 9: a thread port leaked from machine A, used from a thread of
/// machine B (both have a CPU 0). Before the fix B pushed straight onto
/// A's queue (the fast path compared CPU numbers, not machines); now every
/// path that routes by the owner's CPU refuses with a clear panic.
#[test]
fn a_thread_port_of_another_machine_is_refused() {
    const TEST: &str = "a_thread_port_of_another_machine_is_refused";
    const RULE: &str = "lwkt-msg: port of another machine";
    if !is_child() {
        for c in ["sendmsg", "reply", "forward", "close_from"] {
            expect_child_failure(TEST, c, RULE);
        }
        return;
    }
    fn reply_at_once(my: MyCpu<'_>, m: MsgHandle<u64>) {
        m.reply(my, Ok(()));
    }
    static PUT_ONLY: Port<u64> = Port::put_only(reply_at_once);
    static RELAY: Port<u64> = Port::spin();

    let (tx, rx) = mpsc::channel::<&'static Port<u64>>();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_a = stop.clone();
    let a = std::thread::spawn(move || {
        Machine::new(1).unwrap().run(move |cur| {
            let port: &'static Port<u64> = Port::thread(cur).leak();
            tx.send(port).unwrap();
            while !stop_a.load(Ordering::Acquire) {
                while let Some(x) = port.getport(cur) {
                    if let Incoming::Request(h) = x {
                        h.reply(cur.my_cpu(), Ok(()));
                    }
                }
                cur.yield_now();
            }
            port.close(cur);
        });
    });
    let a_port = rx.recv().unwrap();
    let which = case(TEST);
    Machine::new(1).unwrap().run(move |cur| {
        let my = cur.my_cpu();
        match which.as_str() {
            "sendmsg" => {
                for _ in 0..32 {
                    a_port.sendmsg(my, leaked_msg(0));
                }
            }
            "reply" => {
                // A reply to a message whose reply port is A's.
                let m = Pin::static_mut(Box::leak(Box::new(Msg::with_reply_port(a_port, 0))));
                PUT_ONLY.sendmsg(my, m);
            }
            "forward" => {
                RELAY.sendmsg(my, leaked_msg(0));
                let h = RELAY.getport(cur).unwrap().request().unwrap();
                h.forward(cur.my_cpu(), a_port);
            }
            "close_from" => a_port.close_from(my),
            c => panic!("unknown case {c}"),
        }
    });
    stop.store(true, Ordering::Release);
    a.join().unwrap();
}

/// The panic policy: a port function run on another's behalf (a put-only
/// port's handler, a reply-only port's callback) and a future's waker,
/// which the reply calls, abort if they panic, even in thread context and
/// under `catch_unwind`: unwinding out of them would leave a message half
/// way through its protocol (before, the unwind was caught and the message
/// stayed in flight for good).
#[test]
fn a_callback_run_for_a_message_aborts_if_it_panics() {
    const TEST: &str = "a_callback_run_for_a_message_aborts_if_it_panics";
    if !is_child() {
        for (c, what) in [
            ("put_only", "a put-only port's handler panicked"),
            ("reply_only", "a reply-only port's callback panicked"),
            ("waker", "a ReplyFuture's waker panicked"),
        ] {
            expect_child_failure(TEST, c, what);
        }
        return;
    }
    fn reply_then_panic(my: MyCpu<'_>, m: MsgHandle<u64>) {
        m.reply(my, Ok(()));
        panic!("handler panics");
    }
    fn callback_panics(_: MyCpu<'_>, _: Replied<u64>) {
        panic!("callback panics");
    }
    struct PanickingWaker;
    impl std::task::Wake for PanickingWaker {
        fn wake(self: Arc<Self>) {
            panic!("waker panics");
        }
    }
    static PUT_ONLY: Port<u64> = Port::put_only(reply_then_panic);
    static REPLY_ONLY: Port<u64> = Port::reply_only(Some(callback_panics));
    static WORK: Port<u64> = Port::spin();

    let which = case(TEST);
    Machine::new(1).unwrap().run(move |cur| {
        let caught = match which.as_str() {
            "put_only" => {
                let mut m = leaked_msg(0);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    PUT_ONLY.sendmsg(cur.my_cpu(), m.as_mut())
                }));
                r.is_err()
            }
            "reply_only" => {
                let m = Pin::static_mut(Box::leak(Box::new(Msg::with_reply_port(&REPLY_ONLY, 0))));
                WORK.sendmsg(cur.my_cpu(), m);
                let h = WORK.getport(cur).unwrap().request().unwrap();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    h.reply(cur.my_cpu(), Ok(()))
                }));
                r.is_err()
            }
            "waker" => {
                let waker = Waker::from(Arc::new(PanickingWaker));
                let mut fut = pin!(WORK.call(cur.my_cpu(), leaked_msg(0)));
                let pending = fut
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending();
                assert!(pending);
                let h = WORK.getport(cur).unwrap().request().unwrap();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    h.reply(cur.my_cpu(), Ok(()))
                }));
                r.is_err()
            }
            c => panic!("unknown case {c}"),
        };
        eprintln!("the panic was caught: {caught}");
    });
}
