#![allow(missing_docs)] // criterion_group! generates an undocumented fn
//! lwkt-msg against what a user would pick instead, side by side in one run:
//!
//! - `msg_same_cpu`: `domsg` round trips on one CPU: to a put-only port (the
//!   handler runs in the caller, no switch) and to a thread port owned by
//!   another thread on the same CPU (two switches per round trip);
//! - `msg_cross_cpu`: one round trip between two CPUs: lwkt `domsg` to a
//!   thread port on the other vCPU, vs a Mutex+Condvar rendezvous, vs a pair
//!   of `crossbeam-channel`s, vs the floor: one cache line bounced between
//!   the two cores (the `domsg` and the floor between the same two lwkt
//!   threads of one machine, in alternating batches of `CROSS_BATCH`:
//!   `lwkt_benches::cross_pair`);
//! - `msg_async`: requests with replies, 64 in flight, across CPUs: lwkt
//!   `sendmsg` with the replies on the client's own port, vs
//!   `crossbeam-channel` and `flume` (a request channel and a reply channel).

use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lwkt_benches::cross_pair::cross_cpu_batches;
use lwkt_benches::{config, on_lwkt, two_cores};
use lwkt_core::{CpuId, Cur, MyCpu, ThreadHandle};
use lwkt_msg::{Incoming, Msg, MsgHandle, Port};

/// Round trips per batch of the cross-CPU `domsg` and of its floor, which
/// alternate (about 0.1 to 1 ms a batch).
const CROSS_BATCH: u64 = 1000;

/// Messages in flight in the asynchronous group.
const WINDOW: usize = 64;

fn add_one(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
    *m += 1;
    m.reply(my, Ok(()));
}
static INLINE: Port<u64> = Port::put_only(add_one);

/// A server thread on `cpu` answering requests on its own port until the
/// port is closed; returns its port once it exists.
fn server(cur: &mut Cur, cpu: u32) -> (&'static Port<u64>, ThreadHandle) {
    let slot: Arc<OnceLock<&'static Port<u64>>> = Arc::new(OnceLock::new());
    let s2 = slot.clone();
    let h = cur
        .spawn_on(CpuId::new(cpu), move |me| {
            let port = Port::thread(me).leak();
            s2.set(port).ok().unwrap();
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        })
        .unwrap();
    loop {
        if let Some(p) = slot.get() {
            return (*p, h);
        }
        cur.yield_now();
    }
}

/// Time `iters` `domsg` round trips to a server on `cpu` of a machine with
/// `ncpus` CPUs.
fn domsg_rounds(ncpus: usize, cpu: u32, iters: u64) -> Duration {
    on_lwkt(ncpus, |cur| {
        let (port, h) = server(cur, cpu);
        let mut m = pin!(Msg::new(0u64));
        port.domsg(cur, m.as_mut()).unwrap(); // warm: the server is waiting
        let t = Instant::now();
        for _ in 0..iters {
            port.domsg(cur, m.as_mut()).unwrap();
        }
        let d = t.elapsed();
        port.close_from(cur.my_cpu());
        cur.join(&h);
        d
    })
}

fn same_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg_same_cpu");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt domsg, put-only port (inline)", |b| {
        b.iter_custom(|iters| {
            on_lwkt(1, |cur| {
                let mut m = pin!(Msg::new(0u64));
                let t = Instant::now();
                for _ in 0..iters {
                    INLINE.domsg(cur, m.as_mut()).unwrap();
                }
                let d = t.elapsed();
                black_box(*m.body());
                d
            })
        })
    });
    g.bench_function("lwkt domsg, thread port on the same CPU", |b| {
        b.iter_custom(|iters| domsg_rounds(1, 0, iters))
    });
    g.finish();
}

