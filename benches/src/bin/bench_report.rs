//! `cargo xtask bench-report`: turn criterion's results (`target/criterion`)
//! into `docs/benchmarks.md` and its plots (`docs/bench/*.svg`).
//!
//! For every comparison: a table (median per element with the 95%
//! interval of the median, the fastest sample, the ratio to the group's
//! reference row) and a bar plot; the targets the issues set, judged on
//! these numbers; the netdispatch scaling with a stated cost model to 64
//! CPUs, checked against the measured 1- and 2-CPU rates; and the
//! instruction counts of `benches/instructions.txt`. Groups that were not
//! run are listed as such.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lwkt_benches::alloc_runs;
use plotters::prelude::*;

/// One benchmark's result, per element.
#[derive(Debug, Clone, Copy)]
struct Est {
    median: f64,
    lo: f64,
    hi: f64,
    fastest: f64,
    elements: f64,
}

type Results = BTreeMap<(String, String), Est>;

/// Every `*/new/benchmark.json` under `root`, keyed by (group, function[/value]).
fn load(root: &Path) -> Results {
    let mut out = Results::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some((k, est)) = read_one(&p) {
                        out.insert(k, est);
                    }
                } else if p.file_name().is_some_and(|n| n != "base" && n != "report") {
                    stack.push(p);
                }
            }
        }
    }
    out
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn read_one(dir: &Path) -> Option<((String, String), Est)> {
    let b = read_json(&dir.join("benchmark.json"))?;
    let e = read_json(&dir.join("estimates.json"))?;
    let s = read_json(&dir.join("sample.json"))?;
    let group = b["group_id"].as_str()?.to_string();
    let mut func = b["function_id"].as_str().unwrap_or("").to_string();
    if let Some(v) = b["value_str"].as_str() {
        func = format!("{func}/{v}");
    }
    let elements = b["throughput"]["Elements"].as_f64().unwrap_or(1.0);
    let m = &e["median"];
    let fastest = s["iters"]
        .as_array()?
        .iter()
        .zip(s["times"].as_array()?)
        .filter_map(|(i, t)| Some(t.as_f64()? / i.as_f64()?))
        .fold(f64::MAX, f64::min);
    Some((
        (group, func),
        Est {
            median: m["point_estimate"].as_f64()? / elements,
            lo: m["confidence_interval"]["lower_bound"].as_f64()? / elements,
            hi: m["confidence_interval"]["upper_bound"].as_f64()? / elements,
            fastest: fastest / elements,
            elements,
        },
    ))
}

/// A group of the report: its criterion group, a title, what one element
/// is, and its rows (the first is the reference).
struct Group {
    id: &'static str,
    title: &'static str,
    element: &'static str,
    rows: &'static [&'static str],
}

