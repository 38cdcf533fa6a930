//! `/metrics` of `serve`, behind the token check (`read` scope): one registry, built when the
//! admin router is, with a collector per capability, each beside the counters it reads: the
//! DNS listeners ([`crate::dns::stats::DnsMetrics`]), database freshness
//! ([`crate::store::snapshot::SyncStatus`]), publication of the served zones
//! ([`crate::publish::PublishStatus`]), the audit writer ([`crate::store::audit::AuditStatus`]),
//! replication lag ([`crate::store::replication::heartbeat::LagBoard`]), live risk scores
//! ([`crate::risk::live::LiveMetrics`]) and this module's [`FleetMetrics`]. Encoding is
//! [`crate::metrics`]'s.

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::get;

use super::{AppState, FleetCache, LiveView, ServerStatus, auth};
use crate::dns::stats::DnsMetrics;
use crate::metrics::{Collector, DescriptorEncoder, Registry, Scrape};
use crate::risk::live::LiveMetrics;

/// The metrics route, behind the token check (`read` scope).
pub fn router(state: &AppState) -> Router<AppState> {
    let mut registry = registry(&state.status, &state.live);
    registry.register_collector(Box::new(FleetMetrics(Arc::clone(&state.fleet))));
    let registry = Arc::new(registry);
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move { crate::metrics::response(&registry) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::by_method,
        ))
}

/// Every metric of `serve`.
pub fn registry(status: &Arc<ServerStatus>, live: &LiveView) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DnsMetrics(Arc::clone(&status.dns))));
    registry.register_collector(Box::new(Arc::clone(&status.sync)));
    registry.register_collector(Box::new(Arc::clone(&status.publish)));
    registry.register_collector(Box::new(Arc::clone(&status.audit)));
    registry.register_collector(Box::new(Arc::clone(&status.replication)));
    if let Some(scores) = &live.scores {
        registry.register_collector(Box::new(LiveMetrics::new(scores.clone())));
    }
    registry
}

/// Loads of the admin API's shared fleet view (each is three queries; compare with the
/// request rate of `GET /api/v1/appliances` to see the cache work).
#[derive(Debug)]
pub struct FleetMetrics(pub Arc<FleetCache>);

impl Collector for FleetMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        Scrape::new(encoder).counter(
            "shadowsteer_admin_fleet_loads",
            "Database reads of the fleet view behind GET /api/v1/appliances.",
            self.0.loads(),
        )
    }
}
