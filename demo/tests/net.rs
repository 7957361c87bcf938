//! The network workload end to end on hosted machines: every packet and
//! every top-half request of a connection handled on one CPU (asserted in
//! the protocol threads, and checked after the run: no connection is in
//! two CPUs' tables), and the three designs agree on what they saw.

mod common;

use std::sync::Arc;

use common::{epb, ethernet, pcap, pcapng, temp};
use lwkt_arch_hosted::Machine;
use lwkt_demo::net::{self, Cut, Format, OverSnaplen};
use lwkt_netdispatch::classify::Kind;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use pcap_file::pcapng::blocks::name_resolution::NameResolutionBlock;
use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

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
    let c = net::read_capture(path).unwrap();
    assert_eq!(c.format, Format::Pcap);
    assert_eq!((c.over_snaplen.len(), c.cut), (0, None));
    assert_eq!(c.frames.len(), 2046);
    check(3, c.frames);
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
    let e = net::read_capture("/nonexistent.pcap").unwrap_err();
    assert!(e.starts_with("/nonexistent.pcap: "), "{e}");
    let f = temp("not-a-capture", b"not a capture");
    let e = net::read_capture(f.path()).unwrap_err();
    assert!(e.contains(f.path()), "{e}");
    assert!(e.contains("not a pcap or pcapng capture"), "{e}");

    // A link type other than Ethernet, in either format.
    let frames = net::generated(3, 2, 2);
    let mut raw = pcap(&frames, 65535);
    raw[20..24].copy_from_slice(&101u32.to_be_bytes()); // LINKTYPE_RAW
    let f = temp("raw.pcap", &raw);
    let e = net::read_capture(f.path()).unwrap_err();
    assert!(e.contains("only Ethernet"), "{e}");
    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::RAW,
        snaplen: 0,
        options: vec![],
    })
    .unwrap();
    w.write_pcapng_block(epb(0, &frames[0])).unwrap();
    let f = temp("raw.pcapng", &w.into_inner());
    let e = net::read_capture(f.path()).unwrap_err();
    assert!(e.contains("record 1: interface 0: link type"), "{e}");

    // Damage before the end is an error, not a cut: a block whose trailing
    // length disagrees with its leading one, followed by more blocks.
    let mut ng = pcapng(&frames, 0);
    let first_epb = 28 + 20; // section header, interface
    let len = u32::from_le_bytes(ng[first_epb + 4..first_epb + 8].try_into().unwrap()) as usize;
    ng[first_epb + len - 4] ^= 0xff;
    let f = temp("damaged.pcapng", &ng);
    let e = net::read_capture(f.path()).unwrap_err();
    assert!(e.contains("the block after record 0"), "{e}");

    // Nothing to replay.
    let f = temp("empty.pcapng", &pcapng(&[], 0));
    let e = net::read_capture(f.path()).unwrap_err();
    assert!(e.ends_with("no packets to replay"), "{e}");
}

#[test]
fn pcapng_replays_as_the_equivalent_pcap() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/lwkt-netdispatch/tests/fixtures/loopback.pcap"
    );
    let frames = net::read_capture(path).unwrap().frames;
    for (name, frames) in [
        ("loopback", frames),
        ("generated", net::generated(5, 40, 20)),
    ] {
        let p = temp(&format!("{name}.pcap"), &pcap(&frames, 262_144));
        let ng = temp(&format!("{name}.pcapng"), &pcapng(&frames, 262_144));
        let p = net::read_capture(p.path()).unwrap();
        let ng = net::read_capture(ng.path()).unwrap();
        assert_eq!((p.format, ng.format), (Format::Pcap, Format::PcapNg));
        assert_eq!(ng.frames, frames, "{name}: the pcapng frames");
        assert_eq!(p.frames, ng.frames, "{name}: pcap and pcapng differ");
        assert_eq!((ng.over_snaplen.len(), ng.cut), (0, None));
        check(3, ng.frames);
    }
}

