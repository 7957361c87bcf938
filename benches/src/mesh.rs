//! The message mesh: a server on every CPU, and a client on every CPU that
//! sends requests to the servers of the *other* CPUs in turn, alternating
//! batches of [`WINDOW`] asynchronous sends (replies to its own port, all
//! in flight at once) and [`WINDOW`] synchronous round trips. The same
//! workload twice: on an lwkt machine of N vCPUs, and on 2N OS threads with
//! `crossbeam-channel`s (a request channel per server, a reply channel per
//! client), the design a user would write without lwkt.
//!
//! Used by the `msg_vcpus` bench group at 2 to 16 vCPUs on a host with
//! fewer cores: what oversubscription costs each design.

use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use lwkt_core::{CpuId, Cur};
use lwkt_msg::{serve_on, Incoming, Msg, PortRef};

/// Requests a client has in flight in its asynchronous batches, and the
/// length of its synchronous batches.
pub const WINDOW: usize = 8;

/// The server a client's `k`th request goes to: the other CPUs in turn.
fn target(me: usize, k: usize, n: usize) -> usize {
    (me + 1 + k % (n - 1)) % n
}

/// Messages each of `n` clients sends so that all send about `total`:
/// whole rounds of `2 * WINDOW`, at least one.
pub fn per_client(total: u64, n: usize) -> u64 {
    let round = 2 * WINDOW as u64;
    (total / n as u64).div_ceil(round).max(1) * round
}

/// Run the mesh on an lwkt machine of `n` vCPUs (at least 2), each client
/// sending `per_client` messages; the time from the first client's start
/// to the last client's end (machine boot and server start excluded).
///
/// With more vCPUs than host cores the vCPUs run M:N, on one host thread
/// per core ([`host_threads_for`]).
pub fn lwkt(n: usize, per_client: u64) -> Duration {
    lwkt_on(n, host_threads_for(n), per_client)
}

/// The host threads the mesh runs `n` vCPUs on: one per vCPU while they
/// fit the host's cores, one per core beyond (M:N, switched in user
/// space: `Machine::host_threads`).
pub fn host_threads_for(n: usize) -> usize {
    n.min(lwkt_arch_hosted::host_cores())
}

/// [`lwkt`] on `host_threads` host threads (`n` for 1:1).
pub fn lwkt_on(n: usize, host_threads: usize, per_client: u64) -> Duration {
    assert!(n >= 2, "the mesh needs two CPUs");
    let machine = lwkt_arch_hosted::Machine::new(n)
        .expect("machine")
        .host_threads(host_threads);
    machine.run(|cur| {
        let servers: Vec<_> = (0..n)
            .map(|c| {
                serve_on(cur, CpuId::new(c as u32), |me, port: PortRef<u64>| {
                    while let Incoming::Request(mut m) = port.waitport(me) {
                        *m += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                })
                .expect("server")
            })
            .collect();
        let ports: Arc<Vec<PortRef<u64>>> = Arc::new(servers.iter().map(|s| s.1.clone()).collect());
        let start = Instant::now();
        let clients: Vec<_> = (0..n)
            .map(|c| {
                let ports = ports.clone();
                cur.spawn_on(CpuId::new(c as u32), move |me| {
                    lwkt_client(me, c, &ports, per_client)
                })
                .expect("client")
            })
            .collect();
        for t in &clients {
            cur.join(t);
        }
        let took = start.elapsed();
        for (t, port) in &servers {
            port.close_from(cur.my_cpu());
            cur.join(t);
        }
        took
    })
}

fn lwkt_client(me: &mut Cur, c: usize, ports: &[PortRef<u64>], per_client: u64) {
    let n = ports.len();
    let replies = PortRef::thread(me);
    let mut window: Vec<Pin<Box<Msg<u64>>>> = (0..WINDOW)
        .map(|i| Box::pin(Msg::with_reply_port(&replies, 0).with_tag(i as u64)))
        .collect();
    let mut one = pin!(Msg::new(0u64));
    let (mut k, mut sent) = (0, 0);
    while sent < per_client {
        for m in window.iter_mut() {
            ports[target(c, k, n)].sendmsg(me.my_cpu(), m.as_mut());
            k += 1;
        }
        for _ in 0..WINDOW {
            let Incoming::Reply(r) = replies.waitport(me) else {
                panic!("mesh: only replies come to a client's port");
            };
            assert_eq!(r.result(), Ok(()));
        }
        for _ in 0..WINDOW {
            ports[target(c, k, n)]
                .domsg(me, one.as_mut())
                .expect("domsg");
            k += 1;
        }
        sent += 2 * WINDOW as u64;
    }
    replies.close(me);
}

/// A request of the OS-thread mesh: a value and where to send the reply
/// (with the request's tag).
type Request = (u64, u64, Sender<(u64, u64)>);

/// The same mesh on OS threads: `n` server threads, each draining its own
/// request channel, and `n` client threads; the time from the first
/// client's start to the last client's end (server start excluded).
pub fn os_threads(n: usize, per_client: u64) -> Duration {
    assert!(n >= 2, "the mesh needs two servers");
    let (txs, rxs): (Vec<Sender<Request>>, Vec<Receiver<Request>>) =
        (0..n).map(|_| unbounded()).unzip();
    let servers: Vec<_> = rxs
        .into_iter()
        .map(|rx| {
            std::thread::spawn(move || {
                for (v, tag, reply) in rx {
                    let _ = reply.send((tag, v + 1));
                }
            })
        })
        .collect();
    let txs = Arc::new(txs);
    let start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|c| {
            let txs = txs.clone();
            std::thread::spawn(move || {
                let (rtx, rrx) = unbounded::<(u64, u64)>();
                let (mut k, mut sent) = (0, 0);
                while sent < per_client {
                    for i in 0..WINDOW {
                        txs[target(c, k, n)]
                            .send((0, i as u64, rtx.clone()))
                            .unwrap();
                        k += 1;
                    }
                    for _ in 0..WINDOW {
                        rrx.recv().unwrap();
                    }
                    for _ in 0..WINDOW {
                        txs[target(c, k, n)].send((0, 0, rtx.clone())).unwrap();
                        rrx.recv().unwrap();
                        k += 1;
                    }
                    sent += 2 * WINDOW as u64;
                }
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    let took = start.elapsed();
    drop(txs); // the servers' loops end
    for t in servers {
        t.join().unwrap();
    }
    took
}
