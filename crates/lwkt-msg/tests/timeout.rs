//! The timed waits (issue 18, item 3): `waitport_timeout`, `domsg_timeout`
//! (timeout, then abort, then the reply), `Msg::wait_timeout` and
//! `block_on_timeout`. Outcomes and counts are asserted, never durations,
//! except that a timeout is never early: the host is a noisy 2-core
//! machine.

mod common;

use core::pin::pin;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{is_child, run_child};
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, Cur, MyCpu, Serializer, TimedOut};
use lwkt_msg::{serve_on, Incoming, Msg, MsgError, MsgFlags, MsgHandle, Port, PortRef};

const MS: Duration = Duration::from_millis(1);

/// Wait on the caller's thread until `flag` is set.
fn until(cur: &mut Cur, flag: &AtomicBool) {
    while !flag.load(Ordering::Acquire) {
        cur.yield_now();
    }
}

#[test]
fn waitport_times_out_on_an_empty_port_never_early() {
    static SPIN: Port<u32> = Port::spin();
    static SLZ: Serializer = Serializer::new();
    static SERIAL: Port<u32> = Port::serializer(&SLZ);
    Machine::new(2).unwrap().run(|cur| {
        let thread: PortRef<u32> = PortRef::thread(cur);
        let t = Instant::now();
        assert_eq!(thread.waitport_timeout(cur, 3 * MS).err(), Some(TimedOut));
        assert!(t.elapsed() >= 3 * MS, "early: {:?}", t.elapsed());
        let t = Instant::now();
        assert_eq!(SPIN.waitport_timeout(cur, 3 * MS).err(), Some(TimedOut));
        assert!(t.elapsed() >= 3 * MS, "early: {:?}", t.elapsed());
        SLZ.enter(cur);
        let t = Instant::now();
        assert_eq!(SERIAL.waitport_timeout(cur, 3 * MS).err(), Some(TimedOut));
        assert!(t.elapsed() >= 3 * MS, "early: {:?}", t.elapsed());
        assert!(SLZ.is_held_by(cur), "the serializer is held again");
        SLZ.exit(cur);
        // Zero: one look, no wait.
        assert_eq!(
            thread.waitport_timeout(cur, Duration::ZERO).err(),
            Some(TimedOut)
        );
        assert_eq!(
            SPIN.waitport_timeout(cur, Duration::ZERO).err(),
            Some(TimedOut)
        );
        // A closed, empty port answers at once, whatever the timeout.
        thread.close(cur);
        assert!(matches!(
            thread.waitport_timeout(cur, Duration::MAX),
            Ok(Incoming::Closed)
        ));
        assert!(matches!(
            thread.waitport_timeout(cur, Duration::ZERO),
            Ok(Incoming::Closed)
        ));
    });
}

#[test]
fn waitport_returns_a_message_sent_in_time() {
    static SPIN: Port<u64> = Port::spin();
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [0, 1] {
            // A server waiting with a long timeout gets a request sent
            // after a while, from another CPU or its own.
            let (t, port) = serve_on(cur, CpuId::new(cpu), |me, port: PortRef<u64>| loop {
                match port.waitport_timeout(me, Duration::from_secs(30)) {
                    Ok(Incoming::Request(mut m)) => {
                        *m += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                    Ok(Incoming::Closed) => return,
                    Ok(Incoming::Reply(_)) => unreachable!(),
                    Err(TimedOut) => panic!("timed out with a request on its way"),
                }
            })
            .unwrap();
            for i in 0..20u64 {
                if i % 4 == 0 {
                    cur.sleep_for(MS);
                }
                let mut m = pin!(Msg::new(i));
                port.domsg(cur, m.as_mut()).unwrap();
                assert_eq!(*m.body(), i + 1);
            }
            port.close_from(cur.my_cpu());
            cur.join(&t);
        }
        // A spin port, and a message already queued: zero finds it.
        let mut m = pin!(Msg::new(5u64));
        SPIN.sendmsg(cur.my_cpu(), m.as_mut());
        let Ok(Incoming::Request(h)) = SPIN.waitport_timeout(cur, Duration::ZERO) else {
            panic!("the queued request")
        };
        h.reply(cur.my_cpu(), Ok(()));
        assert_eq!(m.as_mut().wait(cur), Ok(()));
    });
}

