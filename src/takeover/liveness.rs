//! Which appliances of the group are alive, from the heartbeats they send.
//!
//! A peer is dead once no valid heartbeat arrived for `interval × misses`; a peer never heard
//! since this agent started is given `startup_grace` before it counts as dead (both ends of a
//! group rarely start in the same second). Replays are refused: `(boot, seq)` of a sender must
//! grow, and its send time must be within [`REPLAY_WINDOW`] of our clock, which also covers a
//! receiver that restarted and forgot the last sequence number. A sender whose `boot` grows
//! while we still count it alive restarted faster than the silence that makes it dead; that is
//! reported too, since a restart loses every session as surely as a death does. Pure: time is
//! an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::Heartbeat;
use crate::domain::ApplianceId;

/// Largest difference between a heartbeat's send time and our clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// Timing of failure detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between two heartbeats.
    pub interval: Duration,
    /// Heartbeats missed before a peer is dead.
    pub misses: u32,
    /// Time a never-heard peer gets after our start.
    pub startup_grace: Duration,
}

impl Timing {
    /// Silence after which a peer is dead.
    pub fn dead_after(&self) -> Duration {
        self.interval.saturating_mul(self.misses.max(1))
    }
}

/// What an accepted heartbeat says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Alive, as it was.
    Steady,
    /// The peer was dead until now.
    Revived,
    /// The peer started again (a higher `boot`) before it was silent long enough to count as
    /// dead: its sessions died with its previous run all the same.
    Restarted {
        /// When its previous run was last heard from.
        last_heard: Instant,
    },
}

/// What became of one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and fresh.
    Accepted(Arrival),
    /// Not newer than one already accepted.
    Replayed,
    /// Sent too long ago (or in the future) by our clock.
    Stale,
    /// From an appliance that is not in our group.
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct PeerState {
    last_ok: Option<Instant>,
    last_seen: Option<(u64, u64)>,
    dead: bool,
}

/// Liveness of the group's other appliances.
#[derive(Debug)]
pub struct Liveness {
    timing: Timing,
    started: Instant,
    peers: HashMap<ApplianceId, PeerState>,
}

impl Liveness {
    /// Starts watching nobody.
    pub fn new(timing: Timing, now: Instant) -> Self {
        Self {
            timing,
            started: now,
            peers: HashMap::new(),
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Sets the peers to watch; state of peers that stay is kept.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = ApplianceId>) {
        let mut next = HashMap::new();
        for p in peers {
            let state = self.peers.remove(&p).unwrap_or_default();
            next.insert(p, state);
        }
        self.peers = next;
    }

    /// When the last valid heartbeat of `peer` arrived.
    pub fn last_heard(&self, peer: &ApplianceId) -> Option<Instant> {
        self.peers.get(peer).and_then(|p| p.last_ok)
    }

    /// Whether `peer` is currently considered dead.
    pub fn is_dead(&self, peer: &ApplianceId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.dead)
    }

    /// Takes one authenticated heartbeat.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now: Instant, now_unix_ms: u64) -> Verdict {
        let Some(state) = self.peers.get_mut(&hb.from) else {
            return Verdict::Unknown;
        };
        if hb.sent_unix_ms.abs_diff(now_unix_ms) > REPLAY_WINDOW.as_millis() as u64 {
            return Verdict::Stale;
        }
        if state
            .last_seen
            .is_some_and(|seen| (hb.boot, hb.seq) <= seen)
        {
            return Verdict::Replayed;
        }
        let arrival = if std::mem::take(&mut state.dead) {
            Arrival::Revived
        } else if let (Some((boot, _)), Some(last_heard)) = (state.last_seen, state.last_ok)
            && hb.boot > boot
        {
            Arrival::Restarted { last_heard }
        } else {
            Arrival::Steady
        };
        state.last_seen = Some((hb.boot, hb.seq));
        state.last_ok = Some(now);
        Verdict::Accepted(arrival)
    }

    /// Declares dead every peer silent for too long; returns the new deaths.
    pub fn poll(&mut self, now: Instant) -> Vec<ApplianceId> {
        let dead_after = self.timing.dead_after();
        let grace_end = self.started + self.timing.startup_grace.max(dead_after);
        let mut out = Vec::new();
        for (id, state) in &mut self.peers {
            if state.dead {
                continue;
            }
            let deadline = state.last_ok.map_or(grace_end, |t| t + dead_after);
            if now >= deadline {
                state.dead = true;
                out.push(id.clone());
            }
        }
        out
    }

    /// When [`Liveness::poll`] may next find a death.
    pub fn next_deadline(&self) -> Option<Instant> {
        let dead_after = self.timing.dead_after();
        let grace_end = self.started + self.timing.startup_grace.max(dead_after);
        self.peers
            .values()
            .filter(|s| !s.dead)
            .map(|s| s.last_ok.map_or(grace_end, |t| t + dead_after))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ApplianceId {
        ApplianceId::new(s.to_owned()).unwrap()
    }

    fn hb(from: &str, boot: u64, seq: u64, sent: u64) -> Heartbeat {
        Heartbeat {
            from: id(from),
            boot,
            seq,
            sent_unix_ms: sent,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn dead_after_misses_alive_again_on_a_fresh_beat() {
        let t0 = Instant::now();
        let timing = Timing {
            interval: 50 * MS,
            misses: 4,
            startup_grace: 2000 * MS,
        };
        let mut l = Liveness::new(timing, t0);
        l.set_peers([id("us-1")]);
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 1, 1, 10_000), t0, 10_000),
            Verdict::Accepted(Arrival::Steady)
        );
        assert!(l.poll(t0 + 199 * MS).is_empty());
        assert_eq!(l.poll(t0 + 200 * MS), vec![id("us-1")]);
        assert!(l.poll(t0 + 300 * MS).is_empty(), "one death, reported once");
        assert!(l.is_dead(&id("us-1")));
        // Replays of the old beat do not revive it.
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 1, 1, 10_000), t0 + 300 * MS, 10_300),
            Verdict::Replayed
        );
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 1, 2, 10_300), t0 + 300 * MS, 10_300),
            Verdict::Accepted(Arrival::Revived)
        );
        // A sender that restarted (higher boot) within the silence that makes it dead starts
        // its sequence again, and its restart is reported: its sessions are gone.
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 2, 0, 10_350), t0 + 350 * MS, 10_350),
            Verdict::Accepted(Arrival::Restarted {
                last_heard: t0 + 300 * MS
            })
        );
        assert!(!l.is_dead(&id("us-1")));
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 2, 1, 10_360), t0 + 360 * MS, 10_360),
            Verdict::Accepted(Arrival::Steady)
        );
        assert_eq!(
            l.on_heartbeat(&hb("us-1", 2, 5, 1_000), t0 + 400 * MS, 10_400),
            Verdict::Stale
        );
        assert_eq!(
            l.on_heartbeat(&hb("xx-9", 3, 1, 10_400), t0 + 400 * MS, 10_400),
            Verdict::Unknown
        );
    }

    #[test]
    fn never_heard_peer_dies_after_the_grace() {
        let t0 = Instant::now();
        let timing = Timing {
            interval: 50 * MS,
            misses: 4,
            startup_grace: 2000 * MS,
        };
        let mut l = Liveness::new(timing, t0);
        l.set_peers([id("us-1")]);
        assert!(l.poll(t0 + 1999 * MS).is_empty());
        assert_eq!(l.next_deadline(), Some(t0 + 2000 * MS));
        assert_eq!(l.poll(t0 + 2000 * MS), vec![id("us-1")]);
    }
}
