//! Helpers for the agent and client-helper tests: inventory set-up, agent configs, an
//! in-process agent, a tiny DNS responder, a boringtun test client, network namespaces.
#![allow(dead_code)]

pub mod flood;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use shadowsteer::agent::{self, AgentHandle};
use shadowsteer::config::AgentConfig;
use shadowsteer::domain::{PeerIndex, PublicKey, SecretKey};
use shadowsteer::tunnel::packet::{self, UdpAddr};
use shadowsteer::tunnel::peer::{Action, Peer, PeerSpec};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::{TestDb, appliance_add, client_add, run_cli};

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a private key file (mode 0600) and returns its path.
pub fn key_file(dir: &Path, name: &str, key: &SecretKey) -> PathBuf {
    let path = dir.join(name);
    shadowsteer::keyfile::write_secret_key(&path, key).expect("write key");
    path
}

/// Two appliances (eu-1 in eu, us-1 in us) sharing `service`, and `n` clients with primary
/// eu-1 and shadow us-1. Returns the clients' keys and tunnel addresses.
pub fn inventory(db: &TestDb, service: &SecretKey, n: usize) -> Vec<(String, SecretKey, IpAddr)> {
    appliance_pair(db, service, "192.0.2.1:51820", "192.0.2.2:51820");
    (0..n)
        .map(|i| add_client(db, &format!("client{i}"), i + 2, "eu-1", "us-1"))
        .collect()
}

/// The two appliances the agent tests steer between: eu-1 (region eu) at `eu_endpoint` and
/// us-1 (region us) at `us_endpoint`, sharing `service`'s key.
pub fn appliance_pair(db: &TestDb, service: &SecretKey, eu_endpoint: &str, us_endpoint: &str) {
    let public = service.public_key().to_base64();
    for (id, region, endpoint) in [("eu-1", "eu", eu_endpoint), ("us-1", "us", us_endpoint)] {
        let (code, _, err) = run_cli(db, &appliance_add(id, region, endpoint, &public));
        assert_eq!(code, 0, "{err}");
    }
}

/// Registers one client; returns its id, key and tunnel address.
pub fn add_client(
    db: &TestDb,
    id: &str,
    host: usize,
    primary: &str,
    shadow: &str,
) -> (String, SecretKey, IpAddr) {
    let ip: IpAddr = Ipv4Addr::new(10, 77, (host / 250) as u8, (host % 250) as u8 + 2).into();
    add_client_ip(db, id, ip, primary, shadow)
}

/// Registers one client with a given tunnel address.
pub fn add_client_ip(
    db: &TestDb,
    id: &str,
    ip: IpAddr,
    primary: &str,
    shadow: &str,
) -> (String, SecretKey, IpAddr) {
    let key = SecretKey::generate();
    let (public, ip_text) = (key.public_key().to_base64(), ip.to_string());
    let (code, _, err) = run_cli(db, &client_add(id, &public, &ip_text, primary, shadow));
    assert_eq!(code, 0, "{err}");
    (id.to_owned(), key, ip)
}

/// An agent configuration file's text.
pub fn agent_toml(appliance: &str, listen: &str, key: &Path, db_url: &str, extra: &str) -> String {
    format!(
        r#"
[agent]
appliance = "{appliance}"
listen = "{listen}"
key_file = "{}"
inside = "echo"
database_url = "{db_url}"

[tunnel]
network = "10.77.0.0/16"

[telemetry]
interval = "1s"
checkpoint_interval = "1s"
{extra}
"#,
        key.display()
    )
}

/// An agent running in this process.
pub struct RunningAgent {
    pub handle: AgentHandle,
    pub tasks: JoinSet<()>,
    pub shutdown: CancellationToken,
}

impl RunningAgent {
    pub async fn start(text: &str, dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let config: AgentConfig =
            shadowsteer::config::load(&path).unwrap_or_else(|e| panic!("bad test config: {e:?}"));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let handle = agent::start(config, &mut tasks, shutdown.clone())
            .await
            .expect("agent starts");
        Self {
            handle,
            tasks,
            shutdown,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.device.local_addr
    }

    /// Stops every task and checks none of them panicked.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r.expect("agent task panicked");
        }
    }
}

/// A WireGuard client on boringtun with its own UDP socket, for driving the agent.
pub struct TestClient {
    pub peer: Peer,
    pub socket: UdpSocket,
    pub own_ip: IpAddr,
    pub server: SocketAddr,
    buf: Vec<u8>,
    rx: Vec<u8>,
}

