//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use lwkt_test_support::{is_child, run_child, within_seconds};
