//! Token workers: two accounts, one under token A and one under token B;
//! workers take both tokens (in the order A-B or B-A) and move units between
//! them, or take both shared and read.
//!
//! Invariants, checked on every hold of both tokens:
//! - the balances sum to `2 * START` (every move changes both under both
//!   tokens, so no holder of both sees half a move);
//! - an exclusive holder finds nobody's id in an account's `owner` and finds
//!   its own still there after a while (exclusion), also after it yielded
//!   while holding the tokens (they are released and taken back);
//! - a shared holder finds no exclusive holder's id.
//!
//! The balances are updated by load and store, not by an atomic add, so a
//! break in exclusion loses updates: at the end each balance and move count
//! must equal what the workers counted. The account fields are atomics so a
//! broken token makes the soak report, not misbehave itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lwkt_core::token::{Exclusive, Held, Shared, Token, TokenCell};
use lwkt_core::{Cur, ThreadHandle};

use crate::watch::Worker;
use crate::{fail, spawn, Inject, Soak};

const START: u64 = 1 << 40;

/// One side of the invariant.
#[derive(Debug)]
struct Account {
    balance: AtomicU64,
    moves: AtomicU64,
    /// The id of the exclusive holder while it holds the token, else 0.
    owner: AtomicU64,
}

impl Account {
    const fn new() -> Account {
        Account {
            balance: AtomicU64::new(START),
            moves: AtomicU64::new(0),
            owner: AtomicU64::new(0),
        }
    }
}

static TOKEN_A: Token = Token::new("soak-a");
static TOKEN_B: Token = Token::new("soak-b");
static A: TokenCell<'static, Account> = TokenCell::new(&TOKEN_A, Account::new());
static B: TokenCell<'static, Account> = TokenCell::new(&TOKEN_B, Account::new());

/// What one worker did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    moves: u64,
    /// Units moved from A to B (negative: B to A).
    net: i64,
    yields: u64,
    shared: u64,
}

/// The token totals, checked.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) moves_ab: u64,
    pub(crate) moves_ba: u64,
    pub(crate) yields: u64,
    pub(crate) shared: u64,
    pub(crate) net_a_to_b: i64,
    pub(crate) balance_a: u64,
    pub(crate) balance_b: u64,
}

/// A worker's result, written when it finishes; and whether it takes A first.
pub(crate) type Result = Arc<Mutex<(bool, Tally)>>;

fn sum_ok(who: &str, a: &Account, b: &Account) {
    let (x, y) = (
        a.balance.load(Ordering::Relaxed),
        b.balance.load(Ordering::Relaxed),
    );
    if x.wrapping_add(y) != 2 * START {
        fail(format_args!(
            "{who}: holding both tokens, balances A {x} + B {y} != {} (invariant broken)",
            2 * START
        ));
    }
}

fn claim(who: &str, name: &str, acct: &Account, id: u64) {
    let prev = acct.owner.swap(id, Ordering::Relaxed);
    if prev != 0 {
        fail(format_args!(
            "{who}: took token {name} exclusively while worker {prev} held it (exclusion broken)"
        ));
    }
}

fn unclaim(who: &str, name: &str, acct: &Account, id: u64) {
    let now = acct.owner.swap(0, Ordering::Relaxed);
    if now != id {
        fail(format_args!(
            "{who}: holding token {name} exclusively, found worker {now} had taken it (exclusion broken)"
        ));
    }
}

/// A small xorshift, per worker.
fn next(r: &mut u64) -> u64 {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

/// A worker's own state.
struct State<'a> {
    w: &'a Worker,
    rng: u64,
    t: Tally,
}

/// With both tokens held exclusively: move a few units one way or the other
/// (`half`: only one way, the injected fault).
fn exclusive(
    cur: &mut Cur,
    ha: &Held<'_, Exclusive>,
    hb: &Held<'_, Exclusive>,
    st: &mut State<'_>,
    yield_inside: bool,
    half: bool,
) {
    let (w, t) = (st.w, &mut st.t);
    let who = w.name();
    {
        let (a, b) = (A.get(ha, cur), B.get(hb, cur));
        claim(who, "A", a, w.id());
        claim(who, "B", b, w.id());
        sum_ok(who, a, b);
    }
    if yield_inside {
        // Both tokens are released while other threads run, and held again
        // before this one continues: our claim is gone while we are away.
        {
            let (a, b) = (A.get(ha, cur), B.get(hb, cur));
            unclaim(who, "A", a, w.id());
            unclaim(who, "B", b, w.id());
        }
        cur.yield_now();
        t.yields += 1;
        let (a, b) = (A.get(ha, cur), B.get(hb, cur));
        claim(who, "A", a, w.id());
        claim(who, "B", b, w.id());
        sum_ok(who, a, b);
    }
    let (a, b) = (A.get(ha, cur), B.get(hb, cur));
    let r = next(&mut st.rng);
    let amount = r % 1000;
    let (from, to) = if r & (1 << 20) != 0 { (a, b) } else { (b, a) };
    let f = from.balance.load(Ordering::Relaxed);
    // A short window in which another holder would be seen or would lose
    // one of our updates.
    for _ in 0..(r >> 40) % 64 {
        std::hint::spin_loop();
    }
    from.balance
        .store(f.wrapping_sub(amount + u64::from(half)), Ordering::Relaxed);
    let g = to.balance.load(Ordering::Relaxed);
    to.balance.store(g.wrapping_add(amount), Ordering::Relaxed);
    for acct in [a, b] {
        let m = acct.moves.load(Ordering::Relaxed);
        acct.moves.store(m + 1, Ordering::Relaxed);
    }
    sum_ok(who, a, b);
    unclaim(who, "A", a, w.id());
    unclaim(who, "B", b, w.id());
    t.moves += 1;
    t.net += if core::ptr::eq(from, a) {
        amount as i64
    } else {
        -(amount as i64)
    };
}

