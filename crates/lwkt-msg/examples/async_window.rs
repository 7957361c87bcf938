//! Asynchronous requests across two CPUs with a window of messages in
//! flight, replies to the client's own port; prints the time per message
//! and the machine's report (kicks, signals, unparks, polls), to see where
//! the cross-CPU cost goes.

use core::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use lwkt_core::CpuId;
use lwkt_msg::{Incoming, Msg, Port};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let window: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let (ns, report) = lwkt_arch_hosted::Machine::new(2)
        .unwrap()
        .run_with_report(move |cur| {
            let slot: Arc<OnceLock<&'static Port<u64>>> = Arc::new(OnceLock::new());
            let s2 = slot.clone();
            let h = cur
                .spawn_on(CpuId::new(1), move |me| {
                    let port = Port::thread(me).leak();
                    s2.set(port).ok().unwrap();
                    while let Incoming::Request(mut m) = port.waitport(me) {
                        *m += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                })
                .unwrap();
            let port = loop {
                if let Some(p) = slot.get() {
                    break *p;
                }
                cur.yield_now();
            };
            let replies: &'static Port<u64> = Port::thread(cur).leak();
            let mut ms: Vec<Pin<Box<Msg<u64>>>> = (0..window)
                .map(|i| Box::pin(Msg::with_reply_port(replies, 0).with_tag(i as u64)))
                .collect();
            let t = Instant::now();
            let mut sent = 0u64;
            for m in ms.iter_mut() {
                port.sendmsg(cur.my_cpu(), m.as_mut());
                sent += 1;
            }
            for _ in 0..n {
                let Incoming::Reply(r) = replies.waitport(cur) else {
                    unreachable!()
                };
                if sent < n {
                    let m = &mut ms[r.tag() as usize]; // the tag names it: no search
                    port.sendmsg(cur.my_cpu(), m.as_mut());
                    sent += 1;
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            port.close_from(cur.my_cpu());
            cur.join(&h);
            replies.close(cur);
            ns
        });
    println!("{n} requests, {window} in flight: {ns:.0} ns per request\n{report}");
}
