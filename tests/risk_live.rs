//! Live scoring that can be trusted (issue 11, item 4), end to end with `serve` and Postgres:
//! a score no scorer confirmed within `risk.max_score_age` counts as unknown-high, whether the
//! scorer died (health still arriving) or the appliance fell silent to a running scorer.

mod common;
mod serve_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serve_harness::*;

const ALICE: &str = "alice.c.vpn.example.net";
const EU: &str = "192.0.2.1";
const US: &str = "192.0.2.2";

/// Writes a score as a scorer of the appliance's region would: computed and confirmed now.
async fn write_score(pool: &sqlx::PgPool, appliance: &str, score: f64) {
    let region = if appliance.starts_with("eu") {
        "eu"
    } else {
        "us"
    };
    let p = shadowsteer::domain::Probability::new(score).unwrap();
    let row = shadowsteer::risk::data::records::ScoreRow {
        region: region.into(),
        subject_kind: "appliance",
        subject: appliance.into(),
        score: shadowsteer::domain::RiskScore::exact(p),
        confirmed: true,
    };
    shadowsteer::store::risk::write_scores(pool, &[row], "test-model", chrono::Utc::now())
        .await
        .unwrap();
}

/// Which `(region, appliance)` score rows the stand-in scorers keep confirming.
type Confirming = Arc<std::sync::Mutex<Vec<(&'static str, &'static str)>>>;

