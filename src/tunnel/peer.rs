//! One WireGuard peer: boringtun's `noise::Tunn` plus the bookkeeping the agent needs (the
//! peer's authenticated endpoint, traffic counters, handshake times and round-trip samples).
//!
//! Pure: no sockets. The caller passes datagrams in and carries out the returned [`Action`].
//! Our own bookkeeping takes `now` as an argument; boringtun's timers read the clock themselves
//! (a known exception, see STYLE.md), which is why timer behaviour is tested end to end.
//!
//! Drain rule: after an [`Action::Send`] from [`Peer::handle_datagram`], call [`Peer::flush`]
//! until it returns [`Action::Done`] (boringtun queues packets while a handshake is pending).
//! After every call, take events with [`Peer::poll_event`] until `None`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use crate::domain::{PeerIndex, PublicKey, SecretKey, SessionCounters};

/// WireGuard message types (first byte of a datagram).
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;

/// A session is usable for this long after its handshake (WireGuard's REJECT_AFTER_TIME).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// Events kept between polls; a caller that never polls loses the oldest, not memory.
const MAX_EVENTS: usize = 16;

/// Why a datagram or packet was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a WireGuard message (wrong type, size or reserved bytes).
    Malformed,
    /// A handshake message whose MAC1 is wrong (not meant for our key).
    BadMac,
    /// A handshake initiation that failed to decrypt, or is a replay.
    HandshakeFailed,
    /// A handshake initiation from a key that is not a configured peer.
    UnknownPeer,
    /// A message for a receiver index no peer has.
    UnknownIndex,
    /// A data packet that failed to decrypt, was a replay, or had no session.
    Decrypt,
    /// A decrypted packet whose source is not the peer's tunnel address (or not IP).
    Spoofed,
    /// Under handshake load, from a sender that cannot answer cookies (no address).
    UnderLoad,
    /// Under handshake load, without a valid cookie, from a source address that already had
    /// its cookie replies this second (see `tunnel::cookie_budget`).
    CookieBudget,
    /// Nowhere to send: the peer has no known endpoint yet.
    NoEndpoint,
    /// An inside packet for an address no peer has.
    NoRoute,
    /// A message that is valid but not expected now (e.g. a stray cookie reply).
    Unexpected,
}

impl DropReason {
    /// Every reason, for counters.
    pub const ALL: [DropReason; 12] = [
        Self::Malformed,
        Self::BadMac,
        Self::HandshakeFailed,
        Self::UnknownPeer,
        Self::UnknownIndex,
        Self::Decrypt,
        Self::Spoofed,
        Self::UnderLoad,
        Self::CookieBudget,
        Self::NoEndpoint,
        Self::NoRoute,
        Self::Unexpected,
    ];

    /// Short name for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadMac => "bad_mac",
            Self::HandshakeFailed => "handshake_failed",
            Self::UnknownPeer => "unknown_peer",
            Self::UnknownIndex => "unknown_index",
            Self::Decrypt => "decrypt",
            Self::Spoofed => "spoofed",
            Self::UnderLoad => "under_load",
            Self::CookieBudget => "cookie_budget",
            Self::NoEndpoint => "no_endpoint",
            Self::NoRoute => "no_route",
            Self::Unexpected => "unexpected",
        }
    }

    /// Whether this drop is a failed handshake (for the health row's `handshake_failures`).
    pub fn is_handshake_failure(self) -> bool {
        matches!(self, Self::HandshakeFailed | Self::UnknownPeer)
    }

    /// Maps a boringtun error on a message of type `msg`.
    pub(crate) fn from_wireguard(err: &WireGuardError, msg: u8) -> Self {
        match err {
            WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => {
                Self::Malformed
            }
            WireGuardError::InvalidMac => Self::BadMac,
            WireGuardError::UnderLoad => Self::UnderLoad,
            WireGuardError::WrongKey => Self::UnknownPeer,
            WireGuardError::UnexpectedPacket | WireGuardError::WrongIndex => Self::Unexpected,
            _ if msg == MSG_INIT => Self::HandshakeFailed,
            _ if msg == MSG_DATA => Self::Decrypt,
            _ => Self::Unexpected,
        }
    }
}