/// A server that holds each request until its originator aborts it, then
/// replies `Aborted`; it counts what it saw.
fn holding_server(seen: Arc<AtomicUsize>) -> impl FnOnce(&mut Cur, PortRef<u64>) + Send {
    move |me, port| {
        while let Incoming::Request(m) = port.waitport(me) {
            seen.fetch_add(1, Ordering::Relaxed);
            while !m.abort_requested() {
                me.yield_now();
            }
            m.reply(me.my_cpu(), Err(MsgError::Aborted));
        }
    }
}

#[test]
fn domsg_to_a_server_that_never_replies_times_out_and_aborts() {
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [1, 0] {
            let seen = Arc::new(AtomicUsize::new(0));
            let (t, port) = serve_on(cur, CpuId::new(cpu), holding_server(seen.clone())).unwrap();
            // The message lives on the heap: after the abort's reply it is
            // ours, and freeing it is fine (ASan and Miri would see a use
            // after free otherwise).
            for round in 0..5 {
                let mut m = Box::pin(Msg::new(round).abortable());
                let start = Instant::now();
                let r = port.domsg_timeout(cur, m.as_mut(), 2 * MS);
                assert!(start.elapsed() >= 2 * MS, "early: {:?}", start.elapsed());
                assert_eq!(r, Ok(Err(MsgError::Aborted)), "cpu {cpu} round {round}");
                assert!(m.is_done() && m.flags().contains(MsgFlags::ABORT_REQUESTED));
                assert_eq!(*m.body(), round, "untouched by the aborted server");
                drop(m);
            }
            // How many the server took before the abort (the port replied
            // the others): either way the outcome is the same.
            eprintln!(
                "cpu {cpu}: the server held {} of 5",
                seen.load(Ordering::Relaxed)
            );
            port.close_from(cur.my_cpu());
            cur.join(&t);
        }
    });
}

