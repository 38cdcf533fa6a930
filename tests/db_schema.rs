//! The schema against a real Postgres: migrations, constraints, notify triggers (local and
//! replicated), retention.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use shadowsteer::store::{
    self,
    notify::{Change, ChangeOp, ChangedTable, Follower, Heard},
};
use sqlx::PgPool;

async fn empty_db() -> (String, PgPool) {
    let cluster = common::cluster();
    let name = format!("empty_{}", rand_suffix());
    store::target::create_database(&cluster.url("postgres"), &name)
        .await
        .unwrap();
    let url = cluster.url(&name);
    let pool = store::connect(&url, 4).await.unwrap();
    (url, pool)
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn migrations_apply_from_empty_and_are_idempotent() {
    let (_url, pool) = empty_db().await;
    let status = store::migration_status(&pool).await.unwrap();
    assert!(!status.is_empty());
    assert!(status.iter().all(|m| !m.applied));

    let first = store::migrate(&pool).await.unwrap();
    assert_eq!(
        first.len(),
        status.len(),
        "every migration applied on first run"
    );
    let second = store::migrate(&pool).await.unwrap();
    assert!(second.is_empty(), "second run applied {second:?}");
    assert!(
        store::migration_status(&pool)
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "advisories",
        "api_tokens",
        "appliance_health",
        "appliances",
        "clients",
        "failure_events",
        "path_probes",
        "regions",
        "risk_scores",
        "session_state",
        "steering_decisions",
    ] {
        assert!(tables.iter().any(|x| x == t), "missing table {t}");
    }
}

#[tokio::test]
async fn db_commands_migrate_once_and_report_status() {
    let (url, pool) = empty_db().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .args(["--database-url", &url])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["db", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("pending"), "{out}");
    let (code, out) = run(&["db", "migrate"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("applied "), "{out}");
    let (code, out) = run(&["db", "migrate"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to apply"), "{out}");
    let (code, out) = run(&["db", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("applied") && !out.contains("pending"), "{out}");
    pool.close().await;
}

/// Every statement must fail with a check, foreign-key, unique or not-null violation.
async fn assert_all_rejected(pool: &PgPool, statements: &[&str]) {
    for sql in statements {
        let err = sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(pool)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {sql}"));
        let code = match &err {
            sqlx::Error::Database(e) => e.code().map(|c| c.to_string()).unwrap_or_default(),
            other => panic!("{sql}: unexpected error {other}"),
        };
        assert!(
            matches!(
                code.as_str(),
                "23514" | "23503" | "23505" | "23502" | "22P02"
            ),
            "{sql}: error {code}: {err}"
        );
    }
}

const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const KEY2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

async fn seed(pool: &PgPool) {
    for sql in [
        "INSERT INTO regions (region) VALUES ('eu'), ('us')".to_string(),
        format!(
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-1', '192.0.2.1', 51820, '{KEY}'), ('us', 'us-1', '192.0.2.2', 51820, '{KEY}')"
        ),
        format!(
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'alice', '{KEY2}', '10.77.0.2', 7, 'eu-1', 'us-1')"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn constraints_reject_bad_rows() {
    let db = common::test_db().await;
    seed(&db.pool).await;
    assert_all_rejected(
        &db.pool,
        &[
            // ids must be DNS labels; regions must exist
            "INSERT INTO regions (region) VALUES ('EU')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'Bad_Id', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('mars', 'm-1', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            // ports in range, hosts not networks, keys well-formed, states known, capacity positive
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.9', 0, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.9', 65536, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.0/24', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.9', 1, 'not-a-key')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykx=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key, state) VALUES ('eu', 'eu-9', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=', 'sleeping')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key, capacity) VALUES ('eu', 'eu-9', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=', 0)",
            // an id is unique across regions; endpoints are unique
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('us', 'eu-1', '192.0.2.9', 1, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-9', '192.0.2.1', 51820, 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=')",
            // clients: known appliances, distinct primary and shadow, 24-bit peer index, unique key and index
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.3', 8, 'eu-1', 'nowhere')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.3', 8, 'eu-1', 'eu-1')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.3', 16777216, 'eu-1', 'us-1')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.3', 0, 'eu-1', 'us-1')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.3', 7, 'eu-1', 'us-1')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=', '10.77.0.3', 8, 'eu-1', 'us-1')",
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance) VALUES ('eu', 'bob', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '10.77.0.2', 8, 'eu-1', 'us-1')",
            // an appliance in use cannot be removed
            "DELETE FROM appliances WHERE id = 'us-1'",
            // risk scores in [0,1] with an interval containing the score
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', 1.5, 0, 1, 'm1', now())",
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', -0.1, 0, 1, 'm1', now())",
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', 0.5, 0.6, 0.9, 'm1', now())",
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'planet', 'eu-1', 0.5, 0.1, 0.9, 'm1', now())",
            // health and probes in range
            "INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped) VALUES ('eu', 'eu-1', now(), 1.2, 0.5, 0, 0, 0, 0, 0, 0)",
            "INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped) VALUES ('eu', 'eu-1', now(), 0.2, 0.5, -1, 0, 0, 0, 0, 0)",
            "INSERT INTO path_probes (region, src, dst_kind, dst, ts, rtt_ms, jitter_ms, loss, samples) VALUES ('eu', 'eu-1', 'appliance', 'us-1', now(), 10, 1, 1.5, 5)",
            "INSERT INTO path_probes (region, src, dst_kind, dst, ts, rtt_ms, jitter_ms, loss, samples) VALUES ('eu', 'eu-1', 'router', 'us-1', now(), 10, 1, 0.5, 5)",
            "INSERT INTO path_probes (region, src, dst_kind, dst, ts, rtt_ms, jitter_ms, loss, samples) VALUES ('eu', 'eu-1', 'appliance', 'us-1', now(), -3, 1, 0.5, 5)",
            // advisories: one scope, known kind, risk in range, window in order
            "INSERT INTO advisories (region, appliance_id, kind, risk, starts_at) VALUES ('eu', 'eu-1', 'astrological', 0.5, now())",
            "INSERT INTO advisories (region, appliance_id, kind, risk, starts_at) VALUES ('eu', 'eu-1', 'environmental', 1.5, now())",
            "INSERT INTO advisories (region, appliance_id, scope_region, kind, risk, starts_at) VALUES ('eu', 'eu-1', 'eu', 'environmental', 0.5, now())",
            "INSERT INTO advisories (region, kind, risk, starts_at) VALUES ('eu', 'environmental', 0.5, now())",
            "INSERT INTO advisories (region, appliance_id, kind, risk, starts_at, ends_at) VALUES ('eu', 'eu-1', 'environmental', 0.5, now(), now() - interval '1 minute')",
            "INSERT INTO advisories (region, appliance_id, kind, risk, starts_at) VALUES ('eu', 'ghost', 'environmental', 0.5, now())",
            // sessions: role known, epoch non-negative, endpoint complete, port in range
            "INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('eu', 'alice', 'eu-1', 'boss', 7)",
            "INSERT INTO session_state (region, client_id, holder, role, peer_index, epoch) VALUES ('eu', 'alice', 'eu-1', 'primary', 7, -1)",
            "INSERT INTO session_state (region, client_id, holder, role, peer_index, endpoint_ip) VALUES ('eu', 'alice', 'eu-1', 'primary', 7, '198.51.100.7')",
            "INSERT INTO session_state (region, client_id, holder, role, peer_index, endpoint_ip, endpoint_port) VALUES ('eu', 'alice', 'eu-1', 'primary', 7, '198.51.100.7', 70000)",
            "INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('eu', 'mallory', 'eu-1', 'primary', 7)",
            "INSERT INTO session_state (region, client_id, holder, role, peer_index, receiver_index) VALUES ('eu', 'alice', 'eu-1', 'primary', 7, 4294967296)",
            // failure events and decisions
            "INSERT INTO failure_events (region, appliance_id, started_at, ended_at) VALUES ('eu', 'eu-1', now(), now() - interval '1 second')",
            "INSERT INTO steering_decisions (region, client_id, to_appliance, reason, primary_risk) VALUES ('eu', 'alice', 'us-1', 'risk', 2)",
            "INSERT INTO steering_decisions (region, client_id, to_appliance, reason) VALUES ('eu', 'alice', 'us-1', '')",
            // tokens: hashes only (32 bytes), known scope
            "INSERT INTO api_tokens (region, name, token_hash) VALUES ('eu', 'ops', '\\x0102')",
            "INSERT INTO api_tokens (region, name, token_hash, scope) VALUES ('eu', 'ops', decode(repeat('ab', 32), 'hex'), 'root')",
        ],
    )
    .await;

    // The valid counterparts go in, so the rejections above are about the values.
    for sql in [
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', 0.5, 0.4, 0.6, 'm1', now())",
        "INSERT INTO session_state (region, client_id, holder, role, peer_index, endpoint_ip, endpoint_port, receiver_index) VALUES ('eu', 'alice', 'eu-1', 'primary', 7, '198.51.100.7', 40000, 1792)",
        "INSERT INTO advisories (region, scope_region, kind, risk, starts_at) VALUES ('eu', 'eu', 'maintenance', 0.3, now())",
        "INSERT INTO api_tokens (region, name, token_hash) VALUES ('eu', 'ops', decode(repeat('ab', 32), 'hex'))",
        "INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped) VALUES ('eu', 'eu-1', now(), 0.2, 0.5, 10, 10, 0.1, 1, 0, 0)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn next_change(listener: &mut sqlx::postgres::PgListener) -> Change {
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("no notification within 10 s")
        .expect("listener failed");
    Change::from_notification(&n).unwrap_or_else(|| panic!("not ours: {}", n.payload()))
}

