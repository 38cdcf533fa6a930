//! Steering end to end: changes made with the CLI reach DNS answers through NOTIFY; hold-down;
//! drained appliances; Postgres stopped and restarted under a running server; the embedded
//! database default.

mod common;
mod fault_support;
mod serve_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use fault_support::relay;
use serve_harness::*;
use shadowsteer::localpg::{Durability, LocalCluster, temp_cluster_dir};

const ALICE: &str = "alice.c.vpn.example.net";

#[tokio::test(flavor = "multi_thread")]
async fn advisory_moves_client_to_shadow_and_back_after_hold_down() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let url = db.url.clone();
    let pool = db.pool.clone();
    let hold_down = Duration::from_secs(3);
    let (moved_after, returned_after) = tokio::task::spawn_blocking(move || {
        let server = Server::start(
            &config(NO_RRL, "hold_down = \"3s\""),
            &["--database-url", &url],
        );
        assert_eq!(answer(server.dns, ALICE), ["192.0.2.1"]);
        let out = cli(
            &url,
            &[
                "advisory",
                "add",
                "--appliance",
                "eu-1",
                "--risk",
                "0.95",
                "--kind",
                "maintenance",
            ],
        );
        let added = Instant::now();
        let id = out.trim().rsplit(' ').next().unwrap().to_owned();
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE) == ["192.0.2.2"]
        })
        .expect("moved to the shadow");
        let moved_after = added.elapsed();
        let moved_at = Instant::now();
        cli(&url, &["advisory", "remove", &id]);
        // Held on the shadow until the hold-down since the move has passed.
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE) == ["192.0.2.1"]
        })
        .expect("back to the primary");
        let returned_after = moved_at.elapsed();
        assert_eq!(server.stop(), 0);
        (moved_after, returned_after)
    })
    .await
    .unwrap();
    eprintln!(
        "advisory add -> answer changed after {moved_after:?} (incl. CLI start-up); back after {returned_after:?}"
    );
    assert!(
        returned_after + Duration::from_millis(300) >= hold_down,
        "returned after {returned_after:?}, before the hold-down"
    );
    // Both changes are in the audit trail with their reasons.
    let rows: Vec<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT from_appliance, to_appliance, reason FROM steering_decisions WHERE client_id = 'alice' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let moves: Vec<(Option<&str>, &str)> = rows
        .iter()
        .map(|r| (r.0.as_deref(), r.1.as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            (None, "eu-1"),
            (Some("eu-1"), "us-1"),
            (Some("us-1"), "eu-1")
        ],
        "{rows:?}"
    );
    assert!(rows[1].2.contains("above threshold"), "{rows:?}");
    assert!(rows[2].2.contains("cleared"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn drained_appliance_disappears_from_answers() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(
            &config(NO_RRL, "hold_down = \"1h\""),
            &["--database-url", &url],
        );
        let service = |n: u16| -> std::collections::BTreeSet<String> {
            (0..n)
                .flat_map(|i| {
                    addrs(&udp(
                        server.dns,
                        &query(i.wrapping_mul(977), "gw.vpn.example.net", 1),
                    ))
                })
                .collect()
        };
        assert_eq!(service(100).len(), 2);
        cli(&url, &["appliance", "drain", "eu-1"]);
        // Operator state wins over hold-down: alice moves at once, and gw only has us-1.
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE) == ["192.0.2.2"]
        })
        .expect("alice moved off the drained primary");
        eventually(Duration::from_secs(30), || {
            service(100).into_iter().collect::<Vec<_>>() == ["192.0.2.2"]
        })
        .expect("drained appliance gone from gw");
        // SRV follows too.
        let m = udp(
            server.dns,
            &query(1, "_wireguard._udp.alice.c.vpn.example.net", 33),
        );
        let hickory_proto::rr::RData::SRV(srv) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(srv.port, 51821);
        // Both drained: no appliance can be chosen; the name exists but has no address.
        cli(&url, &["appliance", "drain", "us-1"]);
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE).is_empty()
        })
        .expect("no answer with both drained");
        let m = udp(server.dns, &query(2, ALICE, 1));
        assert_eq!(
            m.metadata.response_code,
            hickory_proto::op::ResponseCode::NoError
        );
        assert!(service(20).is_empty());
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_and_restarted_while_answering() {
    let dir = temp_cluster_dir("shadowsteer-restart").unwrap();
    let d2 = dir.clone();
    let mut cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::start(&d2, Durability::Ephemeral).unwrap()
    })
    .await
    .unwrap();
    let port = Arc::new(AtomicU16::new(cluster.port()));
    let relay_addr = relay(port.clone()).await;
    shadowsteer::store::target::create_database(&cluster.url("postgres"), "steer")
        .await
        .unwrap();
    let direct = cluster.url("steer");
    let via_relay = direct.replace(
        &format!("127.0.0.1:{}/", cluster.port()),
        &format!("127.0.0.1:{}/", relay_addr.port()),
    );
    let pool = shadowsteer::store::connect(&direct, 1).await.unwrap();
    shadowsteer::store::migrate(&pool).await.unwrap();
    pool.close().await;
    basic_inventory(&via_relay);

    let url = via_relay.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &config(NO_RRL, "hold_down = \"0s\""),
            &["--database-url", &url],
        )
    })
    .await
    .unwrap();
    let dns = server.dns;
    let admin = server.admin;
    let token = cli(&via_relay, &["token", "create", "--name", "restart-test"])
        .trim()
        .to_owned();
    assert_eq!(http_get(admin, "/metrics", Some(&token)).unwrap().0, 200);

    // Postgres goes away; answers keep coming from the last snapshot.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    let token2 = token.clone();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(4) {
            assert_eq!(
                answer(dns, ALICE),
                ["192.0.2.1"],
                "answer while Postgres is down"
            );
            n += 1;
        }
        assert!(n > 50, "{n} queries answered");
        // Metrics (the token was verified before the outage) say the database is down and
        // the snapshot is ageing.
        eventually(Duration::from_secs(30), || {
            let (code, text) = http_get(admin, "/metrics", Some(&token2)).unwrap();
            code == 200
                && metric(&text, "shadowsteer_database_up") == Some(0.0)
                && metric(&text, "shadowsteer_snapshot_age_seconds").is_some_and(|a| a >= 2.0)
        })
        .expect("metrics report the outage");
        assert_eq!(
            http_get(admin, "/readyz", None).unwrap().0,
            200,
            "stale is still ready"
        );
    })
    .await
    .unwrap();
    drop(cluster);

    // Postgres returns (on a new port, behind the same relay); the server recovers by itself
    // and picks up a change made meanwhile.
    let d2 = dir.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::start(&d2, Durability::Ephemeral).unwrap()
    })
    .await
    .unwrap();
    port.store(cluster.port(), Ordering::Relaxed);
    let url = via_relay.clone();
    let log = server.log.clone();
    tokio::task::spawn_blocking(move || {
        cli(
            &url,
            &[
                "advisory",
                "add",
                "--appliance",
                "eu-1",
                "--risk",
                "0.99",
                "--kind",
                "operational",
            ],
        );
        eventually(Duration::from_secs(60), || {
            answer(dns, ALICE) == ["192.0.2.2"]
        })
        .unwrap_or_else(|| {
            panic!(
                "change after the restart not picked up; log:\n{}",
                log.lock().unwrap()
            )
        });
        eventually(Duration::from_secs(30), || {
            http_get(admin, "/metrics", Some(&token)).is_some_and(|(c, t)| {
                c == 200 && metric(&t, "shadowsteer_database_up") == Some(1.0)
            })
        })
        .expect("database reported up again");
    })
    .await
    .unwrap();
    let log_text = server.log_text();
    assert!(
        log_text.contains("serving the last snapshot"),
        "outage logged with the snapshot age:\n{log_text}"
    );
    // Its stderr is a pipe here, as under a service manager: plain text, no colour codes.
    assert!(
        !log_text.contains('\x1b'),
        "terminal colour codes in a log that is not a terminal:\n{log_text}"
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap(),
        0
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_database_by_default() {
    // No URL anywhere: serve starts the cluster of its data directory, and the inventory
    // commands find it through the same directory.
    let data = temp_cluster_dir("shadowsteer-embedded").unwrap();
    let data_s = data.display().to_string();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&config(NO_RRL, ""), &["--data-dir", &data_s]);
        let run = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
                .args(args)
                .args(["--data-dir", &data_s])
                .env_remove("DATABASE_URL")
                .env("RUST_LOG", "warn")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&common::appliance_add(
            "eu-1",
            "eu",
            "192.0.2.1:51820",
            &key(),
        ));
        run(&common::appliance_add(
            "us-1",
            "us",
            "192.0.2.2:51820",
            &key(),
        ));
        run(&common::client_add(
            "alice",
            &key(),
            "10.77.0.2",
            "eu-1",
            "us-1",
        ));
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE) == ["192.0.2.1"]
        })
        .expect("alice answered from the embedded database");
        run(&[
            "advisory",
            "add",
            "--appliance",
            "eu-1",
            "--risk",
            "0.95",
            "--kind",
            "maintenance",
        ]);
        eventually(Duration::from_secs(30), || {
            answer(server.dns, ALICE) == ["192.0.2.2"]
        })
        .expect("advisory applied");
        assert_eq!(server.stop(), 0);
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// How long eu-1's memory leak takes from calm to its worst (memory nearly full, CPU and
/// congestion up): a precursor that builds up over half a minute, as the agents report it.
const LEAK_RAMP_S: i64 = 30;