/// With both tokens held shared: nobody holds either exclusively.
fn shared(cur: &mut Cur, ha: &Held<'_, Shared>, hb: &Held<'_, Shared>, w: &Worker) {
    let (a, b) = (A.get(ha, cur), B.get(hb, cur));
    for (name, acct) in [("A", a), ("B", b)] {
        let o = acct.owner.load(Ordering::Relaxed);
        if o != 0 {
            fail(format_args!(
                "{}: holding token {name} shared, found worker {o} holding it exclusively (exclusion broken)",
                w.name()
            ));
        }
    }
    sum_ok(w.name(), a, b);
}

fn worker(cur: &mut Cur, s: &Soak, cpu: usize, w: &Worker, a_first: bool) -> Tally {
    let mut st = State {
        w,
        rng: 0x9e37_79b9_7f4a_7c15 ^ w.id().wrapping_mul(0x2545_f491_4f6c_dd1d),
        t: Tally::default(),
    };
    let (first, second) = if a_first {
        (&TOKEN_A, &TOKEN_B)
    } else {
        (&TOKEN_B, &TOKEN_A)
    };
    let mut i = 0u64;
    while !s.over() {
        match i % 4 {
            0..=2 => {
                let yield_inside = i % 4 == 2;
                let half = cpu == 0 && a_first && s.inject(Inject::HalfMove, st.t.moves);
                cur.with_token(first, |cur, h1| {
                    cur.with_token(second, |cur, h2| {
                        if a_first {
                            exclusive(cur, h1, h2, &mut st, yield_inside, half);
                        } else {
                            exclusive(cur, h2, h1, &mut st, yield_inside, half);
                        }
                    })
                });
            }
            _ => {
                cur.with_token_shared(first, |cur, h1| {
                    cur.with_token_shared(second, |cur, h2| {
                        if a_first {
                            shared(cur, h1, h2, w);
                        } else {
                            shared(cur, h2, h1, w);
                        }
                    })
                });
                st.t.shared += 1;
            }
        }
        i += 1;
        w.tick();
        // Threads are not preempted: let this CPU's other threads run.
        cur.yield_now();
    }
    st.t
}

/// Two workers per vCPU, one taking A first, one B first.
pub(crate) fn start(cur: &mut Cur, s: &Arc<Soak>) -> Vec<(ThreadHandle, Result)> {
    let mut v = Vec::new();
    for c in 0..s.n {
        for a_first in [true, false] {
            let order = if a_first { "A-B" } else { "B-A" };
            let w = s
                .workers
                .add(format!("token worker {order} cpu {c}"), false);
            let r: Result = Arc::new(Mutex::new((a_first, Tally::default())));
            let (s, r2) = (s.clone(), r.clone());
            let h = spawn(cur, c, w.name().to_owned(), move |me| {
                let t = worker(me, &s, c, &w, a_first);
                *r2.lock().unwrap_or_else(PoisonError::into_inner) = (a_first, t);
                w.done();
            });
            v.push((h, r));
        }
    }
    v
}

/// After every worker is done: the accounts hold exactly what the workers
/// moved.
pub(crate) fn check(cur: &mut Cur, workers: &[(ThreadHandle, Result)]) -> Totals {
    let mut t = Totals::default();
    for (_, r) in workers {
        let (a_first, w) = *r.lock().unwrap_or_else(PoisonError::into_inner);
        if a_first {
            t.moves_ab += w.moves;
        } else {
            t.moves_ba += w.moves;
        }
        t.yields += w.yields;
        t.shared += w.shared;
        t.net_a_to_b += w.net;
    }
    let moves = t.moves_ab + t.moves_ba;
    let (balance_a, balance_b, moves_a, moves_b) = cur.with_token(&TOKEN_A, |cur, ha| {
        cur.with_token(&TOKEN_B, |cur, hb| {
            let (a, b) = (A.get(ha, cur), B.get(hb, cur));
            (
                a.balance.load(Ordering::Relaxed),
                b.balance.load(Ordering::Relaxed),
                a.moves.load(Ordering::Relaxed),
                b.moves.load(Ordering::Relaxed),
            )
        })
    });
    t.balance_a = balance_a;
    t.balance_b = balance_b;
    let want_a = START.wrapping_sub(t.net_a_to_b as u64);
    let want_b = START.wrapping_add(t.net_a_to_b as u64);
    if moves_a != moves || moves_b != moves {
        fail(format_args!(
            "tokens: the workers made {moves} moves, account A counts {moves_a}, B {moves_b} (lost updates)"
        ));
    }
    if balance_a != want_a || balance_b != want_b {
        fail(format_args!(
            "tokens: balances A {balance_a}, B {balance_b}; the workers' moves give A {want_a}, B {want_b} (lost updates)"
        ));
    }
    if t.moves_ab == 0 || t.moves_ba == 0 || t.shared == 0 || t.yields == 0 {
        fail(format_args!("tokens: a kind of hold never ran: {t:?}"));
    }
    t
}
