//! Prometheus metrics, one way for the whole crate: every process (`serve`, the agent) builds
//! one [`Registry`] (prometheus-client) at start, each capability registers a
//! [`Collector`] for its own counters, and [`render`] encodes the registry in the Prometheus
//! text format (0.0.4) on every scrape.
//!
//! Collectors, not library-owned counters: the hot paths keep counting in their own relaxed
//! atomics (the DNS workers in per-worker counters, the data plane in [`crate::tunnel::stats`]),
//! which the collectors read at scrape time. Each capability describes its own metrics next to
//! the counters it owns (`impl Collector for ...Stats`), so this module holds no metric names.
//!
//! - [`scrape`]: [`Scrape`], the few shapes our collectors write (counter, gauge, one-label
//!   families); the library writes `# HELP`, `# TYPE`, suffixes and label escaping.
//! - [`listener`]: the agent's own `/metrics` HTTP listener (`serve` answers `/metrics` on its
//!   admin listener, behind a token: [`crate::admin::metrics`]).
//!
//! Left out deliberately: OpenMetrics and protobuf exposition (every consumer we have reads the
//! 0.0.4 text format), and anything secret: label values are ids, reasons and outcomes only.

pub mod listener;
pub mod scrape;

use axum::http::header;
use axum::response::{IntoResponse, Response};
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::prometheus_text;
pub use prometheus_client::registry::Registry;
pub use scrape::Scrape;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric of `registry` in the Prometheus text format (0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; a collector that returns an error (none of ours
    // does) would cut the output short, which the scraper reports as a parse error.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::warn!("encoding metrics: {e}");
    }
    out
}

/// The HTTP response of a scrape.
pub fn response(registry: &Registry) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(registry)).into_response()
}
