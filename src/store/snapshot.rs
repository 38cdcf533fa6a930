//! Loads the steering inputs from Postgres and keeps them current: a full load at start, after
//! every (re)connection of the change listener and every `reconcile_interval`; in between,
//! targeted reloads driven by the schema's NOTIFY triggers, within milliseconds of a commit.
//!
//! The DNS path never waits on this: each new version of the inputs goes out on a `watch`
//! channel. When the database is unreachable the last version stays in force (serve-stale),
//! [`SyncStatus`] says how old it is, a warning with the age is logged at every failed retry,
//! and loading resumes by itself when the database returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::notify::{self, Change, ChangedTable, Notice};
use super::{StoreError, age_ms};
use crate::domain::{ApplianceId, ClientId, Probability, RegionId};
use crate::steering::{
    AdvisoryInput, AdvisoryTarget, ApplianceInput, ClientInput, Inputs, PastDecision, PathScores,
};

/// Longest wait between two attempts to reach the database while it is away.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// More changed clients than this in one batch reload everything instead.
const MAX_TARGETED_CLIENTS: usize = 500;

/// How current the inputs are, for metrics, logs and `/readyz`.
#[derive(Debug, Default)]
pub struct SyncStatus {
    /// Whether the last attempt to read the database succeeded.
    db_up: AtomicBool,
    /// Whether anything was ever loaded.
    loaded: AtomicBool,
    /// Last successful read (Unix milliseconds).
    last_sync_ms: AtomicI64,
    /// Full loads done.
    full_loads: AtomicU64,
    /// Targeted reloads done (from notifications).
    targeted_loads: AtomicU64,
    /// Failed reads.
    failures: AtomicU64,
    /// Times the change listener (re)connected.
    listener_connects: AtomicU64,
}

impl SyncStatus {
    /// Whether the last attempt to read the database succeeded.
    pub fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Relaxed)
    }

    /// Seconds since the inputs were last confirmed against the database (`None` before the
    /// first load).
    pub fn age_seconds(&self, now_ms: i64) -> Option<f64> {
        self.loaded
            .load(Ordering::Relaxed)
            .then(|| (now_ms - self.last_sync_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0)
    }

    /// When the inputs were last confirmed against the database (Unix milliseconds; 0 before).
    pub fn last_sync_ms(&self) -> i64 {
        self.last_sync_ms.load(Ordering::Relaxed)
    }

    /// Starts from inputs saved on disk, which were confirmed at `confirmed_at_ms`: they count
    /// as loaded, and as old as they are.
    pub fn restored(&self, confirmed_at_ms: i64) {
        self.confirmed(confirmed_at_ms);
    }

    /// The inputs in hand match the database as of `at_ms`. The time is stored before the
    /// flag that makes [`SyncStatus::age_seconds`] read it.
    fn confirmed(&self, at_ms: i64) {
        self.last_sync_ms.store(at_ms, Ordering::Relaxed);
        self.loaded.store(true, Ordering::Relaxed);
    }
}

/// Database freshness, for `/metrics`.
impl crate::metrics::Collector for SyncStatus {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.gauge(
            "shadowsteer_snapshot_age_seconds",
            "Seconds since the served data was last confirmed against the database (-1: never loaded).",
            self.age_seconds(chrono::Utc::now().timestamp_millis())
                .unwrap_or(-1.0),
        )?;
        out.gauge(
            "shadowsteer_database_up",
            "Whether the last database read succeeded.",
            u64::from(self.db_up()),
        )?;
        out.counters(
            "shadowsteer_snapshot_loads",
            "Reads of steering data from the database, by kind.",
            "kind",
            [
                ("full", self.full_loads.load(Ordering::Relaxed)),
                ("targeted", self.targeted_loads.load(Ordering::Relaxed)),
            ],
        )?;
        out.counter(
            "shadowsteer_snapshot_load_failures",
            "Failed reads of steering data.",
            self.failures.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_listener_connects",
            "Connections of the change listener (each one triggers a full reload).",
            self.listener_connects.load(Ordering::Relaxed),
        )
    }
}

fn bad(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidRow {
        table,
        message: e.to_string(),
    }
}

