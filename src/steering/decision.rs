//! One client's choice between its primary and its shadow (the seed's
//! `DetermineOptimalAppliance`, extended).
//!
//! Every client has a fixed *position* in [0, 1) (a stable hash of its id) and so a personal
//! trigger point `t = min(threshold, weight_low + position * (weight_high - weight_low))`:
//! - it leaves its primary when the primary's risk rises above `t` — at `threshold` for everyone
//!   (the seed's rule), earlier for low positions (dynamic weighting: between `weight_low` and
//!   `weight_high` a growing share of clients moves, the same ones first, and they come back
//!   last);
//! - it goes only to a shadow that is active, below the threshold and less risky than the
//!   primary;
//! - it comes back only when the primary's risk has fallen to `t - hysteresis` (or the shadow's
//!   risk has risen to `threshold + hysteresis`): a risk moving inside a band of width
//!   `hysteresis` changes an answer at most once;
//! - after a change, the answer is held for `hold_down` unless the appliance answered becomes
//!   unusable;
//! - draining and down appliances are never chosen (operator state wins over risk); with
//!   neither usable there is no answer.
//!
//! Path risk: each side's risk is the appliance's risk combined (noisy-OR) with the risk of the
//! client's path to it ([`Side::total`]), and the rules above apply to those totals. So a client
//! whose path to its primary degrades leaves it although the appliance is healthy, if the
//! shadow's total is acceptable (below the threshold and below the primary's). One more rule
//! for such a *path-driven* move (the primary's appliance risk alone would not move the client):
//! it never goes to a shadow whose path is worse than the path it leaves, and comes back once
//! the shadow's path is `hysteresis` worse than the primary's ([`Reason::ShadowPathNoBetter`]).
//! An unmeasured path to the shadow may have a stand-in ([`Side::path_stand_in`]) for that
//! comparison only.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::Policy;
use crate::domain::{ApplianceState, ClientId, Probability};

/// Which of a client's two appliances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The primary appliance.
    Primary,
    /// The shadow appliance (in another region).
    Shadow,
}

/// One appliance as seen by one client's decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Side {
    /// Operator state; `None` when the appliance is unknown (not loaded).
    pub state: Option<ApplianceState>,
    /// The appliance's combined risk (model and advisories).
    pub risk: Probability,
    /// Risk of this client's measured path to the appliance; `None`: not known (not judged).
    pub path: Option<Probability>,
    /// When `path` is not known: an estimate of it that is only compared with the other
    /// side's path before a path-driven move, never added to the risk
    /// (`risk::ClientPaths::shadow_stand_in`).
    pub path_stand_in: Option<Probability>,
}

impl Side {
    /// An appliance that is not loaded: no state, no risk, no path.
    pub const UNKNOWN: Side = Side {
        state: None,
        risk: Probability::ZERO,
        path: None,
        path_stand_in: None,
    };

    fn usable(&self) -> bool {
        self.state == Some(ApplianceState::Active)
    }

    /// This client's path risk as compared before a path-driven move: measured, else the
    /// stand-in, else 0 (not seen to be bad).
    fn path_for_comparison(&self) -> f64 {
        self.path
            .or(self.path_stand_in)
            .map_or(0.0, Probability::get)
    }

    /// The risk of this side for this client: the appliance's and the measured path's,
    /// noisy-OR.
    pub fn total(&self) -> Probability {
        super::risk::combine(self.risk, self.path)
    }
}

