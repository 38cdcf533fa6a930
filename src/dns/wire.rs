//! Parsing a DNS query off the wire, bounded and without allocation.
//!
//! Only what an authoritative server needs is decoded: the header, the single question (its
//! name lowercased into a caller's buffer), and an EDNS OPT record with its Client Subnet option.
//! Everything is bounds-checked; no input makes this panic (a property test feeds it garbage).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::name::MAX_NAME;

/// Size of the DNS header.
pub const HEADER_LEN: usize = 12;

/// Record types and codes used on the hot path.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Alias.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location.
    pub const SRV: u16 = 33;
    /// EDNS pseudo-record.
    pub const OPT: u16 = 41;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Zone transfer.
    pub const AXFR: u16 = 252;
    /// Mailbox-related (obsolete meta type).
    pub const MAILB: u16 = 253;
    /// Mail agent (obsolete meta type).
    pub const MAILA: u16 = 254;
    /// Any type.
    pub const ANY: u16 = 255;
    /// Certification authority authorisation.
    pub const CAA: u16 = 257;
}

/// Response codes (the extended BADVERS spans header and OPT).
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Malformed query.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Opcode not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused (not our zone, zone transfer, other class).
    pub const REFUSED: u16 = 5;
    /// Unsupported EDNS version.
    pub const BADVERS: u16 = 16;
}

/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Class ANY.
pub const CLASS_ANY: u16 = 255;
/// EDNS option code of Client Subnet (RFC 7871).
pub const OPTION_ECS: u16 = 8;
/// Most additional records a query may carry before it is refused as malformed.
const MAX_ADDITIONAL: u16 = 4;

/// Header flag bits.
pub mod flag {
    /// This is a response.
    pub const QR: u16 = 0x8000;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Checking disabled.
    pub const CD: u16 = 0x0010;
}

/// An EDNS Client Subnet option as sent (RFC 7871 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    /// Address family (1 IPv4, 2 IPv6).
    pub family: u16,
    /// Bits of the address that are significant.
    pub source_prefix: u8,
    /// The address, zero-extended.
    pub addr: IpAddr,
    /// The address bytes as sent (only `ceil(source_prefix / 8)` of them).
    pub raw: [u8; 16],
    /// How many bytes of `raw` were sent.
    pub raw_len: u8,
}

/// The EDNS OPT record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Largest UDP response the requester accepts.
    pub udp_size: u16,
    /// EDNS version; only 0 exists.
    pub version: u8,
    /// DNSSEC OK bit (echoed; we sign nothing).
    pub dnssec_ok: bool,
    /// Client Subnet, if sent.
    pub ecs: Option<ClientSubnet>,
}

/// A well-formed query.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Header flags as sent.
    pub flags: u16,
    /// End of the question in the packet (header + question are echoed verbatim, which also
    /// echoes the name's case).
    pub question_end: usize,
    /// Length of the question name in wire form.
    pub qname_len: usize,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The OPT record, if any.
    pub edns: Option<Edns>,
}

impl Query {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }
}

/// Why a packet is not a query to answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: too short to hold a header, or a response (answering responses
    /// invites loops).
    Drop,
    /// Malformed: answer FORMERR, echoing the question when it parsed (`question_end`) and an
    /// OPT record when one parsed (`edns`).
    FormErr {
        /// End of a well-formed question, if any.
        question_end: Option<usize>,
        /// Whether the requester speaks EDNS (so the error carries an OPT record).
        edns: Option<Edns>,
    },
    /// An opcode other than QUERY: answer NOTIMP.
    NotImp {
        /// End of a well-formed question, if any.
        question_end: Option<usize>,
    },
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads the question name at `HEADER_LEN`, writing it lowercased into `lower`; returns its
/// wire length. Compression pointers are not allowed here (nothing precedes the question).
fn read_qname(p: &[u8], lower: &mut [u8; MAX_NAME]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    let mut out = 0usize;
    loop {
        let len = usize::from(*p.get(pos)?);
        if len & 0xC0 != 0 {
            return None;
        }
        if out + len + 1 > MAX_NAME {
            return None;
        }
        lower[out] = len as u8;
        if len == 0 {
            return Some(out + 1);
        }
        let label = p.get(pos + 1..pos + 1 + len)?;
        for (i, b) in label.iter().enumerate() {
            lower[out + 1 + i] = b.to_ascii_lowercase();
        }
        out += len + 1;
        pos += len + 1;
    }
}

