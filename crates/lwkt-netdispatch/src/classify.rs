//! Packet classification from raw Ethernet frames, trusting nothing.
//!
//! Parsing is done by [`etherparse`] (`SlicedPacket::from_ethernet`, no
//! allocation, no copy): Ethernet II, up to three VLAN/MACsec tags, IPv4
//! with options, IPv6 with extension headers, fragments, TCP, UDP, ICMP.
//! It checks every length against the slice and every header's own length
//! fields, so a truncated or lying packet becomes an error, never a read
//! past the end. A well-kept parser was preferred to our own few lines: the
//! whole classification costs tens of nanoseconds (`cargo bench --bench
//! netdispatch`, group `netdispatch_classify`), far below the per-packet
//! work of a protocol thread, and the parser's fuzzing history is worth
//! more than the nanoseconds a hand-written fast path would save.
//!
//! DragonFly: the checks `ip_input()`/`ip_demux.c` (`ip_lengthcheck()`)
//! make before a packet is hashed, and the drop counters of `ipstat`.
//!
//! ```
//! use lwkt_netdispatch::classify::{classify, Class, Kind, Malformed};
//! // 14 bytes of Ethernet saying IPv4, then 3 bytes: truncated.
//! let mut f = vec![0u8; 12];
//! f.extend_from_slice(&[0x08, 0x00, 0x45, 0x00, 0x00]);
//! let c = classify(&f);
//! assert_eq!(c, Class::Malformed(Malformed::Truncated));
//! assert_eq!(c.kind(), Kind::Truncated);
//! ```

use core::fmt;
use core::net::IpAddr;

use etherparse::err::packet::SliceError;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::flow::{Flow, L4};

/// What a frame is, for dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A unicast, unfragmented TCP or UDP packet: dispatched by its flow.
    Flow(Flow),
    /// A fragment of an IP datagram (first or later). Only the first
    /// carries the ports, so fragments are dispatched by their address
    /// pair (the 2-tuple hash), which sends every fragment of a datagram to
    /// one CPU, where it can be reassembled and then dispatched again by
    /// its 4-tuple. (DragonFly reassembles in the netisr the fragments hash
    /// to and redispatches the whole datagram the same way.)
    Fragment {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// The IP protocol number of the payload.
        proto: u8,
    },
    /// Well-formed, but not a unicast TCP/UDP flow: handled on CPU 0, as
    /// in the paper (no connection state to keep on one CPU).
    Other(Other),
    /// Rejected; counted and dropped.
    Malformed(Malformed),
}

/// Well-formed packets without a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Other {
    /// ARP.
    Arp,
    /// ICMP or ICMPv6.
    Icmp,
    /// IP multicast (TCP, UDP or other).
    Multicast,
    /// The IPv4 limited broadcast address.
    Broadcast,
    /// Another IP protocol (IGMP, SCTP, GRE, ...), by number.
    IpProto(u8),
    /// A non-IP EtherType.
    EtherType(u16),
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a header, or than a length field says.
    Truncated,
    /// A bad MACsec or link-layer header.
    BadLink,
    /// An IP header with a bad version, header length or total length.
    BadIpHeader,
    /// A bad IPv4 option area or IPv6 extension header chain.
    BadIpExtension,
    /// A TCP header with a data offset below 5.
    BadTcpHeader,
}

/// Every class a frame can fall in, flattened for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// [`Class::Flow`] with TCP.
    Tcp,
    /// [`Class::Flow`] with UDP.
    Udp,
    /// [`Class::Fragment`].
    Fragment,
    /// [`Other::Arp`].
    Arp,
    /// [`Other::Icmp`].
    Icmp,
    /// [`Other::Multicast`].
    Multicast,
    /// [`Other::Broadcast`].
    Broadcast,
    /// [`Other::IpProto`].
    OtherIp,
    /// [`Other::EtherType`].
    NonIp,
    /// [`Malformed::Truncated`].
    Truncated,
    /// [`Malformed::BadLink`].
    BadLink,
    /// [`Malformed::BadIpHeader`].
    BadIpHeader,
    /// [`Malformed::BadIpExtension`].
    BadIpExtension,
    /// [`Malformed::BadTcpHeader`].
    BadTcpHeader,
}

impl Kind {
    /// Every kind, in counter order.
    pub const ALL: [Kind; 14] = [
        Kind::Tcp,
        Kind::Udp,
        Kind::Fragment,
        Kind::Arp,
        Kind::Icmp,
        Kind::Multicast,
        Kind::Broadcast,
        Kind::OtherIp,
        Kind::NonIp,
        Kind::Truncated,
        Kind::BadLink,
        Kind::BadIpHeader,
        Kind::BadIpExtension,
        Kind::BadTcpHeader,
    ];

