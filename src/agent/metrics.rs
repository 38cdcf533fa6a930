//! The agent's `/metrics` (`[agent] metrics_listen`): one registry with a collector for each of
//! the agent's tasks, served by [`crate::metrics::listener`].
//!
//! Off unless configured, because it has no authentication; the documented address is
//! loopback. Non-loopback addresses are allowed (a monitoring network), with a warning.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{prober, sessions, takeover, telemetry};
use crate::metrics::Registry;
use crate::tunnel::stats::DeviceStats;

/// The counters of a running agent.
#[derive(Debug)]
pub struct Sources {
    /// Data plane (and its takeover share: initiations, relays, relay rejections).
    pub device: Arc<DeviceStats>,
    /// Health writer.
    pub health: Arc<telemetry::HealthStats>,
    /// Session recorder.
    pub recorder: Arc<sessions::RecorderStats>,
    /// Prober, when probing runs.
    pub probes: Option<Arc<prober::ProbeStats>>,
    /// Takeover task, when takeover runs.
    pub takeover: Option<Arc<takeover::TakeoverStats>>,
}

/// Every metric of the agent.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources.device));
    registry.register_collector(Box::new(sources.health));
    registry.register_collector(Box::new(sources.recorder));
    if let Some(p) = sources.probes {
        registry.register_collector(Box::new(p));
    }
    if let Some(t) = sources.takeover {
        registry.register_collector(Box::new(t));
    }
    registry
}

/// Binds `addr` and serves `sources` on it until `shutdown`; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    sources: Sources,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            addr = %bound,
            "agent metrics listen beyond loopback, without authentication"
        );
    }
    tracing::info!(addr = %bound, "agent metrics at /metrics");
    tasks.spawn(crate::metrics::listener::serve(
        listener,
        Arc::new(registry(sources)),
        shutdown,
    ));
    Ok(bound)
}
