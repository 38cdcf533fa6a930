//! `shadowsteer token create|list|revoke`: admin API tokens (only their hashes are stored).

use anyhow::Context as _;
use chrono::Utc;
use clap::Subcommand;
use shadowsteer::domain::RegionId;
use shadowsteer::store::tokens::{self, TokenError};

use super::{CommandError, CommandResult, DbArgs, db, table};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown only this once).
    Create {
        /// A name saying who or what uses it.
        #[arg(long)]
        name: String,
        /// read (GET requests and /metrics) or admin (everything, including tokens).
        #[arg(long, default_value = tokens::DEFAULT_SCOPE)]
        scope: String,
        /// Lifetime, e.g. 90d [default: no expiry].
        #[arg(long)]
        expires: Option<String>,
        /// Region that owns the token row [default: the database's region once replication is
        /// set up (`local_region`), else "local"].
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by id (or a unique prefix of at least 4 characters).
    Revoke {
        /// Token id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// The database's own region (`local_region`), else "local": a database set up for
/// replication refuses rows of other regions.
async fn own_region(pool: &sqlx::PgPool) -> Result<RegionId, CommandError> {
    let own: Option<String> = sqlx::query_scalar("SELECT region FROM public.local_region")
        .fetch_optional(pool)
        .await
        .context("reading local_region")?;
    RegionId::new(own.unwrap_or_else(|| "local".to_owned()))
        .map_err(|e| CommandError::Failed(anyhow::Error::new(e)))
}

fn map_err(e: TokenError) -> CommandError {
    if e.is_input_error() {
        CommandError::Input(e.to_string())
    } else {
        CommandError::Failed(anyhow::Error::new(e))
    }
}

pub async fn run(cmd: TokenCommand) -> CommandResult {
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            expires,
            region,
            db,
        } => {
            let region = region
                .map(RegionId::new)
                .transpose()
                .map_err(|e| CommandError::Input(format!("--region: {e}")))?;
            let expires_at = expires
                .as_deref()
                .map(|d| tokens::expiry(Utc::now(), d))
                .transpose()
                .map_err(|e| CommandError::Input(format!("--expires: {e}")))?;
            let database = db::open(&db).await?;
            let region = match region {
                Some(r) => r,
                None => match own_region(&database.pool).await {
                    Ok(r) => r,
                    Err(e) => {
                        database.close().await;
                        return Err(e);
                    }
                },
            };
            let created = tokens::create(&database.pool, &region, &name, &scope, expires_at).await;
            database.close().await;
            let (id, token) = created.map_err(map_err)?;
            println!("{}", token.as_str());
            eprintln!(
                "created token {id} ({name}, scope {scope}); it is shown only once: store it now"
            );
            Ok(())
        }
        TokenCommand::List { json, db } => {
            let database = db::open(&db).await?;
            let list = tokens::list(&database.pool).await;
            database.close().await;
            let list = list.map_err(map_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).context("encoding JSON")?
                );
                return Ok(());
            }
            let fmt = |t: Option<chrono::DateTime<Utc>>| {
                t.map_or("-".to_owned(), |t| {
                    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
                })
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string()[..8].to_owned(),
                        t.name.clone(),
                        t.scope.clone(),
                        fmt(Some(t.created_at)),
                        fmt(t.expires_at),
                        fmt(t.revoked_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["ID", "NAME", "SCOPE", "CREATED", "EXPIRES", "REVOKED"],
                    &rows
                )
            );
            Ok(())
        }
        TokenCommand::Revoke { id, db } => {
            let database = db::open(&db).await?;
            let revoked = tokens::revoke(&database.pool, &id).await;
            database.close().await;
            println!("revoked token {}", revoked.map_err(map_err)?);
            Ok(())
        }
    }
}
