//! Shared pieces of the lwkt benches: pinning OS threads to cores and
//! running a closure on an LWKT thread of a fresh hosted machine.
//!
//! The benches use criterion's `iter_custom`: each sample boots a machine
//! (not timed), runs the measured loop inside an LWKT thread, and returns the
//! time that loop took, so machine boot never pollutes a number.

pub mod alloc_workloads;

use std::time::Duration;

pub mod alloc_runs;
pub mod cross_pair;
pub mod mesh;
pub mod ring_streams;

use criterion::Criterion;

use lwkt_core::Cur;

pub use lwkt_demo::affinity::{cores, pin, unpin};

/// Run `produce(iters)` on a thread pinned to core 0 and `consume(iters)` on
/// one pinned to core 1 (core 0 too on a 1-core host), started together;
/// return the producer's time.
pub fn two_cores<P, C>(iters: u64, produce: P, consume: C) -> Duration
where
    P: FnOnce(u64) + Send + 'static,
    C: FnOnce(u64) + Send + 'static,
{
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let s2 = start.clone();
    let consumer = std::thread::spawn(move || {
        pin(1 % cores());
        s2.wait();
        consume(iters);
    });
    let producer = std::thread::spawn(move || {
        pin(0);
        start.wait();
        let t = std::time::Instant::now();
        produce(iters);
        t
    });
    let t = producer.join().unwrap();
    consumer.join().unwrap();
    t.elapsed()
}

/// Boot an `ncpus` machine, run `f` as its main thread, return its result.
pub fn on_lwkt<R: Send>(ncpus: usize, f: impl FnOnce(&mut Cur) -> R + Send) -> R {
    lwkt_arch_hosted::Machine::new(ncpus)
        .expect("machine")
        .run(f)
}

/// Time `f` in an LWKT main thread.
pub fn time_on_lwkt(ncpus: usize, f: impl FnOnce(&mut Cur) + Send) -> Duration {
    on_lwkt(ncpus, |cur| {
        let t = std::time::Instant::now();
        f(cur);
        t.elapsed()
    })
}

/// The criterion settings every group uses: short warm-up, 2 s of samples.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

/// The resource of the blocked-holder scenario, under a token.
pub static HOLDER_TOKEN: lwkt_core::token::Token = lwkt_core::token::Token::new("blocking");
/// The data `HOLDER_TOKEN` protects.
pub static HOLDER_DATA: lwkt_core::token::TokenCell<'static, u64> =
    lwkt_core::token::TokenCell::new(&HOLDER_TOKEN, 0);
static TICK: lwkt_core::WaitQueue = lwkt_core::WaitQueue::new();
/// How long the holder blocks holding the resource, then works without it.
pub const HOLD: Duration = Duration::from_millis(1);

/// Boot a 2-CPU machine where a holder on CPU 1 repeatedly takes
/// [`HOLDER_TOKEN`], blocks [`HOLD`] holding it (on a wait queue a timer
/// thread on CPU 1 signals every `HOLD`; lwkt has no timed sleep yet), then
/// blocks `HOLD` without it; run `f` on CPU 0 meanwhile.
pub fn with_blocked_token_holder<R: Send>(f: impl FnOnce(&mut Cur) -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    on_lwkt(2, |cur| {
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, s3) = (stop.clone(), stop.clone());
        let cpu1 = lwkt_core::CpuId::new(1);
        let timer = cur
            .spawn_on(cpu1, move |me| {
                while !s3.load(Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    while t.elapsed() < HOLD {
                        std::hint::spin_loop();
                    }
                    TICK.signal(me.my_cpu());
                    me.yield_now();
                }
            })
            .expect("spawn");
        let holder = cur
            .spawn_on(cpu1, move |me| {
                while !s2.load(Ordering::Relaxed) {
                    me.with_token(&HOLDER_TOKEN, |me, h| {
                        *HOLDER_DATA.get_mut(h, me) += 1;
                        TICK.block(me); // asleep, "holding" the token
                    });
                    TICK.block(me); // work without it
                }
            })
            .expect("spawn");
        let r = f(cur);
        stop.store(true, Ordering::Relaxed);
        cur.join(&timer);
        // The holder blocks twice per round (holding the token, then not):
        // wake it until it has seen `stop` and left. One signal hung the
        // bench when it landed in the first block.
        while !holder.has_exited() {
            TICK.signal(cur.my_cpu());
            cur.yield_now();
        }
        cur.join(&holder);
        r
    })
}

/// The mutex version: a thread pinned to core 1 repeatedly locks `m`, sleeps
/// [`HOLD`] holding it, then sleeps `HOLD` without it; run `f` meanwhile.
pub fn with_blocked_mutex_holder<R>(
    m: &std::sync::Arc<parking_lot::Mutex<u64>>,
    f: impl FnOnce() -> R,
) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let (m2, s2) = (m.clone(), stop.clone());
    let holder = std::thread::spawn(move || {
        pin(1 % cores());
        while !s2.load(Ordering::Relaxed) {
            let mut g = m2.lock();
            *g += 1;
            std::thread::sleep(HOLD);
            drop(g);
            std::thread::sleep(HOLD);
        }
    });
    std::thread::sleep(2 * HOLD);
    let r = f();
    stop.store(true, Ordering::Relaxed);
    holder.join().expect("holder");
    r
}
