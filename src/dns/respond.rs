//! The answer function: query bytes in, response bytes out, from a [`ServedZones`]. Pure: no
//! sockets, no clock, no allocation once `out` has grown to its working size.
//!
//! Semantics (what the best authoritative servers do):
//! - AA on every answer from our zones; REFUSED (without AA) for names outside them, for zone
//!   transfers and for classes other than IN/ANY; NOTIMP for opcodes other than QUERY.
//! - NXDOMAIN when the name does not exist, NODATA (NOERROR, empty answer) when it exists
//!   without the type; both carry the zone's SOA in the authority section with the negative
//!   TTL as its TTL (RFC 2308).
//! - Case-insensitive matching; the question is echoed verbatim and answers point at it, so
//!   the query's case comes back.
//! - EDNS0 (RFC 6891): our UDP size advertised, DO echoed, unknown options ignored, BADVERS
//!   for versions other than 0, FORMERR for two OPT records or a malformed one.
//! - UDP answers larger than the requester's limit (512 without EDNS) drop the additional
//!   section first, then go out empty with TC set, so the requester retries over TCP.
//! - ANY gets one RRset (RFC 8482).
//! - EDNS Client Subnet (RFC 7871): echoed with the scope prefix the answer depends on: 0
//!   for everything but the service name, whose answer depends on the configured client
//!   subnets.
//! - Malformed queries get FORMERR; packets too short for a header, and responses, get
//!   nothing.
//! - Before the first steering data is loaded (from the database or the last snapshot saved on
//!   disk), per-client names and the service name get SERVFAIL, never NXDOMAIN: a resolver
//!   would cache a denial of a client that exists for the negative TTL.

use std::net::IpAddr;

use super::name::{MAX_NAME, label_starts};
use super::rrl::{ResponseClass, ResponseKey, name_hash};
use super::wire::{self, ClientSubnet, Edns, Query, Reject, flag, rcode, rtype};
use super::zone::{Endpoint, RrSet, ServedZones, Service, ServiceSet, Zone};

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: responses are limited in size and may be truncated.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

/// Per-query facts from the shell.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Transport.
    pub transport: Transport,
    /// Bits that vary per query (the source port): mixed with the query id to pick among the
    /// service name's appliances.
    pub entropy: u16,
    /// Rate limiting chose to "slip" this answer: send it empty with TC set.
    pub slip: bool,
}

/// What happened, for the shell and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether `out` holds a response to send.
    pub send: bool,
    /// The question type (0 when there was no question).
    pub qtype: u16,
    /// The response code (extended, so BADVERS is 16).
    pub rcode: u16,
    /// Metrics slot of the appliance answered, for steered answers.
    pub appliance: Option<u16>,
    /// Whether TC was set.
    pub truncated: bool,
    /// What response rate limiting keys this response by.
    pub rrl: ResponseKey,
}

/// The rate-limiting key of error responses.
const ERROR_KEY: ResponseKey = ResponseKey {
    class: ResponseClass::Error,
    qtype: 0,
    name: 0,
};

impl Outcome {
    const DROP: Self = Self {
        send: false,
        qtype: 0,
        rcode: 0,
        appliance: None,
        truncated: false,
        rrl: ERROR_KEY,
    };
}

/// Offset of the question name in every message.
const QNAME_OFFSET: u8 = 12;
/// Offset of `<client>.c.<zone>` inside `_wireguard._udp.<client>.c.<zone>` as echoed.
const SRV_TARGET_OFFSET: u8 = 12 + 11 + 5;

/// What a name lookup found.
enum Found<'s> {
    /// A static RRset, and additional records.
    Static(&'s RrSet, Option<&'s RrSet>),
    /// A steered address (A or AAAA by its family).
    Address(Endpoint),
    /// A client's standby appliance (`standby.<client>.c.<zone>`).
    Standby(Endpoint),
    /// The SRV of a client, with its address as additional record.
    Srv(Endpoint),
    /// The name exists without this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The name may exist, but nothing has been loaded yet to tell.
    NotLoaded,
}

