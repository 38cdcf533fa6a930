//! Path risk drives steering (issue 11, item 4), end to end with `serve` and Postgres: a
//! client whose own path to its primary degrades moves to its shadow although the primary
//! appliance stays healthy, stays there while that path is no longer measured (its score
//! stale), and comes back when fresh measurements show it recovered (hysteresis, hold-down).
//!
//! Real parts: Postgres, the `serve` binary with its live scorer (a model file that scores
//! recent loss), its snapshot loader and DNS over UDP. Stand-ins: the agents, whose rows are
//! written as they write them: each appliance's health and probes, and eu-1's row for alice's
//! path (`src = eu-1`, `dst_kind = client`, `dst = alice`), which the agent's session recorder
//! writes from the client helper's probe-window reports (rtt, jitter, loss).

mod common;
mod serve_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serve_harness::*;
use shadowsteer::domain::{ClientId, Fraction, PathProbe, ProbeTarget};
use shadowsteer::risk::model::{Members, Model};

const ALICE: &str = "alice.c.vpn.example.net";
const EU: &str = "192.0.2.1";
const US: &str = "192.0.2.2";
/// `loss_permille` value for "eu-1 writes no rows for alice's path".
const SILENT: u32 = u32::MAX;

/// A model that scores a subject's loss over the last 10 s: 0.02 without loss, 0.5 at 6.5 %,
/// above 0.99 at 20 %. Health plays no part, so the appliances' scores stay at 0.02 while
/// their own probes are clean.
fn loss_model() -> Model {
    let mut m = Model::constant("loss10", 0.02);
    let i = m
        .features
        .names()
        .iter()
        .position(|f| f == "loss_mean10")
        .expect("loss_mean10 is a feature");
    if let Members::Logistic(ms) = &mut m.members {
        ms[0].weights[i] = 60.0;
    }
    m.threshold = 0.5;
    m.version = m.compute_version();
    m.validate().expect("valid model");
    m
}

/// alice's path as eu-1's agent stores a client helper's report: one row per second.
fn alice_path(ts: chrono::DateTime<chrono::Utc>, loss: f64) -> PathProbe {
    PathProbe {
        region: "eu".parse().unwrap(),
        src: "eu-1".parse().unwrap(),
        dst: ProbeTarget::Client(ClientId::new("alice").unwrap()),
        ts,
        rtt_ms: Some(30.0),
        jitter_ms: Some(2.0),
        loss: Fraction::saturating(loss),
        samples: 50,
    }
}

