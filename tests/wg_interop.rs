//! Interoperability with stock WireGuard: the agent (the real binary) in the root namespace,
//! joined by veth to a client namespace running `wireguard-go` configured with `wg` from the
//! output of `shadowsteer client config` (through `wg-quick strip`). Ping (raw ICMP) and UDP
//! echo to the appliance's echo address go through the tunnel; the session appears in
//! `session_state` with the client's endpoint; health rows arrive every second.
//! A second test does the same with the client helper (`shadowsteer client run`) resolving its
//! name through a test DNS server.
//!
//! Needs root, /dev/net/tun, `ip`, `wireguard-go`, `wg` and `wg-quick`; skips loudly otherwise.

mod agent_support;
mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use agent_support::{Child, Netns, TestDns, can_netns, have, key_file, sh, wait_for};
use shadowsteer::domain::SecretKey;
use shadowsteer::tunnel::packet;

fn skip_reason() -> Option<String> {
    if !can_netns() {
        return Some("needs root and /dev/net/tun (CI runs as root)".into());
    }
    for tool in ["ip", "wireguard-go", "wg", "wg-quick"] {
        if !have(tool) {
            return Some(format!(
                "{tool} not found; install wireguard-go, wireguard-tools, iproute2"
            ));
        }
    }
    None
}

fn free_udp_port(ip: Ipv4Addr) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns the agent binary with a config file.
fn spawn_agent(dir: &std::path::Path, text: &str, name: &str) -> Child {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Child(
        std::process::Command::new(common::bin())
            .args(["agent", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn agent"),
    )
}

/// Waits until the agent's log says its roster is loaded.
async fn agent_ready(dir: &std::path::Path, name: &str) {
    let log = dir.join(format!("{name}.log"));
    wait_for(Duration::from_secs(20), "agent roster loaded", || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("roster loaded"))
            .map(|_| ())
    })
    .await;
}

fn agent_config(listen: SocketAddr, key: &std::path::Path, db_url: &str) -> String {
    format!(
        r#"
[agent]
appliance = "eu-1"
listen = "{listen}"
key_file = "{}"
inside = "echo"
database_url = "{db_url}"

[tunnel]
network = "10.77.0.0/24"

[telemetry]
interval = "1s"
checkpoint_interval = "1s"
"#,
        key.display()
    )
}

/// Sends ICMP echo requests from inside `ns` with a raw socket and counts replies.
fn ping(ns: &Netns, dst: Ipv4Addr, count: u16) -> u16 {
    ns.enter(move || {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .expect("raw socket");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let ident = (std::process::id() & 0xffff) as u16;
        let mut got = 0;
        for seq in 0..count {
            // Build a full IP packet with our helper, send only its ICMP part.
            let mut buf = [0u8; 128];
            let n = packet::build_echo_request(
                &mut buf,
                Ipv4Addr::UNSPECIFIED.into(),
                dst.into(),
                ident,
                seq,
                b"shadowsteer-ping",
            )
            .unwrap();
            let addr: SocketAddr = (dst, 0).into();
            // Before the route exists (a TUN device still coming up) sending fails: a lost ping.
            if sock.send_to(&buf[20..n], &addr.into()).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let mut rx = [std::mem::MaybeUninit::<u8>::uninit(); 256];
                let Ok((m, _)) = sock.recv_from(&mut rx) else {
                    continue;
                };
                // SAFETY: recv_from initialised the first `m` bytes.
                let bytes: Vec<u8> = rx[..m].iter().map(|b| unsafe { b.assume_init() }).collect();
                if let Some((src, id, s)) = packet::parse_echo_reply(&bytes)
                    && src == std::net::IpAddr::V4(dst)
                    && id == ident
                    && s == seq
                {
                    got += 1;
                    break;
                }
            }
        }
        got
    })
}

