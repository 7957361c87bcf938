//! The work every CPU does, and the report that checks it.
//!
//! Each kind of work counts, per CPU, what that CPU did; the report
//! compares every count with what it must be, so a lost IPI, a thread run
//! on the wrong CPU or a lost message shows as a wrong number on a named
//! CPU.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use lwkt_arch_x86_64::percpu::PerCpu;
use lwkt_core::token::{Token, TokenCell};
use lwkt_core::{Cpu, CpuId, CpuMask, Cur, MyCpu, ThreadHandle};
use lwkt_msg::{Msg, Port};

use crate::boot::MAX_CPUS;
use crate::Opts;

type Counts = [AtomicU64; MAX_CPUS];

static YIELDS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static HANDOFFS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static IPI_ACKS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static SYNCS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static TOKEN_INCS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static MSGS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// `ACK[target * MAX_CPUS + source]`: the last handshake sequence number
/// `target` answered for `source`, written only by the IPI function.
static ACK: [AtomicU64; MAX_CPUS * MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS * MAX_CPUS];
static TURNS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static PORTS: [AtomicPtr<Port<u64>>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

static TOKEN: Token = Token::new("qemu-test");
static TOTAL: TokenCell<'static, u64> = TokenCell::new(&TOKEN, 0);
/// Handshake rounds per (source, target) pair.
const HANDSHAKES: u64 = 20;

static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// `TOTAL` as the main thread read it under the token after the test.
static FINAL_TOTAL: AtomicU64 = AtomicU64::new(0);

fn here(cur: &Cur) -> usize {
    cur.my_cpu().id().index()
}

fn spawn(
    cur: &mut Cur,
    cpu: usize,
    name: &'static str,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> ThreadHandle {
    cur.builder()
        .cpu(CpuId::new(cpu as u32))
        .name(name)
        .spawn(f)
        .unwrap_or_else(|e| crate::fail!("spawn {name} on cpu {cpu}: {e}"))
}

/// Join the threads and drop their handles (a handle keeps its thread's
/// stack, which the backend's pool needs back).
fn join_all(cur: &mut Cur, hs: alloc::vec::Vec<ThreadHandle>) {
    for h in &hs {
        cur.join(h);
    }
}

/// Run every test from the main thread on CPU 0.
pub(crate) fn run(cur: &mut Cur, opts: Opts) {
    let n = cur.my_cpu().ncpus();
    let rounds = opts.rounds;
    ROUNDS.store(rounds, Ordering::Relaxed);

    // 1. Switches: two threads per CPU yield to each other.
    let hs: alloc::vec::Vec<_> = (0..2 * n)
        .map(|i| {
            spawn(cur, i % n, "yielder", move |me| {
                for _ in 0..rounds {
                    me.yield_now();
                    YIELDS[here(me)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    join_all(cur, hs);
    crate::kprintln!("  switches: done");

    // 2. Cross-CPU scheduling: pairs on CPUs (i, i+1) hand a turn back and
    //    forth with sleep/wakeup; every wake-up of the other side is an IPI
    //    message to its CPU.
    let mut hs = alloc::vec::Vec::new();
    for (i, turn) in TURNS.iter().enumerate().take(n) {
        for side in 0..2u64 {
            let cpu = if side == 0 { i } else { (i + 1) % n };
            hs.push(spawn(cur, cpu, "ping-pong", move |me| {
                let chan = turn as *const AtomicU64 as usize;
                for r in 0..rounds {
                    let mine = 2 * r + side;
                    me.sleep_until(chan, || turn.load(Ordering::SeqCst) == mine);
                    turn.store(mine + 1, Ordering::SeqCst);
                    HANDOFFS[here(me)].fetch_add(1, Ordering::Relaxed);
                    me.my_cpu().wakeup(chan);
                }
            }));
        }
    }
    join_all(cur, hs);
    crate::kprintln!("  cross-CPU sleep/wakeup: done");

    // 3. IPI handshakes: every CPU sends to every other CPU a function that
    //    records the sequence number, and waits until it is seen.
    let hs: alloc::vec::Vec<_> = (0..n)
        .map(|c| {
            spawn(cur, c, "handshake", move |me| {
                for seq in 1..=HANDSHAKES {
                    for t in (0..n).filter(|&t| t != c) {
                        me.my_cpu()
                            .send_ipi(CpuId::new(t as u32), ack, c, seq as usize)
                            .unwrap_or_else(|e| crate::fail!("send_ipi {c} -> {t}: {e:?}"));
                        while ACK[t * MAX_CPUS + c].load(Ordering::Acquire) != seq {
                            // `pause` also lets single-threaded TCG run
                            // the other vCPUs at once.
                            core::hint::spin_loop();
                            me.yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    join_all(cur, hs);
    crate::kprintln!("  IPI handshakes: done");

    // 4. cpusync over all CPUs.
    for _ in 0..rounds {
        cur.cpusync(CpuMask::all(n), &|my: MyCpu<'_>| {
            SYNCS[my.id().index()].fetch_add(1, Ordering::Relaxed);
        });
    }
    crate::kprintln!("  cpusync: done");

    // 5. One token from every CPU; half the holds yield while holding it
    //    (the token is released while the thread is switched out and taken
    //    again before it runs), and no increment may be lost.
    let hs: alloc::vec::Vec<_> = (0..2 * n)
        .map(|i| {
            spawn(cur, i % n, "token", move |me| {
                for r in 0..rounds {
                    me.with_token(&TOKEN, |me, held| {
                        if r % 2 == 0 {
                            // Others may take the token and change TOTAL
                            // here, so nothing read before this point may
                            // be used after it (a first version kept the
                            // value read before the yield and lost half
                            // the increments, as the token rules say).
                            me.yield_now();
                        }
                        *TOTAL.get_mut(held, me) += 1;
                    });
                    TOKEN_INCS[here(me)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    join_all(cur, hs);
    cur.with_token(&TOKEN, |me, held| {
        FINAL_TOTAL.store(*TOTAL.get(held, me), Ordering::Relaxed);
    });
    crate::kprintln!("  tokens: done");

    // 6. Messages: a server port per CPU; a client on every CPU calls the
    //    next CPU's server synchronously.
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        hs.push(spawn(cur, c, "msg-server", move |me| {
            let port: &'static Port<u64> = Port::thread(me).leak();
            PORTS[c].store(
                port as *const Port<u64> as *mut Port<u64>,
                Ordering::Release,
            );
            for _ in 0..rounds {
                let mut m = port
                    .waitport(me)
                    .request()
                    .unwrap_or_else(|| crate::fail!("cpu {c}: a reply or close on a server port"));
                *m += 1;
                MSGS[c].fetch_add(1, Ordering::Relaxed);
                m.reply(me.my_cpu(), Ok(()));
            }
            port.close(me);
        }));
    }
    for c in 0..n {
        hs.push(spawn(cur, c, "msg-client", move |me| {
            let next = (c + 1) % n;
            let port = loop {
                let p = PORTS[next].load(Ordering::Acquire);
                if !p.is_null() {
                    // SAFETY: a leaked, 'static port published by its server.
                    break unsafe { &*p };
                }
                core::hint::spin_loop();
                me.yield_now();
            };
            let mut m = core::pin::pin!(Msg::new(0u64));
            for _ in 0..rounds {
                port.domsg(me, m.as_mut())
                    .unwrap_or_else(|e| crate::fail!("domsg {c} -> {next}: {e:?}"));
            }
            if *m.body() != rounds {
                crate::fail!("cpu {c}: {} of {rounds} round trips came back", m.body());
            }
        }));
    }
    join_all(cur, hs);
    crate::kprintln!("  messages: done");
}

fn ack(my: MyCpu<'_>, src: usize, seq: usize) {
    let t = my.id().index();
    ACK[t * MAX_CPUS + src].store(seq as u64, Ordering::Release);
    IPI_ACKS[t].fetch_add(1, Ordering::Relaxed);
}

/// Print the per-CPU report and check every count; true if all hold.
pub(crate) fn report(cpus: &[Cpu], pcpu: &[PerCpu], gs_ok: &[AtomicBool]) -> bool {
    let n = cpus.len();
    let r = ROUNDS.load(Ordering::Relaxed);
    let want = [
        ("yields", &YIELDS, 2 * r),
        ("handoffs", &HANDOFFS, 2 * r),
        ("ipi-acks", &IPI_ACKS, (n as u64 - 1) * HANDSHAKES),
        ("cpusync", &SYNCS, r),
        ("token", &TOKEN_INCS, 2 * r),
        ("msgs", &MSGS, r),
    ];
    let mut ok = true;
    crate::kprintln!(
        "cpu  apic  gs-base            gs  switches  ipis-run  yields  handoffs  ipi-acks  cpusync  token  msgs"
    );
    for (i, c) in cpus.iter().enumerate() {
        let s = c.stats();
        let gs = gs_ok[i].load(Ordering::Relaxed);
        crate::kprint!(
            "{i:>3}  {:>4}  {:#018x}  {}  {:>8}  {:>8}",
            pcpu[i].apic_id().map_or(-1, i64::from),
            &pcpu[i] as *const PerCpu as usize,
            if gs { "ok" } else { "NO" },
            s.switches,
            s.ipis_received
        );
        for (name, counts, expect) in &want {
            let got = counts[i].load(Ordering::Relaxed);
            let w = name.len().max(6);
            crate::kprint!("  {got:>w$}");
            if got != *expect {
                ok = false;
                crate::kprint!(" (want {expect})");
            }
        }
        crate::kprintln!("");
        ok &= gs && s.switches > 0 && (n == 1 || s.ipis_received > 0);
    }
    let total = FINAL_TOTAL.load(Ordering::Relaxed);
    let expect = 2 * n as u64 * r;
    crate::kprintln!("token-protected counter: {total} (want {expect})");
    ok && total == expect
}
