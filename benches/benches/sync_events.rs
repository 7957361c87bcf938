#![allow(missing_docs)]
//! Synchronisation events per operation, counted, not timed: every atomic
//! read-modify-write and atomic store the lwkt crates perform (feature
//! `bench-counters`, `lwkt_token::sync_events`), plus the IPI messages and
//! hardware kicks lwkt-core's per-CPU counters record. Each operation runs
//! `N` times on a hosted machine; the counts over the run, divided by `N`,
//! include the scheduler's own events (an idle CPU going to sleep, a
//! wake-up), which is what the operation costs in a real run.
//!
//! `cargo bench -p lwkt-benches --features sync-events --bench sync_events`
//! (`cargo xtask bench-report --run` runs it) writes
//! `target/criterion/sync_events.json` for the report.

use std::alloc::Layout;
use std::pin::pin;

use lwkt_benches::on_lwkt;
use lwkt_core::token::{sync_events, Token};
use lwkt_core::{CpuId, CpuMask, Cur, MyCpu};
use lwkt_msg::{Msg, MsgHandle, Port};
use lwkt_slab::{Flags, HostedPages, MallocType, Slab};

const N: u64 = 20_000;

#[derive(Default, Clone, Copy)]
struct Count {
    rmw: u64,
    stores: u64,
    ipis: u64,
    kicks: u64,
}

fn cpu_counts(cur: &Cur) -> (u64, u64) {
    let n = cur.my_cpu().ncpus();
    (0..n)
        .filter_map(|c| cur.my_cpu().cpu_stats(CpuId::new(c as u32)))
        .fold((0, 0), |(i, k), s| (i + s.ipis_sent, k + s.kicks_sent))
}

/// Count the events of `f` (which performs `N` operations).
fn count(cur: &mut Cur, f: impl FnOnce(&mut Cur)) -> Count {
    let (i0, k0) = cpu_counts(cur);
    sync_events::reset();
    f(cur);
    let e = sync_events::snapshot();
    let (i1, k1) = cpu_counts(cur);
    Count {
        rmw: e.rmw,
        stores: e.stores,
        ipis: i1 - i0,
        kicks: k1 - k0,
    }
}

static TOK: Token = Token::new("counted");

fn add_one(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
    *m += 1;
    m.reply(my, Ok(()));
}
static INLINE: Port<u64> = Port::put_only(add_one);

static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(256 << 20), 2);
static M_BENCH: MallocType = MallocType::new("sync-events");

