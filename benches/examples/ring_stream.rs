//! Many short two-core streams through lwkt's IPI ring (`u64` entries,
//! 256 slots; producer pinned to core 0, consumer to core 1, the consumer
//! popping through `&self` as the IPI drain does, except in `handles`), for A/B comparisons on
//! a shared machine: a short trial often runs without either thread being
//! descheduled, so the low quantiles of many trials are stable where
//! criterion's samples of a few milliseconds are not.
//!
//! `ring_stream MODE TRIALS MSGS`: MODE `batch32` (`push_batch` of 32, as
//! `ipi_ring`'s "batches of 32"), `unbatched` (`push`), `handles` (a
//! `Producer` and a `Consumer` handle, unbatched) or `rtrb` (the same
//! stream through `rtrb`, for reference); prints the min,
//! 10th and 25th percentile and median nanoseconds per message over
//! `TRIALS` trials of `MSGS` messages.

use std::hint::black_box;
use std::sync::Arc;

use lwkt_benches::two_cores;
use lwkt_core::ipiq::Ring;

fn consume(q: &Ring<u64, 256>, n: u64) {
    let mut got = 0;
    while got < n {
        // SAFETY: the calling thread is the ring's only consumer.
        if let Some(v) = unsafe { q.pop() } {
            black_box(v);
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn consume_handle(q: &Ring<u64, 256>, n: u64) {
    // SAFETY: the calling thread is the ring's only consumer, and the
    // handle its only consumer access.
    let mut c = unsafe { q.consumer() };
    let mut got = 0;
    while got < n {
        if let Some(v) = c.pop() {
            black_box(v);
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(trials), Some(msgs)) = (
        a.get(1).cloned(),
        a.get(2).and_then(|t| t.parse::<usize>().ok()),
        a.get(3).and_then(|m| m.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: ring_stream batch32|unbatched|handles|rtrb TRIALS MSGS");
        std::process::exit(2);
    };
    assert!(
        trials > 0 && msgs > 0,
        "ring_stream: TRIALS and MSGS must be positive"
    );
    let mut per = Vec::new();
    for _ in 0..trials {
        if mode == "rtrb" {
            let (mut p, mut c) = rtrb::RingBuffer::<u64>::new(256);
            let d = two_cores(
                msgs,
                move |n| {
                    for i in 0..n {
                        while p.push(i).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                },
                move |n| {
                    let mut got = 0;
                    while got < n {
                        if let Ok(v) = c.pop() {
                            black_box(v);
                            got += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                },
            );
            per.push(d.as_nanos() as f64 / msgs as f64);
            continue;
        }
        let r: Arc<Ring<u64, 256>> = Arc::new(Ring::new());
        let q = r.clone();
        let m = mode.clone();
        let handles = mode == "handles";
        let d = two_cores(
            msgs,
            move |n| {
                if m == "batch32" {
                    let batch: Vec<u64> = (0..32).collect();
                    let mut sent = 0u64;
                    while sent < n {
                        let want = (n - sent).min(32) as usize;
                        // SAFETY: the producer thread is the ring's only producer.
                        let k = unsafe { r.push_batch(&batch[..want]) };
                        sent += k as u64;
                        if k == 0 {
                            std::hint::spin_loop();
                        }
                    }
                } else if m == "handles" {
                    // SAFETY: the producer thread is the ring's only producer,
                    // and the handle its only producer access.
                    let mut p = unsafe { r.producer() };
                    for i in 0..n {
                        while p.push(i).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                } else {
                    for i in 0..n {
                        // SAFETY: the producer thread is the ring's only producer.
                        while unsafe { r.push(i) }.is_err() {
                            std::hint::spin_loop();
                        }
                    }
                }
            },
            move |n| {
                if handles {
                    consume_handle(&q, n)
                } else {
                    consume(&q, n)
                }
            },
        );
        per.push(d.as_nanos() as f64 / msgs as f64);
    }
    per.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{mode}: min {:.2} p10 {:.2} p25 {:.2} median {:.2} ns/msg ({trials} trials of {msgs})",
        per[0],
        per[trials / 10],
        per[trials / 4],
        per[trials / 2]
    );
}
