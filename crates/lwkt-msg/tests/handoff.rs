//! The same-CPU `domsg` to a thread port as a direct hand-off
//! (`Cur::block_for`): the waiting owner runs in the sender's turn, never
//! ahead of a higher priority; an owner that does not wait just finds the
//! message queued; a sender holding a token; interrupts and IPIs arriving
//! meanwhile; a timed `domsg` that times out on the same CPU.

mod common;

use core::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server;
use lwkt_arch_hosted::Machine;
use lwkt_core::token::Token;
use lwkt_core::{CpuId, Cur, MyCpu, Priority, ThreadHandle};
use lwkt_msg::{Incoming, Msg, MsgError, MsgHandle, Port};

type Log = Arc<Mutex<Vec<&'static str>>>;

/// A thread of `cur`'s CPU at `pri` that logs `name` when it runs.
fn runnable_logger(cur: &mut Cur, pri: Priority, name: &'static str, log: &Log) -> ThreadHandle {
    let log = log.clone();
    cur.builder()
        .cpu(cur.cpu_id())
        .priority(pri)
        .name(name)
        .spawn(move |_| log.lock().unwrap().push(name))
        .unwrap()
}

/// A server at `pri` on `cur`'s CPU: logs "server" for each request, adds
/// one, replies; until its port is closed. Returns once it waits.
fn logging_server(cur: &mut Cur, pri: Priority, log: &Log) -> (&'static Port<u64>, ThreadHandle) {
    let log = log.clone();
    server_with(cur, pri, move |me, mut m| {
        log.lock().unwrap().push("server");
        *m += 1;
        m.reply(me.my_cpu(), Ok(()));
    })
}

/// A server at `pri` on `cur`'s CPU that passes each request to `serve`
/// (which replies), until its port is closed. Returns once it waits.
fn server_with(
    cur: &mut Cur,
    pri: Priority,
    mut serve: impl FnMut(&mut Cur, MsgHandle<u64>) + Send + 'static,
) -> (&'static Port<u64>, ThreadHandle) {
    let waiting = Arc::new(AtomicBool::new(false));
    let w = waiting.clone();
    let slot = Arc::new(std::sync::OnceLock::new());
    let s2 = slot.clone();
    let h = cur
        .builder()
        .cpu(cur.cpu_id())
        .priority(pri)
        .name("server")
        .spawn(move |me| {
            let port: &'static Port<u64> = Port::thread(me).leak();
            s2.set(port).ok().unwrap();
            w.store(true, Ordering::Release);
            while let Incoming::Request(m) = port.waitport(me) {
                serve(me, m);
            }
        })
        .unwrap();
    // Let it run (below us, only once we are at its priority) and wait.
    let mine = cur.priority();
    if pri < mine {
        cur.set_priority(pri);
    }
    while !waiting.load(Ordering::Acquire) || cur.others_runnable() {
        cur.yield_now();
    }
    cur.set_priority(mine);
    (*slot.get().unwrap(), h)
}

/// The reply hands the CPU straight back to the sender, which resumes
/// before the rest of the handler, when the server runs alone at its
/// priority (the sender waits: nothing else of that priority can run).
/// Not while the server replies inside a critical section or holding a
/// token (the sender then runs once the server blocks), nor with a peer of
/// that priority runnable (which runs first, then the sender), nor to a
/// sender of another priority.
#[test]
fn reply_hands_the_cpu_back_only_in_the_senders_turn() {
    static TOK: Token = Token::new("server's");
    Machine::new(1).unwrap().run(|cur| {
        let pri = cur.priority();
        let lower = Priority::new(pri.get() - 1).unwrap();
        for (case, sender_pri, want) in [
            ("alone", pri, &["server", "sender", "after reply"][..]),
            (
                "in a critical section",
                pri,
                &["server", "after reply", "sender"][..],
            ),
            (
                "holding a token",
                pri,
                &["server", "after reply", "sender"][..],
            ),
            (
                "with a peer",
                pri,
                &["server", "after reply", "peer", "sender"][..],
            ),
            (
                "sender of lower priority",
                lower,
                &["server", "after reply", "sender"][..],
            ),
        ] {
            let log: Log = Arc::default();
            let l2 = log.clone();
            let (port, srv) = server_with(cur, pri, move |me, mut m| {
                l2.lock().unwrap().push("server");
                *m += 1;
                match case {
                    "in a critical section" => {
                        let _g = me.crit();
                        m.reply(me.my_cpu(), Ok(()));
                    }
                    "holding a token" => me.with_token(&TOK, |me, _| m.reply(me.my_cpu(), Ok(()))),
                    _ => m.reply(me.my_cpu(), Ok(())),
                }
                l2.lock().unwrap().push("after reply");
            });
            let p = (case == "with a peer").then(|| {
                // Runnable behind the server, which the sender's hand-off
                // puts in its own place.
                runnable_logger(cur, pri, "peer", &log)
            });
            let mut m = pin!(Msg::new(1u64));
            // (Setting a priority puts the thread behind its peers: only
            // when it changes.)
            if sender_pri != pri {
                cur.set_priority(sender_pri);
            }
            port.domsg(cur, m.as_mut()).unwrap();
            log.lock().unwrap().push("sender");
            if sender_pri != pri {
                cur.set_priority(pri);
            }
            assert_eq!(*m.body(), 2);
            if let Some(p) = p {
                cur.join(&p);
            }
            port.close_from(cur.my_cpu());
            cur.join(&srv);
            assert_eq!(*log.lock().unwrap(), want, "{case}");
        }
    });
}