/// UDP echo from inside `ns`.
fn udp_echo(ns: &Netns, dst: SocketAddr, count: usize) -> usize {
    ns.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = 0;
        for i in 0..count {
            let msg = format!("udp-echo-{i}");
            sock.send_to(msg.as_bytes(), dst).unwrap();
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

/// Starts `wireguard-go` in `ns`, configured with `wg` from `shadowsteer client config` output.
#[allow(clippy::too_many_arguments)]
async fn start_wireguard_go(
    db: &common::TestDb,
    ns: &Netns,
    dir: &std::path::Path,
    id: &str,
    client_key: &SecretKey,
    service: &SecretKey,
    client_ip: std::net::IpAddr,
    port: u16,
    network: &str,
) -> (Child, String) {
    // The stock client's configuration, from the CLI, with the client's key embedded.
    let ckf = key_file(dir, &format!("{id}.key"), client_key);
    let (code, conf, err) = common::run_cli(
        db,
        &[
            "client",
            "config",
            id,
            "--zone",
            "vpn.test",
            "--port",
            &port.to_string(),
            "--private-key-file",
            ckf.to_str().unwrap(),
            "--allowed-ips",
            network,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        conf.contains(&format!("Endpoint = {id}.c.vpn.test:{port}")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("PublicKey = {}", service.public_key())),
        "{conf}"
    );
    let ifname = format!("sw{}", &ns.veth[3..]);
    let conf_path = dir.join(format!("{ifname}.conf"));
    std::fs::write(&conf_path, &conf).unwrap();
    let stripped = std::process::Command::new("wg-quick")
        .args(["strip", conf_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stripped.status.success(),
        "{}",
        String::from_utf8_lossy(&stripped.stderr)
    );
    let wg_path = dir.join("wg.conf");
    std::fs::write(&wg_path, &stripped.stdout).unwrap();
    // The per-client name resolves (through /etc/hosts of the namespace) to the appliance.
    ns.hosts(&format!(
        "127.0.0.1 localhost\n{} {id}.c.vpn.test\n",
        ns.root_ip
    ));

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
        std::path::Path::new(&sock).exists().then_some(())
    })
    .await;
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "wg",
        "setconf",
        &ifname,
        wg_path.to_str().unwrap(),
    ]);
    sh(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{client_ip}/32"),
        "dev",
        &ifname,
    ]);
    sh(&["ip", "-n", &ns.name, "link", "set", &ifname, "up"]);
    sh(&[
        "ip", "-n", &ns.name, "route", "add", network, "dev", &ifname,
    ]);

    (wg, ifname)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_wireguard_go_client_talks_to_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: wg_interop: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("wg", 1);
    let service = SecretKey::generate();
    agent_support::inventory(&db, &service, 0);
    let (id, client_key, client_ip) = agent_support::add_client(&db, "alice", 0, "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let port = free_udp_port(ns.root_ip);
    let _agent = spawn_agent(
        dir.path(),
        &agent_config(SocketAddr::from((ns.root_ip, port)), &kf, &db.url),
        "agent",
    );
    agent_ready(dir.path(), "agent").await;

    let (_wg, ifname) = start_wireguard_go(
        &db,
        &ns,
        dir.path(),
        &id,
        &client_key,
        &service,
        client_ip,
        port,
        "10.77.0.0/24",
    )
    .await;

    let echo: Ipv4Addr = "10.77.0.1".parse().unwrap();
    // The agent may still be loading its roster: retry the first ping for a while.
    let first = Instant::now();
    let mut ok = 0;
    while ok == 0 && first.elapsed() < Duration::from_secs(20) {
        ok = ping(&ns, echo, 1);
    }
    assert_eq!(ok, 1, "first ping through wireguard-go never answered");
    let pings = ping(&ns, echo, 5);
    assert_eq!(pings, 5, "pings answered");
    let echoes = udp_echo(&ns, (echo, 7).into(), 5);
    assert_eq!(echoes, 5, "UDP echoes answered");

    // The session, with the client's endpoint (its veth address and wireguard-go's port).
    // The row can first show the endpoint alone: the agent records the authenticated
    // initiation's address before the handshake completes, and the receiver index with it.
    let (ip, port_db, ri): (String, i32, i64) =
        wait_for(Duration::from_secs(15), "session_state row", || async {
            sqlx::query_as(
                "SELECT host(endpoint_ip), endpoint_port, receiver_index FROM session_state
                 WHERE client_id = 'alice' AND holder = 'eu-1' AND endpoint_ip IS NOT NULL
                   AND receiver_index IS NOT NULL",
            )
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        })
        .await;
    assert_eq!(ip, ns.ns_ip.to_string());
    let wg_show = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "wg",
            "show",
            &ifname,
            "listen-port",
        ])
        .output()
        .unwrap();
    let listen: i32 = String::from_utf8_lossy(&wg_show.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(port_db, listen, "endpoint port is wireguard-go's");
    let peer_index: i32 = sqlx::query_scalar("SELECT peer_index FROM clients WHERE id = 'alice'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((ri >> 8) as i32, peer_index);

    // Health rows every second.
    let n0: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appliance_health WHERE appliance_id = 'eu-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n1: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appliance_health WHERE appliance_id = 'eu-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        (3..=6).contains(&(n1 - n0)),
        "{} health rows in 4 s",
        n1 - n0
    );
    let sessions: i32 = sqlx::query_scalar(
        "SELECT sessions FROM appliance_health WHERE appliance_id = 'eu-1' ORDER BY ts DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_helper_in_a_namespace_talks_to_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: wg_interop: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("ch", 2);
    let service = SecretKey::generate();
    agent_support::inventory(&db, &service, 0);
    let (_, client_key, client_ip) = agent_support::add_client(&db, "bob", 0, "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let port = free_udp_port(ns.root_ip);
    let _agent = spawn_agent(
        dir.path(),
        &agent_config(SocketAddr::from((ns.root_ip, port)), &kf, &db.url),
        "agent",
    );
    agent_ready(dir.path(), "agent").await;
    // The test DNS server listens on the root side of the veth.
    let dns_sock = tokio::net::UdpSocket::bind((ns.root_ip, 0)).await.unwrap();
    let dns = TestDns::start(dns_sock, "bob.c.vpn.test", ns.root_ip, 2).await;
    let ckf = key_file(dir.path(), "bob.key", &client_key);
    let report = dir.path().join("report.json");
    let conf = dir.path().join("client.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[client]
id = "bob"
key_file = "{}"
service_public_key = "{}"
zone = "vpn.test"
port = {port}
resolver = "{}"
inside = "probe"

[tunnel]
address = "{client_ip}"
network = "10.77.0.0/24"

[probe]
rate = 50
report_interval = "1s"
loss_timeout = "1s"
"#,
            ckf.display(),
            service.public_key(),
            dns.addr
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            common::bin(),
            "client",
            "run",
            "--config",
        ])
        .arg(&conf)
        .args(["--duration", "6s", "--report"])
        .arg(&report)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let p = &r["probe"];
    let sent = p["sent"].as_u64().unwrap();
    let received = p["received"].as_u64().unwrap();
    assert!(sent >= 200, "{r}");
    assert_eq!(received, sent, "{r}");
    assert_eq!(p["lost"], 0, "{r}");
    assert!(p["rtt_ms"]["max"].as_f64().unwrap() < 1000.0, "{r}");
    assert!(
        dns.queries.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "re-resolved"
    );
    assert_eq!(
        r["endpoints"][0]["endpoint"],
        format!("{}:{port}", ns.root_ip)
    );
    // The session, with the helper's endpoint in the namespace.
    let ip: String = wait_for(Duration::from_secs(10), "session row", || async {
        sqlx::query_scalar(
            "SELECT host(endpoint_ip) FROM session_state WHERE client_id = 'bob' AND endpoint_ip IS NOT NULL",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(ip, ns.ns_ip.to_string());
    // The helper's reports arrived as client path rows.
    let reports: i64 = wait_for(Duration::from_secs(10), "client report rows", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM path_probes WHERE dst_kind = 'client' AND dst = 'bob' AND samples > 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (n >= 2).then_some(n)
    })
    .await;
    assert!(reports >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tun_mode_hands_traffic_to_the_host_stack() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: wg_interop: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("tn", 3);
    let service = SecretKey::generate();
    agent_support::inventory(&db, &service, 0);
    let client_ip: std::net::IpAddr = "10.78.3.2".parse().unwrap();
    let (id, client_key, _) = agent_support::add_client_ip(&db, "dave", client_ip, "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let port = free_udp_port(ns.root_ip);
    let tun_name = format!("sst{}", std::process::id() % 100_000);
    let text = agent_config(SocketAddr::from((ns.root_ip, port)), &kf, &db.url)
        .replace("inside = \"echo\"", "inside = \"tun\"")
        .replace(
            "network = \"10.77.0.0/24\"",
            &format!("network = \"10.78.3.0/24\"\ntun_name = \"{tun_name}\""),
        );
    let _agent = spawn_agent(dir.path(), &text, "agent");
    agent_ready(dir.path(), "agent").await;
    // A UDP echo server of the host, on the TUN device's address.
    let server = wait_for(Duration::from_secs(10), "TUN address", || async {
        UdpSocket::bind("10.78.3.1:7").ok()
    })
    .await;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let (_wg, _ifname) = start_wireguard_go(
        &db,
        &ns,
        dir.path(),
        &id,
        &client_key,
        &service,
        client_ip,
        port,
        "10.78.3.0/24",
    )
    .await;
    let host: Ipv4Addr = "10.78.3.1".parse().unwrap();
    let first = Instant::now();
    let mut ok = 0;
    while ok == 0 && first.elapsed() < Duration::from_secs(20) {
        ok = ping(&ns, host, 1);
    }
    assert_eq!(
        ok, 1,
        "the host never answered a ping through the TUN device"
    );
    assert_eq!(ping(&ns, host, 5), 5);
    assert_eq!(udp_echo(&ns, (host, 7).into(), 5), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_helper_tun_mode_carries_host_traffic() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: wg_interop: {why}");
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("ct", 4);
    let service = SecretKey::generate();
    agent_support::inventory(&db, &service, 0);
    let (_, client_key, client_ip) = agent_support::add_client(&db, "erin", 0, "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let port = free_udp_port(ns.root_ip);
    let _agent = spawn_agent(
        dir.path(),
        &agent_config(SocketAddr::from((ns.root_ip, port)), &kf, &db.url),
        "agent",
    );
    agent_ready(dir.path(), "agent").await;
    let dns_sock = tokio::net::UdpSocket::bind((ns.root_ip, 0)).await.unwrap();
    let dns = TestDns::start(dns_sock, "erin.c.vpn.test", ns.root_ip, 30).await;
    let ckf = key_file(dir.path(), "erin.key", &client_key);
    let conf = dir.path().join("client.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[client]
id = "erin"
key_file = "{}"
service_public_key = "{}"
zone = "vpn.test"
port = {port}
resolver = "{}"
inside = "tun"

[tunnel]
address = "{client_ip}"
network = "10.77.0.0/24"
tun_name = "ssc{}"
"#,
            ckf.display(),
            service.public_key(),
            dns.addr,
            std::process::id() % 100_000
        ),
    )
    .unwrap();
    let _helper = Child(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                common::bin(),
                "client",
                "run",
                "--config",
            ])
            .arg(&conf)
            .args(["--duration", "60s"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let echo: Ipv4Addr = "10.77.0.1".parse().unwrap();
    let first = Instant::now();
    let mut ok = 0;
    while ok == 0 && first.elapsed() < Duration::from_secs(20) {
        ok = ping(&ns, echo, 1);
    }
    assert_eq!(ok, 1, "no ping through the helper's TUN device");
    assert_eq!(ping(&ns, echo, 5), 5);
    assert_eq!(udp_echo(&ns, (echo, 7).into(), 5), 5);
}
