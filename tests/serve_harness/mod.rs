//! Runs `shadowsteer serve` as a child process on free ports against a test database, and
//! talks DNS to it over real UDP and TCP sockets. Queries are built by hand (so tests can also
//! send malformed ones); responses are parsed with hickory-proto.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use shadowsteer::domain::{ApplianceHealth, Fraction, PathProbe, ProbeTarget};

use crate::common::{appliance_add, client_add};

/// A test configuration: zone `vpn.example.net`, short TTLs and hold-down, no rate limiting
/// unless `extra` (appended TOML at top level of `[dns]`...) says otherwise.
pub fn config(dns_extra: &str, steering: &str) -> String {
    format!(
        r#"
[server]
region = "eu"
name = "test-steer"
reconcile_interval = "1s"

[dns]
listen = ["127.0.0.1:0"]
udp_workers = 2
{dns_extra}

[[dns.zones]]
name = "vpn.example.net"
steered_ttl = "10s"
static_ttl = "1h"
[dns.zones.soa]
negative_ttl = "30s"
[[dns.zones.ns]]
name = "ns1"
addresses = ["127.0.0.1"]
[[dns.zones.records]]
name = "@"
type = "TXT"
data = "\"shadowsteer test zone\""
[[dns.zones.records]]
name = "big"
type = "TXT"
data = "\"{a}\" \"{a}\" \"{a}\""

[steering]
{steering}
"#,
        a = "x".repeat(250)
    )
}

/// Default `[dns]` extras: rate limiting off (tests query fast from one address).
pub const NO_RRL: &str = "[dns.rate_limit]\nresponses_per_second = 0\n";

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Everything it logged so far.
    pub log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

fn field(line: &str, marker: &str) -> Option<SocketAddr> {
    if !line.contains(marker) {
        return None;
    }
    let at = line.find("addr=")? + 5;
    line[at..].split_whitespace().next()?.parse().ok()
}

impl Server {
    /// Starts `serve` with `config` and the given database args; waits until `/readyz` is OK.
    pub fn start(config: &str, db_args: &[&str]) -> Self {
        Self::start_env(config, db_args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub fn start_env(config: &str, db_args: &[&str], env: &[(&str, &str)]) -> Self {
        let server = Self::spawn(config, db_args, env);
        let deadline = Instant::now() + Duration::from_secs(120);
        while http_get(server.admin, "/readyz", None).map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "serve not ready; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts `serve` and returns as soon as it has logged its addresses, ready or not.
    pub fn spawn(config: &str, db_args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("steering.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowsteer"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args([
                "--dns-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(db_args)
            .env_remove("DATABASE_URL")
            // State such as the saved snapshot goes to this server's own directory.
            .env("SHADOWSTEER_DATA_DIR", dir.path())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn shadowsteer serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut dns = None;
            let mut admin = None;
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                dns = dns.or_else(|| field(&line, "DNS listening"));
                admin = admin.or_else(|| field(&line, "admin listening"));
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
                if let (Some(d), Some(a), false) = (dns, admin, sent) {
                    let _ = tx.send((d, a));
                    sent = true;
                }
            }
        });
        let (dns, admin) = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "serve did not report its addresses; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child: Some(child),
            dns,
            admin,
            log,
            _dir: dir,
        }
    }

    /// The process id (for fault injection).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the process with SIGKILL: no clean-up of any kind.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "serve did not stop within 30 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal blocking HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    http(addr, "GET", path, bearer, None)
}

/// A minimal blocking HTTP/1.1 request with an optional JSON body; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = json
        .map(|j| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{j}",
                j.len()
            )
        })
        .unwrap_or_else(|| "Content-Length: 0\r\n\r\n".into());
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n{body}"
    )
    .ok()?;
    // Read to the end of the body: by Content-Length when given (some servers keep the
    // connection open despite `Connection: close`), else to end of stream.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = std::io::Read::read(&mut s, &mut buf).ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A metric's value from `/metrics` text (first line starting with `series`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Checks that every series of `/metrics` text belongs to a family with `# HELP` and `# TYPE`.
pub fn assert_described(text: &str) {
    let described = |kind: &str, name: &str| text.contains(&format!("# {kind} {name} "));
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| described("TYPE", f)))
            .unwrap_or(name);
        assert!(
            described("TYPE", family) && described("HELP", family),
            "{family} lacks HELP or TYPE in:\n{text}"
        );
    }
}

/// A query in wire form.
#[derive(Clone)]
pub struct Query(pub Vec<u8>);

/// Builds a query for `name`/`qtype` with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Query {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    Query(p)
}

impl Query {
    /// Adds an OPT record (`size`, `version`), with an ECS option and any raw extra options.
    pub fn edns(
        mut self,
        size: u16,
        version: u8,
        ecs: Option<(&str, u8)>,
        extra_options: &[u8],
    ) -> Self {
        self.0[11] = 1;
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
        opts.extend_from_slice(extra_options);
        self.0.extend_from_slice(&[0, 0, 41]);
        self.0.extend_from_slice(&size.to_be_bytes());
        self.0.extend_from_slice(&[0, version, 0, 0]);
        self.0.extend_from_slice(&(opts.len() as u16).to_be_bytes());
        self.0.extend_from_slice(&opts);
        self
    }
}

/// Sends raw bytes over UDP; returns the raw answer, or `None` after `wait` without one.
pub fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(bytes, server).expect("send");
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Sends a query over UDP (retrying on loss) and parses the answer.
pub fn udp(server: SocketAddr, q: &Query) -> Message {
    for _ in 0..5 {
        if let Some(bytes) = udp_raw(server, &q.0, Duration::from_secs(2)) {
            return Message::from_vec(&bytes).expect("parse answer");
        }
    }
    panic!("no UDP answer from {server}");
}