/// What the caller must do after a call. Borrowed bytes live in the caller's buffer.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Action<'a> {
    /// Nothing (more) to do.
    Done,
    /// Send these bytes to the peer's endpoint ([`Peer::endpoint`]), or for a cookie reply to
    /// the sender of the datagram being handled.
    Send(&'a [u8]),
    /// A decrypted IP packet from the peer's tunnel address, for the inside of the tunnel.
    Inside(&'a mut [u8]),
    /// The input was dropped, for this reason.
    Drop(DropReason),
}

/// Something the session recorder or telemetry wants to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A handshake completed: traffic now uses the session with this receiver index (ours).
    Handshake {
        /// Our receiver index of the new session (upper 24 bits: the peer index).
        receiver_index: u32,
        /// When it completed.
        at: Instant,
    },
    /// The peer's authenticated endpoint moved (or became known).
    Endpoint(SocketAddr),
    /// A round-trip time measured from handshake timing.
    Rtt(Duration),
}

/// Static settings of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Stable index; boringtun's receiver indexes are `index << 8 | slot`.
    pub index: PeerIndex,
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// The only source address the peer may use inside the tunnel.
    pub tunnel_ip: IpAddr,
    /// Persistent keepalive interval in seconds, if any.
    pub keepalive: Option<u16>,
}

/// One peer's tunnel state.
pub struct Peer {
    spec: PeerSpec,
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    counters: SessionCounters,
    /// A handshake response we sent and when: completed by the first data packet using it.
    pending_response: Option<(u32, Instant)>,
    receiver_index: Option<u32>,
    last_handshake: Option<Instant>,
    last_rtt: Option<Duration>,
    /// When the peer last sent an authenticated data packet (or keepalive).
    last_data: Option<Instant>,
    events: VecDeque<PeerEvent>,
    /// Whether authenticated packets from a new address move the endpoint (WireGuard roaming,
    /// on for servers) or only handshake initiations do (the client helper: it follows DNS and
    /// the shadow group's takeover initiations, not stray packets from an appliance it left).
    follow_roaming: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("spec", &self.spec)
            .field("endpoint", &self.endpoint)
            .field("counters", &self.counters)
            .field("receiver_index", &self.receiver_index)
            .finish_non_exhaustive()
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

impl Peer {
    /// A peer talking to `spec.public_key` with our static key `own`, standing alone (the
    /// client helper, tests): boringtun gives it a handshake limiter of its own (10 handshakes/s
    /// before cookies, restarted by [`Peer::update_timers`]).
    pub fn new(own: &SecretKey, spec: PeerSpec) -> Self {
        Self::build(own, spec, None)
    }

    /// A peer behind a listener that checks every handshake message with its own limiter
    /// before handing it over (see [`super::router`]). boringtun checks again inside the
    /// tunnel with `limiter`, so that must be one that never limits: a limiter per peer would
    /// have a cookie secret of its own (a cookie from the listener's fails its MAC2 check) and
    /// a count that anyone knowing the peer's public key can push over its limit.
    pub fn with_limiter(own: &SecretKey, spec: PeerSpec, limiter: Arc<RateLimiter>) -> Self {
        Self::build(own, spec, Some(limiter))
    }

    fn build(own: &SecretKey, spec: PeerSpec, limiter: Option<Arc<RateLimiter>>) -> Self {
        let secret = x25519::StaticSecret::from(*own.expose_bytes());
        let public = x25519::PublicKey::from(*spec.public_key.as_bytes());
        let tunn = Tunn::new(
            secret,
            public,
            None,
            spec.keepalive,
            spec.index.get(),
            limiter,
        );
        Self {
            spec,
            tunn,
            endpoint: None,
            counters: SessionCounters::default(),
            pending_response: None,
            receiver_index: None,
            last_handshake: None,
            last_rtt: None,
            last_data: None,
            events: VecDeque::new(),
            follow_roaming: true,
        }
    }

