//! A connection's identity: transport protocol and 4-tuple.
//!
//! DragonFly: the `(faddr, fport, laddr, lport)` an `inpcb` is hashed by.

use core::net::IpAddr;

/// The transport protocols that have flows (ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

/// One direction of a TCP or UDP connection, as seen in a packet.
///
/// Both directions of a connection are different `Flow`s that hash to the
/// same CPU (with a symmetric key) and share one [`Flow::canonical`] form,
/// which is what a per-connection table is keyed by.
///
/// ```
/// use lwkt_netdispatch::Flow;
/// let f = Flow::udp([10, 0, 0, 9].into(), 5353, [10, 0, 0, 1].into(), 53);
/// assert_eq!(f.reversed().reversed(), f);
/// assert_eq!(f.canonical(), f.reversed().canonical());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// Transport protocol.
    pub l4: L4,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Default for Flow {
    fn default() -> Flow {
        Flow::tcp([0, 0, 0, 0].into(), 0, [0, 0, 0, 0].into(), 0)
    }
}

impl Flow {
    /// A TCP flow from `src:sport` to `dst:dport`.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Flow {
        Flow {
            l4: L4::Tcp,
            src,
            dst,
            sport,
            dport,
        }
    }

    /// A UDP flow from `src:sport` to `dst:dport`.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Flow {
        Flow {
            l4: L4::Udp,
            ..Flow::tcp(src, sport, dst, dport)
        }
    }

    /// The other direction.
    pub fn reversed(&self) -> Flow {
        Flow {
            l4: self.l4,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The direction whose `(src, sport)` is the smaller: the same for
    /// both directions of a connection.
    pub fn canonical(&self) -> Flow {
        if (self.src, self.sport) <= (self.dst, self.dport) {
            *self
        } else {
            self.reversed()
        }
    }
}
