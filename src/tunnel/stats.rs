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
    /// Keepalives sent after a takeover to clients that went quiet here.
    pub takeover_keepalives: AtomicU64,
    /// Datagrams relayed between the two appliances of a make-before-break move.
    pub relayed: AtomicU64,
    /// Peers configured.
    pub peers: AtomicU64,
    /// Peers with a live session (updated every timer tick).
    pub sessions: AtomicU64,
    /// Data-plane workers running (each with its own socket).
    pub workers: AtomicU64,
    /// Datagrams received per worker: how evenly the kernel spreads clients over the sockets.
    worker_rx: [AtomicU64; super::MAX_THREADS],
    drops: [AtomicU64; DropReason::ALL.len()],
    relay_rejections: [AtomicU64; RelayRejection::ALL.len()],
}

/// Why a relay message (see [`crate::takeover::wire::Relay`]) was not acted on. Each is also
/// counted as a drop of the matching [`DropReason`], so the health rows' drop total is as
/// before; these say which drops were relay messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRejection {
    /// Takeover is off here: no key to check relay messages with.
    NoKey,
    /// The MAC does not verify (forged, or another group's key).
    BadMac,
    /// Not a well-formed relay message.
    Malformed,
    /// From the new holder, for a session this appliance does not have.
    UnknownSession,
    /// A reply to forward to a client, from an address that is not the partner of a move in
    /// progress here (it would make this appliance send what a stranger chose).
    NotPartner,
}

impl RelayRejection {
    /// Every reason, for counters.
    pub const ALL: [RelayRejection; 5] = [
        Self::NoKey,
        Self::BadMac,
        Self::Malformed,
        Self::UnknownSession,
        Self::NotPartner,
    ];

    /// Short name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoKey => "no_key",
            Self::BadMac => "bad_mac",
            Self::Malformed => "malformed",
            Self::UnknownSession => "unknown_session",
            Self::NotPartner => "not_partner",
        }
    }

    /// The drop it is also counted as.
    pub fn drop_reason(self) -> DropReason {
        match self {
            Self::NoKey | Self::Malformed => DropReason::Malformed,
            Self::BadMac => DropReason::BadMac,
            Self::UnknownSession => DropReason::UnknownIndex,
            Self::NotPartner => DropReason::Unexpected,
        }
    }
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

    /// Counts one rejected relay message (and its drop).
    pub fn count_relay_rejection(&self, why: RelayRejection) {
        self.count_drop(why.drop_reason());
        if let Some(c) = RelayRejection::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.relay_rejections.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Relay messages rejected for one reason so far.
    pub fn relay_rejections(&self, why: RelayRejection) -> u64 {
        RelayRejection::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.relay_rejections.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one datagram received by worker `worker` (ignored beyond [`super::MAX_THREADS`]).
    pub fn count_worker_rx(&self, worker: usize) {
        if let Some(c) = self.worker_rx.get(worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Datagrams received by each running worker so far.
    pub fn worker_rx(&self) -> Vec<u64> {
        let n = self.workers.load(Ordering::Relaxed) as usize;
        self.worker_rx
            .iter()
            .take(n)
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
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

/// The data plane's counters, for the agent's `/metrics`. The takeover counters the data plane
/// owns (initiations sent, datagrams relayed, relay messages rejected) are here too.
impl crate::metrics::Collector for DeviceStats {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.counters(
            "shadowsteer_wg_datagrams",
            "WireGuard port datagrams, by direction (rx includes heartbeats and relay messages).",
            "direction",
            [
                ("rx", get(&self.rx_datagrams)),
                ("tx", get(&self.tx_datagrams)),
            ],
        )?;
        let per_worker: Vec<(String, u64)> = self
            .worker_rx()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n))
            .collect();
        out.counters(
            "shadowsteer_wg_worker_rx_datagrams",
            "Datagrams received by each data-plane worker (one SO_REUSEPORT socket each).",
            "worker",
            per_worker.iter().map(|(w, n)| (w.as_str(), *n)),
        )?;
        out.counters(
            "shadowsteer_wg_bytes",
            "Bytes of those datagrams, by direction.",
            "direction",
            [("rx", get(&self.rx_bytes)), ("tx", get(&self.tx_bytes))],
        )?;
        out.counters(
            "shadowsteer_wg_inside_packets",
            "Packets inside the tunnel: rx decrypted and delivered, tx encrypted and sent.",
            "direction",
            [("rx", get(&self.inside_rx)), ("tx", get(&self.inside_tx))],
        )?;
        out.counters(
            "shadowsteer_wg_dropped",
            "Datagrams and packets dropped by the data plane, by reason.",
            "reason",
            DropReason::ALL.map(|r| (r.as_str(), self.drops(r))),
        )?;
        out.counter(
            "shadowsteer_wg_cookie_replies",
            "Cookie replies sent (handshakes beyond the rate limit).",
            get(&self.cookie_replies),
        )?;
        out.counter(
            "shadowsteer_wg_send_errors",
            "Datagrams the socket refused to send.",
            get(&self.send_errors),
        )?;
        out.counter(
            "shadowsteer_wg_events_dropped",
            "Events the session recorder or the takeover task could not take in time.",
            get(&self.events_dropped),
        )?;
        out.gauge(
            "shadowsteer_wg_peers",
            "Peers configured.",
            get(&self.peers),
        )?;
        out.gauge(
            "shadowsteer_wg_sessions",
            "Peers with a live session.",
            get(&self.sessions),
        )?;
        out.counter(
            "shadowsteer_takeover_initiations",
            "Handshake initiations sent to clients to take their sessions over.",
            get(&self.takeover_initiations),
        )?;
        out.counter(
            "shadowsteer_takeover_keepalives",
            "Keepalives sent after a takeover to clients that went quiet here (a stray packet of the old holder took them back).",
            get(&self.takeover_keepalives),
        )?;
        out.counter(
            "shadowsteer_takeover_relayed",
            "Datagrams relayed to the other appliance of a make-before-break move.",
            get(&self.relayed),
        )?;
        out.counters(
            "shadowsteer_takeover_relay_rejected",
            "Relay messages ignored, by reason (each also counted in shadowsteer_wg_dropped_total).",
            "reason",
            RelayRejection::ALL.map(|r| (r.as_str(), self.relay_rejections(r))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_counters_cover_running_workers_only() {
        let stats = DeviceStats::default();
        stats.workers.store(2, Ordering::Relaxed);
        stats.count_worker_rx(1);
        stats.count_worker_rx(1);
        stats.count_worker_rx(0);
        stats.count_worker_rx(5);
        // Beyond the array: ignored, no panic.
        stats.count_worker_rx(super::super::MAX_THREADS);
        assert_eq!(stats.worker_rx(), vec![1, 2]);
    }
}
