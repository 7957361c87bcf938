//! Tagged replies (issue 16): a client with many `sendmsg` requests in
//! flight learns which request each reply answers from `Replied::tag`,
//! without searching its own messages.

mod common;

use core::pin::Pin;

use common::server;
use lwkt_arch_hosted::Machine;
use lwkt_msg::{Incoming, Msg, Port};

const IN_FLIGHT: u64 = 64;

/// 64 requests in flight to a server thread on another CPU, each tagged
/// with its index: every reply names its request by its tag, every tag comes
/// back exactly once, and the body shows the server's work on that request.
#[test]
fn sixty_four_replies_in_flight_name_their_requests_by_tag() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, |me, port: &'static Port<u64>| {
            while let Incoming::Request(mut m) = port.waitport(me) {
                *m = *m * 1000 + 7; // the server's work: visible per request
                m.reply(me.my_cpu(), Ok(()));
            }
        });
        let replies: &'static Port<u64> = Port::thread(cur).leak();
        // Bodies differ from tags (i * 3), so the test sees that the tag names
        // the request and the body carries that request's answer.
        let mut ms: Vec<Pin<Box<Msg<u64>>>> = (0..IN_FLIGHT)
            .map(|i| Box::pin(Msg::with_reply_port(replies, i * 3).with_tag(i)))
            .collect();
        for m in ms.iter_mut() {
            port.sendmsg(cur.my_cpu(), m.as_mut());
        }
        assert!(
            ms.iter().any(|m| !m.is_done()),
            "some requests still in flight"
        );
        let mut seen = [0u32; IN_FLIGHT as usize];
        for _ in 0..IN_FLIGHT {
            let Incoming::Reply(r) = replies.waitport(cur) else {
                panic!("only replies come to the reply port");
            };
            assert_eq!(r.result(), Ok(()));
            let i = r.tag();
            assert!(i < IN_FLIGHT, "tag {i} was never sent");
            seen[i as usize] += 1;
            let m = &ms[i as usize];
            assert!(r.is(m), "the tag names the message the reply is for");
            assert!(m.is_done());
            assert_eq!(m.tag(), i);
            assert_eq!(
                *m.body(),
                i * 3 * 1000 + 7,
                "the server's work on request {i}"
            );
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "each tag exactly once: {seen:?}"
        );
        assert!(replies.getport(cur).is_none());

        // A tag changes only while the originator owns the message, and a
        // resent message's reply carries the new tag.
        let mut m0 = ms.swap_remove(0);
        m0.as_mut().set_tag(1_000_000);
        port.sendmsg(cur.my_cpu(), m0.as_mut());
        let Incoming::Reply(r) = replies.waitport(cur) else {
            unreachable!()
        };
        assert_eq!(r.tag(), 1_000_000);
        assert_eq!(*m0.body(), 7 * 1000 + 7, "served twice");

        port.close_from(cur.my_cpu());
        cur.join(&srv);
        replies.close(cur);
    });
}

/// Setting the tag of a message in flight panics (only the owner writes
/// it), and leaves the message's tag alone.
#[test]
fn set_tag_in_flight_panics() {
    Machine::new(2).unwrap().run(|cur| {
        let (port, srv) = server(cur, 1, |me, port: &'static Port<u64>| {
            // Hold the first request until the second arrives, the client's
            // sign that it has tried to retag the first.
            let first = port.waitport(me).request().unwrap();
            let go = port.waitport(me).request().unwrap();
            go.reply(me.my_cpu(), Ok(()));
            first.reply(me.my_cpu(), Ok(()));
        });
        let replies: &'static Port<u64> = Port::thread(cur).leak();
        let mut m = Box::pin(Msg::with_reply_port(replies, 0u64).with_tag(5));
        port.sendmsg(cur.my_cpu(), m.as_mut());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.as_mut().set_tag(6);
        }));
        let err = r.expect_err("set_tag on a message in flight must panic");
        let text = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| err.downcast_ref::<&str>().copied())
            .unwrap_or("");
        assert!(text.starts_with("lwkt-msg: "), "{text}");
        assert_eq!(m.tag(), 5);
        let mut go = Box::pin(Msg::new(0u64));
        port.domsg(cur, go.as_mut()).unwrap();
        assert_eq!(m.as_mut().wait(cur), Ok(()));
        assert_eq!(m.tag(), 5);
        cur.join(&srv);
        replies.close(cur);
    });
}
