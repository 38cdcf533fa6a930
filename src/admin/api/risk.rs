//! `/api/v1/risk`: current scores with confidence intervals for appliances and paths, and one
//! appliance's history over a time range, downsampled in the database.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::extract::{ApiPath, ApiQuery};
use super::super::{ApiDb, AppState, LiveView};
use super::TimeRange;
use super::appliances::Points;
use crate::inventory::appliance;
use crate::store::series::{self, Buckets, CurrentScore, RiskPoint};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(current))
        .routes(routes!(history))
}

/// Current scores and the threshold they are compared with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskNow {
    /// Steering threshold: above it (combined with advisories) a primary's clients move.
    pub threshold: f64,
    /// Version of the model scoring in this server; absent with risk scoring off.
    pub model_version: Option<String>,
    /// Every stored score: appliances, then paths (`src>dst`).
    pub scores: Vec<CurrentScore>,
}

/// Current risk scores of appliances and paths, with confidence intervals.
#[utoipa::path(get, path = "/risk", tag = "risk", operation_id = "risk_current",
    responses((status = 200, description = "Current scores", body = RiskNow)))]
async fn current(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
) -> ApiResult<Json<RiskNow>> {
    Ok(Json(RiskNow {
        threshold: live.threshold(),
        model_version: live.model.as_ref().map(|m| m.current().version.clone()),
        scores: series::current_scores(&db.0).await?,
    }))
}

/// An appliance's risk history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskHistory {
    /// The appliance.
    pub appliance: String,
    /// Steering threshold in force.
    pub threshold: f64,
    /// Points, oldest first: the score in force at `from` (if any), then the highest score
    /// of each bucket with the widest interval. Scores are stored when they move, so a gap
    /// means "unchanged".
    pub points: Vec<RiskPoint>,
}

/// One appliance's risk over a time range, downsampled to at most `points` points.
#[utoipa::path(get, path = "/risk/appliances/{id}/history", tag = "risk", operation_id = "risk_history",
    params(("id" = String, Path, description = "Appliance id"), TimeRange, Points),
    responses((status = 200, description = "Risk history", body = RiskHistory)))]
async fn history(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(range): ApiQuery<TimeRange>,
    ApiQuery(points): ApiQuery<Points>,
) -> ApiResult<Json<RiskHistory>> {
    let id = appliance::parse_id("id", &id)?;
    let (from, to) = range.resolve(Utc::now())?;
    let points = points.get()?;
    appliance::get(&db.0, &id).await?;
    let range = Buckets { from, to, points };
    Ok(Json(RiskHistory {
        appliance: id.to_string(),
        threshold: live.threshold(),
        points: series::risk_history(&db.0, id.as_str(), range).await?,
    }))
}
