//! The client helper's two sessions: the active one, which carries traffic, and the standby
//! one, set up in advance with the other appliance of the client's pair (what
//! `standby.<id>.c.<zone>` names), so that a move switches to an established session instead
//! of waiting for a handshake (make-before-break). Pure: no sockets, time is an argument.
//!
//! - [`route`]: which session a datagram belongs to.
//! - [`Silence`]: when the active appliance has answered nothing for too long.
//!
//! The appliance side tells a standby session from a move by what flows on it: a handshake
//! alone claims nothing; the client's first inside packet on a session it set up with an
//! appliance that does not hold the session does (see `takeover::Coordinator::client_data`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// WireGuard message types (first byte of a datagram).
pub(super) const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;

/// One of the helper's two sessions, as [`route`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The local index its receiver indexes carry (`receiver_index >> 8`).
    pub index: u32,
    /// The appliance it talks to.
    pub endpoint: Option<SocketAddr>,
}

/// Which of `slots` a datagram from `src` belongs to. Responses, cookie replies and data
/// name our receiver index, whose upper 24 bits are the session's local index: replies the
/// old appliance still sends after a switch reach the session they were encrypted for. A
/// handshake initiation names none: one from the standby appliance goes to the standby
/// session (the shadow group taking the session over); any other to the active one (an
/// appliance initiating from an address we do not know, as before).
pub fn route(datagram: &[u8], src: SocketAddr, slots: &[Slot; 2], active: usize) -> usize {
    let standby = 1 - active.min(1);
    match datagram.first() {
        Some(&MSG_INIT) => {
            if slots[standby].endpoint == Some(src) && slots[active.min(1)].endpoint != Some(src) {
                standby
            } else {
                active.min(1)
            }
        }
        // A response names our index after its own (bytes 8..12); cookie replies and data
        // name it first (bytes 4..8).
        Some(&kind) => datagram
            .get(if kind == MSG_RESPONSE { 8..12 } else { 4..8 })
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) >> 8)
            .and_then(|i| slots.iter().position(|s| s.index == i))
            .unwrap_or(active.min(1)),
        None => active.min(1),
    }
}

/// How long the active appliance may stay silent: the configured time, but at least three
/// handshake round trips (a slow path is not a dead appliance). `None`: never switch on
/// silence.
pub fn switch_after(configured: Duration, rtt: Option<Duration>) -> Option<Duration> {
    if configured.is_zero() {
        return None;
    }
    Some(configured.max(rtt.unwrap_or_default() * 3))
}

/// Watches the active appliance: silent since the first packet sent after the last one heard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Silence {
    since: Option<Instant>,
}

impl Silence {
    /// The helper sent the active appliance an inside packet.
    pub fn handle_sent(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// An authenticated datagram came from the active appliance.
    pub fn handle_heard(&mut self) {
        self.since = None;
    }

    /// Forget the current watch (after a switch).
    pub fn reset(&mut self) {
        self.since = None;
    }

    /// When the appliance will have been silent for `after`.
    pub fn deadline(&self, after: Duration) -> Option<Instant> {
        self.since.map(|s| s + after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, receiver: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0] = kind;
        let at = if kind == 2 { 8 } else { 4 };
        d[at..at + 4].copy_from_slice(&receiver.to_le_bytes());
        // A response's own index (bytes 4..8) names the appliance's session, never ours.
        if kind == 2 {
            d[4..8].copy_from_slice(&(7u32 << 8).to_le_bytes());
        }
        d
    }

    #[test]
    fn datagrams_go_to_the_session_they_name() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let slots = [
            Slot {
                index: 7,
                endpoint: Some(a),
            },
            Slot {
                index: 8,
                endpoint: Some(b),
            },
        ];
        // Data and responses by receiver index, whoever relays them.
        assert_eq!(route(&msg(4, 8 << 8 | 3), a, &slots, 0), 1);
        assert_eq!(route(&msg(4, 7 << 8), b, &slots, 1), 0);
        assert_eq!(route(&msg(2, 8 << 8 | 255), a, &slots, 0), 1);
        assert_eq!(route(&msg(3, 7 << 8 | 1), b, &slots, 1), 0);
        // An unknown index or a runt: the active session (which drops it).
        assert_eq!(route(&msg(4, 9 << 8), b, &slots, 1), 1);
        assert_eq!(route(&[4, 0, 0], b, &slots, 0), 0);
        assert_eq!(route(&[], b, &slots, 0), 0);
        // Initiations by source: the standby appliance's to the standby session.
        assert_eq!(route(&msg(1, 0), b, &slots, 0), 1);
        assert_eq!(route(&msg(1, 0), a, &slots, 0), 0);
        let elsewhere: SocketAddr = "198.51.100.1:51820".parse().unwrap();
        assert_eq!(route(&msg(1, 0), elsewhere, &slots, 1), 1);
        assert_eq!(route(&msg(1, 0), a, &slots, 1), 0);
        // Both sessions on one appliance (DNS moved before the standby was ready): active.
        let same = [
            slots[0],
            Slot {
                index: 8,
                endpoint: Some(a),
            },
        ];
        assert_eq!(route(&msg(1, 0), a, &same, 0), 0);
    }

    #[test]
    fn silence_counts_from_the_first_unanswered_packet() {
        let t0 = Instant::now();
        let after = Duration::from_millis(100);
        let mut s = Silence::default();
        assert_eq!(s.deadline(after), None);
        s.handle_sent(t0);
        s.handle_sent(t0 + Duration::from_millis(10));
        assert_eq!(s.deadline(after), Some(t0 + after));
        s.handle_heard();
        assert_eq!(s.deadline(after), None);
        s.handle_sent(t0 + Duration::from_millis(50));
        assert_eq!(s.deadline(after), Some(t0 + Duration::from_millis(150)));
        s.reset();
        assert_eq!(s.deadline(after), None);
    }

    #[test]
    fn switch_after_respects_the_round_trip_and_zero_disables() {
        let ms = Duration::from_millis;
        assert_eq!(switch_after(ms(0), Some(ms(5))), None);
        assert_eq!(switch_after(ms(100), None), Some(ms(100)));
        assert_eq!(switch_after(ms(100), Some(ms(10))), Some(ms(100)));
        assert_eq!(switch_after(ms(100), Some(ms(200))), Some(ms(600)));
    }
}
