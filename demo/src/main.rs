//! The lwkt demo: boots the hosted backend with one virtual CPU per host
//! core (or `--cpus N`), runs three workloads across the CPUs, and prints
//! what each CPU did.
//!
//! - ping-pong: pairs of threads on neighbouring CPUs hand a turn back and
//!   forth with sleep/wakeup (each hand-off is an IPI to the other CPU);
//! - fan-out: one thread sends batches of work to every CPU as IPI messages
//!   and collects the results with `cpusync`;
//! - switch: threads on every CPU yield to each other (same-CPU switches);
//! - messages: clients on every CPU call a server port on the next CPU,
//!   synchronously (`domsg`) and from async code (`call` + `block_on`);
//! - timers: threads on every CPU sleep 1 ms again and again
//!   (`Cur::sleep_for`); how late they woke, beside `std::thread::sleep`;
//! - interrupts: a device interrupt raised on the next CPU, whose
//!   interrupt thread preempts a busy thread there; the round trip, beside
//!   a signal handler waking a parked OS thread;
//! - network: generated TCP and UDP flows (or a pcap or pcapng capture)
//!   dispatched by connection hash to per-CPU protocol threads, next to the
//!   same packets through a table with per-bucket mutexes and one with a global mutex.

mod interrupts;
mod messages;
mod timers;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, CpuMask, Cur, IpiMsg, MyCpu};
use lwkt_demo::net;

const USAGE: &str =
    "usage: lwkt-demo [--cpus N] [--host-threads N] [--rounds N] [--flows N] [--pcap FILE]
  --cpus N     virtual CPUs (default: one per host core; may exceed them)
  --host-threads N
               host threads that run the vCPUs (default: one per vCPU, or one
               per host core when the vCPUs outnumber the cores: then several
               vCPUs share a host thread and switch in user space)
  --rounds N   hand-offs per ping-pong pair and work items per CPU (default 20000)
  --flows N    generated connections for the network workload (default 6000:
               two thirds TCP-like, one third UDP; fixed seed)
  --pcap FILE  replay an Ethernet capture (pcap or pcapng) instead of generated
               flows; a cut last record (a capture stopped mid-write) is left
               out with a warning, records longer than the snapshot length
               are counted as malformed (over-snaplen) and not replayed";

