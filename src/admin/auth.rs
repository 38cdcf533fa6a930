//! Bearer-token authentication: `Authorization: Bearer sst_...`, checked against the SHA-256
//! hashes in `api_tokens`.
//!
//! Each request is checked against the database (one indexed lookup; scrapes are rare), so a
//! revocation takes effect at the next request. While the database is unreachable, a token
//! verified within [`CACHE_TTL`] is still accepted, so monitoring keeps working during the
//! outage it should report; an unknown token is never accepted.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::store::tokens;

/// How long a verified token is trusted while the database is away.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// How long a token check may wait for the database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn unauthorized(message: &'static str) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Middleware: lets the request through only with a valid token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized("missing bearer token\n");
    };
    let digest = tokens::hash(token);
    let checked = tokio::time::timeout(CHECK_TIMEOUT, tokens::verify(&state.pool, token)).await;
    let refusal = {
        let mut cache = state.token_cache.lock().unwrap_or_else(|p| p.into_inner());
        let refusal = match checked {
            Ok(Ok(Some(_))) => {
                cache.insert(digest, Instant::now());
                None
            }
            Ok(Ok(None)) => {
                cache.remove(&digest);
                Some(unauthorized("invalid token\n"))
            }
            Ok(Err(_)) | Err(_) => {
                let fresh = cache.get(&digest).is_some_and(|t| t.elapsed() < CACHE_TTL);
                (!fresh).then(|| {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot verify the token: database unreachable\n",
                    )
                        .into_response()
                })
            }
        };
        cache.retain(|_, t| t.elapsed() < CACHE_TTL);
        refusal
    };
    match refusal {
        Some(r) => r,
        None => next.run(request).await,
    }
}