/// Why an answer is what it is (written to the audit table on a change).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The primary's risk is above the threshold.
    PrimaryAtRisk {
        /// Primary risk.
        risk: f64,
    },
    /// The primary's risk is between the weighting bounds and this client's position is
    /// inside the share that moves.
    Weighted {
        /// Primary risk.
        risk: f64,
        /// The client's position in [0, 1).
        position: f64,
    },
    /// The primary's risk has fallen below this client's return point.
    RiskCleared {
        /// Primary risk.
        risk: f64,
    },
    /// The client's path to its primary makes the primary's total risk rise above this
    /// client's trigger point, while the appliance's own risk would not.
    PathAtRisk {
        /// Risk of the path to the primary.
        path: f64,
        /// The primary's total risk for this client.
        risk: f64,
    },
    /// The primary is at risk but the shadow is no better (or is itself at risk).
    ShadowNoBetter {
        /// Shadow risk.
        risk: f64,
    },
    /// The primary is at risk only through the client's path to it, and the path to the
    /// shadow is no better.
    ShadowPathNoBetter {
        /// Risk of the path to the shadow.
        path: f64,
    },
    /// The primary is draining, down or unknown.
    PrimaryUnavailable,
    /// The shadow is draining, down or unknown (the primary is kept whatever its risk).
    ShadowUnavailable,
    /// Neither appliance can be chosen.
    NoneAvailable,
    /// The primary is fine and the client has no other reason to move.
    Normal,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PrimaryAtRisk { risk } => write!(f, "primary risk {risk:.3} above threshold"),
            Self::Weighted { risk, position } => write!(
                f,
                "primary risk {risk:.3} moves the share of clients at position {position:.3}"
            ),
            Self::RiskCleared { risk } => write!(f, "primary risk {risk:.3} cleared"),
            Self::PathAtRisk { path, risk } => write!(
                f,
                "path to primary risk {path:.3} puts the primary at {risk:.3}, above trigger"
            ),
            Self::ShadowNoBetter { risk } => {
                write!(f, "shadow risk {risk:.3} is no better; primary kept")
            }
            Self::ShadowPathNoBetter { path } => {
                write!(
                    f,
                    "path to shadow risk {path:.3} is no better; primary kept"
                )
            }
            Self::PrimaryUnavailable => f.write_str("primary is not active"),
            Self::ShadowUnavailable => f.write_str("shadow is not active; primary kept"),
            Self::NoneAvailable => f.write_str("neither primary nor shadow is active"),
            Self::Normal => f.write_str("primary risk below trigger"),
        }
    }
}

/// A client's fixed position in [0, 1): the first 8 bytes of SHA-256 of its id. Stable across
/// versions, machines and restarts, so every server moves the same clients first.
pub fn position(client: &ClientId) -> f64 {
    let digest = Sha256::digest(client.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, so the result is < 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The primary risk above which a client at `position` leaves its primary.
pub fn trigger(policy: &Policy, position: f64) -> f64 {
    let ramp = policy.weight_low() + position * (policy.weight_high() - policy.weight_low());
    ramp.min(policy.threshold())
}

/// Where a client should be, ignoring hold-down. `current` is where it is now (`None` for a
/// client without an answer yet), which decides which side of the hysteresis band applies.
pub fn desired(
    policy: &Policy,
    position: f64,
    primary: Side,
    shadow: Side,
    current: Option<Role>,
) -> (Option<Role>, Reason) {
    match (primary.usable(), shadow.usable()) {
        (false, false) => return (None, Reason::NoneAvailable),
        (true, false) => return (Some(Role::Primary), Reason::ShadowUnavailable),
        (false, true) => return (Some(Role::Shadow), Reason::PrimaryUnavailable),
        (true, true) => {}
    }
    let on_shadow = current == Some(Role::Shadow);
    let slack = if on_shadow { policy.hysteresis() } else { 0.0 };
    let p = primary.total().get();
    let s = shadow.total().get();
    let t = trigger(policy, position);
    if p + slack <= t {
        let reason = if on_shadow {
            Reason::RiskCleared { risk: p }
        } else {
            Reason::Normal
        };
        return (Some(Role::Primary), reason);
    }
    if s >= policy.threshold() + slack || s >= p + slack {
        return (Some(Role::Primary), Reason::ShadowNoBetter { risk: s });
    }
    // The appliance alone would not move (or keep) the client: the path does. Never to a
    // shadow whose path is worse (measured, or its stand-in). An unknown path counts as 0
    // here: a shadow path nothing measures has not been seen to be worse.
    if primary.risk.get() + slack <= t {
        let (pp, sp) = (primary.path_for_comparison(), shadow.path_for_comparison());
        if sp >= pp + slack {
            return (Some(Role::Primary), Reason::ShadowPathNoBetter { path: sp });
        }
        return (Some(Role::Shadow), Reason::PathAtRisk { path: pp, risk: p });
    }
    let reason = if p > policy.threshold() {
        Reason::PrimaryAtRisk { risk: p }
    } else {
        Reason::Weighted { risk: p, position }
    };
    (Some(Role::Shadow), reason)
}

/// A client's answer and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// Where it is.
    pub role: Option<Role>,
    /// When the answer last changed; `None` if it never did (no hold-down applies).
    pub since: Option<DateTime<Utc>>,
}

/// The result of one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Where the client is steered (`None`: no appliance can be chosen).
    pub role: Option<Role>,
    /// Why.
    pub reason: Reason,
    /// Whether this differs from the current answer.
    pub changed: bool,
    /// A change was wanted but hold-down keeps the current answer until then.
    pub held_until: Option<DateTime<Utc>>,
}

