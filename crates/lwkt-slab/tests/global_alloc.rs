//! A real program on the slab: this whole test binary (the test harness,
//! its threads, a hosted LWKT machine and its vCPU threads) allocates from
//! `GlobalSlab`. The workload is allocation-heavy everyday Rust: strings,
//! hash maps, B-trees, vectors that grow (realloc), sorting, boxed trait
//! objects, across OS threads and LWKT threads, with frees on other threads
//! than the allocating ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;
use lwkt_slab::GlobalSlab;

#[global_allocator]
static ALLOC: GlobalSlab = GlobalSlab::new(8 << 30, 8);

/// A deterministic stream of words.
fn words(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 12) as usize;
            (0..len)
                .map(|i| (b'a' + ((x >> (i * 5)) % 7) as u8) as char)
                .collect()
        })
        .collect()
}

fn word_count(ws: &[String]) -> BTreeMap<String, usize> {
    let mut h: HashMap<&str, usize> = HashMap::new();
    for w in ws {
        *h.entry(w.as_str()).or_default() += 1;
    }
    let mut v: Vec<(&str, usize)> = h.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(w, c)| (w.to_owned(), c)).collect()
}

#[test]
fn os_threads_count_words_on_the_slab() {
    let before = ALLOC.stats();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let ws = words(t + 1, 100_000);
                let counts = word_count(&ws);
                assert_eq!(counts.values().sum::<usize>(), ws.len());
                // Hand the results to the parent: freed on another thread.
                (ws, counts)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Same input, same answer: recount on this thread and compare.
    for (t, (ws, counts)) in results.iter().enumerate() {
        assert_eq!(&word_count(&words(t as u64 + 1, 100_000)), counts);
        assert_eq!(ws.len(), 100_000);
    }
    assert!(ALLOC.stats().total > before.total + 400_000);
    drop(results);
}

trait Shape: Send {
    fn area(&self) -> f64;
}
struct Sq(f64);
struct Rect(f64, f64);
impl Shape for Sq {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
}
impl Shape for Rect {
    fn area(&self) -> f64 {
        self.0 * self.1
    }
}

#[test]
fn lwkt_threads_share_boxed_work_on_the_slab() {
    let inbox: Arc<Mutex<Vec<Box<dyn Shape>>>> = Arc::new(Mutex::new(Vec::new()));
    let total = Machine::new(4).unwrap().run({
        let inbox = inbox.clone();
        move |cur| {
            let hs: Vec<_> = (0..8u32)
                .map(|i| {
                    let inbox = inbox.clone();
                    cur.spawn_on(CpuId::new(i % 4), move |me| {
                        let mut local: Vec<Box<dyn Shape>> = Vec::new();
                        for k in 0..5000u32 {
                            let s: Box<dyn Shape> = if k % 2 == 0 {
                                Box::new(Sq(f64::from(k % 10)))
                            } else {
                                Box::new(Rect(1.0, f64::from(k % 10)))
                            };
                            local.push(s);
                            if k % 100 == 99 {
                                inbox.lock().unwrap().append(&mut local);
                                me.yield_now();
                            }
                        }
                    })
                    .unwrap()
                })
                .collect();
            for h in &hs {
                cur.join(h);
            }
            // Freed here, on CPU 0, whatever CPU made them.
            let all = std::mem::take(&mut *inbox.lock().unwrap());
            all.iter().map(|s| s.area()).sum::<f64>()
        }
    });
    // Per thread: 2500 squares of (k%10)^2 and 2500 rectangles of k%10.
    let per_thread: f64 = (0..5000u32)
        .map(|k| {
            let d = f64::from(k % 10);
            if k % 2 == 0 {
                d * d
            } else {
                d
            }
        })
        .sum();
    assert_eq!(total, 8.0 * per_thread);
}

#[test]
fn the_slab_is_consistent_after_heavy_use() {
    // Grow and shrink vectors through every size class (realloc), across
    // threads, then check every slot's structures.
    let hs: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut v: Vec<u64> = Vec::new();
                for i in 0..200_000u64 {
                    v.push(i ^ t);
                }
                v.truncate(10);
                v.shrink_to_fit();
                assert_eq!(v[9], 9 ^ t);
                v
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap().len(), 10);
    }
    let s = ALLOC.slab();
    s.reclaim(ALLOC.slots());
    s.check(ALLOC.slots()).unwrap();
}
