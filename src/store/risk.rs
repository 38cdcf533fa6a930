//! Postgres side of the risk engine: telemetry import/export in the CSV model, the live
//! scorer's reads, and `risk_scores` writes.
//!
//! Mapping between the CSV format and the tables:
//! - `cpu, mem, bw_util, sessions, handshake_failures` <-> `appliance_health` (per-second
//!   averages; handshake failures summed). The table's other columns (`bw_in_bps`,
//!   `bw_out_bps`, `packets_dropped`) are not in the CSV and import as 0. A CSV row with any
//!   health field missing imports no health row (the table has no NULLs), so its present
//!   health fields are lost.
//! - `rtt_ms, jitter_ms, loss` <-> `path_probes` whose destination is the appliance
//!   (`dst_kind = 'appliance'`, `dst = <id>`), averaged over sources per second. Import writes
//!   them as the appliance's own probe (`src = dst = <id>`); rows without `loss` import none.
//! - `down` <-> `failure_events`: a failure covers `[started_at, ended_at)`; an open event runs
//!   to the end of the export. Kinds and precursor flags travel with the events.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::domain::{ApplianceHealth, ApplianceId, Fraction, PathProbe, ProbeTarget, RegionId};
use crate::risk::data::failures::{FailureLabel, FailureLabels};
use crate::risk::data::records::network_seconds;
pub use crate::risk::data::records::{
    FailureEvent, HealthSecond, ProbeSecond, RttMinute, ScoreRow,
};
use crate::risk::data::series::Series;
use crate::risk::data::telemetry::{ApplianceInfo, Metric, N_METRICS, Row, Telemetry};

fn at(sec: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(sec, 0).single().unwrap_or_default()
}

/// What a live round reads: every second of `[recent, to)` by timestamp (rows still arriving
/// for the last few seconds), and each older second of `[from, recent)` that got a row
/// received at `since` or later (an agent replaying its buffer), whole, so a late row joins its
/// second's average rather than replacing it. Reading every second of the window by arrival
/// alone took 10 to 20 times longer (see the README).
#[derive(Debug, Clone, Copy)]
pub struct LiveRead {
    /// Rows received from this time on count as late.
    pub since: DateTime<Utc>,
    /// Start of the window.
    pub from: DateTime<Utc>,
    /// Start of the seconds read by timestamp (rounded down to a whole second, so that no
    /// second is read by both ways).
    pub recent: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
}

impl LiveRead {
    /// Every second of `[from, to)` by timestamp, from the whole second `from` falls in.
    pub fn all(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self {
            since: DateTime::UNIX_EPOCH,
            from,
            recent: from,
            to,
        }
    }

    fn recent(&self) -> DateTime<Utc> {
        at(self.recent.timestamp())
    }
}

/// What a live round read: its rows, and when the newest of them reached the database.
#[derive(Debug, Clone)]
pub struct Received<T> {
    /// One per second read, as the range functions give them.
    pub rows: Vec<T>,
    /// Largest `received_at` among the rows read (`None` when none).
    pub newest: Option<DateTime<Utc>>,
}

/// Health and probes of the seconds `read` names (see [`health_seconds_received`] and
/// [`probe_seconds_received`]), in one transaction without parallel workers: the planner cannot
/// tell how few rows arrived late and started workers for none, which doubled the read.
pub async fn live_seconds(
    pool: &PgPool,
    read: LiveRead,
) -> Result<(Received<HealthSecond>, Received<ProbeSecond>), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *tx)
        .await?;
    let health = health_seconds_received(&mut tx, read).await?;
    let probes = probe_seconds_received(&mut tx, read).await?;
    tx.commit().await?;
    Ok((health, probes))
}

/// Per-second health of the seconds `read` names (per appliance).
pub async fn health_seconds_received(
    db: &mut sqlx::PgConnection,
    read: LiveRead,
) -> Result<Received<HealthSecond>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH late AS (
               SELECT DISTINCT region, appliance_id, date_trunc('second', ts) AS s
               FROM appliance_health
               WHERE received_at >= $1 AND ts >= $2 AND ts < $3)
           SELECT region AS "region!", appliance_id AS "appliance_id!",
                  floor(extract(epoch FROM ts))::bigint AS "sec!",
                  avg(cpu) AS "cpu!", avg(mem) AS "mem!", avg(bw_util) AS "bw_util!",
                  avg(sessions)::float8 AS "sessions!",
                  sum(handshake_failures)::float8 AS "hsf!",
                  max(received_at) AS "received!"
           FROM (SELECT h.* FROM appliance_health h WHERE h.ts >= $3 AND h.ts < $4
                 UNION ALL
                 SELECT h.* FROM late k, LATERAL (
                     SELECT * FROM appliance_health h
                     WHERE h.region = k.region AND h.appliance_id = k.appliance_id
                       AND h.ts >= k.s AND h.ts < k.s + interval '1 second'
                     OFFSET 0) h) r
           GROUP BY 1, 2, 3"#,
        read.since,
        read.from,
        read.recent(),
        read.to
    )
    .fetch_all(&mut *db)
    .await?;
    let newest = rows.iter().map(|r| r.received).max();
    let rows = rows
        .into_iter()
        .map(|r| HealthSecond {
            region: r.region,
            appliance: r.appliance_id,
            sec: r.sec,
            values: [r.cpu, r.mem, r.bw_util, r.sessions.round(), r.hsf],
        })
        .collect();
    Ok(Received { rows, newest })
}

