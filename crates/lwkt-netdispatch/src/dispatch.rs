//! The dispatcher: frame in, class and CPU out.
//!
//! DragonFly: `ip_demux.c` (`ip_hashfn()`, `tcp_addrcpu()`,
//! `udp_addrcpu()`), `netisr_hashcpu()`, and the packet-dispatch figure of
//! the 2004 paper: a packet's connection hash picks the one CPU whose
//! protocol thread owns the connection.

use core::net::IpAddr;

use crate::classify::{classify, Class};
use crate::flow::Flow;
use crate::registry::DispatchError;
use crate::rss::{self, Indirection, Toeplitz, DEFAULT_KEY, KEY_LEN};

/// Most CPUs a dispatcher spreads over (the indirection table's entries
/// are bytes).
pub const MAX_DISPATCH_CPUS: usize = 256;

/// Which hash picks the CPU.
#[derive(Debug)]
enum Hasher {
    /// Toeplitz through the indirection table.
    Toeplitz(Toeplitz),
    /// The paper's XOR hash, modulo the CPU count.
    Legacy,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// What the frame is.
    pub class: Class,
    /// The CPU whose protocol thread takes it; `None` for a malformed frame
    /// (dropped; count it by `class.kind()`).
    pub cpu: Option<usize>,
}

impl Routed {
    /// The flow, for a TCP/UDP packet.
    pub fn flow(&self) -> Option<Flow> {
        self.class.flow()
    }
}

/// Maps frames and flows to CPUs.
///
/// The default ([`Dispatcher::new`]) hashes with Toeplitz under DragonFly's
/// symmetric key, so both directions of a connection go to one CPU, and
/// maps the hash to a CPU through a round-robin [`Indirection`] table, so
/// any CPU count works. Packets without a flow (multicast, broadcast, ARP,
/// ICMP, other protocols) go to CPU 0, as in the paper; fragments go by
/// their address pair (see [`Class::Fragment`]).
///
/// ```
/// use lwkt_netdispatch::{Dispatcher, Flow};
/// let d = Dispatcher::new(3).unwrap();
/// let f = Flow::tcp([10, 0, 0, 1].into(), 40000, [10, 0, 0, 2].into(), 80);
/// let cpu = d.cpu_of_flow(&f);
/// assert!(cpu < 3);
/// assert_eq!(d.cpu_of_flow(&f.reversed()), cpu);
/// assert!(Dispatcher::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct Dispatcher {
    ncpus: usize,
    hasher: Hasher,
    reta: Indirection,
}

impl Dispatcher {
    /// Toeplitz with the default symmetric key ([`rss::DEFAULT_KEY`]).
    ///
    /// # Errors
    /// [`DispatchError::BadCpuCount`] unless `1 <= ncpus <= 256`.
    pub fn new(ncpus: usize) -> Result<Dispatcher, DispatchError> {
        Dispatcher::with_key(ncpus, &DEFAULT_KEY)
    }

    /// Toeplitz with `key` (at least [`KEY_LEN`] bytes, enough for an IPv6
    /// 4-tuple). A key that is not symmetric, such as [`rss::MS_KEY`],
    /// may send the two directions of a connection to different CPUs.
    ///
    /// # Errors
    /// [`DispatchError::BadCpuCount`], [`DispatchError::KeyTooShort`].
    pub fn with_key(ncpus: usize, key: &[u8]) -> Result<Dispatcher, DispatchError> {
        check_ncpus(ncpus)?;
        if key.len() < KEY_LEN {
            return Err(DispatchError::KeyTooShort {
                len: key.len(),
                need: KEY_LEN,
            });
        }
        Ok(Dispatcher {
            ncpus,
            hasher: Hasher::Toeplitz(Toeplitz::new(key)),
            reta: Indirection::round_robin(ncpus),
        })
    }

    /// The 2004 paper's hash ([`rss::legacy_hash`]) modulo the CPU count.
    ///
    /// # Errors
    /// [`DispatchError::BadCpuCount`].
    pub fn legacy(ncpus: usize) -> Result<Dispatcher, DispatchError> {
        check_ncpus(ncpus)?;
        Ok(Dispatcher {
            ncpus,
            hasher: Hasher::Legacy,
            reta: Indirection::round_robin(ncpus),
        })
    }

    /// The CPU count.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// The indirection table, to steer hash buckets to other CPUs (used
    /// by the Toeplitz hasher only).
    pub fn indirection_mut(&mut self) -> &mut Indirection {
        &mut self.reta
    }

    /// The flow's hash (Toeplitz over the 4-tuple, or the legacy hash).
    #[inline]
    pub fn hash_flow(&self, f: &Flow) -> u32 {
        match &self.hasher {
            Hasher::Toeplitz(t) => t.hash_flow(f),
            Hasher::Legacy => rss::legacy_hash(f),
        }
    }

    /// The CPU that owns the flow's connection: its packets and its
    /// top-half requests all go there. DragonFly: `tcp_addrcpu()`.
    #[inline]
    pub fn cpu_of_flow(&self, f: &Flow) -> usize {
        self.cpu_of_hash(self.hash_flow(f))
    }

    #[inline]
    fn cpu_of_hash(&self, h: u32) -> usize {
        match self.hasher {
            Hasher::Toeplitz(_) => self.reta.cpu(h),
            Hasher::Legacy => h as usize % self.ncpus,
        }
    }

    fn cpu_of_addrs(&self, src: IpAddr, dst: IpAddr) -> usize {
        let h = match &self.hasher {
            Hasher::Toeplitz(t) => t.hash_addrs(src, dst),
            Hasher::Legacy => rss::legacy_hash(&Flow::tcp(src, 0, dst, 0)),
        };
        self.cpu_of_hash(h)
    }

    /// The CPU for a packet of class `class` (CPU 0 for packets without a
    /// flow, and for malformed ones, which [`Dispatcher::route`] drops).
    /// This is the usual [`crate::registry::CpuFn`].
    #[inline]
    pub fn cpu_of(&self, class: &Class) -> usize {
        match class {
            Class::Flow(f) => self.cpu_of_flow(f),
            Class::Fragment { src, dst, .. } => self.cpu_of_addrs(*src, *dst),
            Class::Other(_) | Class::Malformed(_) => 0,
        }
    }

    /// Classify a frame and pick its CPU.
    ///
    /// ```
    /// use lwkt_netdispatch::Dispatcher;
    /// let d = Dispatcher::new(2).unwrap();
    /// let r = d.route(&[0xff; 10]); // shorter than an Ethernet header
    /// assert_eq!(r.cpu, None);
    /// ```
    #[inline]
    pub fn route(&self, frame: &[u8]) -> Routed {
        let class = classify(frame);
        let cpu = match class {
            Class::Malformed(_) => None,
            _ => Some(self.cpu_of(&class)),
        };
        Routed { class, cpu }
    }
}

fn check_ncpus(ncpus: usize) -> Result<(), DispatchError> {
    if (1..=MAX_DISPATCH_CPUS).contains(&ncpus) {
        Ok(())
    } else {
        Err(DispatchError::BadCpuCount {
            ncpus,
            max: MAX_DISPATCH_CPUS,
        })
    }
}
