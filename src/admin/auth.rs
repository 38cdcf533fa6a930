//! Bearer-token authentication and scopes: `Authorization: Bearer sst_...`, checked against
//! the SHA-256 hashes in `api_tokens`.
//!
//! Scopes: `read` may use GET (API and `/metrics`), `admin` may do everything, including
//! every `/api/v1/tokens` route. `/healthz`, `/readyz`, the dashboard's static files and the
//! OpenAPI document are open.
//!
//! Cost under attack: a string that is not shaped like a token is refused without a database
//! query; verdicts (valid with scope, or invalid) are cached for [`FRESH_TTL`], so repeated
//! requests cost one lookup per token per few seconds; and at most [`MAX_CHECKS`] lookups run
//! at once, on the admin API's own small pool (never the DNS snapshot loader's). A flood of
//! distinct random tokens beyond that gets 503 with `Retry-After` after waiting at most
//! [`CHECK_WAIT`], and never holds more than [`MAX_CHECKS`] connections. A revocation takes
//! effect within [`FRESH_TTL`]. While the database is unreachable, a token verified within
//! [`STALE_TTL`] is still accepted, so monitoring keeps working during the outage it should
//! report; an unknown token is never accepted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::store::tokens;

/// How long a verdict from the database is trusted without asking again.
pub const FRESH_TTL: Duration = Duration::from_secs(5);
/// How long a valid token is still accepted while the database cannot be asked.
pub const STALE_TTL: Duration = Duration::from_secs(600);
/// Token lookups running at once, at most.
pub const MAX_CHECKS: usize = 2;
/// How long a request waits for a lookup slot before it is turned away.
pub const CHECK_WAIT: Duration = Duration::from_millis(250);
/// How long one lookup may wait for the database (longer than the admin pool's server-side
/// statement timeout, so the server normally cancels first and the connection stays usable).
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Cached verdicts, at most (about 100 bytes each).
pub const CACHE_CAPACITY: usize = 10_000;
/// Longest string that could be a token.
const MAX_TOKEN_LEN: usize = 200;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET only.
    Read,
    /// Everything.
    Admin,
}

impl Scope {
    /// The stored scope name as a scope; unknown names grant nothing more than `read`.
    pub fn from_stored(name: &str) -> Self {
        if name == "admin" {
            Self::Admin
        } else {
            Self::Read
        }
    }

    /// The scope a request with `method` needs.
    pub fn for_method(method: &Method) -> Self {
        if matches!(*method, Method::GET | Method::HEAD) {
            Self::Read
        } else {
            Self::Admin
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The token's scope, or `None` for a token the database does not know (or revoked).
    scope: Option<Scope>,
    checked_at: Instant,
    /// Last time the database confirmed it valid (for serve-stale).
    valid_at: Option<Instant>,
}

/// What the cache says about a token at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// A recent verdict: valid with this scope.
    Valid(Scope),
    /// A recent verdict: not a valid token.
    Invalid,
    /// No recent verdict: ask the database.
    Unknown,
}

/// Verdicts of recent token lookups, keyed by the token's hash. Pure: time is an argument.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: HashMap<[u8; 32], Entry>,
}

impl TokenCache {
    /// The verdict for `digest` at `now`, if still fresh.
    pub fn lookup(&self, digest: &[u8; 32], now: Instant) -> Cached {
        match self.entries.get(digest) {
            Some(e) if now.saturating_duration_since(e.checked_at) < FRESH_TTL => match e.scope {
                Some(s) => Cached::Valid(s),
                None => Cached::Invalid,
            },
            _ => Cached::Unknown,
        }
    }

    /// The scope of a token the database confirmed within [`STALE_TTL`] (for when it cannot
    /// be asked now).
    pub fn stale(&self, digest: &[u8; 32], now: Instant) -> Option<Scope> {
        let e = self.entries.get(digest)?;
        let valid_at = e.valid_at?;
        (now.saturating_duration_since(valid_at) < STALE_TTL)
            .then_some(e.scope)
            .flatten()
    }

    /// Records the database's verdict (`Some(scope)`: valid).
    pub fn handle_verdict(&mut self, digest: [u8; 32], scope: Option<Scope>, now: Instant) {
        if self.entries.len() >= CACHE_CAPACITY && !self.entries.contains_key(&digest) {
            self.evict(now);
            // Still full of live entries: keep the valid ones, forget this invalid verdict.
            if self.entries.len() >= CACHE_CAPACITY && scope.is_none() {
                return;
            }
        }
        let valid_at = scope.map(|_| now);
        self.entries.insert(
            digest,
            Entry {
                scope,
                checked_at: now,
                valid_at,
            },
        );
    }

    /// Drops expired entries; if that frees nothing, drops every invalid verdict.
    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.checked_at) < FRESH_TTL
                || e.valid_at
                    .is_some_and(|v| now.saturating_duration_since(v) < STALE_TTL)
        });
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries.retain(|_, e| e.scope.is_some());
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Checks tokens: the cache, the lookup slots and the admin API's pool.
#[derive(Debug)]
pub struct Authenticator {
    pool: PgPool,
    cache: Mutex<TokenCache>,
    checks: Semaphore,
}

