//! Counted port handles (issue 16, item 2): `PortRef` cloned and sent to
//! threads on every CPU, `serve_on` giving a server's port at once, the
//! port's lifetime following its handles, messages and IPIs (under
//! `cargo xtask asan` a missing count is a use after free, an extra one a
//! leak), and use after the owning thread exited refused with a clear
//! error.

use core::pin::{pin, Pin};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;
use lwkt_msg::{serve_on, Incoming, Msg, MsgError, Port, PortRef};

const CPUS: u32 = 3;

/// A doubling server on `cpu` that serves until its port is closed, then
/// returns how many requests it served.
fn doubler(
    cur: &lwkt_core::Cur,
    cpu: u32,
) -> (
    lwkt_core::ThreadHandle,
    PortRef<u64>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    let (t, port) = serve_on(cur, CpuId::new(cpu), move |me, port: PortRef<u64>| {
        while let Incoming::Request(mut m) = port.waitport(me) {
            *m *= 2;
            m.reply(me.my_cpu(), Ok(()));
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    (t, port, served)
}

/// One server, a clone of its handle in each of six client threads on all
/// three CPUs (the server's own CPU included): every request is answered,
/// none lost, and closing through any handle ends the server.
#[test]
fn clones_sent_to_every_cpu_all_reach_the_server() {
    const PER_CLIENT: u64 = 500;
    Machine::new(CPUS as usize).unwrap().run(|cur| {
        let (server, port, served) = doubler(cur, 1);
        let clients: Vec<_> = (0..2 * CPUS)
            .map(|i| {
                let port = port.clone();
                cur.spawn_on(CpuId::new(i % CPUS), move |me| {
                    for k in 0..PER_CLIENT {
                        let mut m = pin!(Msg::new(k));
                        port.domsg(me, m.as_mut()).unwrap();
                        assert_eq!(*m.body(), 2 * k);
                    }
                })
                .unwrap()
            })
            .collect();
        for c in &clients {
            cur.join(c);
        }
        let other = port.clone();
        drop(port);
        other.close_from(cur.my_cpu());
        cur.join(&server);
        assert_eq!(
            served.load(std::sync::atomic::Ordering::Relaxed),
            2 * CPUS as u64 * PER_CLIENT
        );
    });
}

/// The owner of a thread port exits without closing it; clients still hold
/// handles. Every later send is refused with `MsgError::Closed`: `domsg`
/// returns it, a `sendmsg`'s reply carries it, from the owner's CPU and
/// from another. Nothing hangs and nothing touches freed memory.
#[test]
fn use_after_the_owner_exited_is_refused_with_closed() {
    Machine::new(2).unwrap().run(|cur| {
        let (owner, port) = serve_on(cur, CpuId::new(1), |_me, _port: PortRef<u64>| {
            // Returns at once: the port outlives its owner.
        })
        .unwrap();
        cur.join(&owner);
        assert!(owner.has_exited());

        let mut m = pin!(Msg::new(1));
        assert_eq!(port.domsg(cur, m.as_mut()), Err(MsgError::Closed));
        assert_eq!(*m.body(), 1, "a refused request is not touched");

        let replies = PortRef::thread(cur);
        let mut a = pin!(Msg::with_reply_port(&replies, 2).with_tag(7));
        port.sendmsg(cur.my_cpu(), a.as_mut());
        let Incoming::Reply(r) = replies.waitport(cur) else {
            panic!("the refusal comes back as a reply")
        };
        assert_eq!((r.tag(), r.result()), (7, Err(MsgError::Closed)));

        // From a thread on the dead owner's CPU too.
        let p = port.clone();
        let t = cur
            .spawn_on(CpuId::new(1), move |me| {
                let mut m = pin!(Msg::new(3));
                assert_eq!(p.domsg(me, m.as_mut()), Err(MsgError::Closed));
            })
            .unwrap();
        cur.join(&t);
        replies.close(cur);
    });
}

/// The last handle goes while puts to the port still ride IPIs to its
/// owner's CPU: each IPI holds the port until it has delivered (a use after
/// free under ASan otherwise), and the port is freed after the last (a leak
/// under ASan otherwise).
#[test]
fn the_last_handle_may_go_while_puts_are_in_flight() {
    const N: usize = 32;
    Machine::new(2).unwrap().run(|cur| {
        for round in 0..20u64 {
            // The owner drops its handle and exits: its port lives on in the
            // client's handle only.
            let (owner, port) =
                serve_on(cur, CpuId::new(1), |_me, port: PortRef<u64>| drop(port)).unwrap();
            cur.join(&owner);
            let replies = PortRef::thread(cur);
            let mut ms: Vec<Pin<Box<Msg<u64>>>> = (0..N)
                .map(|i| Box::pin(Msg::with_reply_port(&replies, round).with_tag(i as u64)))
                .collect();
            for m in ms.iter_mut() {
                port.sendmsg(cur.my_cpu(), m.as_mut());
            }
            drop(port); // the IPIs now hold the only counts
            for _ in 0..N {
                let Incoming::Reply(r) = replies.waitport(cur) else {
                    panic!("only replies come to the reply port")
                };
                assert_eq!(r.result(), Err(MsgError::Closed));
            }
            assert!(ms.iter().all(|m| m.is_done()));
        }
    });
}

/// A counted reply port named only by the messages in flight: the client
/// drops its handle after sending, and waits for each reply through the
/// message (`Msg::wait`), which keeps the port alive until the message goes.
#[test]
fn messages_keep_their_counted_reply_port_alive() {
    Machine::new(2).unwrap().run(|cur| {
        let (server, port, _) = doubler(cur, 1);
        // A spin reply port: `Msg::wait` takes the reply off it on any CPU.
        let replies = PortRef::new(Port::spin());
        let mut ms: Vec<Pin<Box<Msg<u64>>>> = (0..64)
            .map(|i| Box::pin(Msg::with_reply_port(&replies, i)))
            .collect();
        drop(replies);
        for m in ms.iter_mut() {
            port.sendmsg(cur.my_cpu(), m.as_mut());
        }
        for (i, m) in ms.iter_mut().enumerate() {
            assert_eq!(m.as_mut().wait(cur), Ok(()));
            assert_eq!(*m.body(), 2 * i as u64);
        }
        port.close_from(cur.my_cpu());
        cur.join(&server);
    });
}

/// Forwarding to a counted port, and a message changing its counted reply
/// port between sends.
#[test]
fn forward_and_set_reply_port_take_counted_ports() {
    Machine::new(2).unwrap().run(|cur| {
        let (last, last_port, _) = doubler(cur, 0);
        let to = last_port.clone();
        let (relay, relay_port) = serve_on(cur, CpuId::new(1), move |me, port: PortRef<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.forward(me.my_cpu(), &to);
            }
        })
        .unwrap();
        let first = PortRef::thread(cur);
        let second = PortRef::thread(cur);
        let mut m = pin!(Msg::with_reply_port(&first, 10));
        relay_port.sendmsg(cur.my_cpu(), m.as_mut());
        assert!(matches!(first.waitport(cur), Incoming::Reply(r) if r.is(&m)));
        assert_eq!(*m.body(), 22);
        m.as_mut().set_reply_port(second.clone());
        drop(second);
        relay_port.sendmsg(cur.my_cpu(), m.as_mut());
        assert_eq!(m.as_mut().wait(cur), Ok(()));
        assert_eq!(*m.body(), 46);
        m.as_mut().clear_reply_port();
        assert_eq!(relay_port.domsg(cur, m.as_mut()), Ok(()));
        assert_eq!(*m.body(), 94);
        relay_port.close_from(cur.my_cpu());
        cur.join(&relay);
        last_port.close_from(cur.my_cpu());
        cur.join(&last);
        first.close(cur);
    });
}

/// Only the owner receives from a thread port, whoever holds a handle: a
/// clear panic (in thread context, so it unwinds and the test catches it).
#[test]
fn a_handle_does_not_make_its_holder_a_receiver() {
    Machine::new(1).unwrap().run(|cur| {
        let (t, port, _) = doubler(cur, 0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| port.getport(cur)));
        let err = r.expect_err("a non-owner's getport panics");
        let msg = err.downcast_ref::<String>().expect("a formatted message");
        assert!(
            msg.contains("only a thread port's owner receives from it"),
            "{msg}"
        );
        port.close_from(cur.my_cpu());
        cur.join(&t);
    });
}

