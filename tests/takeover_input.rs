//! Hostile input to takeover: heartbeats with a wrong MAC, replayed heartbeats, heartbeats
//! from the wrong address and forged handshakes are ignored and counted; nothing moves.
//! Two in-process agents on loopback share one test database.

mod agent_support;
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_support::{RunningAgent, agent_toml, key_file, wait_for};
use shadowsteer::domain::{ApplianceId, SecretKey};
use shadowsteer::takeover::wire::{GroupKey, Heartbeat, MAX_LEN};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misaddressed_heartbeats_move_nothing() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let (pp, sp) = (free_port(), free_port());
    for (id, region, port) in [("eu-1", "eu", pp), ("us-1", "us", sp)] {
        let (code, _, err) = common::run_cli(
            &db,
            &[
                "appliance",
                "add",
                "--id",
                id,
                "--region",
                region,
                "--endpoint",
                &format!("127.0.0.1:{port}"),
                "--public-key",
                &service.public_key().to_base64(),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
    agent_support::add_client(&db, "alice", 2, "eu-1", "us-1");
    let kf = key_file(dir.path(), "service.key", &service);
    let extra = "[takeover]\nheartbeat_interval = \"50ms\"\nmisses = 4\nstartup_grace = \"1s\"\n";
    let primary = RunningAgent::start(
        &agent_toml("eu-1", &format!("127.0.0.1:{pp}"), &kf, &db.url, extra),
        dir.path(),
        "primary",
    )
    .await;
    let shadow = RunningAgent::start(
        &agent_toml("us-1", &format!("127.0.0.1:{sp}"), &kf, &db.url, extra),
        dir.path(),
        "shadow",
    )
    .await;
    let stats = shadow
        .handle
        .takeover
        .clone()
        .expect("takeover enabled by default");
    wait_for(Duration::from_secs(10), "heartbeats flow", || async {
        (stats.heartbeats_ok.load(Ordering::Relaxed) > 5).then_some(())
    })
    .await;

    // With the right key from an address that is not the primary's; then with a wrong key.
    let attacker = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let key = GroupKey::derive(&service);
    let mut buf = [0u8; MAX_LEN];
    let beat = Heartbeat {
        from: ApplianceId::new("eu-1".to_owned()).unwrap(),
        boot: u64::MAX - 1,
        seq: 1,
        sent_unix_ms: chrono::Utc::now().timestamp_millis() as u64,
    };
    let n = beat.encode(&key, &mut buf);
    for _ in 0..3 {
        attacker.send_to(&buf[..n], ("127.0.0.1", sp)).unwrap();
    }
    let wrong = GroupKey::derive(&SecretKey::generate());
    let n2 = beat.encode(&wrong, &mut buf);
    let loopback = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        loopback.send_to(&buf[..n2], ("127.0.0.1", sp)).unwrap();
    }
    // Garbage with the heartbeat magic.
    loopback
        .send_to(b"SSG\x01garbage", ("127.0.0.1", sp))
        .unwrap();
    // A forged WireGuard initiation (unknown key) from a stranger.
    let mut forged = [0u8; 148];
    forged[0] = 1;
    attacker.send_to(&forged, ("127.0.0.1", sp)).unwrap();
    wait_for(Duration::from_secs(5), "refusals counted", || async {
        (stats.unknown_sender.load(Ordering::Relaxed) >= 3
            && stats.bad_mac.load(Ordering::Relaxed) >= 3
            && stats.malformed.load(Ordering::Relaxed) >= 1)
            .then_some(())
    })
    .await;
    // A replay from the primary's address: a valid beat whose (boot, seq) is older than the
    // beats already accepted (a recorded beat sent again looks exactly like this).
    let old = Heartbeat {
        boot: 0,
        ..beat.clone()
    };
    let n3 = old.encode(&key, &mut buf);
    for _ in 0..3 {
        loopback.send_to(&buf[..n3], ("127.0.0.1", sp)).unwrap();
    }
    wait_for(Duration::from_secs(5), "replays counted", || async {
        (stats.replayed.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.peers_declared_dead.load(Ordering::Relaxed), 0);
    assert_eq!(stats.claims.load(Ordering::Relaxed), 0, "nothing moves");
    let held_by_shadow: i64 =
        sqlx::query_scalar("SELECT count(*) FROM session_state WHERE holder = 'us-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(held_by_shadow, 0);
    assert!(
        shadow
            .handle
            .device
            .stats
            .drops(shadowsteer::tunnel::peer::DropReason::BadMac)
            + shadow
                .handle
                .device
                .stats
                .drops(shadowsteer::tunnel::peer::DropReason::Malformed)
            >= 1,
        "the forged initiation was dropped and counted"
    );

    // An operator's failback: a decision row naming the primary; unknown clients are refused.
    let (code, out, err) = common::run_cli(&db, &["session", "failback", "--client", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "alice");
    let manual: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM steering_decisions WHERE client_id = 'alice'
           AND to_appliance = 'eu-1' AND reason = 'operator failback'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(manual, 1);
    let (code, _, err) = common::run_cli(&db, &["session", "failback", "--client", "nobody"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The primary stops: the shadow sees it dead and claims within the detection time.
    primary.stop().await;
    wait_for(
        Duration::from_secs(5),
        "shadow declares the primary dead",
        || async { (stats.peers_declared_dead.load(Ordering::Relaxed) == 1).then_some(()) },
    )
    .await;
    shadow.stop().await;
}