impl Authenticator {
    /// An authenticator asking `pool` (the admin API's own pool).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Mutex::new(TokenCache::default()),
            checks: Semaphore::new(MAX_CHECKS),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scope of `token`, or why it is refused.
    pub async fn scope_of(&self, token: &str) -> Result<Scope, ApiError> {
        if !token.starts_with(tokens::PREFIX) || token.len() > MAX_TOKEN_LEN {
            return Err(unauthorized("invalid_token", "invalid token"));
        }
        let digest = tokens::hash(token);
        if let Some(verdict) = self.cached(&digest) {
            return verdict;
        }
        let Ok(Ok(_permit)) = tokio::time::timeout(CHECK_WAIT, self.checks.acquire()).await else {
            return self.fallback(&digest, "too many token checks at once; try again");
        };
        // Another request may have asked while this one waited for its slot.
        if let Some(verdict) = self.cached(&digest) {
            return verdict;
        }
        match tokio::time::timeout(CHECK_TIMEOUT, tokens::verify(&self.pool, token)).await {
            Ok(Ok(found)) => {
                let scope = found.map(|t| Scope::from_stored(&t.scope));
                self.cache().handle_verdict(digest, scope, Instant::now());
                scope.ok_or_else(|| unauthorized("invalid_token", "invalid token"))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "token check failed");
                self.fallback(&digest, "cannot verify the token: database unreachable")
            }
            Err(_) => self.fallback(&digest, "cannot verify the token: database too slow"),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Result<Scope, ApiError>> {
        match self.cache().lookup(digest, Instant::now()) {
            Cached::Valid(s) => Some(Ok(s)),
            Cached::Invalid => Some(Err(unauthorized("invalid_token", "invalid token"))),
            Cached::Unknown => None,
        }
    }

    fn fallback(&self, digest: &[u8; 32], why: &str) -> Result<Scope, ApiError> {
        self.cache()
            .stale(digest, Instant::now())
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", why))
    }
}

fn unauthorized(code: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The bearer token of a request, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn authorize(auth: &Authenticator, request: Request, next: Next, needed: Scope) -> Response {
    let Some(token) = bearer(&request) else {
        return unauthorized("missing_token", "missing bearer token").into_response();
    };
    match auth.scope_of(token).await {
        Ok(scope) if scope >= needed => next.run(request).await,
        Ok(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this token has the read scope; the request needs admin",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Middleware: GET and HEAD need `read`, everything else `admin`.
pub async fn by_method(
    State(auth): State<std::sync::Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let needed = Scope::for_method(request.method());
    authorize(&auth, request, next, needed).await
}

/// Middleware: every request needs `admin` (token management).
pub async fn admin_only(
    State(auth): State<std::sync::Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    authorize(&auth, request, next, Scope::Admin).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32) -> [u8; 32] {
        let mut x = [0u8; 32];
        x[..4].copy_from_slice(&n.to_be_bytes());
        x
    }

    #[test]
    fn verdicts_are_fresh_for_a_while() {
        let t0 = Instant::now();
        let mut c = TokenCache::default();
        assert_eq!(c.lookup(&d(1), t0), Cached::Unknown);
        c.handle_verdict(d(1), Some(Scope::Read), t0);
        c.handle_verdict(d(2), None, t0);
        assert_eq!(
            c.lookup(&d(1), t0 + FRESH_TTL / 2),
            Cached::Valid(Scope::Read)
        );
        assert_eq!(c.lookup(&d(2), t0 + FRESH_TTL / 2), Cached::Invalid);
        assert_eq!(c.lookup(&d(1), t0 + FRESH_TTL), Cached::Unknown);
        assert_eq!(c.lookup(&d(2), t0 + FRESH_TTL), Cached::Unknown);
    }

    #[test]
    fn stale_accepts_only_recently_valid_tokens() {
        let t0 = Instant::now();
        let mut c = TokenCache::default();
        c.handle_verdict(d(1), Some(Scope::Admin), t0);
        c.handle_verdict(d(2), None, t0);
        assert_eq!(c.stale(&d(1), t0 + STALE_TTL / 2), Some(Scope::Admin));
        assert_eq!(c.stale(&d(1), t0 + STALE_TTL), None);
        assert_eq!(c.stale(&d(2), t0), None);
        assert_eq!(c.stale(&d(3), t0), None);
        // Revoked later: the invalid verdict replaces the valid one.
        c.handle_verdict(d(1), None, t0 + FRESH_TTL);
        assert_eq!(c.stale(&d(1), t0 + FRESH_TTL), None);
    }

    #[test]
    fn a_flood_of_invalid_tokens_cannot_push_out_valid_ones() {
        let t0 = Instant::now();
        let mut c = TokenCache::default();
        c.handle_verdict(d(0), Some(Scope::Read), t0);
        for n in 1..(CACHE_CAPACITY as u32 * 3) {
            c.handle_verdict(d(n), None, t0);
        }
        assert!(c.len() <= CACHE_CAPACITY);
        assert_eq!(c.lookup(&d(0), t0), Cached::Valid(Scope::Read));
    }

    #[test]
    fn scopes_by_method() {
        assert_eq!(Scope::for_method(&Method::GET), Scope::Read);
        assert_eq!(Scope::for_method(&Method::DELETE), Scope::Admin);
        assert_eq!(Scope::from_stored("admin"), Scope::Admin);
        assert_eq!(Scope::from_stored("read"), Scope::Read);
        assert!(Scope::Admin >= Scope::Read);
    }
}
