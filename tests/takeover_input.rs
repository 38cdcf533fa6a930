//! Hostile input to takeover: heartbeats with a wrong MAC, replayed or stale heartbeats,
//! heartbeats from the wrong address, forged handshakes and forged relay messages are
//! ignored and counted in the agent's `/metrics` (scraped over HTTP, exact increments);
//! nothing moves. Two in-process agents on loopback share one test database.

mod agent_support;
mod common;
mod serve_harness;

use std::net::SocketAddr;
use std::time::Duration;

use agent_support::{RunningAgent, agent_toml, key_file, wait_for};
use serve_harness::{http_get, metric};
use shadowsteer::domain::{ApplianceId, SecretKey};
use shadowsteer::takeover::wire::{GroupKey, Heartbeat, MAX_LEN, Relay, RelayDirection};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent's `/metrics` text.
async fn scrape(addr: SocketAddr) -> String {
    let (code, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics", None))
        .await
        .unwrap()
        .expect("the agent answers /metrics");
    assert_eq!(code, 200, "{text}");
    text
}

const RECEIVED: &str = "shadowsteer_takeover_heartbeats_received_total";
const DEAD: &str = "shadowsteer_takeover_peers_declared_dead_total";
const HELD: &str = "shadowsteer_takeover_sessions_held";
const INITIATIONS: &str = "shadowsteer_takeover_initiations_total";

fn rejected(reason: &str) -> String {
    format!("shadowsteer_takeover_heartbeats_rejected_total{{reason=\"{reason}\"}}")
}
fn relay_rejected(reason: &str) -> String {
    format!("shadowsteer_takeover_relay_rejected_total{{reason=\"{reason}\"}}")
}
fn wg_dropped(reason: &str) -> String {
    format!("shadowsteer_wg_dropped_total{{reason=\"{reason}\"}}")
}
fn claims(reason: &str) -> String {
    format!("shadowsteer_takeover_claims_total{{reason=\"{reason}\"}}")
}

/// One series of a scrape; a missing series fails the test.
fn value(text: &str, series: &str) -> u64 {
    metric(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}")) as u64
}

/// How much each series grew between two scrapes.
fn grew(before: &str, after: &str, series: &str) -> u64 {
    value(after, series) - value(before, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misaddressed_heartbeats_move_nothing() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let (pp, sp) = (free_port(), free_port());
    agent_support::appliance_pair(
        &db,
        &service,
        &format!("127.0.0.1:{pp}"),
        &format!("127.0.0.1:{sp}"),
    );
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
        &agent_toml("us-1", &format!("127.0.0.1:{sp}"), &kf, &db.url, extra).replace(
            "inside = \"echo\"\n",
            "inside = \"echo\"\nmetrics_listen = \"127.0.0.1:0\"\n",
        ),
        dir.path(),
        "shadow",
    )
    .await;
    assert!(primary.handle.metrics.is_none(), "off unless configured");
    let metrics = shadow.handle.metrics.expect("metrics_listen was set");
    wait_for(Duration::from_secs(10), "heartbeats flow", || async {
        (value(&scrape(metrics).await, RECEIVED) > 5).then_some(())
    })
    .await;
    let before = scrape(metrics).await;
    serve_harness::assert_described(&before);

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
    // Relay messages: one under another key, and one with the group key from a stranger (no
    // move is in progress) asking the shadow to send a datagram to a victim.
    let victim = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    victim.set_nonblocking(true).unwrap();
    let mut msg = Vec::new();
    let relay = Relay {
        direction: RelayDirection::ToClient,
        client: victim.local_addr().unwrap(),
        datagram: &[4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    };
    relay.encode(&wrong, &mut msg);
    attacker.send_to(&msg, ("127.0.0.1", sp)).unwrap();
    relay.encode(&key, &mut msg);
    attacker.send_to(&msg, ("127.0.0.1", sp)).unwrap();
    // Exact increments: wait for them, then give double counting time to show.
    let expected = [
        (rejected("unknown_sender"), 3),
        (rejected("bad_mac"), 3),
        (rejected("malformed"), 1),
        (relay_rejected("bad_mac"), 1),
        (relay_rejected("not_partner"), 1),
        // The forged initiation and the relay message under another key.
        (wg_dropped("bad_mac"), 2),
        (wg_dropped("unexpected"), 1),
    ];
    let reached = |after: &str| expected.iter().all(|(s, n)| grew(&before, after, s) >= *n);
    wait_for(Duration::from_secs(5), "refusals counted", || async {
        reached(&scrape(metrics).await).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scrape(metrics).await;
    for (series, n) in &expected {
        assert_eq!(grew(&before, &after, series), *n, "{series}");
    }
    assert!(
        victim.recv_from(&mut [0u8; 64]).is_err(),
        "a forged relay message made the shadow send to a stranger's victim"
    );

    // A replay from the primary's address: a valid beat whose (boot, seq) is older than the
    // beats already accepted (a recorded beat sent again looks exactly like this); and one
    // beat sent 10 s ago by its own clock (stale).
    let old = Heartbeat {
        boot: 0,
        ..beat.clone()
    };
    let n3 = old.encode(&key, &mut buf);
    for _ in 0..3 {
        loopback.send_to(&buf[..n3], ("127.0.0.1", sp)).unwrap();
    }
    let late = Heartbeat {
        sent_unix_ms: beat.sent_unix_ms - 10_000,
        ..beat.clone()
    };
    let n4 = late.encode(&key, &mut buf);
    loopback.send_to(&buf[..n4], ("127.0.0.1", sp)).unwrap();
    let expected = [(rejected("replayed"), 3), (rejected("stale"), 1)];
    wait_for(Duration::from_secs(5), "replays counted", || async {
        let now = scrape(metrics).await;
        expected
            .iter()
            .all(|(s, n)| grew(&after, &now, s) >= *n)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = scrape(metrics).await;
    for (series, n) in &expected {
        assert_eq!(grew(&after, &last, series), *n, "{series}");
    }
    // Nothing moved: no death, no claim, no session held, no initiation.
    for series in [DEAD, HELD, INITIATIONS] {
        assert_eq!(value(&last, series), 0, "{series}");
    }
    for reason in ["crash", "predicted", "failback", "client"] {
        assert_eq!(value(&last, &claims(reason)), 0, "claims {reason}");
    }
    let held_by_shadow: i64 =
        sqlx::query_scalar("SELECT count(*) FROM session_state WHERE holder = 'us-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(held_by_shadow, 0);

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
        "shadow declares the primary dead and claims alice's session",
        || async {
            let now = scrape(metrics).await;
            (value(&now, DEAD) == 1 && value(&now, &claims("crash")) == 1 && value(&now, HELD) == 1)
                .then_some(())
        },
    )
    .await;
    shadow.stop().await;
}
