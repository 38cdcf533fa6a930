use std::net::SocketAddr;

use chrono::{DateTime, Duration, Utc};

use super::*;

fn id(s: &str) -> ApplianceId {
    ApplianceId::new(s.to_owned()).unwrap()
}

fn region(s: &str) -> RegionId {
    RegionId::new(s.to_owned()).unwrap()
}

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::milliseconds(ms)
}

fn endpoint() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

fn session(n: i64, claim: Option<(u64, &str, &str, i64)>) -> SessionView {
    SessionView {
        client: ClientId::new(format!("c{n}")).unwrap(),
        peer: PeerIndex::new(n).unwrap(),
        primary: id("eu-1"),
        shadow: id("us-1"),
        claim: claim.map(|(e, r, h, at)| Claim {
            epoch: Epoch::from_db(e as i64).unwrap(),
            region: region(r),
            holder: id(h),
            claimed_at: Some(t(at)),
            make_before_break: true,
        }),
        endpoint: Some(endpoint()),
        assigned: None,
    }
}

fn shadow() -> Coordinator {
    Coordinator::new(id("us-1"), region("us"), Failback::Auto)
}

fn claims(actions: &[Action]) -> Vec<(PeerIndex, u64, ClaimReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Claim {
                peer,
                epoch,
                reason,
                ..
            } => Some((*peer, epoch.get(), *reason)),
            _ => None,
        })
        .collect()
}

fn p(n: i64) -> PeerIndex {
    PeerIndex::new(n).unwrap()
}

#[test]
fn shadow_stands_by_then_takes_over_every_session_of_a_dead_primary() {
    let mut c = shadow();
    let actions = c.load(
        vec![session(1, None), session(2, Some((0, "eu", "eu-1", 0)))],
        t(0),
    );
    assert!(claims(&actions).is_empty());
    assert!(actions.contains(&Action::Hold {
        peer: p(1),
        held: false
    }));
    assert_eq!(c.peers(), [id("eu-1")].into_iter().collect());
    let actions = c.peer_dead(&id("eu-1"), t(10), None);
    assert_eq!(
        actions[0],
        Action::PeerDown {
            appliance: id("eu-1"),
            since: t(10),
            loss: PeerLoss::Silent
        }
    );
    assert_eq!(
        claims(&actions),
        vec![(p(1), 1, ClaimReason::Crash), (p(2), 1, ClaimReason::Crash)]
    );
    assert!(actions.contains(&Action::Initiate {
        peer: p(1),
        endpoint: endpoint()
    }));
    assert!(c.holds(p(1)) && c.holds(p(2)));
    assert_eq!(c.stats().crash_claims, 2);
    // Reported once; a second death notice does nothing.
    assert!(c.peer_dead(&id("eu-1"), t(20), None).is_empty());
    // The database has not caught up yet: our claim stays.
    let actions = c.load(
        vec![session(1, None), session(2, Some((0, "eu", "eu-1", 0)))],
        t(30),
    );
    assert!(actions.is_empty(), "{actions:?}");
    assert!(c.holds(p(1)));
}

#[test]
fn a_higher_claim_makes_the_holder_stand_down() {
    let mut c = Coordinator::new(id("eu-1"), region("eu"), Failback::Auto);
    let actions = c.load(vec![session(1, None)], t(0));
    assert_eq!(
        actions,
        vec![Action::Hold {
            peer: p(1),
            held: true
        }]
    );
    // The shadow's region claimed it (replicated): stand down, and relay what still comes.
    let actions = c.update(p(1), Some(session(1, Some((1, "us", "us-1", 5)))), t(10));
    assert_eq!(
        actions,
        vec![
            Action::Hold {
                peer: p(1),
                held: false
            },
            Action::Relay {
                peer: p(1),
                new_holder: false,
                partner: id("us-1")
            }
        ]
    );
    assert_eq!(c.stats().stood_down, 1);
    // A restarted primary reads the claim before it acts: no initiation, held by the shadow.
    let mut restarted = Coordinator::new(id("eu-1"), region("eu"), Failback::Auto);
    let actions = restarted.load(vec![session(1, Some((1, "us", "us-1", 5)))], t(20));
    assert_eq!(
        actions,
        vec![Action::Hold {
            peer: p(1),
            held: false
        }]
    );
}

#[test]
fn epochs_compare_by_counter_then_region() {
    let a = Claim {
        epoch: Epoch::from_db(2).unwrap(),
        region: region("eu"),
        holder: id("eu-1"),
        claimed_at: None,
        make_before_break: false,
    };
    let b = Claim {
        epoch: Epoch::from_db(1).unwrap(),
        region: region("us"),
        holder: id("us-1"),
        claimed_at: None,
        make_before_break: false,
    };
    assert!(a.beats(&b));
    let c = Claim {
        epoch: Epoch::from_db(2).unwrap(),
        region: region("us"),
        ..b.clone()
    };
    assert!(c.beats(&a) && !a.beats(&c));
}

