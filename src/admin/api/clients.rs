//! `/api/v1/clients`: list (paged, filtered by appliance), get, create, delete, and the
//! client's wg-quick file (`client config`).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::error::ApiResult;
use super::super::extract::{ApiJson, ApiPath, ApiQuery};
use super::super::{ApiDb, AppState, FleetCache, Site};
use super::appliances::WriteGuard;
use super::page_limit;
use crate::domain::PeerIndex;
use crate::inventory::client::{self, MAX_PAGE, parse_client_id};
use crate::inventory::{Client, ClientFilter, ClientInput, ClientPage, ConfigOptions, appliance};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, delete))
        .routes(routes!(config))
}

/// Which page of clients.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (1..=1000, default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only ids after this one: the previous page's `next`.
    #[serde(default)]
    pub after: Option<String>,
    /// Only clients whose primary or shadow this appliance is.
    #[serde(default)]
    pub appliance: Option<String>,
}

/// Clients ordered by id, a page at a time.
#[utoipa::path(get, path = "/clients", tag = "clients", operation_id = "clients_list", params(ListQuery),
    responses((status = 200, description = "A page of clients", body = ClientPage)))]
async fn list(
    State(db): State<ApiDb>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ClientPage>> {
    let filter = ClientFilter {
        limit: page_limit(q.limit, 100, MAX_PAGE)?,
        after: q
            .after
            .as_deref()
            .map(|a| parse_client_id("after", a))
            .transpose()?,
        appliance: q
            .appliance
            .as_deref()
            .map(|a| appliance::parse_id("appliance", a))
            .transpose()?,
    };
    Ok(Json(client::page(&db.0, &filter).await?))
}

/// One client.
#[utoipa::path(get, path = "/clients/{id}", tag = "clients", operation_id = "clients_get_one",
    params(("id" = String, Path, description = "Client id")),
    responses((status = 200, description = "The client", body = Client)))]
async fn get_one(State(db): State<ApiDb>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Client>> {
    Ok(Json(
        client::get(&db.0, &parse_client_id("id", &id)?).await?,
    ))
}

/// Registers a client with its primary and shadow (in another region); allocates its peer
/// index.
#[utoipa::path(post, path = "/clients", tag = "clients", operation_id = "clients_create", request_body = ClientInput,
    responses((status = 201, description = "Created", body = Client)))]
async fn create(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiJson(input): ApiJson<ClientInput>,
) -> ApiResult<(StatusCode, Json<Client>)> {
    let new = input.parse()?;
    // The fleet view counts each appliance's clients.
    let _written = WriteGuard::new(&fleet);
    let _index: PeerIndex = client::add(&db.0, &new).await?;
    Ok((
        StatusCode::CREATED,
        Json(client::get(&db.0, &new.id).await?),
    ))
}

/// Removes a client and its session state.
#[utoipa::path(delete, path = "/clients/{id}", tag = "clients", operation_id = "clients_delete",
    params(("id" = String, Path, description = "Client id")),
    responses((status = 204, description = "Removed")))]
async fn delete(
    State(db): State<ApiDb>,
    State(fleet): State<Arc<FleetCache>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let _written = WriteGuard::new(&fleet);
    client::remove(&db.0, &parse_client_id("id", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Options of the wg-quick file.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// WireGuard port of the appliances (default 51820).
    #[serde(default)]
    #[param(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    /// AllowedIPs, comma-separated CIDR networks (default: the /24 or /64 around the tunnel
    /// address).
    #[serde(default)]
    pub allowed_ips: Option<String>,
    /// PersistentKeepalive in seconds, 0 for none (default 25).
    #[serde(default)]
    pub keepalive: Option<u16>,
}

/// The client's wg-quick file, as `shadowsteer client config` prints it (with a placeholder
/// for the private key, which the server never holds). The endpoint is the client's name in
/// the server's first zone.
#[utoipa::path(get, path = "/clients/{id}/config", tag = "clients", operation_id = "clients_config",
    params(("id" = String, Path, description = "Client id"), ConfigQuery),
    responses((status = 200, description = "wg-quick configuration", body = String, content_type = "text/plain")))]
async fn config(
    State(db): State<ApiDb>,
    State(site): State<Arc<Site>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConfigQuery>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_client_id("id", &id)?;
    let options = ConfigOptions {
        zone: site.zone.clone(),
        client_label: site.client_label.clone(),
        port: q.port.unwrap_or(51820),
        allowed_ips: q.allowed_ips,
        keepalive: q.keepalive.unwrap_or(25),
    };
    let text = client::config_file(&db.0, &id, &options, None).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
