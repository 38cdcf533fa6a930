//! [`DnsStatus`]: what the DNS listeners show the rest of the server (their counters, the
//! DNS-over-TCP limit, whether they are up), so the admin listener reads numbers through
//! methods instead of reaching into atomics and semaphores.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stats::{ApplianceSlots, Stats};

/// Status of the DNS listeners, shared by the UDP workers, the TCP servers and the admin
/// listener.
#[derive(Debug)]
pub struct DnsStatus {
    /// Counters of all TCP connections together (TCP is the slow path; sharing is cheap).
    tcp: Stats,
    /// One per UDP worker, each the only writer of its own.
    udp: Vec<Arc<Stats>>,
    /// Labels of the per-appliance counters; the publisher assigns them.
    slots: Arc<Mutex<ApplianceSlots>>,
    /// DNS-over-TCP connection slots.
    tcp_slots: Arc<Semaphore>,
    /// Configured DNS-over-TCP connection limit (in use = this - available slots).
    tcp_max: usize,
    /// TCP connections refused because every slot was taken.
    tcp_refused: AtomicU64,
    /// DNS-over-TLS handshakes that did not end in a session, by [`HandshakeFailure`] index.
    tls_handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Whether the listeners are up (false before they start and from shutdown on).
    listening: AtomicBool,
}

impl DnsStatus {
    /// Status for `udp_workers` UDP workers and at most `tcp_max` TCP connections at once,
    /// labelling appliance counters from `slots`; not yet listening.
    pub fn new(udp_workers: usize, tcp_max: usize, slots: Arc<Mutex<ApplianceSlots>>) -> Self {
        Self {
            tcp: Stats::default(),
            udp: (0..udp_workers).map(|_| Arc::default()).collect(),
            slots,
            tcp_slots: Arc::new(Semaphore::new(tcp_max)),
            tcp_max,
            tcp_refused: AtomicU64::new(0),
            tls_handshake_failures: Default::default(),
            listening: AtomicBool::new(false),
        }
    }

    /// The counters of each UDP worker, one to hand to each.
    pub fn udp_stats(&self) -> &[Arc<Stats>] {
        &self.udp
    }

    /// The counters of DNS over TCP.
    pub fn tcp_stats(&self) -> &Stats {
        &self.tcp
    }

    /// Every writer's counters, TCP first, for summing at scrape time.
    pub fn writers(&self) -> impl Iterator<Item = &Stats> {
        std::iter::once(&self.tcp).chain(self.udp.iter().map(|s| &**s))
    }

    /// The metric label of each appliance counter slot in use.
    pub fn appliance_labels(&self) -> Vec<(usize, String)> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .labels()
    }

    /// A slot for one more TCP connection, held while it is open; `None` (and counted as
    /// refused) when every slot is taken.
    pub fn admit_tcp(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.tcp_slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.tcp_refused.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Open DNS-over-TCP connections.
    pub fn tcp_in_use(&self) -> usize {
        self.tcp_max
            .saturating_sub(self.tcp_slots.available_permits())
    }

    /// TCP connections refused at the limit so far.
    pub fn tcp_refused(&self) -> u64 {
        self.tcp_refused.load(Ordering::Relaxed)
    }

    /// Counts a DNS-over-TLS handshake that did not end in a session.
    pub fn tls_handshake_failed(&self, why: HandshakeFailure) {
        self.tls_handshake_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// DNS-over-TLS handshakes that did not end in a session so far, for `why`.
    pub fn tls_handshake_failures(&self, why: HandshakeFailure) -> u64 {
        self.tls_handshake_failures[why as usize].load(Ordering::Relaxed)
    }

    /// Whether the listeners are up.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Records that the listeners are up (`true`) or shutting down (`false`).
    pub fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Relaxed);
    }
}

/// Why a DNS-over-TLS handshake did not end in a session. Kept apart because they mean different
/// things to an operator: `Refused` is a client that cannot trust us (wrong CA, expired or
/// renamed certificate) or does not speak TLS; `Closed` is a peer that went away, which
/// scanners and health checks that hang up right after the handshake also are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A TLS error: an alert from the client, a malformed or non-TLS record.
    Refused = 0,
    /// The peer closed or reset the connection before the handshake (and its last flight,
    /// such as session tickets) was through.
    Closed = 1,
    /// No complete handshake within the idle timeout.
    TimedOut = 2,
}

impl HandshakeFailure {
    /// Every reason, in index order.
    pub const ALL: [Self; 3] = [Self::Refused, Self::Closed, Self::TimedOut];

    /// What a failed handshake's error says (rustls reports TLS errors as `InvalidData`).
    pub fn of(error: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match error.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                Self::Closed
            }
            TimedOut => Self::TimedOut,
            _ => Self::Refused,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Closed => "closed",
            Self::TimedOut => "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_slots_are_counted_in_use_and_refused_at_the_limit() {
        let status = DnsStatus::new(2, 1, Arc::default());
        assert_eq!(status.writers().count(), 3);
        let first = status.admit_tcp().expect("a free slot");
        assert_eq!(status.tcp_in_use(), 1);
        assert!(status.admit_tcp().is_none());
        assert_eq!(status.tcp_refused(), 1);
        drop(first);
        assert_eq!(status.tcp_in_use(), 0);
        assert!(!status.listening());
        status.set_listening(true);
        assert!(status.listening());
    }

    #[test]
    fn a_handshake_failure_is_told_from_its_error() {
        use std::io::{Error, ErrorKind};
        let why = |kind| HandshakeFailure::of(&Error::new(kind, "x"));
        // rustls wraps every TLS error (an alert received, a bad record) as InvalidData.
        assert_eq!(why(ErrorKind::InvalidData), HandshakeFailure::Refused);
        for gone in [
            ErrorKind::UnexpectedEof,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
        ] {
            assert_eq!(why(gone), HandshakeFailure::Closed, "{gone:?}");
        }
        let status = DnsStatus::new(1, 1, Arc::default());
        status.tls_handshake_failed(HandshakeFailure::Closed);
        status.tls_handshake_failed(HandshakeFailure::Closed);
        status.tls_handshake_failed(HandshakeFailure::TimedOut);
        let counts = HandshakeFailure::ALL.map(|w| status.tls_handshake_failures(w));
        assert_eq!(counts, [0, 2, 1]);
    }
}
