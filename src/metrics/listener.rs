//! A `/metrics`-only HTTP listener, for the agent (`[agent] metrics_listen`).
//!
//! No authentication: the metrics hold no secrets (ids, counts, reasons), but traffic volumes
//! are nobody else's business, so the listener is off unless configured and the documented
//! address is loopback (a local Prometheus or node exporter proxy scrapes it).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use super::Registry;

/// Longest a scrape may take (encoding takes microseconds; this bounds slow clients).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once; more are refused with 503 rather than queued.
const MAX_IN_FLIGHT: usize = 8;

/// The routes: `GET /metrics`, 404 for everything else.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move { super::response(&registry) }
            }),
        )
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async { StatusCode::SERVICE_UNAVAILABLE },
                ))
                .load_shed()
                .concurrency_limit(MAX_IN_FLIGHT),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            SCRAPE_TIMEOUT,
        ))
}

/// Serves `registry` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let served = axum::serve(listener, router(registry))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!("metrics listener stopped: {e}");
    }
}
