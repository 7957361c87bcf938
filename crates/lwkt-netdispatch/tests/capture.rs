//! The loopback capture in `tests/fixtures/loopback.pcap` (see its README):
//! every packet of every flow, in both directions, is dispatched to one CPU,
//! for every CPU count from 1 to 8 and for both hashes.

use std::collections::{HashMap, HashSet};

use lwkt_netdispatch::classify::{Counters, Kind};
use lwkt_netdispatch::{Dispatcher, Flow};
use pcap_file::pcap::PcapReader;

fn frames() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loopback.pcap");
    let mut r = PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        v.push(p.unwrap().data.into_owned());
    }
    v
}

#[test]
fn every_flow_of_the_capture_stays_on_one_cpu() {
    let frames = frames();
    assert_eq!(frames.len(), 2046, "the fixture as recorded");
    for n in 1..=8 {
        for (name, d) in [
            ("toeplitz", Dispatcher::new(n).unwrap()),
            ("legacy", Dispatcher::legacy(n).unwrap()),
        ] {
            let mut counters = Counters::default();
            let mut cpu_of: HashMap<Flow, usize> = HashMap::new();
            let mut directions: HashMap<Flow, HashSet<Flow>> = HashMap::new();
            for f in &frames {
                let r = d.route(f);
                counters.record(r.class.kind());
                let flow = r.flow().expect("only TCP and UDP were captured");
                let cpu = r.cpu.unwrap();
                let key = flow.canonical();
                let prev = *cpu_of.entry(key).or_insert(cpu);
                assert_eq!(
                    prev, cpu,
                    "{name}, {n} CPUs: {flow:?} moved from CPU {prev} to {cpu}"
                );
                directions.entry(key).or_default().insert(flow);
            }
            assert_eq!(counters.malformed(), 0);
            assert_eq!(counters.total(), 2046);
            // 150 HTTP connections and six UDP client sockets.
            assert_eq!(counters.nonzero().count(), 2, "{:?}", counters);
            assert!(counters.get(Kind::Tcp) > 1500 && counters.get(Kind::Udp) == 240);
            assert_eq!(cpu_of.len(), 156, "{name}, {n} CPUs");
            assert!(
                directions.values().all(|d| d.len() == 2),
                "both directions of every flow seen"
            );
            if n > 1 {
                let used: HashSet<usize> = cpu_of.values().copied().collect();
                assert!(used.len() > 1, "{name}, {n} CPUs: all flows on one CPU");
            }
        }
    }
}
