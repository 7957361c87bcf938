//! The network workload end to end on hosted machines: every packet and
//! every top-half request of a connection handled on one CPU (asserted in
//! the protocol threads, and checked after the run: no connection is in
//! two CPUs' tables), and the three designs agree on what they saw.

use std::sync::Arc;

use lwkt_arch_hosted::Machine;
use lwkt_demo::net;
use lwkt_netdispatch::classify::Kind;

fn check(ncpus: usize, frames: Vec<Vec<u8>>) {
    let frames = Arc::new(frames);
    let l = Machine::new(ncpus)
        .unwrap()
        .run(|cur| net::lwkt(cur, frames.clone(), true));
    assert!(
        l.flows_on_one_cpu,
        "{ncpus} CPUs: a connection in two tables"
    );
    assert_eq!(l.counters.total(), frames.len() as u64);
    assert!(l.requests > 0);
    let handled: u64 = l.per_cpu.iter().sum();
    assert_eq!(
        handled + l.counters.malformed(),
        frames.len() as u64,
        "a packet was lost"
    );
    let s = net::sharded(ncpus, &frames);
    let g = net::global(ncpus, &frames);
    assert_eq!(l.connections, s.connections);
    assert_eq!(l.connections, g.connections);
    assert_eq!(l.counters, s.counters);
    assert_eq!(l.counters, g.counters);
    if ncpus > 1 {
        assert!(
            l.per_cpu.iter().all(|&p| p > 0),
            "a CPU got nothing: {:?}",
            l.per_cpu
        );
    }
}

#[test]
fn generated_flows_on_1_2_3_and_5_cpus() {
    for n in [1, 2, 3, 5] {
        check(n, net::generated(n as u64, 400, 200));
    }
}

#[test]
fn the_loopback_capture_replays() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/lwkt-netdispatch/tests/fixtures/loopback.pcap"
    );
    let frames = net::read_pcap(path).unwrap();
    assert_eq!(frames.len(), 2046);
    check(3, frames);
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let mut frames = net::generated(9, 50, 50);
    let good = frames.len();
    frames.push(vec![1, 2, 3]);
    let mut cut = frames[0].clone();
    cut.truncate(30);
    frames.push(cut);
    let l = Machine::new(2)
        .unwrap()
        .run(|cur| net::lwkt(cur, Arc::new(frames), false));
    assert_eq!(l.counters.get(Kind::Truncated), 2);
    assert_eq!(l.per_cpu.iter().sum::<u64>(), good as u64);
}

#[test]
fn bad_capture_files_are_clear_errors() {
    let e = net::read_pcap("/nonexistent.pcap").unwrap_err();
    assert!(e.starts_with("/nonexistent.pcap: "), "{e}");
    let dir = std::env::temp_dir().join(format!("lwkt-net-{}", std::process::id()));
    std::fs::write(&dir, b"not a capture").unwrap();
    let e = net::read_pcap(dir.to_str().unwrap()).unwrap_err();
    assert!(e.contains(dir.to_str().unwrap()), "{e}");
    std::fs::remove_file(&dir).unwrap();
}