impl TestClient {
    pub async fn new(
        key: &SecretKey,
        service: PublicKey,
        own_ip: IpAddr,
        server: SocketAddr,
    ) -> Self {
        Self::bound(key, service, own_ip, server, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A client whose socket is bound to `bind` (an address the agents can reach).
    pub async fn bound(
        key: &SecretKey,
        service: PublicKey,
        own_ip: IpAddr,
        server: SocketAddr,
        bind: SocketAddr,
    ) -> Self {
        let mut peer = Peer::new(
            key,
            PeerSpec {
                index: PeerIndex::new(1).unwrap(),
                public_key: service,
                tunnel_ip: "10.77.0.1".parse().unwrap(),
                keepalive: None,
            },
        );
        peer.set_endpoint(server);
        let socket = UdpSocket::bind(bind).await.unwrap();
        Self {
            peer,
            socket,
            own_ip,
            server,
            buf: vec![0u8; 65_600],
            rx: vec![0u8; 65_600],
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn send_action(&mut self, first_is_send: Option<Vec<u8>>) {
        if let Some(b) = first_is_send {
            self.socket.send_to(&b, self.server).await.unwrap();
        }
        while let Action::Send(b) = self.peer.flush(&mut self.buf) {
            let b = b.to_vec();
            self.socket.send_to(&b, self.server).await.unwrap();
        }
    }

    /// Handshakes with the server (retrying) until a session exists.
    pub async fn handshake(&mut self) {
        let outcome = self.handshake_within(Duration::from_secs(10)).await;
        assert!(
            outcome.took.is_some(),
            "no handshake with {}: {outcome:?}",
            self.server
        );
    }

    /// Runs a new handshake: an initiation every 200 ms, and at once after a cookie reply (the
    /// next one carries MAC2; boringtun would wait for its 5 s retransmit), until a session
    /// newer than the current one exists or `limit` has passed. Retrying often matters only
    /// when a flood fills the listener's socket: then the kernel drops most datagrams, ours
    /// included, and each attempt is a draw (one in five got in on a 2-core CI machine).
    pub async fn handshake_within(&mut self, limit: Duration) -> HandshakeOutcome {
        let before = self.peer.receiver_index();
        let started = Instant::now();
        let mut outcome = HandshakeOutcome::default();
        let mut next = started;
        while started.elapsed() < limit {
            if Instant::now() >= next {
                let init = match self.peer.force_handshake(&mut self.buf) {
                    Action::Send(b) => Some(b.to_vec()),
                    _ => None,
                };
                self.send_action(init).await;
                outcome.initiations += 1;
                if outcome.cookies == 0 {
                    outcome.before_cookie += 1;
                }
                next = Instant::now() + Duration::from_millis(200);
            }
            let wait = next.saturating_duration_since(Instant::now());
            let Ok(Ok((n, src))) =
                tokio::time::timeout(wait, self.socket.recv_from(&mut self.rx)).await
            else {
                continue;
            };
            if n == 64 && self.rx[0] == 3 {
                outcome.cookies += 1;
                next = Instant::now();
            }
            self.handle(n, src).await;
            if self.peer.receiver_index() != before {
                outcome.took = Some(started.elapsed());
                break;
            }
        }
        outcome
    }

    /// Receives and handles one datagram; returns a decrypted inside packet if it was one.
    pub async fn receive_one(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let Ok(Ok((n, src))) =
            tokio::time::timeout(wait, self.socket.recv_from(&mut self.rx)).await
        else {
            return None;
        };
        self.handle(n, src).await
    }

    /// Handles the datagram of `n` bytes in `self.rx`; returns a decrypted inside packet.
    async fn handle(&mut self, n: usize, src: SocketAddr) -> Option<Vec<u8>> {
        let mut inside = None;
        let reply =
            match self
                .peer
                .handle_datagram(Instant::now(), src, &self.rx[..n], &mut self.buf)
            {
                Action::Send(b) => Some(b.to_vec()),
                Action::Inside(p) => {
                    inside = Some(p.to_vec());
                    None
                }
                _ => None,
            };
        self.send_action(reply).await;
        inside
    }

    /// Sends one UDP datagram through the tunnel.
    pub async fn send_udp(&mut self, dst: SocketAddr, sport: u16, payload: &[u8]) {
        let mut ip = vec![0u8; payload.len() + 64];
        let n = packet::build_udp(
            &mut ip,
            UdpAddr {
                ip: self.own_ip,
                port: sport,
            },
            UdpAddr {
                ip: dst.ip(),
                port: dst.port(),
            },
            payload,
        )
        .unwrap();
        let out = match self.peer.encapsulate(&ip[..n], &mut self.buf) {
            Action::Send(b) => Some(b.to_vec()),
            _ => None,
        };
        self.send_action(out).await;
    }

    /// Sends `payload` to the echo port and waits for the echo.
    pub async fn echo(&mut self, payload: &[u8]) -> bool {
        self.send_udp("10.77.0.1:7".parse().unwrap(), 5555, payload)
            .await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Some(p) = self.receive_one(Duration::from_millis(200)).await
                && let Some(u) = packet::parse_udp(&p)
                && u.payload == payload
            {
                return true;
            }
        }
        false
    }
}

/// How a [`TestClient::handshake_within`] went.
#[derive(Debug, Default, Clone, Copy)]
pub struct HandshakeOutcome {
    /// Time from the first initiation to the session, if one came.
    pub took: Option<Duration>,
    /// Initiations sent.
    pub initiations: u32,
    /// Cookie replies received.
    pub cookies: u32,
    /// Initiations sent before the first cookie reply came (each may earn one: under load
    /// the reply can take longer than the 200 ms between initiations).
    pub before_cookie: u32,
}

/// A DNS responder answering A queries for one name with a settable address and TTL.
pub struct TestDns {
    pub addr: SocketAddr,
    pub answer: Arc<Mutex<(Ipv4Addr, u32)>>,
    /// The answer of `standby.<name>` (none: NODATA, as for a client without a standby).
    pub standby: Arc<Mutex<Option<Ipv4Addr>>>,
    pub queries: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start(socket: UdpSocket, name: &str, ip: Ipv4Addr, ttl: u32) -> Self {
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((ip, ttl)));
        let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let standby = Arc::new(Mutex::new(None));
        let (a, q, sb) = (
            Arc::clone(&answer),
            Arc::clone(&queries),
            Arc::clone(&standby),
        );
        let want = format!("{}.", name.trim_end_matches('.')).to_ascii_lowercase();
        let want_standby = format!("standby.{want}");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut reply = query.clone();
                reply.metadata.message_type = MessageType::Response;
                reply.metadata.authoritative = true;
                if let Some(qq) = query.queries.first()
                    && qq.name().to_ascii().to_ascii_lowercase() == want
                    && qq.query_type() == RecordType::A
                {
                    let (ip, ttl) = *a.lock().unwrap();
                    reply
                        .answers
                        .push(Record::from_rdata(qq.name().clone(), ttl, RData::A(A(ip))));
                }
                if let Some(qq) = query.queries.first()
                    && qq.name().to_ascii().to_ascii_lowercase() == want_standby
                    && qq.query_type() == RecordType::A
                    && let Some(ip) = *sb.lock().unwrap()
                {
                    let ttl = a.lock().unwrap().1;
                    reply
                        .answers
                        .push(Record::from_rdata(qq.name().clone(), ttl, RData::A(A(ip))));
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Self {
            addr,
            answer,
            standby,
            queries,
            task,
        }
    }

    pub fn set(&self, ip: Ipv4Addr) {
        self.answer.lock().unwrap().0 = ip;
    }

    /// Sets the answer of `standby.<name>`.
    pub fn set_standby(&self, ip: Option<Ipv4Addr>) {
        *self.standby.lock().unwrap() = ip;
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether this process may create network namespaces and TUN devices.
pub fn can_netns() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/net/tun").exists()
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a command and panics with its output when it fails.
pub fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the root namespace by a veth pair:
/// root side `10.213.<n>.1/30`, namespace side `10.213.<n>.2/30`. Removed on drop.
pub struct Netns {
    pub name: String,
    pub veth: String,
    pub root_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    pub fn create(tag: &str, n: u8) -> Self {
        let id = std::process::id() % 100_000;
        let name = format!("ss-{tag}-{id}");
        let veth = format!("ssv{tag}{id}");
        let peer = format!("ssp{tag}{id}");
        let root_ip = Ipv4Addr::new(10, 213, n, 1);
        let ns_ip = Ipv4Addr::new(10, 213, n, 2);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &veth])
            .output();
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &name]);
        sh(&["ip", "addr", "add", &format!("{root_ip}/30"), "dev", &veth]);
        sh(&["ip", "link", "set", &veth, "up"]);
        sh(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &peer,
        ]);
        sh(&["ip", "-n", &name, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            veth,
            root_ip,
            ns_ip,
        }
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates stay in the namespace).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace descriptor affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// /etc/hosts for `ip netns exec` in this namespace.
    pub fn hosts(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/hosts"), text).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// A child process killed on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
