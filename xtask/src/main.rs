//! Project tasks: `cargo xtask <task>`.
//!
//! - `loom`: the loom models (`--cfg loom`, `LOOM_MAX_PREEMPTIONS=2`, release).
//! - `miri`: under Miri, every test of lwkt-token, lwkt-core, lwkt-msg,
//!   lwkt-slab and lwkt-netdispatch that does not need the hosted backend
//!   (unit tests, integration tests, doctests; what is left out and why is
//!   printed, see `miri.rs`), installing Miri and rust-src if needed.
//! - `asan`: the hosted tests of lwkt-token, lwkt-core, lwkt-msg and
//!   lwkt-slab under AddressSanitizer (nightly), after a canary use after
//!   free that must be caught (see `asan.rs`).
//! - `soak [--cpus N] [--seconds S] ...`: the soak test with conservation
//!   counts (`soak/`, package `lwkt-soak`) in release; fails on any lost,
//!   duplicated or misdirected message or broken invariant.
//!
//! The loom, Miri and ASan builds each use a target directory of their
//! own under `$CARGO_TARGET_DIR` (default `target`).
//! - `fuzz [seconds]`: build every cargo-fuzz target and run each for a
//!   while (default 30 s) from its committed corpus, installing nightly and
//!   cargo-fuzz if needed. New inputs go to a scratch directory; the
//!   committed corpus is replayed by `cargo test` anyway.
//! - `qemu [--arch x86_64|aarch64] [--smp N] ...`: build the test kernel
//!   of that architecture and boot it under QEMU (see `qemu.rs` and
//!   `cargo xtask qemu --help`).
//! - `instr [--update]`: instructions per operation of the hot paths
//!   (callgrind), failing on a regression beyond 5% of
//!   `benches/instructions.txt`.
//! - `bench-report [--run]`: write `docs/benchmarks.md` and its plots from
//!   criterion's results (`--run` runs `cargo bench -p lwkt-benches` and
//!   the counting `sync_events` bench first).
//! - `ci`: the whole CI script, `.ci/run`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod asan;
mod instr;
mod miri;
mod qemu;
mod soak;

const USAGE: &str =
    "usage: cargo xtask <loom|miri|asan|soak [--cpus N] [--seconds S]|fuzz [seconds]|\
                     qemu [options]|instr [--update]|bench-report [--run]|ci>";

/// cargo-fuzz targets: (crate directory, target).
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("crates/lwkt-slab", "slab_ops"),
    ("crates/lwkt-netdispatch", "dispatch"),
];

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {cmd:?}");
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {st}"))
    }
}

fn loom() -> Result<(), String> {
    run(Command::new("cargo")
        .args([
            "test",
            "-p",
            "lwkt-token",
            "-p",
            "lwkt-core",
            "-p",
            "lwkt-msg",
            "-p",
            "lwkt-slab",
            "--release",
            "--lib",
        ])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", "2")
        .env("CARGO_TARGET_DIR", tool_target_dir("loom")))
}

/// The workspace root (xtask's parent directory).
pub(crate) fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// The target directory: `$CARGO_TARGET_DIR` or the workspace's `target`.
pub(crate) fn target_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    if base.is_absolute() {
        base
    } else {
        root().join(base)
    }
}

/// A tool's own target directory, `<target>/<name>`: its flags would
/// rebuild everything in the main one.
pub(crate) fn tool_target_dir(name: &str) -> PathBuf {
    target_dir().join(name)
}

/// The nightly toolchain with `components`, installed if missing (an
/// error, not a skip, when it cannot be had).
pub(crate) fn nightly(components: &[&str]) -> Result<(), String> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        if !components.is_empty() {
            cmd.args(["--component", &components.join(",")]);
        }
        return run(&mut cmd);
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("rustup")
        .args(["component", "add", "--toolchain", "nightly"])
        .args(&missing))
}

fn fuzz(seconds: &str) -> Result<(), String> {
    nightly(&[])?;
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for (dir, target) in FUZZ_TARGETS {
        let scratch = std::env::temp_dir().join(format!("lwkt-fuzz-{target}"));
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let corpus = format!("fuzz/corpus/{target}");
        run(Command::new("cargo")
            .current_dir(dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
            ]))?;
    }
    Ok(())
}

fn bench_report(args: &[String]) -> Result<(), String> {
    let mut report = vec![
        "run",
        "--release",
        "--quiet",
        "-p",
        "lwkt-benches",
        "--bin",
        "bench_report",
    ];
    match args {
        [] => {}
        [a] if a == "--run" => {
            // The allocator programs the report runs itself (`--alloc`),
            // built in the report's own profile directory.
            run(Command::new("cargo").args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "lwkt-benches",
                "--bin",
                "alloc_slab",
                "--bin",
                "alloc_system",
                "--bin",
                "alloc_mimalloc",
            ]))?;
            report.extend(["--", "--alloc"]);
            run(Command::new("cargo").args(["bench", "-p", "lwkt-benches"]))?;
            run(Command::new("cargo").args([
                "bench",
                "-p",
                "lwkt-benches",
                "--features",
                "sync-events",
                "--bench",
                "sync_events",
            ]))?
        }
        _ => return Err("usage: cargo xtask bench-report [--run]".into()),
    }
    run(Command::new("cargo").args(&report))
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let r = match task.as_str() {
        "loom" => loom(),
        "miri" => miri::miri(),
        "asan" => asan::asan(),
        "soak" => soak::soak(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fuzz" => fuzz(&std::env::args().nth(2).unwrap_or_else(|| "30".into())),
        "qemu" => qemu::qemu(&std::env::args().skip(2).collect::<Vec<_>>()),
        "instr" => instr::instr(&std::env::args().skip(2).collect::<Vec<_>>()),
        "bench-report" => bench_report(&std::env::args().skip(2).collect::<Vec<_>>()),
        "ci" => run(Command::new("bash").arg(".ci/run")),
        _ => Err(USAGE.to_string()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
