//! The data plane with two workers (two `SO_REUSEPORT` sockets on one port) against stock
//! `wireguard-go` clients, each in a network namespace of its own (so each has its own source
//! address and port, and the kernel's 4-tuple hash spreads them over the sockets):
//!
//! - several clients complete handshakes and echo traffic, and both workers carry some of it;
//! - a client whose handshake went to one worker and whose data, after it changes its source
//!   port (roaming), lands on the other keeps its session: the peers are shared.
//!
//! The kernel keys its hash at random per boot, so which socket a 4-tuple meets cannot be
//! chosen in advance: where the test needs a client on the other worker it moves the client
//! to another source port until the per-worker counters show it there (each move is a coin
//! toss; 24 moves all failing is a one-in-16-million event).
//!
//! Needs root, /dev/net/tun, `ip`, `wireguard-go` and `wg`; skips loudly otherwise.

mod agent_support;
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_support::{Child, Netns, RunningAgent, can_netns, have, key_file, sh, wait_for};
use shadowsteer::domain::SecretKey;
use shadowsteer::tunnel::stats::DeviceStats;

/// The agent's echo address (first host of the agent_support network 10.77.0.0/16).
const ECHO: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 7);

/// Most source-port moves before a test gives up looking for the other worker.
const MOVES: u16 = 24;

fn skip_reason() -> Option<String> {
    if !can_netns() {
        return Some("needs root and /dev/net/tun (CI runs as root)".into());
    }
    for tool in ["ip", "wireguard-go", "wg"] {
        if !have(tool) {
            return Some(format!(
                "{tool} not found; install wireguard-go, wireguard-tools, iproute2"
            ));
        }
    }
    None
}

/// A stock client: `wireguard-go` in a namespace of its own.
struct Client {
    /// Stopped before the namespace goes.
    _wg: Child,
    ns: Netns,
    ifname: String,
}

impl Client {
    /// Starts `wireguard-go` in a new namespace (`10.213.<n>.0/30`), talking to the agent on
    /// `port` from source port `sport`.
    async fn start(
        n: u8,
        dir: &Path,
        key: &SecretKey,
        ip: IpAddr,
        service: &SecretKey,
        port: u16,
        sport: u16,
    ) -> Self {
        let ns = Netns::create(&format!("mc{n}"), n);
        let ifname = format!("smc{n}{}", std::process::id() % 100_000);
        let wg = Child(
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns.name, "wireguard-go", "-f", &ifname])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait_for(Duration::from_secs(10), "wireguard-go socket", || async {
            Path::new(&sock).exists().then_some(())
        })
        .await;
        let kf = key_file(dir, &format!("client{n}.key"), key);
        let endpoint = format!("{}:{port}", ns.root_ip);
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns.name.as_str()];
            all.extend_from_slice(args);
            sh(&all);
        };
        exec(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            kf.to_str().unwrap(),
            "listen-port",
            &sport.to_string(),
            "peer",
            &service.public_key().to_base64(),
            "endpoint",
            &endpoint,
            "allowed-ips",
            "10.77.0.1/32",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            &ifname,
        ]);
        sh(&["ip", "-n", &ns.name, "link", "set", &ifname, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "route",
            "add",
            "10.77.0.1/32",
            "dev",
            &ifname,
        ]);
        Self {
            _wg: wg,
            ns,
            ifname,
        }
    }

    /// Moves the client's WireGuard socket to source port `sport` (roaming, as after a NAT
    /// rebinding); the session stays.
    fn move_to(&self, sport: u16) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns.name,
            "wg",
            "set",
            &self.ifname,
            "listen-port",
            &sport.to_string(),
        ]);
    }

    /// `wg show <if> latest-handshakes`: when the client's current session began.
    fn latest_handshake(&self) -> String {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "wg",
                "show",
                &self.ifname,
                "latest-handshakes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// UDP echo through the tunnel: how many of `count` datagrams came back.
    fn echo(&self, count: usize) -> usize {
        self.ns.enter(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut got = 0;
            for i in 0..count {
                let msg = format!("multicore-{i}");
                // Before the route exists sending fails: a lost echo.
                if sock.send_to(msg.as_bytes(), ECHO).is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut buf = [0u8; 256];
                while Instant::now() < deadline {
                    if let Ok((n, _)) = sock.recv_from(&mut buf)
                        && &buf[..n] == msg.as_bytes()
                    {
                        got += 1;
                        break;
                    }
                }
            }
            got
        })
    }
}