async fn load_appliances(
    conn: &mut sqlx::PgConnection,
) -> Result<BTreeMap<ApplianceId, ApplianceInput>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT id, region, host(endpoint_ip) AS "ip!", endpoint_port, state, capacity FROM appliances"#
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let id = ApplianceId::new(r.id).map_err(|e| bad("appliances", e))?;
            let ip: IpAddr = r.ip.parse().map_err(|e| bad("appliances", e))?;
            let port = u16::try_from(r.endpoint_port).map_err(|e| bad("appliances", e))?;
            Ok((
                id.clone(),
                ApplianceInput {
                    id,
                    region: RegionId::new(r.region).map_err(|e| bad("appliances", e))?,
                    endpoint: SocketAddr::new(ip, port),
                    state: r.state.parse().map_err(|e| bad("appliances", e))?,
                    capacity: u32::try_from(r.capacity).map_err(|e| bad("appliances", e))?,
                },
            ))
        })
        .collect()
}

fn client_row(
    id: String,
    primary: String,
    shadow: String,
) -> Result<(ClientId, ClientInput), StoreError> {
    Ok((
        ClientId::new(id).map_err(|e| bad("clients", e))?,
        ClientInput {
            primary: ApplianceId::new(primary).map_err(|e| bad("clients", e))?,
            shadow: ApplianceId::new(shadow).map_err(|e| bad("clients", e))?,
        },
    ))
}

async fn load_clients(
    conn: &mut sqlx::PgConnection,
) -> Result<BTreeMap<ClientId, ClientInput>, StoreError> {
    let rows = sqlx::query!("SELECT id, primary_appliance, shadow_appliance FROM clients")
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|r| client_row(r.id, r.primary_appliance, r.shadow_appliance))
        .collect()
}

/// Each appliance's model score: the highest among the scores confirmed within `max_age`.
/// Several regions may score one appliance; a row no scorer confirms any more (a region that
/// stopped scoring it, or lost its telemetry) is history, not input: it neither keeps a high
/// score in force nor hides a fresh one. An appliance with no fresh row is left out here and
/// counts as unknown-high ([`stale_scores`]).
async fn load_scores(
    conn: &mut sqlx::PgConnection,
    max_age: Duration,
) -> Result<HashMap<ApplianceId, Probability>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT subject, max(score) AS "score!" FROM risk_scores
           WHERE subject_kind = 'appliance'
             AND confirmed_at >= now() - make_interval(secs => $1::bigint / 1000.0)
           GROUP BY subject"#,
        age_ms(max_age)
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let id = ApplianceId::new(r.subject).map_err(|e| bad("risk_scores", e))?;
            let p = Probability::new(r.score).map_err(|e| bad("risk_scores", e))?;
            Ok((id, p))
        })
        .collect()
}

/// The path scores confirmed within `max_age` (see [`PathScores`] for why a stale one is left
/// out rather than counted high). A subject is `src>dst` as the agents' probes name the ends:
/// `dst` an appliance of `appliances` makes an appliance-to-appliance path, any other valid
/// client id a client's path. (A client whose id equals an appliance's would read as the
/// appliance: the scorer names both paths alike.) Rows that fit neither are skipped: they are
/// history of ids no longer valid, not input.
async fn load_paths(
    conn: &mut sqlx::PgConnection,
    appliances: &BTreeMap<ApplianceId, ApplianceInput>,
    max_age: Duration,
) -> Result<PathScores, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT subject, score FROM risk_scores
           WHERE subject_kind = 'path'
             AND confirmed_at >= now() - make_interval(secs => $1::bigint / 1000.0)"#,
        age_ms(max_age)
    )
    .fetch_all(conn)
    .await?;
    let mut out = PathScores::new();
    for r in rows {
        let Some((src, dst)) = r.subject.split_once('>') else {
            continue;
        };
        let Ok(src) = ApplianceId::new(src) else {
            continue;
        };
        let p = Probability::new(r.score).map_err(|e| bad("risk_scores", e))?;
        match ApplianceId::new(dst) {
            Ok(a) if appliances.contains_key(&a) => out.insert_between(src, a, p),
            _ => {
                if let Ok(c) = ClientId::new(dst) {
                    out.insert_client(src, c, p);
                }
            }
        }
    }
    Ok(out)
}

