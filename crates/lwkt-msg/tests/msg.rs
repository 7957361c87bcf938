//! Ports and messages on the hosted backend: every port flavour, sync and
//! async sends, replies, forwarding, aborts, reuse, waiting on several
//! messages, futures, migration, closed ports, and 8 CPUs at once.

mod common;

use core::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::server;
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, MyCpu};
use lwkt_msg::{Incoming, Msg, MsgError, MsgFlags, MsgHandle, Port, Replied};

fn add_one(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
    *m += 1;
    m.reply(my, Ok(()));
}

/// Serve `n` requests on a thread port, adding one to each body.
fn serve_add_one(n: usize) -> impl FnOnce(&mut lwkt_core::Cur, &'static Port<u64>) + Send {
    move |me, port| {
        for _ in 0..n {
            let mut m = port.waitport(me).request().expect("a request");
            *m += 1;
            m.reply(me.my_cpu(), Ok(()));
        }
        port.close(me);
    }
}

/// A synchronous message to a put-only port runs in the caller's context:
/// no switch happens on this CPU.
#[test]
fn domsg_to_a_put_only_port_completes_without_a_switch() {
    static P: Port<u64> = Port::put_only(add_one);
    Machine::new(1).unwrap().run(|cur| {
        let mut m = pin!(Msg::new(1u64));
        let switches = cur.my_cpu().stats().switches;
        let mine = cur.switch_count();
        for _ in 0..1000 {
            P.domsg(cur, m.as_mut()).unwrap();
        }
        assert_eq!(*m.body(), 1001);
        assert_eq!(cur.my_cpu().stats().switches, switches, "a switch happened");
        assert_eq!(cur.switch_count(), mine);
        assert!(m.flags().contains(MsgFlags::DONE | MsgFlags::REPLY));
    });
}

/// A synchronous message to a thread port on another CPU travels by IPI,
/// and so does its reply.
#[test]
fn domsg_across_cpus_to_a_thread_port() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, serve_add_one(100));
        let ipis = cur.my_cpu().stats().ipis_sent;
        let mut m = pin!(Msg::new(0u64));
        for i in 0..100 {
            assert_eq!(*m.body(), i);
            port.domsg(cur, m.as_mut()).unwrap();
        }
        assert_eq!(*m.body(), 100);
        assert!(cur.my_cpu().stats().ipis_sent >= ipis + 100);
        cur.join(&srv);
    });
}

/// A thread port on the same CPU: the put schedules the owner, the reply
/// wakes the sender.
#[test]
fn domsg_to_a_thread_port_on_the_same_cpu() {
    Machine::new(1).unwrap().run(|cur| {
        let (port, srv) = server(cur, 0, serve_add_one(50));
        let mut m = pin!(Msg::new(0u64));
        for _ in 0..50 {
            port.domsg(cur, m.as_mut()).unwrap();
        }
        assert_eq!(*m.body(), 50);
        cur.join(&srv);
    });
}

/// `domsg` to a thread port on the same CPU whose owner passes the message
/// on to a port on another CPU: the reply is made there, and the
/// completion travels back by IPI to the CPU the sender sleeps on (the
/// sleep is that CPU's only). Also a close with a parked message queued.
#[test]
fn domsg_on_one_cpu_replied_from_another() {
    Machine::new(2).unwrap().run(|cur| {
        let (far, s2) = server(cur, 1, serve_add_one(100));
        let (near, s1) = server(cur, 0, move |me, port: &'static Port<u64>| {
            for _ in 0..100 {
                let mut m = port.waitport(me).request().unwrap();
                *m *= 2;
                m.forward(me.my_cpu(), far);
            }
            port.close(me);
        });
        let mut m = pin!(Msg::new(0u64));
        for i in 0..100u64 {
            *m.as_mut().body_mut() = i;
            near.domsg(cur, m.as_mut()).unwrap();
            assert_eq!(*m.body(), 2 * i + 1);
        }
        assert!(m.flags().contains(MsgFlags::DONE | MsgFlags::REPLY));
        cur.join(&s1);
        cur.join(&s2);
        // The port is closed now: refused at once.
        assert_eq!(near.domsg(cur, m.as_mut()), Err(MsgError::Closed));
    });
}

