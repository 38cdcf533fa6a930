//! Postgres access: connections, migrations, inventory, telemetry, notifications, retention,
//! and the agent's roster and session state (`sessions`).
//!
//! Queries are compile-time checked (`query!`) against the committed metadata in `.sqlx/`.

pub mod audit;
pub mod decisions;
pub mod fleet_view;
pub mod id_prefix;
pub mod inventory;
pub mod lb_status;
pub mod notify;
pub mod page;
pub mod replication;
pub mod retention;
pub mod risk;
pub mod scorer_lease;
pub mod series;
pub mod session_view;
pub mod sessions;
pub mod snapshot;
pub mod takeover;
pub mod target;
pub mod telemetry;
pub mod tokens;

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub use target::{Database, DatabaseTarget, default_data_dir};

/// An age as whole milliseconds for the queries' `make_interval` (saturating).
pub(crate) fn age_ms(age: Duration) -> i64 {
    i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
}

/// The schema migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect, or the connection broke.
    #[error("cannot reach the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Starting the embedded cluster failed.
    #[error(transparent)]
    LocalPg(#[from] crate::localpg::LocalPgError),
    /// A blocking helper task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// A row read from the database violates a domain rule (should be impossible with the
    /// schema's constraints; reported rather than trusted).
    #[error("invalid row in {table}: {message}")]
    InvalidRow {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Opens a pool on `url`. Connections time out quickly so that callers see an unreachable
/// database as an error, not a hang.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(StoreError::Connect)
}

/// A migration and whether it has been applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    /// Version (the timestamp prefix of the file).
    pub version: i64,
    /// Description from the file name.
    pub description: String,
    /// Whether it is applied in this database.
    pub applied: bool,
}

/// Versions recorded in sqlx's bookkeeping table (empty when it does not exist yet).
async fn applied_versions(pool: &PgPool) -> Result<BTreeSet<i64>, StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Every known migration with its state.
pub async fn migration_status(pool: &PgPool) -> Result<Vec<MigrationStatus>, StoreError> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Applies pending migrations; returns those applied by this call (empty when up to date).
/// sqlx takes an advisory lock, so concurrent callers apply each migration once.
pub async fn migrate(pool: &PgPool) -> Result<Vec<MigrationStatus>, StoreError> {
    let before = applied_versions(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = migration_status(pool).await?;
    Ok(after
        .into_iter()
        .filter(|m| m.applied && !before.contains(&m.version))
        .collect())
}

/// Applies pending migrations, retrying (every second, then up to every 10 s) until they are
/// applied or shutdown; then says so on `migrated` and waits for shutdown (a server keeps
/// this as one of its tasks, and a task that ends means trouble).
pub async fn migrate_when_reachable(
    pool: PgPool,
    migrated: tokio::sync::watch::Sender<bool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        match migrate(&pool).await {
            Ok(applied) => {
                tracing::info!(
                    applied = applied.len(),
                    "database reached and migrated; loading steering data"
                );
                let _ = migrated.send(true);
                break;
            }
            Err(e) => tracing::warn!(error = %e, "database still unreachable; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(10));
    }
    shutdown.cancelled().await;
}

/// Runs `task` once the schema is migrated (at once if it already is); on shutdown first, does
/// not run it.
pub async fn after_migration(
    mut migrated: tokio::sync::watch::Receiver<bool>,
    shutdown: tokio_util::sync::CancellationToken,
    task: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        r = migrated.wait_for(|m| *m) => if r.is_err() { return },
    }
    task.await;
}

/// The region of `appliance`; `None` when it is not in the inventory.
pub async fn appliance_region(
    pool: &PgPool,
    appliance: &crate::domain::ApplianceId,
) -> Result<Option<crate::domain::RegionId>, StoreError> {
    let region = sqlx::query_scalar!(
        "SELECT region FROM appliances WHERE id = $1",
        appliance.as_str()
    )
    .fetch_optional(pool)
    .await?;
    region
        .map(|r| {
            crate::domain::RegionId::new(r).map_err(|e| StoreError::InvalidRow {
                table: "appliances",
                message: e.to_string(),
            })
        })
        .transpose()
}

/// Maps a unique-constraint violation to the name of its constraint.
pub(crate) fn unique_violation(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

/// Maps a foreign-key violation to the name of its constraint.
pub(crate) fn foreign_key_violation(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => db.constraint(),
        _ => None,
    }
}