async fn load_advisories(conn: &mut sqlx::PgConnection) -> Result<Vec<AdvisoryInput>, StoreError> {
    let rows = sqlx::query!(
        "SELECT appliance_id, scope_region, risk, starts_at, ends_at FROM advisories
         WHERE ends_at IS NULL OR ends_at > now()"
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let target = match (r.appliance_id, r.scope_region) {
                (Some(a), None) => AdvisoryTarget::Appliance(
                    ApplianceId::new(a).map_err(|e| bad("advisories", e))?,
                ),
                (None, Some(g)) => {
                    AdvisoryTarget::Region(RegionId::new(g).map_err(|e| bad("advisories", e))?)
                }
                _ => return Err(bad("advisories", "advisory without a single scope")),
            };
            Ok(AdvisoryInput {
                target,
                risk: Probability::new(r.risk).map_err(|e| bad("advisories", e))?,
                starts_at: r.starts_at,
                ends_at: r.ends_at,
            })
        })
        .collect()
}

async fn load_history(
    conn: &mut sqlx::PgConnection,
) -> Result<HashMap<ClientId, PastDecision>, StoreError> {
    let rows = sqlx::query!(
        "SELECT DISTINCT ON (client_id) client_id, to_appliance, decided_at
         FROM steering_decisions ORDER BY client_id, decided_at DESC, id DESC"
    )
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        // Rows for ids that are no longer valid are history, not input: skip them.
        let appliance = r.to_appliance.map(ApplianceId::new).transpose();
        if let (Ok(c), Ok(a)) = (ClientId::new(r.client_id), appliance) {
            out.insert(
                c,
                PastDecision {
                    appliance: a,
                    at: r.decided_at,
                },
            );
        }
    }
    Ok(out)
}

/// Reads everything in one consistent snapshot of the database. The audit history is read
/// only when `with_history` (at start). Path scores older than `max_score_age` are left out.
pub async fn load_all(
    pool: &PgPool,
    previous_history: Option<Arc<HashMap<ClientId, PastDecision>>>,
    max_score_age: Duration,
) -> Result<Inputs, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let appliances = load_appliances(&mut tx).await?;
    let clients = load_clients(&mut tx).await?;
    let scores = load_scores(&mut tx, max_score_age).await?;
    let paths = load_paths(&mut tx, &appliances, max_score_age).await?;
    let advisories = load_advisories(&mut tx).await?;
    let history = match previous_history {
        Some(h) => h,
        None => Arc::new(load_history(&mut tx).await?),
    };
    tx.commit().await?;
    Ok(Inputs {
        appliances: Arc::new(appliances),
        clients: Arc::new(clients),
        model_scores: Arc::new(scores),
        stale_scores: Arc::default(),
        path_scores: Arc::new(paths),
        advisories: Arc::new(advisories),
        history,
    })
}

/// Reloads what `changes` touched.
async fn load_targeted(
    pool: &PgPool,
    current: &Inputs,
    changes: &[Change],
    max_score_age: Duration,
) -> Result<Inputs, StoreError> {
    let tables: std::collections::HashSet<ChangedTable> = changes.iter().map(|c| c.table).collect();
    let touched = |t: ChangedTable| tables.contains(&t);
    let mut next = current.clone();
    let mut conn = pool.acquire().await?;
    if touched(ChangedTable::Appliances) {
        next.appliances = Arc::new(load_appliances(&mut conn).await?);
    }
    if touched(ChangedTable::RiskScores) {
        next.model_scores = Arc::new(load_scores(&mut conn, max_score_age).await?);
    }
    if touched(ChangedTable::RiskScores) || touched(ChangedTable::Appliances) {
        next.path_scores = Arc::new(load_paths(&mut conn, &next.appliances, max_score_age).await?);
    }
    if touched(ChangedTable::Advisories) {
        next.advisories = Arc::new(load_advisories(&mut conn).await?);
    }
    let client_ids: BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.table == ChangedTable::Clients)
        .map(|c| c.key.as_str())
        .collect();
    if !client_ids.is_empty() {
        let ids: Vec<String> = client_ids.iter().map(|s| (*s).to_owned()).collect();
        let rows = sqlx::query!(
            "SELECT id, primary_appliance, shadow_appliance FROM clients WHERE id = ANY($1)",
            &ids
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut clients = (*current.clients).clone();
        for id in &ids {
            if let Ok(id) = ClientId::new(id.clone()) {
                clients.remove(&id);
            }
        }
        for r in rows {
            let (id, c) = client_row(r.id, r.primary_appliance, r.shadow_appliance)?;
            clients.insert(id, c);
        }
        next.clients = Arc::new(clients);
    }
    Ok(next)
}

