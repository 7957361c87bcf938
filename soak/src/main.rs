//! `lwkt-soak`: a soak test with conservation counts, run by
//! `cargo xtask soak --cpus N --seconds S`.
//!
//! On a hosted machine of N vCPUs it runs, for S seconds, on every vCPU:
//!
//! - a **server** on its own thread port (`Port::thread`), which checks that
//!   every request it takes was meant for its CPU and was not served before;
//! - a **sendmsg client** keeping a window of messages in flight to the
//!   other vCPUs' servers, replies coming back to its own thread port, and a
//!   **domsg client** sending one synchronous message at a time;
//! - two **token workers** moving units between two accounts, one protected
//!   by token A and one by token B, taking them in the order A-B or B-A:
//!   the sum of the accounts never changes while both tokens are held, an
//!   exclusive holder finds no other holder in the accounts, a shared holder
//!   finds no exclusive one, and the moves are all there at the end;
//! - one side of two **sleep/wakeup** ping-pong pairs (`sleep_until` +
//!   `wakeup`) with the vCPU's neighbours, each round seen once on each side;
//! - a **cpusync** master, whose function must run exactly once on every CPU
//!   of its mask and nowhere else.
//!
//! At the end every message sent is matched with one served and one
//! replied, per (client, server) pair. Any lost, duplicated or misdirected
//! message, broken invariant or worker that stops making progress (a lost
//! message or wakeup: the watchdog) ends the program with
//! `lwkt-soak: FAIL: ...` and exit status 1. Only the crates' public safe
//! API is used, as a downstream kernel would.

mod msgs;
mod sleep;
mod sync;
mod tokens;
mod watch;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwkt_core::{CpuId, Cur, ThreadHandle};

pub(crate) use watch::{fail, Workers};

/// A fault the soak puts into its own workload, once, to show that its
/// checks catch it (`--inject`; tests/inject.rs runs each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inject {
    /// The server of CPU 0 keeps one request without replying.
    Lose,
    /// The server of CPU 0 counts one request twice.
    Duplicate,
    /// The sendmsg client of CPU 0 sends one message to a server other than
    /// the one it names.
    Misdirect,
    /// A token worker changes one account of a move and not the other.
    HalfMove,
    /// The ping thread of pair 0 takes its turns without the wakeup.
    LostWakeup,
}

impl Inject {
    const ALL: [(&'static str, Inject); 5] = [
        ("lose", Inject::Lose),
        ("duplicate", Inject::Duplicate),
        ("misdirect", Inject::Misdirect),
        ("half-move", Inject::HalfMove),
        ("lost-wakeup", Inject::LostWakeup),
    ];
}

/// Command-line options.
#[derive(Debug, Clone, Copy)]
struct Opts {
    cpus: usize,
    seconds: u64,
    window: usize,
    stall: u64,
    inject: Option<Inject>,
}

const USAGE: &str =
    "usage: lwkt-soak [--cpus N] [--seconds S] [--window W] [--stall S] [--inject FAULT]\n\
    defaults: 8 vCPUs, 10 s, 16 sendmsg messages in flight per client; a worker that makes\n\
    no progress for --stall seconds (default 20) fails the soak. --inject puts one fault into\n\
    the workload to show the checks catch it: lose, duplicate, misdirect, half-move, lost-wakeup";

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        cpus: 8,
        seconds: 10,
        window: 16,
        stall: 20,
        inject: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not a number\n{USAGE}"))
        };
        match a.as_str() {
            "--cpus" => o.cpus = value("--cpus")? as usize,
            "--seconds" => o.seconds = value("--seconds")?,
            "--window" => o.window = value("--window")? as usize,
            "--stall" => o.stall = value("--stall")?,
            "--inject" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("--inject needs a value\n{USAGE}"))?;
                let found = Inject::ALL.iter().find(|(name, _)| name == v);
                o.inject = Some(
                    found
                        .ok_or_else(|| format!("--inject: unknown fault '{v}'\n{USAGE}"))?
                        .1,
                );
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument '{a}'\n{USAGE}")),
        }
    }
    if o.cpus == 0 || o.cpus > lwkt_core::MAX_CPUS {
        return Err(format!(
            "--cpus must be 1 to {}, got {}",
            lwkt_core::MAX_CPUS,
            o.cpus
        ));
    }
    if o.window == 0 || o.stall == 0 {
        return Err("--window and --stall must be at least 1".into());
    }
    if o.inject.is_some() && o.cpus < 2 {
        return Err("--inject needs at least 2 CPUs".into());
    }
    Ok(o)
}

/// What every part of the soak shares.
pub(crate) struct Soak {
    pub(crate) n: usize,
    /// When the workers stop starting new work.
    pub(crate) deadline: Instant,
    pub(crate) window: usize,
    pub(crate) inject: Option<Inject>,
    /// Whether the `inject` fault went in: a run with a fault to put in
    /// goes on past its deadline until it did (a loaded host can keep a
    /// worker from reaching its 100th occasion in a short run), for up to
    /// `grace` more.
    pub(crate) injected: AtomicBool,
    pub(crate) grace: Duration,
    pub(crate) workers: Workers,
    pub(crate) msgs: msgs::Counts,
}

impl Soak {
    pub(crate) fn over(&self) -> bool {
        let now = Instant::now();
        now >= self.deadline
            && (self.inject.is_none()
                || self.injected.load(Ordering::Relaxed)
                || now >= self.deadline + self.grace)
    }