/// Per-second path probes of the seconds `read` names, per destination: a late probe brings
/// back every probe to its destination in that second, whoever measured, since an appliance's
/// network metrics average them.
pub async fn probe_seconds_received(
    db: &mut sqlx::PgConnection,
    read: LiveRead,
) -> Result<Received<ProbeSecond>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH late AS (
               SELECT DISTINCT dst_kind, dst, date_trunc('second', ts) AS s
               FROM path_probes
               WHERE received_at >= $1 AND ts >= $2 AND ts < $3)
           SELECT region AS "region!", src AS "src!", dst_kind AS "dst_kind!", dst AS "dst!",
                  floor(extract(epoch FROM ts))::bigint AS "sec!",
                  avg(rtt_ms) AS rtt_ms, avg(jitter_ms) AS jitter_ms, avg(loss) AS "loss!",
                  max(received_at) AS "received!"
           FROM (SELECT p.* FROM path_probes p WHERE p.ts >= $3 AND p.ts < $4
                 UNION ALL
                 SELECT p.* FROM late k, LATERAL (
                     SELECT * FROM path_probes p
                     WHERE p.dst_kind = k.dst_kind AND p.dst = k.dst
                       AND p.ts >= k.s AND p.ts < k.s + interval '1 second'
                     OFFSET 0) p) r
           GROUP BY 1, 2, 3, 4, 5"#,
        read.since,
        read.from,
        read.recent(),
        read.to
    )
    .fetch_all(&mut *db)
    .await?;
    let newest = rows.iter().map(|r| r.received).max();
    let rows = rows
        .into_iter()
        .map(|r| ProbeSecond {
            region: r.region,
            src: r.src,
            dst_kind: r.dst_kind,
            dst: r.dst,
            sec: r.sec,
            rtt_ms: r.rtt_ms.unwrap_or(f64::NAN),
            jitter_ms: r.jitter_ms.unwrap_or(f64::NAN),
            loss: r.loss,
        })
        .collect();
    Ok(Received { rows, newest })
}

/// Per-minute rtt sums in `[from, to)`: of every appliance (probes to it) and every path
/// between different ends. Sums raw probes, where live scoring first averages sources per
/// second: close enough for a baseline that only warms the first hour after a start.
pub async fn rtt_minutes(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<RttMinute>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT region AS "region!", dst AS "subject!", false AS "path!",
                  floor(extract(epoch FROM ts) / 60)::bigint AS "minute!",
                  sum(rtt_ms) AS "sum!", count(rtt_ms) AS "count!"
           FROM path_probes
           WHERE dst_kind = 'appliance' AND rtt_ms IS NOT NULL AND ts >= $1 AND ts < $2
           GROUP BY 1, 2, 4
           UNION ALL
           SELECT region, src || '>' || dst, true,
                  floor(extract(epoch FROM ts) / 60)::bigint,
                  sum(rtt_ms), count(rtt_ms)
           FROM path_probes
           WHERE src <> dst AND rtt_ms IS NOT NULL AND ts >= $1 AND ts < $2
           GROUP BY 1, 2, 4"#,
        from,
        to
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RttMinute {
            region: r.region,
            path: r.path,
            subject: r.subject,
            minute: r.minute,
            sum: r.sum,
            count: u32::try_from(r.count).unwrap_or(u32::MAX),
        })
        .collect())
}

/// Failure events that overlap `[from, to)` (open events included).
pub async fn failure_events(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<FailureEvent>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT region, appliance_id,
                  floor(extract(epoch FROM started_at))::bigint AS "started!",
                  ceil(extract(epoch FROM ended_at))::bigint AS ended,
                  kind, has_precursor
           FROM failure_events
           WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1)
           ORDER BY started_at"#,
        from,
        to
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| FailureEvent {
            region: r.region,
            appliance: r.appliance_id,
            started: r.started,
            ended: r.ended,
            kind: r.kind,
            has_precursor: r.has_precursor,
        })
        .collect())
}

fn bad_row(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidRow {
        table,
        message: e.to_string(),
    }
}

