//! Staging for takeover tests with real WireGuard: a router namespace ("hub") joining member
//! namespaces (client, appliances), a database relay from the root namespace, agents as
//! processes in namespaces, a numbered probe stream, and stock `wireguard-go`.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent_support::{Child, can_netns, have, key_file, sh, wait_for};
use crate::common;
use shadowsteer::domain::SecretKey;

pub fn skip_reason() -> Option<String> {
    if !can_netns() {
        return Some("needs root and network namespaces".into());
    }
    for tool in ["ip", "wireguard-go", "wg"] {
        if !have(tool) {
            return Some(format!(
                "{tool} not found; install wireguard-go, wireguard-tools"
            ));
        }
    }
    None
}

pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "wg_takeover cannot run under CI: {why}"
    );
    eprintln!("SKIPPED: wg_takeover: {why}");
}

/// The router namespace and its members. Member `k` has `10.214.k.2/24`, the hub `10.214.k.1`.
pub struct Stage {
    /// One stage at a time per test binary: stages share the root namespace's route and
    /// address for 10.214.0.0/16.
    _turn: std::sync::MutexGuard<'static, ()>,
    pub tag: String,
    hub: String,
    members: Vec<String>,
    root_veth: String,
}

pub const WG_PORT: u16 = 51820;