/// Sends a query over TCP and parses the answer.
pub fn tcp(server: SocketAddr, q: &Query) -> Message {
    let mut s =
        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frame = (q.0.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q.0);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    std::io::Read::read_exact(&mut s, &mut len).expect("read length");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    std::io::Read::read_exact(&mut s, &mut body).expect("read body");
    Message::from_vec(&body).expect("parse answer")
}

/// A/AAAA addresses in the answer section.
pub fn addrs(m: &Message) -> Vec<String> {
    rec_addrs(&m.answers)
}

/// A/AAAA addresses in a list of records.
pub fn rec_addrs(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// The address `name` answers with over UDP (empty if none).
pub fn answer(server: SocketAddr, name: &str) -> Vec<String> {
    addrs(&udp(server, &query(rand_id(), name, 1)))
}

/// Every address `name` answered with, asked every 50 ms for `d` (on a blocking thread).
pub async fn answers_during(
    server: SocketAddr,
    name: &'static str,
    d: Duration,
) -> std::collections::BTreeSet<String> {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        while start.elapsed() < d {
            seen.extend(answer(server, name));
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
    .await
    .expect("the answering thread panicked")
}

/// Waits (on a blocking thread) until `name` answers with exactly `want`, at most `timeout`;
/// returns the time it took.
pub async fn answer_becomes(
    server: SocketAddr,
    name: &'static str,
    want: &'static str,
    timeout: Duration,
) -> Option<Duration> {
    tokio::task::spawn_blocking(move || eventually(timeout, || answer(server, name) == [want]))
        .await
        .expect("the answering thread panicked")
}

/// A query id.
pub fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes; returns the time it took.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A random WireGuard public key.
pub fn key() -> String {
    shadowsteer::domain::SecretKey::generate()
        .public_key()
        .to_base64()
}

/// Runs the CLI against `url`; panics with its output on failure; returns stdout.
pub fn cli(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shadowsteer");
    assert!(
        out.status.success(),
        "shadowsteer {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two appliances in two regions and a client `alice` between them:
/// eu-1 192.0.2.1:51820 (primary), us-1 192.0.2.2:51821 (shadow).
pub fn basic_inventory(url: &str) {
    cli(url, &appliance_add("eu-1", "eu", "192.0.2.1:51820", &key()));
    cli(url, &appliance_add("us-1", "us", "192.0.2.2:51821", &key()));
    cli(
        url,
        &client_add("alice", &key(), "10.77.0.2", "eu-1", "us-1"),
    );
}

/// Whether `kdig` is installed (tests that use it skip loudly without it).
pub fn have_kdig() -> bool {
    let ok = Command::new("kdig")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: kdig not found; install knot-dnsutils");
    }
    ok
}

/// Runs kdig against `server` with `args`.
pub fn kdig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("run kdig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One second of calm telemetry of `appliance` (region from its id) at `ts`.
pub fn calm(appliance: &str, ts: chrono::DateTime<chrono::Utc>) -> (ApplianceHealth, PathProbe) {
    let region = if appliance.starts_with("eu") {
        "eu"
    } else {
        "us"
    };
    (
        ApplianceHealth {
            region: region.parse().unwrap(),
            appliance: appliance.parse().unwrap(),
            ts,
            cpu: Fraction::saturating(0.3),
            mem: Fraction::saturating(0.45),
            bw_in_bps: 1_000_000,
            bw_out_bps: 1_000_000,
            bw_util: Fraction::saturating(0.4),
            sessions: 100,
            handshake_failures: 0,
            packets_dropped: 0,
        },
        PathProbe {
            region: region.parse().unwrap(),
            src: appliance.parse().unwrap(),
            // Towards itself, as `telemetry import` stores them: a probe's row carries its
            // source's region, and the scorer files the destination under it.
            dst: ProbeTarget::Appliance(appliance.parse().unwrap()),
            ts,
            rtt_ms: Some(20.0),
            jitter_ms: Some(1.0),
            loss: Fraction::saturating(0.0),
            samples: 5,
        },
    )
}

/// Inserts calm telemetry of `appliances` for each second of `[from, to)`.
pub async fn insert_calm(
    pool: &sqlx::PgPool,
    appliances: &[&str],
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) {
    insert_seconds(pool, from, to, |ts| {
        appliances.iter().map(|a| calm(a, ts)).collect()
    })
    .await;
}

/// Stand-in for the agents until `stop`: every 250 ms, `write(from, to)` for the whole seconds
/// completed since the last call, starting at `start`.
pub fn feed_seconds<F, Fut>(
    start: chrono::DateTime<chrono::Utc>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut write: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut from = start;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let whole = chrono::Duration::seconds((chrono::Utc::now() - from).num_seconds());
            if whole.is_zero() {
                continue;
            }
            write(from, from + whole).await;
            from += whole;
        }
    })
}

/// Inserts, for each second `ts` of `[from, to)`, the telemetry `second(ts)` gives.
pub async fn insert_seconds(
    pool: &sqlx::PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    mut second: impl FnMut(chrono::DateTime<chrono::Utc>) -> Vec<(ApplianceHealth, PathProbe)>,
) {
    let (mut health, mut probes) = (Vec::new(), Vec::new());
    let mut ts = from;
    while ts < to {
        for (h, p) in second(ts) {
            health.push(h);
            probes.push(p);
        }
        ts += chrono::Duration::seconds(1);
    }
    shadowsteer::store::telemetry::insert_health(pool, &health)
        .await
        .unwrap();
    shadowsteer::store::telemetry::insert_probes(pool, &probes)
        .await
        .unwrap();
}
