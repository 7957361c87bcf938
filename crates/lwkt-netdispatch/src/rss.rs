//! Hashing a flow to a CPU: the Toeplitz hash NICs compute for receive-side
//! scaling (RSS), an indirection table from hash to CPU, and the 2004
//! paper's legacy hash.
//!
//! DragonFly: `sys/net/toeplitz.c` (`toeplitz_init()`, `toeplitz_rawhash_*`,
//! a key of two seed bytes repeated so both directions of a connection hash
//! alike), `netisr_hashcpu()`, and the original `INP_MPORT_HASH`
//! (`src ^ sport ^ dst ^ dport`) of `ip_demux.c`.
//!
//! The input layout is the one the RSS specification and NIC drivers use:
//! source address, destination address, source port, destination port, all
//! in network byte order (12 bytes for an IPv4 4-tuple, 36 for IPv6; the
//! 2-tuple forms stop after the addresses).
//!
//! ```
//! use lwkt_netdispatch::rss::{toeplitz_hash, MS_KEY};
//! // The first IPv4 vector of Microsoft's RSS verification suite:
//! // 66.9.149.187:2794 -> 161.142.100.80:1766.
//! let input = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
//! assert_eq!(toeplitz_hash(&MS_KEY, &input), 0x51cc_c178);
//! assert_eq!(toeplitz_hash(&MS_KEY, &input[..8]), 0x323e_8fc2);
//! ```

use alloc::boxed::Box;
use alloc::vec;
use core::fmt;
use core::net::IpAddr;

use crate::flow::Flow;

/// Bytes in an RSS key (the common 40-byte key, enough for IPv6 4-tuples).
pub const KEY_LEN: usize = 40;

/// The key of Microsoft's RSS verification suite (and many NICs' default).
pub const MS_KEY: [u8; KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The symmetric key DragonFly programs into NICs: the seed bytes `a, b`
/// repeated. Because the key repeats every 16 bits, swapping the two
/// addresses (32 bits apart) or the two ports (16 bits apart) leaves the
/// hash unchanged, so both directions of a connection land on one CPU.
/// DragonFly: `toeplitz_init()` with `toeplitz_keyseeds`.
///
/// ```
/// use lwkt_netdispatch::rss::{symmetric_key, toeplitz_hash};
/// let k = symmetric_key(0x6d, 0x5a);
/// let there = [10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50];
/// let back = [10, 0, 0, 2, 10, 0, 0, 1, 0x00, 0x50, 0x30, 0x39];
/// assert_eq!(toeplitz_hash(&k, &there), toeplitz_hash(&k, &back));
/// ```
pub const fn symmetric_key(a: u8, b: u8) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    let mut i = 0;
    while i < KEY_LEN {
        k[i] = if i % 2 == 0 { a } else { b };
        i += 1;
    }
    k
}

/// The default dispatch key: DragonFly's seeds (`0x6d, 0x5a`, the first two
/// bytes of [`MS_KEY`]) repeated.
pub const DEFAULT_KEY: [u8; KEY_LEN] = symmetric_key(0x6d, 0x5a);

/// The Toeplitz hash of `input` under `key`, bit by bit, as the RSS
/// specification defines it: for every set bit `i` of the input (most
/// significant bit of byte 0 first), XOR in the 32 key bits starting at
/// key bit `i`.
///
/// # Panics
/// If the key is shorter than the input plus 4 bytes (the last input bit
/// needs 32 key bits after it).
pub fn toeplitz_hash(key: &[u8], input: &[u8]) -> u32 {
    assert!(
        key.len() >= input.len() + 4,
        "lwkt-netdispatch: a {}-byte Toeplitz input needs a key of at least {} bytes, got {}",
        input.len(),
        input.len() + 4,
        key.len()
    );
    let mut hash = 0u32;
    for (i, &byte) in input.iter().enumerate() {
        let w = window64(key, i);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= (w >> (32 - bit)) as u32;
            }
        }
    }
    hash
}

/// Key bits `8*i .. 8*i + 64` (zero past the key's end), most significant
/// first: the windows of all 8 bits of input byte `i` lie in it.
fn window64(key: &[u8], i: usize) -> u64 {
    let mut w = 0u64;
    for j in 0..8 {
        w = (w << 8) | u64::from(key.get(i + j).copied().unwrap_or(0));
    }
    w
}

