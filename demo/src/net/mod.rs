//! The network workload: packets (generated, or read from a pcap or pcapng
//! capture by [`read_capture`]) go
//! through the connection-hash dispatcher into per-CPU protocol threads
//! that keep per-connection state with no lock; for comparison, the same
//! packets go through one shared connection table with per-bucket mutexes
//! (the fine-grained locking design) and through one global mutex.
//!
//! The benches (`cargo bench --bench netdispatch`) run these same three
//! functions.

mod capture;
mod gen;

use core::pin::Pin;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lwkt_core::{CpuId, Cur};
use lwkt_msg::{Incoming, Msg, Port};
use lwkt_netdispatch::classify::Counters;
use lwkt_netdispatch::netisr::{spawn_protocol_threads, Batch};
use lwkt_netdispatch::registry::{ProtoId, Registry};
use lwkt_netdispatch::{Dispatcher, Flow};

pub use capture::{read_capture, Capture, Cut, Format, OverSnaplen};
pub use gen::packets as generated;
pub use gen::Rng;

/// Packets per batch message (cohort scheduling: one wake-up per batch).
pub const BATCH: usize = 256;
/// Batch messages a receive thread keeps in flight per target CPU.
const POOL: usize = 8;
/// Buckets (each with its own mutex) of the fine-grained locking design.
pub const BUCKETS: usize = 256;
/// The protocol number the workload registers.
const PROTO: ProtoId = ProtoId(0);

/// What a receive thread tells a protocol thread about one packet.
#[derive(Clone, Copy, Default)]
struct Desc {
    /// The flow (both directions share the canonical form), if any.
    flow: Option<Flow>,
    len: u16,
}

/// Messages to the protocol threads: the bottom half's packet batches and
/// the top half's connection requests. The batch is inline on purpose: a
/// receive thread reuses its few messages, so nothing is allocated per
/// batch.
#[allow(clippy::large_enum_variant)]
enum NetMsg {
    Packets(Batch<Desc, BATCH>),
    Request { op: Op, flow: Flow },
}

/// A top-half request on a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Open,
    Send,
    Close,
}

/// Per-connection state, in the table of the one CPU that owns it.
#[derive(Default, Clone, Copy)]
struct Conn {
    packets: u64,
    bytes: u64,
    requests: u64,
    open: bool,
}

/// What a run of a design found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Seconds the packets took (the top half is not included).
    pub secs: f64,
    /// Packets each CPU (protocol thread or OS thread) handled.
    pub per_cpu: Vec<u64>,
    /// Frames by kind.
    pub counters: Counters,
    /// Connections in the tables at the end.
    pub connections: usize,
    /// Top-half requests served.
    pub requests: u64,
    /// Whether no connection was found in two CPUs' tables.
    pub flows_on_one_cpu: bool,
    /// Synchronisation events of the packet phase, counted (not sampled).
    pub events: Events,
}

/// Synchronisation events a design used for its packets, counted: the
/// inputs of the cost model in `docs/benchmarks.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Batch messages sent to a protocol thread on another CPU.
    pub remote_messages: u64,
    /// Batch messages to the protocol thread on the sender's own CPU.
    pub local_messages: u64,
    /// IPI messages queued between CPUs (lwkt-core's counters: a remote
    /// message and its reply each take one).
    pub ipis: u64,
    /// Hardware IPIs (kicks) sent.
    pub kicks: u64,
    /// Mutex acquisitions (the locking designs: one per packet with a flow).
    pub lock_acquisitions: u64,
}

impl Outcome {
    /// Packets per second.
    pub fn rate(&self) -> f64 {
        self.counters.total() as f64 / self.secs
    }
}

