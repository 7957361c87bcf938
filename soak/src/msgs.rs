//! Servers on every vCPU and sendmsg/domsg clients sending to the others,
//! with every message counted where it is sent, served and replied.

use core::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lwkt_core::{Cur, ThreadHandle};
use lwkt_msg::{Incoming, Msg, Port};

use crate::{fail, spawn, Inject, Soak};

/// The two kinds of client on each vCPU.
const SENDMSG: usize = 0;
const DOMSG: usize = 1;
const KINDS: [&str; 2] = ["sendmsg", "domsg"];

/// Not served yet.
const NOBODY: u32 = u32::MAX;

/// A request's body: who sent it, for whom, and what the server did.
#[derive(Debug, Clone, Copy)]
struct Req {
    /// `2 * cpu + kind` of the sending client.
    client: u32,
    /// The client's sequence number of this send.
    seq: u64,
    /// The CPU whose server it was sent to.
    target: u32,
    /// The CPU whose server served it.
    served_by: u32,
    /// How many times a server took it (exactly once per send).
    serves: u32,
    /// Stop the server (sent once per server at the end).
    quit: bool,
}

impl Req {
    fn new(client: usize, seq: u64, target: usize) -> Req {
        Req {
            client: client as u32,
            seq,
            target: target as u32,
            served_by: NOBODY,
            serves: 0,
            quit: false,
        }
    }
}

/// Per (client, server) counts, each written by one thread only.
pub(crate) struct Counts {
    ports: Vec<OnceLock<&'static Port<Req>>>,
    sent: Vec<AtomicU64>,
    served: Vec<AtomicU64>,
    replied: Vec<AtomicU64>,
}

impl Counts {
    pub(crate) fn new(n: usize) -> Counts {
        let cells = |k| (0..k).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Counts {
            ports: (0..n).map(|_| OnceLock::new()).collect(),
            sent: cells(2 * n * n),
            served: cells(2 * n * n),
            replied: cells(2 * n * n),
        }
    }

    fn bump(v: &[AtomicU64], n: usize, client: usize, server: usize) {
        v[client * n + server].fetch_add(1, Ordering::Relaxed);
    }

    /// Every server's port, once all have started.
    fn ports(&self, cur: &mut Cur) -> Vec<&'static Port<Req>> {
        self.ports
            .iter()
            .map(|p| loop {
                if let Some(p) = p.get() {
                    break *p;
                }
                cur.yield_now();
            })
            .collect()
    }
}

/// The server message `k` of a client on `cpu` goes to: the other CPUs in
/// turn (the same CPU on a one-CPU machine).
fn target(n: usize, cpu: usize, k: u64) -> usize {
    if n == 1 {
        return 0;
    }
    (cpu + 1 + (k % (n as u64 - 1)) as usize) % n
}

/// Check a replied message against what was sent.
fn check_reply(who: &str, b: &Req, client: usize, seq: u64) {
    if b.client as usize != client || b.seq != seq {
        fail(format_args!(
            "{who}: a reply carries client {} seq {}, expected client {client} seq {seq} (misdirected)",
            b.client, b.seq
        ));
    }
    if b.serves != 1 {
        fail(format_args!(
            "{who}: message seq {seq} to cpu {} was served {} times (lost or duplicated)",
            b.target, b.serves
        ));
    }
    if b.served_by != b.target {
        fail(format_args!(
            "{who}: message seq {seq} sent to cpu {} was served by cpu {} (misdirected)",
            b.target, b.served_by
        ));
    }
}

