//! Captures made by the tests (no binary fixtures): pcap and pcapng bytes
//! written with pcap-file's writers, then cut or stretched by hand, in
//! temporary files.

#![allow(dead_code)] // each test binary uses some of these

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

/// A pcap capture (big-endian, pcap-file's default header) of `frames`
/// with snapshot length `snaplen`; records are written as they are, even
/// when longer than `snaplen`.
pub(crate) fn pcap(frames: &[Vec<u8>], snaplen: u32) -> Vec<u8> {
    let header = PcapHeader {
        snaplen,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_raw_packet(&RawPcapPacket {
            ts_sec: i as u32,
            ts_frac: 0,
            incl_len: f.len() as u32,
            orig_len: f.len() as u32,
            data: Cow::Borrowed(f),
        })
        .unwrap();
    }
    w.into_writer()
}

/// An Ethernet interface description with snapshot length `snaplen`.
pub(crate) fn ethernet(snaplen: u32) -> InterfaceDescriptionBlock<'static> {
    InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen,
        options: vec![],
    }
}

/// An Enhanced Packet Block of `frame` on interface `iface`.
pub(crate) fn epb(iface: u32, frame: &[u8]) -> EnhancedPacketBlock<'_> {
    EnhancedPacketBlock {
        interface_id: iface,
        timestamp: Duration::from_micros(1),
        original_len: frame.len() as u32,
        data: Cow::Borrowed(frame),
        options: vec![],
    }
}

/// A pcapng capture (little-endian) of `frames` in Enhanced Packet Blocks
/// on one Ethernet interface with snapshot length `snaplen`.
pub(crate) fn pcapng(frames: &[Vec<u8>], snaplen: u32) -> Vec<u8> {
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
    w.write_pcapng_block(ethernet(snaplen)).unwrap();
    for f in frames {
        w.write_pcapng_block(epb(0, f)).unwrap();
    }
    w.into_inner()
}

/// `bytes` in a temporary file named after `name` and this process; the
/// file is removed when the guard drops.
pub(crate) fn temp(name: &str, bytes: &[u8]) -> Temp {
    let p = std::env::temp_dir().join(format!("lwkt-demo-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    Temp(p)
}

/// A temporary file, removed on drop.
pub(crate) struct Temp(pub(crate) PathBuf);

impl Temp {
    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
