//! Operator-recorded failures: incidents written to `failure_events`, the table `train
//! --from-db` reads its labels from (issue 11, "labels from the running fleet").
//!
//! The row belongs to the appliance's region, like an advisory on it. Left out on purpose:
//! editing or deleting a recorded failure (a wrong label is fixed in SQL, deliberately), and
//! checking that an incident overlaps no other recorded one (two observers of one outage may
//! both record it; training merges overlapping down periods anyway).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::InventoryError;
use super::advisory::MAX_NOTE;
use super::appliance::parse_id;
use crate::domain::ApplianceId;
use crate::store::inventory as db;

/// A new failure before validation: the flags of `failure add`.
#[derive(Debug, Clone, Default)]
pub struct FailureInput {
    /// The appliance that failed.
    pub appliance: String,
    /// First second it was down (RFC 3339).
    pub starts: String,
    /// First second it was up again (RFC 3339); none while it is still down.
    pub ends: Option<String>,
    /// What kind of failure (lowercase letters, digits, `_` and `-`), e.g. `power_loss`.
    pub kind: String,
    /// Whether it had visible precursors, when the operator knows.
    pub precursor: Option<bool>,
    /// Free text (at most 1000 characters).
    pub note: String,
}

/// A validated failure, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFailure {
    /// The appliance.
    pub appliance: ApplianceId,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, if it is over.
    pub ended_at: Option<DateTime<Utc>>,
    /// Kind.
    pub kind: String,
    /// Whether it had precursors, when known.
    pub precursor: Option<bool>,
    /// Note.
    pub note: String,
}

/// A stored failure event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureRecord {
    /// The region that owns the row (the one that recorded it).
    pub region: String,
    /// The appliance.
    pub appliance: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End; `None` while open.
    pub ended_at: Option<DateTime<Utc>>,
    /// Kind.
    pub kind: String,
    /// Whether it had precursors, when known.
    pub precursor: Option<bool>,
    /// Note.
    pub note: String,
}

/// Which failures to list: those of `appliance` (all when `None`) that overlap `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureFilter {
    /// Only this appliance.
    pub appliance: Option<ApplianceId>,
    /// Only failures still running at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only failures that started before this time.
    pub to: Option<DateTime<Utc>>,
}

/// Parses an RFC 3339 time given as `field`.
pub fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, InventoryError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            InventoryError::invalid(
                field,
                format!("{text:?}: not an RFC 3339 time such as 2026-12-01T18:00:00Z ({e})"),
            )
        })
}

/// The same rule as the failures files' `kind` column, so a recorded kind round-trips
/// through `telemetry export` and `train`.
fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl FailureInput {
    /// Validates the input. `now` bounds the times: an incident is recorded after it began.
    pub fn parse(&self, now: DateTime<Utc>) -> Result<NewFailure, InventoryError> {
        let appliance = parse_id("appliance", &self.appliance)?;
        let started_at = parse_time("starts", &self.starts)?;
        if started_at > now {
            return Err(InventoryError::invalid(
                "starts",
                format!("{} is in the future", self.starts),
            ));
        }
        let ended_at = match &self.ends {
            Some(e) => {
                let end = parse_time("ends", e)?;
                // Down seconds are [start, end): an end at or before the start is no failure.
                if end <= started_at {
                    return Err(InventoryError::invalid(
                        "ends",
                        format!("{e} is not after --starts {}", self.starts),
                    ));
                }
                Some(end)
            }
            None => None,
        };
        if !is_kind(&self.kind) {
            return Err(InventoryError::invalid(
                "kind",
                format!(
                    "{:?} is not a kind (1 to 64 lowercase letters, digits, _ and -)",
                    self.kind
                ),
            ));
        }
        if self.note.chars().count() > MAX_NOTE {
            return Err(InventoryError::invalid(
                "note",
                "note is longer than 1000 characters",
            ));
        }
        if self
            .note
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(InventoryError::invalid(
                "note",
                "note must not contain control characters",
            ));
        }
        Ok(NewFailure {
            appliance,
            started_at,
            ended_at,
            kind: self.kind.clone(),
            precursor: self.precursor,
            note: self.note.clone(),
        })
    }
}

/// Records a failure; the appliance must exist. Returns the region that owns the row.
pub async fn add(pool: &PgPool, new: &NewFailure) -> Result<String, InventoryError> {
    db::insert_failure(pool, new).await
}

/// Failures matching `filter`, oldest first.
pub async fn list(
    pool: &PgPool,
    filter: &FailureFilter,
) -> Result<Vec<FailureRecord>, InventoryError> {
    db::list_failures(pool, filter).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_time("x", "2026-12-02T12:00:00Z").unwrap()
    }

    fn good() -> FailureInput {
        FailureInput {
            appliance: "eu-1".into(),
            starts: "2026-12-02T10:00:00Z".into(),
            ends: Some("2026-12-02T10:05:00+00:00".into()),
            kind: "power_loss".into(),
            precursor: Some(false),
            note: "PDU tripped".into(),
        }
    }

    #[test]
    fn good_input_parses() {
        let f = good().parse(now()).unwrap();
        assert_eq!(f.appliance.as_str(), "eu-1");
        assert_eq!((f.ended_at.unwrap() - f.started_at).num_seconds(), 300);
        let open = FailureInput {
            ends: None,
            ..good()
        };
        assert_eq!(open.parse(now()).unwrap().ended_at, None);
    }

    #[test]
    fn bad_input_names_its_flag() {
        let cases: Vec<(FailureInput, &str)> = vec![
            (
                FailureInput {
                    appliance: "EU 1!".into(),
                    ..good()
                },
                "--appliance",
            ),
            (
                FailureInput {
                    starts: "yesterday".into(),
                    ..good()
                },
                "--starts",
            ),
            (
                FailureInput {
                    starts: "2026-12-03T00:00:00Z".into(),
                    ends: None,
                    ..good()
                },
                "--starts",
            ),
            (
                FailureInput {
                    ends: Some("2026-12-02T09:00:00Z".into()),
                    ..good()
                },
                "--ends",
            ),
            (
                FailureInput {
                    ends: Some("2026-12-02T10:00:00Z".into()),
                    ..good()
                },
                "--ends",
            ),
            (
                FailureInput {
                    ends: Some("10:05".into()),
                    ..good()
                },
                "--ends",
            ),
            (
                FailureInput {
                    kind: "Power Loss".into(),
                    ..good()
                },
                "--kind",
            ),
            (
                FailureInput {
                    kind: String::new(),
                    ..good()
                },
                "--kind",
            ),
            (
                FailureInput {
                    note: "a\0b".into(),
                    ..good()
                },
                "--note",
            ),
            (
                FailureInput {
                    note: "x".repeat(1001),
                    ..good()
                },
                "--note",
            ),
        ];
        for (input, flag) in cases {
            let e = input.parse(now()).unwrap_err();
            assert!(e.is_input_error(), "{e}");
            let msg = e.cli_message();
            assert!(msg.starts_with(flag), "{msg} should name {flag}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }
}
