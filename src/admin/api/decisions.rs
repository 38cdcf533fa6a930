//! `/api/v1/decisions`: the steering audit trail, newest first, paged and filtered by client,
//! appliance and time.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::extract::ApiQuery;
use super::super::{ApiDb, AppState};
use super::page_limit;
use crate::inventory::{appliance, client};
use crate::store::decisions::{self, Decision, DecisionFilter};
use crate::store::page;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Which decisions.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (1..=1000, default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only rows older than this id: the previous page's `next`.
    #[serde(default)]
    pub before: Option<i64>,
    /// Only this client.
    #[serde(default)]
    pub client: Option<String>,
    /// Only moves from or to this appliance.
    #[serde(default)]
    pub appliance: Option<String>,
    /// Only at or after this time (RFC 3339).
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    /// Only before this time (RFC 3339).
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
}

/// A page of decisions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionPage {
    /// Newest first.
    pub items: Vec<Decision>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next: Option<i64>,
}

/// Changes of clients' answers, newest first.
#[utoipa::path(get, path = "/decisions", tag = "decisions", operation_id = "decisions_list", params(ListQuery),
    responses((status = 200, description = "A page of decisions", body = DecisionPage)))]
async fn list(
    State(db): State<ApiDb>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DecisionPage>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let filter = DecisionFilter {
        client: q
            .client
            .as_deref()
            .map(|c| client::parse_client_id("client", c))
            .transpose()?
            .map(|c| c.into_string()),
        appliance: q
            .appliance
            .as_deref()
            .map(|a| appliance::parse_id("appliance", a))
            .transpose()?
            .map(|a| a.into_string()),
        from: q.from,
        to: q.to,
        before: q.before,
        limit: i64::from(limit) + 1,
    };
    let mut items = decisions::list(&db.0, &filter).await?;
    let next = page::split(&mut items, limit as usize, |d| d.id);
    Ok(Json(DecisionPage { items, next }))
}
