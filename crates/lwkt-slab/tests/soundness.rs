//! Misuse that safe code could reach: a slab's per-CPU state shared by two
//! contexts that each call themselves CPU 0 (issue 15, hole 7).

mod common;

use core::alloc::Layout;
use std::collections::HashSet;
use std::sync::Mutex;

use common::{is_child, run_child, within_seconds};
use lwkt_slab::{Flags, HostedPages, MallocType, Slab, ThreadSlots};

const L: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// Blocks live anywhere at once: a block handed out twice is reported.
static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn hand_out(a: usize) {
    let mut g = LIVE.lock().unwrap();
    assert!(
        g.get_or_insert_with(HashSet::new).insert(a),
        "block {a:#x} handed out twice"
    );
}

fn give_back(a: usize) {
    LIVE.lock().unwrap().as_mut().unwrap().remove(&a);
}

/// Hole 7, first form: two `ThreadSlots::new(1)`, each with a slot 0, used
/// from two OS threads on one slab. Before the fix: SIGSEGV in `Zone::pop`
/// or a block handed out twice. Now the second context is refused.
#[test]
fn two_thread_slots_on_one_slab_are_refused() {
    if !is_child() {
        let (ok, err) = run_child("two_thread_slots_on_one_slab_are_refused");
        assert!(ok, "child failed:\n{err}");
        return;
    }
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 1);
    static T: MallocType = MallocType::new("hole7");
    static A: ThreadSlots = ThreadSlots::new(1);
    static B: ThreadSlots = ThreadSlots::new(1);
    within_seconds(60, "two ThreadSlots", || {
        let run = |slots: &'static ThreadSlots| {
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let ps: Vec<_> = (0..32)
                        .map(|_| S.alloc(slots, L, &T, Flags::NONE).unwrap())
                        .collect();
                    for p in &ps {
                        hand_out(p.as_ptr() as usize);
                    }
                    for p in ps {
                        give_back(p.as_ptr() as usize);
                        // SAFETY: allocated above with `L` and `T`.
                        unsafe { S.free(slots, p, L, &T) };
                    }
                }
            })
        };
        let (a, b) = (run(&A), run(&B));
        let results = [a.join(), b.join()];
        let refused: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(refused.len(), 1, "exactly one context refused: {refused:?}");
        assert!(
            refused[0].starts_with("lwkt-slab: ") && refused[0].contains("another"),
            "{}",
            refused[0]
        );
    });
}

/// Hole 7, second form: two hosted machines, each with a CPU 0, on one
/// static slab. Before the fix: blocks live in both machines at once (286
/// in the audit's run), and `Slab::check` could spin. Now the second
/// machine's thread is refused (a panic in a thread body aborts).
#[test]
fn two_machines_on_one_slab_are_refused() {
    if !is_child() {
        let (ok, err) = run_child("two_machines_on_one_slab_are_refused");
        assert!(!ok, "the child should have aborted:\n{err}");
        assert!(
            err.contains("lwkt-slab: ") && err.contains("another"),
            "no clear refusal:\n{err}"
        );
        assert!(!err.contains("handed out twice"), "{err}");
        return;
    }
    static S: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 1);
    static T: MallocType = MallocType::new("hole7m");
    within_seconds(60, "two machines", || {
        let run = || {
            std::thread::spawn(|| {
                lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
                    for _ in 0..20_000 {
                        let ps: Vec<_> = (0..32)
                            .map(|_| S.alloc(cur, L, &T, Flags::NONE).unwrap())
                            .collect();
                        for p in &ps {
                            hand_out(p.as_ptr() as usize);
                        }
                        for p in ps {
                            give_back(p.as_ptr() as usize);
                            // SAFETY: allocated above with `L` and `T`.
                            unsafe { S.free(cur, p, L, &T) };
                        }
                        S.check(cur).unwrap();
                    }
                })
            })
        };
        let (a, b) = (run(), run());
        let _ = (a.join(), b.join());
    });
}

