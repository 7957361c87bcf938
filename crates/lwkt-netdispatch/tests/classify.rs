//! Classification of well-formed frames of every supported kind, VLAN
//! tags, fragments and IPv6 extension headers, and malformed input of every
//! kind counted rather than crashing.

use etherparse::{PacketBuilder, VlanId};
use lwkt_netdispatch::classify::{classify, Class, Counters, Kind, Malformed, Other};
use lwkt_netdispatch::{Dispatcher, Flow};
use proptest::prelude::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 1000);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// An Ethernet + IPv6 frame with the given next-header and bytes after the
/// fixed header.
fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&MAC_B);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    v.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, 64]);
    v.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v.extend_from_slice(rest);
    v
}

/// A UDP header with 4 bytes of payload.
fn udp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&[0, 12, 0, 0, 1, 2, 3, 4]);
    v
}

const IP_OFF: usize = 14;

#[test]
fn tcp_and_udp_over_ipv4() {
    let f = classify(&tcp4(A, 40000, B, 80, b"GET /"));
    assert_eq!(f, Class::Flow(Flow::tcp(A.into(), 40000, B.into(), 80)));
    assert_eq!(f.kind(), Kind::Tcp);
    let u = classify(&udp4(B, 53, A, 5353, b"answer"));
    assert_eq!(u, Class::Flow(Flow::udp(B.into(), 53, A.into(), 5353)));
}

#[test]
fn ipv4_options_are_skipped() {
    // IHL 6: one 4-byte option word (NOP NOP NOP EOL) before UDP.
    let mut f = udp4(A, 1, B, 2, b"x");
    f[IP_OFF] = 0x46;
    let total = u16::from_be_bytes([f[IP_OFF + 2], f[IP_OFF + 3]]) + 4;
    f[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&total.to_be_bytes());
    f.splice(IP_OFF + 20..IP_OFF + 20, [1, 1, 1, 0]);
    assert_eq!(
        classify(&f),
        Class::Flow(Flow::udp(A.into(), 1, B.into(), 2))
    );
}

#[test]
fn vlan_tags_single_and_double() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(42).unwrap())
        .ipv4(A, B, 64)
        .tcp(1234, 443, 7, 100);
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    assert_eq!(
        classify(&v),
        Class::Flow(Flow::tcp(A.into(), 1234, B.into(), 443))
    );

    // Q-in-Q: an 802.1ad outer tag around an 802.1Q tag, built by hand.
    let inner = udp4(A, 9, B, 10, b"q");
    let mut q = Vec::new();
    q.extend_from_slice(&inner[..12]);
    q.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x2a]);
    q.extend_from_slice(&inner[12..]);
    assert_eq!(
        classify(&q),
        Class::Flow(Flow::udp(A.into(), 9, B.into(), 10))
    );
}

#[test]
fn ipv4_fragments_all_go_to_one_cpu() {
    let whole = udp4(A, 7000, B, 7001, &[0u8; 64]);
    // First fragment: more-fragments set, offset 0.
    let mut first = whole.clone();
    first[IP_OFF + 6] = 0x20;
    // A later fragment: offset 8 (in 8-byte units: 64 bytes), no MF.
    let mut later = whole.clone();
    later[IP_OFF + 6] = 0x00;
    later[IP_OFF + 7] = 0x08;
    let frag = Class::Fragment {
        src: A.into(),
        dst: B.into(),
        proto: 17,
    };
    assert_eq!(classify(&first), frag);
    assert_eq!(classify(&later), frag);
    for n in 1..=8 {
        let d = Dispatcher::new(n).unwrap();
        assert_eq!(d.route(&first).cpu, d.route(&later).cpu);
        // The reverse direction's fragments meet them there too.
        let mut back = udp4(B, 7001, A, 7000, &[0u8; 64]);
        back[IP_OFF + 6] = 0x20;
        assert_eq!(d.route(&back).cpu, d.route(&first).cpu);
    }
}