    /// Follows only handshake initiations to new addresses (see `follow_roaming`). An
    /// initiation proves the service key and a fresh timestamp (a replay is refused by the
    /// handshake itself): an appliance of the group is taking the session over.
    pub fn pin_endpoint(&mut self) {
        self.follow_roaming = false;
    }

    /// The peer's settings.
    pub fn spec(&self) -> &PeerSpec {
        &self.spec
    }

    /// Updates settings that do not need a new tunnel (address, keepalive is fixed at creation).
    pub fn set_tunnel_ip(&mut self, ip: IpAddr) {
        self.spec.tunnel_ip = ip;
    }

    /// The last authenticated address of the peer.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the endpoint without authentication: for the initiating side (client helper, a
    /// shadow taking over), which learns it from DNS or the session state.
    pub fn set_endpoint(&mut self, addr: SocketAddr) {
        if self.endpoint != Some(addr) {
            self.endpoint = Some(addr);
            self.push_event(PeerEvent::Endpoint(addr));
        }
    }

    /// Traffic counters (inside packets and bytes).
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Our receiver index of the current session.
    pub fn receiver_index(&self) -> Option<u32> {
        self.receiver_index
    }

    /// When the current session's handshake completed.
    pub fn last_handshake(&self) -> Option<Instant> {
        self.last_handshake
    }

    /// The last round-trip time measured from handshake timing.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// When the peer last sent us an authenticated data packet or keepalive.
    pub fn last_data(&self) -> Option<Instant> {
        self.last_data
    }

    /// Whether the peer has a session younger than [`SESSION_LIFETIME`] at `now`.
    pub fn is_active(&self, now: Instant) -> bool {
        self.last_handshake
            .is_some_and(|t| now.saturating_duration_since(t) < SESSION_LIFETIME)
    }

    /// The next event, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: PeerEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn handshake_done(&mut self, now: Instant, receiver_index: u32, rtt: Option<Duration>) {
        self.receiver_index = Some(receiver_index);
        self.last_handshake = Some(now);
        self.push_event(PeerEvent::Handshake {
            receiver_index,
            at: now,
        });
        if let Some(rtt) = rtt {
            self.last_rtt = Some(rtt);
            self.push_event(PeerEvent::Rtt(rtt));
        }
    }

    /// Notes an authenticated packet from `src`: WireGuard roaming follows it.
    fn authenticated_from(&mut self, src: SocketAddr) {
        if self.follow_roaming && self.endpoint != Some(src) {
            self.endpoint = Some(src);
            self.push_event(PeerEvent::Endpoint(src));
        }
    }

