//! Steering: which appliance each client (and the service name) should use. Pure code.
//!
//! Nothing here opens a socket, reads the clock or touches the database: the shell passes the
//! inputs (appliances, clients, model scores, advisories: [`Inputs`]) and the time, and gets back
//! assignments, the changes to audit, and when to ask again ([`Evaluation`]).
//!
//! - [`risk`]: an appliance's risk from the model score and the active advisories.
//! - [`decision`]: one client's choice between primary and shadow, with hysteresis, hold-down
//!   and dynamic weighting.
//! - [`engine`]: the per-client state that makes hold-down possible, over all clients.
//! - [`service`]: the weighted choice behind the service name (`gw.<zone>`).
//!
//! Path risk (`risk_scores` rows of kind `path`) joins each client's decision: the risk of the
//! client's own path to its primary and to its shadow ([`PathScores`], [`risk::client_paths`]).
//! Deliberately left out: session holders (`session_state`).

pub mod decision;
pub mod engine;
pub mod risk;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::SteeringSection;
use crate::domain::{ApplianceId, ApplianceState, ClientId, Probability, RegionId};

pub use decision::{Choice, Reason, Role};
pub use engine::{AnswerChange, Engine, Evaluation};

/// Why a steering policy is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A bound is outside [0, 1] or the bounds are out of order.
    #[error("invalid steering policy: {0}")]
    Invalid(String),
}

/// The thresholds of the decision, validated: all probabilities in [0, 1],
/// `hysteresis <= threshold`, `weight_low <= weight_high`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    threshold: f64,
    hysteresis: f64,
    hold_down: chrono::Duration,
    weight_low: f64,
    weight_high: f64,
}

impl Policy {
    /// Validates the bounds.
    pub fn new(
        threshold: f64,
        hysteresis: f64,
        hold_down: std::time::Duration,
        weight_low: f64,
        weight_high: f64,
    ) -> Result<Self, PolicyError> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        if ![threshold, hysteresis, weight_low, weight_high]
            .into_iter()
            .all(unit)
        {
            return Err(PolicyError::Invalid("bounds must be in [0, 1]".into()));
        }
        if hysteresis > threshold {
            return Err(PolicyError::Invalid(
                "hysteresis must not exceed the threshold".into(),
            ));
        }
        if weight_low > weight_high {
            return Err(PolicyError::Invalid(
                "weight_low must not exceed weight_high".into(),
            ));
        }
        let hold_down = chrono::Duration::from_std(hold_down)
            .map_err(|_| PolicyError::Invalid("hold-down is too long".into()))?;
        Ok(Self {
            threshold,
            hysteresis,
            hold_down,
            weight_low,
            weight_high,
        })
    }

    /// The policy of a `[steering]` section, its unset thresholds following `model_threshold`
    /// (the loaded risk model's operating threshold, if any).
    pub fn from_config(
        s: &SteeringSection,
        model_threshold: Option<f64>,
    ) -> Result<Self, PolicyError> {
        let t = s.resolve(model_threshold);
        Self::new(
            t.threshold,
            t.hysteresis,
            s.hold_down.0,
            t.weight_low,
            t.weight_high,
        )
    }

    /// Risk above which clients leave their primary.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Width of the band below the trigger point a risk must fall through before clients return.
    pub fn hysteresis(&self) -> f64 {
        self.hysteresis
    }

    /// Minimum time between two changes of one client's answer.
    pub fn hold_down(&self) -> chrono::Duration {
        self.hold_down
    }

    /// Risk at which dynamic weighting starts moving clients.
    pub fn weight_low(&self) -> f64 {
        self.weight_low
    }

    /// Risk at which dynamic weighting has moved every client.
    pub fn weight_high(&self) -> f64 {
        self.weight_high
    }
}

/// An appliance as steering sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplianceInput {
    /// Its id.
    pub id: ApplianceId,
    /// Its region (advisories may target a whole region).
    pub region: RegionId,
    /// Its WireGuard endpoint: the address DNS answers with and the port SRV gives.
    pub endpoint: SocketAddr,
    /// Operator state: only `active` appliances are ever chosen.
    pub state: ApplianceState,
    /// Relative capacity, weighting the service name.
    pub capacity: u32,
}