#[test]
fn ipv6_fragments_and_extension_headers() {
    // Fragment header (44): next UDP, offset 0 with M set, id 7.
    let mut rest = vec![17, 0, 0x00, 0x01, 0, 0, 0, 7];
    rest.extend_from_slice(&udp_hdr(1000, 2000));
    let c = classify(&ipv6(44, &rest));
    assert!(matches!(c, Class::Fragment { proto: 17, .. }), "{c:?}");

    // Hop-by-hop options (0) then TCP: the flow is found past the options.
    let mut rest = vec![6, 0, 1, 4, 0, 0, 0, 0];
    let tcp = tcp4(A, 5555, B, 80, b"");
    rest.extend_from_slice(&tcp[IP_OFF + 20..]);
    let c = classify(&ipv6(0, &rest));
    match c {
        Class::Flow(f) => assert_eq!((f.sport, f.dport), (5555, 80)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn packets_without_a_flow_go_to_cpu_0() {
    let d = Dispatcher::new(4).unwrap();
    let cases: Vec<(Vec<u8>, Other)> = vec![
        (
            udp4(A, 5, [224, 0, 0, 251], 5353, b"mdns"),
            Other::Multicast,
        ),
        (
            udp4(A, 68, [255, 255, 255, 255], 67, b"dhcp"),
            Other::Broadcast,
        ),
        (
            {
                let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(A, B, 64)
                    .icmpv4_echo_request(1, 1);
                let mut v = Vec::new();
                b.write(&mut v, b"ping").unwrap();
                v
            },
            Other::Icmp,
        ),
        (
            {
                let mut f = udp4(A, 1, B, 2, b"");
                f[IP_OFF + 9] = 132; // SCTP
                f
            },
            Other::IpProto(132),
        ),
        (
            {
                let mut f = vec![0u8; 60];
                f[12..14].copy_from_slice(&[0x88, 0xcc]); // LLDP
                f
            },
            Other::EtherType(0x88cc),
        ),
        (
            {
                let mut f = vec![0u8; 42];
                f[12..14].copy_from_slice(&[0x08, 0x06]);
                f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                f
            },
            Other::Arp,
        ),
        (
            ipv6(17, &udp_hdr(1, 2))
                .iter()
                .enumerate()
                .map(|(i, &b)| if i == 38 { 0xff } else { b })
                .collect(),
            Other::Multicast,
        ),
    ];
    for (frame, want) in cases {
        let r = d.route(&frame);
        assert_eq!(r.class, Class::Other(want));
        assert_eq!(r.cpu, Some(0), "{want:?}");
    }
}

#[test]
#[allow(clippy::vec_init_then_push)] // one case per statement reads better
fn malformed_input_of_every_kind_is_counted() {
    let good = tcp4(A, 1, B, 2, b"payload");
    let mut cases: Vec<(&str, Vec<u8>, Malformed)> = Vec::new();
    cases.push(("empty", vec![], Malformed::Truncated));
    cases.push(("short ethernet", good[..10].to_vec(), Malformed::Truncated));
    cases.push((
        "short ip",
        good[..IP_OFF + 12].to_vec(),
        Malformed::Truncated,
    ));
    cases.push((
        "short tcp",
        good[..IP_OFF + 30].to_vec(),
        Malformed::Truncated,
    ));
    let mut long = good.clone();
    long[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("total length past the end", long, Malformed::Truncated));
    let mut v7 = good.clone();
    v7[IP_OFF] = 0x75;
    cases.push(("ip version 7", v7, Malformed::BadIpHeader));
    let mut ihl = good.clone();
    ihl[IP_OFF] = 0x44;
    cases.push(("ihl 4", ihl, Malformed::BadIpHeader));
    let mut tot = good.clone();
    tot[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&10u16.to_be_bytes());
    cases.push(("total length below the header", tot, Malformed::Truncated));
    let mut doff = good.clone();
    doff[IP_OFF + 20 + 12] = 0x40;
    cases.push(("tcp data offset 4", doff, Malformed::BadTcpHeader));
    // IPv4 with an authentication header (51) of payload length 0.
    let mut ah = udp4(A, 1, B, 2, &[0u8; 16]);
    ah[IP_OFF + 9] = 51;
    ah[IP_OFF + 20] = 17;
    ah[IP_OFF + 21] = 0;
    cases.push(("ipv4 ah of length 0", ah, Malformed::BadIpExtension));
    // IPv6 hop-by-hop after a destination-options header.
    let mut rest = vec![0, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0];
    rest.extend_from_slice(&udp_hdr(1, 2));
    cases.push((
        "ipv6 hop-by-hop not first",
        ipv6(60, &rest),
        Malformed::BadIpExtension,
    ));
    // MACsec SecTAG with the version bit set.
    let mut macsec = vec![0u8; 12];
    macsec.extend_from_slice(&[0x88, 0xe5, 0x80, 0, 0, 0, 0, 1]);
    macsec.extend_from_slice(&[0u8; 40]);
    cases.push(("macsec version 1", macsec, Malformed::BadLink));

    let d = Dispatcher::new(3).unwrap();
    let mut counters = Counters::default();
    for (name, frame, want) in &cases {
        let r = d.route(frame);
        assert_eq!(r.class, Class::Malformed(*want), "{name}");
        assert_eq!(r.cpu, None, "{name}: malformed frames are dropped");
        counters.record(r.class.kind());
    }
    assert_eq!(counters.malformed(), cases.len() as u64);
    assert_eq!(counters.total(), cases.len() as u64);
    for k in Kind::ALL.iter().filter(|k| k.is_malformed()) {
        assert!(counters.get(*k) > 0, "no case for {k}");
    }
}

proptest! {
    /// Arbitrary bytes, and valid frames with bytes flipped or cut, are
    /// classified without a panic, and the dispatcher gives every
    /// non-malformed frame a CPU that exists.
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                    flip in any::<(usize, u8)>(),
                    cut in 0usize..120,
                    ncpus in 1usize..9) {
        let d = Dispatcher::new(ncpus).unwrap();
        let r = d.route(&bytes);
        prop_assert!(r.cpu.is_none_or(|c| c < ncpus));
        let mut f = tcp4(A, 1, B, 2, &bytes[..bytes.len().min(60)]);
        let i = flip.0 % f.len();
        f[i] ^= flip.1;
        f.truncate(cut.max(1).min(f.len()));
        let r = d.route(&f);
        prop_assert_eq!(r.cpu.is_none(), r.class.kind().is_malformed());
        prop_assert!(r.cpu.is_none_or(|c| c < ncpus));
    }
}
