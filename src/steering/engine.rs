//! The steering state over all clients: where each one is and since when, so that hold-down
//! and hysteresis work across evaluations.
//!
//! Drive it with [`Engine::evaluate`] whenever the inputs change, and again at
//! [`Evaluation::next_wakeup`] (a hold-down expiring or an advisory starting or ending changes
//! answers without any database change).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::decision::{self, Current, Reason, Role, Side};
use super::{ClientInput, Inputs, PastDecision, Policy, risk};
use crate::domain::{ApplianceId, ClientId, Probability};

/// One client's steering state.
#[derive(Debug, Clone)]
struct ClientState {
    /// Stable position in [0, 1), computed once.
    position: f64,
    /// `None` until the first decision (then `Some(None)` means "no appliance").
    current: Option<Option<ApplianceId>>,
    /// When the answer last changed; `None` if it never did.
    since: Option<DateTime<Utc>>,
    /// What the last decision saw, so an unchanged client is not decided again: its primary
    /// and shadow (appliances and their state and risk) and the hold-down it reported.
    seen: Option<Seen>,
    /// While the client is on its shadow: the last fresh risk of its path to the primary. It
    /// stands for that path when no fresh score is left (see [`Engine::evaluate`]).
    left_path: Option<Probability>,
}

impl ClientState {
    /// A client the engine has not decided yet, starting from its `past` answer if the
    /// database has one.
    fn first_seen(id: &ClientId, past: Option<&PastDecision>) -> Self {
        Self {
            position: decision::position(id),
            current: past.map(|p| p.appliance.clone()),
            since: past.map(|p| p.at),
            seen: None,
            left_path: None,
        }
    }

    /// The current answer as the decision sees it: an answer naming an appliance that is no
    /// longer this client's primary or shadow (the client was re-assigned) counts as no answer
    /// yet.
    fn current_answer(&self, client: &ClientInput) -> Option<Current> {
        let role = match &self.current {
            None => return None,
            Some(None) => None,
            Some(Some(a)) if *a == client.primary => Some(Role::Primary),
            Some(Some(a)) if *a == client.shadow => Some(Role::Shadow),
            Some(Some(_)) => return None,
        };
        Some(Current {
            role,
            since: self.since,
        })
    }

    /// Answers `to` from `now` on; returns the previous answer. The first answer for a client
    /// starts no hold-down: a brand-new client may move at once.
    fn answer(&mut self, to: Option<ApplianceId>, now: DateTime<Utc>) -> Option<ApplianceId> {
        let from = self.current.clone().flatten();
        if self.current.is_some() {
            self.since = Some(now);
        }
        self.current = Some(to);
        from
    }
}

/// The client table of an evaluation's inputs: each client's primary and shadow.
type ClientPairs = std::sync::Arc<std::collections::BTreeMap<ClientId, ClientInput>>;

/// Each appliance's state and combined risk, as a side of a decision (no path yet).
fn appliance_sides<'a>(
    inputs: &'a Inputs,
    risks: &HashMap<ApplianceId, Probability>,
) -> HashMap<&'a ApplianceId, Side> {
    inputs
        .appliances
        .values()
        .map(|a| {
            let side = Side {
                state: Some(a.state),
                risk: risks.get(&a.id).copied().unwrap_or(Probability::ZERO),
                ..Side::UNKNOWN
            };
            (&a.id, side)
        })
        .collect()
}

/// The inputs of a client's last decision (its primary and shadow ids are compared through
/// the client table instead, so that this holds no allocation).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    sides: (Side, Side),
    held_until: Option<DateTime<Utc>>,
}

