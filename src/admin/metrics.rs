//! `/metrics` of `serve`, behind the token check (`read` scope): one registry, built when the
//! admin router is, with a collector per capability: the DNS counters
//! ([`crate::dns::stats::DnsMetrics`]), this module's [`ServerMetrics`] (database freshness,
//! snapshot publication, audit writer, TCP limits), replication lag
//! ([`crate::store::replication::heartbeat::LagBoard`]) and live risk scores
//! ([`crate::risk::live::LiveMetrics`]). Encoding is [`crate::metrics`]'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
    registry.register_collector(Box::new(ServerMetrics(Arc::clone(status))));
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

/// The server's own status: how fresh its data is, what it published, the audit writer and
/// the DNS-over-TCP limit.
#[derive(Debug)]
pub struct ServerMetrics(pub Arc<ServerStatus>);

impl Collector for ServerMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Scrape::new(encoder);
        self.freshness(&mut out)?;
        self.publication(&mut out)?;
        self.audit(&mut out)?;
        self.tcp(&mut out)
    }
}

impl ServerMetrics {
    fn freshness(&self, out: &mut Scrape) -> std::fmt::Result {
        let sync = &self.0.sync;
        let now_ms = chrono::Utc::now().timestamp_millis();
        out.gauge(
            "shadowsteer_snapshot_age_seconds",
            "Seconds since the served data was last confirmed against the database (-1: never loaded).",
            sync.age_seconds(now_ms).unwrap_or(-1.0),
        )?;
        out.gauge(
            "shadowsteer_database_up",
            "Whether the last database read succeeded.",
            u64::from(sync.db_up()),
        )?;
        out.counters(
            "shadowsteer_snapshot_loads",
            "Reads of steering data from the database, by kind.",
            "kind",
            [
                ("full", sync.full_loads.load(Ordering::Relaxed)),
                ("targeted", sync.targeted_loads.load(Ordering::Relaxed)),
            ],
        )?;
        out.counter(
            "shadowsteer_snapshot_load_failures",
            "Failed reads of steering data.",
            sync.failures.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_listener_connects",
            "Connections of the change listener (each one triggers a full reload).",
            sync.listener_connects.load(Ordering::Relaxed),
        )
    }

    fn publication(&self, out: &mut Scrape) -> std::fmt::Result {
        let publish = &self.0.publish;
        out.counter(
            "shadowsteer_snapshots_published",
            "DNS snapshots built and swapped in.",
            publish.generation.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "shadowsteer_snapshot_restored",
            "1 when this server started from the snapshot saved on disk.",
            u64::from(publish.restored.load(Ordering::Relaxed)),
        )?;
        out.counters(
            "shadowsteer_snapshot_file_writes",
            "Saves of the snapshot to disk, by outcome.",
            "outcome",
            [
                ("ok", publish.file_writes.load(Ordering::Relaxed)),
                ("failed", publish.file_failures.load(Ordering::Relaxed)),
            ],
        )?;
        out.gauge(
            "shadowsteer_snapshot_file_bytes",
            "Size of the last snapshot saved to disk.",
            publish.file_bytes.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "shadowsteer_steered_clients",
            "Clients in the served snapshot.",
            publish.clients.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_answer_changes",
            "Changes of a client's answer.",
            publish.changes.load(Ordering::Relaxed),
        )
    }

    fn audit(&self, out: &mut Scrape) -> std::fmt::Result {
        let audit = &self.0.audit;
        // Decisions the publisher could not hand to the writer are dropped too.
        let dropped = audit.dropped.load(Ordering::Relaxed)
            + self.0.publish.audit_dropped.load(Ordering::Relaxed);
        out.counters(
            "shadowsteer_audit_rows",
            "Steering decisions for the audit table, by outcome.",
            "outcome",
            [
                ("written", audit.written.load(Ordering::Relaxed)),
                ("dropped", dropped),
            ],
        )?;
        out.gauge(
            "shadowsteer_audit_backlog",
            "Steering decisions waiting to be written.",
            audit.backlog.load(Ordering::Relaxed),
        )
    }

    fn tcp(&self, out: &mut Scrape) -> std::fmt::Result {
        let dns = &self.0.dns;
        out.gauge(
            "shadowsteer_dns_tcp_connections",
            "Open DNS-over-TCP connections.",
            dns.tcp_in_use(),
        )?;
        out.counter(
            "shadowsteer_dns_tcp_refused",
            "TCP connections closed at once because the limit was reached.",
            dns.tcp_refused(),
        )
    }
}
