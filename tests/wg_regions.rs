//! Takeover across regions, one Postgres per region with logical replication (set up by
//! `shadowsteer db replication setup`): the primary's agent uses region `eu`'s database, the
//! shadow's agent region `us`'s, and a stock `wireguard-go` client talks to them through a
//! router namespace. Claims travel between regions by replication only.
//!
//! Needs root, /dev/net/tun, `ip`, `wireguard-go` and `wg`; skips loudly otherwise (fails
//! under CI=true).

mod agent_support;
mod common;
mod regions_support;
mod wg_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_support::{key_file, wait_for};
use regions_support::Regions;
use shadowsteer::domain::SecretKey;
use sqlx::PgPool;
use wg_support::{
    Agent, Probe, Stage, WG_PORT, agent_text, client_endpoint, db_relay, finish, flowing, skip,
    skip_reason, start_wireguard_go,
};

const PRIMARY: usize = 2;
const SHADOW: usize = 3;

async fn holder(pool: &PgPool) -> Option<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT holder, epoch FROM session_state WHERE client_id = 'alice'
         ORDER BY epoch DESC, region DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

async fn wait_holder(pool: &PgPool, who: &str, what: &str) -> i64 {
    wait_for(Duration::from_secs(15), what, || async {
        holder(pool).await.filter(|(h, _)| h == who).map(|(_, e)| e)
    })
    .await
}