/// `fresh` with every table equal to the one in `current` replaced by `current`'s (so that
/// consumers can tell unchanged tables by pointer), and whether anything differed.
fn reuse_unchanged(current: &Inputs, mut fresh: Inputs) -> (Inputs, bool) {
    fn keep<T: PartialEq>(cur: &Arc<T>, fresh: &mut Arc<T>) -> bool {
        if **cur == **fresh {
            *fresh = cur.clone();
            false
        } else {
            true
        }
    }
    let changed = [
        keep(&current.appliances, &mut fresh.appliances),
        keep(&current.clients, &mut fresh.clients),
        keep(&current.model_scores, &mut fresh.model_scores),
        keep(&current.stale_scores, &mut fresh.stale_scores),
        keep(&current.path_scores, &mut fresh.path_scores),
        keep(&current.advisories, &mut fresh.advisories),
    ];
    fresh.history = current.history.clone();
    (fresh, changed.contains(&true))
}

/// Events of the change listener.
enum Event {
    /// (Re)connected and listening: anything may have been missed, reload everything.
    Connected,
    /// A change notification.
    Change(Change),
    /// The listener lost its connection.
    Lost(String),
}

/// Owns a `PgListener` and reports what it hears; reconnects with back-off. Runs until its
/// receiver is gone.
async fn listen(pool: PgPool, tx: mpsc::Sender<Event>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match notify::listen_with(&pool).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(250);
                if tx.send(Event::Connected).await.is_err() {
                    return;
                }
                loop {
                    let event = match notify::recv(&mut listener).await {
                        Notice::Change(c) => Event::Change(c),
                        // Re-established by sqlx: anything may have been missed.
                        Notice::Gap => Event::Connected,
                        Notice::Failed(e) => {
                            let _ = tx.send(Event::Lost(e.to_string())).await;
                            break;
                        }
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if tx.send(Event::Lost(e.to_string())).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RETRY);
    }
}

/// Keeps the steering inputs current.
pub struct Loader {
    /// The database.
    pub pool: PgPool,
    /// Where each new version of the inputs goes.
    pub inputs: watch::Sender<Option<Arc<Inputs>>>,
    /// Freshness, for metrics.
    pub status: Arc<SyncStatus>,
    /// Full reload period.
    pub reconcile_interval: Duration,
    /// Health older than this makes an appliance count as down (see [`stale_appliances`]).
    pub health_timeout: Duration,
    /// A model score not confirmed for this long counts as unknown-high (see [`stale_scores`]);
    /// a path score that old is left out ([`PathScores`]).
    pub max_score_age: Duration,
}

/// How often health freshness is checked.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Appliances whose last health report is older than `timeout`. An appliance that never
/// reported (no agent yet, or inventory only) is not judged: only silence after reports is.
pub async fn stale_appliances(
    pool: &PgPool,
    timeout: Duration,
) -> Result<std::collections::BTreeSet<ApplianceId>, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"SELECT a.id FROM appliances a
           CROSS JOIN LATERAL (
               SELECT h.ts FROM appliance_health h
               WHERE h.region = a.region AND h.appliance_id = a.id
               ORDER BY h.ts DESC LIMIT 1) last
           WHERE last.ts < now() - make_interval(secs => $1::bigint / 1000.0)"#,
        age_ms(timeout)
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|id| ApplianceId::new(id).ok())
        .collect())
}

/// Appliances with a stored model score that no scorer has confirmed for `max_age` (the
/// scorer died, or stopped hearing from the appliance): their score is unknown, and steering
/// counts it as high ([`Inputs::stale_scores`]). Several regions may score one appliance; it
/// is stale when none of its scores is fresh: one region's leftover row does not make it
/// unknown while another region confirms it.
pub async fn stale_scores(
    pool: &PgPool,
    max_age: Duration,
) -> Result<std::collections::BTreeSet<ApplianceId>, StoreError> {
    let age_ms = age_ms(max_age);
    let rows = sqlx::query_scalar!(
        r#"SELECT subject AS "subject!" FROM risk_scores
           WHERE subject_kind = 'appliance'
           GROUP BY subject
           HAVING max(confirmed_at) < now() - make_interval(secs => $1::bigint / 1000.0)"#,
        age_ms
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|id| ApplianceId::new(id).ok())
        .collect())
}

