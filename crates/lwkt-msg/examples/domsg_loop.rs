//! `N` (default 1,000,000) `domsg` round trips to a thread port served by
//! another thread on the same virtual CPU: a fixed workload for instruction
//! counting (`cargo xtask instr`), e.g.
//! `valgrind --tool=callgrind target/release/examples/domsg_loop 100000`.

use core::pin::pin;

use lwkt_core::CpuId;
use lwkt_msg::{serve_on, Incoming, Msg, PortRef};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let sum = lwkt_arch_hosted::Machine::new(1)
        .unwrap()
        .pin(false)
        .run(move |cur| {
            let (server, port) = serve_on(cur, CpuId::new(0), |me, port: PortRef<u64>| {
                while let Incoming::Request(mut m) = port.waitport(me) {
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
            })
            .unwrap();
            let mut m = pin!(Msg::new(0u64));
            for _ in 0..n {
                port.domsg(cur, m.as_mut()).unwrap();
            }
            port.close_from(cur.my_cpu());
            cur.join(&server);
            *m.body()
        });
    println!("{n} domsg round trips on one CPU: body {sum}");
}
