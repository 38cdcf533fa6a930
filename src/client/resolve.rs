//! Resolving the per-client name: A (then AAAA) queries over UDP to one server, answers with
//! their TTL. The helper re-resolves when the TTL expires, so it sees the steering server's new
//! answer within one TTL.
//!
//! [`build_query`] and [`parse_answer`] are pure; [`lookup`] is the shell.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
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
    /// The reply is not a DNS answer to our query.
    #[error("malformed reply")]
    Malformed,
    /// No resolver configured (no `nameserver` in /etc/resolv.conf).
    #[error("no nameserver in /etc/resolv.conf")]
    NoResolver,
    /// Socket error.
    #[error("{0}")]
    Io(String),
}

/// The addresses of a name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Addresses in the server's order.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the address records.
    pub ttl: Duration,
}

/// A query for `name` of type `qtype` with id `id`.
pub fn build_query(name: &str, qtype: RecordType, id: u16) -> Result<Vec<u8>, ResolveError> {
    let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|_| ResolveError::BadName(name.to_owned()))?;
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, qtype));
    msg.to_vec()
        .map_err(|_| ResolveError::BadName(name.to_owned()))
}

/// Reads the reply to query `id` for `name`.
pub fn parse_answer(reply: &[u8], id: u16, name: &str) -> Result<Answer, ResolveError> {
    let msg = Message::from_vec(reply).map_err(|_| ResolveError::Malformed)?;
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return Err(ResolveError::Malformed);
    }
    if msg.metadata.response_code != ResponseCode::NoError {
        return Err(ResolveError::Rcode(msg.metadata.response_code.to_string()));
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    // CNAME chains are followed by taking every address record in the answer section.
    for r in &msg.answers {
        let addr = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
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
                        match parse_answer(&buf[..n], id, name) {
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
        let a = parse_answer(&bytes, 77, "alice.c.vpn.test").unwrap();
        assert_eq!(a.addrs.len(), 2);
        assert_eq!(a.ttl, Duration::from_secs(10));
        assert_eq!(
            parse_answer(&bytes, 78, "alice.c.vpn.test"),
            Err(ResolveError::Malformed)
        );
        assert_eq!(parse_answer(b"junk", 77, "x"), Err(ResolveError::Malformed));
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