struct Opts {
    cpus: usize,
    host_threads: Option<usize>,
    rounds: u64,
    flows: u64,
    pcap: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get()),
        host_threads: None,
        rounds: 20_000,
        flows: 6_000,
        pcap: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse::<u64>()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match a.as_str() {
            "--cpus" => o.cpus = num("--cpus")? as usize,
            "--host-threads" => o.host_threads = Some(num("--host-threads")? as usize),
            "--rounds" => o.rounds = num("--rounds")?,
            "--flows" => o.flows = num("--flows")?,
            "--pcap" => o.pcap = Some(it.next().ok_or("--pcap needs a file")?.clone()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if o.cpus == 0 {
        return Err("--cpus 0: a machine needs at least 1 CPU".into());
    }
    if o.host_threads == Some(0) {
        return Err("--host-threads 0: the vCPUs need at least 1 host thread".into());
    }
    if o.rounds == 0 {
        return Err("--rounds 0: nothing to run".into());
    }
    if o.flows == 0 {
        return Err("--flows 0: nothing to run".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("lwkt-demo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (frames, over_snaplen) = match &o.pcap {
        Some(path) => match net::read_capture(path) {
            Ok(c) => {
                warn_capture(path, &c);
                (c.frames, c.over_snaplen.len() as u64)
            }
            Err(e) => {
                eprintln!("lwkt-demo: {e}");
                return ExitCode::from(2);
            }
        },
        None => (
            net::generated(0x1e47, (o.flows * 2 / 3) as usize, (o.flows / 3) as usize),
            0,
        ),
    };
    let frames = Arc::new(frames);
    let hosts = o
        .host_threads
        .unwrap_or(o.cpus.min(lwkt_arch_hosted::host_cores()))
        .min(o.cpus);
    let machine = match Machine::new(o.cpus) {
        Ok(m) => m.host_threads(hosts),
        Err(e) => {
            eprintln!("lwkt-demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "lwkt demo: {} virtual CPUs on {} host cores, {} rounds",
        o.cpus,
        host_cores(),
        o.rounds
    );
    if hosts < o.cpus {
        println!(
            "  (M:N: {} vCPUs on {hosts} host threads, switched in user space; a thread that spins \
             without calling lwkt would starve the other vCPUs of its host thread)",
            o.cpus
        );
    }
    let ((lines, net_ok), report) = machine.run_with_report(|cur| {
        let mut lines = vec![
            ping_pong(cur, o.rounds),
            fan_out(cur, o.rounds),
            switches(cur, o.rounds),
            messages::messages(cur, o.rounds),
            timers::timers(cur),
            interrupts::interrupts(cur),
        ];
        let (net_lines, ok) = net::report(cur, frames, over_snaplen);
        lines.extend(net_lines);
        (lines, ok)
    });
    for l in lines {
        println!("  {l}");
    }
    println!();
    println!("{report}");
    if !net_ok {
        eprintln!("lwkt-demo: a connection was handled on two CPUs, or the designs disagree");
        return ExitCode::FAILURE;
    }
    if report.leaked_threads != 0 {
        eprintln!("lwkt-demo: {} threads never exited", report.leaked_threads);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Say on stderr what was wrong with a capture that can still be replayed:
/// its cut last record and its records over the snapshot length (the first
/// few by number: a capture can have thousands).
fn warn_capture(path: &str, c: &net::Capture) {
    const SHOWN: usize = 10;
    for o in c.over_snaplen.iter().take(SHOWN) {
        eprintln!("lwkt-demo: {path}: {o}");
    }
    if c.over_snaplen.len() > SHOWN {
        eprintln!(
            "lwkt-demo: {path}: {} more records over the snapshot length, not replayed",
            c.over_snaplen.len() - SHOWN
        );
    }
    if let Some(cut) = &c.cut {
        eprintln!("lwkt-demo: warning: {path}: {cut}");
    }
}

fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pairs (i, i+1 mod n) hand a turn counter back and forth.
fn ping_pong(cur: &mut Cur, rounds: u64) -> String {
    let n = cur.my_cpu().ncpus() as u32;
    let start = Instant::now();
    let mut hs = Vec::new();
    for i in 0..n {
        let turn = Arc::new(AtomicU64::new(0));
        for side in 0..2u64 {
            let turn = turn.clone();
            let c = if side == 0 { i } else { (i + 1) % n };
            hs.push(
                cur.builder()
                    .cpu(CpuId::new(c))
                    .name("ping-pong")
                    .spawn(move |me| {
                        let chan = Arc::as_ptr(&turn) as usize;
                        for r in 0..rounds {
                            let mine = 2 * r + side;
                            me.sleep_until(chan, || turn.load(Ordering::SeqCst) == mine);
                            turn.store(mine + 1, Ordering::SeqCst);
                            me.my_cpu().wakeup(chan);
                        }
                    })
                    .expect("spawn"),
            );
        }
    }
    for h in &hs {
        cur.join(h);
    }
    let secs = start.elapsed().as_secs_f64();
    let handoffs = 2 * rounds * u64::from(n);
    format!(
        "ping-pong: {n} pairs, {handoffs} hand-offs in {secs:.3} s ({:.0} ns each, cross-CPU when n > 1)",
        secs * 1e9 / handoffs as f64
    )
}

static FAN_SUM: [AtomicU64; lwkt_core::MAX_CPUS] =
    [const { AtomicU64::new(0) }; lwkt_core::MAX_CPUS];

fn work(my: MyCpu<'_>, a: usize, _: usize) {
    // Owned by this CPU: a plain load and store.
    let s = &FAN_SUM[my.id().index()];
    s.store(s.load(Ordering::Relaxed) + a as u64, Ordering::Relaxed);
}

/// One thread sends `rounds` work items to every CPU in batches of 64, then
/// a cpusync collects the per-CPU sums.
fn fan_out(cur: &mut Cur, rounds: u64) -> String {
    let n = cur.my_cpu().ncpus();
    for s in &FAN_SUM {
        s.store(0, Ordering::Relaxed);
    }
    let start = Instant::now();
    let mut batch = Vec::with_capacity(64);
    let mut item = 0u64;
    while item < rounds {
        let k = 64.min(rounds - item);
        for c in 0..n {
            batch.clear();
            batch.extend((0..k).map(|j| IpiMsg {
                func: work,
                arg1: (item + j) as usize,
                arg2: 0,
            }));
            cur.my_cpu()
                .send_ipi_batch(CpuId::new(c as u32), &batch)
                .expect("send");
        }
        item += k;
    }
    let total = AtomicU64::new(0);
    cur.cpusync(CpuMask::all(n), &|my| {
        total.fetch_add(
            FAN_SUM[my.id().index()].load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    });
    let secs = start.elapsed().as_secs_f64();
    let expect = n as u64 * rounds * (rounds - 1) / 2;
    let got = total.load(Ordering::Relaxed);
    assert_eq!(got, expect, "fan-out lost or repeated work");
    format!(
        "fan-out: {} messages to {n} CPUs in {secs:.3} s ({:.1} M msg/s), sums check out",
        n as u64 * rounds,
        (n as u64 * rounds) as f64 / secs / 1e6
    )
}

/// Four threads per CPU yield to each other.
fn switches(cur: &mut Cur, rounds: u64) -> String {
    let n = cur.my_cpu().ncpus() as u32;
    let start = Instant::now();
    let hs: Vec<_> = (0..4 * n)
        .map(|i| {
            cur.builder()
                .cpu(CpuId::new(i % n))
                .name("yielder")
                .spawn(move |me| {
                    for _ in 0..rounds {
                        me.yield_now();
                    }
                })
                .expect("spawn")
        })
        .collect();
    for h in &hs {
        cur.join(h);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = 4 * u64::from(n) * rounds;
    format!(
        "switch: {total} yields by {} threads in {secs:.3} s ({:.1} ns per yield+switch, per CPU)",
        4 * n,
        secs * 1e9 * f64::from(n) / total as f64
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn refuses_zero_cpus_and_bad_options() {
        assert_eq!(
            parse(&args("--cpus 0")).err().unwrap(),
            "--cpus 0: a machine needs at least 1 CPU"
        );
        assert!(parse(&args("--cpus x"))
            .err()
            .unwrap()
            .contains("not a whole number"));
        assert!(parse(&args("--frob"))
            .err()
            .unwrap()
            .contains("unknown option '--frob'"));
        let o = parse(&args("--cpus 8 --rounds 10 --flows 7 --pcap x.pcap")).unwrap();
        assert_eq!((o.cpus, o.rounds, o.flows), (8, 10, 7));
        assert_eq!(o.pcap.as_deref(), Some("x.pcap"));
        assert!(parse(&args("--pcap"))
            .err()
            .unwrap()
            .contains("needs a file"));
        assert!(parse(&args("--flows 0")).is_err());
    }
}