/// Stand-ins for the agents and the scorers until `stop`: every 200 ms, health for both
/// appliances and a confirmation of each row in `confirming`.
fn feed_health_and_confirm(
    pool: sqlx::PgPool,
    confirming: Confirming,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let now = chrono::Utc::now();
            let health = ["eu-1", "us-1"].map(|a| calm(a, now).0);
            shadowsteer::store::telemetry::insert_health(&pool, &health)
                .await
                .unwrap();
            let rows = confirming.lock().unwrap().clone();
            for (region, a) in rows {
                shadowsteer::store::risk::confirm_scores(
                    &pool,
                    region,
                    &[("appliance", a.to_owned())],
                    now,
                    now,
                )
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The score expiry tests' scene: stand-ins feeding health and confirming `confirming`'s
/// rows, and a steering server whose scores expire after 3 s.
struct Expiry {
    confirming: Confirming,
    stop: Arc<AtomicBool>,
    feeder: tokio::task::JoinHandle<()>,
    server: Server,
}

/// The maximum score age of [`Expiry`]'s server.
const MAX_SCORE_AGE: Duration = Duration::from_secs(3);

impl Expiry {
    /// Starts the feeder, then `serve` on `db` with `edit` applied to its configuration.
    async fn start(
        db: &common::TestDb,
        confirming: Vec<(&'static str, &'static str)>,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let confirming: Confirming = Arc::new(std::sync::Mutex::new(confirming));
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = feed_health_and_confirm(db.pool.clone(), confirming.clone(), stop.clone());
        let url = db.url.clone();
        let steering = "hold_down = \"1s\"\n[risk]\nenabled = false\nmax_score_age = \"3s\"";
        let cfg = edit(config(NO_RRL, steering));
        let server =
            tokio::task::spawn_blocking(move || Server::start(&cfg, &["--database-url", &url]))
                .await
                .unwrap();
        Self {
            confirming,
            stop,
            feeder,
            server,
        }
    }

    fn confirm(&self, row: (&'static str, &'static str)) {
        self.confirming.lock().unwrap().push(row);
    }

    /// Stops confirming `row` and returns how long alice's answer then took to become `to`:
    /// no sooner than the row aged past [`MAX_SCORE_AGE`] (less half a second of polling).
    async fn stop_confirming_until(
        &self,
        row: (&'static str, &'static str),
        to: &'static str,
        what: &str,
    ) -> Duration {
        self.confirming.lock().unwrap().retain(|r| *r != row);
        let stopped = Instant::now();
        let changed = answer_becomes(self.server.dns, ALICE, to, Duration::from_secs(20)).await;
        assert!(
            changed.is_some(),
            "{what}; log:\n{}",
            self.server.log_text()
        );
        let after = stopped.elapsed();
        assert!(
            after >= MAX_SCORE_AGE - Duration::from_millis(500),
            "{what} after {after:?}, before the score was {MAX_SCORE_AGE:?} old"
        );
        after
    }

    /// Stops the feeder and the server (which must exit cleanly); returns the server's log.
    async fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.feeder.await.unwrap();
        let log = self.server.log_text();
        let server = self.server;
        assert_eq!(
            tokio::task::spawn_blocking(move || server.stop())
                .await
                .unwrap(),
            0
        );
        log
    }
}

/// The scorer dies (nothing confirms eu-1's low score any more) while eu-1's health keeps
/// arriving: once the score is older than `risk.max_score_age`, alice leaves eu-1 for her
/// shadow, whose score is confirmed; a fresh low score brings her back.
#[tokio::test(flavor = "multi_thread")]
async fn unconfirmed_score_moves_clients_and_a_fresh_one_brings_them_back() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    write_score(&db.pool, "eu-1", 0.05).await;
    write_score(&db.pool, "us-1", 0.05).await;
    // Stand-ins for the agents and for the scorers: us-1's keeps confirming its score;
    // eu-1's until it dies.
    let scene = Expiry::start(&db, vec![("eu", "eu-1"), ("us", "us-1")], |c| c).await;
    let dns = scene.server.dns;
    // Confirmed scores never expire: alice stays on eu-1 for twice the maximum age.
    let calm_answers = answers_during(dns, ALICE, 2 * MAX_SCORE_AGE).await;
    assert_eq!(
        calm_answers.into_iter().collect::<Vec<_>>(),
        [EU],
        "confirmed scores expired; log:\n{}",
        scene.server.log_text()
    );

    // eu-1's scorer dies; its health keeps arriving.
    let moved_after = scene
        .stop_confirming_until(
            ("eu", "eu-1"),
            US,
            "alice left eu-1 with an unconfirmed score",
        )
        .await;
    assert!(
        scene
            .server
            .log_text()
            .contains("risk score not confirmed within risk.max_score_age"),
        "{}",
        scene.server.log_text()
    );

    // A fresh low score (the scorer is back): alice returns once the hold-down has passed.
    scene.confirm(("eu", "eu-1"));
    let back_at = Instant::now();
    write_score(&db.pool, "eu-1", 0.04).await;
    let back = answer_becomes(dns, ALICE, EU, Duration::from_secs(20)).await;
    assert!(back.is_some(), "alice did not return to eu-1");
    let back_after = back_at.elapsed();
    let log = scene.finish().await;
    assert!(log.contains("risk score fresh again"), "{log}");
    eprintln!(
        "score unconfirmed -> alice moved after {moved_after:?}; fresh score -> back after {back_after:?}"
    );
    common::record_measure("score_expiry_move_s", moved_after.as_secs_f64());
    // The audit trail says why: the stale primary counted as risk 1.
    let rows: Vec<(String, String, Option<f64>)> = sqlx::query_as(
        "SELECT to_appliance, reason, primary_risk FROM steering_decisions WHERE client_id = 'alice' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let moves: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(moves, ["eu-1", "us-1", "eu-1"], "{rows:?}");
    assert!(rows[1].1.contains("above threshold"), "{rows:?}");
    assert_eq!(rows[1].2, Some(1.0), "{rows:?}");
}

/// Stores `region`'s score of `appliance`, computed and last confirmed `age_s` ago.
async fn put_score(pool: &sqlx::PgPool, region: &str, appliance: &str, score: f64, age_s: f64) {
    sqlx::query(
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at, confirmed_at)
         VALUES ($1, 'appliance', $2, $3, $3, $3, 'test-model',
                 now() - make_interval(secs => $4), now() - make_interval(secs => $4))
         ON CONFLICT (region, subject_kind, subject) DO UPDATE
         SET score = EXCLUDED.score, score_low = EXCLUDED.score_low, score_high = EXCLUDED.score_high,
             computed_at = EXCLUDED.computed_at, confirmed_at = EXCLUDED.confirmed_at",
    )
    .bind(region)
    .bind(appliance)
    .bind(score)
    .bind(age_s)
    .execute(pool)
    .await
    .unwrap();
}

