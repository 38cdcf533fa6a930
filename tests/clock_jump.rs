//! Clock jumps (issue 13, fault suite). What can be tested honestly: every core takes the time
//! as an argument, so a wall-clock step is a `now` far ahead of or behind the last one. The DNS
//! hot path reads no wall clock at all (rate limiting counts seconds of a monotonic clock), so a
//! step of the system clock cannot reach it; stepping the real clock of this shared machine
//! would disturb every other process on it, so it is not done. What a jump does, per core:
//! - steering: stepped back, a hold-down that started "in the future" holds longer (no flap);
//!   stepped ahead, hold-downs and advisories end at once, as they would have;
//! - rate limiting: a second going backwards keeps counting in the newer bucket (stricter, never
//!   looser); going ahead starts fresh buckets;
//! - the saved snapshot: one written "in the future" (clock stepped back since) is used; one
//!   written long ago (clock stepped ahead) is refused as too old.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shadowsteer::dns::rrl::{Limits, RateLimiter, ResponseClass, ResponseKey, Verdict};
use shadowsteer::dns::zone::ClientTable;
use shadowsteer::domain::{ApplianceId, ApplianceState, ClientId, Probability, RegionId};
use shadowsteer::publish::snapshot_file::{self, Origin, SnapshotFileError};
use shadowsteer::steering::{
    AdvisoryInput, AdvisoryTarget, ApplianceInput, ClientInput, Engine, Inputs, Policy,
};

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn inputs(advisory_until: Option<DateTime<Utc>>) -> Inputs {
    let a = |id: &str, region: &str, ep: &str| ApplianceInput {
        id: ApplianceId::new(id.to_owned()).unwrap(),
        region: RegionId::new(region.to_owned()).unwrap(),
        endpoint: ep.parse().unwrap(),
        state: ApplianceState::Active,
        capacity: 100,
    };
    let (eu, us) = (
        a("eu-1", "eu", "192.0.2.1:51820"),
        a("us-1", "us", "192.0.2.2:51820"),
    );
    let clients = BTreeMap::from([(
        ClientId::new("alice".to_owned()).unwrap(),
        ClientInput {
            primary: eu.id.clone(),
            shadow: us.id.clone(),
        },
    )]);
    let advisories = advisory_until
        .map(|end| AdvisoryInput {
            target: AdvisoryTarget::Appliance(eu.id.clone()),
            risk: Probability::new(0.95).unwrap(),
            starts_at: t(0),
            ends_at: Some(end),
        })
        .into_iter()
        .collect();
    Inputs {
        appliances: Arc::new(BTreeMap::from([(eu.id.clone(), eu), (us.id.clone(), us)])),
        clients: Arc::new(clients),
        model_scores: Arc::default(),
        stale_scores: Arc::default(),
        path_scores: Arc::default(),
        advisories: Arc::new(advisories),
        history: Arc::default(),
    }
}

fn alice(engine: &Engine) -> Option<String> {
    engine
        .assignment(&ClientId::new("alice".to_owned()).unwrap())
        .map(|a| a.as_str().to_owned())
}

#[test]
fn steering_across_clock_steps() {
    let policy = Policy::new(0.5, 0.1, Duration::from_secs(30), 0.25, 0.5).unwrap();
    let mut engine = Engine::new(policy);
    let inp = inputs(Some(t(3600)));
    engine.evaluate(&inputs(None), t(0));
    assert_eq!(alice(&engine).as_deref(), Some("eu-1"));
    let e = engine.evaluate(&inp, t(10));
    assert_eq!(alice(&engine).as_deref(), Some("us-1"));
    assert_eq!(e.changes.len(), 1);
    // Stepped back a year: the advisory is not in force then, but the move is held (its
    // hold-down "started in the future"): no flap, and no panic on negative durations.
    let back = engine.evaluate(&inp, t(10 - 365 * 86_400));
    assert_eq!(alice(&engine).as_deref(), Some("us-1"));
    assert!(back.changes.is_empty(), "{:?}", back.changes);
    // Stepped ahead a year: the advisory has ended and the hold-down has passed: back home.
    let ahead = engine.evaluate(&inp, t(365 * 86_400));
    assert_eq!(alice(&engine).as_deref(), Some("eu-1"));
    assert_eq!(ahead.changes.len(), 1);
    // Back to the present: the advisory is in force again, and the hold-down of the last
    // change (a year ahead) keeps the answer: at most one change per jump, never a flap.
    let present = engine.evaluate(&inp, t(20));
    assert!(present.changes.len() <= 1);
}

#[test]
fn rate_limiting_across_second_steps() {
    let rl = RateLimiter::new(
        Limits {
            responses: 3,
            nxdomains: 3,
            errors: 3,
            slip: 0,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        },
        1,
    );
    let src = "192.0.2.1".parse().unwrap();
    let key = ResponseKey {
        class: ResponseClass::Answer,
        qtype: 1,
        name: 42,
    };
    let sent = |now: u64, n: usize| {
        (0..n)
            .filter(|_| rl.check(src, &key, now) == Verdict::Send)
            .count()
    };
    assert_eq!(sent(1_000, 5), 3);
    // A second from before: counted in the newer bucket, so nothing more goes out.
    assert_eq!(sent(999, 5), 0);
    assert_eq!(sent(10, 5), 0);
    // Far ahead: a fresh second.
    assert_eq!(sent(1_000_000, 5), 3);
}

#[test]
fn saved_snapshot_across_clock_steps() {
    let origin = Origin {
        database: "postgres://steer@db/steer".into(),
        zones: vec!["vpn.example.net".into()],
    };
    let inp = inputs(None);
    let bytes = snapshot_file::encode(
        &inp,
        &snapshot_file::answers(&inp, &ClientTable::default()),
        &origin,
        t(0),
        t(0),
    )
    .unwrap();
    let day = Duration::from_secs(86_400);
    // Written an hour "in the future": the clock was stepped back since. Used.
    assert!(snapshot_file::decode(&bytes, &origin, t(-3600), day).is_ok());
    // The clock jumped two days ahead: refused as too old.
    assert!(matches!(
        snapshot_file::decode(&bytes, &origin, t(2 * 86_400), day),
        Err(SnapshotFileError::TooOld(_))
    ));
}
