//! An appliance's risk: the model's score combined with the operator's advisories.
//!
//! Rule (noisy-OR): each source is treated as an independent chance of failure, so
//! `risk = 1 - (1 - model) * prod(1 - advisory_i)` over the advisories in force for the
//! appliance (its own and its region's). Consequences: no source can lower the risk another
//! one reports; one advisory of 0.95 gives at least 0.95 whatever the model says; two advisories
//! of 0.5 give 0.75; a missing model score counts as 0; the result stays in [0, 1].
//!
//! A *stale* model score (no scorer confirmed it within `risk.max_score_age`:
//! [`Inputs::stale_scores`]) counts as 1, unknown-high: a silent appliance is never
//! last-known-low. With the decision's rules this moves clients off a stale primary to a shadow
//! whose score is fresh and below the threshold, and never moves anyone *to* a stale appliance
//! (a shadow at 1 is no better than any primary). A missing score stays 0: an appliance nobody
//! ever scored (no scorer deployed) is not judged.
//!
//! A client's *path* risk ([`client_paths`]) is the risk of its own path to each of its two
//! appliances. It is not folded into the appliance's risk (other clients of the appliance do
//! not share the path); the decision combines it per client, again by noisy-OR
//! (`decision::Side::total`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{AdvisoryTarget, ClientInput, Inputs, PathScores};
use crate::domain::{ApplianceId, ClientId, Probability};

/// Combines independent risk sources with noisy-OR.
pub fn combine(
    model: Probability,
    advisories: impl IntoIterator<Item = Probability>,
) -> Probability {
    let survive = advisories
        .into_iter()
        .fold(1.0 - model.get(), |acc, a| acc * (1.0 - a.get()));
    Probability::saturating(1.0 - survive)
}

/// The combined risk of every appliance at `now`.
pub fn appliance_risks(inputs: &Inputs, now: DateTime<Utc>) -> HashMap<ApplianceId, Probability> {
    inputs
        .appliances
        .values()
        .map(|a| {
            let model = if inputs.stale_scores.contains(&a.id) {
                Probability::ONE
            } else {
                inputs
                    .model_scores
                    .get(&a.id)
                    .copied()
                    .unwrap_or(Probability::ZERO)
            };
            let advisories = inputs
                .advisories
                .iter()
                .filter(|adv| adv.active_at(now))
                .filter(|adv| match &adv.target {
                    AdvisoryTarget::Appliance(id) => *id == a.id,
                    AdvisoryTarget::Region(r) => *r == a.region,
                })
                .map(|adv| adv.risk);
            (a.id.clone(), combine(model, advisories))
        })
        .collect()
}

/// The risk of one client's paths ([`client_paths`]). `None`: not measured, or the score is
/// stale (not judged).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClientPaths {
    /// The client's measured path to its primary.
    pub primary: Option<Probability>,
    /// The client's measured path to its shadow.
    pub shadow: Option<Probability>,
    /// When the path to the shadow is not measured: the appliance-to-appliance path between
    /// the primary and the shadow, standing in for it *only* to compare paths before a
    /// path-driven move, never added to the shadow's risk.
    pub shadow_stand_in: Option<Probability>,
}

/// The risk of one client's paths to its primary and to its shadow.
///
/// - To the primary: the score of `primary>client`. Every client has one while it is connected
///   (the primary's agent times each WireGuard handshake; the client helper also reports its
///   probe windows).
/// - To the shadow: the score of `shadow>client` when the shadow measures the client (a client
///   helper's standby session, or a client that was on the shadow).
/// - A stock client never talks to its shadow, so nothing measures that path; then the
///   appliance-to-appliance path between the primary and the shadow (the higher score of the
///   two directions) stands in. A client is assigned a primary near it, so the primary's path
///   to the shadow is the nearest measured approximation of the client's. But it runs through
///   the primary's own links: trouble at the primary shows on it. So it only ever keeps a
///   client from a *path-driven* move (one its path to the primary causes) that would not
///   obviously improve its path; it never makes the shadow look riskier, which would keep
///   clients on a primary that is itself failing.
pub fn client_paths(paths: &PathScores, id: &ClientId, client: &ClientInput) -> ClientPaths {
    let primary = paths.to_client(&client.primary, id);
    let shadow = paths.to_client(&client.shadow, id);
    let shadow_stand_in = if shadow.is_some() {
        None
    } else {
        let there = paths.between(&client.primary, &client.shadow);
        let back = paths.between(&client.shadow, &client.primary);
        match (there, back) {
            (Some(a), Some(b)) => Some(if a > b { a } else { b }),
            (a, b) => a.or(b),
        }
    };
    ClientPaths {
        primary,
        shadow,
        shadow_stand_in,
    }
}

