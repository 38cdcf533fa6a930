//! Change-to-answer latency: how long after a risk change commits in Postgres the DNS answer
//! follows. Run by `benches/dns-vs-nsd.sh`; standalone:
//!
//! ```text
//! cargo bench --bench change_latency -- DATABASE_URL DNS_ADDR CLIENT_NAME PRIMARY_IP SHADOW_IP APPLIANCE [ROUNDS]
//! ```
//!
//! Each round inserts an advisory of risk 0.95 on `APPLIANCE` (the client's primary) and
//! measures from the commit until a UDP query for `CLIENT_NAME` returns `SHADOW_IP`, then
//! deletes it and measures until the answer is `PRIMARY_IP` again (the server must run with
//! `hold_down = "0s"`). The querier sends back-to-back queries, so the resolution is one round
//! trip (tens of microseconds). Prints p50/p90/p99/max over all measurements.
//!
//! Changes are spaced `GAP_MS` milliseconds apart (default 250): each change is measured on its
//! own, not queued behind the previous one's work (with every client of the appliance moving,
//! each change also writes one audit row per client).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// The first A record's address in a response.
fn first_a(resp: &[u8]) -> Option<[u8; 4]> {
    let m = hickory_proto::op::Message::from_vec(resp).ok()?;
    m.answers.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::A(a) => Some(a.0.octets()),
        _ => None,
    })
}

fn wait_for(
    sock: &UdpSocket,
    dns: SocketAddr,
    name: &str,
    want: [u8; 4],
    since: Instant,
) -> Duration {
    let mut buf = [0u8; 2048];
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        let _ = sock.send_to(&query(id, name), dns);
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && first_a(&buf[..n]) == Some(want)
        {
            return since.elapsed();
        }
        if since.elapsed() > Duration::from_secs(30) {
            eprintln!("error: answer did not change within 30 s");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        // `cargo test --all-targets` runs every bench without arguments: nothing to measure.
        eprintln!(
            "usage: change_latency DATABASE_URL DNS_ADDR CLIENT_NAME PRIMARY_IP SHADOW_IP APPLIANCE [ROUNDS]\n(a helper of benches/dns-vs-nsd.sh)"
        );
        return;
    }
    if args.len() < 6 {
        eprintln!(
            "usage: change_latency DATABASE_URL DNS_ADDR CLIENT_NAME PRIMARY_IP SHADOW_IP APPLIANCE [ROUNDS]"
        );
        std::process::exit(2);
    }
    fn parse<T: std::str::FromStr>(value: &str, what: &str) -> T {
        value.parse().unwrap_or_else(|_| {
            eprintln!("error: {what}: cannot parse {value:?}");
            std::process::exit(2)
        })
    }
    let dns: SocketAddr = parse(&args[1], "DNS_ADDR (ip:port)");
    let name = args[2].clone();
    let primary: std::net::Ipv4Addr = parse(&args[3], "PRIMARY_IP");
    let shadow: std::net::Ipv4Addr = parse(&args[4], "SHADOW_IP");
    let appliance = args[5].clone();
    let rounds: usize = args.get(6).map_or(50, |r| parse(r, "ROUNDS"));
    let gap = Duration::from_millis(std::env::var("GAP_MS").map_or(250, |g| parse(&g, "GAP_MS")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt
        .block_on(shadowsteer::store::connect(&args[0], 1))
        .expect("connect to the database");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut samples = Vec::with_capacity(rounds * 2);
    for _ in 0..rounds {
        rt.block_on(
            sqlx::query(
                "INSERT INTO advisories (region, appliance_id, kind, risk, starts_at, note)
                 SELECT region, id, 'operational', 0.95, now(), 'change-latency bench' FROM appliances WHERE id = $1",
            )
            .bind(&appliance)
            .execute(&pool),
        )
        .expect("insert advisory");
        let committed = Instant::now();
        samples.push(wait_for(&sock, dns, &name, shadow.octets(), committed));
        std::thread::sleep(gap);
        rt.block_on(
            sqlx::query("DELETE FROM advisories WHERE note = 'change-latency bench'")
                .execute(&pool),
        )
        .expect("delete advisory");
        let committed = Instant::now();
        samples.push(wait_for(&sock, dns, &name, primary.octets(), committed));
        std::thread::sleep(gap);
    }
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "change-to-answer latency over {} changes ({} ms apart): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        samples.len(),
        gap.as_millis(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
}