/// A slab and an object cache bound by a bare `MyCpu`: an IPI function
/// (which has no thread) and `cur.my_cpu()` each use an unbound one first,
/// and the machine's threads use them after; a second machine is still
/// refused, by `Cur` and by `MyCpu` alike, and after `unbind` (the first
/// machine stopped) it is served. Before the machine id (the slab
/// recognised a machine through a `ThreadHandle` of the first `Cur`), the
/// IPI function's first use panicked ("a bare MyCpu cannot bind it"), which
/// aborts the process.
#[test]
fn a_bare_my_cpu_binds_and_another_machine_is_still_refused() {
    if !is_child() {
        let (ok, err) = run_child("a_bare_my_cpu_binds_and_another_machine_is_still_refused");
        assert!(ok, "child failed:\n{err}");
        return;
    }
    use lwkt_core::{CpuId, MyCpu};
    use lwkt_slab::objcache::{ObjCache, SlabSource};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static S: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 2);
    static S2: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 2);
    static T: MallocType = MallocType::new("bare-mycpu");
    static IPI_RAN: AtomicUsize = AtomicUsize::new(0);
    static C: std::sync::OnceLock<ObjCache<[u64; 4], SlabSource<'static, HostedPages>, 4>> =
        std::sync::OnceLock::new();
    let cache =
        C.get_or_init(|| ObjCache::new(SlabSource { slab: &S2, ty: &T }, 2, 0, || [7; 4], None));

    /// Runs on CPU 1 in interrupt context: the slab's first user.
    fn first_use(my: MyCpu<'_>, _: usize, _: usize) {
        let p = S.alloc(&my, L, &T, Flags::ZERO).unwrap();
        // SAFETY: allocated just above with `L` and `T`.
        unsafe { S.free(&my, p, L, &T) };
        S.check(&my).unwrap();
        IPI_RAN.store(1, Ordering::Release);
    }

    fn refused<R>(f: impl FnOnce() -> R) -> String {
        let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) else {
            panic!("not refused");
        };
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    within_seconds(60, "bare MyCpu", || {
        lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
            cur.my_cpu()
                .send_ipi(CpuId::new(1), first_use, 0, 0)
                .unwrap();
            while IPI_RAN.load(Ordering::Acquire) == 0 {
                cur.yield_now();
            }
            // The same machine, through a thread: served.
            let p = S.alloc(cur, L, &T, Flags::NONE).unwrap();
            // SAFETY: allocated just above with `L` and `T`.
            unsafe { S.free(cur, p, L, &T) };
            // `cur.my_cpu()` binds the cache (and its slab) first.
            let my = cur.my_cpu();
            let o = cache.get(&my).unwrap();
            // SAFETY: a constructed object of this cache, put back once.
            unsafe {
                assert_eq!(*o.as_ptr(), [7; 4]);
                cache.put(&my, o);
            }
            let o = cache.get(cur).unwrap();
            // SAFETY: as above.
            unsafe { cache.put(cur, o) };
            cache.reclaim(cur);
        });
        lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
            for msg in [
                refused(|| S.alloc(cur, L, &T, Flags::NONE)),
                refused(|| S.alloc(&cur.my_cpu(), L, &T, Flags::NONE)),
                refused(|| cache.get(&cur.my_cpu())),
                refused(|| S2.check(cur)),
            ] {
                assert!(
                    msg.starts_with("lwkt-slab: ") && msg.contains("another machine"),
                    "{msg}"
                );
            }
        });
        // SAFETY: both machines have stopped (`run` returned): every use of
        // the slabs and the cache happened before this point.
        unsafe {
            S.unbind();
            S2.unbind();
            cache.unbind();
        }
        lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
            let p = S.alloc(&cur.my_cpu(), L, &T, Flags::NONE).unwrap();
            // SAFETY: allocated just above with `L` and `T`.
            unsafe { S.free(cur, p, L, &T) };
            let o = cache.get(cur).unwrap();
            // SAFETY: a constructed object of this cache, put back once.
            unsafe { cache.put(cur, o) };
        });
    });
}