/// A thread port closed by its owner while a same-CPU `domsg` waits on it:
/// the queued message is replied `Closed` and its sender woken.
#[test]
fn close_with_a_same_cpu_domsg_queued() {
    Machine::new(1).unwrap().run(|cur| {
        let (port, srv) = server(cur, 0, move |me, port: &'static Port<u64>| {
            // Let the sender queue its message, then close without taking it.
            me.yield_now();
            port.close(me);
        });
        let mut m = pin!(Msg::new(7u64));
        assert_eq!(port.domsg(cur, m.as_mut()), Err(MsgError::Closed));
        assert_eq!(*m.body(), 7);
        cur.join(&srv);
    });
}

/// Asynchronous sends with a reply port: `sendmsg` returns at once; the
/// replies arrive on the reply port, each exactly once, and `waitport`
/// tells which message each is (waiting on several messages).
#[test]
fn sendmsg_replies_arrive_on_the_reply_port() {
    static WORK: Port<u64> = Port::spin();
    Machine::new(2).unwrap().run(|cur| {
        let replies: &'static Port<u64> = Port::thread(cur).leak();
        let worker = cur
            .spawn_on(CpuId::new(1), |me| {
                for _ in 0..3 {
                    let mut m = WORK.waitport(me).request().unwrap();
                    *m *= 10;
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
        let mut a = pin!(Msg::with_reply_port(replies, 1u64));
        let mut b = pin!(Msg::with_reply_port(replies, 2u64));
        let mut c = pin!(Msg::with_reply_port(replies, 3u64));
        WORK.sendmsg(cur.my_cpu(), a.as_mut());
        WORK.sendmsg(cur.my_cpu(), b.as_mut());
        WORK.sendmsg(cur.my_cpu(), c.as_mut());
        assert!(!a.is_done() || !b.is_done() || !c.is_done());
        let mut seen = [0; 3];
        for _ in 0..3 {
            match replies.waitport(cur) {
                Incoming::Reply(r) => {
                    assert_eq!(r.result(), Ok(()));
                    let i = [&*a, &*b, &*c].iter().position(|m| r.is(m)).unwrap();
                    seen[i] += 1;
                }
                Incoming::Request(_) | Incoming::Closed => panic!("only replies come here"),
            }
        }
        assert_eq!(seen, [1, 1, 1]);
        assert_eq!((*a.body(), *b.body(), *c.body()), (10, 20, 30));
        assert!(replies.getport(cur).is_none());
        cur.join(&worker);
        replies.close(cur);
    });
}

/// `Msg::wait` takes one particular reply off the reply port, leaving the
/// others queued, in any order.
#[test]
fn wait_for_particular_messages_in_any_order() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, serve_add_one(3));
        let replies: &'static Port<u64> = Port::thread(cur).leak();
        let mut ms = [
            Box::pin(Msg::with_reply_port(replies, 10u64)),
            Box::pin(Msg::with_reply_port(replies, 20u64)),
            Box::pin(Msg::with_reply_port(replies, 30u64)),
        ];
        for m in ms.iter_mut() {
            port.sendmsg(cur.my_cpu(), m.as_mut());
        }
        for i in [2, 0, 1] {
            ms[i].as_mut().wait(cur).unwrap();
            assert_eq!(*ms[i].body(), 10 * (i as u64 + 1) + 1);
        }
        assert!(replies.getport(cur).is_none(), "a reply was left queued");
        cur.join(&srv);
        replies.close(cur);
    });
}

/// A message without reply port sent asynchronously completes in place;
/// `Msg::wait` sleeps until then.
#[test]
fn sendmsg_without_reply_port_then_wait() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, serve_add_one(10));
        let mut m = pin!(Msg::new(5u64));
        for _ in 0..10 {
            port.sendmsg(cur.my_cpu(), m.as_mut());
            m.as_mut().wait(cur).unwrap();
        }
        assert_eq!(*m.body(), 15);
        cur.join(&srv);
    });
}