impl Stage {
    pub fn new(names: &[&str]) -> Self {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let tag = format!("{}", std::process::id() % 100_000);
        let hub = format!("sth-{tag}");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &hub])
            .output();
        sh(&["ip", "netns", "add", &hub]);
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &hub,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        // The root namespace reaches the hub (for the database relay) over 10.214.0.0/24.
        let root_veth = format!("str{tag}");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &root_veth])
            .output();
        sh(&[
            "ip", "link", "add", &root_veth, "type", "veth", "peer", "name", "hub0", "netns", &hub,
        ]);
        sh(&["ip", "addr", "add", "10.214.0.1/24", "dev", &root_veth]);
        sh(&["ip", "link", "set", &root_veth, "up"]);
        sh(&[
            "ip",
            "-n",
            &hub,
            "addr",
            "add",
            "10.214.0.2/24",
            "dev",
            "hub0",
        ]);
        sh(&["ip", "-n", &hub, "link", "set", "hub0", "up"]);
        let _ = std::process::Command::new("ip")
            .args(["route", "del", "10.214.0.0/16"])
            .output();
        sh(&["ip", "route", "add", "10.214.0.0/16", "via", "10.214.0.2"]);
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let k = i + 1;
            let ns = format!("st{name}-{tag}");
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .output();
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let hub_if = format!("hub{k}");
            sh(&[
                "ip", "-n", &hub, "link", "add", &hub_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            sh(&[
                "ip",
                "-n",
                &hub,
                "addr",
                "add",
                &format!("10.214.{k}.1/24"),
                "dev",
                &hub_if,
            ]);
            sh(&["ip", "-n", &hub, "link", "set", &hub_if, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.214.{k}.2/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.214.{k}.1"),
            ]);
            members.push(ns);
        }
        Self {
            _turn: turn,
            tag,
            hub,
            members,
            root_veth,
        }
    }

    pub fn ns(&self, k: usize) -> &str {
        &self.members[k - 1]
    }

    pub fn ip(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, k as u8, 2)
    }

    /// Cuts (or restores) member `k`'s only link.
    pub fn link(&self, k: usize, up: bool) {
        sh(&[
            "ip",
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("hub{k}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Partitions members `a` and `b` from each other (both still reach everyone else).
    pub fn partition(&self, a: usize, b: usize, on: bool) {
        for (x, y) in [(a, b), (b, a)] {
            sh(&[
                "ip",
                "-n",
                &self.hub,
                "rule",
                if on { "add" } else { "del" },
                "from",
                &format!("10.214.{x}.0/24"),
                "to",
                &format!("10.214.{y}.0/24"),
                "prohibit",
            ]);
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for ns in self.members.iter().chain([&self.hub]) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.root_veth])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["route", "del", "10.214.0.0/16"])
            .output();
        let _ = &self.tag;
    }
}

/// A TCP relay in the root namespace so that agents in namespaces reach the test database.
pub async fn db_relay(db_url: &str) -> String {
    let at = db_url.rfind('@').expect("url with host");
    let rest = &db_url[at + 1..];
    let slash = rest.find('/').expect("url with database");
    let target = rest[..slash].to_owned();
    let listener = tokio::net::TcpListener::bind("10.214.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    format!("{}@10.214.0.1:{port}{}", &db_url[..at], &rest[slash..])
}

pub fn agent_text(appliance: &str, k: usize, key: &Path, db_url: &str, extra: &str) -> String {
    format!(
        r#"
[agent]
appliance = "{appliance}"
listen = "{}:{WG_PORT}"
key_file = "{}"
inside = "echo"
database_url = "{db_url}"

[tunnel]
network = "10.77.0.0/16"

[telemetry]
interval = "1s"
checkpoint_interval = "1s"

[takeover]
heartbeat_interval = "50ms"
misses = 4
startup_grace = "1s"
{extra}
"#,
        Stage::ip(k),
        key.display()
    )
}

pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    pub async fn start(stage: &Stage, k: usize, dir: &Path, name: &str, text: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let log = dir.join(format!("{name}.log"));
        // A restart appends to the same log: wait for this run's line, not an earlier run's.
        let loaded_before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("roster loaded")
            .count();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Child(
            std::process::Command::new("ip")
                .args(["netns", "exec", stage.ns(k), common::bin()])
                .args(["agent", "--config", path.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("spawn agent"),
        );
        let agent = Self {
            child: Some(child),
            log,
        };
        agent.wait_log("roster loaded", loaded_before + 1).await;
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_log(&self, needle: &str, times: usize) {
        let log = self.log.clone();
        let needle = needle.to_owned();
        wait_for(Duration::from_secs(20), &needle.clone(), || {
            let log = log.clone();
            let needle = needle.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                (text.matches(needle.as_str()).count() >= times).then_some(())
            }
        })
        .await;
    }

    /// `kill -9` (of `ip netns exec`, which execs the agent: same process).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }
}

/// A numbered probe stream: UDP echo through the tunnel, one packet every 10 ms.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Heard>>,
    sent: Arc<std::sync::atomic::AtomicU32>,
}

/// What a probe's thread heard: when it started, each reply (sequence number, when), when it
/// stopped sending.
type Heard = (Instant, Vec<(u32, Instant)>, Instant);

#[derive(Debug)]
pub struct ProbeReport {
    pub sent: u32,
    pub lost: u32,
    pub longest_gap_ms: u64,
}

impl Probe {
    pub fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let path = format!("/var/run/netns/{ns}");
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace descriptor affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(2)))
                .unwrap();
            let dst: SocketAddr = "10.77.0.1:7".parse().unwrap();
            let mut got = Vec::new();
            let mut seq = 0u32;
            let mut next = Instant::now();
            let mut buf = [0u8; 64];
            let started = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let _ = sock.send_to(&seq.to_be_bytes(), dst);
                    seq += 1;
                    sent2.store(seq, Ordering::Relaxed);
                    next += Duration::from_millis(10);
                }
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && n == 4
                {
                    got.push((
                        u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
                        Instant::now(),
                    ));
                }
            }
            // Late replies.
            let stopped = Instant::now();
            let end = stopped + Duration::from_millis(300);
            while Instant::now() < end {
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && n == 4
                {
                    got.push((
                        u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
                        Instant::now(),
                    ));
                }
            }
            (started, got, stopped)
        });
        Self {
            stop,
            thread: Some(thread),
            sent,
        }
    }

    pub fn finish(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let (started, got, stopped) = self.thread.take().unwrap().join().unwrap();
        let sent = self.sent.load(Ordering::Relaxed);
        let mut seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        // From the start to the first reply, between replies, and from the last reply to the
        // stop: silence at either end is a gap too.
        let times: Vec<Instant> = std::iter::once(started)
            .chain(got.iter().map(|(_, t)| *t))
            .chain(std::iter::once(stopped))
            .collect();
        let mut gap = Duration::ZERO;
        for w in times.windows(2) {
            gap = gap.max(w[1].saturating_duration_since(w[0]));
        }
        ProbeReport {
            sent,
            lost: sent - seqs.len() as u32,
            longest_gap_ms: gap.as_millis() as u64,
        }
    }
}

/// Waits until the probe stream has replies flowing (the tunnel is up).
pub async fn flowing(ns: &str) {
    let ns = ns.to_owned();
    wait_for(
        Duration::from_secs(20),
        "replies through the tunnel",
        || {
            let ns = ns.clone();
            async move {
                let p = Probe::start(&ns);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r = tokio::task::spawn_blocking(move || p.finish())
                    .await
                    .unwrap();
                (r.sent > 0 && r.lost == 0).then_some(())
            }
        },
    )
    .await;
}

