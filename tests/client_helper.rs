//! The client helper on loopback: it resolves its name through a test DNS server, runs its
//! probe stream through the primary, and when the answer changes to the shadow (same service
//! key, same peer index) it moves without dropping the tunnel; the probe stream measures the
//! interruption exactly.

mod agent_support;
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use agent_support::{RunningAgent, TestDns, agent_toml, inventory, key_file};
use shadowsteer::config::ClientConfig;
use shadowsteer::domain::SecretKey;
use tokio_util::sync::CancellationToken;

/// A UDP port free on both 127.0.0.1 and 127.0.0.2 (the two appliances share it).
fn shared_port() -> u16 {
    for _ in 0..50 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
    panic!("no shared free port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_roams_to_the_new_answer_without_dropping_the_tunnel() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let clients = inventory(&db, &service, 1);
    let kf = key_file(dir.path(), "service.key", &service);
    let port = shared_port();
    let primary = RunningAgent::start(
        &agent_toml("eu-1", &format!("127.0.0.1:{port}"), &kf, &db.url, ""),
        dir.path(),
        "eu-1",
    )
    .await;
    let shadow = RunningAgent::start(
        &agent_toml("us-1", &format!("127.0.0.2:{port}"), &kf, &db.url, ""),
        dir.path(),
        "us-1",
    )
    .await;
    // Both rosters loaded before the helper starts.
    for a in [&primary, &shadow] {
        agent_support::wait_for(Duration::from_secs(15), "roster", || async {
            (a.handle
                .device
                .stats
                .peers
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1)
                .then_some(())
        })
        .await;
    }
    let (id, key, ip) = &clients[0];
    let dns_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = TestDns::start(
        dns_sock,
        &format!("{id}.c.vpn.test"),
        Ipv4Addr::new(127, 0, 0, 1),
        1,
    )
    .await;
    let ckf = key_file(dir.path(), "client.key", key);
    let path = dir.path().join("client.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[client]
id = "{id}"
key_file = "{}"
service_public_key = "{}"
zone = "vpn.test"
port = {port}
resolver = "{}"
listen = "127.0.0.1:0"
inside = "probe"

[tunnel]
address = "{ip}"
network = "10.77.0.0/16"

[probe]
rate = 100
report_interval = "1s"
loss_timeout = "1s"
"#,
            ckf.display(),
            service.public_key(),
            dns.addr
        ),
    )
    .unwrap();
    let cfg: ClientConfig = shadowsteer::config::load(&path).unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(shadowsteer::client::run::run(
        cfg,
        key.clone(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    dns.set(Ipv4Addr::new(127, 0, 0, 2));
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.cancel();
    let report = run.await.unwrap().expect("helper ran");
    let json = serde_json::to_string_pretty(&report).unwrap();
    eprintln!("{json}");

    let eps: Vec<SocketAddr> = report.endpoints.iter().map(|e| e.endpoint).collect();
    assert_eq!(
        eps,
        vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 2], port))
        ],
        "{json}"
    );
    assert!(report.handshakes >= 2, "{json}");
    let p = report.probe.expect("probe report");
    assert!(p.sent >= 500, "{json}");
    assert_eq!(p.received + p.lost, p.sent, "{json}");
    // The move costs at most a few probes (those sent on the old session to the new address
    // before the handshake completed) and well under a second of silence.
    assert!(p.lost <= 10, "{json}");
    assert!(p.longest_gap_ms < 1000.0, "{json}");
    // Both appliances served the client: the shadow recorded the session with its endpoint.
    let (role, ep): (String, Option<String>) =
        agent_support::wait_for(Duration::from_secs(10), "shadow session row", || async {
            sqlx::query_as(
                "SELECT role, host(endpoint_ip) FROM session_state WHERE client_id = $1 AND holder = 'us-1' AND endpoint_ip IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        })
        .await;
    assert_eq!(role, "shadow");
    assert_eq!(ep.as_deref(), Some("127.0.0.1"));
    let shadow_rx = shadow.handle.device.stats.snapshot().inside_rx;
    assert!(shadow_rx >= 100, "shadow carried {shadow_rx} packets");
    primary.stop().await;
    shadow.stop().await;
}
