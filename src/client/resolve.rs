//! Resolving the per-client name: A (then AAAA) queries over UDP to one server, answers with
//! their TTL. The helper re-resolves when the TTL expires, so it sees the steering server's new
//! answer within one TTL.
//!
//! A reply is used only if it answers exactly our question: same id, one question with our name
//! (compared case-insensitively), type and class IN, and only address records of the asked type
//! owned by the name or by a CNAME chain from it that the answer itself carries. Anything else
//! (a stray or forged datagram, a record for another name) is ignored, never steered to.
//!
//! [`build_query`] and [`parse_answer`] are pure; [`lookup`] is the shell.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::net::UdpSocket;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name is not a valid DNS name.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(SocketAddr),
    /// The server answered with an error code.
    #[error("server answered {0}")]
    Rcode(String),
    /// The answer has no address for the name.
    #[error("no address for {0}")]
    NoAddress(String),
    /// The reply is not a DNS answer to our query (id, question or format).
    #[error("malformed reply, or not an answer to our question")]
    Malformed,
    /// No resolver configured (no `nameserver` in /etc/resolv.conf).
    #[error("no nameserver in /etc/resolv.conf")]
    NoResolver,
    /// Socket error.
    #[error("{0}")]
    Io(String),
    /// DNS over TLS: the CA file is unusable, or the handshake failed (an untrusted
    /// certificate, another name, no TLS at that address).
    #[error("DNS over TLS: {0}")]
    Tls(String),
}

/// The addresses of a name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Addresses in the server's order.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the address records.
    pub ttl: Duration,
}

/// `name` as an absolute DNS name.
fn absolute(name: &str) -> Result<Name, ResolveError> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|_| ResolveError::BadName(name.to_owned()))
}

/// A query for `name` of type `qtype` with id `id`.
pub fn build_query(name: &str, qtype: RecordType, id: u16) -> Result<Vec<u8>, ResolveError> {
    let fqdn = absolute(name)?;
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, qtype));
    msg.to_vec()
        .map_err(|_| ResolveError::BadName(name.to_owned()))
}

/// Longest CNAME chain followed inside one answer.
const MAX_CNAME_CHAIN: usize = 8;