/// Answers one query into `out` (cleared first).
pub fn respond(packet: &[u8], ctx: &Context, served: &ServedZones, out: &mut Vec<u8>) -> Outcome {
    out.clear();
    let mut lower = [0u8; MAX_NAME];
    let q = match wire::parse(packet, &mut lower) {
        Ok(q) => q,
        Err(reject) => return reject_reply(packet, reject, served, out),
    };
    let qname = &lower[..q.qname_len];
    out.extend_from_slice(&packet[..q.question_end]);
    let mut msg = Message::new(&q);
    let Some((zone, prefix_len)) = admit(&mut msg, qname, ctx, served) else {
        msg.aa = false;
        return msg.finish(out, served, ctx);
    };
    let ecs = q.edns.and_then(|e| e.ecs);
    let entropy = mix(q.id, ctx.entropy);
    let found = resolve(
        zone,
        qname,
        prefix_len,
        q.qtype,
        served,
        ecs.as_ref(),
        entropy,
        &mut msg.scope,
    );
    msg.rrl = rrl_key(&found, q.qtype, qname, zone);
    let additional_at = push_answer(&mut msg, found, zone, out);
    if ctx.transport == Transport::Udp {
        fit_udp(&mut msg, additional_at, served.statics.udp_payload, out);
    }
    msg.finish(out, served, ctx)
}

/// Packets `wire::parse` turned away: nothing, or FORMERR/NOTIMP without a lookup.
fn reject_reply(packet: &[u8], reject: Reject, served: &ServedZones, out: &mut Vec<u8>) -> Outcome {
    match reject {
        Reject::Drop => Outcome::DROP,
        Reject::FormErr { question_end, edns } => {
            error_reply(packet, question_end, edns, rcode::FORMERR, served, out)
        }
        Reject::NotImp { question_end } => {
            error_reply(packet, question_end, None, rcode::NOTIMP, served, out)
        }
    }
}

/// The zone and prefix length of a query to look up; `None` for one answered without a lookup,
/// whose rcode (or TC, when slipped) `msg` then holds. The order decides which fault a query
/// with several is told about.
fn admit<'s>(
    msg: &mut Message,
    qname: &[u8],
    ctx: &Context,
    served: &'s ServedZones,
) -> Option<(&'s Zone, usize)> {
    let q = msg.q;
    if q.edns.is_some_and(|e| e.version != 0) {
        msg.rcode = rcode::BADVERS;
        return None;
    }
    if !matches!(q.qclass, wire::CLASS_IN | wire::CLASS_ANY)
        || matches!(q.qtype, rtype::AXFR | rtype::IXFR)
    {
        msg.rcode = rcode::REFUSED;
        return None;
    }
    if matches!(q.qtype, rtype::MAILA | rtype::MAILB) {
        msg.rcode = rcode::NOTIMP;
        return None;
    }
    let Some(found) = served.statics.find_zone(qname) else {
        msg.rcode = rcode::REFUSED;
        return None;
    };
    if ctx.slip {
        msg.tc = true;
        return None;
    }
    Some(found)
}

/// The response rate limiting bucket: NXDOMAIN by zone, so random names under it share one.
fn rrl_key(found: &Found, qtype: u16, qname: &[u8], zone: &Zone) -> ResponseKey {
    let by_name = |class| ResponseKey {
        class,
        qtype,
        name: name_hash(qname),
    };
    match found {
        Found::Static(..) | Found::Address(_) | Found::Standby(_) | Found::Srv(_) => {
            by_name(ResponseClass::Answer)
        }
        Found::NoData => by_name(ResponseClass::NoData),
        Found::NxDomain => ResponseKey {
            class: ResponseClass::NxDomain,
            qtype: 0,
            name: name_hash(&zone.apex),
        },
        Found::NotLoaded => ERROR_KEY,
    }
}

