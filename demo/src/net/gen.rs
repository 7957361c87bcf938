//! The embedded workload: many concurrent TCP-like and UDP flows between
//! clients and servers, as raw Ethernet frames, interleaved the way a NIC
//! would see them, from a fixed seed (the same packets every run).

/// A deterministic pseudo-random stream (xorshift64*): the same numbers
/// from the same seed on every run (the workload generator here, and the
/// allocator benchmarks' workloads).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed` (any value; 0 is made odd).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// One direction of a flow's endpoints.
#[derive(Clone, Copy)]
struct Ends {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
}

impl Ends {
    fn reversed(self) -> Ends {
        Ends {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// An Ethernet II + IPv4 + TCP/UDP frame with `payload` bytes of payload.
fn frame(e: Ends, proto: u8, tcp_flags: u8, seq: u32, payload: usize) -> Vec<u8> {
    let l4 = if proto == TCP { 20 } else { 8 };
    let ip_len = 20 + l4 + payload;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&e.src);
    ip[16..20].copy_from_slice(&e.dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&e.sport.to_be_bytes());
    f.extend_from_slice(&e.dport.to_be_bytes());
    if proto == TCP {
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.push(0x50); // data offset 5
        f.push(tcp_flags);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(31)));
    f
}

fn checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The packets of `tcp` TCP-like connections (handshake, data both ways,
/// FIN both ways) and `udp` UDP exchanges, interleaved at random; the same
/// packets for the same arguments.
///
/// ```
/// let p = lwkt_demo::net::generated(1, 10, 5);
/// assert_eq!(p, lwkt_demo::net::generated(1, 10, 5));
/// assert!(p.len() >= 10 * 7 + 5 * 2);
/// ```
pub fn packets(seed: u64, tcp: usize, udp: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut flows: Vec<Vec<Vec<u8>>> = Vec::with_capacity(tcp + udp);
    for i in 0..tcp + udp {
        let client = [
            10,
            0,
            (rng.below(200) + 1) as u8,
            (rng.below(250) + 1) as u8,
        ];
        let server = [192, 168, 1, (i % 8 + 10) as u8];
        let e = Ends {
            src: client,
            dst: server,
            sport: 1024 + rng.below(60_000) as u16,
            dport: [80, 443, 53, 8080][i % 4],
        };
        let r = e.reversed();
        let mut p = Vec::new();
        if i < tcp {
            p.push(frame(e, TCP, SYN, 0, 0));
            p.push(frame(r, TCP, SYN | ACK, 0, 0));
            p.push(frame(e, TCP, ACK, 1, 0));
            for k in 0..rng.below(12) as u32 {
                p.push(frame(e, TCP, ACK, 2 + k, 100 + rng.below(400) as usize));
                p.push(frame(r, TCP, ACK, 2 + k, 200 + rng.below(1200) as usize));
            }
            p.push(frame(e, TCP, FIN | ACK, 99, 0));
            p.push(frame(r, TCP, FIN | ACK, 99, 0));
        } else {
            for k in 0..1 + rng.below(4) as u32 {
                p.push(frame(e, UDP, 0, k, 40 + rng.below(100) as usize));
                p.push(frame(r, UDP, 0, k, 100 + rng.below(400) as usize));
            }
        }
        flows.push(p);
    }
    // Interleave: repeatedly take the next packet of a random unfinished
    // flow, keeping each flow's own order.
    let total: usize = flows.iter().map(Vec::len).sum();
    let mut next = vec![0usize; flows.len()];
    let mut live: Vec<usize> = (0..flows.len()).collect();
    let mut out = Vec::with_capacity(total);
    while !live.is_empty() {
        let k = rng.below(live.len() as u64) as usize;
        let f = live[k];
        out.push(std::mem::take(&mut flows[f][next[f]]));
        next[f] += 1;
        if next[f] == flows[f].len() {
            live.swap_remove(k);
        }
    }
    out
}
