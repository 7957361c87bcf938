//! Project tasks: `cargo xtask <task>`.
//!
//! - `loom`: the loom models (`--cfg loom`, `LOOM_MAX_PREEMPTIONS=2`, release).
//! - `miri`: the Miri subset (the unit tests of lwkt-token, lwkt-core, lwkt-msg and lwkt-slab), installing Miri if needed.
//! - `ci`: the whole CI script, `.ci/run`.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <loom|miri|ci>";

fn run(cmd: &mut Command) -> Result<(), String> {
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
        .env("CARGO_TARGET_DIR", "target/loom"))
}

fn miri() -> Result<(), String> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "cargo", "miri", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "miri,rust-src",
        ]))?;
    }
    run(Command::new("cargo").args(["+nightly", "miri", "setup"]))?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "miri",
            "test",
            "-p",
            "lwkt-token",
            "-p",
            "lwkt-core",
            "-p",
            "lwkt-msg",
            "-p",
            "lwkt-slab",
            "--lib",
        ])
        .env("MIRIFLAGS", "-Zmiri-strict-provenance")
        .env("CARGO_TARGET_DIR", "target/miri"))
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let r = match task.as_str() {
        "loom" => loom(),
        "miri" => miri(),
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