/// Writes what the lookup found into the answer or authority section; returns where the
/// additional section starts, the first thing to drop when UDP is short of room.
fn push_answer(msg: &mut Message, found: Found, zone: &Zone, out: &mut Vec<u8>) -> Option<usize> {
    let mut additional_at = None;
    match found {
        Found::Static(set, extra) => {
            out.extend_from_slice(&set.wire);
            msg.an = set.count;
            if let Some(extra) = extra {
                additional_at = Some(out.len());
                out.extend_from_slice(&extra.wire);
                msg.ar = extra.count;
            }
        }
        Found::Address(ep) => {
            push_address(out, QNAME_OFFSET, ep.ip, zone.steered_ttl);
            msg.an = 1;
            msg.appliance = Some(ep.slot);
        }
        // Not counted as an answer for the appliance: no traffic is steered by it.
        Found::Standby(ep) => {
            push_address(out, QNAME_OFFSET, ep.ip, zone.steered_ttl);
            msg.an = 1;
        }
        Found::Srv(ep) => {
            push_srv(out, ep.port, zone.steered_ttl);
            msg.an = 1;
            additional_at = Some(out.len());
            push_address(out, SRV_TARGET_OFFSET, ep.ip, zone.steered_ttl);
            msg.ar = 1;
            msg.appliance = Some(ep.slot);
        }
        Found::NoData => {
            out.extend_from_slice(&zone.soa_negative.wire);
            msg.ns = 1;
        }
        Found::NxDomain => {
            out.extend_from_slice(&zone.soa_negative.wire);
            msg.ns = 1;
            msg.rcode = rcode::NXDOMAIN;
        }
        Found::NotLoaded => {
            msg.aa = false;
            msg.rcode = rcode::SERVFAIL;
        }
    }
    additional_at
}

/// Keeps a UDP response within the requester's limit: without the additional section if
/// that is enough, else empty with TC so it retries over TCP.
fn fit_udp(msg: &mut Message, additional_at: Option<usize>, ours: u16, out: &mut Vec<u8>) {
    let limit = udp_limit(msg.q.edns, ours);
    let opt = opt_len(msg.q.edns);
    if out.len() + opt > limit
        && let Some(at) = additional_at
    {
        out.truncate(at);
        msg.ar = 0;
    }
    if out.len() + opt > limit {
        out.truncate(msg.q.question_end);
        msg.an = 0;
        msg.ns = 0;
        msg.ar = 0;
        msg.tc = true;
        msg.appliance = None;
    }
}

/// Largest UDP response for this requester.
fn udp_limit(edns: Option<Edns>, ours: u16) -> usize {
    match edns {
        Some(e) => usize::from(e.udp_size.clamp(512, ours.max(512))),
        None => 512,
    }
}

/// Size of the OPT record we add.
fn opt_len(edns: Option<Edns>) -> usize {
    match edns {
        None => 0,
        Some(e) => 11 + e.ecs.map_or(0, |s| 8 + usize::from(s.raw_len)),
    }
}

/// Mixes the query id and the shell's entropy into 32 well-spread bits.
fn mix(id: u16, entropy: u16) -> u32 {
    let x = ((u32::from(id) << 16) | u32::from(entropy)).wrapping_mul(0x9E37_79B1);
    x ^ (x >> 15)
}