#[test]
fn predicted_move_claims_once_and_only_for_a_newer_decision() {
    let mut c = shadow();
    let mut s = session(1, Some((0, "eu", "eu-1", 100)));
    s.assigned = Some(Assignment {
        to: Some(id("us-1")),
        at: t(50),
        manual: false,
    });
    // The decision is older than the claim: nothing happens.
    let actions = c.load(vec![s.clone()], t(200));
    assert!(claims(&actions).is_empty());
    s.assigned = Some(Assignment {
        to: Some(id("us-1")),
        at: t(300),
        manual: false,
    });
    let actions = c.update(p(1), Some(s.clone()), t(310));
    assert_eq!(claims(&actions), vec![(p(1), 1, ClaimReason::Predicted)]);
    assert!(actions.contains(&Action::Relay {
        peer: p(1),
        new_holder: true,
        partner: id("eu-1")
    }));
    assert!(actions.contains(&Action::Initiate {
        peer: p(1),
        endpoint: endpoint()
    }));
    // The same decision again (a reload): already held, nothing more.
    let actions = c.update(p(1), Some(s), t(320));
    assert!(actions.is_empty(), "{actions:?}");
}

#[test]
fn failback_follows_the_setting() {
    let recovered = |failback| {
        let mut c = Coordinator::new(id("eu-1"), region("eu"), failback);
        let mut s = session(1, Some((1, "us", "us-1", 100)));
        s.assigned = Some(Assignment {
            to: Some(id("eu-1")),
            at: t(5000),
            manual: false,
        });
        (c.load(vec![s.clone()], t(5001)), c, s)
    };
    let (actions, _, _) = recovered(Failback::Auto);
    assert_eq!(claims(&actions), vec![(p(1), 2, ClaimReason::Failback)]);
    let (actions, mut c, mut s) = recovered(Failback::Manual);
    assert!(claims(&actions).is_empty());
    s.assigned = Some(Assignment {
        to: Some(id("eu-1")),
        at: t(6000),
        manual: true,
    });
    let actions = c.update(p(1), Some(s), t(6001));
    assert_eq!(claims(&actions), vec![(p(1), 2, ClaimReason::Failback)]);
}

#[test]
fn a_third_appliance_is_never_claimed_from_and_strangers_stay_out() {
    let mut c = shadow();
    // Held by an appliance that is neither primary nor shadow any more (re-assigned).
    c.load(vec![session(1, Some((3, "ap", "ap-1", 0)))], t(0));
    let actions = c.peer_dead(&id("ap-1"), t(10), None);
    assert!(claims(&actions).is_empty());
    // A session where we are neither primary nor shadow.
    let mut other = Coordinator::new(id("ap-2"), region("ap"), Failback::Auto);
    other.load(vec![session(1, None)], t(0));
    assert!(claims(&other.peer_dead(&id("eu-1"), t(10), None)).is_empty());
}

#[test]
fn a_standby_handshake_claims_nothing_until_the_client_sends_on_it() {
    let mut c = shadow();
    c.load(vec![session(1, Some((2, "eu", "eu-1", 0)))], t(0));
    // The client helper sets up a standby session here: the primary keeps holding.
    assert!(c.handshake(p(1), 0x100));
    assert!(!c.holds(p(1)));
    // Traffic on another (older) session claims nothing.
    assert!(claims(&c.client_data(p(1), 0x101, t(5))).is_empty());
    // Traffic on the standby session: the client moved here, without an initiation.
    let actions = c.client_data(p(1), 0x100, t(10));
    assert_eq!(claims(&actions), vec![(p(1), 3, ClaimReason::Client)]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Initiate { .. })));
    assert!(c.holds(p(1)));
    assert!(c.client_data(p(1), 0x100, t(20)).is_empty());
    // A handshake while holding is no standby.
    assert!(!c.handshake(p(1), 0x102));
    assert_eq!(c.stats().client_claims, 1);
}

#[test]
fn after_standing_down_old_sessions_never_pull_the_client_back() {
    let mut c = shadow();
    c.load(vec![session(1, Some((2, "eu", "eu-1", 0)))], t(0));
    assert!(c.handshake(p(1), 0x100));
    assert_eq!(claims(&c.client_data(p(1), 0x100, t(10))).len(), 1);
    // The primary takes it back (failback); the client's last packets on our session, and
    // even its traffic on it, claim nothing until it sets up a new session here.
    let _ = c.update(p(1), Some(session(1, Some((4, "eu", "eu-1", 20)))), t(20));
    assert!(!c.holds(p(1)));
    assert!(claims(&c.client_data(p(1), 0x100, t(30))).is_empty());
    assert!(c.handshake(p(1), 0x103));
    assert_eq!(
        claims(&c.client_data(p(1), 0x103, t(40))),
        vec![(p(1), 5, ClaimReason::Client)]
    );
    // Unknown sessions are ignored.
    assert!(!c.handshake(p(9), 0x900));
    assert!(c.client_data(p(9), 0x900, t(50)).is_empty());
}