/// A reply-only port completes the message in place and calls its hook.
#[test]
fn reply_only_port_completes_in_place_and_calls_back() {
    static HOOKED: AtomicUsize = AtomicUsize::new(0);
    fn hook(_: MyCpu<'_>, r: Replied<u64>) {
        assert_eq!(r.result(), Err(MsgError::Code(7)));
        HOOKED.fetch_add(1, Ordering::SeqCst);
    }
    static SINK: Port<u64> = Port::reply_only(Some(hook));
    static WORK: Port<u64> = Port::spin();
    Machine::new(2).unwrap().run(|cur| {
        let w = cur
            .spawn_on(CpuId::new(1), |me| {
                let m = WORK.waitport(me).request().unwrap();
                m.reply(me.my_cpu(), Err(MsgError::Code(7)));
            })
            .unwrap();
        let mut m = pin!(Msg::with_reply_port(&SINK, 0u64));
        WORK.sendmsg(cur.my_cpu(), m.as_mut());
        assert_eq!(m.as_mut().wait(cur), Err(MsgError::Code(7)));
        assert_eq!(HOOKED.load(Ordering::SeqCst), 1);
        cur.join(&w);
    });
}

/// A message forwarded across two ports on two CPUs is replied once, by the
/// last, to the originator.
#[test]
fn forward_across_two_ports() {
    Machine::new(3).unwrap().run(|cur| {
        let (last, s2) = server(cur, 2, serve_add_one(1));
        let (first, s1) = server(cur, 1, move |me, port: &'static Port<u64>| {
            let mut m = port.waitport(me).request().unwrap();
            *m *= 100;
            m.forward(me.my_cpu(), last);
            port.close(me);
        });
        let mut m = pin!(Msg::new(3u64));
        first.domsg(cur, m.as_mut()).unwrap();
        assert_eq!(*m.body(), 301);
        cur.join(&s1);
        cur.join(&s2);
    });
}

/// An abort before the target takes the message: the port replies
/// `Aborted` for the target, and the handler never sees it.
#[test]
fn abort_before_the_target_takes_the_message() {
    static WORK: Port<u64> = Port::spin();
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    Machine::new(2).unwrap().run(|cur| {
        let mut m = pin!(Msg::new(1u64).abortable());
        WORK.sendmsg(cur.my_cpu(), m.as_mut());
        assert!(m.abort(), "not yet replied, so the abort is recorded");
        let w = cur
            .spawn_on(CpuId::new(1), |me| {
                // Nothing reaches us: the aborted message is replied by the
                // port. A second, normal message does.
                let m = WORK.waitport(me).request().unwrap();
                SEEN.fetch_add(*m as usize, Ordering::SeqCst);
                m.reply(me.my_cpu(), Ok(()));
            })
            .unwrap();
        assert_eq!(m.as_mut().wait(cur), Err(MsgError::Aborted));
        let mut n = pin!(Msg::new(5u64));
        assert_eq!(WORK.domsg(cur, n.as_mut()), Ok(()));
        cur.join(&w);
        assert_eq!(SEEN.load(Ordering::SeqCst), 5);
        assert!(!m.abort(), "a replied message cannot be aborted");
    });
}

/// An abort after the target took the message: the handler sees the
/// request and replies early.
#[test]
fn abort_after_the_target_took_the_message() {
    static WORK: Port<u64> = Port::spin();
    Machine::new(2).unwrap().run(|cur| {
        let w = cur
            .spawn_on(CpuId::new(1), |me| {
                let m = WORK.waitport(me).request().unwrap();
                // Work until asked to stop.
                while !m.abort_requested() {
                    me.yield_now();
                }
                m.reply(me.my_cpu(), Err(MsgError::Aborted));
            })
            .unwrap();
        let mut m = pin!(Msg::new(1u64).abortable());
        WORK.sendmsg(cur.my_cpu(), m.as_mut());
        // Let the worker take it.
        while !taken(&m) {
            cur.yield_now();
        }
        assert!(m.abort());
        assert_eq!(m.as_mut().wait(cur), Err(MsgError::Aborted));
        cur.join(&w);
    });
}

/// Taken by its target: sent, not queued any more, not replied.
fn taken(m: &Msg<u64>) -> bool {
    let f = m.flags();
    !f.contains(MsgFlags::QUEUED) && !f.contains(MsgFlags::REPLY) && !f.contains(MsgFlags::DONE)
}

