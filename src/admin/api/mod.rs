//! The REST API under `/api/v1`: one file per resource, each exporting `router()`, merged here
//! into one router and one OpenAPI 3.1 document.
//!
//! Every route needs a bearer token: GET needs `read`, anything else `admin`; `/tokens` needs
//! `admin` for every method. Request and response fields are named like the CLI's flags.
//! Every error is an [`ErrorBody`](super::ErrorBody) with a stable code (see [`docs`]).

pub mod advisories;
pub mod appliances;
pub mod clients;
pub mod decisions;
pub mod docs;
pub mod model;
pub mod replication;
pub mod risk;
pub mod sessions;
pub mod tokens;

use axum::Router;
use axum::middleware;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use super::error::ApiError;
use super::{AppState, auth};

/// Prefix of every API route.
pub const BASE: &str = "/api/v1";

/// The API's router and its OpenAPI document.
pub fn router(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let by_method = middleware::from_fn_with_state(state.auth.clone(), auth::by_method);
    let admin_only = middleware::from_fn_with_state(state.auth.clone(), auth::admin_only);
    let resources = OpenApiRouter::new()
        .merge(appliances::router())
        .merge(clients::router())
        .merge(advisories::router())
        .merge(sessions::router())
        .merge(risk::router())
        .merge(decisions::router())
        .merge(model::router())
        .merge(replication::router())
        .route_layer(by_method)
        .merge(tokens::router().route_layer(admin_only));
    let (router, doc) = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .nest(BASE, resources)
        .split_for_parts();
    (router, docs::finish(doc))
}

/// A time range in a query string (RFC 3339); defaults: the last hour.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeRange {
    /// Start (inclusive), RFC 3339 (e.g. 2026-12-01T18:00:00Z); default: an hour before `to`.
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive), RFC 3339; default: now.
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
}

/// Longest range one request may ask for.
pub const MAX_RANGE_DAYS: i64 = 31;

impl TimeRange {
    /// The range with defaults filled in; refused when empty, reversed or too long.
    pub fn resolve(&self, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let to = self.to.unwrap_or(now);
        let from = self.from.unwrap_or(to - chrono::Duration::hours(1));
        if from >= to {
            return Err(ApiError::invalid("from", "from must be before to"));
        }
        if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(ApiError::invalid(
                "from",
                format!("a range may span at most {MAX_RANGE_DAYS} days"),
            ));
        }
        Ok((from, to))
    }
}

/// Checks a page size against `1..=max`; `default` when absent.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit {limit} is outside 1..={max}"),
        ));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let r = TimeRange {
            from: None,
            to: None,
        };
        let (f, t) = r.resolve(now).unwrap();
        assert_eq!(t, now);
        assert_eq!((t - f).num_seconds(), 3600);
        let back = TimeRange {
            from: Some(now),
            to: Some(now),
        };
        assert!(back.resolve(now).is_err());
        let long = TimeRange {
            from: Some(now - chrono::Duration::days(40)),
            to: Some(now),
        };
        assert!(long.resolve(now).is_err());
        assert_eq!(page_limit(None, 100, 1000).unwrap(), 100);
        assert!(page_limit(Some(0), 100, 1000).is_err());
        assert!(page_limit(Some(1001), 100, 1000).is_err());
    }
}