/// Reads `[from, to)` as telemetry in the CSV model, with failure labels.
pub async fn export(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Telemetry, FailureLabels), StoreError> {
    // Days of rows: parallel workers help here.
    let mut db = pool.acquire().await?;
    let health = health_seconds_received(&mut db, LiveRead::all(from, to))
        .await?
        .rows;
    let probes = probe_seconds_received(&mut db, LiveRead::all(from, to))
        .await?
        .rows;
    drop(db);
    let events = failure_events(pool, from, to).await?;
    let mut t = Telemetry::default();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut intern =
        |t: &mut Telemetry, id: &str, region: &str, table| -> Result<u32, StoreError> {
            if let Some(&i) = index.get(id) {
                return Ok(i);
            }
            let info = ApplianceInfo {
                id: ApplianceId::new(id).map_err(|e| bad_row(table, e))?,
                region: RegionId::new(region).map_err(|e| bad_row(table, e))?,
            };
            let i = t.appliances.len() as u32;
            t.appliances.push(info);
            index.insert(id.to_owned(), i);
            Ok(i)
        };
    let mut rows: BTreeMap<(u32, i64), Row> = BTreeMap::new();
    let blank = |appliance, ts| Row {
        ts,
        appliance,
        values: [f64::NAN; N_METRICS],
        down: false,
    };
    for h in &health {
        let a = intern(&mut t, &h.appliance, &h.region, "appliance_health")?;
        let row = rows.entry((a, h.sec)).or_insert_with(|| blank(a, h.sec));
        row.values[..5].copy_from_slice(&h.values);
    }
    // Network columns: mean over every probe of the appliance in that second.
    for n in network_seconds(&probes) {
        let a = intern(&mut t, n.appliance, n.region, "path_probes")?;
        let row = rows.entry((a, n.sec)).or_insert_with(|| blank(a, n.sec));
        row.values[Metric::RttMs as usize] = n.rtt_ms;
        row.values[Metric::JitterMs as usize] = n.jitter_ms;
        row.values[Metric::Loss as usize] = n.loss;
    }
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
    let mut labels = FailureLabels::new();
    for ev in &events {
        let a = intern(&mut t, &ev.appliance, &ev.region, "failure_events")?;
        let end = ev.ended.unwrap_or(to_s).min(to_s);
        for sec in ev.started.max(from_s)..end {
            rows.entry((a, sec)).or_insert_with(|| blank(a, sec)).down = true;
        }
        let id = t.appliances[a as usize].id.clone();
        labels.insert(
            (id.clone(), ev.started),
            FailureLabel {
                appliance: id,
                ts: ev.started,
                kind: ev.kind.clone(),
                precursor: ev.has_precursor,
                precursor_s: None,
            },
        );
        // The second before a failure must exist (up) for the failure to be observed.
        if ev.started > from_s {
            rows.entry((a, ev.started - 1))
                .or_insert_with(|| blank(a, ev.started - 1));
        }
    }
    t.rows = rows.into_values().collect();
    Ok((t, labels))
}

/// What an import stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    /// New `appliance_health` rows.
    pub health: u64,
    /// New `path_probes` rows.
    pub probes: u64,
    /// New `failure_events` rows.
    pub failures: u64,
}

const BATCH: usize = 10_000;

