//! Whole-program allocator comparisons for `bench-report`: the allocator
//! workloads (`alloc_workloads`) built three ways (`alloc_slab`,
//! `alloc_system`, `alloc_mimalloc`), each run as a process, in turn
//! (slab, glibc, mimalloc, slab, ...) so that the machine's drift hits all
//! three alike, timed from outside: wall clock, CPU time (user + system,
//! which a shared machine's other load disturbs less than the wall clock)
//! and peak RSS, all from `wait4`'s `rusage`. One warm-up round is not
//! counted.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The allocators, as binary name and label.
pub const ALLOCATORS: [(&str, &str); 3] = [
    ("alloc_slab", "GlobalSlab"),
    ("alloc_system", "glibc"),
    ("alloc_mimalloc", "mimalloc"),
];

/// The workloads, as arguments and label.
pub const WORKLOADS: [(&[&str], &str); 4] = [
    (&["larson", "4"], "larson, 4 threads, remote frees"),
    (&["churn", "4"], "churn, 4 threads"),
    (&["churn", "16"], "churn, 16 threads on 8 slots"),
    (&["xmalloc", "32"], "xmalloc, 32 threads on 8 slots"),
];

/// Counted rounds per workload in the report (after one warm-up round). On
/// this shared 2-vCPU machine the same binary against itself spread 0.65x
/// to 1.77x in wall time over 21 pairs (docs/benchmark-notes.md, session
/// 15): five rounds let a median land far from the truth.
pub const ROUNDS: usize = 11;

/// One workload's runs: per allocator (in [`ALLOCATORS`] order) the wall
/// and CPU times in seconds and peak RSS in KiB of each counted run.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// The workload's label.
    pub workload: String,
    /// Wall-clock seconds, per allocator, per run.
    pub secs: [Vec<f64>; 3],
    /// CPU seconds (user + system, the process and its threads), per
    /// allocator, per run; empty in results written before it was recorded.
    pub cpu_secs: [Vec<f64>; 3],
    /// Peak RSS in KiB, per allocator, per run.
    pub rss_kib: [Vec<f64>; 3],
}

impl Runs {
    /// Median of allocator `a`'s runs of `what`.
    pub fn median(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            f64::NAN
        } else {
            s[s.len() / 2]
        }
    }

    /// Median of the per-round ratios of allocator `a`'s wall time to
    /// `b`'s.
    pub fn time_ratio(&self, a: usize, b: usize) -> f64 {
        Self::ratio_of_rounds(&self.secs[a], &self.secs[b])
    }

    /// Median of the per-round ratios of allocator `a`'s CPU time to `b`'s
    /// (NaN when not recorded).
    pub fn cpu_ratio(&self, a: usize, b: usize) -> f64 {
        Self::ratio_of_rounds(&self.cpu_secs[a], &self.cpu_secs[b])
    }

    fn ratio_of_rounds(a: &[f64], b: &[f64]) -> f64 {
        let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        Self::median(&r)
    }

    /// Ratio of the medians of peak RSS, `a` over `b`.
    pub fn rss_ratio(&self, a: usize, b: usize) -> f64 {
        Self::median(&self.rss_kib[a]) / Self::median(&self.rss_kib[b])
    }
}

/// One run of one program.
struct Run {
    wall: f64,
    cpu: f64,
    rss_kib: f64,
}

/// Run one program; its wall and CPU times in seconds and peak RSS in KiB.
fn run_one(exe: &Path, args: &[&str]) -> Result<Run, String> {
    let t = Instant::now();
    let child = Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid for the kernel to fill.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped; the out-pointers are live.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{} {args:?} failed (status {status})",
            exe.display()
        ));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(Run {
        wall: secs,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib: ru.ru_maxrss as f64,
    })
}

/// Run every workload `reps` counted rounds (after one warm-up round) with
/// the three binaries found in `bin_dir`.
pub fn measure(bin_dir: &Path, reps: usize) -> Result<Vec<Runs>, String> {
    let mut out = Vec::new();
    for (args, label) in WORKLOADS {
        let mut runs = Runs {
            workload: label.to_string(),
            ..Runs::default()
        };
        for round in 0..=reps {
            for (i, (bin, _)) in ALLOCATORS.iter().enumerate() {
                let run = run_one(&bin_dir.join(bin), args)?;
                if round > 0 {
                    runs.secs[i].push(run.wall);
                    runs.cpu_secs[i].push(run.cpu);
                    runs.rss_kib[i].push(run.rss_kib);
                }
            }
        }
        out.push(runs);
    }
    Ok(out)
}

/// The runs as JSON, for a later report.
pub fn to_json(runs: &[Runs]) -> serde_json::Value {
    serde_json::Value::Array(
        runs.iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload,
                    "secs": r.secs,
                    "cpu_secs": r.cpu_secs,
                    "rss_kib": r.rss_kib,
                })
            })
            .collect(),
    )
}

/// Runs read back from [`to_json`]'s output.
pub fn from_json(v: &serde_json::Value) -> Vec<Runs> {
    let arr3 = |x: &serde_json::Value| -> [Vec<f64>; 3] {
        core::array::from_fn(|i| {
            x[i].as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default()
        })
    };
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| Runs {
                    workload: r["workload"].as_str().unwrap_or("?").to_string(),
                    secs: arr3(&r["secs"]),
                    cpu_secs: arr3(&r["cpu_secs"]),
                    rss_kib: arr3(&r["rss_kib"]),
                })
                .collect()
        })
        .unwrap_or_default()
}
