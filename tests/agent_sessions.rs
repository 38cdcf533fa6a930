//! The agent on loopback against a boringtun client: sessions recorded with endpoint and
//! receiver index, writes proportional to events (not packets), health rows every second,
//! client rtt rows, live peer updates from notifications.

mod agent_support;
mod common;

use std::time::{Duration, Instant};

use agent_support::{RunningAgent, TestClient, agent_toml, inventory, key_file, wait_for};
use shadowsteer::domain::SecretKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_recorded_per_event_not_per_packet() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let clients = inventory(&db, &service, 2);
    let kf = key_file(dir.path(), "service.key", &service);
    let agent = RunningAgent::start(
        &agent_toml("eu-1", "127.0.0.1:0", &kf, &db.url, ""),
        dir.path(),
        "eu-1",
    )
    .await;
    let (id, key, ip) = &clients[0];
    let mut client = TestClient::new(key, service.public_key(), *ip, agent.addr()).await;
    // The roster loads asynchronously; handshake retries until the peer exists.
    client.handshake().await;
    let started = Instant::now();
    assert!(client.echo(b"first").await, "no echo through the tunnel");

    // Lots of packets, a few seconds, a 1 s checkpoint interval.
    const PACKETS: u64 = 3000;
    for i in 0..PACKETS {
        client
            .send_udp("10.77.0.1:7".parse().unwrap(), 6000, &i.to_be_bytes())
            .await;
        if i % 100 == 99 {
            // Drain echoes so the socket buffer does not overflow.
            while client.receive_one(Duration::from_millis(5)).await.is_some() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let expected_rx = PACKETS + 1;
    let row = wait_for(Duration::from_secs(20), "counters checkpointed", || async {
        // Only a row with the completed handshake's receiver index: the first write can
        // carry the endpoint alone.
        let r: Option<(String, i32, i64, i64, i64, i32, i64)> = sqlx::query_as(
            "SELECT host(endpoint_ip), endpoint_port, receiver_index, rx_packets, version,
                    peer_index, tx_packets
             FROM session_state WHERE client_id = $1 AND holder = 'eu-1'
               AND receiver_index IS NOT NULL AND endpoint_ip IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        r.filter(|r| r.3 as u64 >= expected_rx)
    })
    .await;
    let elapsed = started.elapsed();
    let local = client.local_addr();
    assert_eq!(row.0, local.ip().to_string());
    assert_eq!(row.1, i32::from(local.port()));
    assert_eq!(
        (row.2 >> 8) as i32,
        row.5,
        "receiver index carries the peer index"
    );
    assert_eq!(row.3 as u64, expected_rx);
    assert!(row.6 > 0, "tx counted");
    // One write for the handshake (with endpoint), then at most one per checkpoint interval.
    let bound = 2 + elapsed.as_secs() as i64 + 2;
    assert!(
        row.4 <= bound,
        "{} versions for {PACKETS} packets in {elapsed:?} (bound {bound})",
        row.4
    );
    let writes = agent
        .handle
        .recorder
        .session_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(writes <= bound as u64, "{writes} writes");

    // Quiet traffic: no more writes.
    let before: i64 = sqlx::query_scalar("SELECT version FROM session_state WHERE client_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after: i64 = sqlx::query_scalar("SELECT version FROM session_state WHERE client_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "writes without events");

    // The handshake's round trip became a client path row.
    let rtt_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM path_probes WHERE src = 'eu-1' AND dst_kind = 'client' AND dst = $1 AND rtt_ms IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(rtt_rows >= 1, "no client rtt row");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rows_every_second_and_peers_follow_the_inventory() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    inventory(&db, &service, 1);
    let kf = key_file(dir.path(), "service.key", &service);
    let agent = RunningAgent::start(
        &agent_toml("eu-1", "127.0.0.1:0", &kf, &db.url, ""),
        dir.path(),
        "eu-1",
    )
    .await;
    // A client added while the agent runs gets a tunnel without a restart.
    let (_, key, ip) = agent_support::add_client(&db, "late", 40, "eu-1", "us-1");
    let mut client = TestClient::new(&key, service.public_key(), ip, agent.addr()).await;
    client.handshake().await;
    assert!(client.echo(b"late").await);

    let rows: Vec<(chrono::DateTime<chrono::Utc>, i32)> =
        wait_for(Duration::from_secs(20), "4 health rows", || async {
            let rows: Vec<(chrono::DateTime<chrono::Utc>, i32)> = sqlx::query_as(
                "SELECT ts, sessions FROM appliance_health WHERE appliance_id = 'eu-1' ORDER BY ts",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() >= 4).then_some(rows)
        })
        .await;
    for pair in rows.windows(2) {
        let gap = (pair[1].0 - pair[0].0).num_milliseconds();
        assert!((500..=2500).contains(&gap), "health rows {gap} ms apart");
    }
    assert!(rows.last().unwrap().1 >= 1, "the session is counted");

    // Removing the client removes the peer: handshakes stop working.
    let (code, _, err) = common::run_cli(&db, &["client", "remove", "late"]);
    assert_eq!(code, 0, "{err}");
    wait_for(Duration::from_secs(10), "peer removed", || async {
        (agent
            .handle
            .device
            .stats
            .peers
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await;
    assert!(!client.echo(b"gone").await, "removed client still served");
    agent.stop().await;
}
