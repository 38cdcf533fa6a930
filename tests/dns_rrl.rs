//! Response rate limiting of `shadowsteer serve` with several UDP workers (issue 13, fault 4):
//! buckets keyed by source prefix *and* response (name and type; the zone for NXDOMAIN; the
//! class for errors), a slip counter per bucket, garbage that gets no answer spending nothing,
//! one limit across all workers, and a resolver asking for thousands of clients never limited
//! by the defaults.

mod common;
mod serve_harness;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use serve_harness::*;

const A: u16 = 1;
const AAAA: u16 = 28;

/// Answers to a burst, by kind.
#[derive(Debug, Default)]
struct Tally {
    full: usize,
    truncated: usize,
}

/// Sends every query of `burst` from one of `sockets` (round robin, so the kernel spreads them
/// over the workers' `SO_REUSEPORT` sockets), then collects answers until 300 ms pass without
/// one. Returns the tally per query name.
fn burst(
    sockets: &[UdpSocket],
    dns: SocketAddr,
    burst: &[Query],
) -> std::collections::HashMap<String, Tally> {
    for (i, q) in burst.iter().enumerate() {
        sockets[i % sockets.len()].send_to(&q.0, dns).unwrap();
    }
    let mut out: std::collections::HashMap<String, Tally> = Default::default();
    let mut buf = [0u8; 4096];
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        let mut got = false;
        for s in sockets {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                got = true;
                let m = Message::from_vec(&buf[..n]).unwrap();
                let name = m
                    .queries
                    .first()
                    .map_or(String::new(), |q| q.name().to_string().to_lowercase());
                let t = out.entry(name).or_default();
                if m.metadata.truncation {
                    t.truncated += 1;
                } else {
                    t.full += 1;
                }
            }
        }
        if got {
            quiet_since = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out
}

fn sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_per_response_across_four_workers() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    cli(
        &db.url,
        &[
            "client",
            "add",
            "--id",
            "bob",
            "--public-key",
            &key(),
            "--tunnel-ip",
            "10.77.0.3",
            "--primary",
            "eu-1",
            "--shadow",
            "us-1",
        ],
    );
    let cfg = config(
        "[dns.rate_limit]\nresponses_per_second = 20\nslip = 2\n",
        "",
    )
    .replace("udp_workers = 2\n", "udp_workers = 4\n");
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&cfg, &["--database-url", &url]);
        let socks = sockets(32);
        // 1. A flood of one question from one /24 over all four workers: one limit holds
        //    (the burst may straddle a second boundary), every 2nd limited answer slips out
        //    truncated; bob, asked from the same prefix in the middle of the flood, is a
        //    different response and is never limited.
        let mut qs = Vec::new();
        for i in 0..400u16 {
            qs.push(query(i, "alice.c.vpn.example.net", A));
            if i % 40 == 0 {
                qs.push(query(i, "bob.c.vpn.example.net", A));
            }
        }
        let got = burst(&socks, server.dns, &qs);
        let alice = &got["alice.c.vpn.example.net."];
        let bob = &got["bob.c.vpn.example.net."];
        assert!(
            (20..=40).contains(&alice.full),
            "alice: {alice:?} (20 per second over four workers)"
        );
        let limited = 400 - alice.full;
        assert!(
            alice.truncated * 2 <= limited + 2 && alice.truncated * 2 + 4 >= limited,
            "alice: {alice:?}: every 2nd limited answer slips"
        );
        assert_eq!(bob.full, 10, "bob is a different response: {bob:?}");

        // 2. Garbage from the prefix gets no answer and spends nothing: packets too short
        //    for a header and responses (QR set), then FORMERR-provoking queries, which spend
        //    only the error budget. A fresh name is then answered in full.
        //    Paced and spread over the sockets, so that no socket buffer overflows.
        for i in 0..200u16 {
            let sock = &socks[usize::from(i) % socks.len()];
            sock.send_to(&[1, 2, 3], server.dns).unwrap();
            let mut resp = query(i, "carol.c.vpn.example.net", A).0;
            resp[2] |= 0x80;
            sock.send_to(&resp, server.dns).unwrap();
            let mut formerr = query(i, "carol.c.vpn.example.net", A).0;
            formerr[5] = 2; // two questions
            sock.send_to(&formerr, server.dns).unwrap();
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _ = burst(&socks, server.dns, &[]);
        let qs: Vec<Query> = (0..15)
            .map(|i| query(i, "_wireguard._udp.alice.c.vpn.example.net", 33))
            .collect();
        let got = burst(&socks, server.dns, &qs);
        let srv = &got["_wireguard._udp.alice.c.vpn.example.net."];
        assert_eq!(srv.full, 15, "after garbage: {srv:?}");

        // 3. NXDOMAIN for random names of the zone share one bucket per prefix.
        let names: Vec<String> = (0..200)
            .map(|i| format!("r{i}.c.vpn.example.net"))
            .collect();
        let qs: Vec<Query> = names.iter().map(|n| query(1, n, A)).collect();
        let got = burst(&socks, server.dns, &qs);
        let full: usize = got.values().map(|t| t.full).sum();
        assert!(
            (20..=40).contains(&full),
            "random NXDOMAIN names: {full} full answers"
        );

        let token = cli(
            &url,
            &["token", "create", "--name", "rrl", "--scope", "read"],
        );
        let (_, text) = http_get(server.admin, "/metrics", Some(token.trim())).unwrap();
        assert!(
            metric(&text, "shadowsteer_dns_rate_limited_total{action=\"slip\"}").unwrap() > 0.0
        );
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}

/// A resolver's /24 asks for 3,000 clients (A and AAAA each, 6,000 questions within about a
/// second): with the default limits nothing is limited.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_resolver_is_not_limited_by_the_defaults() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    sqlx::query(
        "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance)
         SELECT 'eu', 'c' || i, encode(sha256(('rrl' || i)::bytea), 'base64'), '10.1.0.0'::inet + i, 1000 + i, 'eu-1', 'us-1'
         FROM generate_series(1, 3000) AS i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cfg = config("", "").replace("udp_workers = 2\n", "udp_workers = 3\n");
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&cfg, &["--database-url", &url]);
        assert!(
            eventually(Duration::from_secs(30), || answer(
                server.dns,
                "c3000.c.vpn.example.net"
            ) == ["192.0.2.1"])
            .is_some()
        );
        let socks = sockets(16);
        let mut answered = 0usize;
        let mut limited = 0usize;
        // Windows of 500 questions, so that the socket buffers never overflow.
        for window in 0..12 {
            let qs: Vec<Query> = (0..500)
                .map(|j| {
                    let n = window * 500 + j;
                    let qtype = if n % 2 == 0 { A } else { AAAA };
                    query(
                        n as u16,
                        &format!("c{}.c.vpn.example.net", n / 2 + 1),
                        qtype,
                    )
                })
                .collect();
            let got = burst(&socks, server.dns, &qs);
            for t in got.values() {
                answered += t.full;
                limited += t.truncated;
            }
        }
        assert_eq!((answered, limited), (6000, 0));
        // And each answer is a real one.
        let m = udp(server.dns, &query(1, "c1234.c.vpn.example.net", A));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&m), ["192.0.2.1"]);
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}
