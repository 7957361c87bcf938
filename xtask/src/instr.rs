//! `cargo xtask instr [--update]`: instructions per operation of the hot
//! paths, counted by callgrind (deterministic, unlike wall-clock time), and
//! checked against `benches/instructions.txt`.
//!
//! Each operation is a release example that repeats it `N` times; it runs
//! under `valgrind --tool=callgrind` with `N` and `2N`, and the difference
//! divided by `N` (times the operations per iteration) is the cost of one
//! operation, with start-up and shutdown cancelled out. A count more than
//! [`THRESHOLD_PCT`] percent above its baseline fails the task; `--update`
//! rewrites the baseline instead (do that with a note of why in the
//! commit).

use std::collections::BTreeMap;
use std::process::Command;

/// Allowed growth over the baseline, in percent.
pub(crate) const THRESHOLD_PCT: f64 = 5.0;
const BASELINE: &str = "benches/instructions.txt";
const N: u64 = 100_000;

/// One counted operation: (name, package, example, extra args, operations
/// per iteration).
type Op = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    u64,
);

/// lwkt's own hot paths: gated against the baseline.
const OPS: &[Op] = &[
    (
        "switch (yield + same-CPU switch)",
        "lwkt-arch-hosted",
        "switch_loop",
        &[],
        2,
    ),
    (
        "domsg to a thread port on the same CPU",
        "lwkt-msg",
        "domsg_loop",
        &[],
        1,
    ),
    (
        "domsg to a put-only port, replied inline",
        "lwkt-msg",
        "domsg_loop",
        &["put-only"],
        1,
    ),
    (
        "callout reset+stop on its own CPU",
        "lwkt-core",
        "callout_loop",
        &[],
        1,
    ),
    (
        "callout reset_at+stop on its own CPU",
        "lwkt-core",
        "callout_loop",
        &["at"],
        1,
    ),
    (
        "callout reset_at of an armed callout (a move)",
        "lwkt-core",
        "callout_loop",
        &["move"],
        1,
    ),
    ("token get+release", "lwkt-token", "token_loop", &[], 1),
    (
        "token recursive get+release",
        "lwkt-token",
        "token_loop",
        &["recursive"],
        1,
    ),
    ("slab 64 B alloc+free", "lwkt-slab", "slab_loop", &["64"], 1),
    (
        "slab 1 KiB alloc+free",
        "lwkt-slab",
        "slab_loop",
        &["1024"],
        1,
    ),
    (
        "route one IPv4/TCP frame",
        "lwkt-netdispatch",
        "dispatch_loop",
        &[],
        1,
    ),
    (
        "lwkt ring push+pop, one thread",
        "lwkt-benches",
        "alt_loop",
        &["lwkt_ring"],
        1,
    ),
    (
        "lwkt ring push+pop through handles, one thread",
        "lwkt-benches",
        "alt_loop",
        &["lwkt_ring_handles"],
        1,
    ),
    (
        "lwkt ring push_batch of 32 + 32 pops, per message, one thread",
        "lwkt-benches",
        "alt_loop",
        &["lwkt_ring_batch"],
        1,
    ),
];

/// The alternatives the benches compare with, counted the same way for
/// reference (other crates' code: reported, not gated).
const REFERENCE: &[Op] = &[
    (
        "parking_lot::Mutex lock+unlock",
        "lwkt-benches",
        "alt_loop",
        &["parking_lot"],
        1,
    ),
    (
        "std::sync::Mutex lock+unlock",
        "lwkt-benches",
        "alt_loop",
        &["std_mutex"],
        1,
    ),
    (
        "spin::Mutex lock+unlock",
        "lwkt-benches",
        "alt_loop",
        &["spin"],
        1,
    ),
    (
        "mimalloc 64 B alloc+free",
        "lwkt-benches",
        "alt_loop",
        &["mimalloc"],
        1,
    ),
    (
        "glibc malloc 64 B alloc+free",
        "lwkt-benches",
        "alt_loop",
        &["glibc"],
        1,
    ),
    (
        "rtrb push+pop, one thread",
        "lwkt-benches",
        "alt_loop",
        &["rtrb"],
        1,
    ),
    (
        "tokio Sleep reset (timer wheel remove+insert)",
        "lwkt-benches",
        "alt_loop",
        &["tokio_sleep_reset"],
        1,
    ),
    (
        "crossbeam-channel send+recv, one thread",
        "lwkt-benches",
        "alt_loop",
        &["crossbeam"],
        1,
    ),
];
const REFERENCE_FILE: &str = "benches/instructions-reference.txt";

