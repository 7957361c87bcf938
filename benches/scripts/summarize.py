#!/usr/bin/env python3
"""Print criterion's per-iteration medians of the `core` bench groups, the
`token_uncontended` group (parking_lot first, the token targets' reference),
the `msg`, `slab` and `netdispatch` groups (the reference each target names first) as
markdown tables: median [95% interval of the median], the fastest sample
(interference only slows a sample down) and each row's ratio to the group's
first row. Usage: python3 benches/scripts/summarize.py [target/criterion]"""
import json
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
GROUPS = {
    "switch": [
        "lwkt same-CPU switch",
        "OS hand-off (Mutex+Condvar, one core)",
        "std__thread__yield_now",
        "std__thread__yield_now, two threads on one core",
    ],
    "crit": ["lwkt crit_enter+crit_exit", "two plain increments", "AtomicU64__fetch_add"],
    "ipi_ring": [
        "lwkt ring, batches of 32",
        "lwkt ring, unbatched",
        "rtrb",
        "crossbeam-channel bounded(256)",
    ],
    "ipi_path": ["lwkt send_ipi_batch of 32, CPU 0 -_ CPU 1", "lwkt send_ipi, CPU 0 -_ CPU 1"],
    "token_uncontended": [
        "parking_lot__Mutex lock+unlock",
        "lwkt token get+release",
        "lwkt token recursive get+release",
        "std__sync__Mutex lock+unlock",
        "spin__Mutex lock+unlock",
    ],
    "msg_same_cpu": ["lwkt domsg, put-only port (inline)", "lwkt domsg, thread port on the same CPU"],
    "msg_cross_cpu": [
        "cache-line ping-pong (floor)",
        "lwkt domsg, thread port on the other CPU",
        "crossbeam-channel pair",
        "Mutex+Condvar rendezvous",
    ],
    "msg_async": [
        "crossbeam-channel, 64 in flight, reply channel",
        "lwkt sendmsg, 64 in flight, replies to own port",
        "flume, 64 in flight, reply channel",
    ],
}
for size in [16, 64, 256, 1024, 4096]:
    GROUPS[f"slab_local/{size}"] = [
        f"mimalloc/{size}",
        f"lwkt-slab (LWKT thread)/{size}",
        f"GlobalSlab (OS thread)/{size}",
        f"system (glibc)/{size}",
    ]
GROUPS["slab_two_local"] = ["mimalloc, 2 threads", "lwkt-slab, 2 CPUs", "system (glibc), 2 threads"]
GROUPS["slab_remote"] = ["mimalloc", "lwkt-slab, LWKT threads on 2 CPUs", "system (glibc)"]
GROUPS["netdispatch_hash"] = ["toeplitz_table", "legacy_xor", "toeplitz_bitwise"]
GROUPS["netdispatch_classify"] = ["ipv4_tcp"]
GROUPS["netdispatch_packets"] = [
    "lwkt/1",
    "lwkt/2",
    "bucket_mutexes/1",
    "bucket_mutexes/2",
    "global_mutex/1",
    "global_mutex/2",
]


def fmt(ns):
    if ns >= 1000:
        return f"{ns / 1000:,.2f} µs"
    if ns >= 100:
        return f"{ns:,.0f} ns"
    if ns >= 10:
        return f"{ns:.1f} ns"
    return f"{ns:.2f} ns"


for group, benches in GROUPS.items():
    print(f"\n### {group}\n")
    print("| bench | median per element [95% CI] | fastest sample | M elem/s (median) | ratio to first row |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for b in benches:
        d = os.path.join(ROOT, group.split("/")[0], b, "new")
        try:
            est = json.load(open(os.path.join(d, "estimates.json")))
            smp = json.load(open(os.path.join(d, "sample.json")))
        except FileNotFoundError:
            print(f"| {b} | (not run) | | | |")
            continue
        m = est["median"]
        med = m["point_estimate"]
        lo, hi = m["confidence_interval"]["lower_bound"], m["confidence_interval"]["upper_bound"]
        fastest = min(t / i for t, i in zip(smp["times"], smp["iters"]))
        if base is None:
            base = med
        print(
            f"| {b.replace('__', '::').replace('-_', '->')} | {fmt(med)} [{fmt(lo)}, {fmt(hi)}] "
            f"| {fmt(fastest)} | {1e3 / med:,.1f} | {med / base:.2f}× |"
        )