#[test]
fn an_aborted_message_is_replied_by_the_port_when_the_server_is_busy() {
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [1, 0] {
            let go = Arc::new(AtomicBool::new(false));
            let served = Arc::new(AtomicUsize::new(0));
            let (g, s) = (go.clone(), served.clone());
            // Busy elsewhere until `go`: the request stays queued, and the
            // port itself replies `Aborted` when the server next looks.
            let (t, port) = serve_on(cur, CpuId::new(cpu), move |me, port: PortRef<u64>| {
                until(me, &g);
                while let Incoming::Request(m) = port.waitport(me) {
                    s.fetch_add(1, Ordering::Relaxed);
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
            let mut m = pin!(Msg::new(0u64).abortable());
            // The abort's reply comes only once the server looks: a helper
            // releases it once the abort is recorded (whenever the host
            // lets the timeout pass), while we wait.
            let g = go.clone();
            let at = &*m as *const Msg<u64> as usize;
            let helper = cur
                .spawn_on(CpuId::new(1 - cpu), move |me| {
                    // SAFETY: the message outlives these reads: its reply
                    // needs `go`, stored after them, and it is not dropped
                    // before its reply. `flags` only loads the atomic word.
                    let flags = || unsafe { (*(at as *const Msg<u64>)).flags() };
                    while !flags().contains(MsgFlags::ABORT_REQUESTED) {
                        me.yield_now();
                    }
                    g.store(true, Ordering::Release);
                })
                .unwrap();
            let r = port.domsg_timeout(cur, m.as_mut(), MS);
            assert_eq!(r, Ok(Err(MsgError::Aborted)));
            cur.join(&helper);
            // The same message, reused: served this time.
            assert_eq!(
                port.domsg_timeout(cur, m.as_mut(), Duration::MAX),
                Ok(Ok(()))
            );
            assert_eq!(
                served.load(Ordering::Relaxed),
                1,
                "the aborted one never reached it"
            );
            port.close_from(cur.my_cpu());
            cur.join(&t);
        }
    });
}

#[test]
fn a_message_that_cannot_be_aborted_comes_back_in_flight() {
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [1, 0] {
            let release = Arc::new(AtomicBool::new(false));
            let r2 = release.clone();
            let (t, port) = serve_on(cur, CpuId::new(cpu), move |me, port: PortRef<u64>| {
                while let Incoming::Request(mut m) = port.waitport(me) {
                    until(me, &r2);
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
            let mut m = Box::pin(Msg::new(1u64));
            assert_eq!(port.domsg_timeout(cur, m.as_mut(), MS), Err(TimedOut));
            assert!(!m.is_done(), "still the server's");
            assert_eq!(m.as_mut().wait_timeout(cur, MS), Err(TimedOut));
            assert_eq!(m.as_mut().wait_timeout(cur, Duration::ZERO), Err(TimedOut));
            release.store(true, Ordering::Release);
            assert_eq!(m.as_mut().wait_timeout(cur, Duration::MAX), Ok(Ok(())));
            assert_eq!(*m.body(), 2);
            drop(m);
            port.close_from(cur.my_cpu());
            cur.join(&t);
        }
    });
}

/// The body of the race test's messages: counts its drops.
struct Counted(u64, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

/// xorshift: the server's delays.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// `domsg_timeout` whose reply comes around the timeout: the server
/// replies after a random delay between 0 and twice the timeout, yielding
/// meanwhile (so a server on the caller's CPU lets the caller time out),
/// and on odd rounds ignores the abort (its reply then races the abort and
/// wins). Every call ends with exactly one outcome; every message is
/// replied exactly once (the server's count, the tags it saw, and the body
/// it changed agree with the outcomes); every body is dropped once.
#[test]
fn domsg_replies_racing_the_timeout() {
    const ROUNDS: u64 = 400;
    const TIMEOUT: Duration = Duration::from_micros(200);
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [1, 0] {
            let replies = Arc::new(AtomicU64::new(0));
            let aborted_replies = Arc::new(AtomicU64::new(0));
            let rp = (replies.clone(), aborted_replies.clone());
            let (t, port) = serve_on(cur, CpuId::new(cpu), move |me, port: PortRef<Counted>| {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(cpu);
                let mut expect = 0;
                while let Incoming::Request(mut m) = port.waitport(me) {
                    assert!(m.0 >= expect, "request {} served twice or out of order", m.0);
                    expect = m.0 + 1;
                    let delay = Duration::from_nanos(next(&mut seed) % (2 * 200_000));
                    let until = Instant::now() + delay;
                    let heed_abort = m.0 % 2 == 0;
                    while Instant::now() < until && !(heed_abort && m.abort_requested()) {
                        me.yield_now();
                    }
                    rp.0.fetch_add(1, Ordering::Relaxed);
                    if heed_abort && m.abort_requested() {
                        rp.1.fetch_add(1, Ordering::Relaxed);
                        m.reply(me.my_cpu(), Err(MsgError::Aborted));
                    } else {
                        m.0 += 1_000_000;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                }
            })
            .unwrap();
            let drops = Arc::new(AtomicUsize::new(0));
            let (mut ok, mut aborted) = (0u64, 0u64);
            for i in 0..ROUNDS {
                let mut m = Box::pin(Msg::new(Counted(i, drops.clone())).abortable());
                match port.domsg_timeout(cur, m.as_mut(), TIMEOUT) {
                    Ok(Ok(())) => {
                        assert_eq!(m.body().0, i + 1_000_000, "served once");
                        ok += 1;
                    }
                    Ok(Err(MsgError::Aborted)) => {
                        assert_eq!(m.body().0, i, "an aborted request is not served");
                        aborted += 1;
                    }
                    other => panic!("round {i}: {other:?}"),
                }
                assert!(m.is_done());
                drop(m);
            }
            port.close_from(cur.my_cpu());
            cur.join(&t);
            assert_eq!(ok + aborted, ROUNDS, "one outcome per call");
            assert_eq!(drops.load(Ordering::Relaxed), ROUNDS as usize, "each body dropped once");
            // Every request the server took was replied once, by it; the
            // rest were aborted before it took them, and replied by the port.
            let took = replies.load(Ordering::Relaxed);
            let server_aborts = aborted_replies.load(Ordering::Relaxed);
            assert_eq!(took - server_aborts, ok, "cpu {cpu}: Ok replies");
            assert!(server_aborts <= aborted);
            eprintln!(
                "cpu {cpu}: {ok} replied, {aborted} aborted ({server_aborts} by the server, {} by the port)",
                aborted - server_aborts
            );
        }
    });
}

#[test]
fn wait_timeout_on_a_reply_port_and_in_place() {
    static WORK: Port<u64> = Port::spin();
    Machine::new(2).unwrap().run(|cur| {
        let replies: PortRef<u64> = PortRef::thread(cur);
        let mut a = pin!(Msg::with_reply_port(&replies, 1u64));
        let mut b = pin!(Msg::new(2u64));
        WORK.sendmsg(cur.my_cpu(), a.as_mut());
        WORK.sendmsg(cur.my_cpu(), b.as_mut());
        let t = Instant::now();
        assert_eq!(a.as_mut().wait_timeout(cur, 2 * MS), Err(TimedOut));
        assert!(t.elapsed() >= 2 * MS);
        assert_eq!(b.as_mut().wait_timeout(cur, Duration::ZERO), Err(TimedOut));
        let server = cur
            .spawn_on(CpuId::new(1), |me| {
                me.sleep_for(2 * MS);
                for _ in 0..2 {
                    let mut m = WORK.waitport(me).request().unwrap();
                    *m *= 10;
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
        assert_eq!(a.as_mut().wait_timeout(cur, Duration::MAX), Ok(Ok(())));
        assert_eq!(
            b.as_mut().wait_timeout(cur, Duration::from_secs(60)),
            Ok(Ok(()))
        );
        assert_eq!((*a.body(), *b.body()), (10, 20));
        // Done: no wait at all.
        assert_eq!(a.as_mut().wait_timeout(cur, Duration::ZERO), Ok(Ok(())));
        cur.join(&server);
        assert!(
            replies.getport(cur).is_none(),
            "the reply was taken off the port"
        );
        replies.close(cur);
    });
}

#[test]
fn block_on_timeout_bounds_a_reply_future() {
    Machine::new(2).unwrap().run(|cur| {
        let release = Arc::new(AtomicBool::new(false));
        let r2 = release.clone();
        let (t, port) = serve_on(cur, CpuId::new(1), move |me, port: PortRef<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                if *m == 0 {
                    until(me, &r2);
                }
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        })
        .unwrap();
        // Prompt: the reply.
        let mut m = pin!(Msg::new(1u64));
        let r = lwkt_msg::block_on_timeout(cur, Duration::from_secs(60), async |my| {
            port.call(my, m.as_mut()).await
        });
        assert_eq!(r, Ok(Ok(())));
        assert_eq!(*m.body(), 2);
        // Held: the future is dropped at the timeout, the message is still
        // in flight; the reply wakes nobody, and a wait takes it back.
        let mut m = pin!(Msg::new(0u64));
        let start = Instant::now();
        let r = lwkt_msg::block_on_timeout(cur, 2 * MS, async |my| port.call(my, m.as_mut()).await);
        assert_eq!(r, Err(TimedOut));
        assert!(start.elapsed() >= 2 * MS);
        assert!(!m.is_done());
        release.store(true, Ordering::Release);
        assert_eq!(m.as_mut().wait(cur), Ok(()));
        assert_eq!(*m.body(), 1);
        // Zero: polled once.
        let r = lwkt_msg::block_on_timeout(cur, Duration::ZERO, async |_| 7);
        assert_eq!(r, Ok(7));
        port.close_from(cur.my_cpu());
        cur.join(&t);
    });
}

#[test]
fn zero_and_huge_domsg_timeouts() {
    fn add_one(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
        *m += 1;
        m.reply(my, Ok(()));
    }
    static INLINE: Port<u64> = Port::put_only(add_one);
    Machine::new(2).unwrap().run(|cur| {
        // A put-only port replies during the put: zero is enough.
        let mut m = pin!(Msg::new(1u64));
        assert_eq!(
            INLINE.domsg_timeout(cur, m.as_mut(), Duration::ZERO),
            Ok(Ok(()))
        );
        assert_eq!(*m.body(), 2);
        let (t, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        })
        .unwrap();
        for d in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(60),
        ] {
            assert_eq!(port.domsg_timeout(cur, m.as_mut(), d), Ok(Ok(())));
        }
        assert_eq!(*m.body(), 5);
        // Zero to another CPU: an outcome, whichever it is, and the message
        // back.
        let mut z = pin!(Msg::new(0u64).abortable());
        for _ in 0..50 {
            let r = port.domsg_timeout(cur, z.as_mut(), Duration::ZERO);
            assert!(
                matches!(r, Ok(Ok(())) | Ok(Err(MsgError::Aborted))),
                "{r:?}"
            );
            assert!(z.is_done());
        }
        port.close_from(cur.my_cpu());
        cur.join(&t);
    });
}

fn expect_child_failure(test: &str, rule: &str) {
    let (ok, stderr) = run_child(test);
    assert!(!ok, "{test}: the child should have failed");
    assert!(
        stderr.contains(rule),
        "{test}: expected {rule:?} in the child's stderr:\n{stderr}"
    );
}

#[test]
fn domsg_timeout_to_ones_own_port_panics() {
    if is_child() {
        return Machine::new(1).unwrap().run(|cur| {
            let port: &'static Port<u32> = Port::thread(cur).leak();
            let mut m = pin!(Msg::new(0u32).abortable());
            let _ = port.domsg_timeout(cur, m.as_mut(), MS);
        });
    }
    expect_child_failure("domsg_timeout_to_ones_own_port_panics", "own thread port");
}

#[test]
fn dropping_a_timed_out_message_in_flight_aborts() {
    static NOBODY: Port<u32> = Port::spin();
    if is_child() {
        return Machine::new(1).unwrap().run(|cur| {
            let mut m: Pin<Box<Msg<u32>>> = Box::pin(Msg::new(0u32));
            assert_eq!(NOBODY.domsg_timeout(cur, m.as_mut(), MS), Err(TimedOut));
            drop(m); // still the port's
        });
    }
    expect_child_failure(
        "dropping_a_timed_out_message_in_flight_aborts",
        "message dropped while in flight",
    );
}

#[test]
fn waitport_timeout_on_anothers_thread_port_panics() {
    if is_child() {
        return Machine::new(1).unwrap().run(|cur| {
            let port: PortRef<u32> = PortRef::thread(cur);
            let p2 = port.clone();
            let t = cur
                .spawn_on(CpuId::new(0), move |me| {
                    let _ = p2.waitport_timeout(me, MS);
                })
                .unwrap();
            cur.join(&t);
        });
    }
    expect_child_failure(
        "waitport_timeout_on_anothers_thread_port_panics",
        "only a thread port's owner receives from it",
    );
}
