//! The live scorer's lease: one `serve` per region scores, the others stand by.
//!
//! The database's clock decides expiry, so servers whose clocks differ still agree on it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// Takes or renews `region`'s lease for `holder` for `ttl`: succeeds when `holder` holds it
/// already or the lease has expired (or never existed). Returns whether `holder` holds it now.
pub async fn acquire(
    pool: &PgPool,
    region: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<bool, StoreError> {
    let held = sqlx::query_scalar!(
        r#"INSERT INTO scorer_leases (region, holder, expires_at)
           VALUES ($1, $2, now() + make_interval(secs => $3))
           ON CONFLICT (region) DO UPDATE
              SET holder = EXCLUDED.holder,
                  expires_at = EXCLUDED.expires_at,
                  acquired_at = CASE WHEN scorer_leases.holder = EXCLUDED.holder
                                     THEN scorer_leases.acquired_at ELSE now() END
            WHERE scorer_leases.holder = EXCLUDED.holder OR scorer_leases.expires_at < now()
           RETURNING holder"#,
        region,
        holder,
        ttl.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(held.is_some())
}

/// Gives `region`'s lease up if `holder` holds it, so another server takes over at once.
pub async fn release(pool: &PgPool, region: &str, holder: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM scorer_leases WHERE region = $1 AND holder = $2",
        region,
        holder
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Who holds `region`'s lease and until when (an expired lease included).
pub async fn holder(
    pool: &PgPool,
    region: &str,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    let row = sqlx::query!(
        "SELECT holder, expires_at FROM scorer_leases WHERE region = $1",
        region
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.holder, r.expires_at)))
}
