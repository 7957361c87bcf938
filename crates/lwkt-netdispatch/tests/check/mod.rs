//! One fuzz input checked against the dispatcher's promises, shared by the
//! fuzz target (`fuzz/fuzz_targets/dispatch.rs`) and the corpus replay
//! (`tests/fuzz_corpus.rs`): the first byte picks the CPU count (1 to 16)
//! and the hash, the rest is the frame.
#![allow(dead_code, unreachable_pub)]

use lwkt_netdispatch::classify::{classify, Class, Counters};
use lwkt_netdispatch::registry::DispatchError;
use lwkt_netdispatch::Dispatcher;

/// Classify and dispatch `data[1..]`, checking that nothing panics, a
/// frame gets a CPU exactly when it is not malformed, that CPU exists, the
/// reverse direction of a flow goes to the same CPU, and the frame is
/// counted once.
pub fn run(data: &[u8]) {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let ncpus = usize::from(sel % 16) + 1;
    let d = if sel & 0x10 == 0 {
        Dispatcher::new(ncpus).unwrap()
    } else {
        Dispatcher::legacy(ncpus).unwrap()
    };
    let r = d.route(frame);
    assert_eq!(
        r.class,
        classify(frame),
        "classification is a pure function"
    );
    assert_eq!(r.cpu.is_none(), r.class.kind().is_malformed());
    if let Some(cpu) = r.cpu {
        assert!(cpu < ncpus, "CPU {cpu} of {ncpus}");
    }
    match r.class {
        Class::Flow(f) => assert_eq!(d.cpu_of_flow(&f.reversed()), r.cpu.unwrap()),
        Class::Other(_) => assert_eq!(r.cpu, Some(0)),
        Class::Fragment { .. } | Class::Malformed(_) => {}
    }
    let mut c = Counters::default();
    c.record(r.class.kind());
    assert_eq!(c.total(), 1);
    assert_eq!(
        Dispatcher::new(0).unwrap_err(),
        DispatchError::BadCpuCount { ncpus: 0, max: 256 }
    );
}