async fn assert_quiet(listener: &mut sqlx::postgres::PgListener) {
    if let Ok(Some(n)) = listener.try_recv_timeout(Duration::from_millis(300)).await {
        panic!("unexpected notification {}", n.payload());
    }
}

trait TryRecvTimeout {
    async fn try_recv_timeout(
        &mut self,
        d: Duration,
    ) -> Result<Option<sqlx::postgres::PgNotification>, ()>;
}

impl TryRecvTimeout for sqlx::postgres::PgListener {
    async fn try_recv_timeout(
        &mut self,
        d: Duration,
    ) -> Result<Option<sqlx::postgres::PgNotification>, ()> {
        match tokio::time::timeout(d, self.recv()).await {
            Ok(Ok(n)) => Ok(Some(n)),
            Ok(Err(_)) => Err(()),
            Err(_) => Ok(None),
        }
    }
}

#[tokio::test]
async fn triggers_notify_local_changes() {
    let db = common::test_db().await;
    let mut listener = store::notify::listen(&db.url).await.unwrap();
    seed(&db.pool).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_change(&mut listener).await);
    }
    assert_eq!(seen[0].table, ChangedTable::Appliances);
    assert_eq!(seen[2].table, ChangedTable::Clients);
    assert_eq!(seen[2].op, ChangeOp::Insert);
    assert_eq!(seen[2].key, "alice");
    assert_eq!(seen[2].region, "eu");

    sqlx::query("INSERT INTO session_state (region, client_id, holder, role, peer_index) VALUES ('eu', 'alice', 'eu-1', 'primary', 7)")
        .execute(&db.pool).await.unwrap();
    assert_eq!(
        next_change(&mut listener).await.table,
        ChangedTable::SessionState
    );
    // Counter checkpoints are not news...
    sqlx::query("UPDATE session_state SET tx_packets = 100, version = version + 1 WHERE client_id = 'alice'")
        .execute(&db.pool).await.unwrap();
    assert_quiet(&mut listener).await;
    // ...a change of holder is.
    sqlx::query("UPDATE session_state SET holder = 'us-1', epoch = 1 WHERE client_id = 'alice'")
        .execute(&db.pool)
        .await
        .unwrap();
    let c = next_change(&mut listener).await;
    assert_eq!(
        (c.table, c.op, c.key.as_str()),
        (ChangedTable::SessionState, ChangeOp::Update, "alice")
    );

    sqlx::query("INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', 0.5, 0.4, 0.6, 'm1', now())")
        .execute(&db.pool).await.unwrap();
    let c = next_change(&mut listener).await;
    assert_eq!(
        (c.table, c.key.as_str()),
        (ChangedTable::RiskScores, "eu-1")
    );
    sqlx::query("INSERT INTO advisories (region, appliance_id, kind, risk, starts_at) VALUES ('eu', 'eu-1', 'environmental', 0.9, now())")
        .execute(&db.pool).await.unwrap();
    assert_eq!(
        next_change(&mut listener).await.table,
        ChangedTable::Advisories
    );
    // Telemetry is never notified (NOTIFY serialises commits).
    sqlx::query("INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped) VALUES ('eu', 'eu-1', now(), 0.2, 0.5, 10, 10, 0.1, 1, 0, 0)")
        .execute(&db.pool).await.unwrap();
    assert_quiet(&mut listener).await;
    sqlx::query("DELETE FROM clients WHERE id = 'alice'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut deleted = Vec::new();
    for _ in 0..2 {
        let c = next_change(&mut listener).await;
        deleted.push((c.table, c.op));
    }
    assert!(
        deleted.contains(&(ChangedTable::Clients, ChangeOp::Delete)),
        "{deleted:?}"
    );
    assert!(
        deleted.contains(&(ChangedTable::SessionState, ChangeOp::Delete)),
        "{deleted:?}"
    );
}

