//! What a lookup costs the client helper: over UDP, over TLS on a kept session, and over TLS
//! on a new session each time (TCP connect, handshake, certificate check). Run by
//! `benches/dns-over-tls.sh`; standalone:
//!
//! ```text
//! cargo bench --bench dot_lookup -- DNS_ADDR TLS_ADDR SERVER_NAME CA_FILE NAME [ROUNDS]
//! ```
//!
//! Each lookup is the helper's own (`Upstream::lookup`: the A query, answer checks included).
//! Prints p50/p90/p99/max in microseconds per way, a new session's TCP connect and full TLS
//! handshake on their own, and a resumed handshake (what the helper's reconnects cost).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use shadowsteer::client::dot::{DotUpstream, Upstream, round_trip};
use shadowsteer::client::resolve::build_query;
use shadowsteer::config::ResolverTls;

fn usage() -> ! {
    eprintln!(
        "usage: dot_lookup DNS_ADDR TLS_ADDR SERVER_NAME CA_FILE NAME [ROUNDS]\n\
         e.g. dot_lookup 127.0.0.1:5300 127.0.0.1:8853 ns1.vpn.example.net ca.pem c1.c.vpn.example.net 2000"
    );
    std::process::exit(2)
}

fn summary(way: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_micros()
    };
    println!(
        "{way:<28} n={:<6} p50 {:>6} us  p90 {:>6} us  p99 {:>6} us  max {:>6} us",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        samples.last().map_or(0, Duration::as_micros)
    );
}

async fn time(upstream: &Upstream, name: &str) -> Duration {
    let started = Instant::now();
    if let Err(e) = upstream.lookup(name).await {
        eprintln!("error: lookup of {name} via {upstream}: {e}");
        std::process::exit(1);
    }
    started.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        // `cargo test --all-targets` runs every bench without arguments: nothing to measure.
        eprintln!(
            "usage: dot_lookup DNS_ADDR TLS_ADDR SERVER_NAME CA_FILE NAME [ROUNDS]\n(a helper of benches/dns-over-tls.sh)"
        );
        return;
    }
    if args.len() < 5 {
        usage();
    }
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|_| usage());
    let (dns, tls_addr) = (addr(&args[0]), addr(&args[1]));
    let tls = ResolverTls {
        server_name: args[2].clone(),
        ca_file: PathBuf::from(&args[3]),
    };
    let name = args[4].as_str();
    let rounds: usize = args
        .get(5)
        .map_or(Some(2000), |r| r.parse().ok())
        .unwrap_or_else(|| usage());
    let dot = |tls: &ResolverTls| match DotUpstream::new(tls_addr, tls) {
        Ok(d) => Upstream::Tls(Arc::new(d)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };

    let udp = Upstream::Udp(dns);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        samples.push(time(&udp, name).await);
    }
    summary("UDP", samples);

    let kept = dot(&tls);
    time(&kept, name).await; // opens the session
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        samples.push(time(&kept, name).await);
    }
    summary("TLS, kept session", samples);

    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let fresh = dot(&tls);
        samples.push(time(&fresh, name).await);
    }
    summary("TLS, new session each", samples);

    // Where a new session's time goes: TCP connect, then the TLS handshake alone; full (a new
    // client configuration each time, as for "new session each") and resumed (one kept
    // configuration, whose session tickets the helper reuses when it reconnects).
    let config = || {
        let c = shadowsteer::tls::client_config(&tls.ca_file).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        });
        tokio_rustls::TlsConnector::from(c)
    };
    let server_name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
        .unwrap_or_else(|_| usage());
    let (mut connects, mut full, mut resumed) = (Vec::new(), Vec::new(), Vec::new());
    let kept = config();
    handshake(&kept, &server_name, tls_addr).await; // its first is full
    for _ in 0..rounds {
        let (connect, took) = handshake(&config(), &server_name, tls_addr).await;
        connects.push(connect);
        full.push(took);
        resumed.push(handshake(&kept, &server_name, tls_addr).await.1);
    }
    summary("  of which TCP connect", connects);
    summary("  of which TLS handshake", full);
    summary("TLS handshake, resumed", resumed);
}

/// One TCP connect and TLS handshake: (connect time, handshake time).
async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    server_name: &rustls::pki_types::ServerName<'static>,
    addr: SocketAddr,
) -> (Duration, Duration) {
    let started = Instant::now();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        eprintln!("error: cannot connect to {addr}");
        std::process::exit(1);
    };
    let _ = tcp.set_nodelay(true);
    let connect = started.elapsed();
    let started = Instant::now();
    let mut tls = match connector.connect(server_name.clone(), tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: handshake with {addr}: {e}");
            std::process::exit(1);
        }
    };
    let took = started.elapsed();
    // One query and its answer, as the helper's first lookup on a session: reading it takes
    // in the session tickets the server sent after the handshake, which resumption needs.
    let query = build_query("resume.c.vpn.example.net", RecordType::A, 1).unwrap_or_default();
    let answered = round_trip(&mut tls, &query);
    if let Err(e) = answered.await {
        eprintln!("error: a query over TLS to {addr}: {e}");
        std::process::exit(1);
    }
    (connect, took)
}
