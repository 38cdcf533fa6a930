//! Takeover's decision core: which sessions this appliance holds, and when it must claim one.
//!
//! - [`wire`]: the authenticated heartbeats the appliances of a shadow group exchange.
//! - [`liveness`]: which group peers are alive, from those heartbeats.
//! - this module: the [`Coordinator`], one per agent. It turns what the agent learns (a peer
//!   died, the database changed, a steering decision, a client's traffic on a session it set
//!   up here) into
//!   [`Action`]s: tell the data plane to hold or stand down a session, to send a handshake
//!   initiation to the client's last endpoint, and record a claim in the database.
//!
//! Holder = highest claim, compared as (epoch, region); a session without any claim is held by
//! its primary. A claim names an epoch above every epoch seen for the session. The coordinator
//! acts on a death *before* the database knows anything (the claim is written afterwards), and
//! a claim it made is kept until the database shows it or a higher one. Pure: no I/O, time is
//! an argument.

pub mod liveness;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use crate::domain::{ApplianceId, ClientId, Epoch, PeerIndex, RegionId};

/// Why a session was claimed (stored in `session_state.claim_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimReason {
    /// The holder stopped sending heartbeats.
    Crash,
    /// Steering moved the client here while its holder still works.
    Predicted,
    /// Steering moved the client back to its primary.
    Failback,
    /// The client sent traffic on a session it set up here while another appliance held it
    /// (it moved here on its own: a stock client that re-resolved, or the client helper
    /// switching to its standby session).
    Client,
}

impl ClaimReason {
    /// Every reason, for counters.
    pub const ALL: [ClaimReason; 4] = [Self::Crash, Self::Predicted, Self::Failback, Self::Client];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Predicted => "predicted",
            Self::Failback => "failback",
            Self::Client => "client",
        }
    }
}

/// When a recovered primary takes its clients back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// As soon as steering moves the client back (risk low for the hold-down).
    #[default]
    Auto,
    /// Only on an operator's `shadowsteer session failback`.
    Manual,
}

/// One claim on a session: whoever holds the highest (epoch, region) holds the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The fencing counter.
    pub epoch: Epoch,
    /// Region of the row that carries the claim.
    pub region: RegionId,
    /// The appliance holding the session under this claim.
    pub holder: ApplianceId,
    /// When it was claimed (None for rows written before any takeover).
    pub claimed_at: Option<DateTime<Utc>>,
    /// Made by the make-before-break path (predicted move, failback): the previous holder
    /// still works and relays what the client sends it on the old session meanwhile.
    pub make_before_break: bool,
}

impl Claim {
    fn key(&self) -> (Epoch, &RegionId) {
        (self.epoch, &self.region)
    }

    /// Whether `self` outranks `other`.
    pub fn beats(&self, other: &Claim) -> bool {
        self.key() > other.key()
    }
}

/// The latest steering decision for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The appliance DNS now names (None: none is usable).
    pub to: Option<ApplianceId>,
    /// When it was decided.
    pub at: DateTime<Utc>,
    /// An operator asked for it (`session failback`): honoured even with manual failback.
    pub manual: bool,
}

/// What the coordinator knows of one shadowed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The client.
    pub client: ClientId,
    /// Its stable peer index.
    pub peer: PeerIndex,
    /// Its primary appliance.
    pub primary: ApplianceId,
    /// Its shadow appliance.
    pub shadow: ApplianceId,
    /// The highest claim stored (None: no session row yet).
    pub claim: Option<Claim>,
    /// The client's last known endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The latest steering decision.
    pub assigned: Option<Assignment>,
}

/// What the agent must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run (or stop) the session's keepalives and handshake initiations on the data plane.
    Hold {
        /// The session.
        peer: PeerIndex,
        /// Whether this appliance holds it.
        held: bool,
    },
    /// Send a handshake initiation to the client (paced by the data plane).
    Initiate {
        /// The session.
        peer: PeerIndex,
        /// Where to.
        endpoint: SocketAddr,
    },
    /// Record a claim in this region's row of the session.
    Claim {
        /// The client.
        client: ClientId,
        /// The session.
        peer: PeerIndex,
        /// The new epoch.
        epoch: Epoch,
        /// Why.
        reason: ClaimReason,
    },
    /// During a make-before-break move, relay the session's stray datagrams between the two
    /// appliances for a moment (the client may send on the old session for about one round
    /// trip after it roamed, and the old holder may still owe it replies).
    Relay {
        /// The session.
        peer: PeerIndex,
        /// This appliance is the new holder (else the old one).
        new_holder: bool,
        /// The other appliance of the move.
        partner: ApplianceId,
    },
    /// A group peer was lost: record a failure event from `since` (when it was last heard, as
    /// near its death as we know), so a label for the risk model starts where the failure did.
    PeerDown {
        /// The peer.
        appliance: ApplianceId,
        /// When it was last heard (when the loss was noticed if it never was).
        since: DateTime<Utc>,
        /// How the loss showed.
        loss: PeerLoss,
    },
    /// A group peer is back: close its failure event.
    PeerUp(ApplianceId),
}