/// What an agent's roster and takeover loaders rely on: a follower is stale (to be re-read in
/// full) at start and after its connection is cut, hears the triggers' changes, and skips
/// notifications that are not ours.
#[tokio::test]
async fn a_follower_is_stale_at_start_and_after_its_connection_is_cut() {
    let db = common::test_db().await;
    let mut follow = Follower::new(db.url.clone(), "test", Duration::from_secs(3600));
    let shutdown = tokio_util::sync::CancellationToken::new();
    assert!(follow.is_stale());
    follow.connect().await;
    follow.refreshed();

    seed(&db.pool).await;
    let heard = tokio::time::timeout(Duration::from_secs(10), follow.next(&shutdown))
        .await
        .expect("nothing heard within 10 s");
    let Heard::Change(c) = heard else {
        panic!("expected a change, heard {heard:?}")
    };
    assert_eq!(c.table, ChangedTable::Appliances);
    // The rest of the seed's changes, then a foreign payload on our channel: skipped.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while follow.next_until(until).await.is_some() {}
    sqlx::query("SELECT pg_notify('shadowsteer', 'not json')")
        .execute(&db.pool)
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    assert!(follow.next_until(until).await.is_none());
    assert!(!follow.is_stale(), "a foreign payload is not a gap");

    // Cut the listener's connection: the follower reconnects and calls its copy stale.
    let cut: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(cut.len(), 1, "one listener connection");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(cut[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !follow.is_stale() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a cut connection was not noticed"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), follow.next(&shutdown)).await;
    }
    follow.refreshed();
    sqlx::query("UPDATE appliances SET state = 'draining' WHERE id = 'eu-1'")
        .execute(&db.pool)
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Heard::Change(c) = follow.next(&shutdown).await {
                return c;
            }
        }
    })
    .await
    .expect("no change heard after the reconnect");
    assert_eq!(
        (heard.table, heard.key.as_str()),
        (ChangedTable::Appliances, "eu-1")
    );

    shutdown.cancel();
    assert!(matches!(follow.next(&shutdown).await, Heard::Shutdown));
}

