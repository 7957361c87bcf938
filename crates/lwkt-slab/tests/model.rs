//! Property test: random alloc/free/realloc/reclaim sequences on four CPUs
//! against a reference model (no overlap, contents kept, statistics equal,
//! the slab's invariants after every step).

mod ops;

use ops::Op;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let cpu = 0u8..ops::CPUS as u8;
    prop_oneof![
        5 => (cpu.clone(), prop_oneof![1u32..64, 1u32..5000, 1u32..40_000], 0u8..13, any::<bool>())
            .prop_map(|(cpu, size, align_log2, zero)| Op::Alloc { cpu, size, align_log2, zero }),
        4 => (cpu.clone(), any::<u16>()).prop_map(|(cpu, pick)| Op::Free { cpu, pick }),
        2 => (cpu.clone(), any::<u16>(), 1u32..20_000)
            .prop_map(|(cpu, pick, size)| Op::Realloc { cpu, pick, size }),
        1 => cpu.prop_map(|cpu| Op::Reclaim { cpu }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn slab_matches_the_model(ops in prop::collection::vec(op(), 1..400)) {
        ops::run(&ops);
    }
}

/// The fuzz corpus, replayed as an ordinary test.
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/slab_ops");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("the corpus directory") {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        ops::run(&ops::decode(&data));
        n += 1;
    }
    assert!(n > 0, "empty corpus at {}", dir.display());
}
