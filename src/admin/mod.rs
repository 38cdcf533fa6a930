//! The admin HTTP listener (axum): the REST API under `/api/v1` with its OpenAPI document,
//! the dashboard at `/`, `/metrics` (Prometheus text), and `/healthz` / `/readyz` (open, for
//! load balancers and orchestrators).
//!
//! Layout: one file per API resource under [`api`], each exporting a `router()` that
//! [`router`] merges; their routes and schemas are collected into the OpenAPI document by
//! utoipa-axum as they are merged, so a route cannot exist without being documented. Adding a
//! resource (for example replication status) is one file and one `.merge(...)` line.
//!
//! Handlers share one [`AppState`] but take only the narrow handle they need (`State<ApiDb>`,
//! `State<LiveView>`, ...; each has a `FromRef`): inventory and reads go through
//! [`crate::inventory`] and the store on the API's own small pool, never the pool the DNS
//! snapshot loader uses; the DNS and database status is one read-only [`ServerStatus`] used by
//! `/metrics`, `/readyz` and replication status alone, holding each module's own status handle
//! (the DNS listeners' is [`DnsStatus`], read only through its methods).
//!
//! Limits: request bodies at most [`MAX_BODY`] bytes, at most [`MAX_IN_FLIGHT`] requests at
//! once (more get 503 at once), each at most [`REQUEST_TIMEOUT`]; token checks are bounded as
//! [`auth`] describes.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod view_cache;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use crate::dns::status::DnsStatus;
use crate::publish::PublishStatus;
use crate::risk::live::LiveScores;
use crate::risk::live::reload::ModelSource;
use crate::store::audit::AuditStatus;
use crate::store::snapshot::SyncStatus;

pub use auth::Authenticator;
pub use error::{ApiError, ErrorBody};

/// Longest a request may take; also bounds how long shutdown waits for requests in flight.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted (inventory changes are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Requests handled at once; more are refused with 503 rather than queued without bound.
pub const MAX_IN_FLIGHT: usize = 256;

/// The admin API's database pool: its own connections, so no API traffic (nor a flood of
/// tokens) can take the connections the DNS snapshot loader needs.
#[derive(Debug, Clone)]
pub struct ApiDb(pub PgPool);

/// Read-only status of the DNS server and its database feeds, for `/metrics` and `/readyz`:
/// one handle per owning module, each read through its methods.
#[derive(Debug)]
pub struct ServerStatus {
    /// The DNS listeners: counters, TCP limit, whether they are up.
    pub dns: Arc<DnsStatus>,
    /// Database freshness.
    pub sync: Arc<SyncStatus>,
    /// Publication of the served zones (DNS answers).
    pub publish: Arc<PublishStatus>,
    /// Audit writer.
    pub audit: Arc<AuditStatus>,
    /// Replication lag per source region, from the heartbeat task.
    pub replication: Arc<crate::store::replication::heartbeat::LagBoard>,
    /// Lag past which replication counts as behind (`replication.lag_warning`).
    pub lag_warning: Duration,
}

/// The risk model and live scores, when scoring runs, and the steering threshold in force.
#[derive(Debug, Clone)]
pub struct LiveView {
    /// The model scoring, replaceable at run time (`None` with risk scoring off).
    pub model: Option<Arc<ModelSource>>,
    /// The live scorer's latest round.
    pub scores: Option<watch::Receiver<Arc<LiveScores>>>,
    /// The publisher's status, which holds the steering threshold in force.
    pub publish: Arc<PublishStatus>,
    /// A score not confirmed for this long is not fresh (`risk.max_score_age`).
    pub max_score_age: std::time::Duration,
}

impl LiveView {
    /// Steering threshold in force: above it a primary's clients move to their shadow. The
    /// publisher's, so that it is the one steering uses, also after a reload.
    pub fn threshold(&self) -> f64 {
        self.publish.steering_threshold()
    }
}

/// What the server serves, for rendering client configurations.
#[derive(Debug, Clone)]
pub struct Site {
    /// The first steering zone, e.g. `vpn.example.net`.
    pub zone: String,
    /// Label between client id and zone, e.g. `c`.
    pub client_label: String,
}

/// State shared by the handlers; each takes the handle it needs through `FromRef`.
#[derive(Clone)]
pub struct AppState {
    /// The API's pool.
    pub db: ApiDb,
    /// Token checks.
    pub auth: Arc<Authenticator>,
    /// DNS and database status (metrics, readiness).
    pub status: Arc<ServerStatus>,
    /// Model and scores.
    pub live: LiveView,
    /// Zone names.
    pub site: Arc<Site>,
    /// The fleet view behind `GET /api/v1/appliances`, shared by all requests.
    pub fleet: Arc<FleetCache>,
}

/// The shared fleet view: every appliance with client counts, current risk and latest health
/// ([`view_cache`] says how fresh; writes through the API invalidate it).
pub type FleetCache = view_cache::ViewCache<Vec<api::appliances::ApplianceView>, ApiError>;

impl FromRef<AppState> for ApiDb {
    fn from_ref(s: &AppState) -> Self {
        s.db.clone()
    }
}
impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}
impl FromRef<AppState> for Arc<ServerStatus> {
    fn from_ref(s: &AppState) -> Self {
        s.status.clone()
    }
}
impl FromRef<AppState> for LiveView {
    fn from_ref(s: &AppState) -> Self {
        s.live.clone()
    }
}
impl FromRef<AppState> for Arc<FleetCache> {
    fn from_ref(s: &AppState) -> Self {
        s.fleet.clone()
    }
}
impl FromRef<AppState> for Arc<Site> {
    fn from_ref(s: &AppState) -> Self {
        s.site.clone()
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api::router(&state);
    let doc = Arc::new(doc);
    Router::new()
        .merge(health::router())
        .merge(metrics::router(&state))
        .merge(api)
        .merge(api::docs::router(doc))
        .merge(dashboard::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "too many requests in flight; try again",
                    )
                    .into_response()
                }))
                .load_shed()
                .concurrency_limit(MAX_IN_FLIGHT),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Serves the admin listener on `listener` until shutdown; requests in flight get
/// [`REQUEST_TIMEOUT`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
