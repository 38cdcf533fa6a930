//! The risk engine against real Postgres: telemetry import/export round trip, and live scoring
//! writing `risk_scores` and notifying through the table's trigger.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shadowsteer::config::RiskSection;
use shadowsteer::domain::{
    ApplianceHealth, ApplianceId, Fraction, PathProbe, ProbeTarget, RegionId,
};
use shadowsteer::risk::data::dataset;
use shadowsteer::risk::data::telemetry::Metric;
use shadowsteer::risk::live::reload::ModelSource;
use shadowsteer::risk::live::{self, LiveScores};
use shadowsteer::risk::model::Model;
use shadowsteer::store::notify::{Change, ChangedTable, listen};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_export_round_trips() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let (sim, back) = (dir.path().join("sim.csv"), dir.path().join("back.csv"));
    let (code, out, err) = common::run_cli(
        &db,
        &[
            "simulate",
            "--appliances",
            "3",
            "--hours",
            "0.5",
            "--seed",
            "4",
            "--out",
            p(&sim),
            "--failures-per-day",
            "150",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::run_cli(&db, &["telemetry", "import", "--data", p(&sim)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("failure events"), "{out}");
    // Importing again stores nothing new.
    let (code, again, err) = common::run_cli(&db, &["telemetry", "import", "--data", p(&sim)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        again.contains("imported 0 health rows, 0 probe rows and 0 failure events"),
        "{again}"
    );

    let start = shadowsteer::risk::simulate::DEFAULT_START;
    let (code, out, err) = common::run_cli(
        &db,
        &[
            "telemetry",
            "export",
            "--out",
            p(&back),
            "--from",
            &start.to_string(),
            "--to",
            &(start + 1800).to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    let a = dataset::load(&sim, None).unwrap();
    let b = dataset::load(&back, None).unwrap();
    assert_eq!(a.telemetry.appliances.len(), b.telemetry.appliances.len());
    let key = |t: &shadowsteer::risk::data::telemetry::Telemetry,
               r: &shadowsteer::risk::data::telemetry::Row| {
        (t.appliances[r.appliance as usize].id.clone(), r.ts)
    };
    let exported: std::collections::HashMap<_, _> = b
        .telemetry
        .rows
        .iter()
        .map(|r| (key(&b.telemetry, r), *r))
        .collect();
    let mut compared = 0;
    for r in &a.telemetry.rows {
        let health_complete = (0..5).all(|i| !r.values[i].is_nan());
        let Some(e) = exported.get(&key(&a.telemetry, r)) else {
            assert!(
                !r.down && !health_complete && r.get(Metric::Loss).is_none(),
                "row {r:?} was lost"
            );
            continue;
        };
        assert_eq!(e.down, r.down, "down at {}", r.ts);
        if !r.down && health_complete {
            assert_eq!(&e.values[..5], &r.values[..5], "health at {}", r.ts);
        }
        for m in [Metric::RttMs, Metric::JitterMs, Metric::Loss] {
            if let Some(v) = r.get(m) {
                assert_eq!(e.get(m), Some(v), "{m:?} at {}", r.ts);
            }
        }
        compared += 1;
    }
    assert!(compared as f64 > 0.98 * a.telemetry.rows.len() as f64);
    // Failures come back with their kinds.
    let kinds = |l: &dataset::Loaded| {
        let mut v: Vec<(String, i64, String, Option<bool>)> = l
            .labels
            .as_ref()
            .unwrap()
            .values()
            .map(|f| (f.appliance.to_string(), f.ts, f.kind.clone(), f.precursor))
            .collect();
        v.sort();
        v
    };
    assert!(!kinds(&a).is_empty());
    assert_eq!(kinds(&a), kinds(&b));
}

fn health(appliance: &str, ts: chrono::DateTime<Utc>) -> ApplianceHealth {
    ApplianceHealth {
        region: RegionId::new("eu").unwrap(),
        appliance: ApplianceId::new(appliance).unwrap(),
        ts,
        cpu: Fraction::new(0.3).unwrap(),
        mem: Fraction::new(0.4).unwrap(),
        bw_in_bps: 1000,
        bw_out_bps: 1000,
        bw_util: Fraction::new(0.3).unwrap(),
        sessions: 100,
        handshake_failures: 0,
        packets_dropped: 0,
    }
}

fn probe(src: &str, dst: &str, ts: chrono::DateTime<Utc>) -> PathProbe {
    PathProbe {
        region: RegionId::new("eu").unwrap(),
        src: ApplianceId::new(src).unwrap(),
        dst: ProbeTarget::Appliance(ApplianceId::new(dst).unwrap()),
        ts,
        rtt_ms: Some(20.0),
        jitter_ms: Some(1.0),
        loss: Fraction::new(0.0).unwrap(),
        samples: 10,
    }
}

/// Waits until notifications for all of `keys` on risk_scores arrived.
async fn await_notified(listener: &mut sqlx::postgres::PgListener, keys: &[&str]) {
    let mut missing: HashSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        let n = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification for {missing:?} within 60 s"))
            .expect("listener");
        if let Some(c) = Change::from_notification(&n)
            && c.table == ChangedTable::RiskScores
        {
            missing.remove(&c.key);
        }
    }
}

/// Waits for notifications about `subject` until its stored score satisfies `ok`.
async fn await_score(
    listener: &mut sqlx::postgres::PgListener,
    pool: &sqlx::PgPool,
    subject: &str,
    ok: impl Fn(f64) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("{subject} never reached the expected score"))
            .expect("listener");
        if let Some(c) = Change::from_notification(&n)
            && c.table == ChangedTable::RiskScores
            && c.key == subject
            && ok(stored(pool, subject).await.0)
        {
            return;
        }
    }
}

async fn stored(pool: &sqlx::PgPool, subject: &str) -> (f64, String) {
    sqlx::query_as("SELECT score, model_version FROM risk_scores WHERE subject = $1")
        .bind(subject)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scoring_writes_and_notifies() {
    let db = common::test_db().await;
    let now = Utc::now();
    let mut h = Vec::new();
    let mut pr = Vec::new();
    for s in 1..=120 {
        let ts = now - chrono::Duration::seconds(s);
        h.push(health("eu-1", ts));
        h.push(health("eu-2", ts));
        pr.push(probe("eu-1", "eu-2", ts));
        pr.push(probe("eu-2", "eu-1", ts));
    }
    shadowsteer::store::telemetry::insert_health(&db.pool, &h)
        .await
        .unwrap();
    shadowsteer::store::telemetry::insert_probes(&db.pool, &pr)
        .await
        .unwrap();

    let mut listener = listen(&db.url).await.unwrap();
    let model_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let model = Arc::new(Model::load(&model_path).expect("the shipped default model loads"));
    let (tx, mut rx) = watch::channel(Arc::new(LiveScores::default()));
    let settings = RiskSection {
        interval: shadowsteer::config::Duration(Duration::from_millis(200)),
        ..RiskSection::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(live::run(
        db.pool.clone(),
        Arc::new(ModelSource::new(None, Arc::clone(&model))),
        settings,
        RegionId::new("eu").unwrap(),
        tx,
        shutdown.clone(),
    ));

    // First round: every appliance and path is written, and each write notifies.
    await_notified(&mut listener, &["eu-1", "eu-2", "eu-1>eu-2", "eu-2>eu-1"]).await;
    let (score, version) = stored(&db.pool, "eu-1").await;
    assert_eq!(version, model.version);
    assert!((0.0..1.0).contains(&score));
    rx.wait_for(|s| s.rounds >= 1).await.unwrap();
    {
        let snap = rx.borrow();
        assert_eq!(snap.model_version, model.version);
        assert_eq!(snap.scores.len(), 4);
    }
    let mut registry = shadowsteer::metrics::Registry::default();
    registry.register_collector(Box::new(live::LiveMetrics::new(rx.clone())));
    let metrics = shadowsteer::metrics::render(&registry);
    assert!(
        metrics.contains("shadowsteer_risk_score{kind=\"appliance\",subject=\"eu-1\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP shadowsteer_risk_rounds_total "),
        "{metrics}"
    );

    // An open failure event: eu-2 is down, risk 1.
    sqlx::query(
        "INSERT INTO failure_events (region, appliance_id, started_at, kind) \
         VALUES ('eu', 'eu-2', now() - interval '3 seconds', 'test')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    await_score(&mut listener, &db.pool, "eu-2", |s| s == 1.0).await;

    // Advisories are the steering server's to combine: the stored score stays the model's.
    sqlx::query("INSERT INTO regions (region) VALUES ('eu')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO advisories (region, scope_region, kind, risk, starts_at) \
         VALUES ('eu', 'eu', 'maintenance', 0.95, now() - interval '1 minute')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Let a few scoring rounds see the advisory.
    let rounds = rx.borrow().rounds;
    rx.wait_for(|s| s.rounds >= rounds + 3).await.unwrap();
    let live = rx
        .borrow()
        .scores
        .iter()
        .find(|s| s.id == "eu-1")
        .map(|s| s.score.value().get())
        .unwrap();
    assert!(
        live < 0.95,
        "the advisory was folded into the live score: {live}"
    );
    let (stored_score, _) = stored(&db.pool, "eu-1").await;
    assert!(
        stored_score < 0.95,
        "the advisory was folded into the stored score: {stored_score}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("live scoring stops on shutdown")
        .unwrap();
}

/// Simulates three hours of telemetry for 6 appliances that ended a minute ago (seed 8, 36
/// failures per appliance-day) into `dir` and imports it into `db`.
fn import_recent_telemetry(db: &common::TestDb, dir: &Path) {
    let sim = dir.join("recent.csv");
    let start = Utc::now().timestamp() - 3 * 3600 - 60;
    let (code, out, err) = common::run_cli(
        db,
        &[
            "simulate",
            "--appliances",
            "6",
            "--hours",
            "3",
            "--seed",
            "8",
            "--out",
            p(&sim),
            "--failures-per-day",
            "36",
            "--start",
            &start.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::run_cli(db, &["telemetry", "import", "--data", p(&sim)]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_from_the_database() {
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    import_recent_telemetry(&db, dir.path());
    let model = dir.path().join("fleet.json");
    let (code, out, err) = common::run_cli(
        &db,
        &[
            "train",
            "--from-db",
            "--since",
            "4h",
            "--out",
            p(&model),
            "--members",
            "2",
            "--max-false-alarms",
            "20",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let m = Model::load(&model).unwrap();
    assert!(
        m.card.training_data[0].starts_with("database"),
        "{:?}",
        m.card.training_data
    );
    assert!(
        m.card.failures[1] > 0,
        "precursor labels travel through the database"
    );
}

/// Starts a live scorer of region `eu` (200 ms rounds) on `pool`.
fn start_scorer(
    pool: &sqlx::PgPool,
    model: &Arc<Model>,
) -> (
    watch::Receiver<Arc<LiveScores>>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Arc::new(LiveScores::default()));
    let settings = RiskSection {
        interval: shadowsteer::config::Duration(Duration::from_millis(200)),
        ..RiskSection::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(live::run(
        pool.clone(),
        Arc::new(ModelSource::new(None, Arc::clone(model))),
        settings,
        RegionId::new("eu").unwrap(),
        tx,
        shutdown.clone(),
    ));
    (rx, shutdown, task)
}

/// Two `serve` instances of one region: one scores, the other stands by (writing nothing)
/// and takes over when the first dies (after the lease expires) or stops (at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scorer_per_region_and_takeover_when_it_stops() {
    let db = common::test_db().await;
    let now = Utc::now();
    let mut h = Vec::new();
    for s in 1..=120 {
        h.push(health("eu-1", now - chrono::Duration::seconds(s)));
    }
    shadowsteer::store::telemetry::insert_health(&db.pool, &h)
        .await
        .unwrap();
    let model_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let model = Arc::new(Model::load(&model_path).expect("the shipped default model loads"));
    let wait = Duration::from_secs(15);

    let (mut a, _a_stop, a_task) = start_scorer(&db.pool, &model);
    tokio::time::timeout(wait, a.wait_for(|s| s.leading && s.rounds >= 1))
        .await
        .expect("the first scorer leads")
        .unwrap();
    let (mut b, b_stop, b_task) = start_scorer(&db.pool, &model);
    let rounds_a = a.borrow().rounds;
    tokio::time::timeout(wait, a.wait_for(|s| s.rounds >= rounds_a + 5))
        .await
        .expect("the leader keeps scoring")
        .unwrap();
    {
        let s = b.borrow();
        assert!(!s.leading, "two scorers lead one region");
        assert_eq!((s.rounds, s.writes), (0, 0), "the standby scored");
        assert!(
            s.lease_holder.is_some(),
            "the standby does not say who scores"
        );
    }
    let (holder, _) = shadowsteer::store::scorer_lease::holder(&db.pool, "eu")
        .await
        .unwrap()
        .expect("a lease row");
    assert_eq!(b.borrow().lease_holder.as_deref(), Some(holder.as_str()));

    // The leader dies without a word: the standby takes over once the lease expires (2 s).
    let died = std::time::Instant::now();
    a_task.abort();
    tokio::time::timeout(wait, b.wait_for(|s| s.leading && s.rounds >= 1))
        .await
        .expect("the standby takes over")
        .unwrap();
    let took_over = died.elapsed();
    assert!(
        took_over >= Duration::from_millis(1500),
        "the standby took a lease that had not expired: {took_over:?}"
    );

    // A new server stands by; the leader stops cleanly and hands over at once.
    let (mut c, c_stop, c_task) = start_scorer(&db.pool, &model);
    tokio::time::timeout(wait, c.wait_for(|s| s.lease_holder.is_some()))
        .await
        .expect("the new server stands by")
        .unwrap();
    assert!(!c.borrow().leading);
    let stopped = std::time::Instant::now();
    b_stop.cancel();
    b_task.await.unwrap();
    tokio::time::timeout(wait, c.wait_for(|s| s.leading && s.rounds >= 1))
        .await
        .expect("the standby takes over after a clean stop")
        .unwrap();
    eprintln!(
        "scorer lease: takeover after the leader died {took_over:?}, after a clean stop {:?}",
        stopped.elapsed()
    );
    c_stop.cancel();
    c_task.await.unwrap();
    assert!(
        shadowsteer::store::scorer_lease::holder(&db.pool, "eu")
            .await
            .unwrap()
            .is_none(),
        "a clean stop releases the lease"
    );
}

/// `train --from-db` learns from failures however they reached `failure_events`: here every
/// imported event is removed and written again, half by `failure add` (an operator) and half
/// by the takeover's heartbeat-loss writer (open, then closed), and the trained model's card
/// counts exactly those. Without them the same telemetry has nothing to learn from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_from_the_database_learns_recorded_and_observed_failures() {
    use shadowsteer::store::takeover::{close_failure, open_failure};
    let db = common::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    import_recent_telemetry(&db, dir.path());
    type Event = (
        String,
        String,
        chrono::DateTime<Utc>,
        Option<chrono::DateTime<Utc>>,
        String,
        Option<bool>,
    );
    let events: Vec<Event> = sqlx::query_as(
        "SELECT region, appliance_id, started_at, ended_at, kind, has_precursor
         FROM failure_events ORDER BY started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(events.len() >= 10, "{} failures simulated", events.len());
    sqlx::query("DELETE FROM failure_events")
        .execute(&db.pool)
        .await
        .unwrap();
    // The appliances must exist for `failure add`.
    let mut known = HashSet::new();
    for (i, (region, appliance, ..)) in events.iter().enumerate() {
        if known.insert(appliance.clone()) {
            let key = common::random_public_key();
            let endpoint = format!("203.0.113.{}:51820", 10 + i);
            let (code, _, err) = common::run_cli(
                &db,
                &[
                    "appliance",
                    "add",
                    "--id",
                    appliance,
                    "--region",
                    region,
                    "--endpoint",
                    &endpoint,
                    "--public-key",
                    &key,
                ],
            );
            assert_eq!(code, 0, "{err}");
        }
    }
    let model = dir.path().join("fleet.json");
    let train = || {
        common::run_cli(
            &db,
            &[
                "train",
                "--from-db",
                "--since",
                "4h",
                "--out",
                p(&model),
                "--members",
                "2",
                "--models",
                "forest",
                "--max-false-alarms",
                "20",
            ],
        )
    };
    // Control: the telemetry alone, without failure events, has no failure to learn.
    let (code, out, err) = train();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not enough data"), "{err}");
    assert!(!model.exists());

    let fmt = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (mut by_operator, mut with_precursor, mut without) = (0, 0, 0);
    for (i, (region, appliance, started, ended, kind, precursor)) in events.iter().enumerate() {
        // A failure still running when the telemetry ends is an open event: written open.
        if i % 2 == 0 {
            let (s, e) = (fmt(started), ended.as_ref().map(fmt));
            let mut args = vec![
                "failure",
                "add",
                "--appliance",
                appliance.as_str(),
                "--starts",
                &s,
                "--kind",
                kind.as_str(),
            ];
            if let Some(e) = &e {
                args.extend(["--ends", e.as_str()]);
            }
            match precursor {
                Some(true) => {
                    args.extend(["--precursor", "true"]);
                    with_precursor += 1;
                }
                Some(false) => {
                    args.extend(["--precursor", "false"]);
                    without += 1;
                }
                None => {}
            }
            let (code, out, err) = common::run_cli(&db, &args);
            assert_eq!(code, 0, "{out}{err}");
            by_operator += 1;
        } else {
            let region = RegionId::new(region.as_str()).unwrap();
            let id = ApplianceId::new(appliance.as_str()).unwrap();
            open_failure(&db.pool, &region, &id, *started, "heartbeats lost")
                .await
                .unwrap();
            if let Some(ended) = ended {
                close_failure(&db.pool, &region, &id, *ended).await.unwrap();
            }
        }
    }
    let observed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM failure_events WHERE kind = 'unreachable'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(observed as usize, events.len() - by_operator);

    let (code, out, err) = train();
    assert_eq!(code, 0, "{out}{err}");
    let m = Model::load(&model).unwrap();
    assert_eq!(
        m.card.failures,
        [events.len(), with_precursor, without],
        "every recorded and observed failure is a training label"
    );
    assert!(m.card.training_data[0].starts_with("database"));
}

/// The load-balancer check reads the highest score confirmed within its age limit: another
/// region's stale row neither holds the weight down nor hides a fresh score, and with no fresh
/// score the model is left out (advisories alone count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_check_reads_the_highest_fresh_score() {
    use shadowsteer::store::lb_status;
    let db = common::test_db().await;
    let key = common::random_public_key();
    let args = [
        "appliance",
        "add",
        "--id",
        "eu-1",
        "--region",
        "eu",
        "--endpoint",
        "203.0.113.10:51820",
        "--public-key",
        &key,
    ];
    let (code, _, err) = common::run_cli(&db, &args);
    assert_eq!(code, 0, "appliance add: {err}");
    let age = Duration::from_secs(10);
    let score = |pool: sqlx::PgPool| async move {
        lb_status::read(&pool, "eu-1", Utc::now(), age)
            .await
            .unwrap()
            .expect("eu-1 is in the inventory")
            .score
    };
    // A row computed `computed` minutes ago and last confirmed `confirmed` minutes ago.
    let put = |region: &'static str, value: f64, computed: i32, confirmed: i32| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at, confirmed_at)
                 VALUES ($1, 'appliance', 'eu-1', $2, $2 / 2, least(1, $2 * 2), 'm',
                         now() - make_interval(mins => $3), now() - make_interval(mins => $4))
                 ON CONFLICT (region, subject_kind, subject) DO UPDATE
                 SET score = EXCLUDED.score, computed_at = EXCLUDED.computed_at, confirmed_at = EXCLUDED.confirmed_at",
            )
            .bind(region)
            .bind(value)
            .bind(computed)
            .bind(confirmed)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // us stopped scoring eu-1 an hour ago at 0.9; eu's fresh 0.05 is what counts.
    put("us", 0.9, 60, 60).await;
    put("eu", 0.05, 0, 0).await;
    assert_eq!(score(db.pool.clone()).await, Some(0.05));
    // A higher score of another region, computed earlier and still confirmed, wins over the
    // latest computed one.
    put("us", 0.6, 5, 0).await;
    assert_eq!(score(db.pool.clone()).await, Some(0.6));
    // Nobody confirms any more: no model score.
    put("us", 0.6, 30, 30).await;
    put("eu", 0.05, 30, 30).await;
    assert_eq!(score(db.pool.clone()).await, None);
}

/// The live scorer's reads find rows by arrival: a row received after the cursor brings back
/// its whole second (its appliance's; for probes, every probe to its destination), so a late
/// row joins that second's average; seconds with nothing new stay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_find_late_rows_and_return_their_seconds_whole() {
    use shadowsteer::store::risk::{LiveRead, live_seconds};
    let db = common::test_db().await;
    let now = Utc::now();
    let second = chrono::DateTime::from_timestamp(now.timestamp() - 60, 0).unwrap();
    let (from, to) = (
        second - chrono::Duration::seconds(10),
        now + chrono::Duration::seconds(1),
    );
    let store = |h: Vec<ApplianceHealth>, p: Vec<PathProbe>| {
        let pool = db.pool.clone();
        async move {
            shadowsteer::store::telemetry::insert_health(&pool, &h)
                .await
                .unwrap();
            shadowsteer::store::telemetry::insert_probes(&pool, &p)
                .await
                .unwrap();
        }
    };
    store(
        vec![health("eu-1", second), health("eu-2", second)],
        vec![probe("eu-2", "eu-1", second), probe("eu-1", "eu-2", second)],
    )
    .await;
    // A first round reads the whole window by timestamp; later ones the last 10 s by timestamp
    // and older seconds by arrival.
    let whole = LiveRead {
        since: chrono::DateTime::UNIX_EPOCH,
        from,
        recent: from,
        to,
    };
    let later = |since| LiveRead {
        since,
        from,
        recent: now - chrono::Duration::seconds(10),
        to,
    };
    let (first, probes) = live_seconds(&db.pool, whole).await.unwrap();
    assert_eq!(first.rows.len(), 2, "{:?}", first.rows);
    let cursor = first.newest.expect("rows were read");
    assert_eq!(probes.rows.len(), 2, "{:?}", probes.rows);
    let since = cursor.max(probes.newest.unwrap()) + chrono::Duration::microseconds(1);
    assert!(
        live_seconds(&db.pool, later(since))
            .await
            .unwrap()
            .0
            .rows
            .is_empty()
    );

    // A minute late: eu-1's second gets another row (cpu 0.7), and a probe to eu-1 from eu-3.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = second + chrono::Duration::milliseconds(500);
    let mut busy = health("eu-1", late);
    busy.cpu = Fraction::new(0.7).unwrap();
    let mut slow = probe("eu-3", "eu-1", late);
    slow.rtt_ms = Some(40.0);
    store(vec![busy], vec![slow]).await;

    let (again, probes) = live_seconds(&db.pool, later(since)).await.unwrap();
    assert!(again.newest.is_some_and(|t| t >= since));
    let [row] = again.rows.as_slice() else {
        panic!("want eu-1's second alone: {:?}", again.rows);
    };
    assert_eq!(
        (row.appliance.as_str(), row.sec),
        ("eu-1", second.timestamp())
    );
    assert!((row.values[0] - 0.5).abs() < 1e-9, "cpu {:?}", row.values);
    let mut to_eu1: Vec<(String, f64)> = probes
        .rows
        .into_iter()
        .map(|p| {
            assert_eq!((p.dst.as_str(), p.sec), ("eu-1", second.timestamp()));
            (p.src, p.rtt_ms)
        })
        .collect();
    to_eu1.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(to_eu1, [("eu-2".into(), 20.0), ("eu-3".into(), 40.0)]);
}