/// One server per vCPU on its own thread port.
pub(crate) fn start_servers(cur: &mut Cur, s: &Arc<Soak>) -> Vec<ThreadHandle> {
    (0..s.n)
        .map(|c| {
            let s = s.clone();
            let w = s.workers.add(format!("server cpu {c}"), true);
            spawn(cur, c, w.name().to_owned(), move |me| {
                let port = Port::thread(me).leak();
                if s.msgs.ports[c].set(port).is_err() {
                    fail(format_args!("two servers for cpu {c}"));
                }
                let mut served = 0u64;
                loop {
                    let mut h = match port.waitport(me) {
                        Incoming::Request(h) => h,
                        Incoming::Reply(_) => fail(format_args!(
                            "server cpu {c}: a reply arrived at a server port (misdirected)"
                        )),
                        Incoming::Closed => fail(format_args!("server cpu {c}: its port closed")),
                    };
                    if me.cpu_id().index() != c {
                        fail(format_args!(
                            "server cpu {c} runs on cpu {}",
                            me.cpu_id().index()
                        ));
                    }
                    if h.quit {
                        h.reply(me.my_cpu(), Ok(()));
                        break;
                    }
                    if h.target as usize != c {
                        fail(format_args!(
                            "server cpu {c}: took a message meant for cpu {} (client {}, seq {}): misdirected",
                            h.target, h.client, h.seq
                        ));
                    }
                    if h.client as usize >= 2 * s.n {
                        fail(format_args!(
                            "server cpu {c}: a message from client {}, who does not exist",
                            h.client
                        ));
                    }
                    if h.serves != 0 || h.served_by != NOBODY {
                        fail(format_args!(
                            "server cpu {c}: client {} seq {} arrived again (served {} times before, by cpu {}): duplicated",
                            h.client, h.seq, h.serves, h.served_by
                        ));
                    }
                    served += 1;
                    if c == 0 && s.inject(Inject::Lose, served) {
                        core::mem::forget(h);
                        continue;
                    }
                    h.serves += 1;
                    h.served_by = c as u32;
                    Counts::bump(&s.msgs.served, s.n, h.client as usize, c);
                    if c == 0 && s.inject(Inject::Duplicate, served) {
                        Counts::bump(&s.msgs.served, s.n, h.client as usize, c);
                    }
                    w.tick();
                    h.reply(me.my_cpu(), Ok(()));
                }
                port.close(me);
                w.done();
            })
        })
        .collect()
}

/// A sendmsg and a domsg client per vCPU.
pub(crate) fn start_clients(cur: &mut Cur, s: &Arc<Soak>) -> Vec<ThreadHandle> {
    let mut v = Vec::new();
    for c in 0..s.n {
        for kind in [SENDMSG, DOMSG] {
            let s = s.clone();
            let w = s
                .workers
                .add(format!("{} client cpu {c}", KINDS[kind]), false);
            v.push(spawn(cur, c, w.name().to_owned(), move |me| {
                let ports = s.msgs.ports(me);
                let client = 2 * c + kind;
                if kind == SENDMSG {
                    sendmsg_client(me, &s, &ports, c, client, &|| w.tick());
                } else {
                    domsg_client(me, &s, &ports, c, client, &|| w.tick());
                }
                w.done();
            }));
        }
    }
    v
}

