//! The session recorder's core: which fields of which sessions must be written.
//!
//! It keeps, per client, the state last written to `session_state` and the latest state
//! observed. A write is due only when they differ, and carries only the fields that differ.
//! Observations arrive at events (handshake, endpoint change) and checkpoints, never per
//! packet, so writes are bounded by events and checkpoints whatever the traffic; repeated
//! observations before a write coalesce into one write. A failed write leaves the session
//! due; it is retried with whatever is latest then. Pure: no database, no clock.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use crate::domain::{PeerIndex, SessionCounters, SessionRole};
use crate::store::sessions::ChangedFields;

/// The recorded fields of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// What the appliance is for the client.
    pub role: SessionRole,
    /// Client endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Receiver index of the current session.
    pub receiver_index: Option<u32>,
    /// Last handshake.
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Counters at the checkpoint.
    pub counters: SessionCounters,
}

impl Recorded {
    /// The fields of `self` that differ from `written` (everything, for a first write).
    pub fn changes_since(&self, written: Option<&Recorded>) -> ChangedFields {
        match written {
            None => ChangedFields {
                role: true,
                endpoint: self.endpoint.is_some(),
                receiver_index: self.receiver_index.is_some(),
                handshake: self.last_handshake_at.is_some(),
                counters: self.counters != SessionCounters::default(),
            },
            Some(w) => ChangedFields {
                role: self.role != w.role,
                endpoint: self.endpoint != w.endpoint,
                receiver_index: self.receiver_index != w.receiver_index,
                handshake: self.last_handshake_at != w.last_handshake_at,
                counters: self.counters != w.counters,
            },
        }
    }
}

/// Written and observed state of every session of one appliance.
#[derive(Debug, Default)]
pub struct Recorder {
    written: HashMap<PeerIndex, Recorded>,
    latest: HashMap<PeerIndex, Recorded>,
    due: BTreeSet<PeerIndex>,
}

/// A write the shell should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueWrite {
    /// The session.
    pub peer: PeerIndex,
    /// Its latest state.
    pub state: Recorded,
    /// Fields that differ from what was written.
    pub changed: ChangedFields,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in the latest state of a session.
    pub fn observe(&mut self, peer: PeerIndex, state: Recorded) {
        let changed = state.changes_since(self.written.get(&peer)).any();
        self.latest.insert(peer, state);
        if changed {
            self.due.insert(peer);
        } else {
            self.due.remove(&peer);
        }
    }

    /// Up to `max` writes that are due, lowest peer index first.
    #[must_use]
    pub fn poll_writes(&self, max: usize) -> Vec<DueWrite> {
        self.due
            .iter()
            .take(max)
            .filter_map(|peer| {
                let state = *self.latest.get(peer)?;
                Some(DueWrite {
                    peer: *peer,
                    state,
                    changed: state.changes_since(self.written.get(peer)),
                })
            })
            .collect()
    }

    /// Records that `write` reached the database.
    pub fn handle_written(&mut self, write: &DueWrite) {
        self.written.insert(write.peer, write.state);
        if self.latest.get(&write.peer) == Some(&write.state) {
            self.due.remove(&write.peer);
        }
    }

    /// Records that a due write cannot be made (the row is not ours): it is not retried until
    /// the session changes again.
    pub fn handle_refused(&mut self, write: &DueWrite) {
        self.handle_written(write);
    }

    /// Forgets a session (the client was removed).
    pub fn forget(&mut self, peer: PeerIndex) {
        self.written.remove(&peer);
        self.latest.remove(&peer);
        self.due.remove(&peer);
    }

    /// Forgets every session whose peer `keep` rejects (clients no longer served).
    pub fn retain(&mut self, mut keep: impl FnMut(PeerIndex) -> bool) {
        self.written.retain(|p, _| keep(*p));
        self.latest.retain(|p, _| keep(*p));
        self.due.retain(|p| keep(*p));
    }

    /// Sessions with a write due.
    pub fn due(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(endpoint_port: u16, rx: u64) -> Recorded {
        Recorded {
            role: SessionRole::Primary,
            endpoint: Some(SocketAddr::from(([192, 0, 2, 1], endpoint_port))),
            receiver_index: Some(42 << 8),
            last_handshake_at: None,
            counters: SessionCounters {
                rx_packets: rx,
                ..SessionCounters::default()
            },
        }
    }

    #[test]
    fn writes_only_changed_fields_and_coalesces() {
        let mut r = Recorder::new();
        let p = PeerIndex::new(42).unwrap();
        r.observe(p, state(1000, 0));
        let w = r.poll_writes(10);
        assert_eq!(w.len(), 1);
        assert!(w[0].changed.endpoint && w[0].changed.receiver_index && !w[0].changed.counters);
        r.handle_written(&w[0]);
        assert_eq!(r.due(), 0);
        // Same state again: nothing due.
        r.observe(p, state(1000, 0));
        assert!(r.poll_writes(10).is_empty());
        // Three checkpoints before a write: one write, counters only.
        for rx in 1..=3 {
            r.observe(p, state(1000, rx));
        }
        let w = r.poll_writes(10);
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].changed,
            ChangedFields {
                counters: true,
                ..ChangedFields::default()
            }
        );
        assert_eq!(w[0].state.counters.rx_packets, 3);
        // A failed write (no handle_written) stays due and picks up later changes.
        r.observe(p, state(2000, 3));
        let w = r.poll_writes(10);
        assert!(w[0].changed.endpoint && w[0].changed.counters);
        r.handle_written(&w[0]);
        assert_eq!(r.due(), 0);
        r.observe(p, state(3000, 3));
        r.retain(|_| false);
        assert_eq!(r.due(), 0);
        assert!(r.poll_writes(10).is_empty());
    }

    proptest! {
        /// However many observations, each write is due to a difference from the last write,
        /// and after writing everything nothing stays due.
        #[test]
        fn writes_never_exceed_distinct_changes(obs in proptest::collection::vec((1i64..5, 0u16..3, 0u64..3), 0..200)) {
            let mut r = Recorder::new();
            let mut writes = 0usize;
            let mut distinct_changes = 0usize;
            let mut last: HashMap<PeerIndex, Recorded> = HashMap::new();
            for (peer, port, rx) in obs {
                let p = PeerIndex::new(peer).unwrap();
                let s = state(1000 + port, rx);
                if last.get(&p) != Some(&s) {
                    distinct_changes += 1;
                    last.insert(p, s);
                }
                r.observe(p, s);
                for w in r.poll_writes(100) {
                    prop_assert!(w.changed.any());
                    r.handle_written(&w);
                    writes += 1;
                }
            }
            prop_assert!(writes <= distinct_changes);
            prop_assert_eq!(r.due(), 0);
        }
    }
}
