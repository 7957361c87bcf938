//! `cargo xtask soak [--cpus N] [--seconds S] [...]`: build the soak
//! program (`soak/`, package `lwkt-soak`) in release and run it; its
//! options pass through (`--cpus`, `--seconds`, `--window`, `--stall`,
//! `--inject`). The run fails on any lost, duplicated or misdirected
//! message or broken invariant (the program's exit status).

use std::process::Command;

pub(crate) fn soak(args: &[String]) -> Result<(), String> {
    crate::run(
        Command::new("cargo")
            .current_dir(crate::root())
            .args(["run", "--release", "--quiet", "-p", "lwkt-soak", "--"])
            .args(args),
    )
}