    /// A short lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Fragment => "fragment",
            Kind::Arp => "arp",
            Kind::Icmp => "icmp",
            Kind::Multicast => "multicast",
            Kind::Broadcast => "broadcast",
            Kind::OtherIp => "other-ip",
            Kind::NonIp => "non-ip",
            Kind::Truncated => "truncated",
            Kind::BadLink => "bad-link",
            Kind::BadIpHeader => "bad-ip-header",
            Kind::BadIpExtension => "bad-ip-extension",
            Kind::BadTcpHeader => "bad-tcp-header",
        }
    }

    /// Whether frames of this kind are dropped as malformed.
    pub fn is_malformed(self) -> bool {
        self >= Kind::Truncated
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Class {
    /// The counter this class goes to.
    pub fn kind(&self) -> Kind {
        match self {
            Class::Flow(f) => match f.l4 {
                L4::Tcp => Kind::Tcp,
                L4::Udp => Kind::Udp,
            },
            Class::Fragment { .. } => Kind::Fragment,
            Class::Other(o) => match o {
                Other::Arp => Kind::Arp,
                Other::Icmp => Kind::Icmp,
                Other::Multicast => Kind::Multicast,
                Other::Broadcast => Kind::Broadcast,
                Other::IpProto(_) => Kind::OtherIp,
                Other::EtherType(_) => Kind::NonIp,
            },
            Class::Malformed(m) => match m {
                Malformed::Truncated => Kind::Truncated,
                Malformed::BadLink => Kind::BadLink,
                Malformed::BadIpHeader => Kind::BadIpHeader,
                Malformed::BadIpExtension => Kind::BadIpExtension,
                Malformed::BadTcpHeader => Kind::BadTcpHeader,
            },
        }
    }

    /// The flow, for [`Class::Flow`].
    pub fn flow(&self) -> Option<Flow> {
        match self {
            Class::Flow(f) => Some(*f),
            _ => None,
        }
    }
}

/// Classify an Ethernet II frame (as a NIC delivers it, without the FCS).
///
/// Never panics, whatever the bytes.
pub fn classify(frame: &[u8]) -> Class {
    let p = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        Err(e) => return Class::Malformed(malformed(&e)),
    };
    let (src, dst, fragmented, proto) = match &p.net {
        None => {
            let et = p.payload_ether_type().map_or(0, |t| t.0);
            return Class::Other(Other::EtherType(et));
        }
        Some(NetSlice::Arp(_)) => return Class::Other(Other::Arp),
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let dst = h.destination_addr();
            if dst.is_broadcast() {
                return Class::Other(Other::Broadcast);
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(dst),
                ip.is_payload_fragmented(),
                ip.payload().ip_number.0,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.is_payload_fragmented(),
                ip.payload().ip_number.0,
            )
        }
    };
    if dst.is_multicast() {
        return Class::Other(Other::Multicast);
    }
    if fragmented {
        return Class::Fragment { src, dst, proto };
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            Class::Flow(Flow::tcp(src, t.source_port(), dst, t.destination_port()))
        }
        Some(TransportSlice::Udp(u)) => {
            Class::Flow(Flow::udp(src, u.source_port(), dst, u.destination_port()))
        }
        Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)) => Class::Other(Other::Icmp),
        Some(TransportSlice::Igmp(_)) | None => Class::Other(Other::IpProto(proto)),
    }
}

fn malformed(e: &SliceError) -> Malformed {
    match e {
        SliceError::Len(_) => Malformed::Truncated,
        SliceError::LinuxSll(_) | SliceError::Macsec(_) => Malformed::BadLink,
        SliceError::Ip(_) | SliceError::Ipv4(_) | SliceError::Ipv6(_) => Malformed::BadIpHeader,
        SliceError::Ipv4Exts(_) | SliceError::Ipv6Exts(_) => Malformed::BadIpExtension,
        SliceError::Tcp(_) => Malformed::BadTcpHeader,
    }
}

/// Frames counted by [`Kind`]. Plain integers: keep one per receive queue
/// (per CPU) and [`merge`](Counters::merge) them for a report, so counting
/// costs no shared cache line.
///
/// ```
/// use lwkt_netdispatch::classify::{classify, Counters, Kind};
/// let mut c = Counters::default();
/// c.record(classify(&[0u8; 3]).kind());
/// assert_eq!(c.get(Kind::Truncated), 1);
/// assert_eq!(c.malformed(), 1);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    counts: [u64; Kind::ALL.len()],
}

impl Counters {
    /// Count one frame.
    #[inline]
    pub fn record(&mut self, k: Kind) {
        self.counts[k as usize] += 1;
    }

    /// Frames of kind `k`.
    pub fn get(&self, k: Kind) -> u64 {
        self.counts[k as usize]
    }

    /// Every frame counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Frames dropped as malformed.
    pub fn malformed(&self) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| k.is_malformed())
            .map(|&k| self.get(k))
            .sum()
    }

    /// Add `other`'s counts.
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    /// The kinds with a non-zero count, with their counts.
    pub fn nonzero(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL
            .iter()
            .map(|&k| (k, self.get(k)))
            .filter(|&(_, n)| n != 0)
    }
}