/// A change of one client's answer, for the audit table.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerChange {
    /// The client.
    pub client: ClientId,
    /// The previous answer (`None`: first answer, or none was possible).
    pub from: Option<ApplianceId>,
    /// The new answer (`None`: neither appliance can be chosen).
    pub to: Option<ApplianceId>,
    /// Why.
    pub reason: Reason,
    /// The primary's risk for this client at the time: the appliance's combined risk with
    /// the client's path to it ([`Side::total`]).
    pub primary_risk: Probability,
    /// The shadow's risk for this client at the time, likewise.
    pub shadow_risk: Probability,
    /// When.
    pub at: DateTime<Utc>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Combined risk per appliance.
    pub risks: HashMap<ApplianceId, Probability>,
    /// Answers that changed.
    pub changes: Vec<AnswerChange>,
    /// When to evaluate again although no input changed.
    pub next_wakeup: Option<DateTime<Utc>>,
}

/// Per-client steering state.
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
    clients: HashMap<ClientId, ClientState>,
    /// The client table of the last evaluation: when the next one shares it, no client was
    /// added or removed.
    last_clients: Option<ClientPairs>,
}

impl Engine {
    /// An engine that has decided nothing yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            clients: HashMap::new(),
            last_clients: None,
        }
    }

    /// The thresholds in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Replaces the thresholds (a reloaded model with another operating threshold); what each
    /// client has been told, its hold-down and hysteresis state are kept.
    pub fn set_policy(&mut self, policy: Policy) {
        if policy != self.policy {
            self.policy = policy;
            // Every remembered decision was made against the old thresholds.
            for state in self.clients.values_mut() {
                state.seen = None;
            }
        }
    }

    /// Decides every client of `inputs` at `now`; forgets clients that are gone.
    pub fn evaluate(&mut self, inputs: &Inputs, now: DateTime<Utc>) -> Evaluation {
        let risks = risk::appliance_risks(inputs, now);
        let mut changes = Vec::new();
        let mut next_wakeup = risk::next_advisory_edge(inputs, now);
        let mut wake_at = |until: DateTime<Utc>| {
            next_wakeup = Some(next_wakeup.map_or(until, |w| w.min(until)));
        };
        let sides = appliance_sides(inputs, &risks);
        let side = |id: &ApplianceId| sides.get(id).copied().unwrap_or(Side::UNKNOWN);
        let previous = self.follow_client_table(inputs);
        for (id, client) in inputs.clients.iter() {
            // No `entry`: it would clone every client's id on every evaluation.
            if !self.clients.contains_key(id) {
                let first = ClientState::first_seen(id, inputs.history.get(id));
                self.clients.insert(id.clone(), first);
            }
            let Some(state) = self.clients.get_mut(id) else {
                continue;
            };
            let paths = risk::client_paths(&inputs.path_scores, id, client);
            // A client on its shadow no longer sends its primary what measures their path
            // (probe reports go to the appliance it uses; a stock client's handshakes too), so
            // that path's score goes stale and is left out. Returning on that silence would
            // bring the client back to the path it left, again and again: while on the shadow
            // the last fresh score stands until a fresh one (e.g. from the helper's standby
            // handshakes with the primary) replaces it.
            let on_shadow = state.current.as_ref().and_then(Option::as_ref) == Some(&client.shadow);
            let primary_path = match paths.primary {
                Some(p) => Some(p),
                None if on_shadow => state.left_path,
                None => None,
            };
            let primary = Side {
                path: primary_path,
                ..side(&client.primary)
            };
            let shadow = Side {
                path: paths.shadow,
                path_stand_in: paths.shadow_stand_in,
                ..side(&client.shadow)
            };
            // Nothing this client's decision reads has changed, and it is not waiting for a
            // hold-down to expire: the decision would be the same.
            let same_client = previous.as_ref().is_none_or(|p| p.get(id) == Some(client));
            if let Some(seen) = &state.seen
                && same_client
                && seen.sides == (primary, shadow)
                && seen.held_until.is_none_or(|u| now < u)
            {
                if let Some(until) = seen.held_until {
                    wake_at(until);
                }
                continue;
            }
            let choice = decision::decide(
                &self.policy,
                state.position,
                primary,
                shadow,
                state.current_answer(client),
                now,
            );
            if let Some(until) = choice.held_until {
                wake_at(until);
            }
            state.seen = Some(Seen {
                sides: (primary, shadow),
                held_until: choice.held_until,
            });
            state.left_path = if choice.role == Some(Role::Shadow) {
                primary_path
            } else {
                None
            };
            if choice.changed {
                let to = choice.role.map(|r| match r {
                    Role::Primary => client.primary.clone(),
                    Role::Shadow => client.shadow.clone(),
                });
                changes.push(AnswerChange {
                    client: id.clone(),
                    from: state.answer(to.clone(), now),
                    to,
                    reason: choice.reason,
                    primary_risk: primary.total(),
                    shadow_risk: shadow.total(),
                    at: now,
                });
            }
        }
        Evaluation {
            risks,
            changes,
            next_wakeup,
        }
    }

    /// Forgets clients that left the client table and returns the previous table when it
    /// changed (`None` when the inputs share the last evaluation's table: no client was added,
    /// removed or re-assigned).
    fn follow_client_table(&mut self, inputs: &Inputs) -> Option<ClientPairs> {
        let same_clients = self
            .last_clients
            .as_ref()
            .is_some_and(|l| std::sync::Arc::ptr_eq(l, &inputs.clients));
        if same_clients {
            return None;
        }
        self.clients.retain(|id, _| inputs.clients.contains_key(id));
        self.last_clients.replace(inputs.clients.clone())
    }

    /// The current answer of every client (`None`: no appliance can be chosen).
    pub fn assignments(&self) -> impl Iterator<Item = (&ClientId, Option<&ApplianceId>)> {
        self.clients
            .iter()
            .filter_map(|(id, s)| s.current.as_ref().map(|c| (id, c.as_ref())))
    }

    /// The current answer of one client.
    pub fn assignment(&self, client: &ClientId) -> Option<&ApplianceId> {
        self.clients
            .get(client)
            .and_then(|s| s.current.as_ref())
            .and_then(|c| c.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::domain::{ApplianceState, RegionId};
    use crate::steering::{
        AdvisoryInput, AdvisoryTarget, ApplianceInput, ClientInput, PastDecision, PathScores,
    };

    fn aid(s: &str) -> ApplianceId {
        ApplianceId::new(s).unwrap()
    }

    fn inputs(advisory: Option<f64>, eu_state: ApplianceState) -> Inputs {
        let mut appliances = BTreeMap::new();
        for (id, region, ip, state) in [
            ("eu-1", "eu", "192.0.2.1:51820", eu_state),
            ("us-1", "us", "192.0.2.2:51820", ApplianceState::Active),
        ] {
            appliances.insert(
                aid(id),
                ApplianceInput {
                    id: aid(id),
                    region: RegionId::new(region).unwrap(),
                    endpoint: ip.parse().unwrap(),
                    state,
                    capacity: 100,
                },
            );
        }
        let mut clients = BTreeMap::new();
        clients.insert(
            ClientId::new("alice").unwrap(),
            ClientInput {
                primary: aid("eu-1"),
                shadow: aid("us-1"),
            },
        );
        let advisories = advisory
            .map(|r| AdvisoryInput {
                target: AdvisoryTarget::Appliance(aid("eu-1")),
                risk: Probability::new(r).unwrap(),
                starts_at: t(0),
                ends_at: Some(t(100)),
            })
            .into_iter()
            .collect();
        Inputs {
            appliances: Arc::new(appliances),
            clients: Arc::new(clients),
            advisories: Arc::new(advisories),
            ..Inputs::default()
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(0.7, 0.1, std::time::Duration::from_secs(30), 0.5, 0.7).unwrap()
    }

    #[test]
    fn advisory_moves_then_hold_down_returns() {
        let alice = ClientId::new("alice").unwrap();
        let mut e = Engine::new(policy());
        let ev = e.evaluate(&inputs(None, ApplianceState::Active), t(1));
        assert_eq!(ev.changes.len(), 1);
        assert_eq!(ev.changes[0].from, None);
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // A new client moves at once: its first answer started no hold-down.
        let ev = e.evaluate(&inputs(Some(0.95), ApplianceState::Active), t(2));
        assert_eq!(ev.changes.len(), 1);
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        assert_eq!(ev.next_wakeup, Some(t(100)), "advisory end");
        // Advisory gone: held until t(2) + 30 s.
        let ev = e.evaluate(&inputs(None, ApplianceState::Active), t(3));
        assert!(ev.changes.is_empty());
        assert_eq!(ev.next_wakeup, Some(t(32)));
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        let ev = e.evaluate(&inputs(None, ApplianceState::Active), t(32));
        assert_eq!(ev.changes.len(), 1);
        assert!(matches!(ev.changes[0].reason, Reason::RiskCleared { .. }));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
    }

    #[test]
    fn drain_moves_without_hold_down() {
        let alice = ClientId::new("alice").unwrap();
        let mut e = Engine::new(policy());
        e.evaluate(&inputs(Some(0.95), ApplianceState::Active), t(1));
        e.evaluate(&inputs(None, ApplianceState::Active), t(40));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        let ev = e.evaluate(&inputs(None, ApplianceState::Draining), t(41));
        assert_eq!(ev.changes.len(), 1);
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
    }

    /// `inputs` with low model scores on both, `stale` listing the ones no scorer confirmed.
    fn scored(stale: &[&str]) -> Inputs {
        let mut inp = inputs(None, ApplianceState::Active);
        let low = Probability::new(0.05).unwrap();
        inp.model_scores = Arc::new(HashMap::from([(aid("eu-1"), low), (aid("us-1"), low)]));
        inp.stale_scores = Arc::new(stale.iter().map(|a| aid(a)).collect());
        inp
    }

    #[test]
    fn stale_score_is_unknown_high() {
        let alice = ClientId::new("alice").unwrap();
        let mut e = Engine::new(policy());
        e.evaluate(&scored(&[]), t(1));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // The primary's low score goes stale: it counts as 1 and alice moves to the fresh
        // shadow (not held: her first answer started no hold-down).
        let ev = e.evaluate(&scored(&["eu-1"]), t(2));
        assert_eq!(ev.risks[&aid("eu-1")], Probability::ONE);
        assert_eq!(ev.changes.len(), 1);
        assert!(matches!(ev.changes[0].reason, Reason::PrimaryAtRisk { .. }));
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        // A fresh low score again: back after the hold-down.
        e.evaluate(&scored(&[]), t(3));
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")), "held");
        e.evaluate(&scored(&[]), t(40));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // Never *to* a stale appliance: with the shadow stale, a primary at risk is kept ...
        let mut risky = scored(&["us-1"]);
        risky.model_scores = Arc::new(HashMap::from([
            (aid("eu-1"), Probability::new(0.9).unwrap()),
            (aid("us-1"), Probability::new(0.01).unwrap()),
        ]));
        let ev = e.evaluate(&risky, t(80));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // ... and with both stale nobody moves either.
        let ev = e.evaluate(&scored(&["eu-1", "us-1"]), t(120));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
    }

    /// Path scores with one score of `client`'s path to eu-1.
    fn good_for(client: &ClientId, v: f64) -> PathScores {
        let mut paths = PathScores::new();
        paths.insert_client(aid("eu-1"), client.clone(), Probability::new(v).unwrap());
        paths
    }

    #[test]
    fn path_risk_moves_one_client_and_not_the_other() {
        let alice = ClientId::new("alice").unwrap();
        let bob = ClientId::new("bob").unwrap();
        let both = |paths: PathScores| {
            let mut inp = scored(&[]);
            let mut clients = (*inp.clients).clone();
            clients.insert(bob.clone(), clients[&alice].clone());
            inp.clients = Arc::new(clients);
            inp.path_scores = Arc::new(paths);
            inp
        };
        let p = |v: f64| Probability::new(v).unwrap();
        let mut e = Engine::new(policy());
        e.evaluate(&both(PathScores::new()), t(1));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // alice's path to eu-1 degrades; bob's does not: only alice moves, for her path.
        let mut bad = PathScores::new();
        bad.insert_client(aid("eu-1"), alice.clone(), p(0.9));
        bad.insert_client(aid("eu-1"), bob.clone(), p(0.05));
        let ev = e.evaluate(&both(bad.clone()), t(2));
        assert_eq!(ev.changes.len(), 1, "{:?}", ev.changes);
        assert_eq!(ev.changes[0].client, alice);
        assert!(matches!(ev.changes[0].reason, Reason::PathAtRisk { .. }));
        assert!(
            ev.changes[0].primary_risk.get() > 0.9,
            "path and appliance risk"
        );
        let eu = ev.risks[&aid("eu-1")].get();
        assert!(
            (eu - 0.05).abs() < 1e-12,
            "the appliance's risk is unchanged: {eu}"
        );
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        assert_eq!(e.assignment(&bob), Some(&aid("eu-1")));
        // The appliance path eu-1 <-> us-1 stands in for alice's unmeasured path to us-1: as
        // bad as her path to eu-1, it would have kept her (checked on a fresh engine).
        let mut proxy_bad = bad.clone();
        proxy_bad.insert_between(aid("eu-1"), aid("us-1"), p(0.95));
        let mut fresh = Engine::new(policy());
        fresh.evaluate(&both(PathScores::new()), t(1));
        let ev = fresh.evaluate(&both(proxy_bad.clone()), t(2));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        // That stand-in never keeps clients on a primary that is itself at risk (its trouble
        // shows on its path to the shadow too): with eu-1's own score high, both move.
        let mut failing = both(proxy_bad);
        failing.model_scores = Arc::new(HashMap::from([
            (aid("eu-1"), p(0.9)),
            (aid("us-1"), p(0.05)),
        ]));
        let ev = fresh.evaluate(&failing, t(3));
        assert_eq!(ev.changes.len(), 2, "{:?}", ev.changes);
        assert!(ev.changes.iter().all(|c| c.to == Some(aid("us-1"))));
        // On us-1, alice's path to eu-1 is no longer measured: its score goes stale and the
        // loader leaves it out. Its last value stands: she stays, long after the hold-down.
        let ev = e.evaluate(&both(PathScores::new()), t(3));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        let ev = e.evaluate(&both(PathScores::new()), t(100));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        // A fresh low score (e.g. from her standby handshakes with eu-1) brings her back.
        let mut good = PathScores::new();
        good.insert_client(aid("eu-1"), alice.clone(), p(0.05));
        let ev = e.evaluate(&both(good), t(101));
        assert_eq!(ev.changes.len(), 1, "{:?}", ev.changes);
        assert!(matches!(ev.changes[0].reason, Reason::RiskCleared { .. }));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        // Back on eu-1, nothing is remembered: a path score that goes away counts as no risk.
        e.evaluate(&both(bad.clone()), t(200));
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        e.evaluate(&both(good_for(&alice, 0.05)), t(300));
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
        let ev = e.evaluate(&both(PathScores::new()), t(400));
        assert!(ev.changes.is_empty(), "{:?}", ev.changes);
        assert_eq!(e.assignment(&alice), Some(&aid("eu-1")));
    }

    #[test]
    fn history_seeds_state() {
        let alice = ClientId::new("alice").unwrap();
        let mut inp = inputs(None, ApplianceState::Active);
        let mut h = HashMap::new();
        h.insert(
            alice.clone(),
            PastDecision {
                appliance: Some(aid("us-1")),
                at: t(0),
            },
        );
        inp.history = Arc::new(h);
        let mut e = Engine::new(policy());
        // Held by the recorded change at t(0).
        let ev = e.evaluate(&inp, t(5));
        assert!(ev.changes.is_empty());
        assert_eq!(e.assignment(&alice), Some(&aid("us-1")));
        let ev = e.evaluate(&inp, t(31));
        assert_eq!(ev.changes[0].from, Some(aid("us-1")));
    }
}