fn noop(_: MyCpu<'_>, _: usize, _: usize) {}

fn server(cur: &mut Cur, cpu: u32) -> (&'static Port<u64>, lwkt_core::ThreadHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = cur
        .spawn_on(CpuId::new(cpu), move |me| {
            let port: &'static Port<u64> = Port::thread(me).leak();
            tx.send(port).unwrap();
            while let lwkt_msg::Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        })
        .unwrap();
    let port = loop {
        if let Ok(p) = rx.try_recv() {
            break p;
        }
        cur.yield_now();
    };
    (port, h)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows: Vec<(&str, Count)> = Vec::new();
    on_lwkt(2, |cur| {
        rows.push((
            "lwkt crit_enter+crit_exit",
            count(cur, |cur| {
                for _ in 0..N {
                    let _g = cur.crit();
                }
            }),
        ));
        rows.push((
            "lwkt token get+release",
            count(cur, |cur| {
                for _ in 0..N {
                    cur.with_token(&TOK, |_, _| {});
                }
            }),
        ));
        rows.push((
            "lwkt token recursive get+release",
            count(cur, |cur| {
                cur.with_token(&TOK, |cur, _| {
                    for _ in 0..N {
                        cur.with_token(&TOK, |_, _| {});
                    }
                })
            }),
        ));
        let partner = cur
            .spawn_on(CpuId::new(0), |me| {
                for _ in 0..N {
                    me.yield_now();
                }
            })
            .unwrap();
        rows.push((
            "lwkt yield to a partner on the same CPU and back (2 switches)",
            count(cur, |cur| {
                for _ in 0..N {
                    cur.yield_now();
                }
            }),
        ));
        cur.join(&partner);
        rows.push((
            "lwkt send_ipi, CPU 0 -> CPU 1",
            count(cur, |cur| {
                for _ in 0..N {
                    cur.my_cpu().send_ipi(CpuId::new(1), noop, 0, 0).unwrap();
                }
                cur.cpusync(CpuMask::all(2), &|_| {});
            }),
        ));
        rows.push((
            "lwkt send_ipi_batch of 32 (per message)",
            count(cur, |cur| {
                let batch = [lwkt_core::IpiMsg {
                    func: noop,
                    arg1: 0,
                    arg2: 0,
                }; 32];
                for _ in 0..N / 32 {
                    cur.my_cpu().send_ipi_batch(CpuId::new(1), &batch).unwrap();
                }
                cur.cpusync(CpuMask::all(2), &|_| {});
            }),
        ));
        rows.push((
            "lwkt domsg, put-only port (inline)",
            count(cur, |cur| {
                let mut m = pin!(Msg::new(0u64));
                for _ in 0..N {
                    INLINE.domsg(cur, m.as_mut()).unwrap();
                }
            }),
        ));
        let (same, h0) = server(cur, 0);
        rows.push((
            "lwkt domsg, thread port on the same CPU",
            count(cur, |cur| {
                let mut m = pin!(Msg::new(0u64));
                for _ in 0..N {
                    same.domsg(cur, m.as_mut()).unwrap();
                }
            }),
        ));
        let (other, h1) = server(cur, 1);
        rows.push((
            "lwkt domsg, thread port on the other CPU",
            count(cur, |cur| {
                let mut m = pin!(Msg::new(0u64));
                for _ in 0..N {
                    other.domsg(cur, m.as_mut()).unwrap();
                }
            }),
        ));
        rows.push((
            "lwkt sendmsg to the other CPU, 64 in flight, replies to own port",
            count(cur, |cur| {
                let replies: &'static Port<u64> = Port::thread(cur).leak();
                let mut ms: Vec<std::pin::Pin<Box<Msg<u64>>>> = (0..64)
                    .map(|_| Box::pin(Msg::with_reply_port(replies, 0)))
                    .collect();
                for m in ms.iter_mut() {
                    other.sendmsg(cur.my_cpu(), m.as_mut());
                }
                let (mut sent, mut oldest) = (64u64, 0usize);
                for _ in 0..N {
                    let lwkt_msg::Incoming::Reply(r) = replies.waitport(cur) else {
                        unreachable!()
                    };
                    let i = if r.is(&ms[oldest]) {
                        oldest
                    } else {
                        ms.iter().position(|m| r.is(m)).unwrap()
                    };
                    oldest = (i + 1) % 64;
                    if sent < N {
                        other.sendmsg(cur.my_cpu(), ms[i].as_mut());
                        sent += 1;
                    }
                }
                replies.close(cur);
            }),
        ));
        same.close_from(cur.my_cpu());
        other.close_from(cur.my_cpu());
        cur.join(&h0);
        cur.join(&h1);
        let l = Layout::from_size_align(64, 8).unwrap();
        rows.push((
            "lwkt-slab 64 B alloc+free, local",
            count(cur, |cur| {
                for _ in 0..N {
                    let p = SLAB.alloc(cur, l, &M_BENCH, Flags::NONE).unwrap();
                    // SAFETY: allocated just above with this layout and type.
                    unsafe { SLAB.free(cur, p, l, &M_BENCH) };
                }
            }),
        ));
        rows.push((
            "lwkt-slab 64 B alloc on CPU 0 + free on CPU 1",
            count(cur, |cur| {
                let ptrs: Vec<usize> = (0..N)
                    .map(|_| SLAB.alloc(cur, l, &M_BENCH, Flags::NONE).unwrap().as_ptr() as usize)
                    .collect();
                let h = cur
                    .spawn_on(CpuId::new(1), move |me| {
                        for p in ptrs {
                            // SAFETY: each block was allocated once, above, with
                            // this layout and type, and is freed once.
                            unsafe {
                                SLAB.free(
                                    me,
                                    std::ptr::NonNull::new(p as *mut u8).unwrap(),
                                    l,
                                    &M_BENCH,
                                )
                            };
                        }
                    })
                    .unwrap();
                cur.join(&h);
            }),
        ));
    });
    let mut json = String::from("[\n");
    for (i, (name, c)) in rows.iter().enumerate() {
        let per = |v: u64| v as f64 / N as f64;
        json.push_str(&format!(
            "{{\"op\":\"{name}\",\"rmw\":{:.3},\"stores\":{:.3},\"ipis\":{:.3},\"kicks\":{:.4}}}{}\n",
            per(c.rmw),
            per(c.stores),
            per(c.ipis),
            per(c.kicks),
            if i + 1 < rows.len() { "," } else { "" }
        ));
        println!(
            "{name:<50} rmw {:>7.3}  stores {:>7.3}  ipis {:>6.3}  kicks {:>7.4}",
            per(c.rmw),
            per(c.stores),
            per(c.ipis),
            per(c.kicks)
        );
    }
    json.push_str("]\n");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("sync_events.json"), json).expect("write sync_events.json");
}
