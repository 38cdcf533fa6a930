//! `/api/v1/sessions`: the shadowed sessions (holder, role, epoch, client endpoint, last
//! handshake, counters), from `session_state`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::{ApiError, ApiResult};
use super::super::extract::{ApiPath, ApiQuery};
use super::super::{ApiDb, AppState};
use super::page_limit;
use crate::inventory::{appliance, client};
use crate::store::page;
use crate::store::session_view::{self, SessionView};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
}

/// Which sessions.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (1..=1000, default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only clients after this one: the previous page's `next`.
    #[serde(default)]
    pub after: Option<String>,
    /// Only sessions this appliance holds.
    #[serde(default)]
    pub holder: Option<String>,
}

/// A page of sessions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionPage {
    /// The sessions, by client.
    pub items: Vec<SessionView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Sessions ordered by client, a page at a time.
#[utoipa::path(get, path = "/sessions", tag = "sessions", operation_id = "sessions_list", params(ListQuery),
    responses((status = 200, description = "A page of sessions", body = SessionPage)))]
async fn list(
    State(db): State<ApiDb>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<SessionPage>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let holder = q
        .holder
        .as_deref()
        .map(|h| appliance::parse_id("holder", h))
        .transpose()?;
    let after = q
        .after
        .as_deref()
        .map(|a| client::parse_client_id("after", a))
        .transpose()?;
    let mut items = session_view::list(
        &db.0,
        holder.as_ref().map(|h| h.as_str()),
        None,
        after.as_ref().map(|a| a.as_str()),
        i64::from(limit) + 1,
    )
    .await?;
    let next = page::split(&mut items, limit as usize, |s| s.client.clone());
    Ok(Json(SessionPage { items, next }))
}

/// The session rows of one client (one per region that holds state for it).
#[utoipa::path(get, path = "/sessions/{client}", tag = "sessions", operation_id = "sessions_get_one",
    params(("client" = String, Path, description = "Client id")),
    responses((status = 200, description = "The client's session rows", body = Vec<SessionView>)))]
async fn get_one(
    State(db): State<ApiDb>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<SessionView>>> {
    let id = client::parse_client_id("client", &id)?;
    let rows = session_view::list(&db.0, None, Some(id.as_str()), None, 100).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no session of client {id}")));
    }
    Ok(Json(rows))
}