/// Skips a (possibly compressed) name in a resource record; returns the offset after it.
fn skip_name(p: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *p.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += usize::from(len) + 1,
            0xC0 => {
                p.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
    None
}

fn parse_ecs(data: &[u8]) -> Option<ClientSubnet> {
    let family = be16(data, 0)?;
    let source_prefix = *data.get(2)?;
    let scope = *data.get(3)?;
    let addr_bytes = data.get(4..)?;
    let max_bits = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    // RFC 7871 section 6: SCOPE must be 0 in queries, ADDRESS exactly ceil(SOURCE / 8) bytes,
    // with the bits beyond SOURCE zero.
    if source_prefix > max_bits || scope != 0 {
        return None;
    }
    let need = usize::from(source_prefix).div_ceil(8);
    if addr_bytes.len() != need {
        return None;
    }
    if let Some(last) = addr_bytes.last() {
        let used = source_prefix % 8;
        if used != 0 && last & (0xFF >> used) != 0 {
            return None;
        }
    }
    let mut raw = [0u8; 16];
    raw[..need].copy_from_slice(addr_bytes);
    let addr = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    };
    Some(ClientSubnet {
        family,
        source_prefix,
        addr,
        raw,
        raw_len: need as u8,
    })
}

/// Parses the options of an OPT record. Unknown options are ignored; a malformed ECS option
/// makes the query malformed (RFC 7871 section 7.1.1).
fn parse_options(mut data: &[u8]) -> Result<Option<ClientSubnet>, ()> {
    let mut ecs = None;
    while !data.is_empty() {
        let code = be16(data, 0).ok_or(())?;
        let len = usize::from(be16(data, 2).ok_or(())?);
        let value = data.get(4..4 + len).ok_or(())?;
        if code == OPTION_ECS {
            if ecs.is_some() {
                return Err(());
            }
            ecs = Some(parse_ecs(value).ok_or(())?);
        }
        data = &data[4 + len..];
    }
    Ok(ecs)
}

