//! Counters the data plane bumps and the telemetry tasks read. Relaxed atomics: each value is
//! exact on its own; a snapshot is not one instant across values, which telemetry does not need.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::peer::DropReason;

/// Live counters of one device. Totals since start; readers take differences.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Datagrams received on the listener.
    pub rx_datagrams: AtomicU64,
    /// Bytes of those datagrams.
    pub rx_bytes: AtomicU64,
    /// Datagrams sent.
    pub tx_datagrams: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Decrypted packets delivered inside.
    pub inside_rx: AtomicU64,
    /// Inside packets encrypted and sent to peers.
    pub inside_tx: AtomicU64,
    /// Cookie replies sent (handshake load).
    pub cookie_replies: AtomicU64,
    /// Datagrams the socket refused to send (buffer full, unreachable).
    pub send_errors: AtomicU64,
    /// Events the session recorder could not take in time (it catches up at the next checkpoint).
    pub events_dropped: AtomicU64,
    /// Handshake initiations sent to take a session over.
    pub takeover_initiations: AtomicU64,
    /// Datagrams relayed between the two appliances of a make-before-break move.
    pub relayed: AtomicU64,
    /// Peers configured.
    pub peers: AtomicU64,
    /// Peers with a live session (updated every timer tick).
    pub sessions: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl DeviceStats {
    /// Counts one drop.
    pub fn count_drop(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let Some(c) = self.drops.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops for one reason so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let dropped: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops(*r)))
            .collect();
        StatsSnapshot {
            rx_datagrams: get(&self.rx_datagrams),
            rx_bytes: get(&self.rx_bytes),
            tx_datagrams: get(&self.tx_datagrams),
            tx_bytes: get(&self.tx_bytes),
            inside_rx: get(&self.inside_rx),
            inside_tx: get(&self.inside_tx),
            cookie_replies: get(&self.cookie_replies),
            send_errors: get(&self.send_errors),
            events_dropped: get(&self.events_dropped),
            peers: get(&self.peers),
            sessions: get(&self.sessions),
            packets_dropped: dropped.iter().map(|(_, n)| n).sum(),
            handshake_failures: DropReason::ALL
                .iter()
                .filter(|r| r.is_handshake_failure())
                .map(|r| self.drops(*r))
                .sum(),
            dropped,
        }
    }
}

/// Counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StatsSnapshot {
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets delivered inside.
    pub inside_rx: u64,
    /// Inside packets sent to peers.
    pub inside_tx: u64,
    /// Cookie replies sent.
    pub cookie_replies: u64,
    /// Send failures.
    pub send_errors: u64,
    /// Recorder events dropped.
    pub events_dropped: u64,
    /// Peers configured.
    pub peers: u64,
    /// Live sessions.
    pub sessions: u64,
    /// All drops.
    pub packets_dropped: u64,
    /// Failed handshakes (bad initiations, unknown keys).
    pub handshake_failures: u64,
    /// Drops by reason.
    pub dropped: Vec<(&'static str, u64)>,
}
