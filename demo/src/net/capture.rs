//! Reading captures for `--pcap`: classic pcap and pcapng (Wireshark's and
//! current tcpdump's default), told apart by the magic number.
//!
//! Two kinds of damage are common in real captures and are not fatal:
//!
//! - the last record is cut short (every capture stopped with Ctrl-C, or
//!   copied while still being written, ends like that): the records before
//!   it are replayed and [`Capture::cut`] says which record was cut and how
//!   many bytes it lacks;
//! - a record claims more captured bytes than the snapshot length (the pcap
//!   header's, or in pcapng its interface's when not 0): no capture tool
//!   writes that, so the record is malformed; it is not replayed, and
//!   [`Capture::over_snaplen`] lists it, for the report to count with the
//!   other malformed frames.
//!
//! Anything else that is wrong (not a capture, a link type other than
//! Ethernet, a damaged block in the middle of the file) is an error naming
//! the file and the record.

use core::fmt;

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, Endianness, PcapError};

/// The two capture formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap (any byte order, micro- or nanosecond timestamps).
    Pcap,
    /// pcapng: sections, interfaces and packet blocks.
    PcapNg,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Pcap => "pcap",
            Format::PcapNg => "pcapng",
        })
    }
}

/// A capture, read: the frames to replay and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The format the magic number named.
    pub format: Format,
    /// Every frame that can be replayed, in capture order.
    pub frames: Vec<Vec<u8>>,
    /// Records longer than their snapshot length: malformed, not replayed.
    pub over_snaplen: Vec<OverSnaplen>,
    /// The last record, if it is cut short.
    pub cut: Option<Cut>,
}

/// A record whose captured length exceeds its snapshot length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverSnaplen {
    /// Its number among the capture's packet records, from 1 (Wireshark's
    /// frame number).
    pub record: usize,
    /// The bytes it holds.
    pub captured: usize,
    /// The snapshot length it should be within.
    pub snaplen: u32,
}

impl fmt::Display for OverSnaplen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {}: captured length {} bytes exceeds the snapshot length {}: malformed, not replayed",
            self.record, self.captured, self.snaplen
        )
    }
}

/// The last record of a capture that ends in the middle of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Its number (the records before it are complete).
    pub record: usize,
    /// The bytes it lacks; a lower bound if `header_cut`.
    pub missing: usize,
    /// Whether its header is cut before its length field, so that its
    /// length is unknown.
    pub header_cut: bool,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} is cut short ({}{} bytes missing; was the capture stopped while writing?): replaying the {} records before it",
            self.record,
            if self.header_cut { "at least " } else { "" },
            self.missing,
            self.record - 1
        )
    }
}

/// Read a pcap or pcapng capture of Ethernet frames.
///
/// # Errors
/// A message naming the file and what is wrong with it: unreadable, not a
/// capture, a link type other than Ethernet, a damaged record before the
/// last, or no frame to replay.
///
/// # Example
/// ```
/// let e = lwkt_demo::net::read_capture("/nonexistent.pcapng").unwrap_err();
/// assert!(e.starts_with("/nonexistent.pcapng: "));
/// ```
pub fn read_capture(path: &str) -> Result<Capture, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let c = parse(&bytes).map_err(|e| format!("{path}: {e}"))?;
    if c.frames.is_empty() {
        return Err(format!("{path}: no packets to replay"));
    }
    Ok(c)
}

/// The magic number of a pcapng file: its first block, a Section Header
/// Block, has this type in either byte order.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// Classic pcap's magic numbers as the first four bytes (micro- and
/// nanosecond timestamps, both byte orders).
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];
/// A pcap record header: seconds, fraction, captured length, original length.
const PCAP_RECORD_HEADER: usize = 16;
/// A pcapng block's type and total length, before its body.
const PCAPNG_BLOCK_HEADER: usize = 8;

fn parse(bytes: &[u8]) -> Result<Capture, String> {
    let magic: [u8; 4] = bytes
        .get(..4)
        .and_then(|m| m.try_into().ok())
        .ok_or_else(|| format!("not a capture: {} bytes long", bytes.len()))?;
    if magic == PCAPNG_MAGIC {
        parse_pcapng(bytes)
    } else if PCAP_MAGICS.contains(&magic) {
        parse_pcap(bytes)
    } else {
        Err(format!(
            "not a pcap or pcapng capture (magic number {:02x}{:02x}{:02x}{:02x})",
            magic[0], magic[1], magic[2], magic[3]
        ))
    }
}

/// The u32 at `at` of `b`, in `order`.
fn u32_at(b: &[u8], at: usize, order: Endianness) -> u32 {
    let v: [u8; 4] = b[at..at + 4].try_into().expect("four bytes");
    match order {
        Endianness::Big => u32::from_be_bytes(v),
        Endianness::Little => u32::from_le_bytes(v),
    }
}

