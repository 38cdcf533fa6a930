//! `/api/v1/replication`: replication between regions as this server sees it: its database's
//! region and the lag of every other region's changes arriving here, now and over the last
//! minutes (from the heartbeat task's in-memory samples, one a second; see
//! [`crate::store::replication::heartbeat::LagBoard`]).
//!
//! This is one region's view. The state of every subscription between all regions, with
//! repairs, is `shadowsteer db replication status`, which connects to every region's database.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::{ApiDb, AppState, ServerStatus};
use crate::store::replication::heartbeat;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

/// The lag of one source region's changes here.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegionLag {
    /// The publishing region.
    pub from: String,
    /// Lag in milliseconds, from its heartbeats (how late its last beat arrived, or how
    /// overdue the next one is).
    pub lag_ms: i64,
    /// Whether the lag is past `replication.lag_warning`.
    pub behind: bool,
}

/// Lag per source region at one moment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LagSample {
    /// When it was read (this server's clock).
    pub at: DateTime<Utc>,
    /// Lag in milliseconds per source region.
    pub lags: BTreeMap<String, i64>,
}

/// Replication as this server's database sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicationStatus {
    /// This database's region; absent before `db replication setup`.
    pub local_region: Option<String>,
    /// Lag past which a source region counts as behind (`replication.lag_warning`), ms.
    pub lag_warning_ms: u64,
    /// Every other region whose heartbeats this database holds, with its current lag
    /// (empty: replication not set up, or nothing received yet).
    pub regions: Vec<RegionLag>,
    /// Samples of the last minutes, oldest first, one about every second (kept in this
    /// server's memory only: empty after a restart).
    pub history: Vec<LagSample>,
}

/// This region and the lag of every other region's changes arriving here, now and over the
/// last ten minutes.
#[utoipa::path(get, path = "/replication", tag = "replication", operation_id = "replication_status",
    responses((status = 200, description = "Replication lag per source region", body = ReplicationStatus)))]
async fn status(
    State(db): State<ApiDb>,
    State(server): State<Arc<ServerStatus>>,
) -> ApiResult<Json<ReplicationStatus>> {
    let local_region = heartbeat::local_region(&db.0).await?;
    let warn_ms = u64::try_from(server.lag_warning.as_millis()).unwrap_or(u64::MAX);
    let regions = server
        .replication
        .read()
        .into_iter()
        .map(|(from, lag_ms)| RegionLag {
            behind: u64::try_from(lag_ms).unwrap_or(0) > warn_ms,
            from,
            lag_ms,
        })
        .collect();
    let history = server
        .replication
        .history()
        .into_iter()
        .filter_map(|s| {
            Some(LagSample {
                at: DateTime::from_timestamp_millis(s.at_ms)?,
                lags: s.lags,
            })
        })
        .collect();
    Ok(Json(ReplicationStatus {
        local_region,
        lag_warning_ms: warn_ms,
        regions,
        history,
    }))
}
