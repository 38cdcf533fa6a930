//! Cross-region replication with Postgres logical replication, set up and watched by
//! shadowsteer itself (`shadowsteer db replication ...`).
//!
//! - [`plan`]: the pure planner (wanted regions + what the databases hold -> actions);
//! - [`lag`]: pure lag and state rules;
//! - [`setup`]: the shell that checks, migrates, observes and carries out a plan
//!   (`setup`, `remove-region`);
//! - [`status`]: what every subscription is doing, from every region's catalogs;
//! - [`heartbeat`]: the heartbeat writer (`serve`, agents) and the lag reader (`serve`'s
//!   metrics).
//!
//! Model: each region's database publishes only its own rows (`WHERE (region = '<self>')` on
//! every table of [`TABLES`]) and subscribes to every other region's publication. A database
//! that knows its region (`local_region`) refuses local writes of other regions' rows (SQLSTATE
//! [`OWNERSHIP_SQLSTATE`]), so no two regions ever write one row and replication never
//! conflicts. Left out: conflict resolution (there are no conflicts by construction), global
//! uniqueness across regions of values like tunnel addresses (two regions adding the same one
//! while partitioned stop the apply of the second with a unique violation; `status` shows it),
//! and moving a removed region's rows anywhere.

pub mod heartbeat;
pub mod lag;
pub mod plan;
pub mod setup;
pub mod status;

use crate::domain::RegionId;
use crate::store::StoreError;
use crate::store::target::redact_url;

/// Replicated tables, in publication order. Every one carries `region` first in its primary
/// key (the replica identity), so the publication's row filter is valid for UPDATE and DELETE.
/// Regional, deliberately not here: `path_probes` (the largest time series: one row per path
/// and window, client paths included; only the measuring region's scorer reads it, and its
/// results replicate as `risk_scores`) and `api_tokens` (each region's admin API has its own
/// tokens, so a leaked token reaches one region; a token's revocation, an UPDATE, could only be
/// made in its owning region anyway).
pub const TABLES: &[&str] = &[
    "regions",
    "appliances",
    "clients",
    "session_state",
    "risk_scores",
    "risk_history",
    "advisories",
    "failure_events",
    "steering_decisions",
    "appliance_health",
    "replication_heartbeats",
];

/// SQLSTATE raised by a database refusing a local write of another region's row.
pub const OWNERSHIP_SQLSTATE: &str = "SSR01";

/// Whether `e` is the database refusing a write of another region's row.
pub fn is_ownership_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(OWNERSHIP_SQLSTATE))
}

/// One `--region ID=URL` of the command line.
#[derive(Clone)]
pub struct RegionSpec {
    /// The region.
    pub id: RegionId,
    /// URL setup and status connect with (needs the rights to create publications and
    /// subscriptions: a superuser on Postgres 15).
    pub url: String,
    /// URL the other regions' subscriptions connect to this region's publication with (a role
    /// with REPLICATION and SELECT on the published tables suffices); the same as `url` unless
    /// given apart.
    pub replication_url: String,
}

impl std::fmt::Debug for RegionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionSpec")
            .field("id", &self.id)
            .field("url", &redact_url(&self.url))
            .field("replication_url", &redact_url(&self.replication_url))
            .finish()
    }
}

impl RegionSpec {
    /// Parses `ID=URL`.
    pub fn parse(text: &str) -> Result<Self, ReplicationError> {
        let (id, url) = text
            .split_once('=')
            .ok_or_else(|| ReplicationError::BadSpec(redact_url(text)))?;
        // The id's own error would echo it, and a malformed spec may have a URL in that place.
        let id = RegionId::new(id).map_err(|_| {
            ReplicationError::BadSpec(format!(
                "{} (the id must be a DNS label: lowercase letters, digits, inner hyphens)",
                redact_url(text)
            ))
        })?;
        if url.is_empty() {
            return Err(ReplicationError::BadSpec(format!("{id}: empty URL")));
        }
        Ok(Self {
            id,
            url: url.to_owned(),
            replication_url: url.to_owned(),
        })
    }
}

/// Checks that no region id is given twice.
pub fn check_unique(specs: &[RegionSpec]) -> Result<(), ReplicationError> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.id == s.id) {
            return Err(ReplicationError::DuplicateRegion(s.id.to_string()));
        }
    }
    Ok(())
}

/// Why a replication command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A `--region` is not `ID=URL` with a valid id.
    #[error("--region: expected ID=URL, got {0}")]
    BadSpec(String),
    /// No `--region` given.
    #[error("give every region with --region ID=URL")]
    NoRegions,
    /// One id given twice.
    #[error("--region {0} is given twice")]
    DuplicateRegion(String),
    /// Two ids name the same database.
    #[error("regions {0} and {1} are the same database")]
    SameDatabase(String, String),
    /// A region's database cannot be reached (or refuses the login).
    #[error("region {region}: cannot connect to {url}: {cause}")]
    Unreachable {
        /// The region.
        region: String,
        /// Its URL without password.
        url: String,
        /// Why (password-free).
        cause: String,
    },
    /// A database has migrations this binary does not know: a newer shadowsteer migrated it.
    #[error(
        "region {region}: its schema has migration(s) {versions} that this shadowsteer does not know (schema versions differ); upgrade shadowsteer first"
    )]
    UnknownMigrations {
        /// The region.
        region: String,
        /// The unknown versions.
        versions: String,
    },
    /// After migrating, two regions' schema versions differ.
    #[error("schema versions differ: region {0} is at {1}, region {2} at {3}")]
    SchemaMismatch(String, i64, String, i64),
    /// The planner refused (a database of another region, an unlisted region...).
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// A statement failed on a region's database.
    #[error("region {region}: {what}: {cause}")]
    Database {
        /// The region.
        region: String,
        /// What was being done.
        what: String,
        /// The error text (password-free).
        cause: String,
    },
    /// Migrating a region failed.
    #[error("region {region}: migrating: {source}")]
    Migrate {
        /// The region.
        region: String,
        /// The cause.
        source: StoreError,
    },
}

impl ReplicationError {
    /// Whether the command line was at fault (exit 2, nothing changed) rather than the system.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::Database { .. } | Self::Migrate { .. })
    }
}

/// `text` with the password of each of `urls` replaced by `***`: error texts of a failed
/// statement that carried a connection string must never print it.
pub(crate) fn scrub(text: &str, urls: &[&str]) -> String {
    let mut out = text.to_owned();
    for url in urls {
        if let Some(pw) = password_of(url)
            && !pw.is_empty()
        {
            out = out.replace(pw, "***");
        }
    }
    out
}

/// The password in a `scheme://user:password@host/...` URL.
fn password_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (auth, _) = rest.rsplit_once('@')?;
    auth.split_once(':').map(|(_, pw)| pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_never_show_passwords() {
        let s = RegionSpec::parse("eu=postgres://u:secret@h:5432/db").unwrap();
        assert_eq!(s.id.as_str(), "eu");
        assert!(!format!("{s:?}").contains("secret"));
        for bad in [
            "postgres://u:secret@h/db",
            "postgres://u:secret@h/db?sslmode=disable",
        ] {
            let e = RegionSpec::parse(bad).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        assert!(RegionSpec::parse("EU=postgres://h/db").is_err());
        let a = RegionSpec::parse("eu=postgres://h/a").unwrap();
        assert!(matches!(
            check_unique(&[a.clone(), a]),
            Err(ReplicationError::DuplicateRegion(_))
        ));
        assert_eq!(
            scrub("x secret y", &["postgres://u:secret@h/db"]),
            "x *** y"
        );
    }
}
