//! The protocol registry: each protocol registers its per-CPU ports (made
//! by its own per-CPU protocol threads); the rest of the stack finds the
//! port for (protocol, CPU) here and knows nothing else about the threads.
//!
//! DragonFly: `netisr_register()`, `netisr_hashport()`,
//! `netisr_cpuport()`, the netisr threads' `td_msgport`.

use core::fmt;

use lwkt_core::MAX_CPUS;
use lwkt_msg::Port;

use crate::classify::Class;
use crate::dispatch::Dispatcher;

/// Protocols a registry holds at most (DragonFly `NETISR_MAX`).
pub const MAX_PROTOCOLS: usize = 32;

/// A protocol number (DragonFly `NETISR_IP`, `NETISR_ARP`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoId(pub u8);

/// Why a registration or a lookup failed.
///
/// ```
/// use lwkt_netdispatch::registry::{DispatchError, ProtoId};
/// let e = DispatchError::NoSuchCpu { cpu: 9, ncpus: 2 };
/// assert_eq!(e.to_string(), "CPU 9 does not exist (2 CPUs)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchError {
    /// The protocol number is taken.
    AlreadyRegistered {
        /// The number.
        id: ProtoId,
        /// Who has it.
        by: &'static str,
    },
    /// The protocol number is at or above [`MAX_PROTOCOLS`].
    BadProtocol {
        /// The number.
        id: ProtoId,
    },
    /// No protocol has this number.
    NotRegistered {
        /// The number.
        id: ProtoId,
    },
    /// A registration brought a port count other than the CPU count.
    WrongPortCount {
        /// CPUs of the registry.
        ncpus: usize,
        /// Ports given.
        ports: usize,
    },
    /// A CPU count of 0, or above what a dispatcher or registry supports.
    BadCpuCount {
        /// The count asked for.
        ncpus: usize,
        /// The largest supported.
        max: usize,
    },
    /// An RSS key too short for the inputs it must hash.
    KeyTooShort {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A dispatch to a CPU that does not exist.
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// CPUs of the registry.
        ncpus: usize,
    },
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DispatchError::AlreadyRegistered { id, by } => {
                write!(f, "protocol {} is already registered by '{by}'", id.0)
            }
            DispatchError::BadProtocol { id } => {
                write!(f, "protocol number {} is not below {MAX_PROTOCOLS}", id.0)
            }
            DispatchError::NotRegistered { id } => write!(f, "protocol {} is not registered", id.0),
            DispatchError::WrongPortCount { ncpus, ports } => {
                write!(f, "{ports} ports registered for {ncpus} CPUs (one per CPU)")
            }
            DispatchError::BadCpuCount { ncpus, max } => {
                write!(f, "{ncpus} CPUs: a dispatcher needs 1 to {max}")
            }
            DispatchError::KeyTooShort { len, need } => {
                write!(
                    f,
                    "an RSS key of {len} bytes is too short (at least {need})"
                )
            }
            DispatchError::NoSuchCpu { cpu, ncpus } => {
                write!(f, "CPU {cpu} does not exist ({ncpus} CPUs)")
            }
        }
    }
}

impl core::error::Error for DispatchError {}

/// A protocol's dispatch function: the CPU whose protocol thread takes a
/// packet of this class. DragonFly: the `nh_hashck`/`netisr_hashfn` a
/// protocol registers; [`Dispatcher::cpu_of`] is the usual choice.
pub type CpuFn = fn(&Dispatcher, &Class) -> usize;

struct Entry<T: Send + 'static> {
    name: &'static str,
    cpu_fn: CpuFn,
    ports: [Option<&'static Port<T>>; MAX_CPUS],
}

/// Per-CPU ports of every registered protocol, for messages of type `T`.
///
/// ```
/// use lwkt_msg::Port;
/// use lwkt_netdispatch::registry::{DispatchError, ProtoId, Registry};
/// use lwkt_netdispatch::{classify, Dispatcher};
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let mut reg: Registry<u32> = Registry::new(1);
///     let port: &'static Port<u32> = Port::thread(cur).leak();
///     reg.register(ProtoId(1), "echo", &[port], Dispatcher::cpu_of).unwrap();
///     assert!(reg.register(ProtoId(1), "again", &[port], Dispatcher::cpu_of).is_err());
///     assert!(core::ptr::eq(reg.port(ProtoId(1), 0).unwrap(), port));
///     assert!(reg.port(ProtoId(1), 5).is_err());
///
///     // A protocol whose dispatch function names a CPU that does not exist.
///     reg.register(ProtoId(2), "broken", &[port], |_, _| 3).unwrap();
///     let d = Dispatcher::new(1).unwrap();
///     let c = classify::classify(&[0u8; 60]);
///     assert_eq!(reg.dispatch(ProtoId(1), &d, &c).unwrap().0, 0);
///     assert_eq!(
///         reg.dispatch(ProtoId(2), &d, &c).unwrap_err(),
///         DispatchError::NoSuchCpu { cpu: 3, ncpus: 1 }
///     );
///     port.close(cur);
/// });
/// ```
pub struct Registry<T: Send + 'static> {
    ncpus: usize,
    entries: [Option<Entry<T>>; MAX_PROTOCOLS],
}

