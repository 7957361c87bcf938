//! `cargo xtask qemu`: build the test kernel (`kernels/qemu-test` for
//! `x86_64-unknown-none`, or with `--arch aarch64`
//! `kernels/qemu-test-aarch64` for `aarch64-unknown-none`) and boot it
//! under QEMU, judging the run by the kernel's own verdict.
//!
//! Exit status 33 with a `PASS` line is a pass. Anything else fails with
//! the reason: 35 (the kernel reported a failure: its output says which),
//! 0 (QEMU's status on a triple fault with `-no-reboot`), a timeout (a
//! hang), or 33 without the report. On a timeout every CPU first gets an
//! NMI through QEMU's monitor, and the kernel prints each CPU's LWKT state
//! (`HANG` lines: running thread, critical-section count, run queue, IPI
//! interlocks and counters). The aarch64 kernel has no NMI to take: the
//! xtask sends a character to its UART instead, whose interrupt makes CPU 0
//! send a dump SGI to every other CPU (a CPU that keeps IRQs masked does
//! not answer). It exits through semihosting with the same 33/35 codes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The test kernel of each architecture: its directory, target and
/// binary name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    fn dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "kernels/qemu-test",
            Arch::Aarch64 => "kernels/qemu-test-aarch64",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Arch::X86_64 => "lwkt-qemu-test",
            Arch::Aarch64 => "lwkt-qemu-test-aarch64",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }
}

#[cfg(test)]
const KERNEL_DIR: &str = "kernels/qemu-test";
impl Arch {
    /// The most CPUs this architecture's test kernel is run with. x86-64:
    /// 255, the most xAPIC ids (0-254) and QEMU's limit without an
    /// interrupt-remapping IOMMU (the kernel itself takes 256,
    /// `boot::MAX_CPUS`); aarch64: 256, lwkt's `MAX_CPUS` and the
    /// kernel's (QEMU 7.2's `virt,gic-version=3` takes up to 512: 123
    /// redistributors in the low region, 512 more in the high one at
    /// 256 GiB, capped by the board's 512).
    fn max_smp(self) -> usize {
        match self {
            Arch::X86_64 => 255,
            Arch::Aarch64 => 256,
        }
    }

    /// Guest memory for `smp` CPUs, in MiB, the same for both kernels:
    /// their heap is the RAM above the image (heap.rs: from the PVH
    /// memory map, or the device tree's `/memory`), and holds ncpus² IPI
    /// rings of about 8.6 KiB and 1 MiB of thread stacks per CPU, so it
    /// grows with `smp` (960 MiB at 255 or 256).
    fn memory_mib(self, smp: usize) -> usize {
        (128 + smp * smp * 9 / 1024 + smp).next_multiple_of(64)
    }
}