/// Decides one client at `now`: [`desired`] plus hold-down. A change away from an appliance
/// that is no longer usable is never held.
pub fn decide(
    policy: &Policy,
    position: f64,
    primary: Side,
    shadow: Side,
    current: Option<Current>,
    now: DateTime<Utc>,
) -> Choice {
    let (want, reason) = desired(
        policy,
        position,
        primary,
        shadow,
        current.and_then(|c| c.role),
    );
    let Some(cur) = current else {
        return Choice {
            role: want,
            reason,
            changed: true,
            held_until: None,
        };
    };
    if want == cur.role {
        return Choice {
            role: want,
            reason,
            changed: false,
            held_until: None,
        };
    }
    let current_usable = match cur.role {
        Some(Role::Primary) => primary.usable(),
        Some(Role::Shadow) => shadow.usable(),
        None => false,
    };
    if current_usable && let Some(since) = cur.since {
        let until = since + policy.hold_down();
        if now < until {
            return Choice {
                role: cur.role,
                reason,
                changed: false,
                held_until: Some(until),
            };
        }
    }
    Choice {
        role: want,
        reason,
        changed: true,
        held_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy::new(0.7, 0.1, std::time::Duration::from_secs(30), 0.5, 0.7).unwrap()
    }

    fn side(state: ApplianceState, risk: f64) -> Side {
        Side {
            state: Some(state),
            risk: Probability::new(risk).unwrap(),
            path: None,
            path_stand_in: None,
        }
    }

    /// An active appliance of risk `risk` behind a path of risk `path`.
    fn via(risk: f64, path: Option<f64>) -> Side {
        Side {
            path: path.map(|p| Probability::new(p).unwrap()),
            ..active(risk)
        }
    }

    fn active(risk: f64) -> Side {
        side(ApplianceState::Active, risk)
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn seed_rule() {
        let p = policy();
        // Position 0.99: trigger at the threshold (0.7).
        let pos = 0.99;
        assert_eq!(
            desired(&p, pos, active(0.2), active(0.1), None).0,
            Some(Role::Primary)
        );
        assert_eq!(
            desired(&p, pos, active(0.9), active(0.1), None).0,
            Some(Role::Shadow)
        );
        // Shadow at risk too: keep the primary.
        assert_eq!(
            desired(&p, pos, active(0.9), active(0.8), None).0,
            Some(Role::Primary)
        );
    }

    #[test]
    fn operator_state_wins() {
        let p = policy();
        let drained = side(ApplianceState::Draining, 0.0);
        let down = side(ApplianceState::Down, 0.0);
        assert_eq!(
            desired(&p, 0.5, drained, active(0.9), None).0,
            Some(Role::Shadow)
        );
        assert_eq!(
            desired(&p, 0.5, active(0.99), down, None).0,
            Some(Role::Primary)
        );
        assert_eq!(desired(&p, 0.5, drained, down, None).0, None);
    }

    #[test]
    fn hold_down_keeps_then_releases() {
        let p = policy();
        let cur = Current {
            role: Some(Role::Shadow),
            since: Some(t0()),
        };
        let c = decide(
            &p,
            0.9,
            active(0.1),
            active(0.1),
            Some(cur),
            t0() + chrono::Duration::seconds(10),
        );
        assert_eq!(c.role, Some(Role::Shadow));
        assert!(!c.changed);
        assert_eq!(c.held_until, Some(t0() + chrono::Duration::seconds(30)));
        let c = decide(
            &p,
            0.9,
            active(0.1),
            active(0.1),
            Some(cur),
            t0() + chrono::Duration::seconds(30),
        );
        assert_eq!(c.role, Some(Role::Primary));
        assert!(c.changed);
        assert!(matches!(c.reason, Reason::RiskCleared { .. }));
    }

    #[test]
    fn unusable_current_is_never_held() {
        let p = policy();
        let cur = Current {
            role: Some(Role::Primary),
            since: Some(t0()),
        };
        let c = decide(
            &p,
            0.5,
            side(ApplianceState::Draining, 0.0),
            active(0.0),
            Some(cur),
            t0(),
        );
        assert_eq!(c.role, Some(Role::Shadow));
        assert!(c.changed);
    }

    #[test]
    fn bad_path_to_a_healthy_primary_moves_the_client() {
        let p = policy();
        let pos = 0.99;
        // Healthy appliances; the path to the primary at 0.9: to the shadow, for the path.
        let (want, reason) = desired(&p, pos, via(0.05, Some(0.9)), via(0.05, None), None);
        assert_eq!(want, Some(Role::Shadow));
        assert!(
            matches!(reason, Reason::PathAtRisk { path, .. } if path == 0.9),
            "{reason:?}"
        );
        assert!(reason.to_string().contains("path to primary risk 0.900"));
        // The shadow's path measured and acceptable: still moves.
        let shadow = via(0.05, Some(0.1));
        assert_eq!(
            desired(&p, pos, via(0.05, Some(0.9)), shadow, None).0,
            Some(Role::Shadow)
        );
        // The path to the shadow is worse than the one to the primary (its total still below
        // the threshold and the primary's): kept, for the path.
        let (want, reason) = desired(&p, pos, via(0.5, Some(0.5)), via(0.0, Some(0.55)), None);
        assert_eq!(want, Some(Role::Primary));
        assert!(
            matches!(reason, Reason::ShadowPathNoBetter { .. }),
            "{reason:?}"
        );
        // Shadow total at risk (its appliance, or its path): kept.
        for shadow in [via(0.75, Some(0.0)), via(0.0, Some(0.8))] {
            let (want, reason) = desired(&p, pos, via(0.05, Some(0.9)), shadow, None);
            assert_eq!(want, Some(Role::Primary));
            assert!(
                matches!(reason, Reason::ShadowNoBetter { .. }),
                "{reason:?}"
            );
        }
        // A stand-in for the shadow's path: compared before a path-driven move ...
        let stand_in = |v: f64| Side {
            path_stand_in: Some(Probability::new(v).unwrap()),
            ..active(0.05)
        };
        let (want, reason) = desired(&p, pos, via(0.05, Some(0.9)), stand_in(0.95), None);
        assert_eq!(want, Some(Role::Primary));
        assert!(
            matches!(reason, Reason::ShadowPathNoBetter { .. }),
            "{reason:?}"
        );
        assert_eq!(
            desired(&p, pos, via(0.05, Some(0.9)), stand_in(0.2), None).0,
            Some(Role::Shadow)
        );
        // ... but never added to the shadow's risk: a failing primary (whose trouble also
        // shows on its path to the shadow) still loses its clients.
        let (want, reason) = desired(&p, pos, via(0.95, None), stand_in(0.95), None);
        assert_eq!(want, Some(Role::Shadow));
        assert!(matches!(reason, Reason::PrimaryAtRisk { .. }), "{reason:?}");
        // An appliance-driven move is not held back by a slightly worse shadow path.
        let (want, reason) = desired(&p, pos, via(0.95, Some(0.1)), via(0.0, Some(0.2)), None);
        assert_eq!(want, Some(Role::Shadow));
        assert!(matches!(reason, Reason::PrimaryAtRisk { .. }), "{reason:?}");
    }

    #[test]
    fn recovered_path_returns_after_hysteresis_and_hold_down() {
        let p = policy();
        let pos = 0.99;
        let on_shadow = Current {
            role: Some(Role::Shadow),
            since: Some(t0()),
        };
        let at = |s: i64| t0() + chrono::Duration::seconds(s);
        // Path at 0.65: inside the band below the threshold (0.7 - 0.1 < 0.65): stays.
        let c = decide(
            &p,
            pos,
            via(0.0, Some(0.65)),
            via(0.0, None),
            Some(on_shadow),
            at(60),
        );
        assert_eq!(c.role, Some(Role::Shadow));
        assert!(!c.changed);
        // Recovered to 0.05: held for the hold-down, then back.
        let healthy = via(0.0, Some(0.05));
        let c = decide(&p, pos, healthy, via(0.0, None), Some(on_shadow), at(10));
        assert_eq!((c.role, c.held_until), (Some(Role::Shadow), Some(at(30))));
        let c = decide(&p, pos, healthy, via(0.0, None), Some(on_shadow), at(30));
        assert_eq!(c.role, Some(Role::Primary));
        assert!(matches!(c.reason, Reason::RiskCleared { .. }));
        // The primary (appliance 0.5, path 0.3: total 0.65) stays at risk for this client;
        // the path to the shadow degrades. Less than `hysteresis` worse than the primary's:
        // stays; `hysteresis` worse: back, for the path (the shadow's total is still lower).
        let primary = via(0.5, Some(0.3));
        let c = decide(
            &p,
            pos,
            primary,
            via(0.0, Some(0.35)),
            Some(on_shadow),
            at(60),
        );
        assert_eq!(c.role, Some(Role::Shadow), "inside the band");
        let c = decide(
            &p,
            pos,
            primary,
            via(0.0, Some(0.45)),
            Some(on_shadow),
            at(60),
        );
        assert_eq!(c.role, Some(Role::Primary));
        assert!(
            matches!(c.reason, Reason::ShadowPathNoBetter { .. }),
            "{:?}",
            c.reason
        );
    }

    #[test]
    fn positions_are_stable_and_spread() {
        let a = position(&ClientId::new("alice").unwrap());
        assert_eq!(a, position(&ClientId::new("alice").unwrap()));
        let n = 2000;
        let below: usize = (0..n)
            .filter(|i| position(&ClientId::new(format!("c{i}")).unwrap()) < 0.5)
            .count();
        assert!((800..1200).contains(&below), "{below}");
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (0.05..=1.0f64, 0.0..=1.0f64, 0.0..=1.0f64, 0.0..=1.0f64).prop_map(|(thr, h, a, b)| {
            let hyst = h * thr;
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            Policy::new(thr, hyst, std::time::Duration::from_secs(0), lo, hi).unwrap()
        })
    }

    proptest! {
        /// Any sequence of primary risks whose spread is at most the hysteresis changes a
        /// client's answer at most once (no flapping), whatever its position.
        #[test]
        fn no_flapping_inside_the_band(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            base in 0.0..=1.0f64,
            steps in proptest::collection::vec(0.0..=1.0f64, 1..60),
            shadow_risk in 0.0..=1.0f64,
        ) {
            let width = pol.hysteresis();
            let mut current: Option<Current> = None;
            let mut changes = 0;
            let mut now = t0();
            for s in steps {
                let risk = (base + s * width).min(1.0);
                let c = decide(&pol, pos, active(risk), active(shadow_risk), current, now);
                if current.is_some() && c.changed {
                    changes += 1;
                }
                current = Some(Current { role: c.role, since: if c.changed { Some(now) } else { current.and_then(|c| c.since) } });
                now += chrono::Duration::seconds(1);
            }
            prop_assert!(changes <= 1, "{changes} changes");
        }

        /// As the primary's risk rises (shadow fixed and healthy), the set of clients that
        /// want the shadow only grows.
        #[test]
        fn share_is_monotone(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            r1 in 0.0..=1.0f64,
            r2 in 0.0..=1.0f64,
        ) {
            let (lo, hi) = if r1 <= r2 { (r1, r2) } else { (r2, r1) };
            let shadow = active(0.0);
            let at_lo = desired(&pol, pos, active(lo), shadow, None).0;
            let at_hi = desired(&pol, pos, active(hi), shadow, None).0;
            if at_lo == Some(Role::Shadow) {
                prop_assert_eq!(at_hi, Some(Role::Shadow));
            }
        }

        /// Draining and down appliances are never chosen, whatever the risks and history.
        #[test]
        fn drained_never_chosen(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            pr in 0.0..=1.0f64,
            sr in 0.0..=1.0f64,
            ps in 0usize..3,
            ss in 0usize..3,
            cur in proptest::option::of(proptest::option::of(proptest::bool::ANY)),
            held in proptest::bool::ANY,
        ) {
            let states = [ApplianceState::Active, ApplianceState::Draining, ApplianceState::Down];
            let primary = side(states[ps], pr);
            let shadow = side(states[ss], sr);
            let current = cur.map(|role| Current {
                role: role.map(|s| if s { Role::Shadow } else { Role::Primary }),
                since: held.then(t0),
            });
            let c = decide(&pol, pos, primary, shadow, current, t0());
            match c.role {
                Some(Role::Primary) => prop_assert_eq!(states[ps], ApplianceState::Active),
                Some(Role::Shadow) => prop_assert_eq!(states[ss], ApplianceState::Active),
                None => prop_assert!(states[ps] != ApplianceState::Active && states[ss] != ApplianceState::Active),
            }
        }

        /// A path-driven move never goes to a shadow whose path is worse than the primary's:
        /// whenever a client not on the shadow is sent there while the primary's appliance
        /// risk alone is below its trigger, the shadow's path (measured, else its stand-in,
        /// else 0) is strictly better.
        #[test]
        fn path_moves_never_to_a_worse_path(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            pr in 0.0..=1.0f64,
            sr in 0.0..=1.0f64,
            pp in proptest::option::of(0.0..=1.0f64),
            sp in proptest::option::of(0.0..=1.0f64),
            stand_in in proptest::option::of(0.0..=1.0f64),
            on_primary in proptest::bool::ANY,
        ) {
            let current = on_primary.then_some(Role::Primary);
            let shadow = Side { path_stand_in: stand_in.map(|v| Probability::new(v).unwrap()), ..via(sr, sp) };
            let (want, _) = desired(&pol, pos, via(pr, pp), shadow, current);
            let sp = sp.or(stand_in);
            if want == Some(Role::Shadow) && pr <= trigger(&pol, pos) {
                prop_assert!(sp.unwrap_or(0.0) < pp.unwrap_or(0.0), "{sp:?} vs {pp:?}");
            }
        }

        /// A worse path to the primary never sends a client back to it: the set of clients
        /// that want the shadow only grows with the primary path's risk (everything else,
        /// the current answer included, fixed).
        #[test]
        fn worse_primary_path_never_returns_a_client(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            pr in 0.0..=1.0f64,
            sr in 0.0..=1.0f64,
            p1 in 0.0..=1.0f64,
            p2 in 0.0..=1.0f64,
            sp in proptest::option::of(0.0..=1.0f64),
            cur in proptest::option::of(proptest::bool::ANY),
        ) {
            let (lo, hi) = if p1 <= p2 { (p1, p2) } else { (p2, p1) };
            let current = cur.map(|s| if s { Role::Shadow } else { Role::Primary });
            let shadow = via(sr, sp);
            let at_lo = desired(&pol, pos, via(pr, Some(lo)), shadow, current).0;
            let at_hi = desired(&pol, pos, via(pr, Some(hi)), shadow, current).0;
            if at_lo == Some(Role::Shadow) {
                prop_assert_eq!(at_hi, Some(Role::Shadow));
            }
        }

        /// A path risk moving inside a band of width `hysteresis` changes a client's answer
        /// at most once, whatever the appliances' risks and the path to the shadow.
        #[test]
        fn no_flapping_on_path_risk(
            pol in arb_policy(),
            pos in 0.0..1.0f64,
            pr in 0.0..=1.0f64,
            sr in 0.0..=1.0f64,
            sp in proptest::option::of(0.0..=1.0f64),
            base in 0.0..=1.0f64,
            steps in proptest::collection::vec(0.0..=1.0f64, 1..60),
        ) {
            let width = pol.hysteresis();
            let mut current: Option<Current> = None;
            let mut changes = 0;
            let mut now = t0();
            for s in steps {
                let path = (base + s * width).min(1.0);
                let c = decide(&pol, pos, via(pr, Some(path)), via(sr, sp), current, now);
                if current.is_some() && c.changed {
                    changes += 1;
                }
                current = Some(Current { role: c.role, since: if c.changed { Some(now) } else { current.and_then(|c| c.since) } });
                now += chrono::Duration::seconds(1);
            }
            prop_assert!(changes <= 1, "{changes} changes");
        }

        /// Same inputs, same answer.
        #[test]
        fn deterministic(pol in arb_policy(), pos in 0.0..1.0f64, pr in 0.0..=1.0f64, sr in 0.0..=1.0f64) {
            let a = decide(&pol, pos, active(pr), active(sr), None, t0());
            let b = decide(&pol, pos, active(pr), active(sr), None, t0());
            prop_assert_eq!(a, b);
        }
    }
}