#[allow(clippy::too_many_arguments)]
fn resolve<'s>(
    zone: &'s Zone,
    qname: &[u8],
    prefix_len: usize,
    qtype: u16,
    served: &'s ServedZones,
    ecs: Option<&ClientSubnet>,
    entropy: u32,
    scope: &mut u8,
) -> Found<'s> {
    if let Some(data) = zone.names.get(qname) {
        if qtype == rtype::ANY {
            return data
                .rrsets
                .first()
                .map_or(Found::NoData, |s| Found::Static(s, None));
        }
        if let Some(set) = data.get(qtype) {
            let extra = if qtype == rtype::NS && prefix_len == 0 {
                zone.ns_glue.as_ref()
            } else {
                None
            };
            return Found::Static(set, extra);
        }
        if let Some(cname) = data.get(rtype::CNAME) {
            return Found::Static(cname, None);
        }
        return Found::NoData;
    }
    let prefix = &qname[..prefix_len];
    if !served.loaded && (prefix == &*zone.service || is_client_name(zone, prefix)) {
        return Found::NotLoaded;
    }
    if prefix == &*zone.service {
        let (set, s) = service_set(&served.service, ecs);
        *scope = s;
        let family = |set: &'s ServiceSet, v6: bool| if v6 { &set.v6 } else { &set.v4 };
        let v6 = match qtype {
            rtype::A => false,
            rtype::AAAA => true,
            rtype::ANY => set.v4.is_empty() && served.service.all.v4.is_empty(),
            _ => return Found::NoData,
        };
        let mut candidates = family(set, v6);
        if candidates.is_empty() {
            candidates = family(&served.service.all, v6);
        }
        return match candidates.pick(entropy) {
            Some(ep) => Found::Address(*ep),
            None => Found::NoData,
        };
    }
    // Per-client names: <id>.<label>, _udp.<id>.<label>, _wireguard._udp.<id>.<label>.
    let mut starts = [0usize; 5];
    let mut n = 0;
    for s in label_starts(prefix) {
        if n == starts.len() {
            return Found::NxDomain;
        }
        starts[n] = s;
        n += 1;
    }
    if n < 2 || prefix[starts[n - 1]..] != *zone.client_label {
        return Found::NxDomain;
    }
    let id_at = starts[n - 2];
    let id = &prefix[id_at + 1..starts[n - 1]];
    let Some(assigned) = served.clients.get(id) else {
        return Found::NxDomain;
    };
    let leading = &prefix[..id_at];
    if leading == b"\x07standby" {
        return match served.clients.standby(id).flatten() {
            Some(ep) if address_type(qtype, ep.ip) => Found::Standby(ep),
            _ => Found::NoData,
        };
    }
    match (leading, assigned) {
        (b"", None) => Found::NoData,
        (b"", Some(ep)) if address_type(qtype, ep.ip) => Found::Address(*ep),
        (b"", Some(_)) => Found::NoData,
        (b"\x04_udp", _) => Found::NoData,
        (b"\x0a_wireguard\x04_udp", Some(ep)) if matches!(qtype, rtype::SRV | rtype::ANY) => {
            Found::Srv(*ep)
        }
        (b"\x0a_wireguard\x04_udp", _) => Found::NoData,
        _ => Found::NxDomain,
    }
}

/// Whether an address answers a query of `qtype`.
fn address_type(qtype: u16, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (rtype::A, IpAddr::V4(_)) | (rtype::AAAA, IpAddr::V6(_)) | (rtype::ANY, _)
    )
}

/// Whether `prefix` (the part of a name before the apex) lies under the client label, where
/// client names live.
fn is_client_name(zone: &Zone, prefix: &[u8]) -> bool {
    prefix.len() > zone.client_label.len() && prefix.ends_with(&zone.client_label) && {
        // The label must start at a label boundary.
        let at = prefix.len() - zone.client_label.len();
        label_starts(prefix).any(|s| s == at)
    }
}

/// Leading bits shared by two addresses of one family (`None` for different families).
fn common_bits(a: IpAddr, b: IpAddr) -> Option<u8> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some((u32::from(a) ^ u32::from(b)).leading_zeros() as u8),
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            Some((u128::from(a) ^ u128::from(b)).leading_zeros() as u8)
        }
        _ => None,
    }
}

/// The service set for a client subnet and the ECS scope the choice depends on: the longest
/// configured subnet containing the address wins; the scope covers every configured subnet's
/// verdict (matched: its length; not matched: one bit past the first difference).
fn service_set<'s>(svc: &'s Service, ecs: Option<&ClientSubnet>) -> (&'s ServiceSet, u8) {
    let Some(ecs) = ecs else {
        return (&svc.all, 0);
    };
    let mut best: Option<(u8, Option<usize>)> = None;
    let mut scope = 0u8;
    for (net, region) in &svc.subnets {
        let Some(common) = common_bits(net.addr(), ecs.addr) else {
            continue;
        };
        let p = net.prefix();
        if common >= p {
            scope = scope.max(p);
            if best.is_none_or(|(bp, _)| p > bp) {
                best = Some((p, *region));
            }
        } else {
            scope = scope.max(common + 1);
        }
    }
    let set = best
        .and_then(|(_, r)| r)
        .and_then(|i| svc.regions.get(i))
        .unwrap_or(&svc.all);
    (set, scope)
}

fn push_address(out: &mut Vec<u8>, owner_offset: u8, ip: IpAddr, ttl: u32) {
    out.extend_from_slice(&[0xC0, owner_offset]);
    match ip {
        IpAddr::V4(a) => {
            out.extend_from_slice(&rtype::A.to_be_bytes());
            out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.extend_from_slice(&rtype::AAAA.to_be_bytes());
            out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&16u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
        }
    }
}

