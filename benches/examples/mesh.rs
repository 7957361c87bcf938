//! The message mesh of the `msg_vcpus` bench group, quick and side by side:
//! lwkt and the OS-thread design alternate, and the medians are printed.
//!
//! `cargo run --release -p lwkt-benches --example mesh -- [VCPUS...] [--runs N]`
//! (default: 2 3 4 8 16 vCPUs, 5 runs each).

use lwkt_benches::mesh;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut counts = Vec::new();
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N");
        } else {
            counts.push(a.parse::<usize>().expect("a vCPU count"));
        }
    }
    if counts.is_empty() {
        counts = vec![2, 3, 4, 8, 16];
    }
    println!("vcpus  lwkt msg/s   OS threads msg/s   lwkt/OS");
    for n in counts {
        let per = mesh::per_client(20_000, n);
        let total = (per * n as u64) as f64;
        let (mut l, mut o) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            l.push(total / mesh::lwkt(n, per).as_secs_f64());
            o.push(total / mesh::os_threads(n, per).as_secs_f64());
        }
        let (l, o) = (median(l), median(o));
        println!("{n:5}  {l:11.0}   {o:16.0}   {:7.2}", l / o);
    }
}