/// A message is reused after each reply, and its reply port can change
/// between sends.
#[test]
fn a_message_is_reused_after_its_reply() {
    static P: Port<u64> = Port::put_only(add_one);
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, serve_add_one(500));
        let replies: &'static Port<u64> = Port::thread(cur).leak();
        let mut m = pin!(Msg::new(0u64));
        for i in 0..500u64 {
            match i % 3 {
                0 => port.domsg(cur, m.as_mut()).unwrap(),
                1 => {
                    m.as_mut().set_reply_port(replies);
                    port.sendmsg(cur.my_cpu(), m.as_mut());
                    assert!(matches!(replies.waitport(cur), Incoming::Reply(r) if r.is(&m)));
                    m.as_mut().clear_reply_port();
                }
                _ => {
                    port.sendmsg(cur.my_cpu(), m.as_mut());
                    m.as_mut().wait(cur).unwrap();
                }
            }
            *m.as_mut().body_mut() += 1;
            P.domsg(cur, m.as_mut()).unwrap();
        }
        assert_eq!(*m.body(), 1500);
        cur.join(&srv);
        replies.close(cur);
    });
}

/// Async Rust: a future of the reply, awaited on an LWKT thread.
#[test]
fn a_future_awaits_a_cross_cpu_reply() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, serve_add_one(64));
        let mut a = pin!(Msg::new(1u64));
        let mut b = pin!(Msg::new(2u64));
        let total = lwkt_msg::block_on(cur, async |my| {
            let mut total = 0;
            for _ in 0..32 {
                // Two in flight at once, awaited together.
                let fa = port.call(my, a.as_mut());
                let fb = port.call(my, b.as_mut());
                let (ra, rb) = join2(fa, fb).await;
                ra.unwrap();
                rb.unwrap();
                total += *a.body() + *b.body();
            }
            total
        });
        assert_eq!(*a.body(), 33);
        assert_eq!(*b.body(), 34);
        assert!(total > 0);
        cur.join(&srv);
    });
}

/// Both futures to completion (a minimal join).
async fn join2<A: core::future::Future, B: core::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut ra, mut rb) = (None, None);
    core::future::poll_fn(|cx| {
        if ra.is_none() {
            if let core::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let core::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

/// Puts follow a thread port's owner when it migrates.
#[test]
fn puts_follow_a_migrating_owner() {
    Machine::new(3).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, |me, port: &'static Port<u64>| {
            for i in 0..60u32 {
                let mut m = port.waitport(me).request().unwrap();
                *m = u64::from(me.cpu_id().get());
                m.reply(me.my_cpu(), Ok(()));
                me.migrate(CpuId::new(1 + (i % 2))).unwrap();
            }
            port.close(me);
        });
        let mut m = pin!(Msg::new(0u64));
        let mut cpus = std::collections::BTreeSet::new();
        for _ in 0..60 {
            port.domsg(cur, m.as_mut()).unwrap();
            cpus.insert(*m.body());
        }
        assert_eq!(cpus.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        cur.join(&srv);
    });
}

/// A closed port, or one whose owner has exited, refuses puts with
/// `Closed`; queued requests are replied `Closed` by `close`.
#[test]
fn closed_ports_and_exited_owners_refuse_messages() {
    Machine::new(2).unwrap().run(|cur| {
        // The owner closes with one request still queued.
        let (port, srv) = server(cur, 1, |me, port: &'static Port<u64>| {
            // Let the requests arrive (some may come after the close).
            for _ in 0..100 {
                me.yield_now();
            }
            port.close(me);
            assert!(port.is_closed(me));
        });
        let mut a = pin!(Msg::new(0u64));
        let mut b = pin!(Msg::new(0u64));
        port.sendmsg(cur.my_cpu(), a.as_mut());
        port.sendmsg(cur.my_cpu(), b.as_mut());
        assert_eq!(a.as_mut().wait(cur), Err(MsgError::Closed));
        assert_eq!(b.as_mut().wait(cur), Err(MsgError::Closed));
        cur.join(&srv);
        // After close, and after the owner exited: refused at once.
        assert_eq!(port.domsg(cur, a.as_mut()), Err(MsgError::Closed));
        let (port2, srv2) = server(cur, 1, |_, _: &'static Port<u64>| {});
        cur.join(&srv2);
        assert_eq!(port2.domsg(cur, a.as_mut()), Err(MsgError::Closed));
    });
}

