//! Tokens on the lwkt scheduler: exclusion, shared holders, release while
//! blocked, all-or-nothing re-acquisition, no deadlock, recursion, misuse.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use lwkt_arch_hosted::Machine;
use lwkt_core::token::{pool_token, Token, TokenCell};
use lwkt_core::{CpuId, WaitQueue};

fn cpu(n: u32) -> CpuId {
    CpuId::new(n)
}

/// Many threads on three CPUs do a non-atomic read-modify-write of one
/// counter under one token; a lost update would show in the total.
#[test]
fn exclusive_holders_exclude_each_other() {
    static TOK: Token = Token::new("counter");
    static COUNT: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    const THREADS: u32 = 9;
    const ITERS: u64 = 20_000;
    let total = Machine::new(3).unwrap().run(|cur| {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                cur.spawn_on(cpu(i % 3), |me| {
                    for n in 0..ITERS {
                        me.with_token(&TOK, |me, held| {
                            let v = *COUNT.get(held, me);
                            for _ in 0..(n % 8) {
                                std::hint::spin_loop(); // widen the window
                            }
                            *COUNT.get_mut(held, me) = v + 1;
                        });
                        if n % 64 == 0 {
                            me.yield_now();
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
        cur.with_token(&TOK, |cur, held| *COUNT.get(held, cur))
    });
    assert_eq!(total, u64::from(THREADS) * ITERS);
}

/// Shared holders on different CPUs hold the token at the same time; an
/// exclusive holder never overlaps with them.
///
/// The overlap is shown by a rendezvous, not by hoping two loops collide:
/// two readers on CPUs 1 and 2 each wait, inside their shared hold, until
/// the other is inside too (before any writer exists, since a waiting
/// writer makes new readers defer). Under emulation (the aarch64 step runs
/// this under qemu-user on a loaded host) a collision of short holds may
/// never happen; the rendezvous always does unless shared holds exclude.
#[test]
fn shared_holders_overlap_and_exclude_writers() {
    static TOK: Token = Token::new("rw");
    static READERS: AtomicUsize = AtomicUsize::new(0);
    static WRITER_IN: AtomicBool = AtomicBool::new(false);
    Machine::new(3).unwrap().run(|cur| {
        let meet: Vec<_> = (1..3)
            .map(|i| {
                cur.spawn_on(cpu(i), |me| {
                    me.with_token_shared(&TOK, |_, _| {
                        READERS.fetch_add(1, Ordering::SeqCst);
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(30);
                        while READERS.load(Ordering::SeqCst) < 2 {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "shared holders never overlapped: the other reader \
                                 did not get in within 30 s while this one held the token"
                            );
                            std::hint::spin_loop();
                        }
                    });
                })
                .unwrap()
            })
            .collect();
        for h in &meet {
            cur.join(h);
        }
        READERS.store(0, Ordering::SeqCst);
        let mut hs = Vec::new();
        for i in 0..3 {
            hs.push(
                cur.spawn_on(cpu(i), |me| {
                    for _ in 0..2_000 {
                        me.with_token_shared(&TOK, |_, _| {
                            assert!(
                                !WRITER_IN.load(Ordering::SeqCst),
                                "reader overlapped a writer"
                            );
                            READERS.fetch_add(1, Ordering::SeqCst);
                            for _ in 0..200 {
                                std::hint::spin_loop();
                            }
                            READERS.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
                .unwrap(),
            );
        }
        hs.push(
            cur.spawn_on(cpu(0), |me| {
                for _ in 0..500 {
                    me.with_token(&TOK, |_, _| {
                        WRITER_IN.store(true, Ordering::SeqCst);
                        assert_eq!(
                            READERS.load(Ordering::SeqCst),
                            0,
                            "writer overlapped readers"
                        );
                        WRITER_IN.store(false, Ordering::SeqCst);
                    });
                    me.yield_now();
                }
            })
            .unwrap(),
        );
        for h in &hs {
            cur.join(h);
        }
    });
}

/// The holder blocks; a thread on another CPU takes the token meanwhile and
/// changes the data; the holder, woken, finds the token held again and sees
/// the change.
#[test]
fn a_blocked_holder_releases_and_gets_the_token_back() {
    static TOK: Token = Token::new("released-on-block");
    static DATA: TokenCell<'static, u32> = TokenCell::new(&TOK, 0);
    static Q: WaitQueue = WaitQueue::new();
    static HOLDING: AtomicBool = AtomicBool::new(false);
    static OTHER_DONE: AtomicBool = AtomicBool::new(false);
    Machine::new(2).unwrap().run(|cur| {
        let holder = cur
            .spawn_on(cpu(0), |me| {
                me.with_token(&TOK, |me, held| {
                    *DATA.get_mut(held, me) = 1;
                    let g = Q.generation();
                    HOLDING.store(true, Ordering::SeqCst);
                    while !OTHER_DONE.load(Ordering::SeqCst) {
                        Q.block_since(me, g); // blocks with the token "held"
                    }
                    // Running again: the token is ours, and it changed hands.
                    assert_eq!(TOK.exclusive_owner(), me.token_stack_id());
                    assert_eq!(*DATA.get(held, me), 2, "the other CPU's update is visible");
                    *DATA.get_mut(held, me) = 3;
                });
            })
            .unwrap();
        let other = cur
            .spawn_on(cpu(1), |me| {
                while !HOLDING.load(Ordering::SeqCst) {
                    me.yield_now();
                }
                // The holder is blocked: the token is free for us.
                me.with_token(&TOK, |me, held| {
                    assert_eq!(*DATA.get(held, me), 1);
                    *DATA.get_mut(held, me) = 2;
                });
                OTHER_DONE.store(true, Ordering::SeqCst);
                Q.signal(me.my_cpu());
            })
            .unwrap();
        cur.join(&holder);
        cur.join(&other);
        assert_eq!(cur.with_token(&TOK, |cur, held| *DATA.get(held, cur)), 3);
    });
}

/// A thread holding T1 and T2 blocks; while it waits to run again, another
/// thread holds T2. The waiter must not run (it needs both), and it must not
/// sit on T1 meanwhile: a third thread takes T1 with a try.
#[test]
fn reacquisition_is_all_or_nothing() {
    static T1: Token = Token::new("t1");
    static T2: Token = Token::new("t2");
    static Q: WaitQueue = WaitQueue::new();
    static STEP: AtomicU32 = AtomicU32::new(0);
    static B_RELEASED: AtomicBool = AtomicBool::new(false);
    Machine::new(3).unwrap().run(|cur| {
        let a = cur
            .spawn_on(cpu(0), |me| {
                me.with_token(&T1, |me, _| {
                    me.with_token(&T2, |me, _| {
                        let g = Q.generation();
                        STEP.store(1, Ordering::SeqCst);
                        Q.block_since(me, g);
                        // We run only with both tokens, so B has let go of T2.
                        assert!(B_RELEASED.load(Ordering::SeqCst), "resumed without T2");
                        assert_eq!(T1.exclusive_owner(), me.token_stack_id());
                        assert_eq!(T2.exclusive_owner(), me.token_stack_id());
                    });
                });
            })
            .unwrap();
        let b = cur
            .spawn_on(cpu(1), |me| {
                while STEP.load(Ordering::SeqCst) < 1 {
                    me.yield_now();
                }
                me.with_token(&T2, |me, _| {
                    Q.signal(me.my_cpu()); // A is runnable now, but T2 is ours
                    STEP.store(2, Ordering::SeqCst);
                    while STEP.load(Ordering::SeqCst) < 3 {
                        std::hint::spin_loop(); // hold T2 without blocking
                    }
                    B_RELEASED.store(true, Ordering::SeqCst);
                });
            })
            .unwrap();
        let c = cur
            .spawn_on(cpu(2), |me| {
                while STEP.load(Ordering::SeqCst) < 2 {
                    me.yield_now();
                }
                // A is runnable and wants T1 and T2; it must not be holding T1.
                let mut got = false;
                for _ in 0..100_000 {
                    if me.try_with_token(&T1, |_, _| ()).is_some() {
                        got = true;
                        break;
                    }
                    me.yield_now();
                }
                assert!(got, "T1 stayed taken while its holder waited for T2");
                STEP.store(3, Ordering::SeqCst);
            })
            .unwrap();
        for h in [&a, &b, &c] {
            cur.join(h);
        }
    });
}

/// Two threads take two tokens in opposite orders and block in between,
/// many times: with mutexes this deadlocks; with tokens it cannot.
#[test]
fn opposite_order_with_blocking_never_deadlocks() {
    static A: Token = Token::new("a");
    static B: Token = Token::new("b");
    static DONE: AtomicUsize = AtomicUsize::new(0);
    Machine::new(2).unwrap().run(|cur| {
        let t1 = cur
            .spawn_on(cpu(0), |me| {
                for _ in 0..3_000 {
                    me.with_token(&A, |me, _| {
                        me.yield_now();
                        me.with_token(&B, |me, _| me.yield_now());
                    });
                }
                DONE.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        let t2 = cur
            .spawn_on(cpu(1), |me| {
                for _ in 0..3_000 {
                    me.with_token(&B, |me, _| {
                        me.yield_now();
                        me.with_token(&A, |me, _| me.yield_now());
                    });
                }
                DONE.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        cur.join(&t1);
        cur.join(&t2);
    });
    assert_eq!(DONE.load(Ordering::SeqCst), 2);
}

#[test]
fn recursion_nests_without_changing_ownership() {
    static TOK: Token = Token::new("recursive");
    static DATA: TokenCell<'static, Vec<u32>> = TokenCell::new(&TOK, Vec::new());
    Machine::new(1).unwrap().run(|cur| {
        cur.with_token(&TOK, |cur, outer| {
            DATA.get_mut(outer, cur).push(1);
            let owner = TOK.exclusive_owner();
            cur.with_token(&TOK, |cur, inner| {
                assert_eq!(cur.tokens_held(), 2);
                assert_eq!(TOK.exclusive_owner(), owner);
                DATA.get_mut(inner, cur).push(2);
                cur.with_token_shared(&TOK, |cur, shared| {
                    assert_eq!(DATA.get(shared, cur).len(), 2);
                });
            });
            assert_eq!(cur.tokens_held(), 1);
            assert_eq!(*DATA.get(outer, cur), [1, 2]);
        });
        assert_eq!(cur.tokens_held(), 0);
        assert_eq!(TOK.exclusive_owner(), 0);
    });
}

#[test]
fn pool_token_lookup_is_stable_for_an_address() {
    let objs: Vec<Box<u64>> = (0..1000).map(Box::new).collect();
    for o in &objs {
        let a = &**o as *const u64 as usize;
        assert!(std::ptr::eq(pool_token(a), pool_token(a)));
    }
    // The hash spreads addresses over the pool.
    let distinct: std::collections::HashSet<usize> = objs
        .iter()
        .map(|o| lwkt_core::token::pool_index(&**o as *const u64 as usize))
        .collect();
    assert!(
        distinct.len() > 600,
        "only {} slots for 1000 objects",
        distinct.len()
    );
    println!("pool: 1000 objects in {} of 1024 slots", distinct.len());
}

/// DragonFly's big kernel lock, `mp_token`, is an ordinary token: a thread
/// that blocks while holding it does not stop the others.
#[test]
fn big_kernel_lock_holder_sleeping_does_not_stop_others() {
    static MP_TOKEN: Token = Token::new("mp");
    static Q: WaitQueue = WaitQueue::new();
    static WORK: AtomicU32 = AtomicU32::new(0);
    Machine::new(2).unwrap().run(|cur| {
        let sleeper = cur
            .spawn_on(cpu(0), |me| {
                me.with_token(&MP_TOKEN, |me, _| {
                    let g = Q.generation();
                    while WORK.load(Ordering::SeqCst) < 1000 {
                        Q.block_since(me, g); // "sleeps holding the BGL"
                    }
                });
            })
            .unwrap();
        let workers: Vec<_> = (0..2)
            .map(|c| {
                cur.spawn_on(cpu(c), |me| {
                    for _ in 0..500 {
                        me.with_token(&MP_TOKEN, |_, _| WORK.fetch_add(1, Ordering::SeqCst));
                    }
                })
                .unwrap()
            })
            .collect();
        for w in &workers {
            cur.join(w);
        }
        Q.signal(cur.my_cpu());
        cur.join(&sleeper);
    });
    assert_eq!(WORK.load(Ordering::SeqCst), 1000);
}

#[test]
fn too_many_tokens_panics_with_the_rule() {
    if common::is_child() {
        fn nest(cur: &mut lwkt_core::Cur, toks: &'static [Token], i: usize) {
            if i < toks.len() {
                cur.with_token(&toks[i], |cur, _| nest(cur, toks, i + 1));
            }
        }
        static TOKS: [Token; 33] = [const { Token::new("many") }; 33];
        Machine::new(1).unwrap().run(|cur| nest(cur, &TOKS, 0));
        return;
    }
    let (ok, err) = common::run_child("too_many_tokens_panics_with_the_rule");
    assert!(!ok);
    assert!(err.contains("at most 32 token references"), "stderr: {err}");
}

#[test]
fn exclusive_while_shared_panics_with_the_rule() {
    if common::is_child() {
        static TOK: Token = Token::new("upgrade");
        Machine::new(1).unwrap().run(|cur| {
            cur.with_token_shared(&TOK, |cur, _| cur.with_token(&TOK, |_, _| ()));
        });
        return;
    }
    let (ok, err) = common::run_child("exclusive_while_shared_panics_with_the_rule");
    assert!(!ok);
    assert!(
        err.contains("taking token 'upgrade' exclusively while holding it shared"),
        "stderr: {err}"
    );
}

#[test]
fn a_cell_refuses_another_tokens_hold() {
    if common::is_child() {
        static A: Token = Token::new("a");
        static B: Token = Token::new("b");
        static DATA: TokenCell<'static, u32> = TokenCell::new(&A, 0);
        Machine::new(1).unwrap().run(|cur| {
            cur.with_token(&B, |cur, held_b| *DATA.get(held_b, cur));
        });
        return;
    }
    let (ok, err) = common::run_child("a_cell_refuses_another_tokens_hold");
    assert!(!ok);
    assert!(
        err.contains("token 'b' does not protect this cell (its token is 'a')"),
        "stderr: {err}"
    );
}

#[allow(dead_code)]
fn unused(_: Arc<()>) {}

/// A `static` cell written by LWKT threads on three CPUs and by a plain OS
/// thread at the same time (`TokenCell::with_spin`), then read after the
/// machine stopped (`with_spin_shared`): no update lost, and no internal
/// type (`SpinThread`) needed.
#[test]
fn a_static_cell_is_reachable_from_outside_lwkt_and_after_shutdown() {
    static TOK: Token = Token::new("outside");
    static CELL: TokenCell<'static, (u64, u64)> = TokenCell::new(&TOK, (0, 0));
    const N: u64 = 20_000;
    let outside = std::thread::spawn(|| {
        for _ in 0..N {
            CELL.with_spin(|(a, b)| {
                *a += 1;
                *b += 1;
            });
        }
    });
    Machine::new(3).unwrap().run(|cur| {
        let hs: Vec<_> = (0..3)
            .map(|c| {
                cur.spawn_on(cpu(c), |me| {
                    for i in 0..N {
                        me.with_token(&TOK, |me, held| {
                            let (a, b) = CELL.get_mut(held, me);
                            *a += 1;
                            assert_eq!(*a, *b + 1, "a torn update was seen");
                            *b += 1;
                        });
                        if i % 256 == 0 {
                            me.yield_now();
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
    });
    outside.join().unwrap();
    assert_eq!(CELL.with_spin_shared(|&(a, b)| (a, b)), (4 * N, 4 * N));
}
