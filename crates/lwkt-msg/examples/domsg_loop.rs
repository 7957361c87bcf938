//! `N` (default 1,000,000) `domsg` round trips: a fixed workload for
//! instruction counting (`cargo xtask instr`), e.g.
//! `valgrind --tool=callgrind target/release/examples/domsg_loop 100000`.
//!
//! - no mode: to a thread port served by another thread on the same
//!   virtual CPU;
//! - `put-only`: to a put-only port whose handler replies in place (in the
//!   sender's context, no switch).

use core::pin::pin;

use lwkt_core::{CpuId, MyCpu};
use lwkt_msg::{serve_on, Incoming, Msg, MsgHandle, Port, PortRef};

/// The put-only port's handler: add one, reply in place.
fn bump(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
    *m += 1;
    m.reply(my, Ok(()));
}

static BUMP: Port<u64> = Port::put_only(bump);

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let put_only = match args.next().as_deref() {
        None => false,
        Some("put-only") => true,
        Some(other) => panic!("unknown mode {other:?} (expected none or put-only)"),
    };
    let sum = lwkt_arch_hosted::Machine::new(1)
        .unwrap()
        .pin(false)
        .run(move |cur| {
            let mut m = pin!(Msg::new(0u64));
            if put_only {
                for _ in 0..n {
                    BUMP.domsg(cur, m.as_mut()).unwrap();
                }
                return *m.body();
            }
            let (server, port) = serve_on(cur, CpuId::new(0), |me, port: PortRef<u64>| {
                while let Incoming::Request(mut m) = port.waitport(me) {
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
            for _ in 0..n {
                port.domsg(cur, m.as_mut()).unwrap();
            }
            port.close_from(cur.my_cpu());
            cur.join(&server);
            *m.body()
        });
    let what = if put_only {
        "to a put-only port, replied inline"
    } else {
        "on one CPU"
    };
    println!("{n} domsg round trips {what}: body {sum}");
}