const GROUPS: &[Group] = &[
    Group {
        id: "switch",
        title: "lwkt-core: thread switch, same CPU",
        element: "one switch",
        rows: &[
            "lwkt same-CPU switch",
            "OS hand-off (Mutex+Condvar, one core)",
            "std::thread::yield_now",
            "std::thread::yield_now, two threads on one core",
        ],
    },
    Group {
        id: "crit",
        title: "lwkt-core: critical section",
        element: "one enter+exit pair",
        rows: &[
            "two plain increments",
            "lwkt crit_enter+crit_exit",
            "AtomicU64::fetch_add",
        ],
    },
    Group {
        id: "ipi_ring",
        title: "lwkt-core: IPI ring throughput, CPU 0 to CPU 1",
        element: "one message",
        rows: &[
            "rtrb",
            "lwkt ring, unbatched, handles",
            "lwkt ring, unbatched",
            "lwkt ring, batches of 32",
            "crossbeam-channel bounded(256)",
        ],
    },
    Group {
        id: "ipi_path",
        title: "lwkt-core: IPI send path",
        element: "one message",
        rows: &[
            "lwkt send_ipi, CPU 0 -> CPU 1",
            "lwkt send_ipi_batch of 32, CPU 0 -> CPU 1",
        ],
    },
    Group {
        id: "token_uncontended",
        title: "lwkt-token: uncontended acquire+release",
        element: "one pair",
        rows: &[
            "parking_lot::Mutex lock+unlock",
            "lwkt token get+release",
            "lwkt token recursive get+release",
            "std::sync::Mutex lock+unlock",
            "spin::Mutex lock+unlock",
        ],
    },
    Group {
        id: "token_shared_struct",
        title: "lwkt-token: one shared structure",
        element: "one update",
        rows: &[
            "lwkt token/1cpu",
            "lwkt token/2cpu",
            "std Mutex/1cpu",
            "std Mutex/2cpu",
            "parking_lot Mutex/1cpu",
            "parking_lot Mutex/2cpu",
        ],
    },
    Group {
        id: "token_partitioned",
        title: "lwkt-token: per-CPU partitioned data",
        element: "one update",
        rows: &[
            "lwkt token/1cpu",
            "lwkt token/2cpu",
            "std Mutex/1cpu",
            "std Mutex/2cpu",
            "parking_lot Mutex/1cpu",
            "parking_lot Mutex/2cpu",
        ],
    },
    Group {
        id: "blocking_holder",
        title: "lwkt-token: a holder that blocks 1 ms holding the resource",
        element: "one update by a thread on the other CPU",
        rows: &[
            "parking_lot Mutex (holder sleeps 1 ms holding it)",
            "lwkt token (holder blocked 1 ms holding it)",
        ],
    },
    Group {
        id: "msg_same_cpu",
        title: "lwkt-msg: domsg on one CPU",
        element: "one round trip",
        rows: &[
            "lwkt domsg, put-only port (inline)",
            "lwkt domsg, thread port on the same CPU",
        ],
    },
    Group {
        id: "msg_cross_cpu",
        title: "lwkt-msg: round trip between two CPUs",
        element: "one round trip",
        rows: &[
            "cache-line ping-pong (floor)",
            "bare mailbox round trip (protocol floor)",
            "lwkt domsg, thread port on the other CPU",
            "crossbeam-channel pair",
            "Mutex+Condvar rendezvous",
        ],
    },
    Group {
        id: "msg_async",
        title: "lwkt-msg: requests with replies, 64 in flight",
        element: "one request",
        rows: &[
            "crossbeam-channel, 64 in flight, reply channel",
            "lwkt sendmsg, 64 in flight, replies to own port",
            "flume, 64 in flight, reply channel",
        ],
    },
    Group {
        id: "msg_vcpus",
        title: "lwkt-msg: the message mesh at 2 to 16 vCPUs (more vCPUs than host cores)",
        element: "one message (request and reply)",
        rows: &[
            "lwkt mesh/2",
            "OS threads + crossbeam/2",
            "lwkt mesh/3",
            "OS threads + crossbeam/3",
            "lwkt mesh/4",
            "OS threads + crossbeam/4",
            "lwkt mesh/8",
            "OS threads + crossbeam/8",
            "lwkt mesh/16",
            "OS threads + crossbeam/16",
        ],
    },
    Group {
        id: "intr_latency",
        title: "lwkt-core: a device interrupt until its thread runs (hosted, busy target CPU)",
        element: "one raise-to-running round trip",
        rows: &[
            "signal handler -> futex wake of a parked OS thread",
            "lwkt raise_interrupt -> interrupt thread preempts",
        ],
    },
    Group {
        id: "callout",
        title: "lwkt-core: arming and stopping a timer",
        element: "one arm + stop (lwkt), one reset (tokio)",
        rows: &[
            "tokio Sleep reset",
            "lwkt Callout reset_at+stop",
            "lwkt Callout reset+stop",
            "lwkt Callout reset_at of an armed callout",
        ],
    },
    Group {
        id: "timer_lateness",
        title: "lwkt-core: how late a 1 ms sleep wakes (lateness only)",
        element: "one sleep's lateness",
        rows: &["std::thread::sleep(1 ms)", "lwkt Cur::sleep_for(1 ms)"],
    },
    Group {
        id: "slab_local",
        title: "lwkt-slab: local alloc+free",
        element: "one pair",
        rows: &[
            "mimalloc/64",
            "lwkt-slab (LWKT thread)/64",
            "GlobalSlab (OS thread)/64",
            "system (glibc)/64",
            "mimalloc/4096",
            "lwkt-slab (LWKT thread)/4096",
            "system (glibc)/4096",
        ],
    },
    Group {
        id: "slab_two_local",
        title: "lwkt-slab: two CPUs allocating locally",
        element: "one pair per core",
        rows: &[
            "mimalloc, 2 threads",
            "lwkt-slab, 2 CPUs",
            "system (glibc), 2 threads",
        ],
    },
    Group {
        id: "slab_remote",
        title: "lwkt-slab: every free remote",
        element: "one alloc + remote free",
        rows: &[
            "mimalloc",
            "lwkt-slab, LWKT threads on 2 CPUs",
            "system (glibc)",
        ],
    },
    Group {
        id: "netdispatch_hash",
        title: "lwkt-netdispatch: CPU hash of an IPv4 4-tuple",
        element: "one hash",
        rows: &["toeplitz_table", "legacy_xor", "toeplitz_bitwise"],
    },
    Group {
        id: "netdispatch_classify",
        title: "lwkt-netdispatch: classify a frame",
        element: "one frame",
        rows: &["ipv4_tcp", "workload_frames_route"],
    },
    Group {
        id: "netdispatch_packets",
        title: "lwkt-netdispatch: packets through the three designs",
        element: "one frame",
        rows: &[
            "lwkt/1",
            "lwkt/2",
            "bucket_mutexes/1",
            "bucket_mutexes/2",
            "global_mutex/1",
            "global_mutex/2",
        ],
    },
];

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns >= 100.0 {
        format!("{ns:.0} ns")
    } else if ns >= 10.0 {
        format!("{ns:.1} ns")
    } else {
        format!("{ns:.2} ns")
    }
}

