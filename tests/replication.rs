//! `shadowsteer db replication setup|status|remove-region` on real clusters, one per region
//! (tests/regions_support), and the ownership rule of a replicated database.

mod regions_support;

use std::time::{Duration, Instant};

use regions_support::{Regions, run};
use shadowsteer::store::replication::heartbeat;

/// A random WireGuard public key (`_n` only tells call sites apart).
fn key(_n: u8) -> String {
    shadowsteer::domain::SecretKey::generate()
        .public_key()
        .to_base64()
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn eventually_count(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(pool, sql).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n}, expected {want} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An appliance of `region` written in `region`'s database.
async fn add_appliance(pool: &sqlx::PgPool, region: &str, id: &str, octet: u8) {
    sqlx::query("INSERT INTO regions (region) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(region)
        .execute(pool)
        .await
        .expect("region row");
    sqlx::query(
        "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ($1, $2, $3::inet, 51820, $4)",
    )
    .bind(region)
    .bind(id)
    .bind(format!("192.0.2.{octet}"))
    .bind(key(octet))
    .execute(pool)
    .await
    .expect("appliance");
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_from_nothing_second_run_third_region_and_removal() {
    let regions = Regions::start(&["eu", "us", "ap"]).await;
    // Existing data in eu before anything is set up (migrated by hand, as a running
    // single-region installation would be).
    let eu = &regions.get("eu").pool;
    let us = &regions.get("us").pool;
    let ap = &regions.get("ap").pool;
    shadowsteer::store::migrate(eu).await.expect("migrate eu");
    add_appliance(eu, "eu", "eu-1", 1).await;

    let out = regions.setup(&["eu", "us"]);
    assert!(out.contains("create subscription ss_sub_eu_us"), "{out}");
    assert!(!out.contains("secret"), "{out}");
    regions
        .wait_streaming_of(&["eu", "us"], Duration::from_secs(60))
        .await;
    eventually_count(
        us,
        "SELECT count(*) FROM appliances WHERE id = 'eu-1'",
        1,
        Duration::from_secs(10),
    )
    .await;
    // us's own row goes to eu.
    add_appliance(us, "us", "us-1", 2).await;
    eventually_count(
        eu,
        "SELECT count(*) FROM appliances WHERE id = 'us-1'",
        1,
        Duration::from_secs(10),
    )
    .await;

    // The second run changes nothing and says so.
    let out = regions.setup(&["eu", "us"]);
    assert!(out.contains("nothing to change"), "{out}");

    // Status: every subscription streaming, lag from heartbeats in milliseconds.
    heartbeat::beat(eu).await.expect("beat eu");
    heartbeat::beat(us).await.expect("beat us");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out, err) = regions.replication(&["status", "--json"], &["eu", "us"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("secret-pw") && !out.contains(&password_of(&regions.get("eu").url)));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let subs = v["subscriptions"].as_array().expect("subscriptions array");
    assert_eq!(subs.len(), 2, "{out}");
    for s in subs {
        assert_eq!(s["state"], "streaming", "{out}");
        assert!(s["lag_ms"].as_i64().is_some_and(|l| l < 1000), "{out}");
        assert!(s["bytes_behind"].as_i64().is_some(), "{out}");
        assert!(s["last_error"].is_null(), "{out}");
        assert!(s["name"].is_string() && s["from"].is_string() && s["to"].is_string());
    }

    // A third region later: only its pairs are made, the existing ones keep their slots.
    let before: Vec<String> =
        sqlx::query_scalar("SELECT subname::text || oid::text FROM pg_subscription ORDER BY 1")
            .fetch_all(us)
            .await
            .unwrap();
    add_appliance(eu, "eu", "eu-2", 3).await;
    let out = regions.setup(&[]);
    assert!(out.contains("ap: create publication"), "{out}");
    assert!(
        !out.contains("ss_sub_eu_us") && !out.contains("ss_sub_us_eu"),
        "{out}"
    );
    regions.wait_streaming(Duration::from_secs(60)).await;
    let after: Vec<String> = sqlx::query_scalar("SELECT subname::text || oid::text FROM pg_subscription WHERE subname <> 'ss_sub_ap_us' ORDER BY 1")
        .fetch_all(us)
        .await
        .unwrap();
    assert_eq!(before, after);
    eventually_count(
        ap,
        "SELECT count(*) FROM appliances",
        3,
        Duration::from_secs(20),
    )
    .await;
    add_appliance(ap, "ap", "ap-1", 4).await;
    eventually_count(
        eu,
        "SELECT count(*) FROM appliances",
        4,
        Duration::from_secs(10),
    )
    .await;
    eventually_count(
        us,
        "SELECT count(*) FROM appliances",
        4,
        Duration::from_secs(10),
    )
    .await;
    // No duplicates anywhere (a second copy would have stopped on keys).
    assert_eq!(
        count(us, "SELECT count(DISTINCT id) FROM appliances").await,
        4
    );

    // Remove ap: its subscriptions, publication and slots go everywhere.
    let (code, out, err) = regions.replication(&["remove-region", "ap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for r in &regions.regions {
        let subs = count(
            &r.pool,
            "SELECT count(*) FROM pg_subscription WHERE subname LIKE '%ap%'",
        )
        .await;
        let slots = count(
            &r.pool,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%ap%'",
        )
        .await;
        let pubs = count(
            &r.pool,
            "SELECT count(*) FROM pg_publication WHERE pubname = 'ss_pub_ap'",
        )
        .await;
        assert_eq!((subs, slots, pubs), (0, 0, 0), "region {}", r.id);
    }
    let (code, out, _) = regions.replication(&["remove-region", "ap"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to change"), "{out}");
    // eu and us still replicate.
    add_appliance(us, "us", "us-2", 5).await;
    eventually_count(
        eu,
        "SELECT count(*) FROM appliances WHERE id = 'us-2'",
        1,
        Duration::from_secs(10),
    )
    .await;
}

fn password_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.rsplit_once('@'))
        .and_then(|(a, _)| a.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default()
}

/// Nothing of replication exists in `pool`'s database.
async fn untouched(pool: &sqlx::PgPool) -> bool {
    let objects = count(
        pool,
        "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription) + (SELECT count(*) FROM pg_replication_slots)",
    )
    .await;
    let local: bool = sqlx::query_scalar(
        "SELECT to_regclass('public.local_region') IS NOT NULL AND EXISTS (SELECT 1 FROM public.local_region)",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(false);
    objects == 0 && !local
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_one_line_exit_2_and_changes_nothing() {
    let regions = Regions::start(&["eu", "us"]).await;
    let eu = regions.get("eu");
    let us = regions.get("us");
    let check = |args: Vec<String>, expect: &str| {
        let (code, out, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let err = err.trim();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(expect), "{err}");
        assert!(
            !err.contains(&password_of(&eu.url)) && !err.contains("repl-secret-pw"),
            "{err}"
        );
    };
    let base = [
        "db".to_owned(),
        "replication".to_owned(),
        "setup".to_owned(),
    ];
    let with = |extra: &[String]| {
        base.iter()
            .cloned()
            .chain(extra.iter().cloned())
            .collect::<Vec<_>>()
    };
    // Unreachable URL (a port nobody listens on).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead_url = format!("postgres://postgres:secret-dead@127.0.0.1:{dead}/shadowsteer");
    check(
        with(&[
            "--region".into(),
            format!("eu={}", eu.url),
            "--region".into(),
            format!("us={dead_url}"),
        ]),
        "region us: cannot connect to postgres://postgres:***@",
    );
    // The same id twice.
    check(
        with(&[
            "--region".into(),
            format!("eu={}", eu.url),
            "--region".into(),
            format!("eu={}", us.url),
        ]),
        "--region eu is given twice",
    );
    // Two ids, one database.
    check(
        with(&[
            "--region".into(),
            format!("eu={}", eu.url),
            "--region".into(),
            format!("us={}", eu.url),
        ]),
        "are the same database",
    );
    assert!(untouched(&eu.pool).await && untouched(&us.pool).await);

    // A database that belongs to another region.
    shadowsteer::store::migrate(&us.pool).await.unwrap();
    sqlx::query("INSERT INTO local_region (region) VALUES ('ap')")
        .execute(&us.pool)
        .await
        .unwrap();
    check(
        with(&[
            "--region".into(),
            format!("eu={}", eu.url),
            "--region".into(),
            format!("us={}", us.url),
        ]),
        "region us: that database already belongs to region ap",
    );
    sqlx::query("DELETE FROM local_region")
        .execute(&us.pool)
        .await
        .unwrap();
    // A schema this binary does not know (a newer shadowsteer migrated it).
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (20991231000000, 'future', true, '\\x00'::bytea, 0)")
        .execute(&us.pool)
        .await
        .unwrap();
    check(
        with(&[
            "--region".into(),
            format!("eu={}", eu.url),
            "--region".into(),
            format!("us={}", us.url),
        ]),
        "schema versions differ",
    );
    assert!(untouched(&eu.pool).await && untouched(&us.pool).await);
    // eu was not even migrated by the refused runs.
    assert_eq!(
        count(
            &eu.pool,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'appliances'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ownership_local_writes_refused_replicated_rows_applied() {
    let regions = Regions::start(&["eu", "us"]).await;
    regions.setup(&[]);
    regions.wait_streaming(Duration::from_secs(60)).await;
    let eu = &regions.get("eu").pool;
    let us = &regions.get("us").pool;
    add_appliance(eu, "eu", "eu-1", 1).await;
    add_appliance(us, "us", "us-1", 2).await;
    eventually_count(
        eu,
        "SELECT count(*) FROM appliances",
        2,
        Duration::from_secs(10),
    )
    .await;
    eventually_count(
        us,
        "SELECT count(*) FROM appliances",
        2,
        Duration::from_secs(10),
    )
    .await;

    // A local write of another region's row: refused by the database, with SSR01.
    let e = sqlx::query("UPDATE appliances SET capacity = 5 WHERE id = 'eu-1'")
        .execute(us)
        .await
        .expect_err("foreign update refused");
    assert!(
        shadowsteer::store::replication::is_ownership_violation(&e),
        "{e}"
    );
    assert!(e.to_string().contains("belongs to region us"), "{e}");
    let e = sqlx::query("INSERT INTO failure_events (region, appliance_id, started_at) VALUES ('eu', 'eu-1', now())")
        .execute(us)
        .await
        .expect_err("foreign insert refused");
    assert!(
        shadowsteer::store::replication::is_ownership_violation(&e),
        "{e}"
    );
    assert!(
        sqlx::query("DELETE FROM appliances WHERE id = 'eu-1'")
            .execute(us)
            .await
            .is_err()
    );
    // The CLI says so as an input error (exit 2), one line.
    let (code, _, err) = run(&[
        "appliance".into(),
        "add".into(),
        "--id".into(),
        "eu-9".into(),
        "--region".into(),
        "eu".into(),
        "--endpoint".into(),
        "192.0.2.99:51820".into(),
        "--public-key".into(),
        key(9),
        "--database-url".into(),
        regions.get("us").url.clone(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("belongs to region us"), "{err}");
    // The token command defaults to the database's own region.
    let (code, _, err) = run(&[
        "token".into(),
        "create".into(),
        "--name".into(),
        "ops".into(),
        "--database-url".into(),
        regions.get("us").url.clone(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        count(us, "SELECT count(*) FROM api_tokens WHERE region = 'us'").await,
        1
    );

    // Replicated rows that local rules would refuse are applied, and nothing is disabled:
    // a row of another region (ownership), and session state whose client does not exist on
    // the subscriber yet (a foreign key the apply worker does not check).
    sqlx::query("INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('eu', 'ghost', 'eu-1', 'primary', 77)")
        .execute(eu)
        .await
        .expect_err("eu refuses it locally too: ghost is no client");
    let mut c = eu.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('eu', 'ghost', 'eu-1', 'primary', 77)")
        .execute(&mut *c)
        .await
        .expect("written on eu without the foreign-key check");
    sqlx::query("RESET session_replication_role")
        .execute(&mut *c)
        .await
        .unwrap();
    drop(c);
    eventually_count(
        us,
        "SELECT count(*) FROM session_state WHERE client_id = 'ghost'",
        1,
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("UPDATE appliances SET capacity = 7 WHERE id = 'eu-1'")
        .execute(eu)
        .await
        .unwrap();
    eventually_count(
        us,
        "SELECT count(*) FROM appliances WHERE id = 'eu-1' AND capacity = 7",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert!(regions.disabled().await.is_empty());
    let errors = count(
        us,
        "SELECT COALESCE(sum(apply_error_count), 0)::int8 FROM pg_stat_subscription_stats",
    )
    .await;
    assert_eq!(errors, 0);

    // Removing a client here cascades to the local copies of other regions' sessions of it.
    sqlx::query("INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'alice', $1, '10.77.0.2', 5, 'eu-1', 'us-1')")
        .bind(key(20))
        .execute(eu)
        .await
        .unwrap();
    eventually_count(
        us,
        "SELECT count(*) FROM clients WHERE id = 'alice'",
        1,
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('us', 'alice', 'us-1', 'shadow', 5)")
        .execute(us)
        .await
        .expect("us writes its own session row of an eu client");
    eventually_count(
        eu,
        "SELECT count(*) FROM session_state WHERE client_id = 'alice'",
        1,
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("DELETE FROM clients WHERE id = 'alice'")
        .execute(eu)
        .await
        .expect("cascade allowed");
    eventually_count(
        us,
        "SELECT count(*) FROM clients WHERE id = 'alice'",
        0,
        Duration::from_secs(10),
    )
    .await;
    assert!(regions.disabled().await.is_empty());
}