/// The waiting owner runs in the sender's turn: before a peer of the same
/// priority that was runnable first. The peer then runs before the
/// sender, which its reply put behind it.
#[test]
fn domsg_hands_the_cpu_to_a_waiting_owner() {
    Machine::new(1).unwrap().run(|cur| {
        let log: Log = Arc::default();
        let pri = cur.priority();
        let (port, srv) = logging_server(cur, pri, &log);
        let p = runnable_logger(cur, pri, "peer", &log);
        let mut m = pin!(Msg::new(1u64));
        port.domsg(cur, m.as_mut()).unwrap();
        assert_eq!(*m.body(), 2);
        assert_eq!(*log.lock().unwrap(), ["server", "peer"]);
        cur.join(&p);
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}

/// An owner of lower priority than a runnable peer of the sender runs
/// after the peer; one of higher priority runs first, as a plain schedule
/// makes it.
#[test]
fn domsg_never_lets_a_lower_priority_owner_pass() {
    Machine::new(1).unwrap().run(|cur| {
        let pri = cur.priority();
        for (owner_pri, want) in [
            (Priority::new(pri.get() - 1).unwrap(), ["peer", "server"]),
            (Priority::new(pri.get() + 1).unwrap(), ["server", "peer"]),
        ] {
            let log: Log = Arc::default();
            let (port, srv) = logging_server(cur, owner_pri, &log);
            let p = runnable_logger(cur, pri, "peer", &log);
            let mut m = pin!(Msg::new(1u64));
            port.domsg(cur, m.as_mut()).unwrap();
            assert_eq!(*m.body(), 2);
            cur.join(&p);
            assert_eq!(*log.lock().unwrap(), want);
            port.close_from(cur.my_cpu());
            cur.join(&srv);
        }
    });
}

/// An owner that is not waiting on its port (busy, or blocked on
/// something else) gets no hand-off: the message waits on its queue and
/// the sender blocks; the owner takes it when it next looks.
#[test]
fn domsg_to_an_owner_not_waiting_just_queues() {
    Machine::new(1).unwrap().run(|cur| {
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let (port, srv) = server(cur, 0, move |me, port: &'static Port<u64>| {
            // Busy (runnable, not waiting) until told.
            while !g.load(Ordering::Acquire) {
                me.yield_now();
            }
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m *= 3;
                m.reply(me.my_cpu(), Ok(()));
            }
        });
        let mut m = pin!(Msg::new(5u64));
        // The owner yields until `go`: set it from a third thread that runs
        // once we have blocked in `domsg`.
        let g2 = go.clone();
        let setter = cur
            .spawn_on(cur.cpu_id(), move |_| g2.store(true, Ordering::Release))
            .unwrap();
        port.domsg(cur, m.as_mut()).unwrap();
        assert_eq!(*m.body(), 15);
        cur.join(&setter);
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}

/// A sender holding a token: released while it waits (the server takes
/// it), held again when `domsg` returns.
#[test]
fn domsg_while_holding_a_token() {
    static TOK: Token = Token::new("sender's");
    Machine::new(1).unwrap().run(|cur| {
        let (port, srv) = server(cur, 0, move |me, port: &'static Port<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                // The sender holds it, but waits: it released it.
                let got = me.try_with_token(&TOK, |_, _| ()).is_some();
                *m = u64::from(got);
                m.reply(me.my_cpu(), Ok(()));
            }
        });
        let id = cur.token_stack_id();
        cur.with_token(&TOK, |cur, _| {
            for _ in 0..100 {
                let mut m = pin!(Msg::new(0u64));
                port.domsg(cur, m.as_mut()).unwrap();
                assert_eq!(*m.body(), 1, "the server had the token");
                assert_eq!(TOK.exclusive_owner(), id, "ours again");
            }
        });
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}

static IPIS: AtomicU64 = AtomicU64::new(0);

fn count_ipi(_: MyCpu<'_>, _: usize, _: usize) {
    IPIS.fetch_add(1, Ordering::Relaxed);
}

/// Same-CPU round trips on CPU 0 while CPU 1 streams IPIs and device
/// interrupts at it (signals on the hosted backend, landing anywhere
/// outside a critical section; the interrupt thread preempts): every
/// reply is right, every IPI runs, every interrupt reaches its thread.
#[test]
fn domsg_under_interrupts_and_ipis() {
    const RAISES: u32 = 2_000;
    const IRQ: usize = 6;
    Machine::new(2).unwrap().run(|cur| {
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let ith = cur
            .builder()
            .cpu(CpuId::new(0))
            .priority(Priority::INT_MED)
            .spawn(move |me| {
                me.register_interrupt(IRQ).unwrap();
                r.store(true, Ordering::Release);
                while s.load(Ordering::Relaxed) < RAISES {
                    let n = me.wait_interrupt(IRQ);
                    s.fetch_add(n, Ordering::Release);
                }
            })
            .unwrap();
        while !ready.load(Ordering::Acquire) {
            cur.yield_now();
        }
        let (port, srv) = server(cur, 0, |me, port: &'static Port<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        });
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (sn, d) = (sent.clone(), done.clone());
        let sw = seen.clone();
        let sender = cur
            .spawn_on(CpuId::new(1), move |z| {
                for i in 0..RAISES {
                    if z.my_cpu().send_ipi(CpuId::new(0), count_ipi, 0, 0).is_ok() {
                        sn.fetch_add(1, Ordering::Relaxed);
                    }
                    z.my_cpu().raise_interrupt(CpuId::new(0), IRQ).unwrap();
                    // A line's interrupts pending together are collected
                    // together: wait for this one before the next.
                    while sw.load(Ordering::Acquire) < i + 1 {
                        z.yield_now();
                    }
                }
                d.store(true, Ordering::Release);
            })
            .unwrap();
        let mut m = pin!(Msg::new(0u64));
        let mut n = 0u64;
        while n < 20_000 || !done.load(Ordering::Acquire) {
            port.domsg(cur, m.as_mut()).unwrap();
            n += 1;
            assert_eq!(*m.body(), n);
        }
        cur.join(&sender);
        cur.join(&ith);
        assert_eq!(seen.load(Ordering::Acquire), RAISES);
        cur.my_cpu().process_ipis();
        assert_eq!(IPIS.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}

/// A timed `domsg` to a same-CPU server that holds the message past the
/// timeout: aborted, and replied `Aborted`; hand-off round trips before
/// and after it still work (the owner's waiting state survives both).
#[test]
fn timed_domsg_on_the_same_cpu_times_out() {
    Machine::new(1).unwrap().run(|cur| {
        let (port, srv) = server(cur, 0, |me, port: &'static Port<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                if *m == 0 {
                    // Hold it until its sender gives up.
                    while !m.abort_requested() {
                        me.yield_now();
                    }
                    m.reply(me.my_cpu(), Err(MsgError::Aborted));
                } else {
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
            }
        });
        let mut m = pin!(Msg::new(1u64));
        port.domsg(cur, m.as_mut()).unwrap();
        assert_eq!(*m.body(), 2);
        let mut slow = pin!(Msg::new(0u64).abortable());
        let r = port.domsg_timeout(cur, slow.as_mut(), Duration::from_millis(2));
        assert_eq!(r, Ok(Err(MsgError::Aborted)));
        assert!(slow.is_done());
        // A timed domsg answered in time, then plain ones again.
        *m.as_mut().body_mut() = 10;
        let r = port.domsg_timeout(cur, m.as_mut(), Duration::from_secs(60));
        assert_eq!(r, Ok(Ok(())));
        assert_eq!(*m.body(), 11);
        for i in 0..100 {
            *m.as_mut().body_mut() = i + 1;
            port.domsg(cur, m.as_mut()).unwrap();
            assert_eq!(*m.body(), i + 2);
        }
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}

/// The owner waits with a timeout (`waitport_timeout`, blocked with a
/// timer armed) when the hand-off comes: it takes the message; after its
/// wait times out with nothing sent, a later `domsg` still reaches it.
#[test]
fn hand_off_to_an_owner_in_a_timed_wait() {
    Machine::new(1).unwrap().run(|cur| {
        let timeouts = Arc::new(AtomicU32::new(0));
        let t = timeouts.clone();
        let (port, srv) = server(cur, 0, move |me, port: &'static Port<u64>| loop {
            match port.waitport_timeout(me, Duration::from_millis(1)) {
                Err(_) => {
                    t.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Incoming::Request(mut m)) => {
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
                Ok(_) => break,
            }
        });
        let mut m = pin!(Msg::new(0u64));
        for i in 0..50 {
            port.domsg(cur, m.as_mut()).unwrap();
            assert_eq!(*m.body(), i + 1);
        }
        // Let it time out at least once (we block meanwhile).
        while timeouts.load(Ordering::Relaxed) == 0 {
            cur.sleep_for(Duration::from_millis(1));
        }
        port.domsg(cur, m.as_mut()).unwrap();
        assert_eq!(*m.body(), 51);
        port.close_from(cur.my_cpu());
        cur.join(&srv);
    });
}
