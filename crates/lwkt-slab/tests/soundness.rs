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