/// Eight CPUs, each with a server and a client: every client sends
/// synchronous messages to every other CPU's server and asynchronous ones
/// with replies to its own port.
#[test]
fn eight_cpus_exchange_messages() {
    const N: u32 = 8;
    const PER_PEER: u64 = 200;
    Machine::new(N as usize).unwrap().run(|cur| {
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for c in 0..N {
            let (p, s) = server(
                cur,
                c,
                serve_add_one((2 * PER_PEER * u64::from(N - 1)) as usize),
            );
            ports.push(p);
            servers.push(s);
        }
        let ports: &'static [&'static Port<u64>] = Vec::leak(ports);
        let mut clients = Vec::new();
        for c in 0..N {
            clients.push(
                cur.spawn_on(CpuId::new(c), move |me| {
                    let replies: &'static Port<u64> = Port::thread(me).leak();
                    let mut m = pin!(Msg::new(0u64));
                    let mut a = pin!(Msg::with_reply_port(replies, 0u64));
                    for _ in 0..PER_PEER {
                        for (t, port) in ports.iter().enumerate() {
                            if t as u32 == c {
                                continue;
                            }
                            port.sendmsg(me.my_cpu(), a.as_mut());
                            port.domsg(me, m.as_mut()).unwrap();
                            assert!(matches!(replies.waitport(me), Incoming::Reply(r) if r.is(&a)));
                        }
                    }
                    assert_eq!(*m.body(), PER_PEER * u64::from(N - 1));
                    assert_eq!(*a.body(), PER_PEER * u64::from(N - 1));
                    replies.close(me);
                })
                .unwrap(),
            );
        }
        for h in clients.iter().chain(servers.iter()) {
            cur.join(h);
        }
    });
}

/// A serializer port: senders and receivers hold the serializer; the
/// receiver releases it while it waits, so senders get in.
#[test]
fn serializer_port_under_its_serializer() {
    use lwkt_core::Serializer;
    static DRIVER: Serializer = Serializer::new();
    static RX: Port<u64> = Port::serializer(&DRIVER);
    Machine::new(2).unwrap().run(|cur| {
        let helper = cur
            .spawn_on(CpuId::new(1), |me| {
                DRIVER.enter(me);
                let mut n = 0;
                while n < 100 {
                    // Sleeps with the serializer released.
                    let mut m = RX.waitport(me).request().unwrap();
                    assert!(DRIVER.is_held_by(me));
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                    n += 1;
                }
                DRIVER.exit(me);
            })
            .unwrap();
        let mut m = pin!(Msg::new(0u64));
        for _ in 0..100 {
            DRIVER.enter(cur);
            RX.sendmsg(cur.my_cpu(), m.as_mut());
            DRIVER.exit(cur);
            m.as_mut().wait(cur).unwrap();
        }
        assert_eq!(*m.body(), 100);
        cur.join(&helper);
    });
}

/// Closing a spin port wakes every receiver asleep on it; they see
/// `Incoming::Closed`.
#[test]
fn closing_a_spin_port_wakes_its_receivers() {
    static WORK: Port<u64> = Port::spin();
    static DONE: AtomicUsize = AtomicUsize::new(0);
    Machine::new(2).unwrap().run(|cur| {
        let ws: Vec<_> = (0..4u32)
            .map(|i| {
                cur.spawn_on(CpuId::new(i % 2), |me| {
                    let mut served = 0;
                    loop {
                        match WORK.waitport(me) {
                            Incoming::Request(m) => {
                                served += 1;
                                m.reply(me.my_cpu(), Ok(()));
                            }
                            Incoming::Closed => break,
                            Incoming::Reply(_) => unreachable!(),
                        }
                    }
                    DONE.fetch_add(served, Ordering::SeqCst);
                })
                .unwrap()
            })
            .collect();
        let mut m = pin!(Msg::new(0u64));
        for _ in 0..40 {
            WORK.domsg(cur, m.as_mut()).unwrap();
        }
        for _ in 0..50 {
            cur.yield_now();
        }
        WORK.close(cur);
        for w in &ws {
            cur.join(w);
        }
        assert_eq!(DONE.load(Ordering::SeqCst), 40);
        assert_eq!(WORK.domsg(cur, m.as_mut()), Err(MsgError::Closed));
    });
}
