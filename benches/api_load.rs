//! Admin API latency under load, and DNS latency beside it.
//!
//! Run: `nice -n 10 cargo bench --bench api_load` (optionally `-- SECONDS RATE`). Starts a
//! throw-away local cluster, 10,000 clients on 20 appliances, and a release `serve` (one UDP
//! worker); then, open loop (requests sent on schedule, latency counted from the scheduled
//! time, so a stall is not hidden):
//! 1. DNS alone: 1,000 queries/s for random client names (baseline);
//! 2. `GET /api/v1/appliances` at RATE (500) requests/s for SECONDS (20), DNS as in 1;
//! 3. `GET /api/v1/clients?limit=100` at RATE requests/s, DNS as in 1.
//!
//! Each HTTP request opens its own TCP connection (the worst case for the server). Prints
//! p50/p90/p99/max per phase. Under `cargo test --all-targets` (no `--bench`) it runs a short
//! smoke version.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/serve_harness/mod.rs"]
mod serve_harness;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serve_harness::{NO_RRL, Server, cli, config, query};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut lat: Vec<Duration>, errors: usize) {
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<40} n={:>6} errors={errors:>4} p50={:>7.2} ms p90={:>7.2} ms p99={:>7.2} ms max={:>7.2} ms",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

/// 10,000 clients (`c0`...) on appliances `eu-0..9` (primary) and `us-0..9` (shadow).
async fn inventory(url: &str, clients: usize) {
    let pool = shadowsteer::store::connect(url, 2).await.unwrap();
    let key = || {
        shadowsteer::domain::SecretKey::generate()
            .public_key()
            .to_base64()
    };
    sqlx::query("INSERT INTO regions (region) VALUES ('eu'), ('us')")
        .execute(&pool)
        .await
        .unwrap();
    for i in 0..10 {
        for (region, net) in [("eu", 1), ("us", 2)] {
            sqlx::query(
                "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ($1, $2, $3::text::inet, 51820, $4)",
            )
            .bind(region)
            .bind(format!("{region}-{i}"))
            .bind(format!("192.0.{net}.{}", i + 1))
            .bind(key())
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    let ids: Vec<String> = (0..clients).map(|i| format!("c{i}")).collect();
    let keys: Vec<String> = (0..clients).map(|_| key()).collect();
    let ips: Vec<String> = (0..clients)
        .map(|i| format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let index: Vec<i32> = (1..=clients as i32).collect();
    let primary: Vec<String> = (0..clients).map(|i| format!("eu-{}", i % 10)).collect();
    let shadow: Vec<String> = (0..clients).map(|i| format!("us-{}", i % 10)).collect();
    sqlx::query(
        "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance)
         SELECT 'eu', id, k, ip::inet, n, p, s FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[]) AS t(id, k, ip, n, p, s)",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&ips)
    .bind(&index)
    .bind(&primary)
    .bind(&shadow)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// One GET on a fresh connection; Ok when the status is 200 and the body complete.
async fn get(addr: SocketAddr, path: &str, token: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::with_capacity(64 * 1024);
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    if raw.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned())
    }
}

/// Open-loop HTTP load: `rate` requests/s for `secs`.
async fn http_load(
    addr: SocketAddr,
    path: &str,
    token: &str,
    rate: f64,
    secs: f64,
) -> (Vec<Duration>, usize) {
    let n = (rate * secs) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let path = path.to_owned();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), get(addr, &path, &token)).await;
            (
                r.map_err(|_| "timeout".to_owned()).and_then(|r| r),
                at.elapsed(),
            )
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((Ok(()), d)) => lat.push(d),
            Ok((Err(e), _)) => {
                if errors == 0 {
                    eprintln!("first error: {e}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    (lat, errors)
}

/// DNS queries at `qps` for random client names until `stop`; returns latencies and losses.
fn dns_load(
    dns: SocketAddr,
    clients: usize,
    qps: f64,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut lat = Vec::new();
    let mut lost = 0;
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut i: u64 = 0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    while !stop.load(Ordering::Relaxed) {
        let at = start + Duration::from_secs_f64(i as f64 / qps);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("c{}.c.vpn.example.net", seed as usize % clients);
        let id = i as u16;
        let q = query(id, &name, 1);
        let sent = Instant::now();
        sock.send_to(&q.0, dns).unwrap();
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                    lat.push(sent.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
        i += 1;
    }
    (lat, lost)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(if bench { 20.0 } else { 1.0 });
    let rate: f64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(if bench { 500.0 } else { 50.0 });
    let clients = if bench { 10_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(common::test_db());
    rt.block_on(inventory(&db.url, clients));
    let token = cli(&db.url, &["token", "create", "--name", "bench"])
        .trim()
        .to_owned();
    let server = Server::start(
        &config(NO_RRL, "").replace("udp_workers = 2", "udp_workers = 1"),
        &["--database-url", &db.url],
    );
    println!(
        "api_load: {clients} clients, 20 appliances, {rate} requests/s for {secs} s per phase{}",
        if bench {
            ""
        } else {
            " (smoke run; `cargo bench --bench api_load` measures)"
        }
    );
    let dns_phase = |f: &dyn Fn() -> Option<(Vec<Duration>, usize)>| {
        let stop = Arc::new(AtomicBool::new(false));
        let dns = server.dns;
        let s = stop.clone();
        let q = std::thread::spawn(move || dns_load(dns, clients, 1000.0, s));
        let http = f();
        if http.is_none() {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        stop.store(true, Ordering::Relaxed);
        (http, q.join().unwrap())
    };
    // Warm up: connections, caches, the token verdict.
    rt.block_on(http_load(
        server.admin,
        "/api/v1/appliances",
        &token,
        20.0,
        1.0,
    ));
    let (_, (lat, lost)) = dns_phase(&|| None);
    report("DNS alone (1000 qps)", lat, lost);
    for path in ["/api/v1/appliances", "/api/v1/clients?limit=100"] {
        let (http, (lat, lost)) =
            dns_phase(&|| Some(rt.block_on(http_load(server.admin, path, &token, rate, secs))));
        let (h, errors) = http.unwrap();
        report(&format!("GET {path}"), h, errors);
        report("  DNS meanwhile (1000 qps)", lat, lost);
        if !bench {
            assert_eq!(errors, 0, "smoke run: API errors");
        }
    }
    server.stop();
}