/// Keep `s.window` messages in flight until the deadline, then collect
/// every reply.
fn sendmsg_client(
    me: &mut Cur,
    s: &Soak,
    ports: &[&'static Port<Req>],
    cpu: usize,
    client: usize,
    tick: &dyn Fn(),
) {
    let who = format!("sendmsg client cpu {cpu}");
    let replies: &'static Port<Req> = Port::thread(me).leak();
    let mut slots: Vec<Pin<Box<Msg<Req>>>> = (0..s.window)
        .map(|_| Box::pin(Msg::with_reply_port(replies, Req::new(client, 0, 0))))
        .collect();
    // The sequence number each slot's message carries while in flight.
    let mut in_flight: Vec<Option<u64>> = vec![None; s.window];
    let mut seq = 0u64;
    let send = |me: &mut Cur, slot: &mut Pin<Box<Msg<Req>>>, seq: u64| {
        let t = target(s.n, cpu, seq);
        *slot.as_mut().body_mut() = Req::new(client, seq, t);
        Counts::bump(&s.msgs.sent, s.n, client, t);
        let to = if cpu == 0 && s.inject(Inject::Misdirect, seq) {
            (t + 1) % s.n
        } else {
            t
        };
        ports[to].sendmsg(me.my_cpu(), slot.as_mut());
    };
    for (slot, f) in slots.iter_mut().zip(in_flight.iter_mut()) {
        send(me, slot, seq);
        *f = Some(seq);
        seq += 1;
    }
    let mut outstanding = s.window;
    while outstanding > 0 {
        let r = match replies.waitport(me) {
            Incoming::Reply(r) => r,
            Incoming::Request(h) => fail(format_args!(
                "{who}: a request (client {}, seq {}) arrived at a reply port (misdirected)",
                h.client, h.seq
            )),
            Incoming::Closed => fail(format_args!("{who}: its reply port closed")),
        };
        let Some(i) = slots.iter().position(|m| r.is(m)) else {
            fail(format_args!(
                "{who}: a reply to a message that is not ours (misdirected)"
            ));
        };
        let Some(sq) = in_flight[i].take() else {
            fail(format_args!(
                "{who}: a second reply to the message in slot {i} (duplicated)"
            ));
        };
        if let Err(e) = r.result() {
            fail(format_args!("{who}: seq {sq} replied with an error: {e:?}"));
        }
        let b = *slots[i].body();
        check_reply(&who, &b, client, sq);
        Counts::bump(&s.msgs.replied, s.n, client, b.target as usize);
        tick();
        outstanding -= 1;
        if !s.over() {
            send(me, &mut slots[i], seq);
            in_flight[i] = Some(seq);
            seq += 1;
            outstanding += 1;
        }
    }
    replies.close(me);
}

/// One synchronous message at a time until the deadline.
fn domsg_client(
    me: &mut Cur,
    s: &Soak,
    ports: &[&'static Port<Req>],
    cpu: usize,
    client: usize,
    tick: &dyn Fn(),
) {
    let who = format!("domsg client cpu {cpu}");
    let mut m = pin!(Msg::new(Req::new(client, 0, 0)));
    let mut seq = 0u64;
    while !s.over() {
        let t = target(s.n, cpu, seq);
        *m.as_mut().body_mut() = Req::new(client, seq, t);
        Counts::bump(&s.msgs.sent, s.n, client, t);
        if let Err(e) = ports[t].domsg(me, m.as_mut()) {
            fail(format_args!(
                "{who}: seq {seq} replied with an error: {e:?}"
            ));
        }
        check_reply(&who, m.body(), client, seq);
        Counts::bump(&s.msgs.replied, s.n, client, t);
        tick();
        seq += 1;
    }
}

/// Stop every server (after every client is done) and wait for them.
pub(crate) fn stop_servers(cur: &mut Cur, s: &Soak, servers: &[ThreadHandle]) {
    let ports = s.msgs.ports(cur);
    for (c, p) in ports.iter().enumerate() {
        let mut q = pin!(Msg::new(Req {
            quit: true,
            ..Req::new(0, 0, c)
        }));
        if let Err(e) = p.domsg(cur, q.as_mut()) {
            fail(format_args!("stopping server cpu {c}: {e:?}"));
        }
    }
    for h in servers {
        cur.join(h);
    }
}

/// The message totals, after the machine has stopped.
pub(crate) struct Totals {
    /// By client kind (sendmsg, domsg).
    pub(crate) sent: [u64; 2],
    pub(crate) replied: [u64; 2],
    pub(crate) served_per_cpu: Vec<u64>,
}

/// Conservation: per (client, server), sent = served = replied.
pub(crate) fn check(s: &Soak) -> Totals {
    let n = s.n;
    let m = &s.msgs;
    let get = |v: &[AtomicU64], i: usize| v[i].load(Ordering::Relaxed);
    let mut t = Totals {
        sent: [0; 2],
        replied: [0; 2],
        served_per_cpu: vec![0; n],
    };
    for client in 0..2 * n {
        for server in 0..n {
            let i = client * n + server;
            let (sent, served, replied) = (get(&m.sent, i), get(&m.served, i), get(&m.replied, i));
            if sent != served || sent != replied {
                fail(format_args!(
                    "{} client cpu {} to server cpu {server}: {sent} sent, {served} served, {replied} replied",
                    KINDS[client % 2],
                    client / 2
                ));
            }
            t.sent[client % 2] += sent;
            t.replied[client % 2] += replied;
            t.served_per_cpu[server] += served;
        }
    }
    if t.sent.contains(&0) {
        fail(format_args!(
            "a kind of client sent nothing (sendmsg {}, domsg {})",
            t.sent[0], t.sent[1]
        ));
    }
    t
}