impl<T: Send + 'static> Registry<T> {
    /// An empty registry for `ncpus` CPUs.
    ///
    /// # Panics
    /// If `ncpus` is 0 or above `MAX_CPUS`.
    pub fn new(ncpus: usize) -> Registry<T> {
        assert!(
            ncpus > 0 && ncpus <= MAX_CPUS,
            "lwkt-netdispatch: a registry needs 1..=MAX_CPUS CPUs"
        );
        Registry {
            ncpus,
            entries: [const { None }; MAX_PROTOCOLS],
        }
    }

    /// The CPU count.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// Register protocol `id` with one port per CPU (`ports[c]` is served
    /// by the protocol's thread on CPU `c`) and its dispatch function.
    /// DragonFly: `netisr_register()`.
    ///
    /// # Errors
    /// [`DispatchError::AlreadyRegistered`], [`DispatchError::BadProtocol`],
    /// [`DispatchError::WrongPortCount`].
    pub fn register(
        &mut self,
        id: ProtoId,
        name: &'static str,
        ports: &[&'static Port<T>],
        cpu_fn: CpuFn,
    ) -> Result<(), DispatchError> {
        let slot = self
            .entries
            .get_mut(id.0 as usize)
            .ok_or(DispatchError::BadProtocol { id })?;
        if let Some(e) = slot {
            return Err(DispatchError::AlreadyRegistered { id, by: e.name });
        }
        if ports.len() != self.ncpus {
            return Err(DispatchError::WrongPortCount {
                ncpus: self.ncpus,
                ports: ports.len(),
            });
        }
        let mut e = Entry {
            name,
            cpu_fn,
            ports: [None; MAX_CPUS],
        };
        for (i, p) in ports.iter().enumerate() {
            e.ports[i] = Some(*p);
        }
        *slot = Some(e);
        Ok(())
    }

    /// The port of protocol `id` on CPU `cpu`. DragonFly:
    /// `netisr_cpuport()`.
    ///
    /// # Errors
    /// [`DispatchError::NotRegistered`], [`DispatchError::NoSuchCpu`].
    #[inline]
    pub fn port(&self, id: ProtoId, cpu: usize) -> Result<&'static Port<T>, DispatchError> {
        let e = self
            .entries
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(DispatchError::NotRegistered { id })?;
        if cpu >= self.ncpus {
            return Err(DispatchError::NoSuchCpu {
                cpu,
                ncpus: self.ncpus,
            });
        }
        Ok(e.ports[cpu].expect("registered with one port per CPU"))
    }

    /// The CPU and port of protocol `id` for a packet of class `class`, by
    /// the protocol's own dispatch function. DragonFly: `netisr_queue()`
    /// after the protocol's hash check.
    ///
    /// # Errors
    /// [`DispatchError::NotRegistered`]; [`DispatchError::NoSuchCpu`] if
    /// the dispatch function names a CPU that does not exist.
    #[inline]
    pub fn dispatch(
        &self,
        id: ProtoId,
        disp: &Dispatcher,
        class: &Class,
    ) -> Result<(usize, &'static Port<T>), DispatchError> {
        let e = self
            .entries
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(DispatchError::NotRegistered { id })?;
        let cpu = (e.cpu_fn)(disp, class);
        Ok((cpu, self.port(id, cpu)?))
    }

    /// The name protocol `id` registered under.
    pub fn name(&self, id: ProtoId) -> Option<&'static str> {
        self.entries.get(id.0 as usize)?.as_ref().map(|e| e.name)
    }
}

impl<T: Send + 'static> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_map();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(e) = e {
                l.entry(&i, &e.name);
            }
        }
        l.finish()
    }
}
