//! The audit trail (issue 13, fault 7): every change of an answer is recorded, including a
//! change to "no appliance", and rows that cannot be kept are counted, never lost silently.

mod common;
mod serve_harness;

use std::sync::Arc;
use std::time::Duration;

use serve_harness::*;
use shadowsteer::domain::{ApplianceId, ClientId, Probability, RegionId};
use shadowsteer::steering::{AnswerChange, Reason};
use shadowsteer::store::audit::{self, AuditQueue, AuditStatus, AuditTarget};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn a_change_to_no_appliance_is_recorded_and_counted_once() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let url = db.url.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &config(NO_RRL, "hold_down = \"0s\""),
            &["--database-url", &url],
        )
    })
    .await
    .unwrap();
    let dns = server.dns;
    let url = db.url.clone();
    let server = tokio::task::spawn_blocking(move || {
        assert!(
            eventually(Duration::from_secs(30), || answer(
                dns,
                "alice.c.vpn.example.net"
            ) == ["192.0.2.1"])
            .is_some()
        );
        cli(&url, &["appliance", "drain", "eu-1"]);
        assert!(
            eventually(Duration::from_secs(30), || answer(
                dns,
                "alice.c.vpn.example.net"
            ) == ["192.0.2.2"])
            .is_some()
        );
        cli(&url, &["appliance", "drain", "us-1"]);
        // Neither appliance can be chosen: the name exists without an address (NODATA).
        assert!(
            eventually(Duration::from_secs(30), || answer(
                dns,
                "alice.c.vpn.example.net"
            )
            .is_empty())
            .is_some()
        );
        server
    })
    .await
    .unwrap();
    let mut rows: Vec<(Option<String>, Option<String>)> = Vec::new();
    for _ in 0..300 {
        rows = sqlx::query_as(
            "SELECT from_appliance, to_appliance FROM steering_decisions
             WHERE client_id = 'alice' ORDER BY decided_at, id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if rows.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        [(None, s("eu-1")), (s("eu-1"), s("us-1")), (s("us-1"), None)]
    );
    // What the metrics call written is what the table holds.
    let token = cli(
        &db.url,
        &["token", "create", "--name", "audit", "--scope", "read"],
    );
    let admin = server.admin;
    let (_, text) = tokio::task::spawn_blocking(move || {
        http_get(admin, "/metrics", Some(token.trim())).unwrap()
    })
    .await
    .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM steering_decisions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        metric(&text, "shadowsteer_audit_rows_total{outcome=\"written\"}"),
        Some(stored as f64)
    );
    assert_eq!(
        metric(&text, "shadowsteer_audit_rows_total{outcome=\"dropped\"}"),
        Some(0.0)
    );
    tokio::task::spawn_blocking(move || assert_eq!(server.stop(), 0))
        .await
        .unwrap();
}

fn change(i: usize) -> AnswerChange {
    AnswerChange {
        client: ClientId::new(format!("c{i}")).unwrap(),
        from: None,
        to: i
            .is_multiple_of(2)
            .then(|| ApplianceId::new("eu-1".to_owned()).unwrap()),
        reason: Reason::NoneAvailable,
        primary_risk: Probability::ZERO,
        shadow_risk: Probability::ZERO,
        at: chrono::Utc::now(),
    }
}

/// The database cannot be written (here: it does not exist yet) while 150 changes arrive with
/// room for 100: the 50 oldest are dropped and counted; when the database appears the 100 kept
/// are written, and nothing else is lost.
#[tokio::test(flavor = "multi_thread")]
async fn rows_past_the_backlog_are_counted_and_the_rest_written_later() {
    let cluster = common::cluster();
    let name = format!("audit_later_{}", std::process::id());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&cluster.url(&name))
        .unwrap();
    let status = Arc::new(AuditStatus::default());
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel(1000);
    let writer = tokio::spawn(audit::run(
        AuditTarget {
            pool: pool.clone(),
            region: RegionId::new("eu".to_owned()).unwrap(),
            server: "audit-test".into(),
            max_backlog: 100,
        },
        rx,
        status.clone(),
        shutdown.clone(),
    ));
    for i in 0..150 {
        tx.send(change(i)).await.unwrap();
    }
    for _ in 0..500 {
        if status.dropped() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.dropped(), 50);
    assert_eq!(status.written(), 0);

    let admin = shadowsteer::store::connect(&cluster.url("postgres"), 1)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{name}\" TEMPLATE {}",
        common::TEMPLATE
    )))
    .execute(&admin)
    .await
    .unwrap();
    for _ in 0..3000 {
        if status.written() >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.written(), 100);
    let (n, nulls, oldest): (i64, i64, String) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE to_appliance IS NULL),
                min(substr(client_id, 2)::int)::text
         FROM steering_decisions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((n, nulls, oldest.as_str()), (100, 50, "50"));
    shutdown.cancel();
    writer.await.unwrap();
    assert_eq!(status.dropped(), 50);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .unwrap();
}

/// The publisher never waits on the writer: what its full inbox refuses is counted as dropped,
/// with the writer's own drops, and `/metrics` shows it.
#[test]
fn a_change_the_full_inbox_refuses_is_counted_dropped() {
    let status = Arc::new(AuditStatus::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let queue = AuditQueue::new(tx, status.clone());
    for i in 0..5 {
        queue.offer(change(i));
    }
    assert_eq!(status.dropped(), 3);
    assert_eq!(rx.try_recv().unwrap().client.as_str(), "c0");
    let mut registry = shadowsteer::metrics::Registry::default();
    registry.register_collector(Box::new(status.clone()));
    let text = shadowsteer::metrics::render(&registry);
    assert_eq!(
        metric(&text, "shadowsteer_audit_rows_total{outcome=\"dropped\"}"),
        Some(3.0)
    );
    drop(rx);
    queue.offer(change(5));
    assert_eq!(status.dropped(), 4, "a closed inbox drops too");
}
