//! Advisories: operator-entered external risk for an appliance or a region, with a time window.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::InventoryError;
use super::appliance::parse_id;
use crate::domain::{ApplianceId, Probability, RegionId};
use crate::store::inventory as db;

/// Kinds of advisory.
pub const ADVISORY_KINDS: [&str; 4] = [
    "geopolitical",
    "environmental",
    "maintenance",
    "operational",
];
/// Kind when none is given.
pub const DEFAULT_KIND: &str = "operational";
/// Longest note, in characters.
pub const MAX_NOTE: usize = 1000;

/// What an advisory applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", content = "id", rename_all = "lowercase")]
pub enum AdvisoryScope {
    /// One appliance.
    Appliance(ApplianceId),
    /// Every appliance of a region.
    Region(RegionId),
}

/// `{"scope": "appliance" | "region", "id": "..."}`, written by hand: the derive cannot give
/// an adjacently tagged newtype its id's string type.
impl utoipa::PartialSchema for AdvisoryScope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .property(
                "scope",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["appliance", "region"])),
            )
            .required("scope")
            .property("id", ObjectBuilder::new().schema_type(Type::String))
            .required("id")
            .description(Some(
                "What the advisory applies to: an appliance or a whole region.",
            ))
            .into()
    }
}

impl ToSchema for AdvisoryScope {}

/// An advisory as stored: `advisory list --json` and `GET /api/v1/advisories`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Advisory {
    /// Its id.
    pub id: Uuid,
    /// What it says.
    #[serde(flatten)]
    pub spec: NewAdvisory,
}

/// An advisory's validated content.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewAdvisory {
    /// What it applies to.
    pub scope: AdvisoryScope,
    /// Kind; one of [`ADVISORY_KINDS`].
    pub kind: String,
    /// Risk while active, in [0, 1].
    #[schema(value_type = f64, minimum = 0.0, maximum = 1.0)]
    pub risk: Probability,
    /// Start of its window.
    pub starts_at: DateTime<Utc>,
    /// End of its window; open-ended when absent.
    pub ends_at: Option<DateTime<Utc>>,
    /// Free text, at most 1000 characters.
    pub note: String,
}

impl NewAdvisory {
    /// Whether the advisory is in force at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && self.ends_at.is_none_or(|end| now < end)
    }
}

/// A new advisory before validation: the flags of `advisory add`, the body of
/// `POST /api/v1/advisories`. Exactly one of `appliance` and `region`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvisoryInput {
    /// The appliance at risk.
    #[serde(default)]
    pub appliance: Option<String>,
    /// A region at risk (every appliance in it).
    #[serde(default)]
    pub region: Option<String>,
    /// Risk in [0, 1] while the advisory is active.
    pub risk: f64,
    /// Start (RFC 3339, e.g. 2026-12-01T18:00:00Z); default: now.
    #[serde(default)]
    pub starts: Option<String>,
    /// Duration, e.g. 10m or 2h; default: until removed.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    /// geopolitical, environmental, maintenance or operational (default).
    #[serde(default)]
    pub kind: Option<String>,
    /// Free text (at most 1000 characters).
    #[serde(default)]
    pub note: Option<String>,
}

impl AdvisoryInput {
    /// Validates the input; `now` is the default start.
    pub fn parse(&self, now: DateTime<Utc>) -> Result<NewAdvisory, InventoryError> {
        let scope = match (&self.appliance, &self.region) {
            (Some(a), None) => AdvisoryScope::Appliance(parse_id("appliance", a)?),
            (None, Some(r)) => AdvisoryScope::Region(
                RegionId::new(r.as_str()).map_err(|e| InventoryError::invalid("region", e))?,
            ),
            _ => {
                return Err(InventoryError::invalid(
                    "appliance",
                    "give exactly one of appliance and region",
                ));
            }
        };
        let risk = Probability::new(self.risk).map_err(|e| InventoryError::invalid("risk", e))?;
        let starts_at = match &self.starts {
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    InventoryError::invalid("starts", format!("{s:?}: not an RFC 3339 time ({e})"))
                })?
                .with_timezone(&Utc),
            None => now,
        };
        let ends_at = match &self.duration {
            Some(d) => Some(end_after(starts_at, d)?),
            None => None,
        };
        let kind = self.kind.as_deref().unwrap_or(DEFAULT_KIND);
        if !ADVISORY_KINDS.contains(&kind) {
            return Err(InventoryError::invalid(
                "kind",
                format!(
                    "unknown advisory kind {kind:?}; use one of {}",
                    ADVISORY_KINDS.join(", ")
                ),
            ));
        }
        let note = self.note.clone().unwrap_or_default();
        if note.chars().count() > MAX_NOTE {
            return Err(InventoryError::invalid(
                "note",
                "note is longer than 1000 characters",
            ));
        }
        // Postgres text cannot hold NUL; other control characters would garble the CLI's table.
        if note
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(InventoryError::invalid(
                "note",
                "note must not contain control characters",
            ));
        }
        Ok(NewAdvisory {
            scope,
            kind: kind.to_owned(),
            risk,
            starts_at,
            ends_at,
            note,
        })
    }
}

