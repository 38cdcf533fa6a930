//! The agent survives hostile input and a database outage:
//! - garbage datagrams, messages for unknown peers and a handshake flood are dropped and
//!   counted (cookie replies under load) while a legitimate session keeps working;
//! - a client completes a new handshake during an unpaced flood that fills the agent's socket
//!   with initiations forged in its name;
//! - a Postgres restart: traffic keeps flowing while the database is away, health rows are
//!   buffered and arrive after it comes back.

mod agent_support;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use agent_support::flood::{Flood, flood_sources, forged_initiation, udp_drops};
use agent_support::{RunningAgent, TestClient, agent_toml, inventory, key_file, wait_for};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use rand::{Rng, RngCore};
use shadowsteer::domain::SecretKey;
use shadowsteer::localpg::{DATABASE, Durability, LocalCluster, temp_cluster_dir};
use shadowsteer::tunnel::peer::{Action, DropReason, Peer, PeerSpec};

/// An agent with one client through its handshake, set up to be flooded: one UDP socket (with
/// one worker per core the flood would spread over several) and a low handshake rate limit.
struct FloodTarget {
    db: common::TestDb,
    /// Holds the agent's files.
    dir: tempfile::TempDir,
    service: SecretKey,
    client_key: SecretKey,
    agent: RunningAgent,
    client: TestClient,
}