/// A Toeplitz hasher with the key expanded into one 256-entry table per
/// input byte position, so a hash is one lookup and one XOR per input byte
/// (12 for an IPv4 4-tuple) instead of up to eight per byte.
///
/// It holds `(key.len() - 4) * 1 KiB` of tables (36 KiB for a 40-byte key);
/// an IPv4 4-tuple touches the first 12 KiB.
///
/// ```
/// use lwkt_netdispatch::rss::{toeplitz_hash, Toeplitz, MS_KEY};
/// let t = Toeplitz::new(&MS_KEY);
/// let input = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
/// assert_eq!(t.hash(&input), toeplitz_hash(&MS_KEY, &input));
/// ```
pub struct Toeplitz {
    tables: Box<[[u32; 256]]>,
}

impl Toeplitz {
    /// Expand `key`.
    ///
    /// # Panics
    /// If the key is shorter than 5 bytes.
    pub fn new(key: &[u8]) -> Toeplitz {
        assert!(
            key.len() > 4,
            "lwkt-netdispatch: a Toeplitz key needs more than 4 bytes"
        );
        let mut tables = vec![[0u32; 256]; key.len() - 4].into_boxed_slice();
        for (i, t) in tables.iter_mut().enumerate() {
            let w = window64(key, i);
            for (v, slot) in t.iter_mut().enumerate() {
                let mut h = 0u32;
                for bit in 0..8 {
                    if v & (0x80 >> bit) != 0 {
                        h ^= (w >> (32 - bit)) as u32;
                    }
                }
                *slot = h;
            }
        }
        Toeplitz { tables }
    }

    /// The longest input this key can hash.
    pub fn max_input(&self) -> usize {
        self.tables.len()
    }

    /// The Toeplitz hash of `input` (equal to [`toeplitz_hash`] with this
    /// key).
    ///
    /// # Panics
    /// If `input` is longer than [`Toeplitz::max_input`].
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        assert!(
            input.len() <= self.tables.len(),
            "lwkt-netdispatch: Toeplitz input of {} bytes, key allows {}",
            input.len(),
            self.tables.len()
        );
        input
            .iter()
            .zip(self.tables.iter())
            .fold(0, |h, (&b, t)| h ^ t[b as usize])
    }

    /// The hash of a flow's 4-tuple in the standard layout.
    #[inline]
    pub fn hash_flow(&self, f: &Flow) -> u32 {
        let mut buf = [0u8; 36];
        let n = tuple_input(&mut buf, f.src, f.dst, Some((f.sport, f.dport)));
        self.hash(&buf[..n])
    }

    /// The hash of an address pair (the 2-tuple form).
    #[inline]
    pub fn hash_addrs(&self, src: IpAddr, dst: IpAddr) -> u32 {
        let mut buf = [0u8; 36];
        let n = tuple_input(&mut buf, src, dst, None);
        self.hash(&buf[..n])
    }
}

impl fmt::Debug for Toeplitz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Toeplitz")
            .field("max_input", &self.max_input())
            .finish_non_exhaustive()
    }
}

