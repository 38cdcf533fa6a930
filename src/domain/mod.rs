//! Value types shared by every part of shadowsteer.
//!
//! Each type validates on construction, so code that holds one never re-checks it: an
//! [`ApplianceId`] is a valid DNS label, a [`Probability`] is in [0, 1], a [`PeerIndex`] fits in
//! 24 bits. Conversions from database rows go through the same constructors.

mod health;
mod ids;
mod keys;
mod risk;
mod session;

pub use health::{ApplianceHealth, Fraction, PathProbe, ProbeTarget};
pub use ids::{ApplianceId, ClientId, IdError, RegionId};
pub use keys::{KeyError, PublicKey, SecretKey};
pub use risk::{Probability, RiskError, RiskScore};
pub use session::{
    ApplianceState, Epoch, PeerIndex, SessionCounters, SessionError, SessionRole, SessionState,
};