/// The stored score of one subject, if any.
async fn score_of(pool: &sqlx::PgPool, kind: &str, subject: &str) -> Option<f64> {
    sqlx::query_scalar("SELECT score FROM risk_scores WHERE subject_kind = $1 AND subject = $2")
        .bind(kind)
        .bind(subject)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_path_to_a_healthy_primary_moves_the_client_and_recovery_brings_it_back() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let now = chrono::Utc::now();
    // Two minutes of calm history: full short windows for the appliances and alice's path.
    insert_calm(
        &db.pool,
        &["eu-1", "us-1"],
        now - chrono::Duration::seconds(120),
        now,
    )
    .await;
    let history: Vec<PathProbe> = (1..=120)
        .map(|s| alice_path(now - chrono::Duration::seconds(s), 0.0))
        .collect();
    shadowsteer::store::telemetry::insert_probes(&db.pool, &history)
        .await
        .unwrap();
    // The agents: calm appliances throughout; alice's path loss as `loss_permille` says
    // (`SILENT`: no rows, as when she no longer uses eu-1).
    let loss_permille = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (pool, loss) = (db.pool.clone(), loss_permille.clone());
        feed_seconds(now, stop.clone(), move |from, to| {
            let (pool, l) = (pool.clone(), loss.load(Ordering::Relaxed));
            async move {
                insert_calm(&pool, &["eu-1", "us-1"], from, to).await;
                if l != SILENT {
                    let l = f64::from(l) / 1000.0;
                    let rows: Vec<PathProbe> = (0..(to - from).num_seconds())
                        .map(|s| alice_path(from + chrono::Duration::seconds(s), l))
                        .collect();
                    shadowsteer::store::telemetry::insert_probes(&pool, &rows)
                        .await
                        .unwrap();
                }
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("loss10.json");
    loss_model().save(&model).unwrap();
    let url = db.url.clone();
    // Everyone's trigger at 0.5 (no weighting ramp), back at 0.4; a 2 s hold-down.
    let steering = format!(
        "hold_down = \"2s\"\nthreshold = 0.5\nhysteresis = 0.1\nweight_low = 0.5\nweight_high = 0.5\nhealth_timeout = \"1h\"\n[risk]\nmodel = {:?}",
        model.display().to_string()
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start(&config(NO_RRL, &steering), &["--database-url", &url])
    })
    .await
    .unwrap();
    let dns = server.dns;
    let pool = db.pool.clone();

    // The scorer scores alice's path (low) and the appliances (low).
    let deadline = Instant::now() + Duration::from_secs(30);
    while score_of(&pool, "path", "eu-1>alice").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no score for eu-1>alice; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calm_answers = answers_during(dns, ALICE, Duration::from_secs(4)).await;
    assert_eq!(
        calm_answers.into_iter().collect::<Vec<_>>(),
        [EU],
        "alice left eu-1 on a calm path; log:\n{}",
        server.log_text()
    );

    // alice's path to eu-1 loses 30 %; eu-1 itself stays calm.
    loss_permille.store(300, Ordering::Relaxed);
    let degraded = Instant::now();
    let moved = answer_becomes(dns, ALICE, US, Duration::from_secs(30)).await;
    assert!(
        moved.is_some(),
        "alice stayed on eu-1 behind a bad path; path score {:?}; log:\n{}",
        score_of(&pool, "path", "eu-1>alice").await,
        server.log_text()
    );
    let moved_after = degraded.elapsed();
    let path_high = score_of(&pool, "path", "eu-1>alice").await.unwrap();
    let eu_score = score_of(&pool, "appliance", "eu-1").await.unwrap();
    // The move needs alice's total on eu-1 above 0.5: with eu-1 at 0.02, her path above 0.49.
    assert!(path_high > 0.48, "path score {path_high}");
    assert!(
        eu_score < 0.1,
        "eu-1's own score {eu_score}: the move must be the path's"
    );

    // On us-1, alice no longer reports to eu-1: nothing measures her path to it and its score
    // goes stale (left out by the loader). She stays on us-1 (the last fresh score stands),
    // well past the 2 s hold-down.
    loss_permille.store(SILENT, Ordering::Relaxed);
    let silent = Instant::now();
    let deadline = silent + Duration::from_secs(30);
    loop {
        let stale: bool = sqlx::query_scalar(
            "SELECT confirmed_at < now() - interval '4 s' FROM risk_scores WHERE subject_kind = 'path' AND subject = 'eu-1>alice'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if stale {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's path score never went stale"
        );
        let a = tokio::task::spawn_blocking(move || answer(dns, ALICE))
            .await
            .unwrap();
        assert_eq!(a, [US], "alice came back while her path score aged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale_after = silent.elapsed();
    let while_stale = answers_during(dns, ALICE, Duration::from_secs(3)).await;
    assert_eq!(
        while_stale.into_iter().collect::<Vec<_>>(),
        [US],
        "alice returned to eu-1 on the silence of a path she left; log:\n{}",
        server.log_text()
    );

    // The path recovers (fresh measurements again): alice returns once her total risk is
    // below 0.4 and the hold-down has passed.
    loss_permille.store(0, Ordering::Relaxed);
    let recovered = Instant::now();
    let back = answer_becomes(dns, ALICE, EU, Duration::from_secs(40)).await;
    let back_after = recovered.elapsed();
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    let log = server.log_text();
    assert_eq!(
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap(),
        0
    );
    assert!(back.is_some(), "alice did not return to eu-1; log:\n{log}");

    // The audit trail says why.
    let rows: Vec<(String, String, Option<f64>)> = sqlx::query_as(
        "SELECT to_appliance, reason, primary_risk FROM steering_decisions WHERE client_id = 'alice' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let moves: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(moves, ["eu-1", "us-1", "eu-1"], "{rows:?}");
    assert!(rows[1].1.contains("path to primary risk"), "{rows:?}");
    assert!(rows[1].2.is_some_and(|r| r > 0.5), "{rows:?}");
    assert!(rows[2].1.contains("cleared"), "{rows:?}");
    eprintln!(
        "path loss 30 % -> alice moved after {moved_after:?} (path score {path_high:.3}, eu-1 {eu_score:.3}); path silent -> stale after {stale_after:?}, alice stayed; loss 0 -> back after {back_after:?}"
    );
    common::record_measure("path_move_s", moved_after.as_secs_f64());
    common::record_measure("path_return_s", back_after.as_secs_f64());
}