/// Reads the reply to query `id` for `name` of type `qtype`.
pub fn parse_answer(
    reply: &[u8],
    id: u16,
    name: &str,
    qtype: RecordType,
) -> Result<Answer, ResolveError> {
    let msg = Message::from_vec(reply).map_err(|_| ResolveError::Malformed)?;
    let fqdn = absolute(name)?;
    let asked = |q: &Query| q.name().to_lowercase() == fqdn.to_lowercase();
    if msg.metadata.id != id
        || msg.metadata.message_type != MessageType::Response
        || msg.metadata.op_code != OpCode::Query
        || msg.queries.len() != 1
        || !asked(&msg.queries[0])
        || msg.queries[0].query_type() != qtype
        || msg.queries[0].query_class() != DNSClass::IN
    {
        return Err(ResolveError::Malformed);
    }
    if msg.metadata.response_code != ResponseCode::NoError {
        return Err(ResolveError::Rcode(msg.metadata.response_code.to_string()));
    }
    // The names whose address records answer us: ours, then each CNAME target in turn.
    let mut owners = vec![fqdn.to_lowercase()];
    for _ in 0..MAX_CNAME_CHAIN {
        let Some(last) = owners.last() else { break };
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name.to_lowercase() == *last => Some(c.0.to_lowercase()),
            _ => None,
        });
        match next {
            Some(n) if !owners.contains(&n) => owners.push(n),
            _ => break,
        }
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in &msg.answers {
        let addr = match (&r.data, qtype) {
            (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
            (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
            _ => continue,
        };
        if r.dns_class != DNSClass::IN || !owners.contains(&r.name.to_lowercase()) {
            continue;
        }
        addrs.push(addr);
        ttl = ttl.min(r.ttl);
    }
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress(name.to_owned()));
    }
    Ok(Answer {
        addrs,
        ttl: Duration::from_secs(u64::from(ttl)),
    })
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn system_resolver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("nameserver"))
            .then(|| parts.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Asks `server` for the addresses of `name` (A, then AAAA if there is no A record).
pub async fn lookup(server: SocketAddr, name: &str) -> Result<Answer, ResolveError> {
    let local: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| ResolveError::Io(e.to_string()))?;
    let mut last = ResolveError::Timeout(server);
    for qtype in [RecordType::A, RecordType::AAAA] {
        for _attempt in 0..3 {
            let id: u16 = rand::random();
            let query = build_query(name, qtype, id)?;
            socket
                .send_to(&query, server)
                .await
                .map_err(|e| ResolveError::Io(e.to_string()))?;
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
            loop {
                match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(ResolveError::Io(e.to_string())),
                    Ok(Ok((n, from))) => {
                        if from != server {
                            continue;
                        }
                        match parse_answer(&buf[..n], id, name, qtype) {
                            Err(ResolveError::Malformed) => continue,
                            Err(e @ ResolveError::NoAddress(_)) => {
                                last = e;
                                break;
                            }
                            r => return r,
                        }
                    }
                }
            }
            if matches!(last, ResolveError::NoAddress(_)) {
                break;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

    #[test]
    fn query_and_answer_round_trip() {
        let q = build_query("alice.c.vpn.test", RecordType::A, 77).unwrap();
        let mut msg = Message::from_vec(&q).unwrap();
        msg.metadata.message_type = MessageType::Response;
        let name = Name::from_ascii("alice.c.vpn.test.").unwrap();
        msg.answers.push(Record::from_rdata(
            name.clone(),
            30,
            RData::A(A::new(10, 0, 0, 1)),
        ));
        msg.answers
            .push(Record::from_rdata(name, 10, RData::A(A::new(10, 0, 0, 2))));
        let bytes = msg.to_vec().unwrap();
        let a = parse_answer(&bytes, 77, "alice.c.vpn.test", RecordType::A).unwrap();
        assert_eq!(a.addrs.len(), 2);
        assert_eq!(a.ttl, Duration::from_secs(10));
        assert_eq!(
            parse_answer(&bytes, 78, "alice.c.vpn.test", RecordType::A),
            Err(ResolveError::Malformed)
        );
        assert_eq!(
            parse_answer(b"junk", 77, "x", RecordType::A),
            Err(ResolveError::Malformed)
        );
    }

    /// A response to `question` (name, type) with id 9 carrying `records`.
    fn reply(question: (&str, RecordType), records: Vec<Record>) -> Vec<u8> {
        let mut msg = Message::from_vec(&build_query(question.0, question.1, 9).unwrap()).unwrap();
        msg.metadata.message_type = MessageType::Response;
        msg.answers = records;
        msg.to_vec().unwrap()
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).unwrap(),
            10,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    }

    #[test]
    fn only_answers_to_our_question_count() {
        const ALICE: &str = "alice.c.vpn.test";
        let ok = reply(
            (ALICE, RecordType::A),
            vec![a("alice.c.vpn.test.", [192, 0, 2, 1])],
        );
        assert_eq!(
            parse_answer(&ok, 9, "ALICE.c.vpn.test", RecordType::A)
                .unwrap()
                .addrs,
            [IpAddr::from([192, 0, 2, 1])]
        );
        // Right id, another question (a forged or stray reply): not ours.
        let other = reply(
            ("mallory.c.vpn.test", RecordType::A),
            vec![a("mallory.c.vpn.test.", [203, 0, 113, 66])],
        );
        assert_eq!(
            parse_answer(&other, 9, ALICE, RecordType::A),
            Err(ResolveError::Malformed)
        );
        // Our question, another type.
        let aaaa = reply(
            (ALICE, RecordType::AAAA),
            vec![a("alice.c.vpn.test.", [1, 2, 3, 4])],
        );
        assert_eq!(
            parse_answer(&aaaa, 9, ALICE, RecordType::A),
            Err(ResolveError::Malformed)
        );
        // Our question, but the address belongs to another name: ignored.
        let stray = reply(
            (ALICE, RecordType::A),
            vec![a("mallory.c.vpn.test.", [203, 0, 113, 66])],
        );
        assert_eq!(
            parse_answer(&stray, 9, ALICE, RecordType::A),
            Err(ResolveError::NoAddress(ALICE.into()))
        );
        // A CNAME chain carried in the answer is followed; an unrelated address is not.
        let cname = Record::from_rdata(
            Name::from_ascii("alice.c.vpn.test.").unwrap(),
            10,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                Name::from_ascii("eu-1.vpn.test.").unwrap(),
            )),
        );
        let chain = reply(
            (ALICE, RecordType::A),
            vec![
                cname,
                a("eu-1.vpn.test.", [192, 0, 2, 1]),
                a("evil.test.", [203, 0, 113, 66]),
            ],
        );
        assert_eq!(
            parse_answer(&chain, 9, ALICE, RecordType::A).unwrap().addrs,
            [IpAddr::from([192, 0, 2, 1])]
        );
    }

    #[test]
    fn reads_resolv_conf() {
        let text = "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";
        assert_eq!(
            system_resolver(text),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(system_resolver("search x\n"), None);
    }
}