/// How a group peer's loss showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLoss {
    /// Its heartbeats stopped for longer than the deadline.
    Silent,
    /// A heartbeat came from a new run of it while it still counted as alive: it crashed and
    /// restarted within the deadline, and lost every session it held.
    Restarted,
}

/// Counters of what the coordinator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Claims after a peer's death.
    pub crash_claims: u64,
    /// Claims on a steering decision (predicted moves and failbacks).
    pub steered_claims: u64,
    /// Claims after a client's own handshake.
    pub client_claims: u64,
    /// Sessions this appliance stood down from (a higher claim appeared).
    pub stood_down: u64,
}

/// One agent's takeover state.
#[derive(Debug)]
pub struct Coordinator {
    me: ApplianceId,
    region: RegionId,
    failback: Failback,
    sessions: HashMap<PeerIndex, SessionView>,
    /// What the data plane was last told, per session.
    told: HashMap<PeerIndex, bool>,
    dead: HashSet<ApplianceId>,
    /// Sessions the client set up here while another appliance held them, by our receiver
    /// index: a standby session (client helper) until the client sends traffic on it.
    standby: HashMap<PeerIndex, u32>,
    stats: CoordinatorStats,
}

impl Coordinator {
    /// A coordinator for appliance `me` of `region`.
    pub fn new(me: ApplianceId, region: RegionId, failback: Failback) -> Self {
        Self {
            me,
            region,
            failback,
            sessions: HashMap::new(),
            told: HashMap::new(),
            dead: HashSet::new(),
            standby: HashMap::new(),
            stats: CoordinatorStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// The group's other appliances (everyone sharing a session with us).
    pub fn peers(&self) -> HashSet<ApplianceId> {
        self.sessions
            .values()
            .flat_map(|s| [&s.primary, &s.shadow])
            .filter(|a| **a != self.me)
            .cloned()
            .collect()
    }

    /// Each session's other appliance: where a handshake response for it that reached this
    /// appliance instead belongs (see `tunnel::device`, misdirected responses).
    pub fn partners(&self) -> impl Iterator<Item = (PeerIndex, &ApplianceId)> {
        self.sessions.values().map(|s| {
            let other = if s.primary == self.me {
                &s.shadow
            } else {
                &s.primary
            };
            (s.peer, other)
        })
    }

    /// The session of `peer`, as known now.
    pub fn session(&self, peer: PeerIndex) -> Option<&SessionView> {
        self.sessions.get(&peer)
    }

    /// The session index of a client, if it is one of ours.
    pub fn peers_of_client(&self, client: &ClientId) -> Option<PeerIndex> {
        self.sessions
            .values()
            .find(|s| &s.client == client)
            .map(|s| s.peer)
    }

    /// The appliance holding a session by our knowledge.
    pub fn holder(&self, peer: PeerIndex) -> Option<&ApplianceId> {
        self.sessions.get(&peer).map(holder_of)
    }

    /// Whether this appliance holds the session.
    pub fn holds(&self, peer: PeerIndex) -> bool {
        self.holder(peer) == Some(&self.me)
    }

    /// Replaces every session with what the database holds (a full load). A claim of ours
    /// that the database does not show yet is kept.
    pub fn load(&mut self, sessions: Vec<SessionView>, now: DateTime<Utc>) -> Vec<Action> {
        let mut next = HashMap::with_capacity(sessions.len());
        for s in sessions {
            let merged = self.merge(s);
            next.insert(merged.peer, merged);
        }
        self.told.retain(|p, _| next.contains_key(p));
        self.standby.retain(|p, _| next.contains_key(p));
        self.sessions = next;
        let peers: Vec<PeerIndex> = self.sessions.keys().copied().collect();
        let mut out = Vec::new();
        for p in peers {
            self.evaluate(p, now, false, &mut out);
        }
        out
    }

    /// One session changed in the database (or disappeared: `None` for `peer`).
    pub fn update(
        &mut self,
        peer: PeerIndex,
        session: Option<SessionView>,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match session {
            Some(s) => {
                let merged = self.merge(s);
                self.sessions.insert(peer, merged);
                self.evaluate(peer, now, false, &mut out);
            }
            None => {
                self.sessions.remove(&peer);
                self.told.remove(&peer);
                self.standby.remove(&peer);
            }
        }
        out
    }

    /// Keeps our own unwritten claim when the stored one is lower.
    fn merge(&self, mut fresh: SessionView) -> SessionView {
        if let Some(old) = self.sessions.get(&fresh.peer)
            && let Some(mine) = &old.claim
            && mine.holder == self.me
            && fresh.claim.as_ref().is_none_or(|c| mine.beats(c))
        {
            fresh.claim = Some(mine.clone());
        }
        if fresh.endpoint.is_none()
            && let Some(old) = self.sessions.get(&fresh.peer)
        {
            fresh.endpoint = old.endpoint;
        }
        fresh
    }

    /// A group peer stopped sending heartbeats: take over every session it holds with us,
    /// except those it claimed after `last_heard` (our last heartbeat from it): a claim that
    /// recent proves it alive and cut off from us only (a partition), and taking the session
    /// back would move the client a second time.
    pub fn peer_dead(
        &mut self,
        appliance: &ApplianceId,
        now: DateTime<Utc>,
        last_heard: Option<DateTime<Utc>>,
    ) -> Vec<Action> {
        self.lose_peer(appliance, now, last_heard, PeerLoss::Silent)
    }

    /// A heartbeat from a new run of a group peer we still count as alive: it lost its
    /// sessions in the restart, so this is a death and a return at once. The old run was
    /// alive until `last_heard`, so a restart always has one (a silent death may not).
    pub fn peer_restarted(
        &mut self,
        appliance: &ApplianceId,
        now: DateTime<Utc>,
        last_heard: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut out = self.lose_peer(appliance, now, Some(last_heard), PeerLoss::Restarted);
        out.extend(self.peer_alive(appliance));
        out
    }

    fn lose_peer(
        &mut self,
        appliance: &ApplianceId,
        now: DateTime<Utc>,
        last_heard: Option<DateTime<Utc>>,
        loss: PeerLoss,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.dead.insert(appliance.clone()) {
            return out;
        }
        out.push(Action::PeerDown {
            appliance: appliance.clone(),
            since: last_heard.map_or(now, |h| h.min(now)),
            loss,
        });
        let mut peers: Vec<PeerIndex> = self
            .sessions
            .values()
            .filter(|s| holder_of(s) == appliance)
            .filter(|s| {
                let claimed = s.claim.as_ref().and_then(|c| c.claimed_at);
                match (claimed, last_heard) {
                    (Some(c), Some(h)) => c <= h,
                    _ => true,
                }
            })
            .map(|s| s.peer)
            .collect();
        peers.sort();
        for p in peers {
            self.evaluate(p, now, true, &mut out);
        }
        out
    }

    /// A dead group peer sends heartbeats again. Nothing moves back by itself: failback goes
    /// through steering (risk low for the hold-down) or an operator.
    pub fn peer_alive(&mut self, appliance: &ApplianceId) -> Vec<Action> {
        if self.dead.remove(appliance) {
            vec![Action::PeerUp(appliance.clone())]
        } else {
            Vec::new()
        }
    }

    /// The client completed a handshake with this appliance; `receiver_index` is ours for the
    /// new session. Returns whether it is a standby session (another appliance holds the
    /// session). A handshake alone claims nothing: the client helper keeps a standby session
    /// with the appliance it is not using (make-before-break), and only traffic on that
    /// session ([`Coordinator::client_data`]) says the client moved here.
    pub fn handshake(&mut self, peer: PeerIndex, receiver_index: u32) -> bool {
        if !self.sessions.contains_key(&peer) {
            return false;
        }
        if self.holds(peer) {
            self.standby.remove(&peer);
            return false;
        }
        self.standby.insert(peer, receiver_index);
        true
    }

    /// The client sent an inside packet (not a keepalive) on our session `receiver_index`.
    /// On a session it set up here while another appliance held it, that is the client moving
    /// here: claim. Traffic on older sessions claims nothing (a straggler on the session of a
    /// move that went away from us must not pull the session back).
    pub fn client_data(
        &mut self,
        peer: PeerIndex,
        receiver_index: u32,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if self.standby.get(&peer) == Some(&receiver_index) && !self.holds(peer) {
            self.claim(peer, ClaimReason::Client, now, &mut out);
        }
        out
    }

    /// The client's endpoint as this appliance saw it (kept for a later takeover).
    pub fn endpoint_seen(&mut self, peer: PeerIndex, endpoint: SocketAddr) {
        if let Some(s) = self.sessions.get_mut(&peer) {
            s.endpoint = Some(endpoint);
        }
    }

    /// `on_death`: called for the death of the session's holder. A crash claim is made only
    /// then: a claim that the "dead" peer writes afterwards proves it alive (a partition
    /// between the appliances, not a crash), and claiming again would make the client
    /// ping-pong between the two.
    fn evaluate(
        &mut self,
        peer: PeerIndex,
        now: DateTime<Utc>,
        on_death: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.sessions.get(&peer) else {
            return;
        };
        let holder = holder_of(s).clone();
        if holder != self.me
            && let Some(reason) = self.reason_to_claim(s, &holder, on_death)
        {
            self.claim(peer, reason, now, out);
            return;
        }
        self.tell(peer, holder == self.me, out);
    }

    fn reason_to_claim(
        &self,
        s: &SessionView,
        holder: &ApplianceId,
        on_death: bool,
    ) -> Option<ClaimReason> {
        let i_am_primary = s.primary == self.me;
        if !i_am_primary && s.shadow != self.me {
            return None;
        }
        // The holder died; only the session's other appliance takes over.
        let other = if i_am_primary { &s.shadow } else { &s.primary };
        if on_death && holder == other && self.dead.contains(holder) {
            return Some(ClaimReason::Crash);
        }
        // Steering named us after the current claim was made.
        let a = s.assigned.as_ref()?;
        if a.to.as_ref() != Some(&self.me) {
            return None;
        }
        let claimed_at = s.claim.as_ref().and_then(|c| c.claimed_at);
        if claimed_at.is_some_and(|c| a.at <= c) {
            return None;
        }
        if i_am_primary {
            (self.failback == Failback::Auto || a.manual).then_some(ClaimReason::Failback)
        } else {
            Some(ClaimReason::Predicted)
        }
    }

    fn claim(
        &mut self,
        peer: PeerIndex,
        reason: ClaimReason,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) {
        let me = self.me.clone();
        let region = self.region.clone();
        self.standby.remove(&peer);
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let previous = holder_of(s).clone();
        let epoch = s
            .claim
            .as_ref()
            .map_or(Epoch::default(), |c| c.epoch)
            .next();
        s.claim = Some(Claim {
            epoch,
            region,
            holder: me,
            claimed_at: Some(now),
            make_before_break: matches!(reason, ClaimReason::Predicted | ClaimReason::Failback),
        });
        out.push(Action::Claim {
            client: s.client.clone(),
            peer,
            epoch,
            reason,
        });
        match reason {
            ClaimReason::Crash => self.stats.crash_claims += 1,
            ClaimReason::Predicted | ClaimReason::Failback => self.stats.steered_claims += 1,
            ClaimReason::Client => self.stats.client_claims += 1,
        }
        let endpoint = s.endpoint;
        if matches!(reason, ClaimReason::Predicted | ClaimReason::Failback) {
            out.push(Action::Relay {
                peer,
                new_holder: true,
                partner: previous,
            });
        }
        self.tell(peer, true, out);
        if reason != ClaimReason::Client
            && let Some(endpoint) = endpoint
        {
            out.push(Action::Initiate { peer, endpoint });
        }
    }

    fn tell(&mut self, peer: PeerIndex, held: bool, out: &mut Vec<Action>) {
        let before = self.told.insert(peer, held);
        if before != Some(held) {
            out.push(Action::Hold { peer, held });
            if before == Some(true) && !held {
                self.stats.stood_down += 1;
                // After a crash claim (a partition, really) this appliance keeps answering
                // a client that still talks to it; relaying would only pull the client onto
                // an appliance that cannot read its session.
                if let Some(s) = self.sessions.get(&peer)
                    && s.claim.as_ref().is_some_and(|c| c.make_before_break)
                {
                    out.push(Action::Relay {
                        peer,
                        new_holder: false,
                        partner: holder_of(s).clone(),
                    });
                }
            }
        }
    }
}

fn holder_of(s: &SessionView) -> &ApplianceId {
    s.claim.as_ref().map_or(&s.primary, |c| &c.holder)
}
