//! Session state: what a shadow appliance needs to take a client's session over (the seed's
//! `SessionState`). Control state only: WireGuard's session keys and nonce counters never leave
//! the appliance that holds them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::ids::{ApplianceId, ClientId, RegionId};

/// Why a session value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A peer index outside 1..=2^24-1.
    #[error("peer index {0} is outside 1..=16777215 (24 bits)")]
    PeerIndex(i64),
    /// A negative epoch or counter read from storage.
    #[error("{field} must not be negative (got {value})")]
    Negative {
        /// Which field.
        field: &'static str,
        /// The rejected value.
        value: i64,
    },
    /// An unknown role or appliance state.
    #[error("unknown {what} {value:?}")]
    UnknownVariant {
        /// Which enum.
        what: &'static str,
        /// The rejected text.
        value: String,
    },
    /// Endpoint ip without port or the other way round, or a port out of range.
    #[error("invalid client endpoint")]
    Endpoint,
}

/// The stable 24-bit index of a client, the same on every appliance. boringtun keeps
/// `index << 8` as its receiver index, so the upper 24 bits of a receiver index on the wire
/// identify the client on any appliance of its shadow group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PeerIndex(u32);

impl PeerIndex {
    /// Largest valid index.
    pub const MAX: u32 = (1 << 24) - 1;

    /// Validates `value` (0 is reserved so that "unset" can never collide with a client).
    pub fn new(value: i64) -> Result<Self, SessionError> {
        if (1..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u32))
        } else {
            Err(SessionError::PeerIndex(value))
        }
    }

    /// The index.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The peer index a receiver index on the wire belongs to.
    pub fn from_receiver_index(receiver: u32) -> Option<Self> {
        Self::new(i64::from(receiver >> 8)).ok()
    }
}

impl fmt::Display for PeerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for PeerIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Fencing token of a session: a takeover increments it, and a holder that sees a higher epoch
/// than its own stops serving the session.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch from its stored form.
    pub fn from_db(value: i64) -> Result<Self, SessionError> {
        u64::try_from(value)
            .map(Self)
            .map_err(|_| SessionError::Negative {
                field: "epoch",
                value,
            })
    }

    /// The epoch after a takeover.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The stored form (Postgres has no unsigned 64-bit type).
    pub fn to_db(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The stored and displayed form.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = SessionError;
            fn from_str(s: &str) -> Result<Self, SessionError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(SessionError::UnknownVariant { what: $what, value: other.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Which part an appliance plays for a session.
    SessionRole, "session role", {
        /// Carries the client's traffic.
        Primary = "primary",
        /// Holds the session ready to take over.
        Shadow = "shadow",
    }
);

text_enum!(
    /// Operational state of an appliance, set by operators or by failure detection.
    ApplianceState, "appliance state", {
        /// Serving clients.
        Active = "active",
        /// Serving existing sessions, receiving no new steering.
        Draining = "draining",
        /// Not serving.
        Down = "down",
    }
);

/// Traffic counters at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionCounters {
    /// Packets sent to the client.
    pub tx_packets: u64,
    /// Packets received from the client.
    pub rx_packets: u64,
    /// Bytes sent to the client.
    pub tx_bytes: u64,
    /// Bytes received from the client.
    pub rx_bytes: u64,
}

/// The shadowed state of one client's session on one appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// Region that owns this row (the holder's region).
    pub region: RegionId,
    /// The client.
    pub client: ClientId,
    /// The appliance holding the session.
    pub holder: ApplianceId,
    /// What the holder is for this session.
    pub role: SessionRole,
    /// Fencing token.
    pub epoch: Epoch,
    /// The client's last authenticated address (the "port data" a shadow uses to reach it).
    pub endpoint: Option<SocketAddr>,
    /// The client's stable index.
    pub peer_index: PeerIndex,
    /// The receiver index of the holder's current WireGuard session.
    pub receiver_index: Option<u32>,
    /// When the last handshake completed.
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Counters at the last checkpoint.
    pub counters: SessionCounters,
    /// Bumped on every recorded change.
    pub version: u64,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_index_range() {
        assert!(PeerIndex::new(0).is_err());
        assert!(PeerIndex::new(1).is_ok());
        assert!(PeerIndex::new(16_777_215).is_ok());
        assert!(PeerIndex::new(16_777_216).is_err());
        assert_eq!(
            PeerIndex::from_receiver_index((42 << 8) | 3),
            Some(PeerIndex::new(42).unwrap())
        );
    }

    #[test]
    fn epoch_orders_and_round_trips() {
        let e = Epoch::from_db(7).unwrap();
        assert!(e.next() > e);
        assert_eq!(Epoch::from_db(e.to_db()).unwrap(), e);
        assert!(Epoch::from_db(-1).is_err());
    }

    #[test]
    fn text_enums_round_trip() {
        for s in ["active", "draining", "down"] {
            assert_eq!(s.parse::<ApplianceState>().unwrap().as_str(), s);
        }
        assert!("up".parse::<ApplianceState>().is_err());
    }
}
