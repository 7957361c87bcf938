//! The few devices the test kernel talks to: the PL011 UART, QEMU's
//! semihosting exit, and the device tree QEMU passes.

use core::fmt::{self, Write};

use lwkt_arch_aarch64::without_irqs;

/// QEMU virt's PL011.
pub const UART: usize = 0x0900_0000;
/// The PL011's interrupt (SPI 1).
pub const UART_INTID: u32 = 33;
const UART_DR: usize = 0x00;
const UART_FR: usize = 0x18;
const UART_IMSC: usize = 0x38;
const UART_ICR: usize = 0x44;
const FR_TXFF: u32 = 1 << 5;
const FR_RXFE: u32 = 1 << 4;
const INT_RX: u32 = 1 << 4;
const INT_RT: u32 = 1 << 6;

static SERIAL: spin::Mutex<()> = spin::Mutex::new(());

struct Pl011;

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the PL011's flag and data registers (device memory,
            // identity mapped); nothing else writes them while `SERIAL`
            // is held (or, in `print_dump`, after waiting for it).
            unsafe {
                while ((UART + UART_FR) as *const u32).read_volatile() & FR_TXFF != 0 {
                    core::hint::spin_loop();
                }
                ((UART + UART_DR) as *mut u32).write_volatile(u32::from(b));
            }
        }
        Ok(())
    }
}

/// Print with IRQs masked (a handler printing meanwhile would deadlock
/// on the lock).
pub fn print(args: fmt::Arguments<'_>) {
    without_irqs(|| {
        let _g = SERIAL.lock();
        let _ = Pl011.write_fmt(args);
    });
}

/// Print from the hang dump, which may have interrupted a holder of the
/// lock on another path: wait a bounded time, then print without it.
pub fn print_dump(args: fmt::Arguments<'_>) {
    let t = lwkt_arch_aarch64::time::count();
    loop {
        if let Some(_g) = SERIAL.try_lock() {
            let _ = Pl011.write_fmt(args);
            return;
        }
        if lwkt_arch_aarch64::time::count() - t > 20_000_000 {
            let _ = Pl011.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
}

/// Interrupt on received characters (the xtask's hang-dump request).
pub fn enable_rx_interrupt() {
    // SAFETY: the PL011's interrupt mask register.
    unsafe { ((UART + UART_IMSC) as *mut u32).write_volatile(INT_RX | INT_RT) };
}

/// Drain the receive FIFO and clear the receive interrupts; whether any
/// character was there.
pub fn drain_rx() -> bool {
    let mut any = false;
    // SAFETY: the PL011's flag, data and interrupt-clear registers.
    unsafe {
        while ((UART + UART_FR) as *const u32).read_volatile() & FR_RXFE == 0 {
            let _ = ((UART + UART_DR) as *const u32).read_volatile();
            any = true;
        }
        ((UART + UART_ICR) as *mut u32).write_volatile(INT_RX | INT_RT);
    }
    any
}

/// `print!` to the PL011.
#[macro_export]
macro_rules! kprint {
    ($($t:tt)*) => { $crate::hw::print(format_args!($($t)*)) };
}

/// `println!` to the PL011.
#[macro_export]
macro_rules! kprintln {
    ($($t:tt)*) => { $crate::hw::print(format_args!("{}\n", format_args!($($t)*))) };
}

/// Print the message and fail.
#[macro_export]
macro_rules! fail {
    ($($t:tt)*) => {{
        $crate::kprintln!("FAIL: {}", format_args!($($t)*));
        $crate::hw::exit(false)
    }};
}

/// Leave QEMU with status 33 (pass) or 35 (failure), the x86-64 kernel's
/// isa-debug-exit codes, through semihosting `SYS_EXIT` with
/// `ADP_Stopped_ApplicationExit` (QEMU runs with `-semihosting`). Should
/// semihosting be off, the `hlt` is an undefined instruction: the fault
/// handler then powers off with PSCI `SYSTEM_OFF` (status 0, counted as a
/// failure by the xtask).
pub fn exit(pass: bool) -> ! {
    let block: [u64; 2] = [0x20026, if pass { 33 } else { 35 }];
    // SAFETY: the semihosting call reads the two words at x1 and ends the
    // VM; it does not return.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") 0x18u64,
            in("x1") block.as_ptr(),
            options(nostack)
        )
    };
    off()
}

