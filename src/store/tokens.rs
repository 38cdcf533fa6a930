//! Admin API tokens. A token is shown once, when created; the database keeps only its SHA-256
//! hash, so a leaked database copy yields no usable token. Tokens are 32 random bytes
//! (base64url) behind a `sst_` prefix that makes them easy to spot in logs and secret scanners.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::StoreError;
use super::id_prefix::{self, Found};
use crate::domain::RegionId;

/// Prefix of every token.
pub const PREFIX: &str = "sst_";
/// Scope of a token created without one: least privilege (GET only).
pub const DEFAULT_SCOPE: &str = "read";

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Name empty, longer than 100 characters, or with control characters.
    #[error("token name must be 1 to 100 characters without control characters")]
    BadName,
    /// Scope other than `read` or `admin`.
    #[error("unknown scope {0:?}; use read or admin")]
    BadScope(String),
    /// No token matches the id.
    #[error("no token {0}")]
    NotFound(String),
    /// The id prefix matches several tokens.
    #[error("token id {0} is ambiguous; give more characters")]
    Ambiguous(String),
    /// The id is not a uuid prefix.
    #[error("token id {0:?} must be a uuid or a prefix of at least 4 hex digits")]
    BadId(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// Whether the caller's input was at fault.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::Store(_))
    }
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Query(e))
    }
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// `read` or `admin`.
    pub scope: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token.
pub fn generate() -> Zeroizing<String> {
    use base64::Engine as _;
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
    Zeroizing::new(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ))
}

/// The expiry of a token created at `now` with lifetime `duration` (humantime, e.g. `90d`).
pub fn expiry(now: DateTime<Utc>, duration: &str) -> Result<DateTime<Utc>, String> {
    let d = humantime::parse_duration(duration).map_err(|e| format!("{duration:?}: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    let d = chrono::Duration::from_std(d).map_err(|_| "is too long".to_owned())?;
    now.checked_add_signed(d)
        .ok_or_else(|| "is too long".to_owned())
}

/// Creates a token; returns its id and the token itself (to show once).
pub async fn create(
    pool: &PgPool,
    region: &RegionId,
    name: &str,
    scope: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(Uuid, Zeroizing<String>), TokenError> {
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    if !matches!(scope, "read" | "admin") {
        return Err(TokenError::BadScope(scope.to_owned()));
    }
    let token = generate();
    let digest = hash(&token);
    let id = sqlx::query_scalar!(
        "INSERT INTO api_tokens (region, name, token_hash, scope, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        region.as_str(),
        name,
        &digest[..],
        scope,
        expires_at,
    )
    .fetch_one(pool)
    .await?;
    Ok((id, token))
}

/// Every token, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(sqlx::query_as!(
        TokenInfo,
        "SELECT id, name, scope, created_at, expires_at, revoked_at FROM api_tokens ORDER BY created_at DESC, id"
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes the token whose id is `id` or starts with it (at least 4 hex digits).
pub async fn revoke(pool: &PgPool, id: &str) -> Result<Uuid, TokenError> {
    let Some(prefix) = id_prefix::parse(id) else {
        return Err(TokenError::BadId(id.to_owned()));
    };
    let mut tx = pool.begin().await?;
    let matches = sqlx::query_scalar!(
        "SELECT id FROM api_tokens WHERE id::text LIKE $1 || '%' FOR UPDATE",
        prefix
    )
    .fetch_all(&mut *tx)
    .await?;
    let target = match id_prefix::pick(&matches) {
        Found::None => return Err(TokenError::NotFound(id.to_owned())),
        Found::One(one) => one,
        Found::Many => return Err(TokenError::Ambiguous(id.to_owned())),
    };
    sqlx::query!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        target
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(target)
}

/// The token's record if it is valid now (not revoked, not expired).
pub async fn verify(pool: &PgPool, token: &str) -> Result<Option<TokenInfo>, StoreError> {
    if !token.starts_with(PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let digest = hash(token);
    Ok(sqlx::query_as!(
        TokenInfo,
        "SELECT id, name, scope, created_at, expires_at, revoked_at FROM api_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        &digest[..]
    )
    .fetch_optional(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert_ne!(*a, *b);
        assert_ne!(hash(&a), hash(&b));
    }
}
