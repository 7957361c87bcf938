//! The few devices the test kernel talks to: COM1, QEMU's fw_cfg CPU
//! count, isa-debug-exit, the 8259 PICs (masked) and a TSC delay.
//! (The PIT and the APIC timer are `lwkt_arch_x86_64::time`'s.)

use core::fmt::{self, Write};

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3F8;

static SERIAL: spin::Mutex<()> = spin::Mutex::new(());

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: COM1's line-status and data ports; nothing else
            // drives them while `SERIAL` is held.
            unsafe {
                let mut lsr: Port<u8> = Port::new(COM1 + 5);
                while lsr.read() & 0x20 == 0 {
                    core::hint::spin_loop();
                }
                Port::<u8>::new(COM1).write(b);
            }
        }
        Ok(())
    }
}

/// Print to COM1 with interrupts off (a handler printing meanwhile would
/// deadlock on the lock).
pub fn print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _g = SERIAL.lock();
        let _ = Com1.write_fmt(args);
    });
}

/// Print from an NMI handler, which may have interrupted a holder of the
/// COM1 lock (interrupts off do not keep an NMI out): wait a bounded time
/// for the lock, then print without it (a garbled line beats none).
pub fn print_nmi(args: fmt::Arguments<'_>) {
    let t = tsc();
    loop {
        if let Some(_g) = SERIAL.try_lock() {
            let _ = Com1.write_fmt(args);
            return;
        }
        if tsc() - t > 300_000_000 {
            let _ = Com1.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
}

/// `print!` to COM1.
#[macro_export]
macro_rules! kprint {
    ($($t:tt)*) => { $crate::hw::print(format_args!($($t)*)) };
}

/// `println!` to COM1.
#[macro_export]
macro_rules! kprintln {
    ($($t:tt)*) => { $crate::hw::print(format_args!("{}\n", format_args!($($t)*))) };
}

/// Leave QEMU through isa-debug-exit (iobase 0xf4): status 33 for a pass,
/// 35 for a failure.
pub fn exit(pass: bool) -> ! {
    // SAFETY: the isa-debug-exit port; writing it ends the VM.
    unsafe { Port::<u32>::new(0xF4).write(if pass { 0x10 } else { 0x11 }) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Print the message and fail.
#[macro_export]
macro_rules! fail {
    ($($t:tt)*) => {{
        $crate::kprintln!("FAIL: {}", format_args!($($t)*));
        $crate::hw::exit(false)
    }};
}

/// The CPU count QEMU was started with (fw_cfg `FW_CFG_NB_CPUS`).
pub fn fw_cfg_ncpus() -> usize {
    // SAFETY: QEMU's fw_cfg selector and data ports (pc, q35, microvm).
    unsafe {
        Port::<u16>::new(0x510).write(0x05);
        let mut data: Port<u8> = Port::new(0x511);
        let lo = data.read();
        let hi = data.read();
        usize::from(u16::from_le_bytes([lo, hi]))
    }
}

/// Mask both 8259 PICs, so no legacy IRQ arrives at a vector the firmware
/// left it on (IRQ0 at vector 8 would look like a double fault).
pub fn mask_pics() {
    // SAFETY: the PICs' data ports.
    unsafe {
        Port::<u8>::new(0x21).write(0xFF);
        Port::<u8>::new(0xA1).write(0xFF);
    }
}

/// The TSC.
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Busy-wait until `cycles` TSC cycles have passed since TSC value
/// `since`.
pub fn delay(since: u64, cycles: u64) {
    while tsc().wrapping_sub(since) < cycles {
        core::hint::spin_loop();
    }
}