fn callgrind(exe: &str, n: u64, extra: &[&str]) -> Result<u64, String> {
    let out = std::env::temp_dir().join(format!("lwkt-callgrind-{}.out", std::process::id()));
    let st = Command::new("valgrind")
        .args(["--tool=callgrind", "-q"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .arg(n.to_string())
        .args(extra)
        .output()
        .map_err(|e| {
            format!("cannot run valgrind ({e}): install it (apt-get install -y valgrind)")
        })?;
    if !st.status.success() {
        return Err(format!(
            "valgrind {exe} {n} failed: {}",
            String::from_utf8_lossy(&st.stderr)
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no instruction total in callgrind's output for {exe}"))
}

fn read_baseline() -> BTreeMap<String, f64> {
    std::fs::read_to_string(BASELINE)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, v) = l.rsplit_once('=')?;
            Some((name.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub(crate) fn instr(args: &[String]) -> Result<(), String> {
    let update = match args {
        [] => false,
        [a] if a == "--update" => true,
        _ => return Err("usage: cargo xtask instr [--update]".into()),
    };
    for (_, pkg, ex, _, _) in OPS {
        crate::run(Command::new("cargo").args([
            "build",
            "--release",
            "--quiet",
            "-p",
            pkg,
            "--example",
            ex,
        ]))?;
    }
    let base = read_baseline();
    let mut now = BTreeMap::new();
    let mut failures = Vec::new();
    println!("| operation | instructions per op | baseline | change |");
    println!("|---|---:|---:|---:|");
    for (name, _, ex, extra, per_iter) in OPS {
        let exe = crate::target_dir().join(format!("release/examples/{ex}"));
        let exe = exe.to_string_lossy();
        let a = callgrind(&exe, N, extra)?;
        let b = callgrind(&exe, 2 * N, extra)?;
        let per_op = (b as f64 - a as f64) / (N * per_iter) as f64;
        now.insert(name.to_string(), per_op);
        match base.get(*name) {
            Some(&old) => {
                let pct = 100.0 * (per_op - old) / old;
                println!("| {name} | {per_op:.1} | {old:.1} | {pct:+.1}% |");
                if pct > THRESHOLD_PCT {
                    failures.push(format!(
                        "{name}: {per_op:.1} instructions, baseline {old:.1} ({pct:+.1}%)"
                    ));
                }
            }
            None => println!("| {name} | {per_op:.1} | (none) | |"),
        }
    }
    // The alternatives, for the report (not gated).
    let mut reference = String::from(
        "# Instructions per operation of the alternatives (callgrind), written by\n\
         # `cargo xtask instr` for the report; other crates' code, not gated.\n",
    );
    for (name, _, ex, extra, per_iter) in REFERENCE {
        let exe = crate::target_dir().join(format!("release/examples/{ex}"));
        let exe = exe.to_string_lossy();
        let a = callgrind(&exe, N, extra)?;
        let b = callgrind(&exe, 2 * N, extra)?;
        let per_op = (b as f64 - a as f64) / (N * per_iter) as f64;
        println!("| {name} (reference) | {per_op:.1} | | |");
        reference.push_str(&format!("{name} = {per_op:.1}\n"));
    }
    std::fs::write(REFERENCE_FILE, reference).map_err(|e| format!("{REFERENCE_FILE}: {e}"))?;
    if update {
        let mut s = String::from(
            "# Instructions per operation (callgrind), checked by `cargo xtask instr`:\n\
             # a count more than 5% above its line fails CI. `cargo xtask instr --update`\n\
             # rewrites this file; say why in the commit.\n",
        );
        for (k, v) in &now {
            s.push_str(&format!("{k} = {v:.1}\n"));
        }
        std::fs::write(BASELINE, s).map_err(|e| format!("{BASELINE}: {e}"))?;
        println!("xtask: wrote {BASELINE}");
        return Ok(());
    }
    let missing: Vec<_> = now.keys().filter(|k| !base.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "no baseline for {missing:?}: run `cargo xtask instr --update`"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "instruction counts regressed beyond {THRESHOLD_PCT}%:\n  {}",
            failures.join("\n  ")
        ))
    }
}
