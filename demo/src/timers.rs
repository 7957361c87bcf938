//! The timer workload: on every CPU, threads sleep 1 ms again and again
//! (`Cur::sleep_for`), and the demo reports how late they woke, beside
//! `std::thread::sleep` of the same length on as many OS threads at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwkt_core::{CpuId, Cur};
use lwkt_demo::latency::quantiles;

/// How long each sleep is.
const NAP: Duration = Duration::from_millis(1);
/// Sleeping threads per CPU, and sleeps per thread.
const THREADS: u32 = 4;
const SLEEPS: usize = 25;

pub(crate) fn timers(cur: &mut Cur) -> String {
    let n = cur.my_cpu().ncpus() as u32;
    let late = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..n * THREADS)
        .map(|i| {
            let late = late.clone();
            cur.spawn_on(CpuId::new(i % n), move |me| {
                let mine: Vec<Duration> = (0..SLEEPS)
                    .map(|_| {
                        let t = Instant::now();
                        me.sleep_for(NAP);
                        t.elapsed() - NAP
                    })
                    .collect();
                late.lock().unwrap().extend(mine);
            })
            .expect("spawn")
        })
        .collect();
    for h in &handles {
        cur.join(h);
    }
    let mut late = std::mem::take(&mut *late.lock().unwrap());
    // The same sleeps on OS threads, as many at once.
    let os: Vec<_> = (0..n * THREADS)
        .map(|_| {
            std::thread::spawn(|| {
                (0..SLEEPS)
                    .map(|_| {
                        let t = Instant::now();
                        std::thread::sleep(NAP);
                        t.elapsed() - NAP
                    })
                    .collect::<Vec<Duration>>()
            })
        })
        .collect();
    let mut os_late: Vec<Duration> = os.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let fired = late.len();
    let (med, p99) = quantiles(&mut late);
    let (os_med, os_p99) = quantiles(&mut os_late);
    format!(
        "timers: {fired} sleeps of {} ms by {} threads on {n} CPUs, every one woke; late by \
         {} µs median, {} µs p99 (std::thread::sleep on OS threads: {} µs, {} µs)",
        NAP.as_millis(),
        n * THREADS,
        med.as_micros(),
        p99.as_micros(),
        os_med.as_micros(),
        os_p99.as_micros()
    )
}
