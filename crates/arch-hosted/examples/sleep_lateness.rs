//! How late a 1 ms sleep wakes: lwkt's `Cur::sleep_for` on a hosted
//! machine against `std::thread::sleep` on an OS thread, in alternating
//! blocks of one run, so both see the same host load.
//!
//! `sleep_lateness [rounds] [per_round] [ncpus]` (defaults 40, 25, 1): each
//! round runs `per_round` lwkt sleeps, then as many std sleeps; prints the
//! median, p90 and p99 lateness of each. `LWKT_PIN=0` runs the machine
//! unpinned; `STD_PIN=<core>` pins the std sleeper to a core.

use std::sync::mpsc;
use std::time::{Duration, Instant};

const NAP: Duration = Duration::from_millis(1);

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn q(v: &mut [Duration], p: usize) -> u128 {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)].as_micros()
}

/// `CLOCK_MONOTONIC` in seconds (what `perf record -k mono` stamps).
fn mono_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let rounds = arg(1, 40);
    let per = arg(2, 25);
    let ncpus = arg(3, 1);
    let pin = std::env::var("LWKT_PIN").map_or(true, |v| v != "0");
    let std_pin: Option<usize> = std::env::var("STD_PIN").ok().and_then(|v| v.parse().ok());
    let print_late: u128 = std::env::var("PRINT_LATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u128::MAX);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Vec<Duration>>();
    let helper = std::thread::spawn(move || {
        if let Some(c) = std_pin {
            // SAFETY: a zeroed cpu_set_t is valid; we set one bit and pass
            // it by pointer to a call that only reads it.
            unsafe {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set);
            }
        }
        while go_rx.recv().is_ok() {
            let v = (0..per)
                .map(|_| {
                    let t = Instant::now();
                    std::thread::sleep(NAP);
                    t.elapsed().saturating_sub(NAP)
                })
                .collect();
            done_tx.send(v).unwrap();
        }
    });
    let (mut lw, mut os) =
        lwkt_arch_hosted::Machine::new(ncpus)
            .unwrap()
            .pin(pin)
            .run(move |cur| {
                let mut lw = Vec::new();
                let mut os = Vec::new();
                for _ in 0..rounds {
                    for _ in 0..per {
                        let t = Instant::now();
                        let t0 = mono_us();
                        cur.sleep_for(NAP);
                        let late = t.elapsed().saturating_sub(NAP);
                        if late.as_micros() >= print_late {
                            eprintln!("late {} µs, slept at {:.6}", late.as_micros(), t0);
                        }
                        lw.push(late);
                    }
                    go_tx.send(()).unwrap();
                    os.extend(done_rx.recv().unwrap());
                }
                (lw, os)
            });
    helper.join().unwrap();
    if let Ok(path) = std::env::var("DUMP") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for d in &lw {
            writeln!(f, "lwkt {}", d.as_nanos()).unwrap();
        }
        for d in &os {
            writeln!(f, "std {}", d.as_nanos()).unwrap();
        }
    }
    println!(
        "lateness of a 1 ms sleep, {} each: lwkt median {} p90 {} p99 {} µs; std median {} p90 {} p99 {} µs",
        lw.len(),
        q(&mut lw, 50),
        q(&mut lw, 90),
        q(&mut lw, 99),
        q(&mut os, 50),
        q(&mut os, 90),
        q(&mut os, 99)
    );
}