/// A client as steering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInput {
    /// Its primary appliance.
    pub primary: ApplianceId,
    /// Its shadow appliance.
    pub shadow: ApplianceId,
}

/// The appliance a client helper should keep a standby session with (answered as
/// `standby.<client>.c.<zone>`): the other appliance of the client's pair than the one it is
/// steered to, if that one is active. Nothing when no appliance is steered to (there is no
/// pair to move within) or the other one is draining, down or unknown.
pub fn standby<'a>(
    client: &'a ClientInput,
    assigned: Option<&ApplianceId>,
    appliances: &BTreeMap<ApplianceId, ApplianceInput>,
) -> Option<&'a ApplianceId> {
    let assigned = assigned?;
    let other = if *assigned == client.primary {
        &client.shadow
    } else if *assigned == client.shadow {
        &client.primary
    } else {
        return None;
    };
    appliances
        .get(other)
        .filter(|a| a.state == ApplianceState::Active)
        .map(|_| other)
}

/// What an advisory applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvisoryTarget {
    /// One appliance.
    Appliance(ApplianceId),
    /// Every appliance of a region.
    Region(RegionId),
}

/// An operator advisory: external risk within a time window.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvisoryInput {
    /// What it applies to.
    pub target: AdvisoryTarget,
    /// Its risk while in force.
    pub risk: Probability,
    /// Start of the window.
    pub starts_at: DateTime<Utc>,
    /// End of the window; open-ended when absent.
    pub ends_at: Option<DateTime<Utc>>,
}

impl AdvisoryInput {
    /// Whether it is in force at `now` (start inclusive, end exclusive).
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && self.ends_at.is_none_or(|end| now < end)
    }
}

/// A client's last recorded answer (from the audit table), so that a restarted server keeps
/// the assignments and hold-down times it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastDecision {
    /// The appliance it was steered to (`None`: no appliance could be chosen).
    pub appliance: Option<ApplianceId>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Everything the steering decision reads, as loaded from the database. Tables are shared
/// (`Arc`) so that a change to one table does not copy the others.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Appliances by id.
    pub appliances: Arc<BTreeMap<ApplianceId, ApplianceInput>>,
    /// Clients by id.
    pub clients: Arc<BTreeMap<ClientId, ClientInput>>,
    /// The model's score per appliance; a missing score counts as 0.
    pub model_scores: Arc<HashMap<ApplianceId, Probability>>,
    /// Appliances whose stored score no scorer has confirmed within `risk.max_score_age`: their
    /// score is unknown and counts as 1 ([`risk::appliance_risks`]), whatever it last said.
    pub stale_scores: Arc<std::collections::BTreeSet<ApplianceId>>,
    /// Fresh path scores (see [`PathScores`] for why a stale one is left out).
    pub path_scores: Arc<PathScores>,
    /// Advisories that are in force or start later.
    pub advisories: Arc<Vec<AdvisoryInput>>,
    /// Last recorded decision per client, used only for clients the engine has not seen.
    pub history: Arc<HashMap<ClientId, PastDecision>>,
}

/// The path scores steering reads: the live scorer's `risk_scores` rows of kind `path`, whose
/// subject is `src>dst` as the measuring agent wrote the probe (`path_probes.src`, `.dst`).
///
/// - `appliance>client` ([`to_client`](Self::to_client)): the client's own path, measured by
///   the appliance's agent: the WireGuard handshake round trip it sees (every client, stock ones
///   included, at each handshake) and the client helper's probe-window reports sent through the
///   tunnel (every `probe.report_interval`).
/// - `appliance>appliance` ([`between`](Self::between)): the agents' probes to each other.
///
/// Only *fresh* scores are here: the loader leaves out every score no scorer confirmed within
/// `risk.max_score_age`. A stale path score is not unknown-high the way a stale appliance score
/// is ([`Inputs::stale_scores`]): a client's path probes stop whenever the client goes away
/// (disconnects, roams to the shadow, ends its session), which says nothing about the path, and
/// counting that silence as risk 1 would move idle clients for no reason. A missing path score
/// counts as no path risk; the client is then steered on appliance risk alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathScores {
    /// Per client: (measuring appliance, score) of each `appliance>client` path.
    clients: HashMap<ClientId, Vec<(ApplianceId, Probability)>>,
    /// Per source appliance: (destination appliance, score).
    appliances: HashMap<ApplianceId, Vec<(ApplianceId, Probability)>>,
}

