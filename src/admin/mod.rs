//! The admin HTTP listener (axum): `/metrics` (Prometheus text, bearer token required),
//! `/healthz` and `/readyz` (open, for load balancers and orchestrators).
//!
//! Deliberately minimal for now: the full admin API (inventory over HTTP, dashboard) comes
//! later and will add its routers here.

pub mod auth;
pub mod health;
pub mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::dns::publish::PublishStatus;
use crate::dns::stats::{ApplianceSlots, Stats};
use crate::store::audit::AuditStatus;
use crate::store::snapshot::SyncStatus;

/// Longest a request may take; also bounds how long shutdown waits for requests in flight.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database (token checks).
    pub pool: PgPool,
    /// DNS counters of every UDP worker and of TCP.
    pub dns_stats: Arc<Vec<Arc<Stats>>>,
    /// Appliance labels of the per-appliance counters.
    pub slots: Arc<Mutex<ApplianceSlots>>,
    /// Database freshness.
    pub sync: Arc<SyncStatus>,
    /// Snapshot publication.
    pub publish: Arc<PublishStatus>,
    /// Audit writer.
    pub audit: Arc<AuditStatus>,
    /// TCP connection slots (in use = max - available).
    pub tcp_slots: Arc<Semaphore>,
    /// Configured TCP connection limit.
    pub tcp_max: usize,
    /// TCP connections refused at the limit.
    pub tcp_refused: Arc<AtomicU64>,
    /// Whether the DNS listeners are up.
    pub listening: Arc<AtomicBool>,
    /// Token hashes recently verified against the database, so scrapes keep working while the
    /// database is away (see [`auth`]).
    pub token_cache: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
    /// Live risk scoring (model version, scores), when it runs.
    pub risk: Option<tokio::sync::watch::Receiver<Arc<crate::risk::live::LiveSnapshot>>>,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(metrics::router(state.clone()))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Serves the admin API on `listener` until shutdown; requests in flight get
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
