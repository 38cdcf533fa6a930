//! Cross-region replication numbers (issue 8), on three local clusters (tests/regions_support):
//!
//! 1. Lag: session-state updates at RATE per second spread evenly over the three regions
//!    (`UPDATE session_state ... WHERE client_id = ANY(batch)`, batches every 20 ms per
//!    region), each region also stamping its heartbeat every 50 ms; every subscriber samples
//!    the heartbeats it holds every 5 ms and records `applied_at - beat_at` of every beat (the
//!    time from the publisher's write to the subscriber's apply, behind the load). p50/p99.
//! 2. Catch-up: region `us` cut off (both directions) for PARTITION seconds under the same
//!    load; then the load stops and the partition heals; rows per second applied while every
//!    region drains its backlog (row changes missed by each subscriber / time until every
//!    subscriber's per-region version sums match the publishers').
//!
//! `cargo bench --bench replication [-- RATE SECONDS PARTITION]` (defaults 5000 30 60). Without
//! `--bench` (as `cargo test --all-targets` runs it) a short smoke run checks it works.

#[path = "../tests/regions_support/mod.rs"]
mod regions_support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use regions_support::Regions;

const IDS: [&str; 3] = ["eu", "us", "ap"];
/// Session rows per region.
const SESSIONS: usize = 3_000;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rate, seconds, partition) = if bench {
        (
            args.first().copied().unwrap_or(5_000),
            args.get(1).copied().unwrap_or(30),
            args.get(2).copied().unwrap_or(60),
        )
    } else {
        (300, 3, 3)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(rate, seconds, partition, bench));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(rate: u64, seconds: u64, partition: u64, bench: bool) {
    eprintln!(
        "replication bench: {rate} session updates/s over 3 regions, {seconds} s; partition {partition} s{}",
        if bench {
            ""
        } else {
            " (smoke run; `cargo bench --bench replication` measures)"
        }
    );
    let regions = Regions::start(&IDS).await;
    regions.setup(&[]);
    regions.wait_streaming(Duration::from_secs(120)).await;
    seed(&regions).await;

    // 1. Lag under load.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let loads = start_load(&regions, rate, stop.clone(), written.clone());
    let beats = start_beats(&regions, stop.clone());
    let samplers: Vec<_> = regions
        .regions
        .iter()
        .map(|r| tokio::spawn(sample(r.pool.clone(), r.id.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let achieved = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    for t in loads.into_iter().chain(beats) {
        let _ = t.await;
    }
    let mut lags: Vec<f64> = Vec::new();
    for s in samplers {
        lags.extend(s.await.expect("sampler"));
    }
    lags.sort_by(f64::total_cmp);
    println!(
        "lag at {achieved:.0} updates/s (asked {rate}): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} heartbeats",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        lags.len()
    );

    // 2. Catch-up after a partition of us.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    regions.partition("us");
    let cut_at = Instant::now();
    let loads = start_load(&regions, rate, stop.clone(), written.clone());
    tokio::time::sleep(Duration::from_secs(partition)).await;
    stop.store(true, Ordering::Relaxed);
    for t in loads {
        let _ = t.await;
    }
    let cut_for = cut_at.elapsed();
    // What each subscriber has to apply: the row changes of every other region it missed.
    let truth = versions(&regions, None).await;
    let mut backlog: u64 = 0;
    for r in &regions.regions {
        let seen = versions(&regions, Some(&r.id)).await;
        for (region, v) in &truth {
            if *region != r.id {
                backlog += (v - seen.get(region).copied().unwrap_or(0)).max(0) as u64;
            }
        }
    }
    regions.heal();
    let healed = Instant::now();
    for r in &regions.regions {
        loop {
            let seen = versions(&regions, Some(&r.id)).await;
            if truth.iter().all(|(k, v)| seen.get(k) == Some(v)) {
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(600),
                "no catch-up in 10 min"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let drained = healed.elapsed();
    println!(
        "catch-up after {:.0} s partition of us: {backlog} row changes missed in all, drained in {:.2} s with every region draining at once: {:.0} rows/s",
        cut_for.as_secs_f64(),
        drained.as_secs_f64(),
        backlog as f64 / drained.as_secs_f64()
    );
    assert!(
        regions.disabled().await.is_empty(),
        "a subscription was disabled"
    );
}

/// Clients (owned by eu, replicated) and one session row per client per region.
async fn seed(regions: &Regions) {
    for (i, id) in IDS.iter().enumerate() {
        let pool = &regions.get(id).pool;
        sqlx::query("INSERT INTO regions (region) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(pool)
            .await
            .expect("region");
        sqlx::query("INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key) VALUES ($1, $2, $3::inet, 51820, $4)")
            .bind(id)
            .bind(format!("{id}-1"))
            .bind(format!("192.0.2.{}", i + 1))
            .bind(shadowsteer::domain::SecretKey::generate().public_key().to_base64())
            .execute(pool)
            .await
            .expect("appliance");
    }
    let eu = &regions.get("eu").pool;
    sqlx::query(
        r"INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance)
          SELECT 'eu', 'c' || g, encode(sha256(g::text::bytea), 'base64'), ('10.0.0.0'::inet + g), g, 'eu-1', 'us-1'
          FROM generate_series(1, $1::int) g",
    )
    .bind(SESSIONS as i32)
    .execute(eu)
    .await
    .expect("clients");
    // The key column's check wants a canonical WireGuard key shape; sha256 in base64 is 44
    // characters ending in '=' like one.
    for r in &regions.regions {
        while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM clients")
            .fetch_one(&r.pool)
            .await
            .expect("count")
            < SESSIONS as i64
            || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM appliances")
                .fetch_one(&r.pool)
                .await
                .expect("count")
                < 3
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sqlx::query(
            r"INSERT INTO session_state (region, client_id, holder, role, peer_index)
              SELECT $1, 'c' || g, $1 || '-1', 'primary', g FROM generate_series(1, $2::int) g",
        )
        .bind(&r.id)
        .bind(SESSIONS as i32)
        .execute(&r.pool)
        .await
        .expect("sessions");
    }
    regions.wait_streaming(Duration::from_secs(60)).await;
}

/// One task per region updating its own session rows at `rate / 3` rows per second in
/// batches every 20 ms.
fn start_load(
    regions: &Regions,
    rate: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let per_batch = ((rate / 3) as f64 * 0.020).round().max(1.0) as usize;
    regions
        .regions
        .iter()
        .map(|r| {
            let pool = r.pool.clone();
            let id = r.id.clone();
            let stop = stop.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut next = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let batch: Vec<String> = (0..per_batch)
                        .map(|k| format!("c{}", (next + k) % SESSIONS + 1))
                        .collect();
                    next = (next + per_batch) % SESSIONS;
                    let done = sqlx::query(
                        r"UPDATE session_state SET version = version + 1, tx_packets = tx_packets + 1,
                                 rx_packets = rx_packets + 1, updated_at = now()
                          WHERE region = $1 AND client_id = ANY($2)",
                    )
                    .bind(&id)
                    .bind(&batch)
                    .execute(&pool)
                    .await;
                    if let Ok(d) = done {
                        written.fetch_add(d.rows_affected(), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// Each region stamps its heartbeat every 50 ms.
fn start_beats(regions: &Regions, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    regions
        .regions
        .iter()
        .map(|r| {
            let pool = r.pool.clone();
            let id = r.id.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = sqlx::query(
                        r"INSERT INTO replication_heartbeats (region, beat_at) VALUES ($1, clock_timestamp())
                          ON CONFLICT (region) DO UPDATE SET beat_at = EXCLUDED.beat_at",
                    )
                    .bind(&id)
                    .execute(&pool)
                    .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect()
}

/// Samples the other regions' heartbeats held by `own`'s database every 5 ms; returns the lag
/// (ms) of every distinct beat seen.
async fn sample(pool: sqlx::PgPool, own: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut seen = HashSet::new();
    let mut lags = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(String, f64, Option<f64>)> = sqlx::query_as(
            r"SELECT region, extract(epoch FROM beat_at)::float8 * 1000,
                     (extract(epoch FROM applied_at)::float8 * 1000)
              FROM replication_heartbeats WHERE region <> $1",
        )
        .bind(&own)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for (region, beat, applied) in rows {
            if let Some(applied) = applied
                && seen.insert((region, beat.to_bits()))
            {
                lags.push(applied - beat);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lags
}

/// Sum of session versions per owning region, as `at`'s database holds them (None: each
/// region's own database, the truth).
async fn versions(regions: &Regions, at: Option<&str>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in &regions.regions {
        let pool = &regions.get(at.unwrap_or(&r.id)).pool;
        let v: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(version), 0)::int8 FROM session_state WHERE region = $1",
        )
        .bind(&r.id)
        .fetch_one(pool)
        .await
        .expect("versions");
        out.insert(r.id.clone(), v);
    }
    out
}