#[test]
fn pcapng_interfaces_simple_packets_and_other_blocks() {
    let f = net::generated(7, 3, 2);
    // Big-endian section; interface 0 without a snapshot length, interface
    // 1 with 200; a name resolution block (skipped) between packets; a
    // Simple Packet Block (interface 0, padded to 4 bytes); then a second
    // section whose only interface has a snapshot length of 64.
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
    w.write_pcapng_block(ethernet(0)).unwrap();
    w.write_pcapng_block(ethernet(200)).unwrap();
    w.write_pcapng_block(epb(1, &f[0])).unwrap();
    w.write_pcapng_block(NameResolutionBlock {
        records: vec![],
        options: vec![],
    })
    .unwrap();
    let odd = &f[1][..f[1].len() - 1];
    assert_ne!(odd.len() % 4, 0, "so that the block is padded");
    w.write_pcapng_block(SimplePacketBlock {
        original_len: odd.len() as u32,
        data: odd.into(),
    })
    .unwrap();
    w.write_pcapng_block(epb(0, &f[2])).unwrap();
    let long = vec![0xab; 300];
    w.write_pcapng_block(epb(1, &long)).unwrap(); // over interface 1's 200
    w.write_pcapng_block(epb(0, &long)).unwrap(); // interface 0: no limit
    let mut bytes = w.into_inner();
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
    w.write_pcapng_block(ethernet(64)).unwrap();
    w.write_pcapng_block(epb(0, &f[3][..64])).unwrap();
    w.write_pcapng_block(epb(0, &f[3])).unwrap(); // over 64
    bytes.extend(w.into_inner());
    let t = temp("blocks.pcapng", &bytes);
    let c = net::read_capture(t.path()).unwrap();
    assert!(f[3].len() > 64);
    assert_eq!(
        c.frames,
        [&f[0][..], odd, &f[2], &long, &f[3][..64]].map(<[u8]>::to_vec)
    );
    assert_eq!(
        c.over_snaplen,
        [
            OverSnaplen {
                record: 4,
                captured: 300,
                snaplen: 200
            },
            OverSnaplen {
                record: 7,
                captured: f[3].len(),
                snaplen: 64
            }
        ]
    );
    assert_eq!(c.cut, None);
}

#[test]
fn a_cut_last_record_replays_the_records_before_it() {
    let frames = net::generated(11, 10, 5);
    let n = frames.len();
    let last = frames[n - 1].len();
    // (format, bytes, the last record's header, the header that holds its
    // length: pcap's record header, pcapng's type and block length)
    for (format, bytes, record_header, length_header) in [
        (Format::Pcap, pcap(&frames, 65535), 16, 16),
        (Format::PcapNg, pcapng(&frames, 65535), 28, 8),
    ] {
        // Cut in the last frame's data, then in the last record's header
        // before its length (the length is unknown: at least the rest of
        // that header is missing).
        let padded = if format == Format::PcapNg {
            last.next_multiple_of(4) + 4 // padding, trailing length
        } else {
            last
        };
        for (keep, missing, header_cut) in [
            (record_header + last / 2, padded - last / 2, false),
            (3, length_header - 3, true),
        ] {
            let total = record_header + padded;
            let cut = &bytes[..bytes.len() - total + keep];
            let t = temp(&format!("cut-{keep}.{format}"), cut);
            let c = net::read_capture(t.path()).unwrap();
            assert_eq!(c.format, format);
            assert_eq!(
                c.frames,
                frames[..n - 1],
                "{format}: the records before the cut"
            );
            assert_eq!(
                c.cut,
                Some(Cut {
                    record: n,
                    missing,
                    header_cut
                }),
                "{format}, {keep} bytes of the last record kept"
            );
            let msg = c.cut.unwrap().to_string();
            assert!(
                msg.starts_with(&format!("record {n} is cut short (")),
                "{msg}"
            );
            assert!(msg.contains(&format!("{missing} bytes missing")), "{msg}");
            check(2, c.frames);
        }
    }
}

#[test]
fn an_over_long_record_is_malformed_and_the_rest_replays() {
    let mut frames = net::generated(13, 10, 5);
    let snaplen = frames.iter().map(Vec::len).max().unwrap() as u32;
    let long = vec![0x5a; snaplen as usize + 1];
    frames.insert(3, long);
    for bytes in [pcap(&frames, snaplen), pcapng(&frames, snaplen)] {
        let t = temp("long", &bytes);
        let c = net::read_capture(t.path()).unwrap();
        let o = OverSnaplen {
            record: 4,
            captured: snaplen as usize + 1,
            snaplen,
        };
        assert_eq!(c.over_snaplen, [o]);
        assert_eq!(
            o.to_string(),
            format!("record 4: captured length {} bytes exceeds the snapshot length {snaplen}: malformed, not replayed", snaplen + 1)
        );
        let mut rest = frames.clone();
        rest.remove(3);
        assert_eq!(c.frames, rest, "{:?}: every other record replays", c.format);
        assert_eq!(c.cut, None);
    }
    // A snapshot length of 0 sets no limit.
    let t = temp("long-snaplen-0", &pcap(&frames, 0));
    let c = net::read_capture(t.path()).unwrap();
    assert_eq!((c.frames.len(), c.over_snaplen.len()), (frames.len(), 0));
}
