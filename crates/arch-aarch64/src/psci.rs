//! PSCI through the `smccc` crate: `CPU_ON` to start a secondary CPU,
//! `SYSTEM_OFF`. QEMU's `virt` machine without EL2/EL3 firmware answers
//! PSCI itself through `HVC`; a machine with EL3 firmware (TF-A) takes
//! `SMC`.

use smccc::{Hvc, Smc};

/// How PSCI calls reach the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduit {
    /// `HVC`: QEMU virt without `virtualization=on`/`secure=on`.
    Hvc,
    /// `SMC`: EL3 firmware.
    Smc,
}

/// A PSCI error code.
pub type Error = smccc::psci::Error;

/// Start the CPU with affinity `mpidr` at physical address `entry`, with
/// `context` in its x0. The CPU starts at EL1 with the MMU and caches
/// off, IRQs masked. DragonFly: `start_all_aps()` (INIT/SIPI on x86-64).
///
/// # Safety
/// `entry` is code that can run in that state (sets up its own stack and
/// translation), and the CPU is one this kernel owns and has not started.
pub unsafe fn cpu_on(
    conduit: Conduit,
    mpidr: u64,
    entry: usize,
    context: u64,
) -> Result<(), Error> {
    match conduit {
        Conduit::Hvc => smccc::psci::cpu_on::<Hvc>(mpidr, entry as u64, context),
        Conduit::Smc => smccc::psci::cpu_on::<Smc>(mpidr, entry as u64, context),
    }
}

/// Power the machine off (QEMU exits with status 0).
pub fn system_off(conduit: Conduit) -> Result<(), Error> {
    match conduit {
        Conduit::Hvc => smccc::psci::system_off::<Hvc>(),
        Conduit::Smc => smccc::psci::system_off::<Smc>(),
    }
}
