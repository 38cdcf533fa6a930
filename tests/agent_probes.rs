//! Agent-to-agent path probes on loopback: two agents probe each other with MAC-authenticated
//! UDP probes and write rtt/jitter/loss rows; probes under another key are rejected.

mod agent_support;
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_support::{RunningAgent, agent_toml, inventory, key_file, wait_for};
use shadowsteer::domain::SecretKey;

/// src, dst, rtt, jitter, loss, samples.
type PathRow = (String, String, Option<f64>, Option<f64>, f64, i32);

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probes(listen: u16, key: &std::path::Path, peer: &str, peer_port: u16) -> String {
    format!(
        r#"
[probes]
listen = "127.0.0.1:{listen}"
key_file = "{}"
interval = "50ms"
window = "500ms"
[[probes.peers]]
appliance = "{peer}"
address = "127.0.0.1:{peer_port}"
"#,
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_probe_each_other_and_reject_forged_probes() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    inventory(&db, &service, 0);
    let kf = key_file(dir.path(), "service.key", &service);
    let pk = key_file(dir.path(), "probe.key", &SecretKey::generate());
    let (pe, pu) = (free_udp(), free_udp());
    let eu = RunningAgent::start(
        &agent_toml(
            "eu-1",
            "127.0.0.1:0",
            &kf,
            &db.url,
            &probes(pe, &pk, "us-1", pu),
        ),
        dir.path(),
        "eu-1",
    )
    .await;
    let us = RunningAgent::start(
        &agent_toml(
            "us-1",
            "127.0.0.1:0",
            &kf,
            &db.url,
            &probes(pu, &pk, "eu-1", pe),
        ),
        dir.path(),
        "us-1",
    )
    .await;
    let rows: Vec<PathRow> = wait_for(Duration::from_secs(20), "path rows both ways", || async {
        let rows: Vec<PathRow> = sqlx::query_as(
            "SELECT src, dst, rtt_ms, jitter_ms, loss, samples FROM path_probes
                 WHERE dst_kind = 'appliance' ORDER BY ts",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let both = rows.iter().any(|r| r.0 == "eu-1" && r.1 == "us-1")
            && rows.iter().any(|r| r.0 == "us-1" && r.1 == "eu-1");
        (both && rows.len() >= 4).then_some(rows)
    })
    .await;
    for r in &rows {
        assert!(r.2.is_some_and(|rtt| (0.0..500.0).contains(&rtt)), "{r:?}");
        assert!(r.5 >= 5, "{r:?}");
        assert!(r.4 <= 0.2, "loss on loopback: {r:?}");
    }
    // A prober with another key is not answered.
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = shadowsteer::agent::probe::ProbeKey::new([1; 32]);
    let mut meter = shadowsteer::agent::probe::PathMeter::new(
        std::time::Instant::now(),
        Duration::from_secs(1),
    );
    let me = shadowsteer::domain::ApplianceId::new("evil").unwrap();
    let target = shadowsteer::domain::ApplianceId::new("eu-1").unwrap();
    let mut buf = [0u8; shadowsteer::agent::probe::MAX_PROBE];
    let before = eu
        .handle
        .probes
        .as_ref()
        .unwrap()
        .0
        .rejected
        .load(Ordering::Relaxed);
    for _ in 0..10 {
        let p = meter.request(std::time::Instant::now(), &me, &target);
        let n = other.encode(&p, &mut buf);
        stranger
            .send_to(&buf[..n], ("127.0.0.1", pe))
            .await
            .unwrap();
    }
    let mut rx = [0u8; 256];
    let answered =
        tokio::time::timeout(Duration::from_millis(500), stranger.recv_from(&mut rx)).await;
    assert!(answered.is_err(), "a forged probe was answered");
    wait_for(Duration::from_secs(5), "rejections counted", || async {
        let n = eu
            .handle
            .probes
            .as_ref()
            .unwrap()
            .0
            .rejected
            .load(Ordering::Relaxed);
        (n >= before + 10).then_some(())
    })
    .await;
    eu.stop().await;
    us.stop().await;
}