fn cross_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg_cross_cpu");
    g.throughput(Throughput::Elements(1));
    // The `domsg` and the floor run in one machine, between the same two
    // lwkt threads, in alternating batches (`cross_pair`): each sample of
    // either measures both and keeps its own, so the two see the same
    // placement of the vCPUs on the host.
    let both = |iters: u64| cross_cpu_batches(iters, CROSS_BATCH);
    g.bench_function("lwkt domsg, thread port on the other CPU", |b| {
        b.iter_custom(|iters| both(iters).iter().map(|p| p.domsg).sum())
    });
    g.bench_function("Mutex+Condvar rendezvous", |b| {
        b.iter_custom(|iters| {
            // (requests made, requests answered)
            type Pair = (Mutex<(u64, u64)>, Condvar, Condvar);
            let p: Arc<Pair> = Arc::new((Mutex::new((0, 0)), Condvar::new(), Condvar::new()));
            let q = p.clone();
            two_cores(
                iters,
                move |n| {
                    let (m, req, rep) = &*p;
                    for i in 1..=n {
                        let mut s = m.lock().unwrap();
                        s.0 = i;
                        req.notify_one();
                        while s.1 != i {
                            s = rep.wait(s).unwrap();
                        }
                    }
                },
                move |n| {
                    let (m, req, rep) = &*q;
                    for i in 1..=n {
                        let mut s = m.lock().unwrap();
                        while s.0 != i {
                            s = req.wait(s).unwrap();
                        }
                        s.1 = i;
                        rep.notify_one();
                    }
                },
            )
        })
    });
    g.bench_function("crossbeam-channel pair", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
            let (rtx, rrx) = crossbeam_channel::bounded::<u64>(1);
            two_cores(
                iters,
                move |n| {
                    for i in 0..n {
                        tx.send(i).unwrap();
                        black_box(rrx.recv().unwrap());
                    }
                },
                move |n| {
                    for _ in 0..n {
                        let v = rx.recv().unwrap();
                        rtx.send(v + 1).unwrap();
                    }
                },
            )
        })
    });
    g.bench_function("cache-line ping-pong (floor)", |b| {
        b.iter_custom(|iters| both(iters).iter().map(|p| p.ping_pong).sum())
    });
    g.bench_function("bare mailbox round trip (protocol floor)", |b| {
        b.iter_custom(|iters| both(iters).iter().map(|p| p.mailbox).sum())
    });
    g.finish();
}

fn async_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg_async");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lwkt sendmsg, 64 in flight, replies to own port", |b| {
        b.iter_custom(|iters| {
            on_lwkt(2, |cur| {
                let (port, h) = server(cur, 1);
                let replies: &'static Port<u64> = Port::thread(cur).leak();
                let mut ms: Vec<Pin<Box<Msg<u64>>>> = (0..WINDOW)
                    .map(|_| Box::pin(Msg::with_reply_port(replies, 0)))
                    .collect();
                let t = Instant::now();
                let mut sent = 0u64;
                for m in ms.iter_mut().take(iters.min(WINDOW as u64) as usize) {
                    port.sendmsg(cur.my_cpu(), m.as_mut());
                    sent += 1;
                }
                // Replies come back in the order sent (one FIFO server), so
                // the oldest message is checked first; a search covers any
                // other order.
                let mut oldest = 0;
                for _ in 0..iters {
                    let Incoming::Reply(r) = replies.waitport(cur) else {
                        unreachable!()
                    };
                    if sent < iters {
                        let i = if r.is(&ms[oldest]) {
                            oldest
                        } else {
                            ms.iter().position(|m| r.is(m)).unwrap()
                        };
                        oldest = (i + 1) % WINDOW;
                        port.sendmsg(cur.my_cpu(), ms[i].as_mut());
                        sent += 1;
                    }
                }
                let d = t.elapsed();
                port.close_from(cur.my_cpu());
                cur.join(&h);
                replies.close(cur);
                d
            })
        })
    });
    g.bench_function("crossbeam-channel, 64 in flight, reply channel", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(WINDOW);
            let (rtx, rrx) = crossbeam_channel::bounded::<u64>(WINDOW);
            two_cores(
                iters,
                move |n| windowed(n, |v| tx.send(v).unwrap(), || rrx.recv().unwrap()),
                move |n| {
                    for _ in 0..n {
                        let v = rx.recv().unwrap();
                        rtx.send(v + 1).unwrap();
                    }
                },
            )
        })
    });
    g.bench_function("flume, 64 in flight, reply channel", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = flume::bounded::<u64>(WINDOW);
            let (rtx, rrx) = flume::bounded::<u64>(WINDOW);
            two_cores(
                iters,
                move |n| windowed(n, |v| tx.send(v).unwrap(), || rrx.recv().unwrap()),
                move |n| {
                    for _ in 0..n {
                        let v = rx.recv().unwrap();
                        rtx.send(v + 1).unwrap();
                    }
                },
            )
        })
    });
    g.finish();
}

/// Keep `WINDOW` requests outstanding until `n` have been answered.
fn windowed(n: u64, mut send: impl FnMut(u64), mut recv: impl FnMut() -> u64) {
    let mut sent = 0;
    while sent < n.min(WINDOW as u64) {
        send(sent);
        sent += 1;
    }
    for _ in 0..n {
        black_box(recv());
        if sent < n {
            send(sent);
            sent += 1;
        }
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = same_cpu, cross_cpu, async_throughput
}
criterion_main!(benches);
