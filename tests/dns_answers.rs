//! `shadowsteer serve` over real UDP and TCP, backed by a real local cluster: every answer type
//! and the DNS semantics list, item by item.

mod common;
mod serve_harness;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serve_harness::*;

const A: u16 = 1;
const NS: u16 = 2;
const SOA: u16 = 6;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const SRV: u16 = 33;
const ANY: u16 = 255;
const AXFR: u16 = 252;

fn ecs_config() -> String {
    let extra =
        format!("{NO_RRL}\n[[dns.ecs_regions]]\nprefix = \"198.51.100.0/24\"\nregion = \"us\"\n");
    config(&extra, "hold_down = \"1s\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_and_dns_semantics() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let server = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || Server::start(&ecs_config(), &["--database-url", &url])
    })
    .await
    .unwrap();
    let dns = server.dns;
    tokio::task::spawn_blocking(move || {
        // Per-client A: the primary, authoritative, short TTL, the query's case echoed.
        let m = udp(dns, &query(0x1234, "AlIcE.c.VPN.example.NET", A));
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative, "AA");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&m), ["192.0.2.1"]);
        assert_eq!(m.answers[0].ttl, 10);
        assert_eq!(m.answers[0].name.to_string(), "AlIcE.c.VPN.example.NET.");
        assert_eq!(m.queries[0].name().to_string(), "AlIcE.c.VPN.example.NET.");

        // NODATA: the name exists without AAAA; SOA in authority with the negative TTL.
        let m = udp(dns, &query(2, "alice.c.vpn.example.net", AAAA));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, 30);
        assert!(m.metadata.authoritative);

        // NXDOMAIN: unknown client and unknown names, SOA in authority.
        for name in [
            "mallory.c.vpn.example.net",
            "nothing-here.vpn.example.net",
            "a.b.alice.c.vpn.example.net",
        ] {
            let m = udp(dns, &query(3, name, A));
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{name}");
            assert!(m.metadata.authoritative);
        }

        // REFUSED outside our zones, without AA.
        for name in ["example.org", "example.net", "vpn.example.net.evil.test"] {
            let m = udp(dns, &query(4, name, A));
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!m.metadata.authoritative);
        }
        // Zone transfers are refused.
        let m = tcp(dns, &query(5, "vpn.example.net", AXFR));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        // Apex: SOA, NS with glue, static TXT from the config.
        let m = udp(dns, &query(6, "vpn.example.net", SOA));
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(soa.mname.to_string(), "ns1.vpn.example.net.");
        assert_eq!(soa.minimum, 30);
        let m = udp(dns, &query(7, "vpn.example.net", NS));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(rec_addrs(&m.additionals), ["127.0.0.1"]);
        let m = udp(dns, &query(8, "vpn.example.net", TXT));
        assert_eq!(m.answers.len(), 1);

        // SRV gives the WireGuard port and points at the client's name.
        let m = udp(
            dns,
            &query(9, "_wireguard._udp.alice.c.vpn.example.net", SRV),
        );
        let RData::SRV(srv) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(srv.port, 51820);
        assert_eq!(srv.target.to_string(), "alice.c.vpn.example.net.");
        assert_eq!(rec_addrs(&m.additionals), ["192.0.2.1"]);

        // Service name: one of the active appliances, weighted.
        let mut seen = std::collections::BTreeSet::new();
        for id in 0..200u16 {
            seen.extend(addrs(&udp(
                dns,
                &query(id.wrapping_mul(331), "gw.vpn.example.net", A),
            )));
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["192.0.2.1", "192.0.2.2"]
        );

        // ANY is answered minimally (one RRset).
        let m = udp(dns, &query(10, "vpn.example.net", ANY));
        assert_eq!(m.answers.len(), 1);

        // EDNS: our UDP size advertised; unknown options ignored; BADVERS for version 1.
        let m = udp(
            dns,
            &query(11, "alice.c.vpn.example.net", A).edns(
                4096,
                0,
                None,
                &[0xFD, 0xE9, 0, 3, 1, 2, 3],
            ),
        );
        assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
        assert_eq!(addrs(&m), ["192.0.2.1"]);
        let m = udp(
            dns,
            &query(12, "alice.c.vpn.example.net", A).edns(1232, 1, None, &[]),
        );
        assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
        assert!(m.answers.is_empty());

        // ECS echoed with scope 0 where the answer does not depend on the subnet, and with the
        // configured prefix length where it does (service name from 198.51.100.0/24 -> us).
        let raw = udp_raw(
            dns,
            &query(13, "alice.c.vpn.example.net", A)
                .edns(1232, 0, Some(("203.0.113.0", 24)), &[])
                .0,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(
            raw[raw.len() - 11..],
            [0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113]
        );
        for id in 0..20u16 {
            let q = query(100 + id, "gw.vpn.example.net", A).edns(
                1232,
                0,
                Some(("198.51.100.0", 24)),
                &[],
            );
            let raw = udp_raw(dns, &q.0, Duration::from_secs(2)).unwrap();
            assert_eq!(raw[raw.len() - 4], 24, "scope prefix");
            assert_eq!(
                addrs(&hickory_proto::op::Message::from_vec(&raw).unwrap()),
                ["192.0.2.2"],
                "nearest region"
            );
        }

        // Too big for UDP without EDNS: TC set, then the whole answer over TCP.
        let m = udp(dns, &query(14, "big.vpn.example.net", TXT));
        assert!(m.metadata.truncation, "TC");
        assert!(m.answers.is_empty());
        let m = tcp(dns, &query(14, "big.vpn.example.net", TXT));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);

        // Malformed packets: FORMERR or silence, never a crash.
        let mut two_questions = query(15, "alice.c.vpn.example.net", A);
        two_questions.0[5] = 2;
        let m = udp(dns, &two_questions);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(udp_raw(dns, &[1, 2, 3], Duration::from_millis(300)).is_none());
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..2000usize {
            let len = 12 + i % 300;
            let mut p = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(x as u8);
            }
            if i % 2 == 0 {
                p[2] &= 0x7F; // a query, so more of it gets parsed
                p[4] = 0;
                p[5] = 1;
            }
            let _ = sock.send_to(&p, dns);
        }
        assert_eq!(
            addrs(&udp(dns, &query(16, "alice.c.vpn.example.net", A))),
            ["192.0.2.1"],
            "still serving after garbage"
        );

        // An independent client agrees.
        if have_kdig() {
            let out = kdig(dns, &["alice.c.vpn.example.net", "A", "+short"]);
            assert_eq!(out.trim(), "192.0.2.1");
            let out = kdig(dns, &["+tcp", "big.vpn.example.net", "TXT"]);
            assert!(out.contains("NOERROR"), "{out}");
            let out = kdig(dns, &["gw.vpn.example.net", "A", "+subnet=198.51.100.7/24"]);
            assert!(out.contains("198.51.100.0/24/24"), "{out}");
        }
    })
    .await
    .unwrap();
    assert_eq!(server.stop(), 0, "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limiting_slips_and_tcp_is_exempt() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let cfg = config(
        "udp_workers = 1\n[dns.rate_limit]\nresponses_per_second = 20\nslip = 2\n",
        "",
    );
    let cfg = cfg.replace("udp_workers = 2\n", "");
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&cfg, &["--database-url", &url]);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let n = 200;
        for id in 0..n {
            sock.send_to(&query(id, "alice.c.vpn.example.net", A).0, server.dns)
                .unwrap();
        }
        let (mut full, mut truncated) = (0, 0);
        let mut buf = [0u8; 4096];
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            let m = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
            if m.metadata.truncation {
                truncated += 1;
            } else {
                full += 1;
            }
        }
        // 20 per second; the burst may straddle a second boundary.
        assert!((20..=40).contains(&full), "full answers: {full}");
        assert!(truncated > 0, "some limited answers slip out truncated");
        assert!(full + truncated < n as usize, "the rest are dropped");
        // TCP is never limited.
        for id in 0..30 {
            assert_eq!(
                addrs(&tcp(server.dns, &query(id, "alice.c.vpn.example.net", A))),
                ["192.0.2.1"]
            );
        }
        let token = cli(&url, &["token", "create", "--name", "rrl-test"]);
        let (code, text) = http_get(server.admin, "/metrics", Some(token.trim())).unwrap();
        assert_eq!(code, 200);
        assert!(
            metric(&text, "shadowsteer_dns_rate_limited_total{action=\"slip\"}").unwrap() > 0.0
        );
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_connections_are_bounded_and_idle_ones_closed() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let cfg = config(
        &format!("max_tcp_connections = 2\ntcp_idle_timeout = \"2s\"\n{NO_RRL}"),
        "",
    );
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let server = Server::start(&cfg, &["--database-url", &url]);
        let token = cli(&url, &["token", "create", "--name", "m", "--scope", "read"]);
        let scrape = || {
            let (code, text) = http_get(server.admin, "/metrics", Some(token.trim())).unwrap();
            assert_eq!(code, 200, "{text}");
            (
                metric(&text, "shadowsteer_dns_tcp_connections"),
                metric(&text, "shadowsteer_dns_tcp_refused_total"),
            )
        };
        assert_eq!(scrape(), (Some(0.0), Some(0.0)));
        let hold: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(server.dns).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // The third is closed at once.
        let mut third = std::net::TcpStream::connect(server.dns).unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(third.read(&mut b), Ok(0) | Err(_)),
            "third connection refused"
        );
        // Operators see the limit at work.
        assert_eq!(scrape(), (Some(2.0), Some(1.0)));
        // Idle connections are closed after the idle timeout.
        for mut h in hold {
            h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let start = std::time::Instant::now();
            assert_eq!(h.read(&mut b).unwrap_or(0), 0);
            assert!(start.elapsed() < Duration::from_secs(9));
        }
        // Slots are free again.
        assert!(
            eventually(Duration::from_secs(5), || scrape().0 == Some(0.0)).is_some(),
            "closed connections still counted: {:?}",
            scrape()
        );
        assert_eq!(
            addrs(&tcp(server.dns, &query(1, "alice.c.vpn.example.net", A))),
            ["192.0.2.1"]
        );
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_a_token() {
    let db = common::test_db().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&config(NO_RRL, ""), &["--database-url", &url]);
        assert_eq!(http_get(server.admin, "/healthz", None).unwrap().0, 200);
        assert_eq!(http_get(server.admin, "/readyz", None).unwrap().0, 200);
        assert_eq!(http_get(server.admin, "/metrics", None).unwrap().0, 401);
        assert_eq!(
            http_get(server.admin, "/metrics", Some("sst_wrong"))
                .unwrap()
                .0,
            401
        );
        let token = cli(
            &url,
            &["token", "create", "--name", "prometheus", "--scope", "read"],
        );
        let token = token.trim();
        assert!(token.starts_with("sst_"));
        let (code, text) = http_get(server.admin, "/metrics", Some(token)).unwrap();
        assert_eq!(code, 200);
        assert!(text.contains("shadowsteer_dns_queries_total{qtype=\"A\"}"));
        assert!(text.contains("shadowsteer_snapshot_age_seconds"));
        assert!(text.contains("shadowsteer_dns_latency_seconds_bucket{le=\"+Inf\"}"));
        serve_harness::assert_described(&text);
        // Only the hash is stored.
        let list = cli(&url, &["token", "list", "--json"]);
        assert!(list.contains("prometheus") && !list.contains(token));
        let id: serde_json::Value = serde_json::from_str(&list).unwrap();
        let id = id[0]["id"].as_str().unwrap().to_owned();
        cli(&url, &["token", "revoke", &id[..8]]);
        // Verdicts are cached briefly (issue 13: a token flood must not cost a query per
        // request), so a revocation takes effect within the cache's lifetime (5 s).
        let refused = eventually(Duration::from_secs(15), || {
            http_get(server.admin, "/metrics", Some(token)).map(|r| r.0) == Some(401)
        });
        assert!(refused.is_some(), "revoked token still accepted after 15 s");
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}

/// SIGHUP rereads what `serve` can reload; with no risk model and no TLS there is nothing, and
/// the signal must still not stop the server (its default action would).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_nothing_to_reload_keeps_serving() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let steering = "hold_down = \"1s\"\n\n[risk]\nenabled = false";
        let server = Server::start(&config(NO_RRL, steering), &["--database-url", &url]);
        assert_eq!(answer(server.dns, "alice.c.vpn.example.net"), ["192.0.2.1"]);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
        let logged = eventually(Duration::from_secs(10), || {
            server.log_text().contains("SIGHUP: no risk model")
        });
        assert!(logged.is_some(), "log:\n{}", server.log_text());
        assert_eq!(answer(server.dns, "alice.c.vpn.example.net"), ["192.0.2.1"]);
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}
