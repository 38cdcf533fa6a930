//! The one error type of inventory changes, shared by the CLI and the admin API.
//!
//! Every refusal has a stable machine-readable [`code`](InventoryError::code) (the API's JSON
//! `code`), a [`class`](InventoryError::class) that decides the exit code or HTTP status, and a
//! one-line reason (its `Display`) that the CLI prints and the API returns as `message`.

use crate::domain::ApplianceId;
use crate::store::StoreError;

/// What kind of failure an error is: decides the CLI's exit code and the API's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is malformed or breaks a rule (CLI exit 2, HTTP 400).
    BadInput,
    /// The thing named does not exist (CLI exit 2, HTTP 404).
    NotFound,
    /// The input is fine but clashes with what is stored (CLI exit 2, HTTP 409).
    Conflict,
    /// The system failed (CLI exit 1, HTTP 500 or 503); its text never reaches an API client.
    Internal,
}

/// Why an inventory change or lookup was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A field is malformed or out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, named as in the API's JSON (the CLI's flag without `--`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A referenced appliance does not exist.
    #[error("unknown appliance {0}")]
    UnknownAppliance(String),
    /// The thing to read or change does not exist.
    #[error("no {what} {id}")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// Primary and shadow are the same appliance.
    #[error("primary and shadow must be different appliances (both are {0})")]
    SameAppliance(ApplianceId),
    /// Primary and shadow are in one region, which defeats the shadow.
    #[error(
        "shadow {shadow} is in region {region}, the same as primary {primary}; a shadow must be in another region"
    )]
    SameRegion {
        /// Primary appliance.
        primary: ApplianceId,
        /// Shadow appliance.
        shadow: ApplianceId,
        /// Their region.
        region: String,
    },
    /// A unique value is taken.
    #[error("{what} {value} is already in use")]
    Duplicate {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// An appliance still has clients.
    #[error(
        "appliance {appliance} is primary or shadow of {count} client(s) ({examples}); move or remove them first"
    )]
    InUse {
        /// The appliance.
        appliance: ApplianceId,
        /// How many clients reference it.
        count: i64,
        /// Some of their ids.
        examples: String,
    },
    /// An id prefix matches several rows.
    #[error("{what} id {prefix} is ambiguous; give more characters")]
    Ambiguous {
        /// Kind of thing.
        what: &'static str,
        /// The prefix given.
        prefix: String,
    },
    /// No free peer index is left (the 24-bit space is nearly full).
    #[error("no free peer index found; the 24-bit index space is nearly full")]
    Exhausted,
    /// The database belongs to another region than the row (replication is set up): the row
    /// must be written in its own region.
    #[error("{0}")]
    ForeignRegion(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InventoryError {
    /// A malformed or out-of-range `field`.
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            field,
            reason: reason.to_string(),
        }
    }

    /// Whether the caller's input was at fault (CLI exit code 2) rather than the system (1).
    pub fn is_input_error(&self) -> bool {
        self.class() != ErrorClass::Internal
    }

    /// The kind of failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Invalid { .. }
            | Self::UnknownAppliance(_)
            | Self::SameAppliance(_)
            | Self::SameRegion { .. }
            | Self::Ambiguous { .. } => ErrorClass::BadInput,
            Self::NotFound { .. } => ErrorClass::NotFound,
            Self::Duplicate { .. }
            | Self::InUse { .. }
            | Self::Exhausted
            | Self::ForeignRegion(_) => ErrorClass::Conflict,
            Self::Store(_) => ErrorClass::Internal,
        }
    }

    /// Stable machine-readable code (the API's `code`; never changes meaning).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_value",
            Self::UnknownAppliance(_) => "unknown_appliance",
            Self::NotFound { .. } => "not_found",
            Self::SameAppliance(_) => "same_appliance",
            Self::SameRegion { .. } => "same_region",
            Self::Duplicate { .. } => "duplicate",
            Self::InUse { .. } => "in_use",
            Self::Ambiguous { .. } => "ambiguous_id",
            Self::Exhausted => "peer_index_exhausted",
            Self::ForeignRegion(_) => "foreign_region",
            Self::Store(_) => "internal",
        }
    }

    /// The field at fault, for [`Invalid`](Self::Invalid).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The one-line reason as the CLI prints it: a field's name is spelt as its flag.
    pub fn cli_message(&self) -> String {
        match self {
            Self::Invalid { field, reason } => format!("--{}: {reason}", field.replace('_', "-")),
            other => other.to_string(),
        }
    }
}

impl From<sqlx::Error> for InventoryError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some(crate::store::replication::OWNERSHIP_SQLSTATE) =>
            {
                Self::ForeignRegion(db.message().to_owned())
            }
            _ => Self::Store(StoreError::Query(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_codes() {
        let e = InventoryError::invalid("tunnel_ip", "invalid tunnel ip \"x\"");
        assert_eq!(e.class(), ErrorClass::BadInput);
        assert_eq!(e.code(), "invalid_value");
        assert_eq!(e.field(), Some("tunnel_ip"));
        assert_eq!(e.to_string(), "tunnel_ip: invalid tunnel ip \"x\"");
        assert_eq!(e.cli_message(), "--tunnel-ip: invalid tunnel ip \"x\"");
        let nf = InventoryError::NotFound {
            what: "client",
            id: "bob".into(),
        };
        assert_eq!(nf.class(), ErrorClass::NotFound);
        assert_eq!(nf.cli_message(), "no client bob");
        assert!(!InventoryError::Store(StoreError::Task("x".into())).is_input_error());
    }
}
