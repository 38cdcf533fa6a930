//! `/api/v1/risk`: current scores with confidence intervals for appliances and paths, the
//! path scores steering counts (highest first), and one appliance's history over a time
//! range, downsampled in the database.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::{ApiError, ApiResult};
use super::super::extract::{ApiPath, ApiQuery};
use super::super::{ApiDb, AppState, LiveView};
use super::appliances::Points;
use super::{TimeRange, page_limit};
use crate::domain::{ApplianceId, ClientId};
use crate::inventory::appliance;
use crate::store::series::{self, Buckets, CurrentScore, PathFilter, PathRisk, RiskPoint};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(current))
        .routes(routes!(paths))
        .routes(routes!(history))
}

/// Most path scores one request lists.
const MAX_PATHS: u32 = 1000;

/// Current scores and the threshold they are compared with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskNow {
    /// Steering threshold: above it (combined with advisories) a primary's clients move.
    pub threshold: f64,
    /// Version of the model scoring in this server; absent with risk scoring off.
    pub model_version: Option<String>,
    /// Stored scores, one per region that scores the subject: appliances, then paths
    /// (`src>dst`). Rows that are not `fresh` no longer count for steering.
    pub scores: Vec<CurrentScore>,
}

/// Which scores `/risk` lists.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KindQuery {
    /// `appliance` or `path`; both when absent.
    #[serde(default)]
    #[param(pattern = "^(appliance|path)$")]
    pub kind: Option<String>,
}

/// Current risk scores of appliances and paths, with confidence intervals.
#[utoipa::path(get, path = "/risk", tag = "risk", operation_id = "risk_current", params(KindQuery),
    responses((status = 200, description = "Current scores", body = RiskNow)))]
async fn current(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
    ApiQuery(q): ApiQuery<KindQuery>,
) -> ApiResult<Json<RiskNow>> {
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k @ ("appliance" | "path")) => Some(k),
        Some(other) => {
            return Err(ApiError::invalid(
                "kind",
                format!("kind {other:?} is neither \"appliance\" nor \"path\""),
            ));
        }
    };
    let filter = series::ScoreFilter {
        kind,
        max_age: live.max_score_age,
    };
    Ok(Json(RiskNow {
        threshold: live.threshold(),
        model_version: live.model.as_ref().map(|m| m.current().version.clone()),
        scores: series::current_scores(&db.0, filter).await?,
    }))
}

/// Path scores as steering counts them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PathRiskList {
    /// Steering threshold: a client moves when its primary's risk combined with its path's
    /// rises above it.
    pub threshold: f64,
    /// Highest score first; fresh before stale.
    pub paths: Vec<PathRisk>,
}

/// Which path scores to list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Only paths with this end: an appliance id or a client id.
    #[serde(default)]
    pub end: Option<String>,
    /// At most this many (1..=1000, default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Also list paths whose score no scorer confirms any more (steering ignores them).
    #[serde(default)]
    pub include_stale: Option<bool>,
}

/// Path risk: every measured path's score in force (the highest fresh one over the regions
/// that score it), highest first. A client's path is `appliance>client` (its handshakes and
/// the client helper's probes); between appliances, `appliance>appliance`.
#[utoipa::path(get, path = "/risk/paths", tag = "risk", operation_id = "risk_paths", params(PathQuery),
    responses((status = 200, description = "Path scores", body = PathRiskList)))]
async fn paths(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<PathRiskList>> {
    let end = match q.end {
        Some(e) if ApplianceId::new(e.as_str()).is_err() && ClientId::new(e.as_str()).is_err() => {
            return Err(ApiError::invalid(
                "end",
                format!("end {e:?} is neither an appliance id nor a client id"),
            ));
        }
        e => e,
    };
    let filter = PathFilter {
        end,
        include_stale: q.include_stale.unwrap_or(false),
        limit: page_limit(q.limit, 100, MAX_PATHS)? as usize,
    };
    Ok(Json(PathRiskList {
        threshold: live.threshold(),
        paths: series::path_risks(&db.0, live.max_score_age, &filter).await?,
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
