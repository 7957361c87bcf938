//! The IPI ring streams of the `ipi_ring` group, shared with the
//! `ring_stream` example: `u64`s from core 0 to core 1 through a fresh
//! lwkt ring of 256, in each way a producer can push, or through `rtrb`
//! for reference. Both sides spin when the ring is full or empty.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use lwkt_core::ipiq::Ring;

use crate::two_cores;

/// How the stream is pushed and popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `push`/`pop` on the ring (`&self`, unsafe: one producer, one consumer).
    Unbatched,
    /// Through the `Producer`/`Consumer` handles.
    Handles,
    /// `push_batch` of 32, `pop` one at a time.
    Batch32,
    /// `rtrb`'s ring of the same size, for reference.
    Rtrb,
}

impl Mode {
    /// The mode named `s` (`unbatched`, `handles`, `batch32`, `rtrb`).
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "unbatched" => Mode::Unbatched,
            "handles" => Mode::Handles,
            "batch32" => Mode::Batch32,
            "rtrb" => Mode::Rtrb,
            _ => return None,
        })
    }
}

/// Stream `msgs` values in `mode` ([`two_cores`]); the producer's time.
pub fn stream(mode: Mode, msgs: u64) -> Duration {
    if mode == Mode::Rtrb {
        return rtrb_stream(msgs);
    }
    let r: Arc<Ring<u64, 256>> = Arc::new(Ring::new());
    let q = r.clone();
    two_cores(
        msgs,
        move |n| match mode {
            Mode::Batch32 => produce_batches(&r, n),
            Mode::Handles => produce_handle(&r, n),
            _ => produce(&r, n),
        },
        move |n| match mode {
            Mode::Handles => consume_handle(&q, n),
            _ => consume(&q, n),
        },
    )
}

fn produce(r: &Ring<u64, 256>, n: u64) {
    for i in 0..n {
        // SAFETY: the producer thread of `two_cores` is the ring's only
        // producer.
        while unsafe { r.push(i) }.is_err() {
            std::hint::spin_loop();
        }
    }
}

fn produce_handle(r: &Ring<u64, 256>, n: u64) {
    // SAFETY: the ring's only producer, and the handle its only producer
    // access.
    let mut p = unsafe { r.producer() };
    for i in 0..n {
        while p.push(i).is_err() {
            std::hint::spin_loop();
        }
    }
}

fn produce_batches(r: &Ring<u64, 256>, n: u64) {
    let batch: Vec<u64> = (0..32).collect();
    let mut sent = 0u64;
    while sent < n {
        let want = (n - sent).min(32) as usize;
        // SAFETY: the ring's only producer.
        let k = unsafe { r.push_batch(&batch[..want]) };
        sent += k as u64;
        if k == 0 {
            std::hint::spin_loop();
        }
    }
}

fn consume(q: &Ring<u64, 256>, n: u64) {
    let mut got = 0;
    while got < n {
        // SAFETY: the consumer thread of `two_cores` is the ring's only
        // consumer.
        if let Some(v) = unsafe { q.pop() } {
            black_box(v);
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn consume_handle(q: &Ring<u64, 256>, n: u64) {
    // SAFETY: the ring's only consumer, and the handle its only consumer
    // access.
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

/// `rtrb`'s ring of 256 in the same stream.
fn rtrb_stream(msgs: u64) -> Duration {
    let (mut p, mut c) = rtrb::RingBuffer::<u64>::new(256);
    two_cores(
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
    )
}
