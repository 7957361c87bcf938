//! Misuse is refused with a message naming the rule. A panic inside an LWKT
//! thread aborts the process, so each case runs in a child process
//! (`common::run_child`) and the parent checks its stderr.

mod common;

use core::pin::{pin, Pin};

use common::{is_child, run_child};
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, MyCpu};
use lwkt_msg::{Msg, MsgHandle, Port};

fn expect_child_failure(test: &str, rule: &str) {
    let (ok, stderr) = run_child(test);
    assert!(!ok, "{test}: the child should have failed");
    assert!(
        stderr.contains(rule),
        "{test}: expected {rule:?} in the child's stderr:\n{stderr}"
    );
}

fn in_child(f: impl FnOnce(&mut lwkt_core::Cur) + Send + 'static) {
    Machine::new(2).unwrap().run(f);
}

#[test]
fn dropping_a_message_in_flight_aborts() {
    static NOBODY: Port<u32> = Port::spin();
    if is_child() {
        return in_child(|cur| {
            let mut m = Box::pin(Msg::new(0u32));
            NOBODY.sendmsg(cur.my_cpu(), m.as_mut());
            drop(m);
        });
    }
    expect_child_failure(
        "dropping_a_message_in_flight_aborts",
        "message dropped while in flight",
    );
}

#[test]
fn sending_a_message_twice_panics() {
    static NOBODY: Port<u32> = Port::spin();
    if is_child() {
        return in_child(|cur| {
            let mut m = Pin::static_mut(Box::leak(Box::new(Msg::new(0u32))));
            NOBODY.sendmsg(cur.my_cpu(), m.as_mut());
            NOBODY.sendmsg(cur.my_cpu(), m.as_mut());
        });
    }
    expect_child_failure("sending_a_message_twice_panics", "already in flight");
}

#[test]
fn the_body_is_out_of_reach_while_in_flight() {
    static NOBODY: Port<u32> = Port::spin();
    if is_child() {
        return in_child(|cur| {
            let mut m = Pin::static_mut(Box::leak(Box::new(Msg::new(0u32))));
            NOBODY.sendmsg(cur.my_cpu(), m.as_mut());
            let _ = *m.body();
        });
    }
    expect_child_failure(
        "the_body_is_out_of_reach_while_in_flight",
        "message body used while the message is in flight",
    );
}

#[test]
fn receiving_from_another_threads_port_panics() {
    if is_child() {
        return in_child(|cur| {
            let port: &'static Port<u32> = Port::thread(cur).leak();
            let t = cur
                .spawn_on(CpuId::new(0), move |me| {
                    let _ = port.getport(me);
                })
                .unwrap();
            cur.join(&t);
        });
    }
    expect_child_failure(
        "receiving_from_another_threads_port_panics",
        "only a thread port's owner receives from it",
    );
}

#[test]
fn putting_to_a_reply_only_port_panics() {
    static SINK: Port<u32> = Port::reply_only(None);
    if is_child() {
        return in_child(|cur| {
            let mut m = pin!(Msg::new(0u32));
            let _ = SINK.domsg(cur, m.as_mut());
        });
    }
    expect_child_failure(
        "putting_to_a_reply_only_port_panics",
        "put to a reply-only port",
    );
}

#[test]
fn domsg_to_ones_own_port_panics() {
    if is_child() {
        return in_child(|cur| {
            let port: &'static Port<u32> = Port::thread(cur).leak();
            let mut m = pin!(Msg::new(0u32));
            let _ = port.domsg(cur, m.as_mut());
        });
    }
    expect_child_failure("domsg_to_ones_own_port_panics", "own thread port");
}

#[test]
fn a_handler_that_drops_its_message_panics() {
    fn forgetful(_: MyCpu<'_>, m: MsgHandle<u32>) {
        drop(m);
    }
    static P: Port<u32> = Port::put_only(forgetful);
    if is_child() {
        return in_child(|cur| {
            let mut m = Pin::static_mut(Box::leak(Box::new(Msg::new(0u32))));
            let _ = P.domsg(cur, m.as_mut());
        });
    }
    expect_child_failure(
        "a_handler_that_drops_its_message_panics",
        "dropped without a reply",
    );
}

#[test]
fn a_put_only_port_cannot_take_replies() {
    fn h(my: MyCpu<'_>, m: MsgHandle<u32>) {
        m.reply(my, Ok(()));
    }
    static P: Port<u32> = Port::put_only(h);
    if is_child() {
        let _ = Msg::with_reply_port(&P, 0u32);
        return;
    }
    expect_child_failure(
        "a_put_only_port_cannot_take_replies",
        "put-only port cannot be a reply port",
    );
}

#[test]
fn a_serializer_port_needs_its_serializer() {
    static S: lwkt_core::Serializer = lwkt_core::Serializer::new();
    static P: Port<u32> = Port::serializer(&S);
    if is_child() {
        return in_child(|cur| {
            let mut m = pin!(Msg::new(0u32));
            P.sendmsg(cur.my_cpu(), m.as_mut());
        });
    }
    expect_child_failure(
        "a_serializer_port_needs_its_serializer",
        "without holding its serializer",
    );
}