    /// Whether to put `fault` in at the `k`-th occasion of the worker that
    /// may: once, at k = 100; a lost wakeup from then on (a wakeup skipped
    /// while the other side is still awake is no fault).
    pub(crate) fn inject(&self, fault: Inject, k: u64) -> bool {
        let now =
            self.inject == Some(fault) && (k == 100 || (fault == Inject::LostWakeup && k > 100));
        if now {
            self.injected.store(true, Ordering::Relaxed);
        }
        now
    }
}

/// Spawn `f` on `cpu`, failing the soak if the machine refuses.
pub(crate) fn spawn(
    cur: &Cur,
    cpu: usize,
    what: String,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> ThreadHandle {
    cur.spawn_on(CpuId::new(cpu as u32), f)
        .unwrap_or_else(|e| fail(format_args!("cannot spawn {what} on cpu {cpu}: {e}")))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lwkt-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "lwkt-soak: {} vCPUs on {cores} host cores for {} s (sendmsg window {})",
        o.cpus, o.seconds, o.window
    );
    let machine = lwkt_arch_hosted::Machine::new(o.cpus)
        .unwrap_or_else(|e| fail(format_args!("cannot build the machine: {e}")));
    let n = o.cpus;
    let soak = Arc::new(Soak {
        n,
        deadline: Instant::now() + Duration::from_secs(o.seconds),
        window: o.window,
        inject: o.inject,
        injected: AtomicBool::new(false),
        grace: Duration::from_secs(o.stall),
        workers: Workers::default(),
        msgs: msgs::Counts::new(n),
    });
    // Everything must be over well after the deadline: the watchdog fails
    // a worker that stops making progress, and the whole run after this.
    let hard_limit = Duration::from_secs(o.seconds + 3 * o.stall);
    watch::start(soak.clone(), Duration::from_secs(o.stall), hard_limit);

    let s = soak.clone();
    let (totals, report) = machine.run_with_report(move |cur| {
        let servers = msgs::start_servers(cur, &s);
        let mut others: Vec<ThreadHandle> = Vec::new();
        others.extend(msgs::start_clients(cur, &s));
        let toks = tokens::start(cur, &s);
        others.extend(toks.iter().map(|(h, _)| h.clone()));
        let pairs = sleep::start(cur, &s);
        others.extend(pairs.iter().flat_map(|p| p.handles.clone()));
        let syncs = sync::start(cur, &s);
        others.extend(syncs.iter().map(|(h, _)| h.clone()));
        for h in &others {
            cur.join(h);
        }
        msgs::stop_servers(cur, &s, &servers);
        Totals {
            tokens: tokens::check(cur, &toks),
            sleep: sleep::check(&pairs),
            sync: sync::check(&syncs),
        }
    });
    soak.workers.finished();
    let m = msgs::check(&soak);
    println!(
        "messages: sendmsg {} sent, {} replied; domsg {} sent, {} replied; served per CPU: {:?}",
        m.sent[0], m.replied[0], m.sent[1], m.replied[1], m.served_per_cpu
    );
    let t = &totals.tokens;
    println!(
        "tokens: {} moves (A then B {}, B then A {}), {} holds across a yield, {} shared reads; \
         balances A {} + B {} = {} (net {} moved A to B)",
        t.moves_ab + t.moves_ba,
        t.moves_ab,
        t.moves_ba,
        t.yields,
        t.shared,
        t.balance_a,
        t.balance_b,
        t.balance_a + t.balance_b,
        t.net_a_to_b
    );
    println!(
        "sleep/wakeup: {} pairs, {} rounds each way",
        totals.sleep.pairs, totals.sleep.rounds
    );
    println!(
        "cpusync: {} masters, {} calls, {} functions run",
        totals.sync.masters, totals.sync.calls, totals.sync.functions
    );
    println!(
        "machine: {} switches, {} IPIs, {} kicks; {:.1} s",
        report.total(|c| c.switches),
        report.total(|c| c.ipis_received),
        report.total(|c| c.kicks_sent),
        report.elapsed.as_secs_f64()
    );
    if report.leaked_threads != 0 {
        fail(format_args!(
            "{} threads never exited",
            report.leaked_threads
        ));
    }
    println!("lwkt-soak: OK: nothing lost, duplicated or misdirected; every invariant held");
    ExitCode::SUCCESS
}

struct Totals {
    tokens: tokens::Totals,
    sleep: sleep::Totals,
    sync: sync::Totals,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let o = parse(&args("--cpus 16 --seconds 3")).unwrap();
        assert_eq!((o.cpus, o.seconds, o.window, o.stall), (16, 3, 16, 20));
        assert_eq!(o.inject, None);
        let o = parse(&args("--inject lost-wakeup --stall 2")).unwrap();
        assert_eq!((o.inject, o.stall), (Some(Inject::LostWakeup), 2));
        assert!(parse(&args("--inject nothing"))
            .unwrap_err()
            .contains("unknown fault"));
        assert!(parse(&args("--cpus 1 --inject lose")).is_err());
        assert!(parse(&args("--cpus 0")).is_err());
        assert!(parse(&args(&format!("--cpus {}", lwkt_core::MAX_CPUS + 1))).is_err());
        assert!(parse(&args("--cpus"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args("--bogus"))
            .unwrap_err()
            .contains("unknown argument"));
    }
}
