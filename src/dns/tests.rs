//! Answers of the pure core, checked with hickory's message parser on fixed served zones.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::catalog;
use super::respond::{Context, Outcome, Transport, respond};
use super::wire::rtype;
use super::zone::{ClientTable, Endpoint, ServedZones, Service, ServiceSet};
use crate::config::SteeringConfig;
use crate::steering::service::{Candidate, WeightedSet};

const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:5300"]
[[dns.zones]]
name = "vpn.example.net"
steered_ttl = "10s"
[dns.zones.soa]
negative_ttl = "30s"
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
name = "big"
type = "TXT"
data = "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\" \"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\""
[[dns.zones.records]]
name = "alias"
type = "CNAME"
data = "www.deep"
"#;

fn served_zones() -> ServedZones {
    let cfg: SteeringConfig = crate::config::parse(Path::new("t.toml"), CONFIG).unwrap();
    let statics = catalog::build(&cfg.dns, 7, &|_| unreachable!()).unwrap();
    let ep = |ip: &str, port, slot| Endpoint {
        ip: ip.parse().unwrap(),
        port,
        slot,
    };
    let clients = ClientTable::from_pairs([
        (
            b"alice".to_vec().into_boxed_slice(),
            Some(ep("192.0.2.1", 51820, 0)),
        ),
        (
            b"bob".to_vec().into_boxed_slice(),
            Some(ep("2001:db8::2", 51821, 1)),
        ),
        (b"carol".to_vec().into_boxed_slice(), None),
    ])
    .with_standby(vec![Some(ep("192.0.2.9", 51820, 2)), None, None]);
    let cand = |ip: &str, slot| Candidate {
        item: ep(ip, 51820, slot),
        capacity: 100,
        risk: 0.0,
    };
    let all = ServiceSet {
        v4: WeightedSet::build(vec![cand("192.0.2.1", 0), cand("192.0.2.9", 2)], 0.7),
        v6: WeightedSet::build(vec![cand("2001:db8::2", 1)], 0.7),
    };
    let eu = ServiceSet {
        v4: WeightedSet::build(vec![cand("192.0.2.9", 2)], 0.7),
        v6: WeightedSet::default(),
    };
    ServedZones {
        statics: Arc::new(statics),
        clients: Arc::new(clients),
        service: Service {
            all,
            subnets: vec![("198.51.100.0/24".parse().unwrap(), Some(0))],
            regions: vec![eu],
        },
        loaded: true,
    }
}

struct Q {
    bytes: Vec<u8>,
}

fn query(name: &str, qtype: u16) -> Q {
    let mut p = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    Q { bytes: p }
}

