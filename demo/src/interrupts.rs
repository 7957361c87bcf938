//! The interrupt workload: a thread raises a device interrupt on the next
//! CPU again and again while a thread there is busy; the line's interrupt
//! thread preempts it. The demo reports the round trip beside a signal
//! handler waking a parked OS thread, on the same host.

use lwkt_core::Cur;
use lwkt_demo::latency::{self, quantiles};

/// Interrupts raised per measurement.
const N: usize = 2000;

pub(crate) fn interrupts(cur: &mut Cur) -> String {
    let mut lwkt = latency::lwkt_interrupt(cur, N);
    let target = (cur.cpu_id().index() + 1) % cur.my_cpu().ncpus();
    let preemptions = cur
        .my_cpu()
        .cpu_stats(lwkt_core::CpuId::new(target as u32))
        .map_or(0, |s| s.preemptions);
    let mut host = latency::signal_futex(N);
    let (med, p99) = quantiles(&mut lwkt);
    let (h_med, h_p99) = quantiles(&mut host);
    format!(
        "interrupts: {N} raised on CPU {target} while a thread there ran ({preemptions} \
         preemptions there); raise to interrupt thread running and back {:.1} µs median, \
         {:.1} µs p99 (signal handler waking a parked OS thread: {:.1} µs, {:.1} µs)",
        med.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        h_med.as_secs_f64() * 1e6,
        h_p99.as_secs_f64() * 1e6
    )
}
