//! The cargo-fuzz corpus of `fuzz/fuzz_targets/dispatch.rs`, replayed as an
//! ordinary test.

mod check;

#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dispatch");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("the corpus directory") {
        check::run(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus at {}", dir.display());
}