/// The record at the start of `rest` when the parser needs more bytes: cut
/// short by the end of the file, or `None` if it is whole (then what the
/// parser lacked was inside it: damage, not a cut). Its header is `header`
/// bytes, with its length at `len_at`: the data's for pcap, the whole
/// block's for pcapng.
fn cut(record: usize, rest: &[u8], header: usize, len_at: usize, order: Endianness) -> Option<Cut> {
    if rest.len() < len_at + 4 {
        return Some(Cut {
            record,
            missing: header - rest.len(),
            header_cut: true,
        });
    }
    let len = u32_at(rest, len_at, order) as usize;
    let total = if header == PCAP_RECORD_HEADER {
        header.saturating_add(len)
    } else {
        len
    };
    (total > rest.len()).then(|| Cut {
        record,
        missing: total - rest.len(),
        header_cut: false,
    })
}

fn ethernet_only(link: DataLink) -> Result<(), String> {
    if link == DataLink::ETHERNET {
        Ok(())
    } else {
        Err(format!(
            "link type {link:?}, only Ethernet captures can be replayed"
        ))
    }
}

/// Record number `record`, of `captured` bytes, if that exceeds `snaplen`
/// (0: no limit).
fn over(record: usize, captured: usize, snaplen: u32) -> Option<OverSnaplen> {
    (snaplen != 0 && captured > snaplen as usize).then_some(OverSnaplen {
        record,
        captured,
        snaplen,
    })
}

fn parse_pcap(bytes: &[u8]) -> Result<Capture, String> {
    let (mut rest, parser) = PcapParser::new(bytes).map_err(|e| match e {
        PcapError::IncompleteBuffer => "pcap header cut short".to_string(),
        e => e.to_string(),
    })?;
    let header = parser.header();
    ethernet_only(header.datalink)?;
    let mut c = Capture {
        format: Format::Pcap,
        frames: Vec::new(),
        over_snaplen: Vec::new(),
        cut: None,
    };
    let mut record = 0;
    while !rest.is_empty() {
        record += 1;
        match parser.next_raw_packet(rest) {
            Ok((r, p)) => {
                rest = r;
                match over(record, p.data.len(), header.snaplen) {
                    Some(o) => c.over_snaplen.push(o),
                    None => c.frames.push(p.data.into_owned()),
                }
            }
            Err(PcapError::IncompleteBuffer) => {
                c.cut = cut(record, rest, PCAP_RECORD_HEADER, 8, header.endianness);
                if c.cut.is_some() {
                    break;
                }
                return Err(format!("record {record}: damaged"));
            }
            Err(e) => return Err(format!("record {record}: {e}")),
        }
    }
    Ok(c)
}

fn parse_pcapng(bytes: &[u8]) -> Result<Capture, String> {
    let (mut rest, mut parser) = PcapNgParser::new(bytes).map_err(|e| match e {
        PcapError::IncompleteBuffer => "pcapng section header cut short".to_string(),
        e => format!("section header: {e}"),
    })?;
    let mut c = Capture {
        format: Format::PcapNg,
        frames: Vec::new(),
        over_snaplen: Vec::new(),
        cut: None,
    };
    // Packet records so far (blocks of other types are not numbered).
    let mut record = 0;
    while !rest.is_empty() {
        let order = parser.section().endianness;
        let block = match parser.next_block(rest) {
            Ok((r, b)) => {
                rest = r;
                b
            }
            Err(PcapError::IncompleteBuffer) => {
                c.cut = cut(record + 1, rest, PCAPNG_BLOCK_HEADER, 4, order);
                if c.cut.is_some() {
                    break;
                }
                return Err(format!("the block after record {record}: damaged"));
            }
            Err(e) => return Err(format!("the block after record {record}: {e}")),
        };
        // (interface, captured bytes) of a packet block; a Simple Packet
        // Block holds min(original length, interface 0's snaplen) bytes
        // and its padding, so it can never exceed the snapshot length.
        let (iface, data): (u32, &[u8]) = match &block {
            Block::EnhancedPacket(p) => (p.interface_id, &p.data),
            Block::Packet(p) => (u32::from(p.interface_id), &p.data),
            Block::SimplePacket(p) => {
                let snap = parser.interfaces().first().map_or(0, |i| i.snaplen);
                let mut len = (p.original_len as usize).min(p.data.len());
                if snap != 0 {
                    len = len.min(snap as usize);
                }
                (0, &p.data[..len])
            }
            _ => continue, // sections, interfaces, statistics, names...
        };
        record += 1;
        let i = parser
            .interfaces()
            .get(iface as usize)
            .ok_or_else(|| format!("record {record}: no interface {iface} in its section"))?;
        ethernet_only(i.linktype)
            .map_err(|e| format!("record {record}: interface {iface}: {e}"))?;
        match over(record, data.len(), i.snaplen) {
            Some(o) => c.over_snaplen.push(o),
            None => c.frames.push(data.to_vec()),
        }
    }
    Ok(c)
}