/// A horizontal bar plot of one group's medians, with the 95% interval as
/// a whisker and the fastest sample as a dot; a log scale when the rows
/// span more than 20x.
fn bar_plot(
    path: &Path,
    g: &Group,
    rows: &[(&str, Est)],
) -> Result<(), Box<dyn std::error::Error>> {
    let n = rows.len();
    let h = 70 + 46 * n as u32;
    let root = SVGBackend::new(path, (760, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows
        .iter()
        .map(|(_, e)| e.hi.max(e.median))
        .fold(0.0, f64::max)
        * 1.3;
    let min = rows
        .iter()
        .map(|(_, e)| e.fastest.min(e.lo))
        .fold(f64::MAX, f64::min);
    let caption = format!("{} (ns per {}, lower is better)", g.title, g.element);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    macro_rules! draw {
        ($chart:expr, $x0:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .disable_y_axis()
                .x_desc("ns")
                .draw()?;
            for (i, (label, e)) in rows.iter().enumerate() {
                let c = colors[i % colors.len()];
                let y = (n - 1 - i) as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [($x0, y + 0.1), (e.median, y + 0.5)],
                    c.mix(0.75).filled(),
                )))?;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(e.lo, y + 0.3), (e.hi, y + 0.3)],
                    BLACK.stroke_width(2),
                )))?;
                chart.draw_series(std::iter::once(Circle::new(
                    (e.fastest, y + 0.3),
                    3,
                    BLACK.filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{label}: {}", fmt_ns(e.median)),
                    ($x0, y + 0.92),
                    ("sans-serif", 13),
                )))?;
            }
        }};
    }
    if max / min > 20.0 {
        let x0 = min / 2.0;
        draw!(
            ChartBuilder::on(&root)
                .caption(caption, ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(30)
                .build_cartesian_2d((x0..max).log_scale(), 0f64..n as f64)?,
            x0
        );
    } else {
        draw!(
            ChartBuilder::on(&root)
                .caption(caption, ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(30)
                .build_cartesian_2d(0f64..max, 0f64..n as f64)?,
            0.0
        );
    }
    root.present()?;
    Ok(())
}

/// Per-frame counts of one design's run, from the bench's `events.json`.
#[derive(Debug, Clone, Copy, Default)]
struct Events {
    frames: f64,
    remote_messages: f64,
    local_messages: f64,
    ipis: f64,
    kicks: f64,
    locks: f64,
}

fn load_events(root: &Path) -> BTreeMap<(String, u32), Events> {
    let mut m = BTreeMap::new();
    if let Some(serde_json::Value::Array(rows)) =
        read_json(&root.join("netdispatch_packets/events.json"))
    {
        for r in rows {
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            let (Some(d), Some(n)) = (r["design"].as_str(), r["cpus"].as_u64()) else {
                continue;
            };
            m.insert(
                (d.to_string(), n as u32),
                Events {
                    frames: f("frames"),
                    remote_messages: f("remote_messages"),
                    local_messages: f("local_messages"),
                    ipis: f("ipis"),
                    kicks: f("kicks"),
                    locks: f("lock_acquisitions"),
                },
            );
        }
    }
    m
}

/// Cache lines a connection-table update writes: the mutex word (with the
/// table header on the same line) and the 72-byte entry (a 40-byte `Flow`
/// key and a 32-byte record), which spans two lines. Counted from the
/// layout, not fitted.
const LINES_PER_UPDATE: f64 = 3.0;

/// The cost model: frames per second of each design at `n` CPUs.
///
/// Each CPU spends `c1` ns per frame (the design's own 1-CPU cost: parse,
/// hash, table update) plus what sharing adds:
/// - lwkt: a fraction (n-1)/n of the frames belong to another CPU's
///   flows; they travel in batches, and each batch costs one remote
///   request and its reply (`c_msg`, the `msg_async` lwkt time per
///   request): `c(n) = c1 + (n-1)/n * c_msg / batch`, rate `n / c(n)`;
/// - bucket mutexes: a frame's bucket was last written by another CPU with
///   probability (n-1)/n, and then every line the update writes moves
///   (`LINES_PER_UPDATE` transfers of `t_line`, half the cache-line
///   ping-pong round trip): `c(n) = c1 + (n-1)/n * LINES * t_line`, rate
///   `n / c(n)`;
/// - global mutex: the same per-frame cost, but the table update (`c1`
///   minus the measured classify and hash costs) and its line transfers
///   are serial: rate `min(n / c(n), 1 / (c_cs + LINES * t_line))`.
struct Model {
    c1: BTreeMap<&'static str, f64>,
    c_msg: f64,
    t_line: f64,
    c_parse: f64,
    batch: f64,
}

impl Model {
    fn rate(&self, design: &str, n: f64) -> Option<f64> {
        let c1 = *self.c1.get(design)?;
        let share = (n - 1.0) / n;
        Some(match design {
            "lwkt" => n / (c1 + share * self.c_msg / self.batch) * 1e9,
            "bucket_mutexes" => n / (c1 + share * LINES_PER_UPDATE * self.t_line) * 1e9,
            _ => {
                let c_cs = (c1 - self.c_parse).max(1.0);
                let parallel = n / (c1 + share * LINES_PER_UPDATE * self.t_line) * 1e9;
                if n > 1.0 {
                    parallel.min(1e9 / (c_cs + LINES_PER_UPDATE * self.t_line))
                } else {
                    parallel
                }
            }
        })
    }
}

fn scaling_section(
    out: &mut String,
    r: &Results,
    root: &Path,
    docs: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let get = |g: &str, f: &str| r.get(&(g.to_string(), f.to_string())).copied();
    let designs = [
        ("lwkt", "lwkt: per-CPU protocol threads"),
        ("bucket_mutexes", "256 bucket mutexes"),
        ("global_mutex", "one global mutex"),
    ];
    let (Some(msg), Some(ping), Some(route)) = (
        get(
            "msg_async",
            "lwkt sendmsg, 64 in flight, replies to own port",
        ),
        get("msg_cross_cpu", "cache-line ping-pong (floor)"),
        get("netdispatch_classify", "workload_frames_route"),
    ) else {
        out.push_str("\n(The cost model needs the msg_async, msg_cross_cpu and netdispatch_classify groups; run them.)\n");
        return Ok(());
    };
    let mut c1 = BTreeMap::new();
    for (d, _) in designs {
        if let Some(e) = get("netdispatch_packets", &format!("{d}/1")) {
            c1.insert(d, e.median);
        }
    }
    let model = Model {
        c1,
        c_msg: msg.median,
        t_line: ping.median / 2.0,
        c_parse: route.median,
        batch: lwkt_demo::net::BATCH as f64,
    };
    let events = load_events(root);
    let _ = writeln!(out, "\n### Cost model and scaling to 64 CPUs (modelled)\n");
    let _ = writeln!(out, "Constants, all measured in this run by other groups: one remote request with its reply `c_msg` = {} (`msg_async`, lwkt); one cache-line transfer `t_line` = {} (half the `msg_cross_cpu` ping-pong round trip); classify + hash of a workload frame, its memory cold as the designs see it, `c_parse` = {} (`netdispatch_classify/workload_frames_route`); frames per batch message = {}; cache lines a table update writes = 3 (the lock word with the table header, and the 72-byte entry across two lines; counted from the layout). Each design's own 1-CPU cost per frame `c1` anchors it; the model predicts every other CPU count. The formulas are in `benches/src/bin/bench_report.rs` (`Model`).\n", fmt_ns(model.c_msg), fmt_ns(model.t_line), fmt_ns(model.c_parse), lwkt_demo::net::BATCH);
    let _ = writeln!(out, "| design | counted per frame at 2 CPUs | measured 1 CPU | measured 2 CPUs | modelled 2 CPUs | model error at 2 | modelled 4 / 16 / 64 CPUs |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let mut all_within = true;
    for (d, label) in designs {
        let m1 = get("netdispatch_packets", &format!("{d}/1"));
        let m2 = get("netdispatch_packets", &format!("{d}/2"));
        let (Some(m1), Some(m2)) = (m1, m2) else {
            continue;
        };
        let (r1, r2) = (1e3 / m1.median, 1e3 / m2.median);
        let p2 = model.rate(d, 2.0).unwrap_or(0.0) / 1e6;
        let err = 100.0 * (p2 - r2) / r2;
        all_within &= err.abs() <= 20.0;
        let far: Vec<String> = [4.0, 16.0, 64.0]
            .iter()
            .map(|&n| format!("{:.1}", model.rate(d, n).unwrap_or(0.0) / 1e6))
            .collect();
        let ev = events
            .get(&(d.to_string(), 2))
            .map_or("(not counted)".to_string(), |e| {
                if d == "lwkt" {
                    format!(
                        "{:.4} remote + {:.4} local messages, {:.4} IPIs, {:.4} kicks",
                        e.remote_messages / e.frames,
                        e.local_messages / e.frames,
                        e.ipis / e.frames,
                        e.kicks / e.frames
                    )
                } else {
                    format!("{:.2} lock acquisitions", e.locks / e.frames)
                }
            });
        let _ = writeln!(
            out,
            "| {label} | {ev} | {r1:.2} M/s | {r2:.2} M/s | {p2:.2} M/s | {err:+.0}% | {} M/s |",
            far.join(" / ")
        );
    }
    let _ = writeln!(out, "\nModel within 20% of every measured 2-CPU rate: **{}**. What it leaves out: cache effects of splitting the tables (each CPU's table is half as big: helps lwkt), lock queueing at high CPU counts (the bucket-mutex curve is optimistic past a few dozen CPUs), and the hosted backend's signals (a kernel's IPI is cheaper).\n", if all_within { "yes" } else { "no" });
    let path = docs.join("bench/netdispatch_scaling.svg");
    let root_area = SVGBackend::new(&path, (760, 420)).into_drawing_area();
    root_area.fill(&WHITE)?;
    let ymax = designs
        .iter()
        .filter_map(|(d, _)| model.rate(d, 64.0))
        .fold(10e6, f64::max)
        / 1e6
        * 1.5;
    let mut chart = ChartBuilder::on(&root_area)
        .caption(
            "netdispatch: M frames/s vs CPUs (points measured, lines MODELLED)",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..64f64).log_scale(), (1f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("CPUs (log scale)")
        .y_desc("M frames/s (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
    ];
    for (i, (d, label)) in designs.iter().enumerate() {
        let c = colors[i];
        let pts: Vec<(f64, f64)> = (0..=60)
            .map(|k| 2f64.powf(k as f64 / 10.0))
            .filter_map(|n| Some((n, model.rate(d, n)? / 1e6)))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(pts, 6, 4, c.stroke_width(2)))?
            .label(format!("{label} (modelled)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        for n in [1u32, 2] {
            if let Some(e) = get("netdispatch_packets", &format!("{d}/{n}")) {
                chart.draw_series(std::iter::once(Circle::new(
                    (f64::from(n), 1e3 / e.median),
                    5,
                    c.filled(),
                )))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root_area.present()?;
    let _ = writeln!(
        out,
        "![netdispatch scaling, measured and modelled](bench/netdispatch_scaling.svg)\n"
    );
    Ok(())
}

/// The issues' targets, judged on this run's numbers.
fn targets(r: &Results) -> Vec<(String, Option<bool>, String)> {
    let m = |g: &str, f: &str| r.get(&(g.to_string(), f.to_string())).map(|e| e.median);
    let mut t = Vec::new();
    let mut add = |name: &str, v: Option<(bool, String)>| match v {
        Some((ok, s)) => t.push((name.to_string(), Some(ok), s)),
        None => t.push((name.to_string(), None, "not run".to_string())),
    };
    add(
        "same-CPU switch under 10 ns",
        m("switch", "lwkt same-CPU switch").map(|s| (s < 10.0, fmt_ns(s))),
    );
    add(
        "switch at least 100x the OS hand-off",
        m("switch", "lwkt same-CPU switch")
            .zip(m("switch", "OS hand-off (Mutex+Condvar, one core)"))
            .map(|(a, b)| (b / a >= 100.0, format!("{:.0}x", b / a))),
    );
    add(
        "crit pair within 2x of two plain increments",
        m("crit", "lwkt crit_enter+crit_exit")
            .zip(m("crit", "two plain increments"))
            .map(|(a, b)| (a <= 2.0 * b, format!("{:.2}x", a / b))),
    );
    add(
        "IPI ring, unbatched, at least rtrb's throughput (both through handles)",
        m("ipi_ring", "lwkt ring, unbatched, handles")
            .zip(m("ipi_ring", "rtrb"))
            .zip(m("ipi_ring", "lwkt ring, unbatched"))
            .map(|((a, b), plain)| {
                (
                    a <= b,
                    format!(
                        "{:.2}x rtrb's rate ({:.2}x through the plain `&self` push/pop)",
                        b / a,
                        b / plain
                    ),
                )
            }),
    );
    add(
        "token pair no slower than parking_lot",
        m("token_uncontended", "lwkt token get+release")
            .zip(m("token_uncontended", "parking_lot::Mutex lock+unlock"))
            .map(|(a, b)| (a <= b, format!("{:.2}x parking_lot's time", a / b))),
    );
    add(
        "recursive token at least 5x cheaper than parking_lot",
        m("token_uncontended", "lwkt token recursive get+release")
            .zip(m("token_uncontended", "parking_lot::Mutex lock+unlock"))
            .map(|(a, b)| (b / a >= 5.0, format!("{:.1}x cheaper", b / a))),
    );
    add(
        "same-CPU domsg to a put-only port (inline) under 50 ns",
        m("msg_same_cpu", "lwkt domsg, put-only port (inline)").map(|s| (s < 50.0, fmt_ns(s))),
    );
    add(
        "cross-CPU domsg within 3x of the ping-pong",
        m("msg_cross_cpu", "lwkt domsg, thread port on the other CPU")
            .zip(m("msg_cross_cpu", "cache-line ping-pong (floor)"))
            .map(|(a, b)| (a <= 3.0 * b, cross_cpu_text(a, b, None))),
    );
    add(
        "async throughput at least crossbeam's",
        m(
            "msg_async",
            "lwkt sendmsg, 64 in flight, replies to own port",
        )
        .zip(m(
            "msg_async",
            "crossbeam-channel, 64 in flight, reply channel",
        ))
        .map(|(a, b)| (a <= b, format!("{:.2}x crossbeam's rate", b / a))),
    );
    let counts = [2, 3, 4, 8, 16];
    add(
        "mesh: lwkt at least the OS-thread rate at 2, 3, 4, 8 and 16 vCPUs",
        counts
            .iter()
            .map(|n| {
                m("msg_vcpus", &format!("lwkt mesh/{n}"))
                    .zip(m("msg_vcpus", &format!("OS threads + crossbeam/{n}")))
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| {
                let ratios: Vec<String> = v
                    .iter()
                    .zip(counts)
                    .map(|((a, b), n)| format!("{n}: {:.2}x", b / a))
                    .collect();
                (
                    v.iter().all(|(a, b)| a <= b),
                    format!("lwkt's rate over the OS threads' at {}", ratios.join(", ")),
                )
            }),
    );
    add(
        "mesh: 16 vCPUs keep at least half the 2-vCPU rate",
        m("msg_vcpus", "lwkt mesh/16")
            .zip(m("msg_vcpus", "lwkt mesh/2"))
            .map(|(a, b)| (a <= 2.0 * b, format!("{:.2} of the 2-vCPU rate", b / a))),
    );
    add(
        "interrupts: raise to interrupt thread running faster than a signal's futex wake",
        m(
            "intr_latency",
            "lwkt raise_interrupt -> interrupt thread preempts",
        )
        .zip(m(
            "intr_latency",
            "signal handler -> futex wake of a parked OS thread",
        ))
        .map(|(a, b)| (a < b, format!("{:.3}x the futex wake's time", a / b))),
    );
    add(
        "callout arm+stop under 20 ns and at least 2x cheaper than a tokio Sleep reset",
        m("callout", "lwkt Callout reset_at+stop")
            .zip(m("callout", "tokio Sleep reset"))
            .map(|(a, t)| {
                (
                    a < 20.0 && 2.0 * a <= t,
                    format!(
                        "{} (reset_at), {:.2}x cheaper than tokio's",
                        fmt_ns(a),
                        t / a
                    ),
                )
            }),
    );
    add(
        "timers: median lateness of a 1 ms sleep no worse than std::thread::sleep's",
        m("timer_lateness", "lwkt Cur::sleep_for(1 ms)")
            .zip(m("timer_lateness", "std::thread::sleep(1 ms)"))
            .map(|(a, b)| (a <= b, format!("{:.2}x std's lateness", a / b))),
    );
    add(
        "slab local 64 B at least as fast as mimalloc",
        m("slab_local", "lwkt-slab (LWKT thread)/64")
            .zip(m("slab_local", "mimalloc/64"))
            .map(|(a, b)| (a <= b, format!("{:.2}x mimalloc's time", a / b))),
    );
    add(
        "slab remote free at least glibc's rate, within 1.5x of mimalloc",
        m("slab_remote", "lwkt-slab, LWKT threads on 2 CPUs")
            .zip(m("slab_remote", "system (glibc)"))
            .zip(m("slab_remote", "mimalloc"))
            .map(|((a, g), mi)| {
                (
                    a <= g && a <= 1.5 * mi,
                    format!(
                        "{} vs glibc {} and mimalloc {}",
                        fmt_ns(a),
                        fmt_ns(g),
                        fmt_ns(mi)
                    ),
                )
            }),
    );
    add(
        "netdispatch lwkt at 2 CPUs at least 1.8x its 1-CPU rate",
        m("netdispatch_packets", "lwkt/1")
            .zip(m("netdispatch_packets", "lwkt/2"))
            .map(|(a, b)| (a / b >= 1.8, format!("{:.2}x", a / b))),
    );
    add(
        "netdispatch lwkt ahead of both locking designs at 2 CPUs",
        m("netdispatch_packets", "lwkt/2")
            .zip(m("netdispatch_packets", "bucket_mutexes/2"))
            .zip(m("netdispatch_packets", "global_mutex/2"))
            .map(|((l, b), g)| {
                (
                    l < b && l < g,
                    format!(
                        "{:.1}x the bucket mutexes, {:.1}x the global mutex",
                        b / l,
                        g / l
                    ),
                )
            }),
    );
    add(
        "Toeplitz under 20 ns per IPv4 4-tuple",
        m("netdispatch_hash", "toeplitz_table").map(|s| (s < 20.0, fmt_ns(s))),
    );
    t
}

/// A section made from a JSON array a non-criterion bench wrote under
/// the criterion directory.
struct JsonSection<'a> {
    title: &'a str,
    /// The file, relative to the criterion directory.
    file: &'a str,
    /// The command that writes it.
    command: &'a str,
    /// What it measures.
    intro: &'a str,
    /// The table's header rows.
    header: &'a str,
}

impl JsonSection<'_> {
    /// Write the section, one table row per array element.
    fn write(&self, out: &mut String, root: &Path, row: impl Fn(&serde_json::Value) -> String) {
        let _ = writeln!(out, "\n## {}\n", self.title);
        let Some(serde_json::Value::Array(rows)) = read_json(&root.join(self.file)) else {
            let _ = writeln!(out, "(not run: `{}`)", self.command);
            return;
        };
        let _ = writeln!(out, "`{}`: {}\n\n{}", self.command, self.intro, self.header);
        for r in &rows {
            let _ = writeln!(out, "{}", row(r));
        }
    }
}

fn num(r: &serde_json::Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or(0.0)
}

/// The other CPU's latency while a holder blocks (`--bench token_latency`).
fn token_latency_section(out: &mut String, root: &Path) {
    JsonSection {
        title: "lwkt-token: latency seen by the other CPU while a holder blocks",
        file: "token_latency.json",
        command: "cargo bench -p lwkt-benches --bench token_latency",
        intro: "a thread on CPU 0 updates the resource as fast as it can for 300 ms while a holder on CPU 1 takes it, blocks 1 ms holding it, then works 1 ms without it; three interleaved runs per design, every operation's latency recorded.",
        header: "| design | updates per 300 ms | p50 | p99.9 | p99.99 | max | waits over 100 µs per run |\n|---|---:|---:|---:|---:|---:|---:|",
    }
    .write(out, root, |r| {
            format!(
                "| {} | {:.0} | {} | {} | {} | {} | {:.1} |",
                r["design"].as_str().unwrap_or("?"),
                num(r, "ops_per_run"),
                fmt_ns(num(r, "p50")),
                fmt_ns(num(r, "p999")),
                fmt_ns(num(r, "p9999")),
                fmt_ns(num(r, "max")),
                num(r, "waits_over_100us")
            )
        });
}

/// The counted synchronisation events of `benches/benches/sync_events.rs`.
fn sync_events_section(out: &mut String, root: &Path) {
    JsonSection {
        title: "Synchronisation events per operation (counted)",
        file: "sync_events.json",
        command: "cargo bench -p lwkt-benches --features sync-events --bench sync_events",
        intro: "with the `bench-counters` feature every atomic operation of lwkt-token, lwkt-core, lwkt-msg and lwkt-slab goes through a counting wrapper (`lwkt_token::sync_events`, swapped in by each crate's `sync` shim), and lwkt-core's per-CPU counters give the IPI messages and hardware kicks. Averages over 20,000 operations on a 2-vCPU hosted machine, the scheduler's own events included. A read-modify-write is a locked instruction on x86-64 (about 5.3 ns uncontended here, more when the line is remote); an atomic store costs a line transfer only when another CPU reads the line next (many counted stores are to per-CPU lines: a thread's critical-section count is an atomic, two stores per critical section). For comparison, not counted but documented: `parking_lot::Mutex` and `std::sync::Mutex` lock+unlock each take 2 read-modify-writes.",
        header: "| operation | atomic RMWs | atomic stores | IPI messages | hardware kicks |\n|---|---:|---:|---:|---:|",
    }
    .write(out, root, |r| {
            format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.3} |",
                r["op"].as_str().unwrap_or("?"),
                num(r, "rmw"),
                num(r, "stores"),
                num(r, "ipis"),
                num(r, "kicks")
            )
        });
}

/// The message-path targets of issue 17 (part 3): criterion medians, and
/// the counted read-modify-writes of `sync_events.json`.
fn message_path_targets(
    r: &Results,
    events: Option<&serde_json::Value>,
) -> Vec<(String, Option<bool>, String)> {
    let m = |g: &str, f: &str| r.get(&(g.to_string(), f.to_string())).map(|e| e.median);
    let rmw = |op: &str| {
        events?
            .as_array()?
            .iter()
            .find(|e| e["op"].as_str() == Some(op))
            .map(|e| num(e, "rmw"))
    };
    let judged = |name: &str, v: Option<(bool, String)>| match v {
        Some((ok, s)) => (name.to_string(), Some(ok), s),
        None => (name.to_string(), None, "not run".to_string()),
    };
    vec![
        judged(
            "same-CPU thread-port domsg under 40 ns with at most 2 RMWs",
            m("msg_same_cpu", "lwkt domsg, thread port on the same CPU")
                .zip(rmw("lwkt domsg, thread port on the same CPU"))
                .map(|(t, n)| (t < 40.0 && n <= 2.0, format!("{}, {n:.2} RMWs", fmt_ns(t)))),
        ),
        judged(
            "cross-CPU domsg within 2x of the ping-pong",
            m("msg_cross_cpu", "lwkt domsg, thread port on the other CPU")
                .zip(m("msg_cross_cpu", "cache-line ping-pong (floor)"))
                .map(|(a, b)| {
                    // The bare mailbox beside it: what any message protocol
                    // costs here (three line transfers in a row).
                    let mailbox = m("msg_cross_cpu", "bare mailbox round trip (protocol floor)");
                    (a <= 2.0 * b, cross_cpu_text(a, b, mailbox))
                }),
        ),
        judged(
            "batched IPI messages at least 200 M/s",
            m("ipi_ring", "lwkt ring, batches of 32").map(|t| {
                let rate = 1e3 / t;
                (rate >= 200.0, format!("{rate:.0} M/s (batches of 32)"))
            }),
        ),
    ]
}

/// The allocator targets of issue 17, judged on the program runs (time
/// targets on wall time, with the CPU-time ratio shown beside it).
fn alloc_targets(runs: &[alloc_runs::Runs]) -> Vec<(String, Option<bool>, String)> {
    type Ratio<'a> = &'a dyn Fn(&alloc_runs::Runs) -> f64;
    let judge = |name: &str, f: Ratio<'_>, cpu: Option<Ratio<'_>>, limit: f64| {
        if runs.is_empty() {
            return (name.to_string(), None, "not run".to_string());
        }
        let v: Vec<String> = runs
            .iter()
            .map(|r| match cpu {
                Some(c) if !c(r).is_nan() => {
                    format!("{}: {:.2}x (CPU {:.2}x)", r.workload, f(r), c(r))
                }
                _ => format!("{}: {:.2}x", r.workload, f(r)),
            })
            .collect();
        let ok = runs.iter().all(|r| f(r) <= limit);
        (name.to_string(), Some(ok), v.join("; "))
    };
    vec![
        judge(
            "GlobalSlab faster than glibc on every allocator workload",
            &|r| r.time_ratio(0, 1),
            Some(&|r| r.cpu_ratio(0, 1)),
            1.0,
        ),
        judge(
            "GlobalSlab within 1.2x of mimalloc's time on every allocator workload",
            &|r| r.time_ratio(0, 2),
            Some(&|r| r.cpu_ratio(0, 2)),
            1.2,
        ),
        judge(
            "GlobalSlab's peak RSS at most 1.2x mimalloc's",
            &|r| r.rss_ratio(0, 2),
            None,
            1.2,
        ),
    ]
}

fn alloc_section(out: &mut String, runs: &[alloc_runs::Runs], file: &Path) {
    let _ = writeln!(out, "\n## Allocators as a program's global allocator\n");
    if runs.is_empty() {
        let _ = writeln!(
            out,
            "(not run: `cargo xtask bench-report --run` runs the programs)"
        );
        return;
    }
    let when = written_at(std::fs::metadata(file).ok());
    let _ = writeln!(out, "The allocator workloads (`benches/src/alloc_workloads.rs`: larson with remote frees, everyday churn with growth, xmalloc with more threads than cores and slots) built three ways, `alloc_slab` (`GlobalSlab::new(1 << 30, 8).thread_cached(&ALLOC)`), `alloc_system` (glibc) and `alloc_mimalloc`, each run as a whole process in turn (slab, glibc, mimalloc, repeated), {} counted rounds after a warm-up; wall time, CPU time (user + system) and peak RSS (`wait4`'s `rusage`); ratios are medians of the per-round ratios. The targets are judged on wall time; CPU time, which the shared machine's other load disturbs less, is beside it. Measured {when} by `cargo xtask bench-report --run`.\n", runs.iter().map(|r| r.secs[0].len()).max().unwrap_or(0));
    let _ = writeln!(out, "| workload | GlobalSlab | glibc | mimalloc | slab / glibc | slab / mimalloc | CPU: slab / glibc, slab / mimalloc | peak RSS, MiB (slab, glibc, mimalloc) |\n|---|---:|---:|---:|---:|---:|---:|---|");
    let med = alloc_runs::Runs::median;
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {:.3} s | {:.3} s | {:.3} s | {:.2}x | {:.2}x | {:.2}x, {:.2}x | {:.1}, {:.1}, {:.1} |",
            r.workload,
            med(&r.secs[0]),
            med(&r.secs[1]),
            med(&r.secs[2]),
            r.time_ratio(0, 1),
            r.time_ratio(0, 2),
            r.cpu_ratio(0, 1),
            r.cpu_ratio(0, 2),
            med(&r.rss_kib[0]) / 1024.0,
            med(&r.rss_kib[1]) / 1024.0,
            med(&r.rss_kib[2]) / 1024.0,
        );
    }
}

/// When a result file was written, in UTC, for a section's "measured" line.
fn written_at(meta: Option<std::fs::Metadata>) -> String {
    meta.and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            sh(
                "date",
                &[
                    "-u",
                    "-d",
                    &format!("@{}", d.as_secs()),
                    "+%Y-%m-%d %H:%M UTC",
                ],
            )
        })
        .unwrap_or_else(|| "at an unknown time".into())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A cache-line ping-pong slower than this (ns per round trip) is the