/// PSCI `SYSTEM_OFF`.
pub fn off() -> ! {
    let _ = lwkt_arch_aarch64::psci::system_off(lwkt_arch_aarch64::psci::Conduit::Hvc);
    loop {
        aarch64_cpu::asm::wfi();
    }
}

/// The device tree at `addr` (QEMU virt: the start of RAM). Fails the
/// run if there is none, without allocating (the heap comes from the
/// tree).
///
/// # Safety
/// `addr` is mapped and, if it holds a device tree, that tree stays
/// unchanged for ever.
pub unsafe fn fdt(addr: usize) -> fdt::Fdt<'static> {
    // SAFETY: caller.
    match unsafe { fdt::Fdt::from_ptr(addr as *const u8) } {
        Ok(f) => f,
        Err(e) => {
            // SAFETY: caller: mapped.
            let magic = u32::from_be(unsafe { (addr as *const u32).read_volatile() });
            crate::fail!("no device tree at {addr:#x} (magic {magic:#x}): {e:?}")
        }
    }
}

/// What the device tree says: the command line, each CPU's affinity and
/// where the GICv3 is.
pub struct Machine {
    /// `/chosen/bootargs` (QEMU's `-append`), or empty.
    pub cmdline: &'static str,
    /// The `reg` (MPIDR affinity) of each CPU node, in order.
    pub mpidrs: alloc::vec::Vec<u64>,
    /// The GICv3 distributor's base.
    pub gicd: usize,
    /// The GICv3 redistributor regions' bases (QEMU virt: one, or two
    /// with more than 123 CPUs).
    pub gicr: alloc::vec::Vec<usize>,
}

/// Read the machine from the device tree (after the heap is set up).
pub fn machine(fdt: &fdt::Fdt<'static>) -> Result<Machine, alloc::string::String> {
    let cmdline = fdt.chosen().bootargs().unwrap_or("");
    let mpidrs = fdt
        .cpus()
        .filter_map(|c| c.ids().all().next().map(|r| r as u64))
        .collect();
    let gic = fdt
        .find_compatible(&["arm,gic-v3"])
        .ok_or("the device tree has no GICv3 (arm,gic-v3)")?;
    // The distributor, then the redistributor regions (then, optionally,
    // the GICv2 compatibility frames, not used here).
    let nregions = gic
        .property("#redistributor-regions")
        .and_then(|p| p.as_usize())
        .unwrap_or(1);
    let mut regs = gic
        .reg()
        .ok_or("the GICv3 node has no reg")?
        .map(|r| (r.starting_address as usize, r.size.unwrap_or(0)));
    let (gicd, dsize) = regs.next().ok_or("the GICv3 node's reg is empty")?;
    let rd: alloc::vec::Vec<(usize, usize)> = regs.take(nregions).collect();
    if rd.len() != nregions {
        return Err(alloc::format!(
            "the GICv3 node lists {} of its {nregions} redistributor regions",
            rd.len()
        ));
    }
    for (base, size) in core::iter::once((gicd, dsize)).chain(rd.iter().copied()) {
        if !crate::boot::device_mapped(base, size) {
            return Err(alloc::format!(
                "GICv3 registers at {base:#x}+{size:#x}, outside the boot table's device blocks"
            ));
        }
    }
    let gicr = rd.into_iter().map(|(base, _)| base).collect();
    Ok(Machine {
        cmdline,
        mpidrs,
        gicd,
        gicr,
    })
}
