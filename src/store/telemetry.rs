//! Batched telemetry ingestion: one statement per batch (UNNEST of column arrays), never one
//! per row. Rows already stored (same appliance and timestamp) are skipped, so an agent can
//! resend its buffer after a reconnect without duplicating anything.

use sqlx::PgPool;

use super::StoreError;
use crate::domain::{ApplianceHealth, PathProbe};

/// Inserts health rows; returns how many were new.
pub async fn insert_health(pool: &PgPool, rows: &[ApplianceHealth]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut region = Vec::with_capacity(n);
    let mut appliance = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut cpu = Vec::with_capacity(n);
    let mut mem = Vec::with_capacity(n);
    let mut bw_in = Vec::with_capacity(n);
    let mut bw_out = Vec::with_capacity(n);
    let mut bw_util = Vec::with_capacity(n);
    let mut sessions = Vec::with_capacity(n);
    let mut hs_fail = Vec::with_capacity(n);
    let mut dropped = Vec::with_capacity(n);
    for r in rows {
        region.push(r.region.as_str());
        appliance.push(r.appliance.as_str());
        ts.push(r.ts);
        cpu.push(r.cpu.get());
        mem.push(r.mem.get());
        bw_in.push(saturating_i64(r.bw_in_bps));
        bw_out.push(saturating_i64(r.bw_out_bps));
        bw_util.push(r.bw_util.get());
        sessions.push(i32::try_from(r.sessions).unwrap_or(i32::MAX));
        hs_fail.push(i32::try_from(r.handshake_failures).unwrap_or(i32::MAX));
        dropped.push(saturating_i64(r.packets_dropped));
    }
    let done = sqlx::query!(
        "INSERT INTO appliance_health
            (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions,
             handshake_failures, packets_dropped)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[],
                              $6::int8[], $7::int8[], $8::float8[], $9::int4[], $10::int4[], $11::int8[])
         ON CONFLICT DO NOTHING",
        &region as &[&str],
        &appliance as &[&str],
        &ts,
        &cpu,
        &mem,
        &bw_in,
        &bw_out,
        &bw_util,
        &sessions,
        &hs_fail,
        &dropped,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts path-probe summaries; returns how many were new.
pub async fn insert_probes(pool: &PgPool, rows: &[PathProbe]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut region = Vec::with_capacity(n);
    let mut src = Vec::with_capacity(n);
    let mut dst_kind = Vec::with_capacity(n);
    let mut dst = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut rtt = Vec::with_capacity(n);
    let mut jitter = Vec::with_capacity(n);
    let mut loss = Vec::with_capacity(n);
    let mut samples = Vec::with_capacity(n);
    for r in rows {
        region.push(r.region.as_str());
        src.push(r.src.as_str());
        dst_kind.push(r.dst.kind());
        dst.push(r.dst.id());
        ts.push(r.ts);
        rtt.push(r.rtt_ms);
        jitter.push(r.jitter_ms);
        loss.push(r.loss.get());
        samples.push(i32::try_from(r.samples).unwrap_or(i32::MAX));
    }
    let done = sqlx::query!(
        "INSERT INTO path_probes (region, src, dst_kind, dst, ts, rtt_ms, jitter_ms, loss, samples)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                              $6::float8[], $7::float8[], $8::float8[], $9::int4[])
         ON CONFLICT DO NOTHING",
        &region as &[&str],
        &src as &[&str],
        &dst_kind as &[&str],
        &dst as &[&str],
        &ts,
        &rtt as &[Option<f64>],
        &jitter as &[Option<f64>],
        &loss,
        &samples,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