impl PathScores {
    /// No scores.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the score of `appliance>client`; of several scores of one path (several regions
    /// scoring it) the highest counts.
    pub fn insert_client(&mut self, appliance: ApplianceId, client: ClientId, score: Probability) {
        Self::insert(self.clients.entry(client).or_default(), appliance, score);
    }

    /// Records the score of `src>dst` between two appliances; the highest counts.
    pub fn insert_between(&mut self, src: ApplianceId, dst: ApplianceId, score: Probability) {
        Self::insert(self.appliances.entry(src).or_default(), dst, score);
    }

    fn insert(list: &mut Vec<(ApplianceId, Probability)>, id: ApplianceId, score: Probability) {
        match list.iter_mut().find(|(a, _)| *a == id) {
            Some((_, p)) if score > *p => *p = score,
            Some(_) => {}
            None => list.push((id, score)),
        }
    }

    /// The score of the path between `appliance` and `client`, if fresh.
    pub fn to_client(&self, appliance: &ApplianceId, client: &ClientId) -> Option<Probability> {
        Self::find(self.clients.get(client)?, appliance)
    }

    /// The score of the path `src>dst` between two appliances, if fresh.
    pub fn between(&self, src: &ApplianceId, dst: &ApplianceId) -> Option<Probability> {
        Self::find(self.appliances.get(src)?, dst)
    }

    fn find(list: &[(ApplianceId, Probability)], id: &ApplianceId) -> Option<Probability> {
        list.iter().find(|(a, _)| a == id).map(|(_, p)| *p)
    }

    /// Number of paths scored.
    pub fn len(&self) -> usize {
        self.clients
            .values()
            .chain(self.appliances.values())
            .map(Vec::len)
            .sum()
    }

    /// Whether no path is scored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod standby_tests {
    use super::*;

    fn appliance(id: &str, state: ApplianceState) -> (ApplianceId, ApplianceInput) {
        let id = ApplianceId::new(id).unwrap();
        let a = ApplianceInput {
            id: id.clone(),
            region: RegionId::new("eu").unwrap(),
            endpoint: "192.0.2.1:51820".parse().unwrap(),
            state,
            capacity: 100,
        };
        (id, a)
    }

    #[test]
    fn standby_is_the_other_active_appliance_of_the_pair() {
        let client = ClientInput {
            primary: ApplianceId::new("eu-1").unwrap(),
            shadow: ApplianceId::new("us-1").unwrap(),
        };
        let mut all: BTreeMap<_, _> = [
            appliance("eu-1", ApplianceState::Active),
            appliance("us-1", ApplianceState::Active),
            appliance("ap-1", ApplianceState::Active),
        ]
        .into_iter()
        .collect();
        let (p, s) = (&client.primary, &client.shadow);
        assert_eq!(standby(&client, Some(p), &all), Some(s));
        assert_eq!(standby(&client, Some(s), &all), Some(p));
        // No appliance steered to, or one outside the pair: no standby.
        assert_eq!(standby(&client, None, &all), None);
        let other = ApplianceId::new("ap-1").unwrap();
        assert_eq!(standby(&client, Some(&other), &all), None);
        // Draining, down or unknown: never a standby.
        for state in [ApplianceState::Draining, ApplianceState::Down] {
            all.insert(s.clone(), appliance("us-1", state).1);
            assert_eq!(standby(&client, Some(p), &all), None);
        }
        all.remove(s);
        assert_eq!(standby(&client, Some(p), &all), None);
    }
}