/// Write the standard RSS input for `src, dst` (and the ports, if given)
/// into `buf`; returns its length (8, 12, 32 or 36). Mixed address families
/// use the IPv6 layout with the IPv4 address mapped.
///
/// ```
/// use lwkt_netdispatch::rss::tuple_input;
/// let mut buf = [0u8; 36];
/// let n = tuple_input(&mut buf, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), Some((80, 443)));
/// assert_eq!(&buf[..n], &[10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]);
/// ```
pub fn tuple_input(
    buf: &mut [u8; 36],
    src: IpAddr,
    dst: IpAddr,
    ports: Option<(u16, u16)>,
) -> usize {
    let mut n = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[..4].copy_from_slice(&s.octets());
            buf[4..8].copy_from_slice(&d.octets());
            8
        }
        (s, d) => {
            buf[..16].copy_from_slice(&v6_octets(s));
            buf[16..32].copy_from_slice(&v6_octets(d));
            32
        }
    };
    if let Some((sp, dp)) = ports {
        buf[n..n + 2].copy_from_slice(&sp.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&dp.to_be_bytes());
        n += 4;
    }
    n
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The 2004 paper's hash: `src ^ sport ^ dst ^ dport`, with the addresses
/// folded to 32 bits and the result folded to its low byte so that a mask
/// or a modulo by the CPU count sees every input bit. Symmetric by
/// construction. DragonFly: the original `INP_MPORT_HASH`.
///
/// ```
/// use lwkt_netdispatch::{rss::legacy_hash, Flow};
/// let f = Flow::tcp([10, 0, 0, 1].into(), 1234, [10, 0, 0, 2].into(), 80);
/// assert_eq!(legacy_hash(&f), legacy_hash(&f.reversed()));
/// ```
pub fn legacy_hash(f: &Flow) -> u32 {
    let fold = |a: IpAddr| -> u32 {
        match a {
            IpAddr::V4(a) => u32::from_be_bytes(a.octets()),
            IpAddr::V6(a) => a
                .octets()
                .chunks_exact(4)
                .fold(0, |h, c| h ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
        }
    };
    let mut h = fold(f.src) ^ fold(f.dst) ^ u32::from(f.sport) ^ u32::from(f.dport);
    h ^= h >> 16;
    h ^= h >> 8;
    h
}

/// Entries in an [`Indirection`] table. NICs commonly have 128; with 15
/// CPUs that gives 9 entries to some CPUs and 8 to others, a 12.5% load
/// difference before any hashing noise. In software the table can be
/// larger: with 512 the worst case up to 16 CPUs is 35 against 34 (3%).
pub const RETA_SIZE: usize = 512;

/// The indirection table from hash to CPU: `cpu = table[hash % 512]`, as a
/// NIC's redirection table does. Filled round-robin, it spreads hashes over
/// any CPU count, powers of two or not (with 3 CPUs the shares are 171, 171
/// and 170 of 512); entries may be reassigned to steer load.
///
/// ```
/// use lwkt_netdispatch::rss::Indirection;
/// let mut t = Indirection::round_robin(3);
/// assert_eq!((t.cpu(0), t.cpu(1), t.cpu(2), t.cpu(3)), (0, 1, 2, 0));
/// t.set(3, 2).unwrap();
/// assert_eq!(t.cpu(3), 2);
/// assert!(t.set(3, 7).is_err()); // CPU 7 does not exist
/// ```
#[derive(Clone)]
pub struct Indirection {
    ncpus: usize,
    table: [u8; RETA_SIZE],
}

impl Indirection {
    /// Entry `i` is CPU `i % ncpus`.
    ///
    /// # Panics
    /// If `ncpus` is 0 or above 256.
    pub fn round_robin(ncpus: usize) -> Indirection {
        assert!(
            (1..=256).contains(&ncpus),
            "lwkt-netdispatch: an indirection table needs 1..=256 CPUs, got {ncpus}"
        );
        let mut table = [0u8; RETA_SIZE];
        for (i, t) in table.iter_mut().enumerate() {
            *t = (i % ncpus) as u8;
        }
        Indirection { ncpus, table }
    }

    /// The CPU for `hash`.
    #[inline]
    pub fn cpu(&self, hash: u32) -> usize {
        self.table[hash as usize % RETA_SIZE] as usize
    }

    /// Point entry `i` at `cpu`.
    ///
    /// # Errors
    /// [`crate::DispatchError::NoSuchCpu`] if `cpu` is not below the CPU
    /// count (an out-of-range `i` is taken modulo the table size).
    pub fn set(&mut self, i: usize, cpu: usize) -> Result<(), crate::DispatchError> {
        if cpu >= self.ncpus {
            return Err(crate::DispatchError::NoSuchCpu {
                cpu,
                ncpus: self.ncpus,
            });
        }
        self.table[i % RETA_SIZE] = cpu as u8;
        Ok(())
    }

    /// The CPU count.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }
}

impl fmt::Debug for Indirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Indirection")
            .field("ncpus", &self.ncpus)
            .field("table", &&self.table[..])
            .finish()
    }
}
