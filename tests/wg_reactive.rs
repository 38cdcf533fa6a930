//! The reactive baseline, for comparison with takeover: DNS steering only. Takeover is off on
//! both agents; `shadowsteer serve` marks the primary failed once its health rows stop for
//! `steering.health_timeout` (3 × the 1 s report interval) and answers the shadow; the client
//! helper re-resolves every second and moves when the answer changes. The gap is recorded
//! (`benches/failover.sh` reports it beside takeover's numbers).
//!
//! Needs root, /dev/net/tun and `ip`; skips loudly otherwise (fails under CI=true).

mod agent_support;
mod common;
mod serve_harness;
mod wg_support;

use std::net::SocketAddr;
use std::time::Duration;

use agent_support::{key_file, wait_for};
use shadowsteer::domain::SecretKey;
use wg_support::{
    Agent, HelperSpec, Stage, WG_PORT, agent_text, db_relay, helper_run, skip, skip_reason,
};

const PRIMARY: usize = 2;
const SHADOW: usize = 3;

/// Forwards DNS from the namespaces (10.214.0.1) to `serve` on loopback.
async fn dns_relay(upstream: SocketAddr) -> SocketAddr {
    let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("10.214.0.1:0").await.unwrap());
    let back = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, l) = (front.clone(), back.clone(), last.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *l.lock().unwrap() = Some(from);
            let _ = b.send_to(&buf[..n], upstream).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let to = *last.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactive_baseline_dns_steering_only() {
    if let Some(why) = skip_reason() {
        skip(&why);
        return;
    }
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let stage = Stage::new(&["c", "p", "s"]);
    let service = SecretKey::generate();
    let ep = |k| format!("{}:{WG_PORT}", Stage::ip(k));
    agent_support::appliance_pair(&db, &service, &ep(PRIMARY), &ep(SHADOW));
    let (_, client_key, _) =
        agent_support::add_client_ip(&db, "alice", "10.77.0.2".parse().unwrap(), "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let relay_url = db_relay(&db.url).await;
    let off = "enabled = false";
    let mut primary = Agent::start(
        &stage,
        PRIMARY,
        dir.path(),
        "primary",
        &agent_text("eu-1", PRIMARY, &kf, &relay_url, off),
    )
    .await;
    let _shadow = Agent::start(
        &stage,
        SHADOW,
        dir.path(),
        "shadow",
        &agent_text("us-1", SHADOW, &kf, &relay_url, off),
    )
    .await;
    let config = serve_harness::config(
        serve_harness::NO_RRL,
        "hold_down = \"1s\"\nhealth_timeout = \"3s\"",
    );
    let url = db.url.clone();
    let server = tokio::task::spawn_blocking(move || {
        serve_harness::Server::start(&config, &["--database-url", &url])
    })
    .await
    .unwrap();
    let name = "alice.c.vpn.example.net";
    let dns = server.dns;
    wait_for(
        Duration::from_secs(20),
        "serve answers the primary",
        || async move {
            let a = tokio::task::spawn_blocking(move || serve_harness::answer(dns, name))
                .await
                .unwrap();
            (a == vec![Stage::ip(PRIMARY).to_string()]).then_some(())
        },
    )
    .await;
    let resolver = dns_relay(server.dns).await;
    let spec = HelperSpec {
        dir: dir.path(),
        ns: stage.ns(1),
        key: &client_key,
        service: service.public_key(),
        zone: "vpn.example.net",
        resolver,
        // DNS only: no standby session (the serving DNS answers the standby name).
        extra: "min_ttl = \"1s\"\nmax_ttl = \"1s\"\nstandby = false",
    };
    let r = helper_run(&spec, 14, 3, || async {
        primary.kill9();
    })
    .await;
    eprintln!(
        "reactive baseline (DNS only), kill -9 of the primary: {}",
        r["probe"]
    );
    let gap = r["probe"]["longest_gap_ms"].as_f64().unwrap();
    let last = r["endpoints"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["endpoint"].as_str())
        .map(str::to_owned);
    assert_eq!(
        last.as_deref(),
        Some(format!("{}:{WG_PORT}", Stage::ip(SHADOW)).as_str()),
        "the helper never followed DNS to the shadow: {r}"
    );
    assert!(gap < 12_000.0, "{r}");
    common::record_measure("reactive_gap_ms", gap);
    drop(server);
}