/// How far into its leak eu-1 is at second `sec` when the leak starts at second `start`: 0
/// (calm) to 1 (the worst).
fn leak_progress(sec: i64, start: i64) -> f64 {
    if sec < start {
        0.0
    } else {
        ((sec - start + 1) as f64 / LEAK_RAMP_S as f64).min(1.0)
    }
}

/// One second of `appliance`'s telemetry at `ts`, `f` of the way into a memory leak with rising
/// congestion (the precursor pattern the model learned). The network side is `peer`'s probe
/// towards `appliance`: probes count for the appliance they reach, so a leak's congestion shown
/// on probes *from* it would make its peer (the shadow) look sick.
fn leak_second(
    appliance: &str,
    peer: &str,
    ts: chrono::DateTime<chrono::Utc>,
    f: f64,
) -> (
    shadowsteer::domain::ApplianceHealth,
    shadowsteer::domain::PathProbe,
) {
    use shadowsteer::domain::{ApplianceHealth, Fraction, PathProbe, ProbeTarget};
    let region = |a: &str| if a.starts_with("eu") { "eu" } else { "us" };
    (
        ApplianceHealth {
            region: region(appliance).parse().unwrap(),
            appliance: appliance.parse().unwrap(),
            ts,
            cpu: Fraction::saturating(0.3 + 0.5 * f),
            mem: Fraction::saturating(0.45 + 0.53 * f),
            bw_in_bps: 1_000_000,
            bw_out_bps: 1_000_000,
            bw_util: Fraction::saturating(0.4 + 0.5 * f),
            sessions: 100,
            handshake_failures: 0,
            packets_dropped: 0,
        },
        PathProbe {
            region: region(peer).parse().unwrap(),
            src: peer.parse().unwrap(),
            dst: ProbeTarget::Appliance(appliance.parse().unwrap()),
            ts,
            rtt_ms: Some(20.0 + 60.0 * f),
            jitter_ms: Some(1.0 + 8.0 * f),
            loss: Fraction::saturating(0.02 * f),
            samples: 5,
        },
    )
}