/// Several regions score one appliance, and one of them stops (its scorer moved away, or it
/// lost the appliance's telemetry). Its leftover row is history: it neither makes eu-1
/// unknown-high while region eu confirms eu-1's low score, nor keeps a high score in force;
/// once it ages out of `risk.max_score_age`, the fresh low score counts again without any
/// write (reconciles are 10 minutes apart here, so only the freshness check can see it).
#[tokio::test(flavor = "multi_thread")]
async fn another_regions_leftover_score_neither_holds_nor_hides() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    put_score(&db.pool, "eu", "eu-1", 0.05, 0.0).await;
    put_score(&db.pool, "us", "us-1", 0.05, 0.0).await;
    // Region us scored eu-1 too, ten minutes ago, and stopped.
    put_score(&db.pool, "us", "eu-1", 0.02, 600.0).await;
    let scene = Expiry::start(&db, vec![("eu", "eu-1"), ("us", "us-1")], |c| {
        c.replace(
            "reconcile_interval = \"1s\"",
            "reconcile_interval = \"10m\"",
        )
    })
    .await;
    let dns = scene.server.dns;
    let stays_on_eu = |what: &'static str| async move {
        let seen = answers_during(dns, ALICE, 2 * MAX_SCORE_AGE).await;
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [EU], "{what}");
    };
    // A low leftover: eu-1 is not unknown-high while eu confirms it.
    stays_on_eu("alice left eu-1 over region us's leftover score").await;
    // A high leftover (a change, so steering re-reads the scores): it does not count.
    put_score(&db.pool, "us", "eu-1", 0.95, 600.0).await;
    stays_on_eu("region us's stale 0.95 kept counting").await;
    // Region us scores eu-1 again, high: the highest fresh score counts, alice moves.
    put_score(&db.pool, "us", "eu-1", 0.95, 0.0).await;
    scene.confirm(("us", "eu-1"));
    let moved = answer_becomes(dns, ALICE, US, Duration::from_secs(10)).await;
    assert!(
        moved.is_some(),
        "a fresh 0.95 from region us did not move alice; log:\n{}",
        scene.server.log_text()
    );
    // Region us stops again: once its row is older than 3 s, eu's fresh 0.05 is in force
    // and alice returns, with no write and no reconcile to announce it.
    let back_after = scene
        .stop_confirming_until(
            ("us", "eu-1"),
            EU,
            "alice went back to eu-1 once region us's score aged out",
        )
        .await;
    let log = scene.finish().await;
    // eu-1 never counted as unknown-high.
    assert!(
        !log.contains("risk score not confirmed within risk.max_score_age"),
        "{log}"
    );
    eprintln!("region us's score aged out -> alice back on eu-1 after {back_after:?}");
}

