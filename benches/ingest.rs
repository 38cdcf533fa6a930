//! Telemetry ingestion benchmark: health rows per second into a local cluster.
//!
//! Run: `cargo bench --bench ingest` (optionally `-- ROWS BATCH`). Starts a durable local cluster
//! (fsync on, as `serve`'s embedded default) in a temporary directory, then inserts ROWS health
//! rows for 1,000 appliances with `store::telemetry::insert_health` in batches of BATCH, with 1, 2
//! and 4 concurrent writers, and prints rows/s for each.

use std::time::Instant;

use chrono::{TimeDelta, Utc};
use shadowsteer::domain::{ApplianceHealth, Fraction};
use shadowsteer::localpg::{Durability, temp_cluster_dir};
use shadowsteer::store::{self, Database};

fn rows(writer: usize, count: usize) -> Vec<ApplianceHealth> {
    let base = Utc::now() - TimeDelta::days(1);
    (0..count)
        .map(|i| ApplianceHealth {
            region: "eu".parse().expect("literal"),
            appliance: format!("a-{}", i % 1000).parse().expect("literal"),
            // Distinct (appliance, ts) per writer and row.
            ts: base + TimeDelta::milliseconds((writer * count + i) as i64),
            cpu: Fraction::saturating((i % 100) as f64 / 100.0),
            mem: Fraction::saturating(0.5),
            bw_in_bps: 1_000_000 + i as u64,
            bw_out_bps: 2_000_000,
            bw_util: Fraction::saturating(0.3),
            sessions: (i % 500) as u32,
            handshake_failures: 0,
            packets_dropped: (i % 7) as u64,
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and then a small run
    // only checks that the benchmark works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let default_total = if smoke { 4_000 } else { 400_000 };
    let total: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default_total);
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000);

    let dir = temp_cluster_dir("shadowsteer-bench-ingest")?;
    let db = Database::open_embedded(&dir, Durability::Durable, 8).await?;
    store::migrate(&db.pool).await?;
    println!(
        "ingest benchmark{}: {total} health rows per run, batches of {batch}, durable local cluster",
        if smoke {
            " (smoke run; `cargo bench --bench ingest` measures)"
        } else {
            ""
        }
    );
    for writers in [1usize, 2, 4] {
        sqlx::query("TRUNCATE appliance_health")
            .execute(&db.pool)
            .await?;
        let per_writer = total / writers;
        let data: Vec<Vec<ApplianceHealth>> = (0..writers).map(|w| rows(w, per_writer)).collect();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for chunk in data {
            let pool = db.pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                for b in chunk.chunks(batch) {
                    n += store::telemetry::insert_health(&pool, b).await?;
                }
                Ok::<u64, store::StoreError>(n)
            }));
        }
        let mut inserted = 0;
        for t in tasks {
            inserted += t.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "writers={writers}: {inserted} rows in {secs:.2} s = {:.0} rows/s",
            inserted as f64 / secs
        );
    }
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