/// Writes both appliances' telemetry for each second of `[from, to)`: us-1 calm, eu-1 leaking
/// from second `leak_start` on (`i64::MAX`: calm too).
async fn insert_leak_seconds(
    pool: &sqlx::PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    leak_start: i64,
) {
    serve_harness::insert_seconds(pool, from, to, |ts| {
        vec![
            leak_second(
                "eu-1",
                "us-1",
                ts,
                leak_progress(ts.timestamp(), leak_start),
            ),
            leak_second("us-1", "eu-1", ts, 0.0),
        ]
    })
    .await;
}

/// The live scorer's lines of a `/metrics` scrape: its rounds, failures and current scores.
fn risk_metrics(scrape: &Option<(u16, String)>) -> String {
    match scrape {
        Some((_, text)) => text
            .lines()
            .filter(|l| l.starts_with("shadowsteer_risk"))
            .map(|l| format!("{l}\n"))
            .collect(),
        None => "(no answer)\n".into(),
    }
}

/// What the database says about the live-score test's appliances, for its failure message:
/// stored scores (with when they were computed and confirmed), their history, the telemetry's
/// extent and the steering decisions.
async fn leak_diagnostics(pool: &sqlx::PgPool) -> String {
    let queries = [
        ("now", "SELECT now() AS now"),
        (
            "risk_scores (appliances)",
            "SELECT region, subject, score, model_version, computed_at, confirmed_at \
             FROM risk_scores WHERE subject_kind = 'appliance' ORDER BY subject, region",
        ),
        (
            "risk_history (appliances)",
            "SELECT region, subject, computed_at, score FROM risk_history \
             WHERE subject_kind = 'appliance' ORDER BY computed_at, subject",
        ),
        (
            "appliance_health",
            "SELECT appliance_id, count(*) AS n, min(ts) AS oldest, max(ts) AS newest, \
             (array_agg(mem ORDER BY ts DESC))[1] AS newest_mem \
             FROM appliance_health GROUP BY 1 ORDER BY 1",
        ),
        (
            "path_probes",
            "SELECT src, dst, count(*) AS n, min(ts) AS oldest, max(ts) AS newest \
             FROM path_probes GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "steering_decisions",
            "SELECT client_id, from_appliance, to_appliance, reason, decided_at \
             FROM steering_decisions ORDER BY id",
        ),
    ];
    let mut out = String::new();
    for (title, sql) in queries {
        out.push_str(&format!("{title}:\n"));
        let rows: Result<Vec<String>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM ({sql}) t"
        )))
        .fetch_all(pool)
        .await;
        match rows {
            Ok(rows) => rows.iter().for_each(|r| out.push_str(&format!("  {r}\n"))),
            Err(e) => out.push_str(&format!("  ({e})\n")),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn live_scores_move_a_client_before_its_primary_fails() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    // The live scorer reads each second of telemetry once as it arrives (and the last 10 s
    // again, for late rows): history written behind its back is never read. So the history
    // goes in before the server starts (its first round reads whole windows) and the rest
    // arrives second by second, as from the agents. (Written all at once after the start, only
    // each write's last 10 s reached the scorer, and whether the leak's ten seconds moved the
    // client hung on whether one calm second survived beside them in the scorer's window.)
    let start = chrono::Utc::now();
    insert_leak_seconds(
        &db.pool,
        start - chrono::Duration::seconds(900),
        start,
        i64::MAX,
    )
    .await;
    // The agents: every 250 ms, the seconds completed since; eu-1 leaks from `leak_start` on.
    let leak_start = Arc::new(AtomicI64::new(i64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (pool, leak_start) = (db.pool.clone(), leak_start.clone());
        feed_seconds(start, stop.clone(), move |from, to| {
            let (pool, leak) = (pool.clone(), leak_start.load(Ordering::Relaxed));
            async move { insert_leak_seconds(&pool, from, to, leak).await }
        })
    };
    let url = db.url.clone();
    // Live scoring is on by default (the built-in model) and the thresholds follow the model.
    let server = tokio::task::spawn_blocking(move || {
        // On a loaded 2-core machine the feeder can stall for seconds: eu-1's health must not
        // age out (3 s), nor may a score the scorer was slow to confirm (3 s) count as
        // unknown-high; either would move the client before the leak does. Each has tests of
        // its own.
        let server = Server::start(
            &config(
                NO_RRL,
                "hold_down = \"1s\"\nhealth_timeout = \"1h\"\n[risk]\nmax_score_age = \"1h\"",
            ),
            &["--database-url", &url],
        );
        assert_eq!(answer(server.dns, ALICE), ["192.0.2.1"]);
        server
    })
    .await
    .unwrap();

    // Healthy telemetry on both: the client stays on its primary.
    let pool = db.pool.clone();
    let scored = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM risk_scores WHERE subject_kind = 'appliance' AND subject = 'eu-1'")
                .fetch_one(&pool)
                .await
                .unwrap();
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if scored.is_err() {
        let (url, admin) = (db.url.clone(), server.admin);
        let metrics = tokio::task::spawn_blocking(move || {
            let token = cli(&url, &["token", "create", "--name", "scrape"]);
            risk_metrics(&http_get(admin, "/metrics", Some(token.trim())))
        })
        .await
        .unwrap();
        panic!(
            "the live scorer wrote no score for eu-1\n{}\nrisk metrics:\n{metrics}\nserver log:\n{}",
            leak_diagnostics(&db.pool).await,
            server.log_text()
        );
    }
    let calm = answers_during(server.dns, ALICE, Duration::from_secs(3)).await;
    assert_eq!(
        calm.into_iter().collect::<Vec<_>>(),
        ["192.0.2.1"],
        "healthy telemetry moved the client"
    );

    // eu-1 starts leaking memory: the model's score rises towards its threshold before any
    // failure, and the client moves to its shadow (from half the threshold on, steering moves a
    // growing share of eu-1's clients, by their position). No advisory, no failure event.
    let leak_second_0 = chrono::Utc::now().timestamp() + 1;
    leak_start.store(leak_second_0, Ordering::Relaxed);
    let url2 = db.url.clone();
    let moved = tokio::task::spawn_blocking(move || {
        let moved = eventually(Duration::from_secs(60), || {
            answer(server.dns, ALICE) == ["192.0.2.2"]
        });
        let token = cli(&url2, &["token", "create", "--name", "scrape"]);
        let metrics = http_get(server.admin, "/metrics", Some(token.trim()));
        let log = server.log_text();
        assert_eq!(server.stop(), 0);
        (moved, metrics, log)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    if moved.0.is_none() {
        let risk_metrics = risk_metrics(&moved.1);
        panic!(
            "the client did not move on the leak's precursors (eu-1 leaking from second \
             {leak_second_0}, {})\n{}\nrisk metrics:\n{risk_metrics}\nserver log:\n{}",
            chrono::DateTime::from_timestamp(leak_second_0, 0).unwrap_or_default(),
            leak_diagnostics(&db.pool).await,
            moved.2
        );
    }
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM failure_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(failures, 0);
    let (score, version): (f64, String) = sqlx::query_as(
        "SELECT score, model_version FROM risk_scores WHERE subject_kind = 'appliance' AND subject = 'eu-1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let builtin = shadowsteer::risk::model::Model::builtin().unwrap();
    assert_eq!(version, builtin.version);
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM steering_decisions WHERE client_id = 'alice' AND to_appliance = 'us-1' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The model's score moved her (half the threshold is where the policy starts moving
    // clients), not an unknown-high one.
    assert!(
        score > builtin.threshold / 2.0 && reason.starts_with("primary risk 0."),
        "moved ({reason}) with a stored score of {score}\n{}\nrisk metrics:\n{}\nserver log:\n{}",
        leak_diagnostics(&db.pool).await,
        risk_metrics(&moved.1),
        moved.2
    );
    eprintln!(
        "moved {:?} after eu-1 began to leak (a {LEAK_RAMP_S} s ramp): {reason} (stored score {score:.3})",
        moved.0
    );
    // The model and its scores are in the metrics.
    let (code, text) = moved.1.expect("metrics answered");
    assert_eq!(code, 200);
    assert!(
        text.contains(&format!(
            "shadowsteer_risk_model_info{{version=\"{}\"",
            builtin.version
        )),
        "{text}"
    );
    assert!(
        text.contains("shadowsteer_risk_score{kind=\"appliance\",subject=\"eu-1\""),
        "{text}"
    );
}
