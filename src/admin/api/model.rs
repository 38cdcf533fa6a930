//! `/api/v1/model`: the running risk model and its card.

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
    OpenApiRouter::new().routes(routes!(get_model))
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

/// The running model's card; 404 `no_model` when risk scoring is off.
#[utoipa::path(get, path = "/model", tag = "model", operation_id = "model_get_model",
    responses((status = 200, description = "The model", body = ModelInfo),
              (status = 404, description = "Risk scoring is off", body = super::super::ErrorBody)))]
async fn get_model(State(live): State<LiveView>) -> ApiResult<Json<ModelInfo>> {
    let Some(m) = live.model.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_model",
            "risk scoring is off in this server (risk.enabled = false)",
        ));
    };
    let card = serde_json::to_value(&m.card).map_err(|e| ApiError::internal(&e, false))?;
    Ok(Json(ModelInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.members.kind().name().to_owned(),
        members: m.members.len(),
        horizon_s: m.horizon_s,
        threshold: m.threshold,
        steering_threshold: live.threshold,
        card,
        card_markdown: crate::risk::card::markdown(m),
    }))
}