#[test]
fn revival_is_reported_and_moves_nothing() {
    let mut c = shadow();
    c.load(vec![session(1, None)], t(0));
    c.peer_dead(&id("eu-1"), t(10), None);
    assert_eq!(c.peer_alive(&id("eu-1")), vec![Action::PeerUp(id("eu-1"))]);
    assert!(c.peer_alive(&id("eu-1")).is_empty());
    assert!(c.holds(p(1)));
}

#[test]
fn a_restart_is_a_death_and_a_return_dated_from_the_last_heartbeat() {
    let mut c = shadow();
    c.load(vec![session(1, None)], t(0));
    let actions = c.peer_restarted(&id("eu-1"), t(900), t(700));
    // The failure event starts when the old run was last heard, not when the new one spoke.
    assert_eq!(
        actions[0],
        Action::PeerDown {
            appliance: id("eu-1"),
            since: t(700),
            loss: PeerLoss::Restarted
        }
    );
    assert_eq!(claims(&actions), vec![(p(1), 1, ClaimReason::Crash)]);
    assert_eq!(actions.last(), Some(&Action::PeerUp(id("eu-1"))));
    assert!(c.holds(p(1)));
    // It counts as alive again: a later silence is a new death.
    assert_eq!(
        c.peer_dead(&id("eu-1"), t(2000), Some(t(1800)))[0],
        Action::PeerDown {
            appliance: id("eu-1"),
            since: t(1800),
            loss: PeerLoss::Silent
        }
    );
}

#[test]
fn a_partition_moves_the_client_once_not_back_and_forth() {
    // Primary's view: it holds; the shadow seems dead (partition), and then the shadow's claim
    // arrives through the database. The primary stands down and does not claim back.
    let mut c = Coordinator::new(id("eu-1"), region("eu"), Failback::Auto);
    c.load(vec![session(1, Some((4, "eu", "eu-1", 0)))], t(0));
    assert!(claims(&c.peer_dead(&id("us-1"), t(10), None)).is_empty());
    let actions = c.update(p(1), Some(session(1, Some((5, "us", "us-1", 20)))), t(30));
    assert_eq!(
        actions[0],
        Action::Hold {
            peer: p(1),
            held: false
        }
    );
    assert!(claims(&actions).is_empty());
    // Reloads while the partition lasts change nothing.
    assert!(
        c.load(vec![session(1, Some((5, "us", "us-1", 20)))], t(40))
            .is_empty()
    );
    // The shadow's view: the primary died holding it; one claim, and a later claim of the
    // "dead" primary is obeyed, not fought.
    let mut s = shadow();
    s.load(vec![session(1, Some((4, "eu", "eu-1", 0)))], t(0));
    assert_eq!(claims(&s.peer_dead(&id("eu-1"), t(10), None)).len(), 1);
    let actions = s.update(p(1), Some(session(1, Some((6, "eu", "eu-1", 50)))), t(60));
    assert!(claims(&actions).is_empty(), "{actions:?}");
    assert!(!s.holds(p(1)));
}

#[test]
fn a_claim_newer_than_the_last_heartbeat_proves_the_peer_alive() {
    // The shadow claimed (partition) 40 ms before the primary's verdict on it; the primary
    // last heard it before that claim: it does not take the session back.
    let mut c = Coordinator::new(id("eu-1"), region("eu"), Failback::Auto);
    c.load(vec![session(1, Some((3, "us", "us-1", 1000)))], t(1010));
    let actions = c.peer_dead(&id("us-1"), t(1040), Some(t(840)));
    assert!(claims(&actions).is_empty(), "{actions:?}");
    // An older claim is taken over as usual.
    let mut c = Coordinator::new(id("eu-1"), region("eu"), Failback::Auto);
    c.load(vec![session(1, Some((3, "us", "us-1", 500)))], t(1010));
    assert_eq!(
        claims(&c.peer_dead(&id("us-1"), t(1040), Some(t(840)))).len(),
        1
    );
}

#[test]
fn each_session_names_the_other_appliance_of_its_pair() {
    let mut us = shadow();
    let mut primary_side = session(2, None);
    primary_side.primary = id("us-1");
    primary_side.shadow = id("ap-1");
    us.load(vec![session(1, None), primary_side], t(0));
    let mut partners: Vec<(PeerIndex, ApplianceId)> =
        us.partners().map(|(p, a)| (p, a.clone())).collect();
    partners.sort_by_key(|(p, _)| p.get());
    assert_eq!(partners, vec![(p(1), id("eu-1")), (p(2), id("ap-1"))]);
}
