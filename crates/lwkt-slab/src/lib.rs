//! DragonFly BSD's slab allocator for any kernel: per-CPU zones of
//! equal-size chunks, allocated and freed on their own CPU with no lock and
//! no atomic read-modify-write; frees from other CPUs go back to the owner
//! through a lock-free list that only the owner drains.
//!
//! It builds for any target with native word-sized atomics (with
//! `--no-default-features` for `no_std`). Without 64-bit atomics the
//! remote-free list's head word is an `AtomicU32` (`count << 16 | offset`:
//! a zone is 64 KiB), never a lock-based 64-bit emulation, since remote
//! frees may come from interrupt context; statistics counters are then 32
//! bits wide and wrap (the porting guide, "32-bit targets and targets
//! without 64-bit atomics").
//!
//! | DragonFly | here |
//! |---|---|
//! | `kmalloc(size, type, flags)` | [`Slab::alloc`] |
//! | `kfree(ptr, type)` | [`Slab::free`] (with the layout, as Rust allocators do) |
//! | `krealloc()` | [`Slab::realloc`] |
//! | `MALLOC_DEFINE`, `struct malloc_type` | [`MallocType`] |
//! | `M_ZERO`, `M_NOWAIT` | [`Flags`] |
//! | `zoneindex()`, `ZoneSize`, `ZoneLimit`, `NZONES` | size classes, [`ZONE_SIZE`], [`ZONE_LIMIT`], [`NZONES`] |
//! | `z_RChunks` | the zone's remote-free list |
//! | `slab_cleanup()` | [`Slab::reclaim`] |
//! | `kmem_slab_alloc()` | [`PageSource`] |
//! | `mycpu` + `crit_enter()` | [`CpuContext`] |
//! | one kernel's CPUs | [`Domain`]: a slab serves the CPUs of one machine |
//!
//! What the slab needs from a kernel is two small traits: a [`PageSource`]
//! (zone-sized, zone-aligned blocks and large blocks) and a [`CpuContext`]
//! (the current CPU inside a critical section). lwkt-core's `MyCpu` and
//! `Cur` are CPU contexts; with the `std` feature, [`HostedPages`],
//! [`ThreadSlots`] and [`GlobalSlab`] run a whole host program on the slab.
//!
//! ```
//! use core::alloc::Layout;
//! use lwkt_core::CpuId;
//! use lwkt_slab::{Flags, HostedPages, MallocType, Slab};
//!
//! static M_NET: MallocType = MallocType::new("net");
//! static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(64 << 20), 2);
//!
//! lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
//!     let l = Layout::from_size_align(100, 8).unwrap();
//!     let p = SLAB.alloc(cur, l, &M_NET, Flags::NONE).unwrap();
//!     let addr = p.as_ptr() as usize;
//!     // Freed on another CPU: it goes back to CPU 0's zone, lock-free.
//!     let t = cur.spawn_on(CpuId::new(1), move |me| unsafe {
//!         SLAB.free(me, core::ptr::NonNull::new(addr as *mut u8).unwrap(), l, &M_NET);
//!     }).unwrap();
//!     cur.join(&t);
//!     SLAB.reclaim(cur);
//! });
//! assert_eq!(M_NET.stats().in_use, 0);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(all(test, not(feature = "std")))]
extern crate std;

mod class;
mod cpu;
mod error;
#[cfg(all(feature = "std", not(loom)))]
mod hosted;
#[cfg(not(loom))]
mod mtype;
pub mod objcache;
#[cfg(not(loom))]
mod page;
mod remote;
#[cfg(not(loom))]
mod slab;
mod sync;
mod zone;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod unit_tests;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use class::{NZONES, PAGE_SIZE, ZONE_LIMIT, ZONE_SIZE};
pub use cpu::{CpuContext, Domain, DomainId};
pub use error::SlabError;
#[cfg(all(feature = "std", not(loom)))]
pub use hosted::{GlobalSlab, HostedPages, PageStats, ThreadSlots, HOT_ZONES, SPAN_CACHE_BYTES};
#[cfg(not(loom))]
pub use mtype::{MallocStats, MallocType};
#[cfg(not(loom))]
pub use page::PageSource;
#[cfg(not(loom))]
pub use slab::{Flags, Slab, SlabUsage, CACHED_ZONES};