/// With the real live scorer: eu-1's unchanged score stays confirmed while its telemetry
/// flows (no write, no expiry), and expires when eu-1 falls silent to the scorer, even with
/// `steering.health_timeout` far away: alice moves to us-1.
#[tokio::test(flavor = "multi_thread")]
async fn appliance_silent_to_the_live_scorer_becomes_unknown_high() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let now = chrono::Utc::now();
    // A quarter of an hour of calm history, so the model has full windows.
    insert_calm(
        &db.pool,
        &["eu-1", "us-1"],
        now - chrono::Duration::seconds(900),
        now,
    )
    .await;
    let eu_reports = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (pool, eu_reports) = (db.pool.clone(), eu_reports.clone());
        feed_seconds(now, stop.clone(), move |from, _| {
            let (pool, eu_reports) = (pool.clone(), eu_reports.clone());
            async move {
                let who: &[&str] = if eu_reports.load(Ordering::Relaxed) {
                    &["eu-1", "us-1"]
                } else {
                    &["us-1"]
                };
                // Through the second in progress (written again next time, which the insert
                // ignores): eu-1 is heard up to now, which the 3 s score age below counts on.
                insert_calm(&pool, who, from, chrono::Utc::now()).await;
            }
        })
    };
    let url = db.url.clone();
    let steering = "hold_down = \"1s\"\nhealth_timeout = \"1h\"\n[risk]\nmax_score_age = \"3s\"";
    let server = tokio::task::spawn_blocking(move || {
        Server::start(&config(NO_RRL, steering), &["--database-url", &url])
    })
    .await
    .unwrap();
    let pool = db.pool.clone();
    let stored = || async {
        sqlx::query_as::<_, (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>(
            "SELECT computed_at, confirmed_at FROM risk_scores WHERE subject_kind = 'appliance' AND subject = 'eu-1'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(r) = stored().await {
            break r;
        }
        if Instant::now() >= deadline {
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT region, subject_kind, subject FROM risk_scores")
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
            let token = cli(&db.url, &["token", "create", "--name", "dbg"]);
            let m = http_get(server.admin, "/metrics", Some(token.trim()));
            let m: String = m
                .map(|x| x.1)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("risk"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "the live scorer wrote no score for eu-1; rows {rows:?}\n{m}\nlog:\n{}",
                server.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dns = server.dns;
    // Twice the maximum age of calm: the score is confirmed, not rewritten, and alice stays.
    let seen = answers_during(dns, ALICE, Duration::from_secs(6)).await;
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [EU],
        "calm eu-1 lost its client; log:\n{}",
        server.log_text()
    );
    let later = stored().await.unwrap();
    assert!(
        later.1 > first.1 + chrono::Duration::seconds(4),
        "confirmation did not advance: {first:?} -> {later:?}"
    );
    let history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM risk_history WHERE subject_kind = 'appliance' AND subject = 'eu-1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let writes_in_history = history;

    // eu-1 falls silent: no health, no probes. Health freshness is an hour away, so only the
    // score's expiry can move alice.
    eu_reports.store(false, Ordering::Relaxed);
    let silent = Instant::now();
    let moved = answer_becomes(dns, ALICE, US, Duration::from_secs(30)).await;
    let moved_after = silent.elapsed();
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    let log = server.log_text();
    assert_eq!(
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap(),
        0
    );
    assert!(
        moved.is_some(),
        "alice stayed on a silent eu-1; log:\n{log}"
    );
    assert!(
        !log.contains("health reports stopped"),
        "moved by health, not by the score: {log}"
    );
    eprintln!(
        "eu-1 silent -> alice moved after {moved_after:?}; {writes_in_history} history rows for eu-1 before (confirmations add none)"
    );
    // Confirmations added no history rows: one per actual write (the first, maybe a few
    // while the windows filled), not one per round.
    assert!(
        writes_in_history < 6,
        "{writes_in_history} history rows in ~6 s of confirmed calm"
    );
}

/// Model reload without a restart: through the admin API (admin scope) and SIGHUP, new scores
/// name the new model; a corrupt file is refused with a clear error and the old model stays.
#[tokio::test(flavor = "multi_thread")]
async fn reloaded_model_names_new_scores_and_a_bad_file_changes_nothing() {
    use shadowsteer::risk::model::Model;
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let now = chrono::Utc::now();
    insert_calm(
        &db.pool,
        &["eu-1", "us-1"],
        now - chrono::Duration::seconds(120),
        now,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let (a, b, c) = (
        Model::constant("a", 0.10),
        Model::constant("b", 0.12),
        Model::constant("c", 0.11),
    );
    a.save(&path).unwrap();
    let url = db.url.clone();
    let steering = format!(
        "hold_down = \"1s\"\nthreshold = 0.7\nhysteresis = 0.1\nhealth_timeout = \"1h\"\n[risk]\nmodel = {:?}\nmax_score_age = \"1h\"",
        path.display().to_string()
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start(&config(NO_RRL, &steering), &["--database-url", &url])
    })
    .await
    .unwrap();
    let pool = db.pool.clone();
    // Every stored score of the region names `version` (eu-1's and its path's).
    let all_named = |version: String| {
        let pool = pool.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let versions: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT model_version FROM risk_scores WHERE region = 'eu'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                if versions == [version.clone()] {
                    return Instant::now();
                }
                assert!(
                    Instant::now() < deadline,
                    "stored versions {versions:?}, want only {version}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    all_named(a.version.clone()).await;
    let admin = cli(
        &db.url,
        &["token", "create", "--name", "ops", "--scope", "admin"],
    );
    let reader = cli(
        &db.url,
        &["token", "create", "--name", "viewer", "--scope", "read"],
    );
    let (admin, reader) = (admin.trim().to_owned(), reader.trim().to_owned());
    let api = server.admin;
    let call = move |token: String, method: &'static str, route: &'static str| {
        tokio::task::spawn_blocking(move || http(api, method, route, Some(&token), None).unwrap())
    };

    // A read token may not reload.
    let (code, _) = call(reader.clone(), "POST", "/api/v1/model/reload")
        .await
        .unwrap();
    assert_eq!(code, 403);

    // Model b through the API: the answer names both versions, and the live scorer rewrites
    // every score with b's name (a constant model moves no score by epsilon: only the new
    // version makes it write).
    // History keeps one row per subject and scored second, the last write's: a reload
    // within the second of a's last write would replace a's row (one run in ten or so).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.save(&path).unwrap();
    let asked = Instant::now();
    let (code, body) = call(admin.clone(), "POST", "/api/v1/model/reload")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["previous"], a.version.as_str(), "{body}");
    assert_eq!(v["version"], b.version.as_str(), "{body}");
    assert_eq!(v["changed"], true, "{body}");
    let named_after = all_named(b.version.clone()).await - asked;
    let (_, model) = call(reader.clone(), "GET", "/api/v1/model").await.unwrap();
    assert!(model.contains(&b.version), "{model}");

    // A corrupt file: 422 with the reason, b stays in force and in the scores.
    std::fs::write(&path, "{\"name\": \"half a model").unwrap();
    let (code, body) = call(admin.clone(), "POST", "/api/v1/model/reload")
        .await
        .unwrap();
    assert_eq!(code, 422, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], "invalid_model", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("not a shadowsteer model") && msg.contains(&b.version),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, model) = call(reader.clone(), "GET", "/api/v1/model").await.unwrap();
    assert!(model.contains(&b.version), "{model}");
    all_named(b.version.clone()).await;

    // Model c by SIGHUP.
    c.save(&path).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    all_named(c.version.clone()).await;
    let (_, metrics) = call(reader.clone(), "GET", "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "shadowsteer_risk_model_info{{version=\"{}\"",
            c.version
        )),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "shadowsteer_risk_model_reloads_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "shadowsteer_risk_model_reload_failures_total"),
        Some(1.0)
    );
    let log = server.log_text();
    assert!(log.contains("risk model reload refused"), "{log}");
    assert_eq!(
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap(),
        0
    );
    // The history keeps which model computed each score.
    let versions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT model_version FROM risk_history WHERE subject = 'eu-1' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut want = vec![a.version.clone(), b.version.clone(), c.version.clone()];
    want.sort();
    assert_eq!(versions, want);
    eprintln!("reload via API -> every stored score named the new model after {named_after:?}");
}

/// A model that scores by cpu over the last 10 s (0.6 -> 0.27, 0.3 -> 0.08) with the given
/// operating threshold.
fn cpu_model(name: &str, threshold: f64) -> shadowsteer::risk::model::Model {
    cpu_model_on(name, "cpu_mean10", threshold)
}

/// As [`cpu_model`], reading the cpu feature `feature`.
fn cpu_model_on(name: &str, feature: &str, threshold: f64) -> shadowsteer::risk::model::Model {
    use shadowsteer::risk::model::{Members, Model};
    let mut m = Model::constant(name, 0.5);
    let cpu = m
        .features
        .names()
        .iter()
        .position(|f| f == feature)
        .expect("a feature of the model");
    if let Members::Logistic(ms) = &mut m.members {
        ms[0].intercept = -4.0;
        ms[0].weights[cpu] = 5.0;
    }
    m.threshold = threshold;
    m.version = m.compute_version();
    m.validate().expect("valid model");
    m
}

/// eu-1's stored appliance score, if any.
async fn eu_score(pool: &sqlx::PgPool) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT score FROM risk_scores WHERE subject_kind = 'appliance' AND subject = 'eu-1'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// `serve` scoring with a model read from a file of its own, and an admin token to reload it.
struct ModelServer {
    server: Server,
    path: std::path::PathBuf,
    token: String,
    _dir: tempfile::TempDir,
}

impl ModelServer {
    /// Starts `serve` with `steering` as its `[steering]` section and `model` as its model.
    async fn start(url: &str, steering: &str, model: &shadowsteer::risk::model::Model) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        model.save(&path).unwrap();
        let conf = format!(
            "{steering}\n[risk]\nmodel = {:?}\nmax_score_age = \"1h\"",
            path.display().to_string()
        );
        let db = url.to_owned();
        let server = tokio::task::spawn_blocking(move || {
            Server::start(&config(NO_RRL, &conf), &["--database-url", &db])
        })
        .await
        .unwrap();
        let token = cli(
            url,
            &["token", "create", "--name", "ops", "--scope", "admin"],
        )
        .trim()
        .to_owned();
        Self {
            server,
            path,
            token,
            _dir: dir,
        }
    }

    async fn call(&self, method: &'static str, route: &'static str) -> (u16, String) {
        let (api, token) = (self.server.admin, self.token.clone());
        tokio::task::spawn_blocking(move || http(api, method, route, Some(&token), None).unwrap())
            .await
            .unwrap()
    }

    /// Writes `model` to the file and reloads it through the API.
    async fn reload(&self, model: &shadowsteer::risk::model::Model) {
        model.save(&self.path).unwrap();
        let (code, body) = self.call("POST", "/api/v1/model/reload").await;
        assert_eq!(code, 200, "{body}");
    }

    /// The steering threshold the API reports.
    async fn steering_threshold(&self) -> f64 {
        let (code, body) = self.call("GET", "/api/v1/model").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["steering_threshold"].as_f64().unwrap()
    }

    /// Waits until eu-1's live score is about 0.27 (what [`cpu_model`] makes of a busy eu-1).
    async fn eu_scored_busy(&self, pool: &sqlx::PgPool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let score = eu_score(pool).await;
            if score.is_some_and(|s| (0.2..0.35).contains(&s)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "eu-1 was never scored about 0.27 (last {score:?}); log:\n{}",
                self.server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Stand-in for the agents: eu-1 busy (cpu 0.6), us-1 calm (0.3), a row every 200 ms, until
/// the flag is set.
fn feed_busy_eu(pool: sqlx::PgPool) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let feeder = tokio::spawn(async move {
        while !flag.load(Ordering::Relaxed) {
            let now = chrono::Utc::now();
            let mut health = ["eu-1", "us-1"].map(|a| calm(a, now).0);
            health[0].cpu = shadowsteer::domain::Fraction::saturating(0.6);
            shadowsteer::store::telemetry::insert_health(&pool, &health)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (stop, feeder)
}

/// Thresholds left out of `[steering]` follow the model's operating threshold, also when a
/// reloaded model brings another one: eu-1 scoring 0.27 keeps alice under model a (threshold
/// 0.5) and moves her under model b (threshold 0.15), without a restart. Before, the policy
/// was fixed at start, so b's scores were read against a's threshold.
#[tokio::test(flavor = "multi_thread")]
async fn steering_thresholds_follow_a_reloaded_model() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let (stop, feeder) = feed_busy_eu(db.pool.clone());
    let s = ModelServer::start(
        &db.url,
        "hold_down = \"1s\"\nhealth_timeout = \"1h\"",
        &cpu_model("a", 0.5),
    )
    .await;
    assert_eq!(s.steering_threshold().await, 0.5);
    // Under a, eu-1's live score (about 0.27) stays below the threshold: alice stays.
    s.eu_scored_busy(&db.pool).await;
    let before = answers_during(s.server.dns, ALICE, Duration::from_secs(3)).await;
    assert_eq!(
        before.into_iter().collect::<Vec<_>>(),
        [EU],
        "model a moved alice; log:\n{}",
        s.server.log_text()
    );

    s.reload(&cpu_model("b", 0.15)).await;
    let moved = answer_becomes(s.server.dns, ALICE, US, Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    let moved = moved.unwrap_or_else(|| {
        panic!(
            "alice stayed on eu-1 under model b's threshold; log:\n{}",
            s.server.log_text()
        )
    });
    eprintln!("reload to a threshold of 0.15 -> alice moved after {moved:?}");
    // The API reports the threshold steering used for that move.
    assert_eq!(s.steering_threshold().await, 0.15);
    assert!(
        s.server
            .log_text()
            .contains("steering policy follows the reloaded model"),
        "{}",
        s.server.log_text()
    );
}

/// A reloaded threshold that makes no valid policy with what `[steering]` sets (here a
/// hysteresis of 0.2 above b's 0.15) changes nothing: the thresholds in force stay, and the
/// API reports those, not the ones that were refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_reloaded_threshold_without_a_valid_policy_changes_nothing() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let (stop, feeder) = feed_busy_eu(db.pool.clone());
    let s = ModelServer::start(
        &db.url,
        "hold_down = \"1s\"\nhealth_timeout = \"1h\"\nhysteresis = 0.2",
        &cpu_model("a", 0.5),
    )
    .await;
    s.eu_scored_busy(&db.pool).await;
    s.reload(&cpu_model("b", 0.15)).await;
    let refused = tokio::task::spawn_blocking({
        let log = s.server.log.clone();
        move || {
            eventually(Duration::from_secs(20), || {
                log.lock()
                    .unwrap()
                    .contains("makes no valid steering policy")
            })
        }
    })
    .await
    .unwrap();
    assert!(
        refused.is_some(),
        "no refusal; log:\n{}",
        s.server.log_text()
    );
    assert_eq!(s.steering_threshold().await, 0.5);
    let after = answers_during(s.server.dns, ALICE, Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        [EU],
        "a refused threshold moved alice; log:\n{}",
        s.server.log_text()
    );
}

/// An agent that could not write for a while replays its buffer: rows 15-40 s old reach the
/// live scorer's windows. Before, each round re-read only the last 10 s by timestamp, so the
/// replayed seconds stayed holes and eu-1's busy minute never counted.
#[tokio::test(flavor = "multi_thread")]
async fn telemetry_written_late_reaches_the_live_scores() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let now0 = chrono::Utc::now();
    let at = |s: i64| now0 + chrono::Duration::seconds(s);
    // eu-1's seconds [-40, -15) are still in its agent's buffer.
    insert_calm(&db.pool, &["eu-1", "us-1"], at(-120), at(-40)).await;
    insert_calm(&db.pool, &["us-1"], at(-40), at(-15)).await;
    insert_calm(&db.pool, &["eu-1", "us-1"], at(-15), now0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_health_and_confirm(db.pool.clone(), Confirming::default(), stop.clone());
    // cpu over the last minute: 0.3 throughout -> 0.08; with the replayed 25 s at 0.9 -> 0.22.
    let s = ModelServer::start(
        &db.url,
        "hold_down = \"1s\"\nhealth_timeout = \"1h\"",
        &cpu_model_on("late", "cpu_mean60", 0.15),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        if let Some(score) = eu_score(&db.pool).await {
            break score;
        }
        assert!(
            Instant::now() < deadline,
            "eu-1 never scored; log:\n{}",
            s.server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(before < 0.1, "calm eu-1 scored {before}");
    // The whole gap must still be in the minute the model reads when the replay is scored.
    let waited = (chrono::Utc::now() - now0).num_seconds();
    assert!(
        waited < 12,
        "serve took {waited} s to score; the gap left the window"
    );

    // The replay: the buffered seconds, busy.
    insert_seconds(&db.pool, at(-40), at(-15), |ts| {
        let (mut h, p) = calm("eu-1", ts);
        h.cpu = shadowsteer::domain::Fraction::saturating(0.9);
        vec![(h, p)]
    })
    .await;
    let replayed = Instant::now();
    let mut last = before;
    while last < 0.15 {
        assert!(
            replayed.elapsed() < Duration::from_secs(8),
            "the replayed rows never reached the scorer: eu-1 still scores {last}; log:\n{}",
            s.server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = eu_score(&db.pool).await.unwrap_or(last);
    }
    eprintln!(
        "replayed rows 15-40 s old scored after {:?}: eu-1 {before:.3} -> {last:.3}",
        replayed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(move || s.server.stop())
            .await
            .unwrap(),
        0
    );
}