impl Q {
    fn edns(mut self, size: u16, version: u8, ecs: Option<(&str, u8)>) -> Self {
        self.bytes[11] = 1;
        let mut opts = Vec::new();
        if let Some((addr, prefix)) = ecs {
            let ip: IpAddr = addr.parse().unwrap();
            let (family, raw) = match ip {
                IpAddr::V4(a) => (1u16, a.octets().to_vec()),
                IpAddr::V6(a) => (2u16, a.octets().to_vec()),
            };
            let n = usize::from(prefix).div_ceil(8);
            opts.extend_from_slice(&8u16.to_be_bytes());
            opts.extend_from_slice(&((4 + n) as u16).to_be_bytes());
            opts.extend_from_slice(&family.to_be_bytes());
            opts.push(prefix);
            opts.push(0);
            opts.extend_from_slice(&raw[..n]);
        }
        self.bytes.extend_from_slice(&[0, 0, 41]);
        self.bytes.extend_from_slice(&size.to_be_bytes());
        self.bytes.extend_from_slice(&[0, version, 0, 0]);
        self.bytes
            .extend_from_slice(&(opts.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(&opts);
        self
    }
}

fn ask_with(q: &Q, transport: Transport, served: &ServedZones) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let ctx = Context {
        transport,
        entropy: 4242,
        slip: false,
    };
    let o = respond(&q.bytes, &ctx, served, &mut out);
    (o, out)
}

fn ask(q: &Q) -> Message {
    let (o, out) = ask_with(q, Transport::Udp, &served_zones());
    assert!(o.send);
    Message::from_vec(&out).unwrap()
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn client_names_and_case_echo() {
    let m = ask(&query("AlIcE.C.Vpn.Example.Net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.id, 0xABCD);
    assert_eq!(addrs(&m), ["192.0.2.1"]);
    assert_eq!(m.answers[0].name.to_string(), "AlIcE.C.Vpn.Example.Net.");
    assert_eq!(m.queries[0].name().to_string(), "AlIcE.C.Vpn.Example.Net.");
    assert_eq!(m.answers[0].ttl, 10);
    let m = ask(&query("bob.c.vpn.example.net", rtype::AAAA));
    assert_eq!(addrs(&m), ["2001:db8::2"]);
    // NODATA: alice has no AAAA, carol has no appliance.
    for (name, t) in [
        ("alice.c.vpn.example.net", rtype::AAAA),
        ("carol.c.vpn.example.net", rtype::A),
    ] {
        let m = ask(&query(name, t));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, 30);
    }
    let m = ask(&query("nobody.c.vpn.example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn standby_names_the_other_appliance_of_the_pair() {
    let m = ask(&query("Standby.Alice.c.vpn.example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addrs(&m), ["192.0.2.9"]);
    assert_eq!(
        m.answers[0].name.to_string(),
        "Standby.Alice.c.vpn.example.net."
    );
    assert_eq!(m.answers[0].ttl, 10);
    // NODATA: no AAAA for alice's standby; bob and carol have none.
    for (name, t) in [
        ("standby.alice.c.vpn.example.net", rtype::AAAA),
        ("standby.bob.c.vpn.example.net", rtype::AAAA),
        ("standby.carol.c.vpn.example.net", rtype::A),
    ] {
        let m = ask(&query(name, t));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.answers.is_empty(), "{name}");
    }
    // Other labels in front of a client name, or an unknown client: NXDOMAIN.
    for name in [
        "standby.nobody.c.vpn.example.net",
        "shadow.alice.c.vpn.example.net",
    ] {
        let m = ask(&query(name, rtype::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
}

#[test]
fn srv_points_at_the_client_name() {
    let m = ask(&query(
        "_wireguard._udp.Alice.c.vpn.example.net",
        rtype::SRV,
    ));
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(srv.port, 51820);
    assert_eq!(srv.target.to_string(), "Alice.c.vpn.example.net.");
    assert_eq!(
        m.additionals[0].name.to_string(),
        "Alice.c.vpn.example.net."
    );
    let m = ask(&query("_udp.alice.c.vpn.example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn static_data_apex_and_negative_answers() {
    let m = ask(&query("vpn.example.net", rtype::SOA));
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(soa.serial, 7);
    assert_eq!(soa.mname.to_string(), "ns1.vpn.example.net.");
    let m = ask(&query("vpn.example.net", rtype::NS));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.additionals.len(), 2, "glue");
    let m = ask(&query("vpn.example.net", rtype::TXT));
    assert_eq!(m.answers.len(), 1);
    // Empty non-terminal: NODATA.
    let m = ask(&query("deep.vpn.example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = ask(&query("www.deep.vpn.example.net", rtype::A));
    assert_eq!(addrs(&m), ["192.0.2.80"]);
    let m = ask(&query("alias.vpn.example.net", rtype::A));
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    let m = ask(&query("nope.vpn.example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Outside our zones.
    let m = ask(&query("example.org", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    let m = ask(&query("example.net", rtype::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn any_is_minimal() {
    let m = ask(&query("vpn.example.net", rtype::ANY));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = ask(&query("alice.c.vpn.example.net", rtype::ANY));
    assert_eq!(addrs(&m), ["192.0.2.1"]);
}

#[test]
fn edns_badvers_and_ecs_scope() {
    let m = ask(&query("alice.c.vpn.example.net", rtype::A).edns(4096, 0, None));
    let edns = m.edns.as_ref().unwrap();
    assert_eq!(edns.max_payload(), 1232);
    let (o, out) = ask_with(
        &query("alice.c.vpn.example.net", rtype::A).edns(4096, 1, None),
        Transport::Udp,
        &served_zones(),
    );
    assert_eq!(o.rcode, 16);
    let m = Message::from_vec(&out).unwrap();
    // 16 is both BADVERS and BADSIG; hickory names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().unwrap().rcode_high(), 1);
    // ECS: per-client answers do not depend on the subnet: scope 0.
    let (_, out) = ask_with(
        &query("alice.c.vpn.example.net", rtype::A).edns(1232, 0, Some(("198.51.100.0", 24))),
        Transport::Udp,
        &served_zones(),
    );
    let tail = &out[out.len() - 11..];
    assert_eq!(tail, [0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100]);
    // Service name from the configured subnet: the region's appliance, scope 24.
    for e in 0..50u16 {
        let mut q = query("gw.vpn.example.net", rtype::A).edns(1232, 0, Some(("198.51.100.0", 24)));
        q.bytes[0] = e as u8;
        let (_, out) = ask_with(&q, Transport::Udp, &served_zones());
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(addrs(&m), ["192.0.2.9"]);
        assert_eq!(out[out.len() - 4], 24, "scope");
    }
    // Outside it: the global pool, scope one bit past the first difference (203 = 11001011
    // and 198 = 11000110 share 4 leading bits).
    let (_, out) = ask_with(
        &query("gw.vpn.example.net", rtype::A).edns(1232, 0, Some(("203.0.113.0", 24))),
        Transport::Udp,
        &served_zones(),
    );
    assert_eq!(out[out.len() - 4], 5);
}

#[test]
fn service_is_weighted_over_all() {
    let served = served_zones();
    let mut seen = std::collections::BTreeSet::new();
    for id in 0..200u16 {
        let mut q = query("gw.vpn.example.net", rtype::A);
        q.bytes[..2].copy_from_slice(&id.to_be_bytes());
        let (_, out) = ask_with(&q, Transport::Udp, &served);
        seen.extend(addrs(&Message::from_vec(&out).unwrap()));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["192.0.2.1", "192.0.2.9"]
    );
    let m = ask(&query("gw.vpn.example.net", rtype::AAAA));
    assert_eq!(addrs(&m), ["2001:db8::2"]);
}

#[test]
fn truncation_over_udp_not_tcp() {
    let q = query("big.vpn.example.net", rtype::TXT);
    let (o, out) = ask_with(&q, Transport::Udp, &served_zones());
    assert!(o.truncated);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let (o, out) = ask_with(&q, Transport::Tcp, &served_zones());
    assert!(!o.truncated);
    assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 1);
    // With EDNS and a big enough buffer it fits over UDP.
    let (o, _) = ask_with(&q.edns(1232, 0, None), Transport::Udp, &served_zones());
    assert!(!o.truncated);
}

#[test]
fn malformed_and_refused() {
    let served = served_zones();
    let (o, _) = ask_with(
        &Q {
            bytes: vec![1, 2, 3],
        },
        Transport::Udp,
        &served,
    );
    assert!(!o.send);
    let mut two = query("alice.c.vpn.example.net", rtype::A);
    two.bytes[5] = 2;
    let (o, out) = ask_with(&two, Transport::Udp, &served);
    assert_eq!(o.rcode, 1);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    let (o, _) = ask_with(
        &query("vpn.example.net", rtype::AXFR),
        Transport::Tcp,
        &served,
    );
    assert_eq!(o.rcode, 5);
    let mut chaos = query("version.bind", rtype::TXT);
    let n = chaos.bytes.len();
    chaos.bytes[n - 1] = 3;
    let (o, _) = ask_with(&chaos, Transport::Udp, &served);
    assert_eq!(o.rcode, 5);
}

#[test]
fn slip_answers_empty_with_tc() {
    let mut out = Vec::new();
    let ctx = Context {
        transport: Transport::Udp,
        entropy: 1,
        slip: true,
    };
    let o = respond(
        &query("alice.c.vpn.example.net", rtype::A).bytes,
        &ctx,
        &served_zones(),
        &mut out,
    );
    assert!(o.truncated);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation && m.answers.is_empty());
}

#[test]
fn catalog_refuses_what_it_cannot_serve() {
    let bad = |extra: &str| {
        let text =
            format!("[dns]\nlisten = [\"127.0.0.1:1\"]\n[[dns.zones]]\nname = \"z.test\"\n{extra}");
        let cfg: SteeringConfig = crate::config::parse(Path::new("t.toml"), &text).unwrap();
        catalog::build(&cfg.dns, 1, &|_| Ok(String::new()))
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad("[[dns.zones.records]]\nname = \"sub\"\ntype = \"NS\"\ndata = \"ns.other.test.\"")
            .contains("delegation")
    );
    assert!(
        bad("[[dns.zones.records]]\nname = \"x.c\"\ntype = \"A\"\ndata = \"192.0.2.1\"")
            .contains("per-client")
    );
    assert!(
        bad("[[dns.zones.records]]\nname = \"gw\"\ntype = \"A\"\ndata = \"192.0.2.1\"")
            .contains("service")
    );
    assert!(
        bad("[[dns.zones.records]]\nname = \"*\"\ntype = \"A\"\ndata = \"192.0.2.1\"")
            .contains("wildcard")
    );
    assert!(
        bad("[[dns.zones.records]]\nname = \"x\"\ntype = \"A\"\ndata = \"not-an-ip\"")
            .contains("records[0]")
    );
}

#[test]
fn random_packets_never_panic() {
    use proptest::prelude::*;
    let served = served_zones();
    proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..600))| {
        let mut out = Vec::new();
        let ctx = Context { transport: Transport::Udp, entropy: 0, slip: false };
        let _ = respond(&bytes, &ctx, &served, &mut out);
    });
    proptest!(|(mut bytes in proptest::collection::vec(any::<u8>(), 12..300), qd in 0u16..2)| {
        // Mostly-valid headers reach the deeper code paths.
        bytes[2] = 0x01; bytes[3] = 0; bytes[4] = 0; bytes[5] = qd as u8;
        let mut out = Vec::new();
        let ctx = Context { transport: Transport::Udp, entropy: 0, slip: false };
        let _ = respond(&bytes, &ctx, &served, &mut out);
    });
    let _ = SocketAddr::from(([127, 0, 0, 1], 1));
}

#[test]
fn zone_file_records_are_served() {
    let text = "[dns]\nlisten = [\"127.0.0.1:1\"]\n[[dns.zones]]\nname = \"z.test\"\nzone_file = \"z.zone\"\n";
    let cfg: SteeringConfig = crate::config::parse(Path::new("t.toml"), text).unwrap();
    let zone = "$TTL 300\n@ IN SOA other. x. 1 2 3 4 5\nwww IN A 192.0.2.7\nmail IN MX 10 www\n@ IN CAA 0 issue \"ca.example\"\n";
    let statics = catalog::build(&cfg.dns, 1, &|p| {
        assert_eq!(p, Path::new("z.zone"));
        Ok(zone.to_owned())
    })
    .unwrap();
    let served = ServedZones::empty(Arc::new(statics));
    let ask = |name: &str, t: u16| {
        let (_, out) = ask_with(&query(name, t), Transport::Udp, &served);
        Message::from_vec(&out).unwrap()
    };
    let m = ask("WWW.z.test", rtype::A);
    assert_eq!(addrs(&m), ["192.0.2.7"]);
    assert_eq!(m.answers[0].ttl, 300);
    assert_eq!(ask("mail.z.test", rtype::MX).answers.len(), 1);
    assert_eq!(ask("z.test", 257).answers.len(), 1);
    // The zone file's SOA is ignored: the configured one (serial 1, mname ns1.z.test) is served.
    let m = ask("z.test", rtype::SOA);
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(soa.mname.to_string(), "ns1.z.test.");
}

#[test]
fn before_the_first_load_client_names_get_servfail_never_nxdomain() {
    let served = ServedZones {
        loaded: false,
        ..served_zones()
    };
    let rcode = |name: &str, t: u16| {
        let (o, out) = ask_with(&query(name, t), Transport::Udp, &served);
        let m = Message::from_vec(&out).unwrap();
        if o.rcode == 2 {
            assert!(!m.metadata.authoritative && m.answers.is_empty());
        }
        m.metadata.response_code
    };
    for (name, t) in [
        ("alice.c.vpn.example.net", rtype::A),
        ("nobody.c.vpn.example.net", rtype::A),
        ("_wireguard._udp.alice.c.vpn.example.net", rtype::SRV),
        ("gw.vpn.example.net", rtype::A),
    ] {
        assert_eq!(rcode(name, t), ResponseCode::ServFail, "{name}");
    }
    // What the configuration alone decides is answered as usual.
    assert_eq!(rcode("vpn.example.net", rtype::TXT), ResponseCode::NoError);
    assert_eq!(rcode("c.vpn.example.net", rtype::A), ResponseCode::NoError);
    assert_eq!(
        rcode("www.deep.vpn.example.net", rtype::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode("other.vpn.example.net", rtype::A),
        ResponseCode::NXDomain
    );
    assert_eq!(rcode("example.org", rtype::A), ResponseCode::Refused);
}

#[test]
fn responses_carry_their_rate_limiting_key() {
    use super::rrl::{ResponseClass, name_hash};
    let served = served_zones();
    let key = |name: &str, t: u16| ask_with(&query(name, t), Transport::Udp, &served).0.rrl;
    let a = key("Alice.c.vpn.example.net", rtype::A);
    assert_eq!(a.class, ResponseClass::Answer);
    assert_eq!(a.qtype, rtype::A);
    // Keyed by the lowercase name: case games do not get fresh buckets.
    assert_eq!(a, key("ALICE.c.vpn.example.net", rtype::A));
    assert_ne!(a, key("bob.c.vpn.example.net", rtype::A));
    assert_eq!(
        key("alice.c.vpn.example.net", rtype::AAAA).class,
        ResponseClass::NoData
    );
    // Every missing name of a zone shares the zone's key.
    let nx = key("x1.c.vpn.example.net", rtype::A);
    assert_eq!(nx.class, ResponseClass::NxDomain);
    assert_eq!(nx.name, name_hash(b"\x03vpn\x07example\x03net\x00"));
    assert_eq!(nx, key("x2.vpn.example.net", rtype::A));
    assert_eq!(key("example.org", rtype::A).class, ResponseClass::Error);
}