/// slow placement of the two vCPU threads (docs/benchmark-notes.md,
/// sessions 8, 15, 16: about 400 ns there, 42-56 ns in the fast ones).
const SLOW_PLACEMENT_NS: f64 = 150.0;

/// The text of a cross-CPU `domsg` verdict: its ratio to the ping-pong,
/// the bare mailbox's beside it when measured, and a warning when the run
/// met the slow placement, where every line transfer is slow enough to
/// hide what the protocol adds, so a ratio near 1 says little.
fn cross_cpu_text(domsg: f64, ping_pong: f64, mailbox: Option<f64>) -> String {
    let mut t = format!("{:.1}x", domsg / ping_pong);
    if let Some(x) = mailbox {
        let _ = write!(
            t,
            " (a bare mailbox: {:.1}x; domsg / mailbox {:.2})",
            x / ping_pong,
            domsg / x
        );
    }
    if ping_pong > SLOW_PLACEMENT_NS {
        let _ = write!(
            t,
            "; **slow placement** (ping-pong {}): line transfers hide the protocol's cost here, \
             the fast placement's ratio is in benchmark-notes.md",
            fmt_ns(ping_pong)
        );
    }
    t
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = ws.join("target/criterion");
    let docs = ws.join("docs");
    std::fs::create_dir_all(docs.join("bench"))?;
    let r = load(&root);
    if r.is_empty() {
        return Err(format!(
            "no criterion results under {}: run `cargo bench -p lwkt-benches` first",
            root.display()
        )
        .into());
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n\n<!-- Generated by `cargo xtask bench-report` from target/criterion; do not edit by hand. Analysis and history: docs/benchmark-notes.md. -->\n");
    let _ = writeln!(out, "Generated by `cargo xtask bench-report` (after `cargo bench -p lwkt-benches`; `cargo xtask bench-report --run` does both) on {}.\n", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(
        out,
        "- **Machine**: {cpu}, {} vCPUs, {}; {}.",
        sh("nproc", &[]),
        sh("uname", &["-sr"]),
        sh("rustc", &["-V"])
    );
    let _ = writeln!(out, "- **Load** when the report was written: `/proc/loadavg` {}. The machine is a shared 2-vCPU VM: ratios within a group, measured side by side in one run, are the result; absolute times drift between runs.", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let _ = writeln!(out, "- **Columns**: criterion's median per element with the 95% confidence interval of that median, the fastest sample (interference only slows a sample down), and the ratio of each median to the group's first row. Plots: bars are medians, whiskers the interval, dots the fastest sample.");
    let _ = writeln!(out, "- **Analysis**, the method of each group and the history of the numbers: [`benchmark-notes.md`](benchmark-notes.md).\n");
    let _ = writeln!(
        out,
        "## Targets\n\n| target | verdict | this run |\n|---|---|---|"
    );
    let alloc_json = root.join("alloc_programs.json");
    if std::env::args().any(|a| a == "--alloc") {
        let bin_dir = std::env::current_exe()?
            .parent()
            .ok_or("no directory for the report's binary")?
            .to_path_buf();
        eprintln!(
            "bench-report: running the allocator programs ({} rounds after a warm-up)",
            alloc_runs::ROUNDS
        );
        let runs = alloc_runs::measure(&bin_dir, alloc_runs::ROUNDS)?;
        std::fs::write(
            &alloc_json,
            serde_json::to_string_pretty(&alloc_runs::to_json(&runs))?,
        )?;
    }
    let alloc = read_json(&alloc_json)
        .map(|v| alloc_runs::from_json(&v))
        .unwrap_or_default();
    let events = read_json(&root.join("sync_events.json"));
    let mut all_targets = targets(&r);
    all_targets.extend(message_path_targets(&r, events.as_ref()));
    all_targets.extend(alloc_targets(&alloc));
    for (name, ok, s) in all_targets {
        let v = match ok {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not run",
        };
        let _ = writeln!(out, "| {name} | {v} | {s} |");
    }
    for g in GROUPS {
        let rows: Vec<(&str, Est)> = g
            .rows
            .iter()
            .filter_map(|f| Some((*f, *r.get(&(g.id.to_string(), f.to_string()))?)))
            .collect();
        // When the group's results were written (groups may come from
        // different runs: `cargo bench -- GROUP` reruns one).
        let when = rows
            .first()
            .and_then(|(f, _)| {
                std::fs::metadata(
                    root.join(g.id)
                        .join(f.replace("::", "__"))
                        .join("new/estimates.json"),
                )
                .ok()
            })
            .or_else(|| std::fs::metadata(root.join(g.id)).ok());
        let when = written_at(when);
        let _ = writeln!(
            out,
            "\n## {}\n\n`{}`: one element = {}; measured {when}.\n",
            g.title, g.id, g.element
        );
        if rows.is_empty() {
            let _ = writeln!(out, "(not run)");
            continue;
        }
        let base = rows[0].1.median;
        let _ = writeln!(
            out,
            "| bench | median [95% CI] | fastest | per second | ratio |\n|---|---:|---:|---:|---:|"
        );
        for (name, e) in &rows {
            let _ = writeln!(
                out,
                "| {name} | {} [{}, {}] | {} | {:.2} M | {:.2}x |",
                fmt_ns(e.median),
                fmt_ns(e.lo),
                fmt_ns(e.hi),
                fmt_ns(e.fastest),
                1e3 / e.median,
                e.median / base
            );
        }
        let missing: Vec<&str> = g
            .rows
            .iter()
            .filter(|f| !rows.iter().any(|(n, _)| n == *f))
            .copied()
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(out, "\nNot run: {}.", missing.join(", "));
        }
        let svg = format!("bench/{}.svg", g.id);
        bar_plot(&docs.join(&svg), g, &rows)?;
        let _ = writeln!(out, "\n![{}]({svg})", g.title);
        if g.id == "netdispatch_packets" {
            let _ = writeln!(
                out,
                "\nThe workload: {} frames per iteration.",
                rows[0].1.elements
            );
            scaling_section(&mut out, &r, &root, &docs)?;
        }
    }
    token_latency_section(&mut out, &root);
    sync_events_section(&mut out, &root);
    alloc_section(&mut out, &alloc, &alloc_json);
    let _ = writeln!(out, "\n## Instructions per operation (callgrind)\n\nDeterministic counts by `cargo xtask instr` (N and 2N iterations under `valgrind --tool=callgrind`, the difference divided by N). lwkt's rows are checked in CI against `benches/instructions.txt` with a 5% threshold; the alternatives (`benches/instructions-reference.txt`, other crates' code) are counted the same way for comparison. An instruction count is not a time: a locked read-modify-write is one instruction of 20 or more cycles (see the synchronisation events above).\n\n| operation | instructions | |\n|---|---:|---|");
    for (file, label) in [
        ("benches/instructions.txt", "lwkt (gated)"),
        ("benches/instructions-reference.txt", "alternative"),
    ] {
        for l in std::fs::read_to_string(ws.join(file))
            .unwrap_or_default()
            .lines()
        {
            if let Some((k, v)) = l.split_once('=').filter(|_| !l.starts_with('#')) {
                let _ = writeln!(out, "| {} | {} | {label} |", k.trim(), v.trim());
            }
        }
    }
    std::fs::write(docs.join("benchmarks.md"), out)?;
    println!(
        "bench-report: wrote docs/benchmarks.md and docs/bench/*.svg from {} results",
        r.len()
    );
    Ok(())
}
