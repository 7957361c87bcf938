//! Operation sequences against the slab with a reference model, shared by
//! the property test, the fuzz target (`fuzz/fuzz_targets/slab_ops.rs`)
//! and the replay of the fuzz corpus: alloc, free, realloc and reclaim on
//! several CPUs, checking after every step that no two live blocks
//! overlap, every block still holds what was written to it, statistics
//! match the model, and the slab's own invariant check passes.
#![allow(dead_code, unreachable_pub)]

use core::alloc::Layout;
use core::ptr::NonNull;
use std::collections::BTreeMap;

use lwkt_slab::{
    CpuContext, Domain, DomainId, Flags, HostedPages, MallocType, Slab, SlabError, ZONE_SIZE,
};

/// CPUs the sequences run on.
pub const CPUS: usize = 4;

/// One step.
#[derive(Debug, Clone)]
pub enum Op {
    Alloc {
        cpu: u8,
        size: u32,
        align_log2: u8,
        zero: bool,
    },
    Free {
        cpu: u8,
        pick: u16,
    },
    Realloc {
        cpu: u8,
        pick: u16,
        size: u32,
    },
    Reclaim {
        cpu: u8,
    },
}

/// Turn arbitrary bytes into operations (five bytes each).
pub fn decode(data: &[u8]) -> Vec<Op> {
    data.chunks_exact(5)
        .map(|c| {
            let cpu = c[0] >> 4;
            let arg = u32::from_le_bytes([c[1], c[2], c[3], c[4]]);
            match c[0] & 0x0f {
                0..=6 => Op::Alloc {
                    cpu,
                    size: arg % 40_000,
                    align_log2: c[4] % 14,
                    zero: c[3] & 1 == 1,
                },
                7..=11 => Op::Free {
                    cpu,
                    pick: arg as u16,
                },
                12..=14 => Op::Realloc {
                    cpu,
                    pick: arg as u16,
                    size: (arg >> 16) % 40_000,
                },
                _ => Op::Reclaim { cpu },
            }
        })
        .collect()
}

/// CPU `n` in a single-threaded run: nothing else uses it.
struct On(usize);
// SAFETY: the runner is single-threaded and uses one index at a time.
unsafe impl CpuContext for On {
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        f(self.0)
    }
    fn domain(&self) -> Domain {
        // One domain for every run: each run has its own slab.
        static ID: DomainId = DomainId::new();
        ID.domain()
    }
}

struct Live {
    layout: Layout,
    fill: u8,
}

/// Run `ops` against a fresh slab (small enough to run out sometimes) and
/// the model; panics on the first disagreement.
pub fn run(ops: &[Op]) {
    let ty = &MallocType::new("ops");
    let slab = Slab::new(HostedPages::new(24 * ZONE_SIZE), CPUS);
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut stamp = 0u8;
    let mut bytes = 0isize;
    for op in ops {
        stamp = stamp.wrapping_add(1).max(1);
        match *op {
            Op::Alloc {
                cpu,
                size,
                align_log2,
                zero,
            } => {
                let cx = On(cpu as usize % CPUS);
                let Ok(layout) = Layout::from_size_align(size as usize, 1 << align_log2) else {
                    continue;
                };
                let flags = if zero { Flags::ZERO } else { Flags::NONE };
                match slab.alloc(&cx, layout, ty, flags) {
                    Ok(p) => {
                        let a = p.as_ptr() as usize;
                        assert_eq!(a % layout.align(), 0, "misaligned");
                        // SAFETY: a fresh block of `size` bytes.
                        let b =
                            unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), layout.size()) };
                        if zero {
                            assert!(b.iter().all(|&x| x == 0), "ZERO block not zeroed");
                        }
                        b.fill(stamp);
                        insert(
                            &mut live,
                            a,
                            Live {
                                layout,
                                fill: stamp,
                            },
                        );
                        bytes += 1;
                    }
                    Err(SlabError::ZeroSize) => assert_eq!(size, 0),
                    Err(SlabError::AlignTooLarge { .. }) => assert!(layout.align() > 4096),
                    Err(SlabError::Exhausted) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Free { cpu, pick } => {
                let Some(a) = nth(&live, pick) else { continue };
                let l = live.remove(&a).unwrap();
                verify(a, &l);
                // SAFETY: allocated by this slab with `l.layout`, freed once.
                unsafe {
                    slab.free(
                        &On(cpu as usize % CPUS),
                        NonNull::new(a as *mut u8).unwrap(),
                        l.layout,
                        ty,
                    )
                };
                bytes -= 1;
            }
            Op::Realloc { cpu, pick, size } => {
                let Some(a) = nth(&live, pick) else { continue };
                if size == 0 {
                    continue;
                }
                let l = live.remove(&a).unwrap();
                verify(a, &l);
                let cx = On(cpu as usize % CPUS);
                // SAFETY: as for free.
                let r = unsafe {
                    slab.realloc(
                        &cx,
                        NonNull::new(a as *mut u8).unwrap(),
                        l.layout,
                        size as usize,
                        ty,
                        Flags::NONE,
                    )
                };
                match r {
                    Ok(p) => {
                        let layout =
                            Layout::from_size_align(size as usize, l.layout.align()).unwrap();
                        let keep = l.layout.size().min(layout.size());
                        // SAFETY: the new block of `size` bytes.
                        let b =
                            unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), layout.size()) };
                        assert!(
                            b[..keep].iter().all(|&x| x == l.fill),
                            "realloc lost contents"
                        );
                        b.fill(stamp);
                        insert(
                            &mut live,
                            p.as_ptr() as usize,
                            Live {
                                layout,
                                fill: stamp,
                            },
                        );
                    }
                    Err(SlabError::Exhausted) => {
                        insert(&mut live, a, l);
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Reclaim { cpu } => slab.reclaim(&On(cpu as usize % CPUS)),
        }
        for c in 0..CPUS {
            if let Err(e) = slab.check(&On(c)) {
                panic!("invariant broken on CPU {c} after {op:?}: {e}");
            }
        }
        assert_eq!(
            ty.stats().in_use,
            bytes,
            "statistics disagree with the model"
        );
    }
    for (a, l) in std::mem::take(&mut live) {
        verify(a, &l);
        // SAFETY: as above.
        unsafe { slab.free(&On(0), NonNull::new(a as *mut u8).unwrap(), l.layout, ty) };
    }
    let st = ty.stats();
    assert_eq!((st.in_use, st.bytes), (0, 0));
}

fn nth(live: &BTreeMap<usize, Live>, pick: u16) -> Option<usize> {
    if live.is_empty() {
        return None;
    }
    live.keys().nth(pick as usize % live.len()).copied()
}

/// Record a block, checking it overlaps no live one.
fn insert(live: &mut BTreeMap<usize, Live>, a: usize, l: Live) {
    if let Some((&b, lb)) = live.range(..=a).next_back() {
        assert!(b + lb.layout.size() <= a, "block at {a:#x} overlaps {b:#x}");
    }
    if let Some((&b, _)) = live.range(a..).next() {
        assert!(a + l.layout.size() <= b, "block at {a:#x} overlaps {b:#x}");
    }
    live.insert(a, l);
}

fn verify(a: usize, l: &Live) {
    // SAFETY: a live block of ours.
    let b = unsafe { core::slice::from_raw_parts(a as *const u8, l.layout.size()) };
    assert!(
        b.iter().all(|&x| x == l.fill),
        "block at {a:#x} was overwritten"
    );
}