pub async fn finish(p: Probe) -> ProbeReport {
    tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap()
}

pub fn start_wireguard_go(
    stage: &Stage,
    k: usize,
    dir: &Path,
    client: &SecretKey,
    service: &SecretKey,
    endpoint: SocketAddr,
) -> Child {
    let ns = stage.ns(k);
    let ifname = format!("stw{}", stage.tag);
    let wg_conf = dir.join("wg.conf");
    let ckf = key_file(dir, "client.key", client);
    let _ = ckf;
    std::fs::write(
        &wg_conf,
        format!(
            "[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = {endpoint}\nAllowedIPs = 10.77.0.0/16\n",
            client.expose_base64().as_str(),
            service.public_key()
        ),
    )
    .unwrap();
    let wg = Child(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", &ifname])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "wireguard-go did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "wg",
        "setconf",
        &ifname,
        wg_conf.to_str().unwrap(),
    ]);
    sh(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        "10.77.0.2/32",
        "dev",
        &ifname,
    ]);
    sh(&["ip", "-n", ns, "link", "set", &ifname, "up"]);
    sh(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "10.77.0.0/16",
        "dev",
        &ifname,
    ]);
    wg
}

/// The client's current endpoint as wireguard-go sees it.
pub fn client_endpoint(stage: &Stage, k: usize) -> String {
    let ifname = format!("stw{}", stage.tag);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            stage.ns(k),
            "wg",
            "show",
            &ifname,
            "endpoints",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Points member `k`'s client at `endpoint`, as a stray authenticated packet would.
pub fn set_client_endpoint(stage: &Stage, k: usize, endpoint: &str) {
    let ifname = format!("stw{}", stage.tag);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", stage.ns(k), "wg", "show", &ifname, "peers"])
        .output()
        .unwrap();
    let peer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!peer.is_empty(), "no peer on {ifname}");
    sh(&[
        "ip",
        "netns",
        "exec",
        stage.ns(k),
        "wg",
        "set",
        &ifname,
        "peer",
        &peer,
        "endpoint",
        endpoint,
    ]);
}

/// What the client helper runs with.
pub struct HelperSpec<'a> {
    /// Where its files go.
    pub dir: &'a Path,
    /// The client's namespace.
    pub ns: &'a str,
    /// The client's key.
    pub key: &'a SecretKey,
    /// The service's public key.
    pub service: shadowsteer::domain::PublicKey,
    /// The steering zone.
    pub zone: &'a str,
    /// DNS server for the per-client name.
    pub resolver: SocketAddr,
    /// More `[client]` settings.
    pub extra: &'a str,
}

/// Runs the client helper (probe mode, 100 packets/s) in the client namespace for `secs`,
/// calling `act` after `act_after`; returns its JSON report.
pub async fn helper_run<F, Fut>(
    spec: &HelperSpec<'_>,
    secs: u64,
    act_after: u64,
    act: F,
) -> serde_json::Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ckf = spec.dir.join("helper.key");
    if !ckf.exists() {
        key_file(spec.dir, "helper.key", spec.key);
    }
    let cfg = spec.dir.join("helper.toml");
    let report = spec.dir.join("helper-report.json");
    let _ = std::fs::remove_file(&report);
    std::fs::write(
        &cfg,
        format!(
            r#"
[client]
id = "alice"
key_file = "{}"
service_public_key = "{}"
zone = "{}"
port = {WG_PORT}
resolver = "{}"
listen = "0.0.0.0:0"
inside = "probe"
{}

[tunnel]
address = "10.77.0.2"
network = "10.77.0.0/16"

[probe]
rate = 100
report_interval = "1s"
loss_timeout = "1s"
"#,
            ckf.display(),
            spec.service,
            spec.zone,
            spec.resolver,
            spec.extra,
        ),
    )
    .unwrap();
    let log = std::fs::File::create(spec.dir.join("helper.log")).unwrap();
    let mut child = Child(
        std::process::Command::new("ip")
            .args(["netns", "exec", spec.ns, common::bin()])
            .args(["client", "run", "--config", cfg.to_str().unwrap()])
            .args([
                "--report",
                report.to_str().unwrap(),
                "--duration",
                &format!("{secs}s"),
            ])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(act_after)).await;
    act().await;
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            assert!(
                status.success(),
                "client helper failed: {}",
                std::fs::read_to_string(spec.dir.join("helper.log")).unwrap_or_default()
            );
            break;
        }
        assert!(Instant::now() < deadline, "client helper did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}
