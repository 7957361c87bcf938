//! Stress: 8 virtual CPUs, 1,000,000 messages sent per CPU to the other
//! CPUs' servers, asynchronously with a window of messages in flight; every
//! message is replied exactly once, counted on both sides.

use core::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;
use lwkt_msg::{Incoming, Msg, Port};

const N: u32 = 8;
const PER_CPU: u64 = 1_000_000;
const WINDOW: usize = 32;

#[derive(Default)]
struct Body {
    sent: u64,
    served: u64,
}

/// The server message `k` of client `c` goes to.
fn target(c: u32, k: u64) -> u32 {
    (c + 1 + (k % u64::from(N - 1)) as u32) % N
}

fn send(my: lwkt_core::MyCpu<'_>, port: &'static Port<Body>, slot: &mut Pin<Box<Msg<Body>>>) {
    slot.as_mut().body_mut().sent += 1;
    port.sendmsg(my, slot.as_mut());
}

#[test]
fn eight_cpus_a_million_messages_each_every_one_replied_once() {
    let expected: Vec<u64> = (0..N)
        .map(|s| {
            (0..N)
                .filter(|&c| c != s)
                .map(|c| {
                    // How many k in 0..PER_CPU map client c to server s.
                    let j = u64::from((s + N - c - 1) % N);
                    let m = u64::from(N - 1);
                    PER_CPU / m + u64::from(PER_CPU % m > j)
                })
                .sum()
        })
        .collect();
    assert_eq!(expected.iter().sum::<u64>(), PER_CPU * u64::from(N));
    let served = Arc::new(AtomicU64::new(0));
    let replied = Arc::new(AtomicU64::new(0));
    let (s2, r2) = (served.clone(), replied.clone());
    Machine::new(N as usize).unwrap().run(move |cur| {
        let ports: Arc<Vec<OnceLock<&'static Port<Body>>>> =
            Arc::new((0..N).map(|_| OnceLock::new()).collect());
        let mut threads = Vec::new();
        for s in 0..N {
            let (ports, served, want) = (ports.clone(), s2.clone(), expected[s as usize]);
            threads.push(
                cur.spawn_on(CpuId::new(s), move |me| {
                    let port = Port::thread(me).leak();
                    ports[s as usize].set(port).ok().unwrap();
                    for _ in 0..want {
                        let mut m = port.waitport(me).request().expect("only requests");
                        m.served += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                    served.fetch_add(want, Ordering::Relaxed);
                    port.close(me);
                })
                .unwrap(),
            );
        }
        for c in 0..N {
            let (ports, replied) = (ports.clone(), r2.clone());
            threads.push(
                cur.spawn_on(CpuId::new(c), move |me| {
                    let ports: Vec<&'static Port<Body>> = ports
                        .iter()
                        .map(|p| loop {
                            if let Some(p) = p.get() {
                                break *p;
                            }
                            me.yield_now();
                        })
                        .collect();
                    let replies: &'static Port<Body> = Port::thread(me).leak();
                    let mut slots: Vec<Pin<Box<Msg<Body>>>> = (0..WINDOW)
                        .map(|_| Box::pin(Msg::with_reply_port(replies, Body::default())))
                        .collect();
                    let mut sent = 0u64;
                    let mut got = 0u64;
                    for slot in slots.iter_mut() {
                        send(me.my_cpu(), ports[target(c, sent) as usize], slot);
                        sent += 1;
                    }
                    while got < PER_CPU {
                        let Incoming::Reply(r) = replies.waitport(me) else {
                            panic!("a request on a reply port");
                        };
                        r.result().unwrap();
                        got += 1;
                        let slot = slots.iter_mut().find(|s| r.is(s)).expect("our message");
                        let b = slot.body();
                        assert_eq!(b.served, b.sent, "a message served other than once");
                        if sent < PER_CPU {
                            send(me.my_cpu(), ports[target(c, sent) as usize], slot);
                            sent += 1;
                        }
                    }
                    let total: u64 = slots.iter().map(|s| s.body().served).sum();
                    assert_eq!(total, PER_CPU, "served counts at the client");
                    replied.fetch_add(got, Ordering::Relaxed);
                    replies.close(me);
                })
                .unwrap(),
            );
        }
        for t in &threads {
            cur.join(t);
        }
    });
    assert_eq!(served.load(Ordering::Relaxed), PER_CPU * u64::from(N));
    assert_eq!(replied.load(Ordering::Relaxed), PER_CPU * u64::from(N));
}