#[tokio::test]
async fn triggers_notify_replicated_changes() {
    use shadowsteer::localpg::{Durability, LocalCluster, temp_cluster_dir};
    // The publisher is the harness cluster ("eu"); the subscriber a second cluster ("us").
    let eu = common::test_db().await;
    let dir = temp_cluster_dir("shadowsteer-test-us").unwrap();
    let us_cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start(&dir, Durability::Ephemeral))
            .await
            .unwrap()
            .unwrap();
    store::target::create_database(&us_cluster.url("postgres"), "shadowsteer")
        .await
        .unwrap();
    let us_url = us_cluster.url("shadowsteer");
    let us = store::connect(&us_url, 4).await.unwrap();
    store::migrate(&us).await.unwrap();

    // Each region publishes only the rows it owns (PG15 row filters, per table).
    sqlx::query("CREATE PUBLICATION eu_pub FOR TABLE regions WHERE (region = 'eu'), appliances WHERE (region = 'eu'), clients WHERE (region = 'eu'), risk_scores WHERE (region = 'eu'), advisories WHERE (region = 'eu'), session_state WHERE (region = 'eu')")
        .execute(&eu.pool)
        .await
        .unwrap();
    let conninfo = common::cluster().conninfo(&eu.name);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SUBSCRIPTION eu_sub CONNECTION '{conninfo}' PUBLICATION eu_pub WITH (disable_on_error = true)"
    )))
    .execute(&us)
    .await
    .unwrap();

    let mut listener = store::notify::listen(&us_url).await.unwrap();
    // A row of region us, local to the subscriber.
    sqlx::query("INSERT INTO regions (region) VALUES ('us')")
        .execute(&us)
        .await
        .unwrap();
    // eu's rows replicate and notify on the subscriber.
    sqlx::query("INSERT INTO regions (region) VALUES ('eu')")
        .execute(&eu.pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ('eu', 'eu-1', '192.0.2.1', 51820, '{KEY}')")))
        .execute(&eu.pool).await.unwrap();
    let c = next_change(&mut listener).await;
    assert_eq!(
        (c.table, c.op, c.region.as_str(), c.key.as_str()),
        (ChangedTable::Appliances, ChangeOp::Insert, "eu", "eu-1")
    );
    sqlx::query("UPDATE appliances SET state = 'draining' WHERE id = 'eu-1'")
        .execute(&eu.pool)
        .await
        .unwrap();
    let c = next_change(&mut listener).await;
    assert_eq!(
        (c.table, c.op),
        (ChangedTable::Appliances, ChangeOp::Update)
    );
    let state: String = sqlx::query_scalar("SELECT state FROM appliances WHERE id = 'eu-1'")
        .fetch_one(&us)
        .await
        .unwrap();
    assert_eq!(state, "draining");
    sqlx::query("INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at) VALUES ('eu', 'appliance', 'eu-1', 0.8, 0.7, 0.9, 'm1', now())")
        .execute(&eu.pool).await.unwrap();
    let c = next_change(&mut listener).await;
    assert_eq!(
        (c.table, c.key.as_str()),
        (ChangedTable::RiskScores, "eu-1")
    );

    // The subscription is still enabled: no apply error (e.g. an unqualified name in a trigger).
    let enabled: bool =
        sqlx::query_scalar("SELECT subenabled FROM pg_subscription WHERE subname = 'eu_sub'")
            .fetch_one(&us)
            .await
            .unwrap();
    assert!(enabled);
    sqlx::query("DROP SUBSCRIPTION eu_sub")
        .execute(&us)
        .await
        .unwrap();
    us.close().await;
    drop(us_cluster);
}