pub(crate) const USAGE: &str =
    "usage: cargo xtask qemu [--arch x86_64|aarch64] [--smp N] [--accel single|multi|kvm]
                        [--machine microvm|pc|q35] [--runs N] [--timeout SECS]
                        [--expect-fault CPU] [-- KERNEL-ARGS...]
  --arch A           x86_64 (default): kernels/qemu-test on qemu-system-x86_64;
                     aarch64: kernels/qemu-test-aarch64 on qemu-system-aarch64
                     -M virt,gic-version=3 -cpu cortex-a72 (TCG only)
  --smp N            CPUs (x86_64: 1 to 255, aarch64: 1 to 256; default 4)
  --accel A          single: one-threaded TCG (default; fastest here), multi: MTTCG
                     (real parallelism), kvm: hardware virtualisation (x2APIC)
  --machine M        QEMU machine type (default microvm; aarch64: virt only)
  --runs N           boot N times, stopping at the first failure (default 1)
  --timeout SECS     per run (default 60); a run that times out gets an NMI on
                     every CPU first, and the kernel prints each CPU's state
  --expect-fault CPU the negative test: CPU faults on purpose; passes only if the
                     run fails with the exception vector in its output
  KERNEL-ARGS        the kernel's command line: rounds=N apic=auto|xapic|x2apic fault=CPU
                     expect-cpus=N hang (sleep forever after the tests)
                     attach-twice (X86Arch::attach must refuse a second attach)
                     tsc=auto|pit timer=auto|oneshot (force the PIT calibration and the
                     APIC timer's one-shot mode, the paths TCG takes, under KVM too);
                     aarch64: rounds=N fault=CPU expect-cpus=N hang attach-twice";

struct Opts {
    arch: Arch,
    smp: usize,
    accel: String,
    machine: String,
    runs: usize,
    timeout: u64,
    expect_fault: Option<usize>,
    kernel_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        arch: Arch::X86_64,
        smp: 4,
        accel: "single".into(),
        machine: String::new(),
        runs: 1,
        timeout: 60,
        expect_fault: None,
        kernel_args: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match a.as_str() {
            "--arch" => {
                o.arch = match val("--arch")?.as_str() {
                    "x86_64" | "x86-64" => Arch::X86_64,
                    "aarch64" | "arm64" => Arch::Aarch64,
                    a => return Err(format!("--arch {a}: x86_64 or aarch64")),
                }
            }
            "--smp" => o.smp = num("--smp", val("--smp")?)? as usize,
            "--accel" => o.accel = val("--accel")?,
            "--machine" => o.machine = val("--machine")?,
            "--runs" => o.runs = num("--runs", val("--runs")?)? as usize,
            "--timeout" => o.timeout = num("--timeout", val("--timeout")?)?,
            "--expect-fault" => {
                o.expect_fault = Some(num("--expect-fault", val("--expect-fault")?)? as usize)
            }
            "--" => o.kernel_args.extend(it.by_ref().cloned()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    if o.smp == 0 || o.smp > o.arch.max_smp() {
        return Err(format!(
            "--smp {}: the {} test kernel runs with 1 to {} CPUs",
            o.smp,
            o.arch.target(),
            o.arch.max_smp()
        ));
    }
    if !matches!(o.accel.as_str(), "single" | "multi" | "kvm") {
        return Err(format!("--accel {}: single, multi or kvm", o.accel));
    }
    if o.machine.is_empty() {
        o.machine = match o.arch {
            Arch::X86_64 => "microvm".into(),
            Arch::Aarch64 => "virt".into(),
        };
    }
    if o.arch == Arch::Aarch64 {
        if o.accel == "kvm" {
            return Err("--arch aarch64: TCG only (--accel single or multi)".into());
        }
        if o.machine != "virt" {
            return Err(format!(
                "--arch aarch64: --machine virt only, not {}",
                o.machine
            ));
        }
    }
    if o.runs == 0 || o.timeout == 0 {
        return Err("--runs and --timeout must be at least 1".into());
    }
    if let Some(f) = o.expect_fault {
        if f == 0 || f >= o.smp {
            return Err(format!(
                "--expect-fault {f}: an application processor, 1 to {}",
                o.smp - 1
            ));
        }
        o.kernel_args.push(format!("fault={f}"));
    }
    Ok(o)
}

pub(crate) fn qemu(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    if Command::new(o.arch.qemu())
        .arg("--version")
        .output()
        .map_or(true, |out| !out.status.success())
    {
        return Err(format!(
            "{} not found: install it (apt-get install -y {})",
            o.arch.qemu(),
            o.arch.package()
        ));
    }
    let target_dir = kernel_target_dir(o.arch, std::env::var_os("CARGO_TARGET_DIR"))?;
    crate::run(
        Command::new("cargo")
            .current_dir(o.arch.dir())
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                o.arch.target(),
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    let kernel = target_dir
        .join(o.arch.target())
        .join("release")
        .join(o.arch.bin());
    let mut times = Vec::new();
    for i in 1..=o.runs {
        let t = Instant::now();
        boot(&o, &kernel).map_err(|e| format!("run {i} of {}: {e}", o.runs))?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "xtask: qemu --arch {} --smp {} --accel {} --machine {}: {} run(s) passed, wall time min {:.2} s, median {:.2} s, max {:.2} s",
        match o.arch {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        },
        o.smp,
        o.accel,
        o.machine,
        o.runs,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    Ok(())
}

/// Where the kernel is built: under `$CARGO_TARGET_DIR/qemu-test` (or
/// `qemu-test-aarch64`) when that is set (so that engineers sharing a
/// checkout, each with a target directory, never boot each other's
/// kernel), else the kernel's own `target`. Absolute, since cargo runs in
/// the kernel's directory.
fn kernel_target_dir(
    arch: Arch,
    env: Option<std::ffi::OsString>,
) -> Result<std::path::PathBuf, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
    let dir = arch.dir();
    Ok(match env.filter(|d| !d.is_empty()) {
        Some(d) => cwd.join(d).join(dir.trim_start_matches("kernels/")),
        None => cwd.join(dir).join("target"),
    })
}

fn boot(o: &Opts, kernel: &std::path::Path) -> Result<(), String> {
    let accel: &[&str] = match o.accel.as_str() {
        "single" => &["-accel", "tcg,thread=single"],
        "multi" => &["-accel", "tcg,thread=multi"],
        // Without `-arch-capabilities`, QEMU under a nested hypervisor
        // (this CI's machines) dies setting MSR 0x10a
        // (IA32_ARCH_CAPABILITIES), which the kernel never reads.
        _ => &["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
    };
    // A monitor socket, through which a run that times out gets an NMI on
    // every CPU: the kernel then prints each CPU's state (`HANG` lines).
    let monitor = std::env::temp_dir().join(format!("lwkt-qemu-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&monitor);
    let mut cmd = Command::new(o.arch.qemu());
    match o.arch {
        Arch::X86_64 => {
            cmd.args(["-M", &o.machine])
                .arg("-monitor")
                .arg(format!("unix:{},server=on,wait=off", monitor.display()))
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
                .stdin(Stdio::null());
        }
        Arch::Aarch64 => {
            // The kernel exits through semihosting; its hang dump is asked
            // for by a character on the UART (stdin).
            cmd.args(["-M", "virt,gic-version=3", "-cpu", "cortex-a72"])
                .args(["-semihosting-config", "enable=on,target=native"])
                .stdin(Stdio::piped());
        }
    }
    cmd.args(accel)
        .args(["-smp", &o.smp.to_string()])
        .args(["-m", &format!("{}M", o.arch.memory_mib(o.smp))])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", &o.kernel_args.join(" ")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(o.timeout);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if Instant::now() > deadline {
            match o.arch {
                Arch::X86_64 => nmi_and_wait(&monitor, &mut child),
                Arch::Aarch64 => uart_dump_and_wait(&mut child),
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&monitor);
    let output = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    print!("{output}");
    for l in stderr.lines().filter(|l| !is_known_warning(l)) {
        eprintln!("qemu: {l}");
    }
    let verdict = match status.and_then(|s| s.code()) {
        None => Err(format!(
            "hang: no exit within {} s ({} CPUs answered the {}: the HANG lines above)",
            o.timeout,
            output.lines().filter(|l| l.starts_with("HANG")).count(),
            match o.arch {
                Arch::X86_64 => "NMI",
                Arch::Aarch64 => "dump request",
            }
        )),
        Some(33) if output.lines().any(|l| l == "PASS") => Ok(()),
        Some(33) => Err("exit status 33 but no PASS line: the report is missing".into()),
        Some(35) => Err(output
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or("the kernel failed without saying why")
            .to_string()),
        Some(0) if o.arch == Arch::X86_64 => {
            Err("QEMU exited 0: a triple fault (the CPU reset with -no-reboot)".into())
        }
        Some(0) => Err("QEMU exited 0: PSCI SYSTEM_OFF without semihosting's status".into()),
        Some(c) => Err(format!("QEMU exited {c}")),
    };
    // The deliberate fault: `ud2` (#UD, vector 6) on x86-64, `udf`
    // (exception class 0, "unknown reason") on aarch64.
    let (fault_tag, fault_name) = match o.arch {
        Arch::X86_64 => ("EXCEPTION vector=0x6", "a #UD (vector 0x6)"),
        Arch::Aarch64 => (
            "EXCEPTION ec=0x0 ",
            "an undefined instruction (ESR_EL1 EC 0x0)",
        ),
    };
    match (o.expect_fault, verdict) {
        (None, v) => v,
        (Some(cpu), Err(e)) if e.contains(fault_tag) && e.contains(&format!("on cpu {cpu}")) => {
            eprintln!("xtask: the deliberate fault was reported as expected: {e}");
            Ok(())
        }
        (Some(cpu), Err(e)) => Err(format!("expected {fault_name} on cpu {cpu}, got: {e}")),
        (Some(cpu), Ok(())) => Err(format!("expected a fault on cpu {cpu}, but the run passed")),
    }
}

/// QEMU's harmless warnings on this kind of host (nested KVM).
fn is_known_warning(l: &str) -> bool {
    l.contains("exceeds the recommended cpus supported by KVM")
        || l.contains("doesn't support requested feature")
}

/// A run timed out: ask QEMU's monitor for an NMI on every CPU, and give
/// the kernel a few seconds to print its `HANG` lines and exit.
fn nmi_and_wait(monitor: &std::path::Path, child: &mut std::process::Child) {
    use std::io::Write;
    match std::os::unix::net::UnixStream::connect(monitor) {
        Ok(mut m) => {
            let _ = m.write_all(b"nmi\n");
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("xtask: the kernel did not exit after the NMI");
        }
        Err(e) => eprintln!("xtask: no QEMU monitor at {}: {e}", monitor.display()),
    }
}

/// A run of the aarch64 kernel timed out: send a character to its UART
/// (CPU 0 then asks every CPU for its dump), and give it a few seconds to
/// print its `HANG` lines and exit.
fn uart_dump_and_wait(child: &mut std::process::Child) {
    use std::io::Write;
    match child.stdin.as_mut() {
        Some(stdin) => {
            let _ = stdin.write_all(b"D");
            let _ = stdin.flush();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("xtask: the kernel did not exit after the dump request");
        }
        None => eprintln!("xtask: no stdin to QEMU's UART"),
    }
}

#[cfg(test)]
mod tests {
    use super::{kernel_target_dir, parse, Arch, KERNEL_DIR};

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        assert!(parse(&args("--smp 256"))
            .err()
            .unwrap()
            .contains("1 to 255 CPUs"));
        assert!(parse(&args("--arch aarch64 --smp 257"))
            .err()
            .unwrap()
            .contains("runs with 1 to 256 CPUs"));
        assert!(parse(&args("--arch aarch64 --smp 256")).is_ok());
        assert!(parse(&args("--smp 0")).is_err());
        assert!(parse(&args("--accel tcg"))
            .err()
            .unwrap()
            .contains("single, multi or kvm"));
        assert!(parse(&args("--frob"))
            .err()
            .unwrap()
            .contains("unknown option '--frob'"));
        assert!(parse(&args("--expect-fault 4 --smp 4"))
            .err()
            .unwrap()
            .contains("1 to 3"));
        let o = parse(&args(
            "--smp 8 --accel multi --runs 3 --expect-fault 2 -- rounds=10",
        ))
        .unwrap();
        assert_eq!((o.smp, o.accel.as_str(), o.runs), (8, "multi", 3));
        assert_eq!(o.kernel_args, ["rounds=10", "fault=2"]);
        assert_eq!((o.arch, o.machine.as_str()), (Arch::X86_64, "microvm"));
        let o = parse(&args("--arch aarch64 --smp 8")).unwrap();
        assert_eq!((o.arch, o.machine.as_str()), (Arch::Aarch64, "virt"));
        assert!(parse(&args("--arch aarch64 --accel kvm"))
            .err()
            .unwrap()
            .contains("TCG only"));
        assert!(parse(&args("--arch riscv"))
            .err()
            .unwrap()
            .contains("x86_64 or aarch64"));
    }

    #[test]
    fn the_kernel_is_built_under_cargo_target_dir_when_set() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            kernel_target_dir(Arch::X86_64, Some("/t/x86".into())).unwrap(),
            std::path::Path::new("/t/x86/qemu-test")
        );
        assert_eq!(
            kernel_target_dir(Arch::X86_64, Some("rel".into())).unwrap(),
            cwd.join("rel/qemu-test")
        );
        assert_eq!(
            kernel_target_dir(Arch::X86_64, None).unwrap(),
            cwd.join(KERNEL_DIR).join("target")
        );
        assert_eq!(
            kernel_target_dir(Arch::X86_64, Some("".into())).unwrap(),
            cwd.join(KERNEL_DIR).join("target")
        );
        assert_eq!(
            kernel_target_dir(Arch::Aarch64, Some("/t/x".into())).unwrap(),
            std::path::Path::new("/t/x/qemu-test-aarch64")
        );
        assert_eq!(
            kernel_target_dir(Arch::Aarch64, None).unwrap(),
            cwd.join("kernels/qemu-test-aarch64/target")
        );
    }
}