/// `PortRef` is `Send + Sync + Clone`: a handle crosses to a plain OS
/// thread and back.
#[test]
fn a_handle_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<PortRef<u64>>();
    let p: PortRef<u64> = PortRef::new(Port::spin());
    let q = std::thread::spawn({
        let p = p.clone();
        move || p
    })
    .join()
    .unwrap();
    assert!(PortRef::ptr_eq(&p, &q));
    assert_eq!(format!("{p:?}"), "PortRef(Port::spin)");
}

/// A cross-CPU `domsg` carries its port to the owner's CPU without a count
/// (the caller's borrow keeps the port alive until the reply): the IPI
/// function must not touch the port once the message may be done. Here
/// the port is refused there (closed by its owner, which has exited) and
/// the caller drops the last handle the moment `domsg` returns, many
/// times over; and a served port whose caller drops it right after each
/// answered `domsg`. Under `cargo xtask asan` a touch after the reply is a
/// use after free.
#[test]
fn a_domsg_carries_its_port_on_the_callers_borrow() {
    Machine::new(2).unwrap().run(|cur| {
        for i in 0..200u64 {
            let (owner, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
                if let Incoming::Request(mut m) = port.waitport(me) {
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
                port.close(me);
            })
            .unwrap();
            let mut m = pin!(Msg::new(i));
            assert_eq!(port.domsg(cur, m.as_mut()), Ok(()));
            assert_eq!(*m.body(), i + 1);
            // Closed by now or soon: refused on the owner's CPU.
            cur.join(&owner);
            let mut m = pin!(Msg::new(i));
            assert_eq!(port.domsg(cur, m.as_mut()), Err(MsgError::Closed));
            drop(port); // the last handle: the owner's went with its thread
        }
    });
}

/// A `domsg` whose port's owner migrates between the CPUs while requests
/// arrive: the put chases the owner (an IPI sent on from the CPU it left,
/// still on the caller's borrow), and every request is answered once.
#[test]
fn a_domsg_chases_a_migrating_owner_on_the_callers_borrow() {
    Machine::new(3).unwrap().run(|cur| {
        let (owner, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
            let mut n = 0u32;
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
                n += 1;
                me.migrate(CpuId::new(1 + n % 2)).unwrap();
            }
        })
        .unwrap();
        let mut m = pin!(Msg::new(0u64));
        for _ in 0..500 {
            port.domsg(cur, m.as_mut()).unwrap();
        }
        assert_eq!(*m.body(), 500);
        port.close_from(cur.my_cpu());
        cur.join(&owner);
    });
}
