//! `N` uncontended exclusive get+release pairs (default 1,000,000) and `N`
//! recursive ones: a fixed workload for instruction counting, e.g.
//! `valgrind --tool=callgrind target/release/examples/token_loop 1000000`.

use lwkt_token::{with_token, SpinThread, Token};

static TOK: Token = Token::new("loop");

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let recursive = std::env::args().nth(2).is_some_and(|a| a == "recursive");
    let mut me = SpinThread::new();
    let mut sum = 0u64;
    if recursive {
        with_token(&mut me, &TOK, |me, _| {
            for _ in 0..n {
                sum += with_token(me, &TOK, |_, h| {
                    std::hint::black_box(h).token().collisions()
                });
            }
        });
    } else {
        for _ in 0..n {
            sum += with_token(&mut me, &TOK, |_, h| {
                std::hint::black_box(h).token().collisions()
            });
        }
    }
    println!("{n} pairs (recursive: {recursive}), {sum} collisions");
}