/// The LWKT design on the machine of `cur`: one receive thread per CPU (a
/// NIC queue each, taking every n-th frame) classifies and hashes each
/// frame and batches it to the protocol thread of the flow's CPU, which
/// updates its own connection table with no lock. Then, if `top_half`,
/// user threads on every CPU open, use and close connections by `domsg`
/// to the same CPUs (asserted there).
pub fn lwkt(cur: &mut Cur, frames: Arc<Vec<Vec<u8>>>, top_half: bool) -> Outcome {
    let n = cur.my_cpu().ncpus();
    let disp = Arc::new(Dispatcher::new(n).expect("CPU count"));
    let tables: Arc<Mutex<Vec<Served>>> = Arc::default();

    // The protocol: one thread per CPU with its own connection table.
    let threads = {
        let (tables, disp) = (tables.clone(), disp.clone());
        spawn_protocol_threads::<NetMsg, _>(cur, n, "netisr", move |me, port, cpu| {
            let served = serve(me, port, cpu, &disp);
            tables.lock().unwrap().push(served);
        })
        .expect("protocol threads")
    };
    let mut reg = Registry::new(n);
    reg.register(PROTO, "conn", &threads.ports, Dispatcher::cpu_of)
        .expect("register");
    let reg = Arc::new(reg);

    // Bottom half.
    let rx_counters: Arc<Mutex<(Counters, Events)>> = Arc::default();
    let stats = |cur: &Cur| -> (u64, u64) {
        (0..n)
            .filter_map(|c| cur.my_cpu().cpu_stats(CpuId::new(c as u32)))
            .fold((0, 0), |(i, k), s| (i + s.ipis_sent, k + s.kicks_sent))
    };
    let before = stats(cur);
    let start = Instant::now();
    let rx: Vec<_> = (0..n)
        .map(|q| {
            let (frames, disp, reg) = (frames.clone(), disp.clone(), reg.clone());
            let all = rx_counters.clone();
            cur.builder()
                .cpu(CpuId::new(q as u32))
                .name("rx")
                .spawn(move |me| {
                    let (c, e) = receive(me, q, n, &frames, &disp, &reg);
                    let mut all = all.lock().unwrap();
                    all.0.merge(&c);
                    all.1.remote_messages += e.remote_messages;
                    all.1.local_messages += e.local_messages;
                })
                .expect("rx thread")
        })
        .collect();
    for t in &rx {
        cur.join(t);
    }
    let secs = start.elapsed().as_secs_f64();
    let after = stats(cur);
    let (counters, mut events) = *rx_counters.lock().unwrap();
    events.ipis = after.0 - before.0;
    events.kicks = after.1 - before.1;

    // Top half: requests for some connections, from threads on every CPU,
    // to the CPUs their packets went to.
    let mut requests = 0;
    if top_half {
        let mut flows: Vec<Flow> = frames
            .iter()
            .filter_map(|f| disp.route(f).flow())
            .map(|f| f.canonical())
            .collect();
        flows.sort();
        flows.dedup();
        flows.truncate(256);
        let flows = Arc::new(flows);
        requests = flows.len() as u64 * 4;
        let users: Vec<_> = (0..n)
            .map(|c| {
                let (flows, disp, reg) = (flows.clone(), disp.clone(), reg.clone());
                cur.builder()
                    .cpu(CpuId::new(c as u32))
                    .name("user")
                    .spawn(move |me| user(me, c, n, &flows, &disp, &reg))
                    .expect("user thread")
            })
            .collect();
        for t in &users {
            cur.join(t);
        }
    }
    threads.shutdown(cur);

    let tables = std::mem::take(&mut *tables.lock().unwrap());
    let mut per_cpu = vec![0; n];
    let mut owner: HashMap<Flow, usize> = HashMap::new();
    let mut one_cpu = true;
    for t in &tables {
        per_cpu[t.cpu] += t.other;
        for (f, c) in &t.conns {
            per_cpu[t.cpu] += c.packets;
            one_cpu &= owner.insert(*f, t.cpu).is_none();
        }
    }
    Outcome {
        secs,
        per_cpu,
        counters,
        connections: owner.len(),
        requests,
        flows_on_one_cpu: one_cpu,
        events,
    }
}

/// What a protocol thread leaves when its port closes.
struct Served {
    cpu: usize,
    /// Its connection table.
    conns: HashMap<Flow, Conn>,
    /// Packets without a flow it handled.
    other: u64,
}

/// A protocol thread: take batches and requests until the port closes.
fn serve(me: &mut Cur, port: &'static Port<NetMsg>, cpu: usize, disp: &Dispatcher) -> Served {
    let mut conns: HashMap<Flow, Conn> = HashMap::new();
    let mut other = 0;
    loop {
        match port.waitport(me) {
            Incoming::Request(m) => {
                match &*m {
                    NetMsg::Packets(batch) => {
                        for d in batch.as_slice() {
                            let Some(f) = d.flow else {
                                other += 1;
                                continue;
                            };
                            debug_assert_eq!(disp.cpu_of_flow(&f), cpu, "packet on the wrong CPU");
                            let c = conns.entry(f).or_default();
                            c.packets += 1;
                            c.bytes += u64::from(d.len);
                        }
                    }
                    NetMsg::Request { op, flow } => {
                        assert_eq!(disp.cpu_of_flow(flow), cpu, "request on the wrong CPU");
                        let c = conns.entry(*flow).or_default();
                        c.requests += 1;
                        match op {
                            Op::Open => c.open = true,
                            Op::Send => assert!(c.open, "send on a connection that is not open"),
                            Op::Close => c.open = false,
                        }
                    }
                }
                m.reply(me.my_cpu(), Ok(()));
            }
            Incoming::Closed => return Served { cpu, conns, other },
            Incoming::Reply(_) => unreachable!("no replies come to a protocol port"),
        }
    }
}