    /// Handles one datagram from `src` addressed to this peer. `dst` must hold at least
    /// `datagram.len() + 32` and 148 bytes.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> Action<'a> {
        let msg = datagram.first().copied().unwrap_or(0);
        if datagram.is_empty() || dst.len() < (datagram.len() + 32).max(148) {
            return Action::Drop(DropReason::Malformed);
        }
        match self.tunn.decapsulate(Some(src.ip()), datagram, dst) {
            TunnResult::Done => {
                match msg {
                    // A keepalive: authenticated, and may confirm a new session.
                    MSG_DATA => self.on_data(now, src, datagram),
                    // A cookie reply was stored; nothing to send.
                    MSG_COOKIE => {}
                    _ => {}
                }
                Action::Done
            }
            TunnResult::Err(e) => Action::Drop(DropReason::from_wireguard(&e, msg)),
            TunnResult::WriteToNetwork(out) => {
                match (msg, out.first().copied()) {
                    // We answered an initiation: the peer proved its key and a fresh timestamp.
                    (MSG_INIT, Some(MSG_RESPONSE)) => {
                        if let Some(ours) = u32_at(out, 4) {
                            self.pending_response = Some((ours, now));
                        }
                        if self.endpoint != Some(src) {
                            self.endpoint = Some(src);
                            self.push_event(PeerEvent::Endpoint(src));
                        }
                    }
                    // Our initiation was answered: the session is ours now.
                    (MSG_RESPONSE, Some(MSG_DATA)) => {
                        self.authenticated_from(src);
                        if let Some(ours) = u32_at(datagram, 8) {
                            let rtt = self
                                .tunn
                                .stats()
                                .4
                                .map(|ms| Duration::from_millis(u64::from(ms)));
                            self.handshake_done(now, ours, rtt);
                        }
                    }
                    _ => {}
                }
                Action::Send(out)
            }
            TunnResult::WriteToTunnelV4(packet, src_ip) => {
                self.inside(now, src, datagram, packet, IpAddr::V4(src_ip))
            }
            TunnResult::WriteToTunnelV6(packet, src_ip) => {
                self.inside(now, src, datagram, packet, IpAddr::V6(src_ip))
            }
        }
    }

    fn on_data(&mut self, now: Instant, src: SocketAddr, datagram: &[u8]) {
        self.authenticated_from(src);
        self.last_data = Some(now);
        let Some(receiver) = u32_at(datagram, 4) else {
            return;
        };
        if let Some((pending, sent)) = self.pending_response
            && pending == receiver
        {
            self.pending_response = None;
            self.handshake_done(now, receiver, Some(now.saturating_duration_since(sent)));
        }
    }

    fn inside<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        packet: &'a mut [u8],
        src_ip: IpAddr,
    ) -> Action<'a> {
        // Authenticated even if the inner source is wrong: the endpoint still moves.
        self.on_data(now, src, datagram);
        if src_ip != self.spec.tunnel_ip {
            return Action::Drop(DropReason::Spoofed);
        }
        // boringtun reads the source from the header but trims the packet to the header's
        // total length without checking it: a header claiming less than itself (found by
        // fuzzing) would go inside as a truncated, unparseable packet.
        if super::packet::parse_ip(packet).is_none_or(|h| h.src != src_ip) {
            return Action::Drop(DropReason::Malformed);
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += packet.len() as u64;
        Action::Inside(packet)
    }

    /// Sends what boringtun queued while a handshake was pending. Repeat until [`Action::Done`].
    pub fn flush<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        match self.tunn.decapsulate(None, &[], dst) {
            TunnResult::WriteToNetwork(out) => Action::Send(out),
            _ => Action::Done,
        }
    }

    /// Encrypts an inside packet for the peer. `dst` must hold `packet.len() + 32` and 148
    /// bytes. Without a session, boringtun queues the packet and returns a handshake initiation.
    pub fn encapsulate<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> Action<'a> {
        if dst.len() < (packet.len() + 32).max(148) {
            return Action::Drop(DropReason::Malformed);
        }
        match self.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(out) => {
                if out.first() == Some(&MSG_DATA) {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += packet.len() as u64;
                }
                Action::Send(out)
            }
            TunnResult::Err(e) => Action::Drop(DropReason::from_wireguard(&e, MSG_DATA)),
            _ => Action::Done,
        }
    }

    /// A keepalive on the current session; nothing without one (boringtun would queue the
    /// empty packet and start a handshake instead).
    pub fn keepalive<'a>(&mut self, now: Instant, dst: &'a mut [u8]) -> Action<'a> {
        if !self.is_active(now) || dst.len() < 148 {
            return Action::Done;
        }
        match self.tunn.encapsulate(&[], dst) {
            TunnResult::WriteToNetwork(out) if out.first() == Some(&MSG_DATA) => Action::Send(out),
            _ => Action::Done,
        }
    }

    /// Starts a handshake now, even if one is in progress (client roaming, a shadow taking a
    /// session over).
    pub fn force_handshake<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        match self.tunn.format_handshake_initiation(dst, true) {
            TunnResult::WriteToNetwork(out) => Action::Send(out),
            TunnResult::Err(e) => Action::Drop(DropReason::from_wireguard(&e, MSG_INIT)),
            _ => Action::Done,
        }
    }

    /// Runs boringtun's timers (retransmits, keepalives, rekeying). Call every ~100 ms; boringtun
    /// rounds its timers to the calls.
    pub fn update_timers<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        if dst.len() < 148 {
            return Action::Done;
        }
        match self.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(out) => Action::Send(out),
            _ => Action::Done,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tunnel::packet;

    /// Two peers wired back to back in memory (after boringtun's `create_two_tuns_and_handshake`).
    pub(crate) struct WgPair {
        pub(crate) client: Peer,
        pub(crate) server: Peer,
        pub(crate) client_addr: SocketAddr,
        pub(crate) server_addr: SocketAddr,
        pub(crate) now: Instant,
    }

    impl WgPair {
        pub(crate) fn new() -> Self {
            let ck = SecretKey::generate();
            let sk = SecretKey::generate();
            let client_ip: IpAddr = "10.77.0.2".parse().unwrap();
            let server = Peer::new(
                &sk,
                PeerSpec {
                    index: PeerIndex::new(42).unwrap(),
                    public_key: ck.public_key(),
                    tunnel_ip: client_ip,
                    keepalive: None,
                },
            );
            let client = Peer::new(
                &ck,
                PeerSpec {
                    index: PeerIndex::new(7).unwrap(),
                    public_key: sk.public_key(),
                    tunnel_ip: "10.77.0.1".parse().unwrap(),
                    keepalive: None,
                },
            );
            Self {
                client,
                server,
                client_addr: "192.0.2.10:40000".parse().unwrap(),
                server_addr: "192.0.2.1:51820".parse().unwrap(),
                now: Instant::now(),
            }
        }

        /// Delivers client→server and server→client messages until both are quiet.
        /// Returns the inside packets the server received.
        pub(crate) fn deliver(&mut self, mut to_server: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
            let mut inside = Vec::new();
            let mut buf = vec![0u8; 2048];
            for _ in 0..16 {
                if to_server.is_empty() {
                    break;
                }
                let mut to_client = Vec::new();
                for d in to_server.drain(..) {
                    match self
                        .server
                        .handle_datagram(self.now, self.client_addr, &d, &mut buf)
                    {
                        Action::Send(out) => to_client.push(out.to_vec()),
                        Action::Inside(p) => inside.push(p.to_vec()),
                        _ => {}
                    }
                    while let Action::Send(out) = self.server.flush(&mut buf) {
                        to_client.push(out.to_vec());
                    }
                }
                for d in to_client {
                    if let Action::Send(out) =
                        self.client
                            .handle_datagram(self.now, self.server_addr, &d, &mut buf)
                    {
                        to_server.push(out.to_vec());
                    }
                    while let Action::Send(out) = self.client.flush(&mut buf) {
                        to_server.push(out.to_vec());
                    }
                }
            }
            inside
        }

        pub(crate) fn handshake(&mut self) {
            let mut buf = vec![0u8; 2048];
            let Action::Send(init) = self.client.force_handshake(&mut buf) else {
                panic!("no initiation");
            };
            let init = init.to_vec();
            self.deliver(vec![init]);
        }
    }

    #[test]
    fn handshake_completes_with_index_endpoint_and_rtt() {
        let mut pair = WgPair::new();
        pair.handshake();
        let ri = pair.server.receiver_index().expect("session");
        assert_eq!(ri >> 8, 42, "receiver index carries the peer index");
        assert_eq!(pair.server.endpoint(), Some(pair.client_addr));
        let events: Vec<_> = std::iter::from_fn(|| pair.server.poll_event()).collect();
        assert!(events.contains(&PeerEvent::Endpoint(pair.client_addr)));
        assert!(events.iter().any(
            |e| matches!(e, PeerEvent::Handshake { receiver_index, .. } if *receiver_index == ri)
        ));
        assert!(events.iter().any(|e| matches!(e, PeerEvent::Rtt(_))));
        assert!(pair.server.is_active(pair.now));
        assert!(!pair.server.is_active(pair.now + SESSION_LIFETIME));
        // The initiator learns its session too.
        assert_eq!(pair.client.receiver_index().map(|r| r >> 8), Some(7));
    }

    #[test]
    fn data_counts_and_spoofed_sources_drop() {
        let mut pair = WgPair::new();
        pair.handshake();
        let mut ip = [0u8; 100];
        let mut buf = vec![0u8; 2048];
        let src = packet::UdpAddr {
            ip: "10.77.0.2".parse().unwrap(),
            port: 5000,
        };
        let dst = packet::UdpAddr {
            ip: "10.77.0.1".parse().unwrap(),
            port: 7,
        };
        let n = packet::build_udp(&mut ip, src, dst, b"abc").unwrap();
        let Action::Send(wire) = pair.client.encapsulate(&ip[..n], &mut buf) else {
            panic!("no data packet");
        };
        let wire = wire.to_vec();
        let inside = pair.deliver(vec![wire]);
        assert_eq!(inside, vec![ip[..n].to_vec()]);
        assert_eq!(pair.server.counters().rx_packets, 1);
        assert_eq!(pair.server.counters().rx_bytes, n as u64);

        // A packet claiming another tunnel address is dropped.
        let spoof = packet::UdpAddr {
            ip: "10.77.0.3".parse().unwrap(),
            port: 5000,
        };
        let n = packet::build_udp(&mut ip, spoof, dst, b"abc").unwrap();
        let Action::Send(wire) = pair.client.encapsulate(&ip[..n], &mut buf) else {
            panic!("no data packet");
        };
        let wire = wire.to_vec();
        let mut out = vec![0u8; 2048];
        assert_eq!(
            pair.server
                .handle_datagram(pair.now, pair.client_addr, &wire, &mut out),
            Action::Drop(DropReason::Spoofed)
        );
        // A replay is dropped.
        assert_eq!(
            pair.server
                .handle_datagram(pair.now, pair.client_addr, &wire, &mut out),
            Action::Drop(DropReason::Decrypt)
        );
        assert_eq!(pair.server.counters().rx_packets, 1);

        // An IPv4 header whose total length is below its own size (0 here) is not delivered
        // (boringtun would hand over an empty packet). Regression from the wg_router fuzzer.
        let n = packet::build_udp(&mut ip, src, dst, b"abc").unwrap();
        ip[2] = 0;
        ip[3] = 0;
        let Action::Send(wire) = pair.client.encapsulate(&ip[..n], &mut buf) else {
            panic!("no data packet");
        };
        let wire = wire.to_vec();
        assert_eq!(
            pair.server
                .handle_datagram(pair.now, pair.client_addr, &wire, &mut out),
            Action::Drop(DropReason::Malformed)
        );
        assert_eq!(pair.server.counters().rx_packets, 1);
    }

    #[test]
    fn roaming_follows_authenticated_packets_only() {
        let mut pair = WgPair::new();
        pair.handshake();
        while pair.server.poll_event().is_some() {}
        let mut buf = vec![0u8; 2048];
        let Action::Send(keepalive) = pair.client.encapsulate(&[], &mut buf) else {
            panic!("no keepalive");
        };
        let keepalive = keepalive.to_vec();
        let moved: SocketAddr = "198.51.100.7:1234".parse().unwrap();
        let mut out = vec![0u8; 2048];
        // Garbage from a new address moves nothing.
        let mut forged = keepalive.clone();
        forged[20] ^= 1;
        let _ = pair
            .server
            .handle_datagram(pair.now, moved, &forged, &mut out);
        assert_eq!(pair.server.endpoint(), Some(pair.client_addr));
        // The authentic packet does.
        let _ = pair
            .server
            .handle_datagram(pair.now, moved, &keepalive, &mut out);
        assert_eq!(pair.server.endpoint(), Some(moved));
        assert_eq!(pair.server.poll_event(), Some(PeerEvent::Endpoint(moved)));
    }
}