/// Which scores of `kind` are fresh (confirmed within `max_age`), as a fingerprint: their
/// number and a sum of hashes of their keys. Scores age out (or are confirmed again) without
/// any notification, and there may be one path score per connected client: comparing two
/// numbers every second tells the loader when to re-read them without holding the set twice.
pub async fn fresh_scores(
    pool: &PgPool,
    kind: &str,
    max_age: Duration,
) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "n!", coalesce(sum(hashtext(region || ' ' || subject)), 0)::bigint AS "hash!"
           FROM risk_scores
           WHERE subject_kind = $1
             AND confirmed_at >= now() - make_interval(secs => $2::bigint / 1000.0)"#,
        kind,
        age_ms(max_age)
    )
    .fetch_one(pool)
    .await?;
    Ok((row.n, row.hash))
}

/// What the freshness check found: appliances with silent health, appliances with stale
/// model scores, and which path scores are fresh.
#[derive(Debug, Default, PartialEq, Eq)]
struct Staleness {
    /// Health reports stopped: counted as down.
    health: std::collections::BTreeSet<ApplianceId>,
    /// Model score not confirmed in time: counted as unknown-high by steering.
    scores: std::collections::BTreeSet<ApplianceId>,
    /// Fingerprint of the fresh appliance scores ([`fresh_scores`]): when one region's row
    /// ages out while another's is fresh, the appliance's highest fresh score changes.
    appliance_scores: (i64, i64),
    /// Fingerprint of the fresh path scores ([`fresh_scores`]): a change re-reads them.
    paths: (i64, i64),
}

/// Applies what the freshness check found to freshly loaded inputs.
fn apply_staleness(inputs: Inputs, stale: &Staleness) -> Inputs {
    let mut inputs = apply_stale(inputs, &stale.health);
    if !stale.scores.is_empty() {
        inputs.stale_scores = Arc::new(stale.scores.clone());
    }
    inputs
}

/// Marks silent appliances down in the steering inputs (their clients go to their shadow).
fn apply_stale(mut inputs: Inputs, stale: &std::collections::BTreeSet<ApplianceId>) -> Inputs {
    if stale.is_empty() {
        return inputs;
    }
    let mut appliances = (*inputs.appliances).clone();
    for id in stale {
        if let Some(a) = appliances.get_mut(id) {
            a.state = crate::domain::ApplianceState::Down;
        }
    }
    inputs.appliances = Arc::new(appliances);
    inputs
}

/// Logs each appliance that went silent or resumed, in health or in scores.
fn log_staleness(was: &Staleness, now: &Staleness) {
    for id in now.health.difference(&was.health) {
        tracing::warn!(appliance = %id, "health reports stopped; treating the appliance as failed");
    }
    for id in was.health.difference(&now.health) {
        tracing::info!(appliance = %id, "health reports resumed");
    }
    for id in now.scores.difference(&was.scores) {
        tracing::warn!(appliance = %id, "risk score not confirmed within risk.max_score_age; treating its risk as unknown-high");
    }
    for id in was.scores.difference(&now.scores) {
        tracing::info!(appliance = %id, "risk score fresh again");
    }
}

