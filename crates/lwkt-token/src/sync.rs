//! Atomics from loom under `--cfg loom`, from core otherwise.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize};

pub(crate) use core::sync::atomic::Ordering;
