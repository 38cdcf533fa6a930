//! Appliance health and path measurements: the telemetry the risk model learns from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{ApplianceId, ClientId, RegionId};

super::risk::unit_interval!(
    /// A share in [0, 1], e.g. cpu or memory use.
    Fraction
);

/// One health report of one appliance (the seed's `ApplianceHealth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplianceHealth {
    /// Region owning the appliance.
    pub region: RegionId,
    /// The appliance reporting.
    pub appliance: ApplianceId,
    /// When the measurement was taken.
    pub ts: DateTime<Utc>,
    /// CPU use.
    pub cpu: Fraction,
    /// Memory use.
    pub mem: Fraction,
    /// Bytes per second received, as bits per second.
    pub bw_in_bps: u64,
    /// Bytes per second sent, as bits per second.
    pub bw_out_bps: u64,
    /// Share of the appliance's capacity in use.
    pub bw_util: Fraction,
    /// Active WireGuard sessions.
    pub sessions: u32,
    /// Failed handshakes since the previous report.
    pub handshake_failures: u32,
    /// Packets dropped since the previous report.
    pub packets_dropped: u64,
}

/// The far end of a measured path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum ProbeTarget {
    /// Another appliance (agent-to-agent probes).
    Appliance(ApplianceId),
    /// A client (handshake timing, client helper reports).
    Client(ClientId),
}

impl ProbeTarget {
    /// The `dst_kind` column value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Appliance(_) => "appliance",
            Self::Client(_) => "client",
        }
    }

    /// The `dst` column value.
    pub fn id(&self) -> &str {
        match self {
            Self::Appliance(a) => a.as_str(),
            Self::Client(c) => c.as_str(),
        }
    }
}

/// A summary of path measurements over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathProbe {
    /// Region of the measuring appliance.
    pub region: RegionId,
    /// The measuring appliance.
    pub src: ApplianceId,
    /// What was measured to.
    pub dst: ProbeTarget,
    /// End of the window.
    pub ts: DateTime<Utc>,
    /// Mean round-trip time; `None` when every probe was lost.
    pub rtt_ms: Option<f64>,
    /// Mean absolute difference between consecutive rtts.
    pub jitter_ms: Option<f64>,
    /// Share of probes lost.
    pub loss: Fraction,
    /// Probes sent in the window.
    pub samples: u32,
}
