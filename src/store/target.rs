//! Which database a command uses: an explicit URL, or the embedded local cluster of a data
//! directory, so that a new user never types a connection string.

use std::path::{Path, PathBuf};

use sqlx::PgPool;

use super::{StoreError, connect};
use crate::localpg::{DATABASE, Durability, LocalCluster};

/// The default data directory: `$SHADOWSTEER_DATA_DIR`, else `/var/lib/shadowsteer` for root
/// (the `postgres` user must be able to reach it, which rules out `/root`), else
/// `$XDG_DATA_HOME/shadowsteer` or `~/.local/share/shadowsteer`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHADOWSTEER_DATA_DIR") {
        return PathBuf::from(dir);
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/lib/shadowsteer");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("shadowsteer");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/shadowsteer")
}

/// Where to find the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A Postgres URL given by flag, environment or configuration.
    Url(String),
    /// The embedded cluster of this data directory.
    Embedded(PathBuf),
}

impl DatabaseTarget {
    /// The URL if one is given, else the embedded cluster of `data_dir` (or the default).
    pub fn resolve(url: Option<String>, data_dir: Option<PathBuf>) -> Self {
        match url.filter(|u| !u.is_empty()) {
            Some(url) => Self::Url(url),
            None => Self::Embedded(data_dir.unwrap_or_else(default_data_dir)),
        }
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> String {
        match self {
            Self::Url(url) => redact_url(url),
            Self::Embedded(dir) => format!("embedded cluster in {}", dir.display()),
        }
    }
}

/// `url` with any password (in the authority or as a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let redacted = redact_authority(url);
    match redacted.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => redacted,
    }
}

fn redact_authority(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// An open database: the pool, and the embedded cluster it runs on, if any.
#[derive(Debug)]
pub struct Database {
    /// The connection pool.
    pub pool: PgPool,
    cluster: Option<LocalCluster>,
}

impl Database {
    /// Opens `target`. An embedded cluster is started if needed and its database created; the
    /// caller decides whether to migrate.
    pub async fn open(target: &DatabaseTarget, max_connections: u32) -> Result<Self, StoreError> {
        match target {
            DatabaseTarget::Url(url) => Ok(Self {
                pool: connect(url, max_connections).await?,
                cluster: None,
            }),
            DatabaseTarget::Embedded(dir) => {
                Self::open_embedded(dir, Durability::Durable, max_connections).await
            }
        }
    }

    /// As [`open`](Self::open), but a database URL whose server cannot be reached yet gives a
    /// pool that connects when it is first used, instead of an error, so that a long-running
    /// server can start (and answer from what it saved) during a database outage. Returns
    /// whether the database was reached. Other failures (a bad URL, a refused password, an
    /// embedded cluster that cannot start) are still errors.
    pub async fn open_tolerant(
        target: &DatabaseTarget,
        max_connections: u32,
    ) -> Result<(Self, bool), StoreError> {
        let DatabaseTarget::Url(url) = target else {
            return Self::open(target, max_connections).await.map(|d| (d, true));
        };
        match connect(url, max_connections).await {
            Ok(pool) => Ok((
                Self {
                    pool,
                    cluster: None,
                },
                true,
            )),
            Err(StoreError::Connect(e)) if unreachable(&e) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .connect_lazy(url)
                    .map_err(StoreError::Connect)?;
                Ok((
                    Self {
                        pool,
                        cluster: None,
                    },
                    false,
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts (or attaches to) the cluster in `dir` and creates its database.
    pub async fn open_embedded(
        dir: &Path,
        durability: Durability,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let dir = dir.to_owned();
        let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&dir, durability))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        create_database(&cluster.url("postgres"), DATABASE).await?;
        let pool = connect(&cluster.url(DATABASE), max_connections).await?;
        Ok(Self {
            pool,
            cluster: Some(cluster),
        })
    }

    /// The embedded cluster, if this database runs on one.
    pub fn cluster(&self) -> Option<&LocalCluster> {
        self.cluster.as_ref()
    }

    /// Closes the pool, then stops the embedded cluster if this process started it.
    pub async fn close(mut self) {
        self.pool.close().await;
        if let Some(cluster) = self.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        }
    }
}

/// Whether `e` says the server is not there (yet): no connection, a timeout, or a server that
/// is starting up or shutting down (SQLSTATE classes 08 and 57).
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        _ => false,
    }
}

/// Creates `name` on the server of `admin_url` unless it exists. Safe against a concurrent
/// creator.
pub async fn create_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    let pool = connect(admin_url, 1).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is quoted as an identifier.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
            Ok(_) => {}
            // 42P04 duplicate_database, 23505: a concurrent creator won.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=disable&password=pw"),
            "postgres://u@h/db?sslmode=disable&password=***"
        );
        assert_eq!(redact_url("postgres:///db"), "postgres:///db");
    }

    #[test]
    fn url_wins_over_data_dir() {
        assert_eq!(
            DatabaseTarget::resolve(Some("postgres://x".into()), Some("/d".into())),
            DatabaseTarget::Url("postgres://x".into())
        );
        assert_eq!(
            DatabaseTarget::resolve(Some(String::new()), Some("/d".into())),
            DatabaseTarget::Embedded("/d".into())
        );
    }
}