fn push_srv(out: &mut Vec<u8>, port: u16, ttl: u32) {
    out.extend_from_slice(&[0xC0, QNAME_OFFSET]);
    out.extend_from_slice(&rtype::SRV.to_be_bytes());
    out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&8u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0xC0, SRV_TARGET_OFFSET]);
}

fn push_opt(out: &mut Vec<u8>, edns: Edns, ext_rcode: u8, scope: u8, udp_payload: u16) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&udp_payload.to_be_bytes());
    out.push(ext_rcode);
    out.push(0);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    match edns.ecs {
        None => out.extend_from_slice(&0u16.to_be_bytes()),
        Some(s) => {
            let len = 4 + u16::from(s.raw_len);
            out.extend_from_slice(&(len + 4).to_be_bytes());
            out.extend_from_slice(&wire::OPTION_ECS.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.family.to_be_bytes());
            out.push(s.source_prefix);
            let max = if s.family == 1 { 32 } else { 128 };
            out.push(scope.min(max));
            out.extend_from_slice(&s.raw[..usize::from(s.raw_len)]);
        }
    }
}

/// The response being built: counts and flags, written into the header by `finish`.
struct Message<'q> {
    q: &'q Query,
    an: u16,
    ns: u16,
    ar: u16,
    aa: bool,
    tc: bool,
    rcode: u16,
    scope: u8,
    appliance: Option<u16>,
    rrl: ResponseKey,
}

impl<'q> Message<'q> {
    /// Authoritative NOERROR with empty sections until a step says otherwise.
    fn new(q: &'q Query) -> Self {
        Self {
            q,
            an: 0,
            ns: 0,
            ar: 0,
            aa: true,
            tc: false,
            rcode: rcode::NOERROR,
            scope: 0,
            appliance: None,
            rrl: ERROR_KEY,
        }
    }

    fn finish(self, out: &mut Vec<u8>, served: &ServedZones, _ctx: &Context) -> Outcome {
        let mut ar = self.ar;
        if let Some(e) = self.q.edns {
            push_opt(
                out,
                e,
                (self.rcode >> 4) as u8,
                self.scope,
                served.statics.udp_payload,
            );
            ar += 1;
        }
        write_header(
            out,
            self.q.flags,
            self.aa,
            self.tc,
            self.rcode,
            [1, self.an, self.ns, ar],
        );
        Outcome {
            send: true,
            qtype: self.q.qtype,
            rcode: self.rcode,
            appliance: self.appliance,
            truncated: self.tc,
            rrl: self.rrl,
        }
    }
}

fn write_header(
    out: &mut [u8],
    query_flags: u16,
    aa: bool,
    tc: bool,
    rcode: u16,
    counts: [u16; 4],
) {
    let mut flags = flag::QR | (query_flags & (0x7800 | flag::RD | flag::CD)) | (rcode & 0xF);
    if aa {
        flags |= flag::AA;
    }
    if tc {
        flags |= flag::TC;
    }
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    for (i, c) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
}

/// FORMERR or NOTIMP: the header, the question if it parsed, an OPT if one parsed.
fn error_reply(
    packet: &[u8],
    question_end: Option<usize>,
    edns: Option<Edns>,
    code: u16,
    served: &ServedZones,
    out: &mut Vec<u8>,
) -> Outcome {
    let end = question_end.unwrap_or(wire::HEADER_LEN);
    out.extend_from_slice(&packet[..end]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    let mut ar = 0;
    if let Some(e) = edns {
        push_opt(
            out,
            Edns { ecs: None, ..e },
            0,
            0,
            served.statics.udp_payload,
        );
        ar = 1;
    }
    let qd = u16::from(question_end.is_some());
    write_header(out, flags, false, false, code, [qd, 0, 0, ar]);
    let qtype = question_end
        .and_then(|e| packet.get(e - 4..e - 2))
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    Outcome {
        send: true,
        qtype,
        rcode: code,
        appliance: None,
        truncated: false,
        rrl: ERROR_KEY,
    }
}
