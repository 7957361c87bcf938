//! The alternatives the benches compare lwkt with, as fixed loops for
//! instruction counting (`cargo xtask instr`): `alt_loop N OP` runs `N`
//! operations of `OP` on one thread.
//!
//! - `parking_lot`, `std_mutex`, `spin`: an uncontended lock+unlock pair;
//! - `mimalloc`, `glibc`: a 64-byte alloc+free pair;
//! - `rtrb`, `crossbeam`: a push+pop (send+receive) pair on one thread;
//!   `lwkt_ring`, `lwkt_ring_handles`: the same on an lwkt `Ring`, through
//!   `&self` and through its handles; `lwkt_ring_batch`: per message,
//!   `push_batch` of 32 then 32 `&self` pops;
//! - `tokio_sleep_reset`: a `tokio::time::Sleep`'s `reset` to another
//!   deadline (a removal from and an insert into tokio's timer wheel), the
//!   reference for lwkt's callout reset+stop.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let op = args.next().unwrap_or_default();
    let mut sum = 0u64;
    match op.as_str() {
        "parking_lot" => {
            let m = parking_lot::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock() += 1;
            }
            sum = *m.lock();
        }
        "std_mutex" => {
            let m = std::sync::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock().unwrap() += 1;
            }
            sum = *m.lock().unwrap();
        }
        "spin" => {
            let m = spin::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock() += 1;
            }
            sum = *m.lock();
        }
        "mimalloc" | "glibc" => {
            let l = Layout::from_size_align(64, 8).unwrap();
            let mi = mimalloc::MiMalloc;
            for _ in 0..n {
                // SAFETY: a valid non-zero layout; the block is freed once
                // with the same allocator and layout.
                unsafe {
                    let p = if op == "mimalloc" {
                        mi.alloc(l)
                    } else {
                        System.alloc(l)
                    };
                    let p = black_box(p);
                    sum += p.is_null() as u64;
                    if op == "mimalloc" {
                        mi.dealloc(p, l)
                    } else {
                        System.dealloc(p, l)
                    }
                }
            }
        }
        "rtrb" => {
            let (mut p, mut c) = rtrb::RingBuffer::<u64>::new(256);
            for i in 0..n {
                p.push(black_box(i)).unwrap();
                sum += c.pop().unwrap();
            }
        }
        "lwkt_ring" => {
            let r: lwkt_core::ipiq::Ring<u64, 256> = lwkt_core::ipiq::Ring::new();
            for i in 0..n {
                // SAFETY: this thread is the ring's only producer and consumer.
                unsafe {
                    r.push(black_box(i)).unwrap();
                    sum += r.pop().unwrap();
                }
            }
        }
        "lwkt_ring_handles" => {
            let r: lwkt_core::ipiq::Ring<u64, 256> = lwkt_core::ipiq::Ring::new();
            // SAFETY: this thread is the ring's only producer and consumer,
            // and each handle is the only access of its side.
            let (mut p, mut c) = unsafe { (r.producer(), r.consumer()) };
            for i in 0..n {
                p.push(black_box(i)).unwrap();
                sum += c.pop().unwrap();
            }
        }
        "lwkt_ring_batch" => {
            // One operation = one message: batches of 32 through
            // `push_batch`, each taken by 32 `&self` pops (the IPI drain's
            // form); `N` must be a multiple of 32.
            let r: lwkt_core::ipiq::Ring<u64, 256> = lwkt_core::ipiq::Ring::new();
            let batch: Vec<u64> = (0..32).collect();
            for _ in 0..n / 32 {
                // SAFETY: this thread is the ring's only producer and consumer.
                unsafe {
                    assert_eq!(r.push_batch(black_box(&batch)), 32);
                    for _ in 0..32 {
                        sum += r.pop().unwrap();
                    }
                }
            }
        }
        "tokio_sleep_reset" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            sum = rt.block_on(async {
                use std::future::Future;
                let base = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
                let at = [base, base + std::time::Duration::from_millis(1)];
                let mut s = std::pin::pin!(tokio::time::sleep_until(base));
                std::future::poll_fn(|cx| {
                    let _ = s.as_mut().poll(cx);
                    std::task::Poll::Ready(())
                })
                .await;
                for i in 0..n {
                    black_box(s.as_mut()).reset(at[(i & 1) as usize]);
                }
                n
            });
        }
        "crossbeam" => {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(256);
            for i in 0..n {
                tx.send(black_box(i)).unwrap();
                sum += rx.recv().unwrap();
            }
        }
        other => {
            eprintln!("alt_loop: unknown operation '{other}' (parking_lot std_mutex spin mimalloc glibc rtrb crossbeam lwkt_ring lwkt_ring_handles lwkt_ring_batch)");
            std::process::exit(2);
        }
    }
    println!("{n} {op} operations ({sum})");
}