fn cli(url: &str, args: &[&str]) {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.push("--database-url".into());
    all.push(url.to_owned());
    let (code, out, err) = regions_support::run(&all);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_failback_and_regional_partition_with_one_postgres_per_region() {
    if let Some(why) = skip_reason() {
        skip(&why);
        return;
    }
    let regions = Regions::start(&["eu", "us"]).await;
    regions.setup(&[]);
    regions.wait_streaming(Duration::from_secs(30)).await;
    let (eu, us) = (regions.get("eu"), regions.get("us"));
    let stage = Stage::new(&["c", "p", "s"]);
    let dir = tempfile::tempdir().unwrap();
    let service = SecretKey::generate();
    let public = service.public_key().to_base64();

    // Inventory, each row written in its own region.
    for (id, region, k, url) in [
        ("eu-1", "eu", PRIMARY, &eu.url),
        ("us-1", "us", SHADOW, &us.url),
    ] {
        let ep = format!("{}:{WG_PORT}", Stage::ip(k));
        cli(url, &common::appliance_add(id, region, &ep, &public));
    }
    wait_for(Duration::from_secs(10), "appliances replicated", || async {
        (count(&eu.pool, "SELECT count(*) FROM appliances").await == 2
            && count(&us.pool, "SELECT count(*) FROM appliances").await == 2)
            .then_some(())
    })
    .await;
    let client_key = SecretKey::generate();
    let client_public = client_key.public_key().to_base64();
    cli(
        &eu.url,
        &common::client_add("alice", &client_public, "10.77.0.2", "eu-1", "us-1"),
    );
    wait_for(Duration::from_secs(10), "client replicated", || async {
        (count(&us.pool, "SELECT count(*) FROM clients").await == 1).then_some(())
    })
    .await;

    let kf = key_file(dir.path(), "service.key", &service);
    let (eu_url, us_url) = (db_relay(&eu.url).await, db_relay(&us.url).await);
    let mut primary = Agent::start(
        &stage,
        PRIMARY,
        dir.path(),
        "primary",
        &agent_text("eu-1", PRIMARY, &kf, &eu_url, ""),
    )
    .await;
    let shadow = Agent::start(
        &stage,
        SHADOW,
        dir.path(),
        "shadow",
        &agent_text("us-1", SHADOW, &kf, &us_url, ""),
    )
    .await;
    let _wg = start_wireguard_go(
        &stage,
        1,
        dir.path(),
        &client_key,
        &service,
        SocketAddr::from((Stage::ip(PRIMARY), WG_PORT)),
    );
    let client_ns = stage.ns(1).to_owned();
    flowing(&client_ns).await;
    // The shadow's region knows the client's endpoint (the primary's row, replicated).
    wait_for(
        Duration::from_secs(15),
        "session replicated to us",
        || async {
            (count(
            &us.pool,
            "SELECT count(*) FROM session_state WHERE region = 'eu' AND endpoint_ip IS NOT NULL",
        )
        .await
            == 1)
            .then_some(())
        },
    )
    .await;
    // Let the shadow's loader read it (notification from the apply worker).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sudden crash: the shadow takes over; its claim reaches eu by replication.
    let probe = Probe::start(&client_ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.kill9();
    let epoch = wait_holder(&us.pool, "us-1", "claim in us").await;
    wait_holder(&eu.pool, "us-1", "claim replicated to eu").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = finish(probe).await;
    eprintln!("regions, kill -9 of the primary: {r:?}");
    assert!(r.longest_gap_ms < 1500, "{r:?}");

    // The old primary restarts on eu's database: it reads the replicated claim and stays down.
    let probe = Probe::start(&client_ns);
    let mut primary = Agent::start(
        &stage,
        PRIMARY,
        dir.path(),
        "primary",
        &agent_text("eu-1", PRIMARY, &kf, &eu_url, ""),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = finish(probe).await;
    eprintln!("regions, old primary restarted: {r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(holder(&eu.pool).await, Some(("us-1".to_owned(), epoch)));

    // Failback decided in eu (an operator's request): make-before-break, 0 lost.
    let probe = Probe::start(&client_ns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cli(&eu.url, &["session", "failback", "--client", "alice"]);
    wait_holder(&eu.pool, "eu-1", "failback claim in eu").await;
    wait_holder(&us.pool, "eu-1", "failback claim replicated to us").await;
    shadow.wait_log("stood down", 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = finish(probe).await;
    eprintln!("regions, failback: {r:?}");
    assert_eq!(r.lost, 0, "{r:?}");

    // Regions partitioned (replication cut) and the appliances cut from each other, while both
    // reach the client: the client moves at most once.
    let probe = Probe::start(&client_ns);
    regions.partition("us");
    stage.partition(PRIMARY, SHADOW, true);
    let mut seen = vec![client_endpoint(&stage, 1)];
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let ep = client_endpoint(&stage, 1);
        if seen.last() != Some(&ep) {
            seen.push(ep);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = finish(probe).await;
    eprintln!("regions partitioned: endpoints {seen:?}, {r:?}");
    assert!(seen.len() <= 2, "the client moved more than once: {seen:?}");
    assert!(r.longest_gap_ms < 1500, "{r:?}");
    // Heal: the primary learns of the shadow's claim by replication and stands down.
    let probe = Probe::start(&client_ns);
    regions.heal();
    stage.partition(PRIMARY, SHADOW, false);
    if seen.len() == 2 {
        primary.wait_log("stood down", 1).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = finish(probe).await;
    eprintln!("regions healed: {r:?}");
    for line in shadow.log_text().lines().chain(primary.log_text().lines()) {
        if line.contains("group peer") || line.contains("claimed") || line.contains("stood down") {
            eprintln!("{line}");
        }
    }
    assert_eq!(r.lost, 0, "{r:?}");
    assert!(regions.disabled().await.is_empty());

    // Back to the primary, then a predicted move decided by region us's steering: the decision
    // is local to the shadow, the claim reaches the primary by replication. 0 lost.
    // (asked in the shadow's region this time: the decision row is us's, and replicates)
    cli(&us.url, &["session", "failback", "--client", "alice"]);
    wait_holder(&us.pool, "eu-1", "failback replicated to us").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = Probe::start(&client_ns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query(
        "INSERT INTO steering_decisions (region, client_id, from_appliance, to_appliance, reason)
         VALUES ('us', 'alice', 'eu-1', 'us-1', 'test: primary risk above threshold')",
    )
    .execute(&us.pool)
    .await
    .unwrap();
    wait_holder(&eu.pool, "us-1", "predicted claim replicated to eu").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = finish(probe).await;
    eprintln!("regions, predicted move: {r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    primary.kill9();
}