#[tokio::test]
async fn retention_prunes_old_rows_in_batches() {
    let db = common::test_db().await;
    seed(&db.pool).await;
    let now = Utc::now();
    // 25 rows a day old, 5 fresh.
    let rows: Vec<_> = (0..30)
        .map(|i| {
            let ts = if i < 25 {
                now - TimeDelta::days(1) - TimeDelta::seconds(i)
            } else {
                now - TimeDelta::seconds(i)
            };
            shadowsteer::domain::ApplianceHealth {
                region: "eu".parse().unwrap(),
                appliance: "eu-1".parse().unwrap(),
                ts,
                cpu: shadowsteer::domain::Fraction::new(0.5).unwrap(),
                mem: shadowsteer::domain::Fraction::new(0.5).unwrap(),
                bw_in_bps: 1,
                bw_out_bps: 1,
                bw_util: shadowsteer::domain::Fraction::new(0.1).unwrap(),
                sessions: 1,
                handshake_failures: 0,
                packets_dropped: 0,
            }
        })
        .collect();
    assert_eq!(
        store::telemetry::insert_health(&db.pool, &rows)
            .await
            .unwrap(),
        30
    );
    // Resending the same rows writes nothing.
    assert_eq!(
        store::telemetry::insert_health(&db.pool, &rows)
            .await
            .unwrap(),
        0
    );

    let policy = store::retention::RetentionPolicy::uniform(Duration::from_secs(3600), 10);
    let report = store::retention::prune(&db.pool, &policy).await.unwrap();
    let health = report
        .iter()
        .find(|p| p.table == "appliance_health")
        .unwrap();
    assert_eq!(health.deleted, 25);
    assert_eq!(
        health.batches, 3,
        "25 rows in batches of 10 take 3 statements"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM appliance_health")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 5);
    // Clients and appliances are never pruned.
    let clients: i64 = sqlx::query_scalar("SELECT count(*) FROM clients")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(clients, 1);
    // The function refuses tables without a policy and absurd batches.
    assert!(
        sqlx::query("SELECT shadowsteer_prune('clients', now(), 10)")
            .execute(&db.pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("SELECT shadowsteer_prune('path_probes', now(), 0)")
            .execute(&db.pool)
            .await
            .is_err()
    );
}

/// The risk history is a row per change of score; a scorer's confirmation (only `confirmed_at`
/// moves) must not rewrite it. Before the fix every confirmation rewrote the history row in
/// place (same values, a new row version each time).
#[tokio::test]
async fn risk_history_ignores_confirmations() {
    let db = common::test_db().await;
    seed(&db.pool).await;
    sqlx::query(
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at)
         VALUES ('eu', 'appliance', 'eu-1', 0.1, 0.05, 0.2, 'm1', '2026-12-03T10:00:00Z')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let version = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT max(xmin::text), count(*) FROM risk_history WHERE subject = 'eu-1'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let (first, rows) = version().await;
    assert_eq!(rows, 1, "an insert is history");
    for _ in 0..3 {
        sqlx::query("UPDATE risk_scores SET confirmed_at = now() WHERE subject = 'eu-1'")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(
        version().await,
        (first.clone(), 1),
        "a confirmation rewrote the history row"
    );
    // A new score is history again.
    sqlx::query(
        "UPDATE risk_scores SET score = 0.4, score_high = 0.5, computed_at = '2026-12-03T10:00:05Z' WHERE subject = 'eu-1'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (_, rows) = version().await;
    assert_eq!(rows, 2);
    let (score,): (f64,) = sqlx::query_as(
        "SELECT score FROM risk_history WHERE subject = 'eu-1' ORDER BY computed_at DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(score, 0.4);
}

/// The one lookup of an appliance's region that the roster, the takeover group and the
/// takeover writer share: known, unknown, and a database that is gone.
#[tokio::test]
async fn an_appliances_region_is_looked_up_or_reported_missing() {
    let db = common::test_db().await;
    seed(&db.pool).await;
    let id = |s: &str| shadowsteer::domain::ApplianceId::new(s.to_owned()).unwrap();
    let region = store::appliance_region(&db.pool, &id("us-1"))
        .await
        .unwrap();
    assert_eq!(region.map(|r| r.to_string()), Some("us".to_owned()));
    let unknown = store::appliance_region(&db.pool, &id("ap-9"))
        .await
        .unwrap();
    assert!(unknown.is_none());
    db.pool.close().await;
    let gone = store::appliance_region(&db.pool, &id("us-1")).await;
    assert!(
        gone.is_err(),
        "a closed pool is an error, not an unknown appliance"
    );
}