/// Parses a query. `lower` receives the question name lowercased (its length is
/// [`Query::qname_len`]).
pub fn parse(p: &[u8], lower: &mut [u8; MAX_NAME]) -> Result<Query, Reject> {
    if p.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = be16(p, 0).ok_or(Reject::Drop)?;
    let flags = be16(p, 2).ok_or(Reject::Drop)?;
    if flags & flag::QR != 0 {
        return Err(Reject::Drop);
    }
    let counts = [be16(p, 4), be16(p, 6), be16(p, 8), be16(p, 10)];
    let [Some(qd), Some(an), Some(ns), Some(ar)] = counts else {
        return Err(Reject::Drop);
    };
    let question = if qd == 1 {
        read_qname(p, lower).and_then(|qname_len| {
            let at = HEADER_LEN + qname_len;
            Some((qname_len, be16(p, at)?, be16(p, at + 2)?, at + 4))
        })
    } else {
        None
    };
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return Err(Reject::NotImp {
            question_end: question.map(|q| q.3),
        });
    }
    let Some((qname_len, qtype, qclass, question_end)) = question else {
        return Err(Reject::FormErr {
            question_end: None,
            edns: None,
        });
    };
    let formerr = |edns| Reject::FormErr {
        question_end: Some(question_end),
        edns,
    };
    if an != 0 || ns != 0 || ar > MAX_ADDITIONAL || qtype == rtype::OPT {
        return Err(formerr(None));
    }
    let mut pos = question_end;
    let mut edns = None;
    for _ in 0..ar {
        let name_start = pos;
        pos = skip_name(p, pos).ok_or(formerr(edns))?;
        let rr_type = be16(p, pos).ok_or(formerr(edns))?;
        let class = be16(p, pos + 2).ok_or(formerr(edns))?;
        let ttl_hi = be16(p, pos + 4).ok_or(formerr(edns))?;
        let ttl_lo = be16(p, pos + 6).ok_or(formerr(edns))?;
        let rdlen = usize::from(be16(p, pos + 8).ok_or(formerr(edns))?);
        let rdata = p.get(pos + 10..pos + 10 + rdlen).ok_or(formerr(edns))?;
        pos += 10 + rdlen;
        if rr_type != rtype::OPT {
            continue;
        }
        // One OPT, owned by the root (RFC 6891 section 6.1.1).
        if edns.is_some() || pos - 10 - rdlen - name_start != 1 || p[name_start] != 0 {
            return Err(formerr(None));
        }
        let ecs = parse_options(rdata).map_err(|()| formerr(None))?;
        edns = Some(Edns {
            udp_size: class,
            version: (ttl_hi & 0xFF) as u8,
            dnssec_ok: ttl_lo & 0x8000 != 0,
            ecs,
        });
    }
    Ok(Query {
        id,
        flags,
        question_end,
        qname_len,
        qtype,
        qclass,
        edns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query(name: &[u8], qtype: u16, extra: &[u8], ar: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ar.to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(extra);
        p
    }

    fn opt(options: &[u8], version: u8) -> Vec<u8> {
        let mut o = vec![0, 0, 41, 0x04, 0xD0, 0, version, 0x80, 0];
        o.extend_from_slice(&(options.len() as u16).to_be_bytes());
        o.extend_from_slice(options);
        o
    }

    #[test]
    fn plain_query_lowercases() {
        let mut lower = [0u8; MAX_NAME];
        let p = query(b"\x05AlIcE\x01c\x00", rtype::A, &[], 0);
        let q = parse(&p, &mut lower).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(&lower[..q.qname_len], b"\x05alice\x01c\x00");
        assert_eq!(q.question_end, p.len());
        assert!(q.edns.is_none());
    }

    #[test]
    fn edns_and_ecs() {
        let mut lower = [0u8; MAX_NAME];
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2];
        let p = query(b"\x00", rtype::A, &opt(&ecs, 0), 1);
        let q = parse(&p, &mut lower).unwrap();
        let e = q.edns.unwrap();
        assert_eq!(e.udp_size, 1232);
        assert!(e.dnssec_ok);
        let s = e.ecs.unwrap();
        assert_eq!(s.source_prefix, 24);
        assert_eq!(s.addr, "192.0.2.0".parse::<IpAddr>().unwrap());
        // Host bits set beyond the prefix: malformed.
        let bad = [0, 8, 0, 7, 0, 1, 23, 0, 192, 0, 3];
        let p = query(b"\x00", rtype::A, &opt(&bad, 0), 1);
        assert!(matches!(parse(&p, &mut lower), Err(Reject::FormErr { .. })));
        // Unknown options are ignored.
        let unknown = [0xFF, 0x01, 0, 2, 9, 9];
        let p = query(b"\x00", rtype::A, &opt(&unknown, 0), 1);
        assert!(parse(&p, &mut lower).unwrap().edns.unwrap().ecs.is_none());
    }

    #[test]
    fn rejects() {
        let mut lower = [0u8; MAX_NAME];
        assert_eq!(parse(&[0; 5], &mut lower).unwrap_err(), Reject::Drop);
        let mut resp = query(b"\x00", 1, &[], 0);
        resp[2] |= 0x80;
        assert_eq!(parse(&resp, &mut lower).unwrap_err(), Reject::Drop);
        let truncated = &query(b"\x05alice\x00", 1, &[], 0)[..15];
        assert!(matches!(
            parse(truncated, &mut lower),
            Err(Reject::FormErr {
                question_end: None,
                ..
            })
        ));
        let mut notify = query(b"\x00", 6, &[], 0);
        notify[2] = 0x20;
        assert!(matches!(
            parse(&notify, &mut lower),
            Err(Reject::NotImp {
                question_end: Some(_)
            })
        ));
        let two_opts = [opt(&[], 0), opt(&[], 0)].concat();
        assert!(matches!(
            parse(&query(b"\x00", 1, &two_opts, 2), &mut lower),
            Err(Reject::FormErr { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut lower = [0u8; MAX_NAME];
            let _ = parse(&bytes, &mut lower);
        }

        #[test]
        fn never_panics_near_valid(name in proptest::collection::vec(any::<u8>(), 0..80), tail in proptest::collection::vec(any::<u8>(), 0..80), ar in 0u16..3) {
            let mut lower = [0u8; MAX_NAME];
            let p = query(&name, 1, &tail, ar);
            let _ = parse(&p, &mut lower);
        }
    }
}