/// A receive queue: classify every `n`-th frame from `q`, stage it for its
/// CPU, send full stages (and the rest at the end); return the frames
/// counted by kind and the batches sent.
fn receive(
    me: &mut Cur,
    q: usize,
    n: usize,
    frames: &[Vec<u8>],
    disp: &Dispatcher,
    reg: &Registry<NetMsg>,
) -> (Counters, Events) {
    let mut pools: Vec<Vec<Pin<Box<Msg<NetMsg>>>>> = (0..n)
        .map(|_| {
            (0..POOL)
                .map(|_| Box::pin(Msg::new(NetMsg::Packets(Batch::new()))))
                .collect()
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut stage: Vec<Batch<Desc, BATCH>> = vec![Batch::new(); n];
    let mut counters = Counters::default();
    let mut events = Events::default();
    let mut send = |me: &mut Cur, cpu: usize, b: &mut Batch<Desc, BATCH>| {
        if cpu == q {
            events.local_messages += 1;
        } else {
            events.remote_messages += 1;
        }
        let m = &mut pools[cpu][next[cpu]];
        next[cpu] = (next[cpu] + 1) % POOL;
        if !m.is_done() {
            m.as_mut().wait(me).expect("served");
        }
        *m.as_mut().body_mut() = NetMsg::Packets(*b);
        b.clear();
        reg.port(PROTO, cpu)
            .expect("registered")
            .sendmsg(me.my_cpu(), m.as_mut());
    };
    for f in frames.iter().skip(q).step_by(n) {
        // Each frame in a critical section, as a driver's receive path
        // runs: its exit is where a kick from another CPU is noticed (IPIs
        // queued meanwhile run there), so none needs an interrupt.
        let full = me.my_cpu().crit(|| {
            let r = disp.route(f);
            counters.record(r.class.kind());
            let cpu = r.cpu?; // malformed: counted, dropped
            let d = Desc {
                flow: r.flow().map(|f| f.canonical()),
                len: f.len().min(usize::from(u16::MAX)) as u16,
            };
            let _ = stage[cpu].push(d);
            stage[cpu].is_full().then_some(cpu)
        });
        if let Some(cpu) = full {
            send(me, cpu, &mut stage[cpu]);
        }
    }
    for (cpu, s) in stage.iter_mut().enumerate() {
        if !s.is_empty() {
            send(me, cpu, s);
        }
    }
    for m in pools.iter_mut().flatten() {
        if !m.is_done() {
            m.as_mut().wait(me).expect("served");
        }
    }
    (counters, events)
}

/// A user thread: open, send twice and close every `n`-th connection from
/// `c`, each request a `domsg` to the connection's CPU.
fn user(
    me: &mut Cur,
    c: usize,
    n: usize,
    flows: &[Flow],
    disp: &Dispatcher,
    reg: &Registry<NetMsg>,
) {
    let Some(first) = flows.first() else { return };
    let mut m = core::pin::pin!(Msg::new(NetMsg::Request {
        op: Op::Open,
        flow: *first,
    }));
    for f in flows.iter().skip(c).step_by(n) {
        let (_, port) = reg
            .dispatch(PROTO, disp, &lwkt_netdispatch::classify::Class::Flow(*f))
            .expect("dispatch");
        for op in [Op::Open, Op::Send, Op::Send, Op::Close] {
            *m.as_mut().body_mut() = NetMsg::Request { op, flow: *f };
            port.domsg(me, m.as_mut()).expect("served");
        }
    }
}

/// The fine-grained locking design: `n` OS threads take every n-th frame,
/// classify and hash it, and update one shared connection table split into
/// [`BUCKETS`] buckets, each under its own mutex.
pub fn sharded(n: usize, frames: &Arc<Vec<Vec<u8>>>) -> Outcome {
    let buckets: Arc<Vec<Mutex<HashMap<Flow, Conn>>>> =
        Arc::new((0..BUCKETS).map(|_| Mutex::default()).collect());
    let disp = Arc::new(Dispatcher::new(n).expect("CPU count"));
    let b = buckets.clone();
    let mut o = on_os_threads(n, frames, move |flow, len| {
        let i = disp.hash_flow(&flow) as usize % BUCKETS;
        let mut t = b[i].lock().unwrap();
        let c = t.entry(flow).or_default();
        c.packets += 1;
        c.bytes += u64::from(len);
    });
    o.connections = buckets.iter().map(|b| b.lock().unwrap().len()).sum();
    o
}

/// The coarse locking design: the same, with one global mutex.
pub fn global(n: usize, frames: &Arc<Vec<Vec<u8>>>) -> Outcome {
    let table: Arc<Mutex<HashMap<Flow, Conn>>> = Arc::default();
    let t = table.clone();
    let mut o = on_os_threads(n, frames, move |flow, len| {
        let mut t = t.lock().unwrap();
        let c = t.entry(flow).or_default();
        c.packets += 1;
        c.bytes += u64::from(len);
    });
    o.connections = table.lock().unwrap().len();
    o
}

/// Run `update(canonical flow, length)` for every frame with a flow on `n`
/// OS threads (frames without one are only counted).
fn on_os_threads(
    n: usize,
    frames: &Arc<Vec<Vec<u8>>>,
    update: impl Fn(Flow, u16) + Send + Sync + 'static,
) -> Outcome {
    let disp = Arc::new(Dispatcher::new(n).expect("CPU count"));
    let update = Arc::new(update);
    let start = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|q| {
            let (frames, disp, update) = (frames.clone(), disp.clone(), update.clone());
            std::thread::spawn(move || {
                let (mut counters, mut handled, mut locks) = (Counters::default(), 0u64, 0u64);
                for f in frames.iter().skip(q).step_by(n) {
                    let r = disp.route(f);
                    counters.record(r.class.kind());
                    if let Some(flow) = r.flow() {
                        update(flow.canonical(), f.len().min(usize::from(u16::MAX)) as u16);
                        locks += 1;
                    }
                    handled += u64::from(r.cpu.is_some());
                }
                (counters, handled, locks)
            })
        })
        .collect();
    let mut o = Outcome {
        flows_on_one_cpu: true,
        ..Outcome::default()
    };
    for h in hs {
        let (c, handled, locks) = h.join().expect("worker");
        o.counters.merge(&c);
        o.per_cpu.push(handled);
        o.events.lock_acquisitions += locks;
    }
    o.secs = start.elapsed().as_secs_f64();
    o
}

/// The demo's network section: the LWKT design with the top half, then the
/// two locking designs on as many OS threads, and the lines of the report.
/// `over_snaplen` capture records were found malformed before they became
/// frames ([`Capture::over_snaplen`]): they are counted with the malformed
/// frames, as `over-snaplen`.
pub fn report(cur: &mut Cur, frames: Arc<Vec<Vec<u8>>>, over_snaplen: u64) -> (Vec<String>, bool) {
    let n = cur.my_cpu().ncpus();
    let l = lwkt(cur, frames.clone(), true);
    let s = sharded(n, &frames);
    let g = global(n, &frames);
    let total = l.counters.total();
    let share: Vec<String> = l
        .per_cpu
        .iter()
        .map(|&p| format!("{:.1}%", 100.0 * p as f64 / total.max(1) as f64))
        .collect();
    let mut kinds: Vec<String> = l
        .counters
        .nonzero()
        .map(|(k, c)| format!("{k} {c}"))
        .collect();
    if over_snaplen > 0 {
        kinds.push(format!("over-snaplen {over_snaplen}"));
    }
    let ok = l.flows_on_one_cpu && l.connections == s.connections && s.connections == g.connections;
    let lines = vec![
        format!(
            "network: {} frames ({}), {} connections, {} top-half requests",
            total + over_snaplen,
            kinds.join(", "),
            l.connections,
            l.requests
        ),
        format!("  per-CPU share of packets: {}", share.join(" / ")),
        format!(
            "  lwkt: per-CPU protocol threads, no locks     {:6.2} M packets/s",
            l.rate() / 1e6
        ),
        format!(
            "  shared table, {BUCKETS} bucket mutexes           {:6.2} M packets/s",
            s.rate() / 1e6
        ),
        format!(
            "  shared table, one global mutex             {:6.2} M packets/s",
            g.rate() / 1e6
        ),
        format!(
            "  every connection on one CPU, tables agree: {}",
            if ok { "yes" } else { "NO" }
        ),
    ];
    (lines, ok)
}
