//! `/api/v1/model`: the running risk model and its card; `/api/v1/model/reload` replaces it
//! from the configured file without a restart (as SIGHUP does; [`crate::risk::live::reload`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::{ApiError, ApiResult};
use super::super::{AppState, LiveView};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_model))
        .routes(routes!(reload_model))
}

/// The model scoring in this server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    /// Name given at training.
    pub name: String,
    /// Version (changes whenever its scores could).
    pub version: String,
    /// Family: logistic regression or decision-tree ensemble.
    pub kind: String,
    /// Members of its bootstrap ensemble.
    pub members: usize,
    /// Horizon in seconds: scores are probabilities of a failure starting within it.
    pub horizon_s: u32,
    /// Operating threshold chosen at training.
    pub threshold: f64,
    /// Steering threshold in force in this server.
    pub steering_threshold: f64,
    /// The model card (training data, split, candidates, validation metrics).
    #[schema(value_type = Object)]
    pub card: serde_json::Value,
    /// The card as Markdown (as in `models/*.md`).
    pub card_markdown: String,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelReload {
    /// Version in force before.
    pub previous: String,
    /// Version in force now; new scores name it (the live scorer rewrites every score once).
    pub version: String,
    /// Whether the version changed (the same file again changes nothing).
    pub changed: bool,
}

fn scoring_off() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_model",
        "risk scoring is off in this server (risk.enabled = false)",
    )
}

/// Reads the configured model file (`risk.model`; the built-in model when none) again and puts
/// it in force if it is a valid model. A file that is missing, not a model or breaks a model
/// rule is refused with 422 `invalid_model` and the model in force stays. Needs `admin`.
#[utoipa::path(post, path = "/model/reload", tag = "model", operation_id = "model_reload",
    responses((status = 200, description = "The model in force after the reload", body = ModelReload),
              (status = 404, description = "Risk scoring is off", body = super::super::ErrorBody),
              (status = 422, description = "The file is not a valid model; the old one stays", body = super::super::ErrorBody)))]
async fn reload_model(State(live): State<LiveView>) -> ApiResult<Json<ModelReload>> {
    let Some(source) = live.model.clone() else {
        return Err(scoring_off());
    };
    let done = tokio::task::spawn_blocking(move || source.reload())
        .await
        .map_err(|e| ApiError::internal(&e, false))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_model",
                e.to_string(),
            )
        })?;
    Ok(Json(ModelReload {
        changed: done.changed(),
        previous: done.previous,
        version: done.version,
    }))
}

/// The running model's card; 404 `no_model` when risk scoring is off.
#[utoipa::path(get, path = "/model", tag = "model", operation_id = "model_get_model",
    responses((status = 200, description = "The model", body = ModelInfo),
              (status = 404, description = "Risk scoring is off", body = super::super::ErrorBody)))]
async fn get_model(State(live): State<LiveView>) -> ApiResult<Json<ModelInfo>> {
    let Some(m) = live.model.as_ref().map(|s| s.current()) else {
        return Err(scoring_off());
    };
    let card = serde_json::to_value(&m.card).map_err(|e| ApiError::internal(&e, false))?;
    Ok(Json(ModelInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.members.kind().name().to_owned(),
        members: m.members.len(),
        horizon_s: m.horizon_s,
        threshold: m.threshold,
        steering_threshold: live.threshold(),
        card,
        card_markdown: crate::risk::model::card::markdown(&m),
    }))
}
