//! `/api/v1/appliances`: list, get, create, update (capacity, endpoint), drain/undrain,
//! delete (refused while clients use it), and an appliance's health over time.
//!
//! The list is served from the shared [`FleetCache`]; every write here (and a client's
//! create or delete, which changes the counts) holds a [`WriteGuard`], which invalidates it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::extract::{ApiJson, ApiPath, ApiQuery};
use super::super::{ApiDb, AppState, FleetCache, LiveView};
use super::TimeRange;
use crate::domain::{ApplianceId, ApplianceState};
use crate::inventory::{Appliance, ApplianceInput, ApplianceUpdate, appliance};
use crate::store::series::{self, Buckets, HealthPoint};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(drain))
        .routes(routes!(undrain))
        .routes(routes!(health))
}

/// The model's current score of an appliance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Risk {
    /// Probability of failure within the model's horizon.
    pub score: f64,
    /// Lower end of the confidence interval.
    pub low: f64,
    /// Upper end of the confidence interval.
    pub high: f64,
    /// When it was computed.
    pub computed_at: chrono::DateTime<Utc>,
    /// Confirmed by a scorer within `risk.max_score_age`. When not, steering counts the
    /// appliance's risk as unknown-high and this is the last score known.
    pub fresh: bool,
}

/// An appliance with its current risk and latest health.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApplianceView {
    /// The inventory fields (as `appliance list --json`).
    #[serde(flatten)]
    pub appliance: Appliance,
    /// The model's current score; absent when none is stored.
    pub risk: Option<Risk>,
    /// The latest health report (last 5 minutes); absent when none.
    pub health: Option<HealthPoint>,
}

async fn views(
    db: &ApiDb,
    max_score_age: std::time::Duration,
    list: Vec<Appliance>,
) -> ApiResult<Vec<ApplianceView>> {
    let now = Utc::now();
    let filter = series::ScoreFilter {
        kind: Some("appliance"),
        max_age: max_score_age,
    };
    let mut risk: HashMap<String, Risk> =
        series::in_force(series::current_scores(&db.0, filter).await?)
            .into_iter()
            .map(|s| {
                (
                    s.subject,
                    Risk {
                        score: s.score,
                        low: s.score_low,
                        high: s.score_high,
                        computed_at: s.computed_at,
                        fresh: s.fresh,
                    },
                )
            })
            .collect();
    let mut health: HashMap<String, HealthPoint> =
        series::latest_health(&db.0, now, chrono::Duration::minutes(5))
            .await?
            .into_iter()
            .collect();
    Ok(list
        .into_iter()
        .map(|a| ApplianceView {
            risk: risk.remove(a.id.as_str()),
            health: health.remove(a.id.as_str()),
            appliance: a,
        })
        .collect())
}

/// Reads the fleet view from the database (three queries; [`FleetCache`] shares the result).
async fn load_fleet(
    db: ApiDb,
    max_score_age: std::time::Duration,
) -> ApiResult<Vec<ApplianceView>> {
    let list = appliance::list(&db.0).await?;
    views(&db, max_score_age, list).await
}

/// Forgets the cached fleet view when dropped: held across a write, so the next read loads
/// whatever the write's outcome, even when the request is cancelled mid-write (a write whose
/// reply was lost may still have committed).
pub struct WriteGuard(Arc<FleetCache>);

impl WriteGuard {
    /// Guards a write that may change the fleet view.
    pub fn new(fleet: &Arc<FleetCache>) -> Self {
        Self(Arc::clone(fleet))
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.invalidate();
    }
}

fn parse_id(id: &str) -> ApiResult<ApplianceId> {
    Ok(appliance::parse_id("id", id)?)
}

/// Every appliance, ordered by region and id. Served from a copy shared by all requests
/// that is at most about a second old (changes made through this API show at once).
#[utoipa::path(get, path = "/appliances", tag = "appliances", operation_id = "appliances_list",
    responses((status = 200, description = "Every appliance", body = Vec<ApplianceView>)))]
async fn list(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
    State(fleet): State<Arc<FleetCache>>,
) -> ApiResult<Json<Arc<Vec<ApplianceView>>>> {
    let age = live.max_score_age;
    Ok(Json(fleet.get(move || load_fleet(db, age)).await?))
}

/// One appliance.
#[utoipa::path(get, path = "/appliances/{id}", tag = "appliances", operation_id = "appliances_get_one",
    params(("id" = String, Path, description = "Appliance id")),
    responses((status = 200, description = "The appliance", body = ApplianceView)))]