/// The end of a window of `duration` (humantime, e.g. `10m`) from `start`.
fn end_after(start: DateTime<Utc>, duration: &str) -> Result<DateTime<Utc>, InventoryError> {
    let d = humantime::parse_duration(duration)
        .map_err(|e| InventoryError::invalid("for", format!("{duration:?}: {e}")))?;
    if d.is_zero() {
        return Err(InventoryError::invalid("for", "must be longer than zero"));
    }
    let too_long = || InventoryError::invalid("for", "is too long");
    let d = chrono::Duration::from_std(d).map_err(|_| too_long())?;
    start.checked_add_signed(d).ok_or_else(too_long)
}

/// Adds an advisory and returns its id.
pub async fn add(pool: &PgPool, new: &NewAdvisory) -> Result<Uuid, InventoryError> {
    db::insert_advisory(pool, new).await
}

/// Every advisory (only those in force at `active_at`, when given), newest start first.
pub async fn list(
    pool: &PgPool,
    active_at: Option<DateTime<Utc>>,
) -> Result<Vec<Advisory>, InventoryError> {
    let mut all = db::list_advisories(pool).await?;
    if let Some(now) = active_at {
        all.retain(|a| a.spec.active_at(now));
    }
    Ok(all)
}

/// Removes the advisory whose id is `id` or starts with `id` (at least 4 hex digits).
pub async fn remove(pool: &PgPool, id: &str) -> Result<Uuid, InventoryError> {
    db::remove_advisory(pool, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn input() -> AdvisoryInput {
        AdvisoryInput {
            appliance: Some("eu-1".into()),
            risk: 0.9,
            duration: Some("10m".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_window() {
        let a = input().parse(now()).unwrap();
        assert_eq!(a.kind, "operational");
        assert_eq!(a.starts_at, now());
        assert_eq!((a.ends_at.unwrap() - a.starts_at).num_seconds(), 600);
        assert!(a.active_at(now()));
        assert!(!a.active_at(now() + chrono::Duration::seconds(600)));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Edit = Box<dyn Fn(&mut AdvisoryInput)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (Box::new(|i| i.risk = 1.5), "risk", "not a probability"),
            (Box::new(|i| i.risk = f64::NAN), "risk", "not a probability"),
            (
                Box::new(|i| i.kind = Some("weather".into())),
                "kind",
                "unknown advisory kind",
            ),
            (
                Box::new(|i| i.duration = Some("soon".into())),
                "for",
                "soon",
            ),
            (
                Box::new(|i| i.duration = Some("0s".into())),
                "for",
                "longer than zero",
            ),
            (
                Box::new(|i| i.starts = Some("tomorrow".into())),
                "starts",
                "RFC 3339",
            ),
            (
                Box::new(|i| i.note = Some("x".repeat(1001))),
                "note",
                "1000",
            ),
            (
                Box::new(|i| i.region = Some("eu".into())),
                "appliance",
                "exactly one",
            ),
            (
                Box::new(|i| i.appliance = Some("A".into())),
                "appliance",
                "DNS label",
            ),
        ];
        for (edit, field, reason) in cases {
            let mut i = input();
            edit(&mut i);
            let e = i.parse(now()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains(reason), "{e}");
        }
    }
}
