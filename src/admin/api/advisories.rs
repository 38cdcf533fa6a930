//! `/api/v1/advisories`: list (active or all), create, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::extract::{ApiJson, ApiPath, ApiQuery};
use super::super::{ApiDb, AppState};
use crate::inventory::{Advisory, AdvisoryInput, advisory};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(delete))
}

/// Which advisories.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `true`: only those in force now; default: all.
    #[serde(default)]
    pub active: Option<bool>,
}

/// Advisories, newest start first.
#[utoipa::path(get, path = "/advisories", tag = "advisories", operation_id = "advisories_list", params(ListQuery),
    responses((status = 200, description = "Advisories", body = Vec<Advisory>)))]
async fn list(
    State(db): State<ApiDb>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Advisory>>> {
    let active_at = q.active.unwrap_or(false).then(Utc::now);
    Ok(Json(advisory::list(&db.0, active_at).await?))
}

/// Records external risk for an appliance or a whole region (exactly one of `appliance`,
/// `region`).
#[utoipa::path(post, path = "/advisories", tag = "advisories", operation_id = "advisories_create", request_body = AdvisoryInput,
    responses((status = 201, description = "Created", body = Advisory)))]
async fn create(
    State(db): State<ApiDb>,
    ApiJson(input): ApiJson<AdvisoryInput>,
) -> ApiResult<(StatusCode, Json<Advisory>)> {
    let spec = input.parse(Utc::now())?;
    let id = advisory::add(&db.0, &spec).await?;
    Ok((StatusCode::CREATED, Json(Advisory { id, spec })))
}

/// Removes an advisory by id (or a unique prefix of at least 4 hex digits).
#[utoipa::path(delete, path = "/advisories/{id}", tag = "advisories", operation_id = "advisories_delete",
    params(("id" = String, Path, description = "Advisory id or a unique prefix")),
    responses((status = 204, description = "Removed")))]
async fn delete(State(db): State<ApiDb>, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    advisory::remove(&db.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
