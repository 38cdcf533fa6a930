//! The DNS request path: any bytes as a query, over UDP and TCP, against served zones with
//! static records, steered clients and the service name. Checks more than "no panic": every
//! response is at least a header with the query's id and QR set; a query hickory parses gets a
//! response hickory parses, that echoes the question verbatim and fits the size the requester
//! advertised (UDP: 512 without EDNS, else its EDNS size clamped to 512..=1232; TCP: 65535).
#![no_main]

use std::sync::{Arc, LazyLock};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use shadowsteer::config::SteeringConfig;
use shadowsteer::dns::catalog;
use shadowsteer::dns::respond::{Context, Transport, respond};
use shadowsteer::dns::zone::{
    ClientIndex, ClientTable, Endpoint, ServedZones, Service, ServiceSet,
};
use shadowsteer::steering::service::{Candidate, WeightedSet};

const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:5300"]
[[dns.zones]]
name = "vpn.example.net"
[[dns.zones.ns]]
name = "ns1"
addresses = ["192.0.2.53", "2001:db8::53"]
[[dns.zones.records]]
name = "@"
type = "TXT"
data = "\"hello\""
[[dns.zones.records]]
name = "www.deep"
type = "A"
data = "192.0.2.80"
[[dns.zones.records]]
name = "alias"
type = "CNAME"
data = "www.deep"
[[dns.zones]]
name = "other.test"
"#;

static SERVED: LazyLock<[ServedZones; 2]> = LazyLock::new(|| {
    let cfg: SteeringConfig =
        shadowsteer::config::parse(std::path::Path::new("fuzz.toml"), CONFIG).expect("config");
    let statics = Arc::new(
        catalog::build(&cfg.dns, 1, &|_| Err(std::io::Error::other("no files"))).expect("zones"),
    );
    let ep = |ip: &str, slot| Endpoint {
        ip: ip.parse().expect("ip"),
        port: 51820,
        slot,
    };
    let mut index = ClientIndex::default();
    for (i, id) in ["alice", "bob", "carol"].iter().enumerate() {
        index.insert(id.as_bytes().into(), i as u32);
    }
    let clients = ClientTable::new(
        Arc::new(index),
        vec![Some(ep("192.0.2.1", 0)), Some(ep("2001:db8::2", 1)), None],
    );
    let cand = |ip: &str, slot| Candidate {
        item: ep(ip, slot),
        capacity: 100,
        risk: 0.0,
    };
    let loaded = ServedZones {
        statics: statics.clone(),
        clients: Arc::new(clients),
        service: Service {
            all: ServiceSet {
                v4: WeightedSet::build(vec![cand("192.0.2.1", 0), cand("192.0.2.9", 2)], 0.7),
                v6: WeightedSet::build(vec![cand("2001:db8::2", 1)], 0.7),
            },
            subnets: vec![("198.51.100.0/24".parse().expect("net"), Some(0))],
            regions: vec![ServiceSet {
                v4: WeightedSet::build(vec![cand("192.0.2.9", 2)], 0.7),
                v6: WeightedSet::default(),
            }],
        },
        loaded: true,
    };
    [loaded, ServedZones::empty(statics)]
});

/// End of an uncompressed question (`None` when its name uses compression).
fn question_end(query: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
        if len == 0 {
            return Some(at + 4);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, query)) = data.split_first() else {
        return;
    };
    let transport = if mode & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let ctx = Context {
        transport,
        entropy: u16::from(mode),
        slip: mode & 2 != 0,
    };
    let served = &SERVED[usize::from((mode >> 2) & 1)];
    let mut out = Vec::new();
    let outcome = respond(query, &ctx, served, &mut out);
    if !outcome.send {
        assert!(
            out.is_empty() || query.len() >= 12,
            "short packets get nothing"
        );
        return;
    }
    assert!(out.len() >= 12, "a response has a header");
    assert_eq!(out[..2], query[..2], "the id is echoed");
    assert!(out[2] & 0x80 != 0, "QR is set");
    assert_eq!(out[2] & 0x78, query[2] & 0x78, "the opcode is echoed");
    let Ok(q) = Message::from_vec(query) else {
        return;
    };
    if q.queries.len() != 1 || q.metadata.message_type != hickory_proto::op::MessageType::Query {
        return;
    }
    let r = match Message::from_vec(&out) {
        Ok(r) => r,
        Err(e) => panic!("response does not parse: {e}; {out:02x?}"),
    };
    if outcome.rcode == 1 {
        // FORMERR: our parser is stricter than hickory's (e.g. more additional records).
        return;
    }
    if outcome.rcode == 4 && r.queries.is_empty() {
        // NOTIMP (an opcode other than QUERY) for a question our parser does not read (a
        // compressed name, which hickory follows): the header alone, as for FORMERR.
        assert!(
            question_end(query).is_none(),
            "NOTIMP left out a question that parses"
        );
        return;
    }
    assert_eq!(r.queries.len(), 1, "one question");
    if let Some(qend) = question_end(query) {
        assert_eq!(
            out.get(12..qend),
            query.get(12..qend),
            "question echoed verbatim"
        );
    }
    let limit = match transport {
        Transport::Tcp => 65535,
        Transport::Udp => q
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload().clamp(512, 1232))),
    };
    assert!(
        out.len() <= limit,
        "{} bytes over a limit of {limit}",
        out.len()
    );
    if transport == Transport::Udp && ctx.slip && r.metadata.authoritative {
        panic!("a slipped answer is not authoritative");
    }
});
