//! Allocator workloads for whole-program comparisons: one source, built
//! into three binaries that differ only in their `#[global_allocator]`
//! (`alloc_slab`: lwkt-slab's `GlobalSlab`; `alloc_system`: the C
//! library's malloc; `alloc_mimalloc`: mimalloc). Each binary runs one
//! workload, named by its first argument, and prints a checksum so the
//! work cannot be optimised away:
//!
//! - `larson [threads]`: Larson and Krishnan's server model. Each thread
//!   owns an array of blocks (8 to 1000 bytes) and replaces random ones;
//!   after each epoch the arrays move one thread on around a ring, so most
//!   frees are of blocks another thread allocated (remote frees).
//! - `churn [threads]`: everyday Rust, allocation-heavy: hash maps and
//!   B-trees built and dropped, strings grown a char at a time, vectors
//!   grown to 3 MiB, boxes freed by another thread, short-lived threads.
//! - `xmalloc [threads]`: xmalloc-test's shape: half the threads allocate
//!   small blocks in batches, the other half free them; by default 32
//!   threads, more than cores and than `GlobalSlab`'s slots.
//!
//! No timing inside: the process is timed from outside (wall clock and
//! peak RSS).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

use lwkt_demo::net::Rng;

/// Run the workload the command line names; print its checksum.
///
/// # Panics
/// On an unknown workload name.
pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("churn", String::as_str);
    let threads = args.get(2).and_then(|s| s.parse().ok());
    let sum = match what {
        "larson" => larson(threads.unwrap_or(4), 100, 20_000, 1000),
        "churn" => churn(threads.unwrap_or(4)),
        "xmalloc" => xmalloc(threads.unwrap_or(32), 2000, 256),
        _ => panic!("workloads: larson, churn, xmalloc [threads]"),
    };
    println!("{what}: checksum {sum}");
}

/// Larson: `threads` threads, `epochs` epochs of `rounds` replacements in
/// an array of `slots` blocks; the arrays travel around the ring between
/// epochs.
fn larson(threads: usize, epochs: usize, rounds: usize, slots: usize) -> u64 {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| mpsc::channel::<Vec<Box<[u8]>>>())
        .unzip();
    let hs: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let next = txs[(t + 1) % threads].clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(2 * t as u64 + 1);
                let mut sum = 0u64;
                let mut blocks: Vec<Box<[u8]>> = (0..slots)
                    .map(|_| vec![0u8; 8 + rng.below(993) as usize].into_boxed_slice())
                    .collect();
                for e in 0..epochs {
                    for _ in 0..rounds {
                        let i = rng.below(slots as u64) as usize;
                        let n = 8 + rng.below(993) as usize;
                        let mut b = vec![0u8; n].into_boxed_slice();
                        b[n - 1] = e as u8;
                        sum += u64::from(blocks[i][blocks[i].len() - 1]);
                        blocks[i] = b;
                    }
                    next.send(blocks).unwrap();
                    blocks = rx.recv().unwrap();
                }
                sum + blocks.len() as u64
            })
        })
        .collect();
    drop(txs);
    hs.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Everyday allocation-heavy Rust on `threads` threads.
fn churn(threads: usize) -> u64 {
    let (tx, rx) = mpsc::channel::<Vec<Box<[u64; 4]>>>();
    // A thread that frees what the workers send it.
    let sink = std::thread::spawn(move || {
        let mut n = 0u64;
        for v in rx {
            n += v.iter().map(|b| b[3]).sum::<u64>();
        }
        n
    });
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(2 * t as u64 + 7);
                let mut sum = 0u64;
                for round in 0..20u64 {
                    // Hash map of strings, then a B-tree of its counts.
                    let mut h: HashMap<String, u64> = HashMap::new();
                    for _ in 0..40_000 {
                        let k = format!("k{}", rng.below(20_000));
                        *h.entry(k).or_default() += 1;
                    }
                    let b: BTreeMap<u64, Vec<String>> =
                        h.into_iter().fold(BTreeMap::new(), |mut b, (k, c)| {
                            b.entry(c).or_insert_with(Vec::new).push(k);
                            b
                        });
                    sum += b.len() as u64;
                    drop(b);
                    // Strings grown a char at a time.
                    for _ in 0..20 {
                        let mut s = String::new();
                        for i in 0..(50_000 + rng.below(50_000)) {
                            s.push(char::from(b'a' + (i % 26) as u8));
                        }
                        sum += s.len() as u64;
                    }
                    // Vectors grown to 3 MiB.
                    for _ in 0..4 {
                        let mut v: Vec<u64> = Vec::new();
                        for i in 0..(3 << 20) / 8 {
                            v.push(i);
                        }
                        sum += v[v.len() / 2];
                    }
                    // Boxes freed by another thread.
                    let boxes: Vec<Box<[u64; 4]>> = (0..20_000).map(|i| Box::new([i; 4])).collect();
                    tx.send(boxes).unwrap();
                    // Short-lived threads.
                    let kids: Vec<_> = (0..4)
                        .map(|k| {
                            std::thread::spawn(move || {
                                let v: Vec<String> =
                                    (0..2000).map(|i| format!("{round}-{k}-{i}")).collect();
                                v.iter().map(String::len).sum::<usize>() as u64
                            })
                        })
                        .collect();
                    sum += kids.into_iter().map(|k| k.join().unwrap()).sum::<u64>();
                }
                sum
            })
        })
        .collect();
    drop(tx);
    let s: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    s + sink.join().unwrap()
}

/// xmalloc-test: `threads / 2` producers each allocate `batches` batches
/// of `batch` small blocks (16 to 128 bytes) and hand each batch to their
/// consumer, which frees it.
fn xmalloc(threads: usize, batches: usize, batch: usize) -> u64 {
    let pairs = (threads / 2).max(1);
    let mut hs = Vec::new();
    for p in 0..pairs {
        let (tx, rx) = mpsc::sync_channel::<Vec<Box<[u8]>>>(4);
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng::new(2 * p as u64 + 3);
            for _ in 0..batches {
                let v: Vec<Box<[u8]>> = (0..batch)
                    .map(|_| {
                        let n = 16 + rng.below(113) as usize;
                        vec![n as u8; n].into_boxed_slice()
                    })
                    .collect();
                tx.send(v).unwrap();
            }
            0
        }));
        hs.push(std::thread::spawn(move || {
            let mut sum = 0u64;
            for v in rx {
                sum += v.iter().map(|b| u64::from(b[0])).sum::<u64>();
            }
            sum
        }));
    }
    hs.into_iter().map(|h| h.join().unwrap()).sum()
}
