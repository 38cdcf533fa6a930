//! `/healthz` (the process runs) and `/readyz` (it answers DNS from database data).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{AppState, ServerStatus};

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    listening: bool,
    snapshot_loaded: bool,
    database_up: bool,
    snapshot_age_seconds: Option<f64>,
}

/// Ready once the DNS listeners are up and a snapshot from the database is served. A stale
/// snapshot (database away) stays ready: answering from it is the point of serve-stale; the
/// body and `/metrics` say how stale.
async fn readyz(
    State(state): State<std::sync::Arc<ServerStatus>>,
) -> (StatusCode, Json<Readiness>) {
    let listening = state.dns.listening();
    let loaded = state.publish.loaded();
    let r = Readiness {
        ready: listening && loaded,
        listening,
        snapshot_loaded: loaded,
        database_up: state.sync.db_up(),
        snapshot_age_seconds: state
            .sync
            .age_seconds(chrono::Utc::now().timestamp_millis()),
    };
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}
