//! Event counts behind the `ipi_path` bench: CPU 0 of a 2-CPU hosted machine
//! sends N messages to CPU 1 (`send_ipi`, or `send_ipi_batch` of B), whose
//! function increments an atomic; prints ns per message and, per message,
//! the kicks, signals, unparks and ring-full waits the machine reports.
//!
//! `cargo run --release -p lwkt-benches --example ipi_path_counts -- [B] [N]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use lwkt_core::{CpuId, IpiMsg, MyCpu};

static RUN: AtomicU64 = AtomicU64::new(0);

fn count(_: MyCpu<'_>, _: usize, _: usize) {
    RUN.fetch_add(1, Ordering::Relaxed);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(1, |s| s.parse().expect("batch"));
    let n: u64 = args.next().map_or(2_000_000, |s| s.parse().expect("N"));
    let (d, rep) = lwkt_arch_hosted::Machine::new(2)
        .expect("machine")
        .run_with_report(|cur| {
            let msgs = vec![
                IpiMsg {
                    func: count,
                    arg1: 0,
                    arg2: 0
                };
                batch.max(1)
            ];
            let to = CpuId::new(1);
            let t = Instant::now();
            let mut sent = 0;
            while sent < n {
                let k = (n - sent).min(batch.max(1) as u64) as usize;
                if k == 1 {
                    cur.my_cpu().send_ipi(to, count, 0, 0).expect("send");
                } else {
                    cur.my_cpu().send_ipi_batch(to, &msgs[..k]).expect("send");
                }
                sent += k as u64;
            }
            while RUN.load(Ordering::Acquire) < n {
                std::hint::spin_loop();
            }
            t.elapsed()
        });
    let per = |x: u64| x as f64 / n as f64;
    let c0 = &rep.cpus[0];
    println!(
        "batch {batch}, {n} messages: {:.1} ns/msg; per message: kicks {:.5}, signals {:.5}, \
         unparks {:.6}, ring-full waits {:.4}",
        d.as_nanos() as f64 / n as f64,
        per(c0.kicks_sent),
        per(rep.signals[1] as u64),
        per(rep.unparks[1] as u64),
        per(c0.ring_full_waits),
    );
}
