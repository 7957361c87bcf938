//! `domsg` round trips to a thread port on the other CPU of a 2-vCPU
//! hosted machine, in a loop: for `perf record` and `perf stat`.
//!
//! `cargo run --release -p lwkt-benches --example domsg_cross -- [ROUNDS]`

use std::pin::pin;
use std::time::Instant;

use lwkt_core::CpuId;
use lwkt_msg::{serve_on, Incoming, Msg, PortRef};

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .map(|v| v.parse().expect("ROUNDS"))
        .unwrap_or(2_000_000);
    let ns = lwkt_benches::on_lwkt(2, |cur| {
        let (h, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
        })
        .expect("server");
        let mut m = pin!(Msg::new(0u64));
        port.domsg(cur, m.as_mut()).unwrap();
        let t = Instant::now();
        for _ in 0..rounds {
            port.domsg(cur, m.as_mut()).unwrap();
        }
        let d = t.elapsed();
        port.close_from(cur.my_cpu());
        cur.join(&h);
        d.as_nanos() as f64 / rounds as f64
    });
    println!("{ns:.1} ns per cross-CPU domsg round trip ({rounds} rounds)");
}
