//! `/metrics`: Prometheus text exposition (format 0.0.4), written by hand: a few dozen
//! series do not need a metrics library, and the DNS counters live in per-worker atomics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{AppState, LiveView, ServerStatus, auth};
use crate::dns::stats::{self, LATENCY_BOUNDS_US, QTYPES, RCODES, read};

/// The metrics route, behind the token check (`read` scope).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::by_method,
        ))
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
}

/// Renders every metric.
pub fn render(state: &ServerStatus, live: &LiveView) -> String {
    let mut o = Out(String::with_capacity(8192));
    let all = &state.dns_stats;
    let sum = |f: &dyn Fn(&stats::Stats) -> u64| all.iter().map(|s| f(s)).sum::<u64>();

    o.head(
        "shadowsteer_dns_queries_total",
        "counter",
        "DNS queries answered, by question type.",
    );
    for (i, (_, name)) in QTYPES.iter().enumerate() {
        o.line(
            "shadowsteer_dns_queries_total",
            &format!("qtype=\"{name}\""),
            sum(&|s| read(&s.qtypes[i])),
        );
    }
    o.line(
        "shadowsteer_dns_queries_total",
        "qtype=\"other\"",
        sum(&|s| read(&s.qtypes[QTYPES.len()])),
    );

    o.head(
        "shadowsteer_dns_responses_total",
        "counter",
        "DNS responses, by response code.",
    );
    for (i, (_, name)) in RCODES.iter().enumerate() {
        o.line(
            "shadowsteer_dns_responses_total",
            &format!("rcode=\"{name}\""),
            sum(&|s| read(&s.rcodes[i])),
        );
    }
    o.line(
        "shadowsteer_dns_responses_total",
        "rcode=\"other\"",
        sum(&|s| read(&s.rcodes[RCODES.len()])),
    );

    o.head(
        "shadowsteer_dns_answers_total",
        "counter",
        "Steered answers (per-client names, SRV, service name), by appliance.",
    );
    let labels = state
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .labels();
    for (slot, name) in labels {
        o.line(
            "shadowsteer_dns_answers_total",
            &format!("appliance=\"{name}\""),
            sum(&|s| read(&s.appliances[slot])),
        );
    }

    o.head(
        "shadowsteer_dns_rate_limited_total",
        "counter",
        "Responses hit by response rate limiting, by action.",
    );
    o.line(
        "shadowsteer_dns_rate_limited_total",
        "action=\"slip\"",
        sum(&|s| read(&s.rrl_slipped)),
    );
    o.line(
        "shadowsteer_dns_rate_limited_total",
        "action=\"drop\"",
        sum(&|s| read(&s.rrl_dropped)),
    );
    o.head(
        "shadowsteer_dns_truncated_total",
        "counter",
        "UDP responses sent truncated because they did not fit.",
    );
    o.line(
        "shadowsteer_dns_truncated_total",
        "",
        sum(&|s| read(&s.truncated)),
    );
    o.head(
        "shadowsteer_dns_dropped_total",
        "counter",
        "Packets dropped without an answer (too short, responses, oversized).",
    );
    o.line(
        "shadowsteer_dns_dropped_total",
        "",
        sum(&|s| read(&s.dropped)),
    );

    o.head(
        "shadowsteer_dns_udp_worker_restarts_total",
        "counter",
        "UDP workers restarted after a panic (the datagrams of the batch in hand are lost).",
    );
    o.line(
        "shadowsteer_dns_udp_worker_restarts_total",
        "",
        sum(&|s| read(&s.restarts)),
    );

    o.head(
        "shadowsteer_dns_latency_seconds",
        "histogram",
        "Time from receiving a query (batch) to sending its answer.",
    );
    let mut cum = 0u64;
    for (i, b) in LATENCY_BOUNDS_US.iter().enumerate() {
        cum += sum(&|s| read(&s.latency[i]));
        o.line(
            "shadowsteer_dns_latency_seconds_bucket",
            &format!("le=\"{}\"", *b as f64 / 1e6),
            cum,
        );
    }
    cum += sum(&|s| read(&s.latency[LATENCY_BOUNDS_US.len()]));
    o.line("shadowsteer_dns_latency_seconds_bucket", "le=\"+Inf\"", cum);
    o.line(
        "shadowsteer_dns_latency_seconds_sum",
        "",
        sum(&|s| read(&s.latency_sum_ns)) as f64 / 1e9,
    );
    o.line("shadowsteer_dns_latency_seconds_count", "", cum);

    let now_ms = chrono::Utc::now().timestamp_millis();
    o.head(
        "shadowsteer_snapshot_age_seconds",
        "gauge",
        "Seconds since the served data was last confirmed against the database (-1: never loaded).",
    );
    o.line(
        "shadowsteer_snapshot_age_seconds",
        "",
        state.sync.age_seconds(now_ms).unwrap_or(-1.0),
    );
    o.head(
        "shadowsteer_database_up",
        "gauge",
        "Whether the last database read succeeded.",
    );
    o.line(
        "shadowsteer_database_up",
        "",
        u8::from(state.sync.db_up.load(Ordering::Relaxed)),
    );
    o.head(
        "shadowsteer_snapshot_loads_total",
        "counter",
        "Reads of steering data from the database, by kind.",
    );
    o.line(
        "shadowsteer_snapshot_loads_total",
        "kind=\"full\"",
        state.sync.full_loads.load(Ordering::Relaxed),
    );
    o.line(
        "shadowsteer_snapshot_loads_total",
        "kind=\"targeted\"",
        state.sync.targeted_loads.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_snapshot_load_failures_total",
        "counter",
        "Failed reads of steering data.",
    );
    o.line(
        "shadowsteer_snapshot_load_failures_total",
        "",
        state.sync.failures.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_listener_connects_total",
        "counter",
        "Connections of the change listener (each one triggers a full reload).",
    );
    o.line(
        "shadowsteer_listener_connects_total",
        "",
        state.sync.listener_connects.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_snapshots_published_total",
        "counter",
        "DNS snapshots built and swapped in.",
    );
    o.line(
        "shadowsteer_snapshots_published_total",
        "",
        state.publish.generation.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_snapshot_restored",
        "gauge",
        "1 when this server started from the snapshot saved on disk.",
    );
    o.line(
        "shadowsteer_snapshot_restored",
        "",
        u8::from(state.publish.restored.load(Ordering::Relaxed)),
    );
    o.head(
        "shadowsteer_snapshot_file_writes_total",
        "counter",
        "Saves of the snapshot to disk, by outcome.",
    );
    o.line(
        "shadowsteer_snapshot_file_writes_total",
        "outcome=\"ok\"",
        state.publish.file_writes.load(Ordering::Relaxed),
    );
    o.line(
        "shadowsteer_snapshot_file_writes_total",
        "outcome=\"failed\"",
        state.publish.file_failures.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_snapshot_file_bytes",
        "gauge",
        "Size of the last snapshot saved to disk.",
    );
    o.line(
        "shadowsteer_snapshot_file_bytes",
        "",
        state.publish.file_bytes.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_steered_clients",
        "gauge",
        "Clients in the served snapshot.",
    );
    o.line(
        "shadowsteer_steered_clients",
        "",
        state.publish.clients.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_answer_changes_total",
        "counter",
        "Changes of a client's answer.",
    );
    o.line(
        "shadowsteer_answer_changes_total",
        "",
        state.publish.changes.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_audit_rows_total",
        "counter",
        "Steering decisions for the audit table, by outcome.",
    );
    o.line(
        "shadowsteer_audit_rows_total",
        "outcome=\"written\"",
        state.audit.written.load(Ordering::Relaxed),
    );
    o.line(
        "shadowsteer_audit_rows_total",
        "outcome=\"dropped\"",
        state.audit.dropped.load(Ordering::Relaxed)
            + state.publish.audit_dropped.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_audit_backlog",
        "gauge",
        "Steering decisions waiting to be written.",
    );
    o.line(
        "shadowsteer_audit_backlog",
        "",
        state.audit.backlog.load(Ordering::Relaxed),
    );
    o.head(
        "shadowsteer_dns_tcp_connections",
        "gauge",
        "Open DNS-over-TCP connections.",
    );
    o.line(
        "shadowsteer_dns_tcp_connections",
        "",
        state
            .tcp_max
            .saturating_sub(state.tcp_slots.available_permits()),
    );
    o.head(
        "shadowsteer_dns_tcp_refused_total",
        "counter",
        "TCP connections closed at once because the limit was reached.",
    );
    o.line(
        "shadowsteer_dns_tcp_refused_total",
        "",
        state.tcp_refused.load(Ordering::Relaxed),
    );
    o.0.push_str(&state.replication.render_metrics());
    if let Some(risk) = &live.scores {
        let snapshot = risk.borrow().clone();
        o.0.push_str(&snapshot.render_metrics());
    }
    o.0
}

async fn metrics(
    State(status): State<std::sync::Arc<ServerStatus>>,
    State(live): State<LiveView>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&status, &live),
    )
}