impl FloodTarget {
    async fn start() -> Self {
        let db = common::test_db().await;
        let dir = tempfile::tempdir().unwrap();
        let service = SecretKey::generate();
        let clients = inventory(&db, &service, 1);
        let kf = key_file(dir.path(), "service.key", &service);
        let agent = RunningAgent::start(
            &agent_toml("eu-1", "127.0.0.1:0", &kf, &db.url, "")
                .replace(
                    "inside = \"echo\"",
                    "inside = \"echo\"\nhandshake_rate_limit = 20",
                )
                .replace("[tunnel]", "[tunnel]\nthreads = 1"),
            dir.path(),
            "eu-1",
        )
        .await;
        let (_, client_key, ip) = clients.into_iter().next().expect("one client");
        let mut client = TestClient::new(&client_key, service.public_key(), ip, agent.addr()).await;
        client.handshake().await;
        Self {
            db,
            dir,
            service,
            client_key,
            agent,
            client,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_unknown_peers_and_handshake_floods_are_dropped_and_counted() {
    let FloodTarget {
        db,
        dir: _dir,
        service,
        client_key: _,
        agent,
        mut client,
    } = FloodTarget::start().await;
    let target = agent.addr();
    assert!(client.echo(b"before").await);

    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::thread_rng();
    // 1. Random bytes of random sizes, and random bodies behind valid message types.
    for i in 0..6000u32 {
        let len = match i % 4 {
            0 => rng.gen_range(0..1500),
            1 => 148, // initiation size
            2 => 92,  // response size
            _ => rng.gen_range(32..1500),
        };
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if len >= 4 {
            d[0] = [1u8, 1, 2, 4][i as usize % 4];
            d[1..4].fill(0);
        }
        let _ = attacker.send_to(&d, target).await;
        // Paced so the agent's socket buffer (net.core.rmem_max) never overflows: every
        // datagram must reach the agent to be counted.
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // 2. A flood of well-formed initiations (valid MAC1: the service key is public) from a key
    //    that is no client, from many source ports.
    let stranger = SecretKey::generate();
    let mut fake = Peer::new(
        &stranger,
        PeerSpec {
            index: shadowsteer::domain::PeerIndex::new(9).unwrap(),
            public_key: service.public_key(),
            tunnel_ip: "10.77.0.1".parse().unwrap(),
            keepalive: None,
        },
    );
    let mut buf = vec![0u8; 2048];
    let mut cookies = 0;
    let started = Instant::now();
    for _ in 0..1500 {
        if let Action::Send(init) = fake.force_handshake(&mut buf) {
            let init = init.to_vec();
            let _ = attacker.send_to(&init, target).await;
        }
        let mut rx = [0u8; 256];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_micros(50), attacker.recv_from(&mut rx)).await
        {
            if n == 64 && rx[0] == 3 {
                cookies += 1;
            }
        }
    }
    // 3. The legitimate session still works, during and after.
    assert!(
        client.echo(b"after the flood").await,
        "legitimate client lost"
    );
    let stats = &agent.handle.device.stats;
    let flood_took = started.elapsed();
    wait_for(Duration::from_secs(10), "drops counted", || async {
        (stats.drops(DropReason::UnknownPeer)
            + stats.drops(DropReason::CookieBudget)
            + stats.cookie_replies.load(Ordering::Relaxed)
            >= 1500)
            .then_some(())
    })
    .await;
    let snap = stats.snapshot();
    eprintln!(
        "after {flood_took:?}: {snap:?}, cookies seen by attacker: {cookies}, over the \
         source's cookie budget: {}",
        stats.drops(DropReason::CookieBudget)
    );
    // Under load the attacker's address gets cookie replies up to its budget per second, and
    // nothing more: the rest of its flood costs the agent no send and reflects nothing.
    let budget = u64::from(shadowsteer::tunnel::cookie_budget::PER_SECOND);
    assert!(cookies > 0, "no cookie replies under load: {snap:?}");
    assert!(
        cookies as u64 <= budget * (flood_took.as_secs() + 2),
        "attacker saw {cookies} cookie replies in {flood_took:?}"
    );
    assert!(
        stats.drops(DropReason::CookieBudget) > 500,
        "the flood was answered: {snap:?}"
    );
    assert!(stats.drops(DropReason::Malformed) > 500, "{snap:?}");
    assert!(stats.drops(DropReason::BadMac) > 500, "{snap:?}");
    assert!(stats.drops(DropReason::UnknownIndex) > 500, "{snap:?}");
    assert!(stats.drops(DropReason::UnknownPeer) > 0, "{snap:?}");
    assert_eq!(snap.peers, 1);
    // Health rows report the drops and failures.
    let (dropped, failures): (i64, i64) = wait_for(Duration::from_secs(10), "health drops", || async {
        let r: (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(packets_dropped)::int8, sum(handshake_failures)::int8 FROM appliance_health WHERE appliance_id = 'eu-1'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        match r {
            (Some(d), Some(f)) if d as u64 >= snap.packets_dropped / 2 && f > 0 => Some((d, f)),
            _ => None,
        }
    })
    .await;
    assert!(dropped > 0 && failures > 0);
    agent.stop().await;
}

/// Issue 13, fault 1. Anyone who knows a client's public key can forge initiations that the
/// agent routes to that client's peer (MAC1 and the encrypted static key need only public
/// keys). During an unpaced flood of them that fills the agent's socket, the client's own new
/// handshake must complete with one cookie. With a limiter per peer beside the listener's,
/// the flood kept the peer's own limiter over its limit, and the client bounced between the
/// two limiters' cookies until a reset of one happened to let it through (7 s, 23 cookies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_handshake_completes_during_a_flood_in_the_clients_name() {
    let FloodTarget {
        db: _db,
        dir: _dir,
        service,
        client_key: key,
        agent,
        mut client,
    } = FloodTarget::start().await;
    let target = agent.addr();
    let quiet = client.handshake_within(Duration::from_secs(10)).await;
    assert!(quiet.took.is_some(), "no new handshake without a flood");
    assert!(client.echo(b"before").await);

    // The attacker knows the service's and the client's public keys, nothing else.
    let mut datagrams: Vec<Vec<u8>> = (0..48)
        .map(|_| forged_initiation(&service.public_key(), &key.public_key()))
        .collect();
    let own = boringtun::x25519::StaticSecret::from(*service.expose_bytes());
    let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(&datagrams[0]) else {
        panic!("forged initiation does not parse");
    };
    let half = parse_handshake_anon(&own, &boringtun::x25519::PublicKey::from(&own), &init)
        .expect("forged static key decrypts");
    assert_eq!(&half.peer_static_public, key.public_key().as_bytes());
    let mut rng = rand::thread_rng();
    for _ in 0..16 {
        let mut d = vec![0u8; 96];
        rng.fill_bytes(&mut d);
        d[0] = 4;
        d[1..4].fill(0);
        datagrams.push(d);
    }

    let stats = &agent.handle.device.stats;
    let drops_before = udp_drops(target.port()).unwrap_or(0);
    let flood = Flood::start(&flood_sources(), target, datagrams);
    wait_for(Duration::from_secs(5), "the socket to fill", || async {
        (udp_drops(target.port())? > drops_before).then_some(())
    })
    .await;
    let (drops_full, rx_full) = (
        udp_drops(target.port()).unwrap_or(0),
        stats.rx_datagrams.load(Ordering::Relaxed),
    );
    let cookies_full = stats.cookie_replies.load(Ordering::Relaxed);
    let during = client.handshake_within(Duration::from_secs(10)).await;
    let drops = udp_drops(target.port()).unwrap_or(0) - drops_full;
    let rx = stats.rx_datagrams.load(Ordering::Relaxed) - rx_full;
    let cookies = stats.cookie_replies.load(Ordering::Relaxed) - cookies_full;
    let report = flood.stop();
    eprintln!(
        "quiet handshake: {quiet:?}; during the flood: {during:?}; flood: {} datagrams in {:?} \
         ({:.0}/s); while handshaking the agent read {rx} datagrams, sent {cookies} cookie \
         replies, the kernel dropped {drops}; forged initiations that reached the peer: {}",
        report.sent,
        report.elapsed,
        report.rate(),
        stats.drops(DropReason::HandshakeFailed),
    );
    assert!(drops > 0, "the socket was not kept full");
    assert!(
        stats.drops(DropReason::HandshakeFailed) > 0,
        "no forged initiation reached the client's peer"
    );
    assert!(
        during.took.is_some(),
        "no new handshake during the flood: {during:?}"
    );
    // One limiter, one cookie secret: once the client holds a cookie it gets no other (one
    // more only if the secret rotated meanwhile, every 128 s). Before it holds one, each
    // initiation may earn a cookie: on a loaded machine the first reply can take longer than
    // the 200 ms to the next initiation. Two limiters answered the client with each other's
    // cookies, dozens of times.
    assert!(
        during.cookies <= during.before_cookie + 1,
        "the client bounced between cookies: {during:?}"
    );
    // Cookie replies are bounded per source address and second: the flooders' addresses and
    // the client's, over the seconds the handshake took (rounded up, plus the one it started in).
    let seconds = during.took.map_or(10, |t| t.as_secs() + 2);
    let budget = u64::from(shadowsteer::tunnel::cookie_budget::PER_SECOND);
    assert!(
        cookies <= (flood_sources().len() as u64 + 1) * budget * seconds,
        "{cookies} cookie replies in {seconds} s: the per-source budget did not hold"
    );
    // The socket is still full when the flooder stops: let the agent drain it first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(client.echo(b"after the flood").await, "session unusable");
    agent.stop().await;
}

/// A TCP port forwarder so the agent keeps one database URL while the cluster restarts on a
/// new port (a local cluster picks a free port at every start).
async fn forwarder(upstream: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let up = upstream.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", up)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_postgres_restart() {
    let pg_dir = temp_cluster_dir("shadowsteer-restart").unwrap();
    let d = pg_dir.clone();
    let cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start(&d, Durability::Ephemeral))
            .await
            .unwrap()
            .expect("start cluster");
    shadowsteer::store::target::create_database(&cluster.url("postgres"), DATABASE)
        .await
        .unwrap();
    let upstream = Arc::new(AtomicU16::new(cluster.port()));
    let fwd = forwarder(Arc::clone(&upstream)).await;
    let url = cluster
        .url(DATABASE)
        .replace(&format!(":{}/", cluster.port()), &format!(":{fwd}/"));
    let pool = shadowsteer::store::connect(&url, 2).await.unwrap();
    shadowsteer::store::migrate(&pool).await.unwrap();
    let db = common::TestDb {
        name: DATABASE.into(),
        url: url.clone(),
        pool,
    };
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let clients = inventory(&db, &service, 1);
    let kf = key_file(dir.path(), "service.key", &service);
    let agent = RunningAgent::start(
        &agent_toml("eu-1", "127.0.0.1:0", &kf, &url, ""),
        dir.path(),
        "eu-1",
    )
    .await;
    let (_, key, ip) = &clients[0];
    let mut client = TestClient::new(key, service.public_key(), *ip, agent.addr()).await;
    client.handshake().await;
    assert!(client.echo(b"up").await);
    wait_for(Duration::from_secs(15), "first health row", || async {
        (agent.handle.health.written.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    db.pool.close().await;

    // Postgres goes away.
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        c.stop();
        c
    })
    .await
    .unwrap();
    let down_at = chrono::Utc::now();
    let outage = Instant::now();
    let mut echoes = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        if client.echo(format!("down {echoes}").as_bytes()).await {
            echoes += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        echoes >= 10,
        "only {echoes} echoes while the database was down"
    );
    let buffered = agent.handle.health.buffered.load(Ordering::Relaxed);
    assert!(
        buffered >= 3,
        "{buffered} health rows buffered during the outage"
    );
    drop(cluster);

    // Postgres comes back (same data directory, new port behind the forwarder).
    let d = pg_dir.clone();
    let cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start(&d, Durability::Ephemeral))
            .await
            .unwrap()
            .expect("restart cluster");
    upstream.store(cluster.port(), Ordering::SeqCst);
    let up_at = chrono::Utc::now();
    let pool = shadowsteer::store::connect(&url, 2).await.unwrap();
    let during: i64 = wait_for(Duration::from_secs(30), "buffered rows flushed", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM appliance_health WHERE appliance_id = 'eu-1' AND ts > $1 AND ts < $2",
        )
        .bind(down_at)
        .bind(up_at)
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        (n >= 3).then_some(n)
    })
    .await;
    assert!(during >= 3);
    assert_eq!(agent.handle.health.dropped.load(Ordering::Relaxed), 0);
    // Session counters from the outage reach the database too.
    let rx: i64 = wait_for(Duration::from_secs(15), "session counters", || async {
        let rx: Option<i64> =
            sqlx::query_scalar("SELECT rx_packets FROM session_state WHERE holder = 'eu-1'")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        rx.filter(|rx| *rx > echoes)
    })
    .await;
    assert!(rx > echoes);
    // And the data plane never stopped.
    assert!(client.echo(b"after").await);
    pool.close().await;
    agent.stop().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&pg_dir);
}