/// Stores telemetry (and the failures found in `series`, built from it) in the tables.
/// Rows already there are kept (same key: skipped), so an import can be repeated.
/// `progress` is called with the number of telemetry rows handled so far after each batch (for
/// a progress bar).
pub async fn import(
    pool: &PgPool,
    t: &Telemetry,
    series: &[Series],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportCounts, StoreError> {
    let mut counts = ImportCounts::default();
    let mut health = Vec::with_capacity(BATCH);
    let mut probes = Vec::with_capacity(BATCH);
    for (done, r) in t.rows.iter().enumerate() {
        if done.is_multiple_of(BATCH) {
            progress(done as u64);
        }
        let info = &t.appliances[r.appliance as usize];
        let ts = at(r.ts);
        let v = &r.values;
        if !r.down && v[..5].iter().all(|x| !x.is_nan()) {
            health.push(ApplianceHealth {
                region: info.region.clone(),
                appliance: info.id.clone(),
                ts,
                cpu: Fraction::saturating(v[0]),
                mem: Fraction::saturating(v[1]),
                bw_in_bps: 0,
                bw_out_bps: 0,
                bw_util: Fraction::saturating(v[2]),
                sessions: v[3] as u32,
                handshake_failures: v[4] as u32,
                packets_dropped: 0,
            });
        }
        if let Some(loss) = r.get(Metric::Loss) {
            probes.push(PathProbe {
                region: info.region.clone(),
                src: info.id.clone(),
                dst: ProbeTarget::Appliance(info.id.clone()),
                ts,
                rtt_ms: r.get(Metric::RttMs),
                jitter_ms: r.get(Metric::JitterMs),
                loss: Fraction::saturating(loss),
                samples: 1,
            });
        }
        if health.len() >= BATCH {
            counts.health += super::telemetry::insert_health(pool, &health).await?;
            health.clear();
        }
        if probes.len() >= BATCH {
            counts.probes += super::telemetry::insert_probes(pool, &probes).await?;
            probes.clear();
        }
    }
    counts.health += super::telemetry::insert_health(pool, &health).await?;
    counts.probes += super::telemetry::insert_probes(pool, &probes).await?;
    progress(t.rows.len() as u64);
    for s in series {
        let info = &t.appliances[s.appliance as usize];
        for f in &s.failures {
            let ended = (f.end < s.len()).then(|| at(s.ts(f.end)));
            let done = sqlx::query!(
                "INSERT INTO failure_events (region, appliance_id, started_at, ended_at, kind, has_precursor, note)
                 VALUES ($1, $2, $3, $4, $5, $6, 'imported')
                 ON CONFLICT DO NOTHING",
                info.region.as_str(),
                info.id.as_str(),
                at(s.ts(f.start)),
                ended,
                f.kind.as_deref().unwrap_or("unknown"),
                f.precursor,
            )
            .execute(pool)
            .await?;
            counts.failures += done.rows_affected();
        }
    }
    Ok(counts)
}

/// Upserts scores in one statement; every changed row notifies through the table's trigger.
/// Rows marked `confirmed` also confirm the score as of `computed_at` (see [`confirm_scores`]).
pub async fn write_scores(
    pool: &PgPool,
    rows: &[ScoreRow],
    model_version: &str,
    computed_at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let region: Vec<&str> = rows.iter().map(|r| r.region.as_str()).collect();
    let kind: Vec<&str> = rows.iter().map(|r| r.subject_kind).collect();
    let subject: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
    let score: Vec<f64> = rows.iter().map(|r| r.score.value().get()).collect();
    let low: Vec<f64> = rows.iter().map(|r| r.score.low().get()).collect();
    let high: Vec<f64> = rows.iter().map(|r| r.score.high().get()).collect();
    let confirmed: Vec<bool> = rows.iter().map(|r| r.confirmed).collect();
    // An unconfirmed row keeps the stored confirmation (GREATEST with the epoch); a new one
    // starts as never confirmed, i.e. stale.
    let done = sqlx::query!(
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at, confirmed_at)
         SELECT r, k, s, v, l, h, $7, $8, CASE WHEN c THEN $8 ELSE to_timestamp(0) END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::float8[], $9::bool[])
              AS u(r, k, s, v, l, h, c)
         ON CONFLICT (region, subject_kind, subject) DO UPDATE
         SET score = EXCLUDED.score, score_low = EXCLUDED.score_low,
             score_high = EXCLUDED.score_high, model_version = EXCLUDED.model_version,
             computed_at = EXCLUDED.computed_at,
             confirmed_at = GREATEST(risk_scores.confirmed_at, EXCLUDED.confirmed_at)",
        &region as &[&str],
        &kind as &[&str],
        &subject as &[&str],
        &score,
        &low,
        &high,
        model_version,
        computed_at,
        &confirmed,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Confirms stored scores that did not move (they stay as computed): sets `confirmed_at` to
/// `at` for the given subjects of `region` whose confirmation is older than `before`, so each
/// row is touched at most once per confirmation period. No notification and no history row
/// follow (see migration `20261203300000`): steering checks ages itself.
pub async fn confirm_scores(
    pool: &PgPool,
    region: &str,
    subjects: &[(&'static str, String)],
    at: DateTime<Utc>,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    if subjects.is_empty() {
        return Ok(0);
    }
    let kind: Vec<&str> = subjects.iter().map(|s| s.0).collect();
    let subject: Vec<&str> = subjects.iter().map(|s| s.1.as_str()).collect();
    let done = sqlx::query!(
        "UPDATE risk_scores r SET confirmed_at = $4
         FROM UNNEST($2::text[], $3::text[]) AS u(k, s)
         WHERE r.region = $1 AND r.subject_kind = u.k AND r.subject = u.s
           AND r.confirmed_at < $5 AND r.confirmed_at < $4",
        region,
        &kind as &[&str],
        &subject as &[&str],
        at,
        before,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Stored scores of one region: (subject_kind, subject) -> (score, model version).
pub async fn stored_scores(
    pool: &PgPool,
    region: &str,
) -> Result<HashMap<(String, String), (f64, String)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT subject_kind, subject, score, model_version FROM risk_scores WHERE region = $1",
        region
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.subject_kind, r.subject), (r.score, r.model_version)))
        .collect())
}