/// The first advisory start or end strictly after `now`: when risks change without any
/// database change.
pub fn next_advisory_edge(inputs: &Inputs, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    inputs
        .advisories
        .iter()
        .flat_map(|a| [Some(a.starts_at), a.ends_at])
        .flatten()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(v: f64) -> Probability {
        Probability::new(v).unwrap()
    }

    #[test]
    fn examples() {
        assert_eq!(combine(p(0.0), []).get(), 0.0);
        assert!((combine(p(0.3), []).get() - 0.3).abs() < 1e-12);
        assert!((combine(p(0.0), [p(0.5), p(0.5)]).get() - 0.75).abs() < 1e-12);
        assert!(combine(p(0.1), [p(0.95)]).get() >= 0.95);
        assert_eq!(combine(p(0.2), [p(1.0)]).get(), 1.0);
    }

    #[test]
    fn client_paths_fall_back_to_the_appliance_path_for_the_shadow_only() {
        let (eu, us) = (
            ApplianceId::new("eu-1").unwrap(),
            ApplianceId::new("us-1").unwrap(),
        );
        let alice = ClientId::new("alice").unwrap();
        let c = ClientInput {
            primary: eu.clone(),
            shadow: us.clone(),
        };
        let paths_of = |primary, shadow, shadow_stand_in| ClientPaths {
            primary,
            shadow,
            shadow_stand_in,
        };
        let mut paths = PathScores::new();
        assert_eq!(client_paths(&paths, &alice, &c), ClientPaths::default());
        // Appliance-to-appliance paths stand in for the shadow side (higher direction), never
        // for the primary side.
        paths.insert_between(eu.clone(), us.clone(), p(0.2));
        paths.insert_between(us.clone(), eu.clone(), p(0.3));
        assert_eq!(
            client_paths(&paths, &alice, &c),
            paths_of(None, None, Some(p(0.3)))
        );
        // Measured paths of the client win; another client's do not count.
        paths.insert_client(eu.clone(), alice.clone(), p(0.8));
        paths.insert_client(us.clone(), ClientId::new("bob").unwrap(), p(0.9));
        assert_eq!(
            client_paths(&paths, &alice, &c),
            paths_of(Some(p(0.8)), None, Some(p(0.3)))
        );
        paths.insert_client(us.clone(), alice.clone(), p(0.1));
        assert_eq!(
            client_paths(&paths, &alice, &c),
            paths_of(Some(p(0.8)), Some(p(0.1)), None)
        );
        // Two scores of one path: the highest counts.
        paths.insert_client(us.clone(), alice.clone(), p(0.05));
        paths.insert_client(eu.clone(), alice.clone(), p(0.9));
        assert_eq!(
            client_paths(&paths, &alice, &c),
            paths_of(Some(p(0.9)), Some(p(0.1)), None)
        );
        assert_eq!(paths.len(), 5);
    }

    proptest! {
        #[test]
        fn never_below_any_source(m in 0.0..=1.0f64, advs in proptest::collection::vec(0.0..=1.0f64, 0..5)) {
            let r = combine(p(m), advs.iter().map(|a| p(*a))).get();
            prop_assert!((0.0..=1.0).contains(&r));
            prop_assert!(r >= m - 1e-12);
            for a in &advs {
                prop_assert!(r >= a - 1e-12);
            }
        }

        #[test]
        fn monotone_in_every_source(m in 0.0..=1.0f64, a in 0.0..=1.0f64, b in 0.0..=1.0f64, d in 0.0..=1.0f64) {
            let base = combine(p(m), [p(a), p(b)]).get();
            let more = combine(p(m), [p((a + d).min(1.0)), p(b)]).get();
            prop_assert!(more >= base - 1e-12);
        }
    }
}
