//! `/api/v1/tokens`: create, list, revoke admin API tokens (admin scope for every method).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::super::error::{ApiError, ApiResult};
use super::super::extract::{ApiJson, ApiPath};
use super::super::{ApiDb, AppState};
use crate::domain::RegionId;
use crate::store::tokens::{self, TokenInfo};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    /// Its id.
    pub id: Uuid,
    /// Who or what uses it.
    pub name: String,
    /// `read` or `admin`.
    pub scope: String,
    /// Created.
    pub created_at: chrono::DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<chrono::DateTime<Utc>>,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name,
            scope: t.scope,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// A new token: the flags of `token create`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// Who or what uses it (1 to 100 characters).
    pub name: String,
    /// `read` (default: GET only) or `admin`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Lifetime, e.g. `90d`; default: no expiry.
    #[serde(default)]
    pub expires: Option<String>,
    /// Region that owns the token row (default `local`).
    #[serde(default)]
    pub region: Option<String>,
}

/// A created token: the secret is in this response only.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Its id.
    pub id: Uuid,
    /// The token (`sst_...`); store it now, it is never shown again.
    pub token: String,
    /// Its scope.
    pub scope: String,
}

/// Every token, newest first.
#[utoipa::path(get, path = "/tokens", tag = "tokens", operation_id = "tokens_list",
    responses((status = 200, description = "Tokens", body = Vec<TokenView>)))]
async fn list(State(db): State<ApiDb>) -> ApiResult<Json<Vec<TokenView>>> {
    let list = tokens::list(&db.0).await?;
    Ok(Json(list.into_iter().map(TokenView::from).collect()))
}

/// Creates a token (least privilege by default: `read`).
#[utoipa::path(post, path = "/tokens", tag = "tokens", operation_id = "tokens_create", request_body = TokenInput,
    responses((status = 201, description = "Created; the token is shown only here", body = CreatedToken)))]
async fn create(
    State(db): State<ApiDb>,
    ApiJson(input): ApiJson<TokenInput>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let region = RegionId::new(input.region.as_deref().unwrap_or("local"))
        .map_err(|e| ApiError::invalid("region", e.to_string()))?;
    let expires_at = input
        .expires
        .as_deref()
        .map(|d| tokens::expiry(Utc::now(), d))
        .transpose()
        .map_err(|e| ApiError::invalid("expires", e))?;
    let scope = input.scope.as_deref().unwrap_or(tokens::DEFAULT_SCOPE);
    let (id, token) = tokens::create(&db.0, &region, &input.name, scope, expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id,
            token: token.as_str().to_owned(),
            scope: scope.to_owned(),
        }),
    ))
}

/// Revokes a token by id (or a unique prefix of at least 4 hex digits).
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", operation_id = "tokens_revoke",
    params(("id" = String, Path, description = "Token id or a unique prefix")),
    responses((status = 204, description = "Revoked")))]
async fn revoke(State(db): State<ApiDb>, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    tokens::revoke(&db.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
