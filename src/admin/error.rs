//! The HTTP boundary's one error type: every refusal is JSON `{"code", "message", "field"?}`
//! with a stable `code` and the status that fits it. Internal failures are logged here and
//! reach the client only as `internal` / `database_unavailable`, never with their text.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::inventory::{ErrorClass, InventoryError};
use crate::store::StoreError;
use crate::store::tokens::TokenError;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_value`, `not_found`, `in_use`.
    #[schema(example = "invalid_value")]
    pub code: String,
    /// One-line reason for people (the same words the CLI prints).
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An API error: status plus body (`Clone`, so one failed load of a shared view can answer
/// every request that waited for it).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
                field: None,
            },
        }
    }

    /// 400 for a malformed `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_value", message);
        e.body.field = Some(field.to_owned());
        e
    }

    /// 400 for a request the server cannot read (body, query string, path).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 for a thing that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure of the server itself: logged with its cause; the client learns only that it
    /// happened (503 when the database is unreachable, else 500).
    pub fn internal(cause: &dyn std::fmt::Display, unavailable: bool) -> Self {
        tracing::warn!(error = %cause, "admin API request failed");
        if unavailable {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unreachable; try again",
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error (logged by the server)",
            )
        }
    }
}

/// Whether a store error means "the database is away" rather than "a query is wrong".
fn unavailable(e: &StoreError) -> bool {
    match e {
        StoreError::Connect(_) => true,
        StoreError::Query(q) => matches!(
            q,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let away = unavailable(&e);
        Self::internal(&e, away)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Query(e).into()
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        let status = match e.class() {
            ErrorClass::BadInput => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Internal => {
                return match e {
                    InventoryError::Store(s) => s.into(),
                    other => Self::internal(&other, false),
                };
            }
        };
        let mut out = Self::new(status, e.code(), e.to_string());
        out.body.field = e.field().map(str::to_owned);
        out
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(s) => s.into(),
            TokenError::NotFound(_) => Self::not_found(e.to_string()),
            TokenError::BadName => Self::invalid("name", e.to_string()),
            TokenError::BadScope(_) => Self::invalid("scope", e.to_string()),
            TokenError::BadId(_) => Self::invalid("id", e.to_string()),
            TokenError::Ambiguous(_) => {
                Self::new(StatusCode::BAD_REQUEST, "ambiguous_id", e.to_string())
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