impl Loader {
    /// Which appliances' health and scores are too old now.
    async fn check_staleness(&self) -> Result<Staleness, StoreError> {
        Ok(Staleness {
            health: stale_appliances(&self.pool, self.health_timeout).await?,
            scores: stale_scores(&self.pool, self.max_score_age).await?,
            appliance_scores: fresh_scores(&self.pool, "appliance", self.max_score_age).await?,
            paths: fresh_scores(&self.pool, "path", self.max_score_age).await?,
        })
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn mark_ok(&self) {
        self.status.db_up.store(true, Ordering::Relaxed);
        self.status.confirmed(Self::now_ms());
    }

    fn mark_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let was_up = self.status.db_up.swap(false, Ordering::Relaxed);
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        let age = self.status.age_seconds(Self::now_ms());
        match age {
            Some(age) => {
                tracing::warn!(error = %e, snapshot_age_s = format!("{age:.1}"), was_up, "{what} failed; serving the last snapshot")
            }
            None => {
                tracing::warn!(error = %e, "{what} failed; nothing loaded yet, answering from the static zone data only")
            }
        }
    }

    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut events) = mpsc::channel(4096);
        let listener = tokio::spawn(listen(self.pool.clone(), tx));
        let mut current: Option<Inputs> = None;
        let mut need_full = true;
        let mut pending: Vec<Change> = Vec::new();
        let mut retry = Duration::from_millis(500);
        let mut failing = false;
        let mut reconcile = tokio::time::interval(self.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stale = Staleness::default();
        loop {
            if failing || (!need_full && pending.is_empty()) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = reconcile.tick() => need_full = true,
                    _ = health.tick(), if !failing && current.is_some() => {
                        match self.check_staleness().await {
                            Ok(now_stale) if now_stale != stale => {
                                log_staleness(&stale, &now_stale);
                                stale = now_stale;
                                // Re-read everything so states that were overridden come back.
                                need_full = true;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!("freshness check failed: {e}"),
                        }
                    }
                    _ = tokio::time::sleep(retry), if failing => {}
                    ev = events.recv() => match ev {
                        Some(ev) => self.note(ev, &mut need_full, &mut pending),
                        None => break,
                    },
                }
            }
            while let Ok(ev) = events.try_recv() {
                self.note(ev, &mut need_full, &mut pending);
            }
            if pending
                .iter()
                .filter(|c| c.table == ChangedTable::Clients)
                .count()
                > MAX_TARGETED_CLIENTS
            {
                need_full = true;
            }
            if need_full {
                let history = current.as_ref().map(|c| c.history.clone());
                match load_all(&self.pool, history, self.max_score_age).await {
                    Ok(inputs) => {
                        let inputs = apply_staleness(inputs, &stale);
                        if current.is_none() || !self.status.db_up.load(Ordering::Relaxed) {
                            tracing::info!(
                                appliances = inputs.appliances.len(),
                                clients = inputs.clients.len(),
                                advisories = inputs.advisories.len(),
                                "snapshot loaded from the database"
                            );
                        }
                        self.mark_ok();
                        self.status.full_loads.fetch_add(1, Ordering::Relaxed);
                        let (inputs, changed) = match &current {
                            Some(cur) => reuse_unchanged(cur, inputs),
                            None => (inputs, true),
                        };
                        // A reconcile that finds nothing new publishes nothing: the served
                        // snapshot is confirmed (see `last_sync_ms`), not rebuilt.
                        if changed {
                            self.inputs.send_replace(Some(Arc::new(inputs.clone())));
                        }
                        current = Some(inputs);
                        need_full = false;
                        pending.clear();
                        failing = false;
                        retry = Duration::from_millis(500);
                    }
                    Err(e) => {
                        self.mark_failed("loading the snapshot", &e);
                        failing = true;
                        // At most a second between attempts: serving resumes within a second
                        // of the database's return.
                        retry = (retry * 2).min(self.reconcile_interval.min(MAX_RETRY));
                    }
                }
            } else if !pending.is_empty() {
                let Some(cur) = &current else {
                    need_full = true;
                    continue;
                };
                let started = std::time::Instant::now();
                match load_targeted(&self.pool, cur, &pending, self.max_score_age).await {
                    Ok(inputs) => {
                        let inputs = apply_staleness(inputs, &stale);
                        tracing::debug!(
                            changes = pending.len(),
                            took_us = started.elapsed().as_micros() as u64,
                            "targeted reload"
                        );
                        self.mark_ok();
                        self.status.targeted_loads.fetch_add(1, Ordering::Relaxed);
                        self.inputs.send_replace(Some(Arc::new(inputs.clone())));
                        current = Some(inputs);
                        pending.clear();
                    }
                    Err(e) => {
                        self.mark_failed("reloading changed rows", &e);
                        failing = true;
                        need_full = true;
                        pending.clear();
                    }
                }
            }
        }
        listener.abort();
    }

    fn note(&self, ev: Event, need_full: &mut bool, pending: &mut Vec<Change>) {
        match ev {
            Event::Connected => {
                self.status
                    .listener_connects
                    .fetch_add(1, Ordering::Relaxed);
                *need_full = true;
            }
            Event::Change(c) => {
                tracing::debug!(table = ?c.table, key = %c.key, "change notified");
                if !matches!(
                    c.table,
                    ChangedTable::SessionState | ChangedTable::SteeringDecisions
                ) {
                    pending.push(c);
                }
            }
            Event::Lost(e) => {
                tracing::debug!(error = %e, "change listener lost its connection");
            }
        }
    }
}