/// Which workers' counters grew while `f` ran.
fn workers_used(stats: &DeviceStats, f: impl FnOnce()) -> Vec<usize> {
    let before = stats.worker_rx();
    f();
    let after = stats.worker_rx();
    before
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (b, a))| a > b)
        .map(|(i, _)| i)
        .collect()
}

async fn two_thread_agent(
    db: &common::TestDb,
    dir: &Path,
    service: &SecretKey,
    peers: u64,
) -> RunningAgent {
    let kf = key_file(dir, "service.key", service);
    let text = agent_support::agent_toml("eu-1", "0.0.0.0:0", &kf, &db.url, "")
        .replace("[tunnel]\n", "[tunnel]\nthreads = 2\n");
    let agent = RunningAgent::start(&text, dir, "agent").await;
    let stats = std::sync::Arc::clone(&agent.handle.device.stats);
    assert_eq!(stats.workers.load(Ordering::Relaxed), 2);
    wait_for(Duration::from_secs(20), "roster loaded", || async {
        (stats.peers.load(Ordering::Relaxed) == peers).then_some(())
    })
    .await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_stock_clients_spread_over_two_workers() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: agent_multicore: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let clients = agent_support::inventory(&db, &service, 4);
    let agent = two_thread_agent(&db, dir.path(), &service, 4).await;
    let port = agent.addr().port();
    let stats = std::sync::Arc::clone(&agent.handle.device.stats);

    let mut running = Vec::new();
    for (i, (_, key, ip)) in clients.iter().enumerate() {
        let n = 41 + i as u8;
        running.push(
            Client::start(
                n,
                dir.path(),
                key,
                *ip,
                &service,
                port,
                40_000 + u16::from(n),
            )
            .await,
        );
    }
    // Every client completes its handshake and gets its echoes back, all at once.
    let got: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = running.iter().map(|c| s.spawn(|| c.echo(50))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(got.iter().all(|g| *g >= 48), "echoes per client: {got:?}");
    let sessions = std::sync::Arc::clone(&stats);
    wait_for(Duration::from_secs(5), "four live sessions", || {
        let s = std::sync::Arc::clone(&sessions);
        async move { (s.sessions.load(Ordering::Relaxed) == 4).then_some(()) }
    })
    .await;

    // Both workers carry traffic. If the hash put every client on one socket, move the last
    // client until it lands on the other one.
    let mut per_worker = stats.worker_rx();
    let mut moves = 0;
    while per_worker.iter().filter(|n| **n > 0).count() < 2 {
        moves += 1;
        assert!(
            moves <= MOVES,
            "every source port met one worker: {per_worker:?}"
        );
        let last = &running[running.len() - 1];
        last.move_to(41_000 + moves);
        assert!(last.echo(5) >= 4, "echo after moving the client");
        per_worker = stats.worker_rx();
    }
    assert_eq!(per_worker.len(), 2);
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "datagrams per worker: {per_worker:?}"
    );
    assert_eq!(stats.snapshot().handshake_failures, 0);
    drop(running);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_worker_carries_data_on_the_other() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: agent_multicore: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let clients = agent_support::inventory(&db, &service, 1);
    let agent = two_thread_agent(&db, dir.path(), &service, 1).await;
    let port = agent.addr().port();
    let stats = std::sync::Arc::clone(&agent.handle.device.stats);
    let (_, key, ip) = &clients[0];
    let client = Client::start(46, dir.path(), key, *ip, &service, port, 42_000).await;

    // The handshake and the first data: one 4-tuple, so one worker.
    let mut got = 0;
    let first = workers_used(&stats, || got = client.echo(5));
    assert!(got >= 4, "first echoes: {got}");
    assert_eq!(first.len(), 1, "one source port met workers {first:?}");
    let handshake = client.latest_handshake();
    assert!(!handshake.ends_with("\t0"), "no handshake: {handshake}");

    // Roam until the data lands on the other worker; the session made on the first worker
    // decrypts it there, with no new handshake.
    let mut moves = 0;
    loop {
        moves += 1;
        assert!(moves <= MOVES, "every source port met worker {first:?}");
        client.move_to(42_000 + moves);
        let mut got = 0;
        let used = workers_used(&stats, || got = client.echo(5));
        assert!(
            got >= 4,
            "echoes after moving to port {}: {got}",
            42_000 + moves
        );
        if used.len() == 1 && used != first {
            break;
        }
    }
    assert_eq!(
        client.latest_handshake(),
        handshake,
        "the client kept its session"
    );
    assert_eq!(stats.snapshot().handshake_failures, 0);
    drop(client);
    agent.stop().await;
}