async fn get_one(
    State(db): State<ApiDb>,
    State(live): State<LiveView>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApplianceView>> {
    let one = appliance::get(&db.0, &parse_id(&id)?).await?;
    let mut v = views(&db, live.max_score_age, vec![one]).await?;
    v.pop()
        .map(Json)
        .ok_or_else(|| super::super::ApiError::not_found(format!("no appliance {id}")))
}

/// Registers an appliance (and its region, if new).
#[utoipa::path(post, path = "/appliances", tag = "appliances", operation_id = "appliances_create", request_body = ApplianceInput,
    responses((status = 201, description = "Created", body = Appliance)))]
async fn create(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiJson(input): ApiJson<ApplianceInput>,
) -> ApiResult<(StatusCode, Json<Appliance>)> {
    let new = input.parse()?;
    let _written = WriteGuard::new(&fleet);
    appliance::add(&db.0, &new).await?;
    Ok((
        StatusCode::CREATED,
        Json(appliance::get(&db.0, &new.id).await?),
    ))
}

/// Changes an appliance's endpoint and/or capacity.
#[utoipa::path(patch, path = "/appliances/{id}", tag = "appliances", operation_id = "appliances_update", request_body = ApplianceUpdate,
    params(("id" = String, Path, description = "Appliance id")),
    responses((status = 200, description = "Changed", body = Appliance)))]
async fn update(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<ApplianceUpdate>,
) -> ApiResult<Json<Appliance>> {
    let id = parse_id(&id)?;
    let change = change.parse()?;
    let _written = WriteGuard::new(&fleet);
    Ok(Json(appliance::update(&db.0, &id, change).await?))
}

/// Removes an appliance no client uses (409 `in_use` otherwise).
#[utoipa::path(delete, path = "/appliances/{id}", tag = "appliances", operation_id = "appliances_delete",
    params(("id" = String, Path, description = "Appliance id")),
    responses((status = 204, description = "Removed")))]
async fn delete(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let _written = WriteGuard::new(&fleet);
    appliance::remove(&db.0, &parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_state(
    db: &ApiDb,
    fleet: &Arc<FleetCache>,
    id: &str,
    state: ApplianceState,
) -> ApiResult<Json<Appliance>> {
    let id = parse_id(id)?;
    let _written = WriteGuard::new(fleet);
    appliance::set_state(&db.0, &id, state).await?;
    Ok(Json(appliance::get(&db.0, &id).await?))
}

/// Stops steering clients to an appliance (existing sessions stay).
#[utoipa::path(post, path = "/appliances/{id}/drain", tag = "appliances", operation_id = "appliances_drain",
    params(("id" = String, Path, description = "Appliance id")),
    responses((status = 200, description = "Now draining", body = Appliance)))]
async fn drain(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Appliance>> {
    set_state(&db, &fleet, &id, ApplianceState::Draining).await
}

/// Makes a drained (or down) appliance active again.
#[utoipa::path(post, path = "/appliances/{id}/undrain", tag = "appliances", operation_id = "appliances_undrain",
    params(("id" = String, Path, description = "Appliance id")),
    responses((status = 200, description = "Now active", body = Appliance)))]
async fn undrain(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Appliance>> {
    set_state(&db, &fleet, &id, ApplianceState::Active).await
}

/// How many points a series may have.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Points {
    /// Points wanted, at most (2..=2000, default 300); the range is downsampled to fit.
    #[serde(default)]
    #[param(minimum = 2, maximum = 2000)]
    pub points: Option<u32>,
}

impl Points {
    /// The count, checked.
    pub fn get(&self) -> ApiResult<u32> {
        let n = self.points.unwrap_or(300);
        if !(2..=2000).contains(&n) {
            return Err(super::super::ApiError::invalid(
                "points",
                format!("points {n} is outside 2..=2000"),
            ));
        }
        Ok(n)
    }
}

/// An appliance's health over a time range, downsampled (sessions: clients held).
#[utoipa::path(get, path = "/appliances/{id}/health", tag = "appliances", operation_id = "appliances_health",
    params(("id" = String, Path, description = "Appliance id"), TimeRange, Points),
    responses((status = 200, description = "Health points, oldest first", body = Vec<HealthPoint>)))]
async fn health(
    State(db): State<ApiDb>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(range): ApiQuery<TimeRange>,
    ApiQuery(points): ApiQuery<Points>,
) -> ApiResult<Json<Vec<HealthPoint>>> {
    let id = parse_id(&id)?;
    let (from, to) = range.resolve(Utc::now())?;
    let points = points.get()?;
    appliance::get(&db.0, &id).await?;
    let range = Buckets { from, to, points };
    Ok(Json(series::health(&db.0, id.as_str(), range).await?))
}
