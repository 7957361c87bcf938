//! The object cache on the hosted backend: 4 CPUs getting and putting
//! concurrently, objects crossing CPUs, no object handed out twice, and the
//! constructor run once per object.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;
use lwkt_slab::objcache::{ObjCache, SlabSource};
use lwkt_slab::{HostedPages, MallocType, Slab};

static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 4);
static M_OBJ: MallocType = MallocType::new("objs");
static CTORS: AtomicUsize = AtomicUsize::new(0);

struct Obj {
    owner: AtomicUsize,
}

fn make() -> Obj {
    CTORS.fetch_add(1, Ordering::Relaxed);
    Obj {
        owner: AtomicUsize::new(usize::MAX),
    }
}

type Cache = ObjCache<Obj, SlabSource<'static, HostedPages>, 8>;

#[test]
fn four_cpus_never_share_an_object_and_construct_few() {
    let cache: &'static Cache = Box::leak(Box::new(ObjCache::new(
        SlabSource {
            slab: &SLAB,
            ty: &M_OBJ,
        },
        4,
        0,
        make,
        None,
    )));
    let out: Arc<Mutex<HashSet<usize>>> = Arc::new(Mutex::new(HashSet::new()));
    let handoff: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    Machine::new(4).unwrap().run(move |cur| {
        let hs: Vec<_> = (0..8u32)
            .map(|t| {
                let (out, handoff) = (out.clone(), handoff.clone());
                cur.spawn_on(CpuId::new(t % 4), move |me| {
                    let mut mine = Vec::new();
                    for i in 0..20_000usize {
                        if i % 3 != 2 {
                            let o = cache.get(me).unwrap();
                            assert!(
                                out.lock().unwrap().insert(o.as_ptr() as usize),
                                "handed out twice"
                            );
                            // SAFETY: a live object we hold.
                            let prev = unsafe { o.as_ref() }
                                .owner
                                .swap(t as usize, Ordering::Relaxed);
                            assert_eq!(prev, usize::MAX, "object still owned by {prev}");
                            mine.push(o.as_ptr() as usize);
                        } else if let Some(a) = mine.pop().or_else(|| handoff.lock().unwrap().pop())
                        {
                            let o = std::ptr::NonNull::new(a as *mut Obj).unwrap();
                            // SAFETY: we hold it.
                            unsafe { o.as_ref() }
                                .owner
                                .store(usize::MAX, Ordering::Relaxed);
                            assert!(out.lock().unwrap().remove(&a));
                            // SAFETY: from `get`, given back once.
                            unsafe { cache.put(me, o) };
                        }
                        if i % 1000 == 0 {
                            // Leave some for another CPU to put back.
                            if let Some(a) = mine.pop() {
                                handoff.lock().unwrap().push(a);
                            }
                            me.yield_now();
                        }
                    }
                    for a in mine {
                        let o = std::ptr::NonNull::new(a as *mut Obj).unwrap();
                        // SAFETY: as above.
                        unsafe { o.as_ref() }
                            .owner
                            .store(usize::MAX, Ordering::Relaxed);
                        assert!(out.lock().unwrap().remove(&a));
                        // SAFETY: as above.
                        unsafe { cache.put(me, o) };
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
        for a in handoff.lock().unwrap().drain(..) {
            let o = std::ptr::NonNull::new(a as *mut Obj).unwrap();
            // SAFETY: as above.
            unsafe { o.as_ref() }
                .owner
                .store(usize::MAX, Ordering::Relaxed);
            out.lock().unwrap().remove(&a);
            // SAFETY: as above.
            unsafe { cache.put(cur, o) };
        }
        assert!(out.lock().unwrap().is_empty());
        let st = cache.stats();
        // 8 threads hold at most ~13,400 objects each at the peak; what
        // matters is that gets far outnumber constructions.
        assert!(st.gets > 100_000 && st.constructed < st.gets / 2, "{st:?}");
        assert_eq!(st.constructed as usize, CTORS.load(Ordering::Relaxed));
        for c in 0..4 {
            let t = cur
                .spawn_on(CpuId::new(c), move |me| cache.reclaim(me))
                .unwrap();
            cur.join(&t);
        }
        assert_eq!(cache.stats().live, 0);
    });
    assert_eq!(M_OBJ.stats().in_use, 0);
}
