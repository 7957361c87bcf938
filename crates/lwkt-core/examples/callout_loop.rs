//! Arm and stop one callout on its own CPU `N` times (default 1,000,000):
//! a fixed workload for instruction counting (`cargo xtask instr`), e.g.
//! `valgrind --tool=callgrind target/release/examples/callout_loop 1000000`.
//! With a second argument `at`, arm it with `reset_at` (a deadline computed
//! once, no clock read per arm) instead of `reset` (an hour from now); with
//! `move`, move the armed callout between two such deadlines with
//! `reset_at` and never stop it (what a `tokio::time::Sleep`'s `reset`
//! does), one move per iteration.

use core::pin::pin;
use std::hint::black_box;
use std::time::Duration;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mode = std::env::args().nth(2);
    let (at, moves) = (
        mode.as_deref() == Some("at"),
        mode.as_deref() == Some("move"),
    );
    let stopped = lwkt_arch_hosted::Machine::new(1)
        .unwrap()
        .pin(false)
        .run(move |cur| {
            let c = pin!(lwkt_core::Callout::new(|_| {}));
            let my = cur.my_cpu();
            let d = Duration::from_secs(3600);
            let deadline = my.clock().unwrap() + 3_600_000_000_000;
            let mut stopped = 0u64;
            if moves {
                for i in 0..n {
                    black_box(c.as_ref()).reset_at(my, black_box(deadline) + (i & 1) * 1_000_000);
                }
                return u64::from(c.as_ref().stop(my));
            }
            for _ in 0..n {
                let c = black_box(c.as_ref());
                if at {
                    c.reset_at(my, black_box(deadline));
                } else {
                    c.reset(my, d);
                }
                stopped += u64::from(c.stop(my));
            }
            stopped
        });
    println!("{n} callouts armed and stopped: {stopped} runs prevented");
}
