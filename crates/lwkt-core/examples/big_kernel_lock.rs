//! DragonFly's big kernel lock is a token (`mp_token`, since 2010): a thread
//! that blocks while "holding" it does not stop anyone else.
//!
//! `cargo run --release -p lwkt-core --example big_kernel_lock`
//!
//! A "driver" thread on CPU 1 takes the MP token and blocks, three times,
//! each time until the workers have done another round of work under the
//! same token. With a mutex as the big lock, the workers would wait for the
//! whole of each block; with the token they never notice.

use std::sync::atomic::{AtomicU64, Ordering};

use lwkt_core::token::{Token, TokenCell};
use lwkt_core::{CpuId, WaitQueue};

static MP_TOKEN: Token = Token::new("mp");
/// Kernel state the big lock protects.
static SYSCALLS: TokenCell<'static, u64> = TokenCell::new(&MP_TOKEN, 0);
/// The round the driver is sleeping in, holding the MP token.
static HOLDING: AtomicU64 = AtomicU64::new(0);
/// Workers that finished their share of the current round.
static DONE: AtomicU64 = AtomicU64::new(0);
/// The last round all workers finished.
static ROUND: AtomicU64 = AtomicU64::new(0);
static NEXT_ROUND: WaitQueue = WaitQueue::new();

fn main() {
    let report = lwkt_arch_hosted::Machine::new(2)
        .unwrap()
        .run_with_report(|cur| {
            let driver = cur
                .builder()
                .cpu(CpuId::new(1))
                .name("driver")
                .spawn(|me| {
                    for round in 1..=3u64 {
                        me.with_token(&MP_TOKEN, |me, held| {
                            let before = *SYSCALLS.get(held, me);
                            println!(
                                "driver: holds the MP token ({before} syscalls so far) and sleeps"
                            );
                            let g = NEXT_ROUND.generation();
                            HOLDING.store(round, Ordering::SeqCst);
                            while ROUND.load(Ordering::SeqCst) < round {
                                NEXT_ROUND.block_since(me, g); // the token is released while we sleep
                            }
                            // Running again, holding the token again: state moved on meanwhile.
                            let after = *SYSCALLS.get(held, me);
                            println!(
                                "driver: woke holding the MP token; {} syscalls ran while it slept",
                                after - before
                            );
                            assert_eq!(
                                after - before,
                                1000,
                                "the workers were not stopped by the sleeping holder"
                            );
                        });
                    }
                })
                .unwrap();
            let workers: Vec<_> = (0..2)
                .map(|c| {
                    cur.builder()
                        .cpu(CpuId::new(c))
                        .name("syscalls")
                        .spawn(move |me| {
                            for round in 1..=3u64 {
                                // Start once the driver is asleep "holding" the big lock.
                                while HOLDING.load(Ordering::SeqCst) < round {
                                    me.yield_now();
                                }
                                for _ in 0..500 {
                                    me.with_token(&MP_TOKEN, |me, held| {
                                        *SYSCALLS.get_mut(held, me) += 1
                                    });
                                }
                                if DONE.fetch_add(1, Ordering::SeqCst) + 1 == 2 * round {
                                    ROUND.store(round, Ordering::SeqCst);
                                    NEXT_ROUND.signal(me.my_cpu());
                                }
                            }
                        })
                        .unwrap()
                })
                .collect();
            for w in &workers {
                cur.join(w);
            }
            cur.join(&driver);
            cur.with_token(&MP_TOKEN, |cur, held| *SYSCALLS.get(held, cur))
        });
    assert_eq!(
        report.0, 3000,
        "every syscall ran exactly once under the token"
    );
    println!("total syscalls under the big kernel lock: {}", report.0);
    println!("{}", report.1);
}
