//! Identifiers of regions, appliances and clients.
//!
//! All three are DNS labels (lowercase letters, digits and inner hyphens, at most 63 characters):
//! client ids become names like `alice.c.vpn.example.net`, and keeping one rule for all ids keeps
//! them safe in DNS, in log lines, in NOTIFY payloads and in URLs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which kind of id was being parsed.
        kind: &'static str,
    },
    /// The string is longer than a DNS label.
    #[error("{kind} id {value:?} is longer than 63 characters")]
    TooLong {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The rejected input.
        value: String,
    },
    /// The string has a character outside `a-z`, `0-9`, `-`, or a hyphen at either end.
    #[error(
        "{kind} id {value:?} must be lowercase letters, digits and inner hyphens (a DNS label)"
    )]
    BadCharacter {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The rejected input.
        value: String,
    },
}

/// Checks the DNS-label rule shared by all ids.
fn check_label(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > 63 {
        return Err(IdError::TooLong {
            kind,
            value: value.chars().take(80).collect(),
        });
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || value.starts_with('-') || value.ends_with('-') {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as an id of this kind.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_label($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_id!(
    /// A region, e.g. `eu` or `us-east`. Each region has its own Postgres.
    RegionId,
    "region"
);
label_id!(
    /// An appliance, e.g. `eu-1`.
    ApplianceId,
    "appliance"
);
label_id!(
    /// A VPN client, e.g. `alice`; also the first label of its per-client DNS name.
    ClientId,
    "client"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "eu-1", "x9", &"a".repeat(63)] {
            assert!(ApplianceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_non_labels() {
        assert_eq!(ClientId::new(""), Err(IdError::Empty { kind: "client" }));
        for bad in [
            "-a",
            "a-",
            "Alice",
            "a.b",
            "a_b",
            "ü",
            " a",
            &"a".repeat(64),
        ] {
            assert!(ClientId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<RegionId>("\"eu\"").is_ok());
        let err = serde_json::from_str::<RegionId>("\"EU\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
}
