//! The listener's dispatch: which peer a datagram belongs to, which peer an inside packet goes
//! to, and what is dropped before any per-peer work.
//!
//! Order of checks for a datagram, cheapest first: boringtun's shared [`RateLimiter`] parses
//! the message and verifies MAC1 of handshake messages (so only senders that know our public
//! key get further); under load it answers handshakes without a valid MAC2 with a cookie reply
//! instead of doing any Diffie-Hellman. Data and other messages are routed by receiver index
//! (upper 24 bits = the client's stable [`PeerIndex`]); initiations by the static key decrypted
//! from them. Nothing here allocates per packet. The shared limiter is the only one that limits
//! or issues cookies: the peers' own `Tunn`s only re-check MAC1 (see `Router::mac1_only`).
//! Cookie replies to one source address are bounded per second ([`CookieBudget`]).
//!
//! Pure: no sockets. Drain rule as in [`super::peer`]: after a [`Routed::Send`] for a peer,
//! call [`Router::flush`] until it returns [`Routed::Done`].
//!
//! Shared by the device's workers (one per `SO_REUSEPORT` socket): the peer table changes only
//! through `&mut self` (the device keeps the router behind a `RwLock`), while everything a
//! datagram does takes `&self`, with each peer's `Tunn` behind a `Mutex` of its own. The kernel
//! picks a socket by the 4-tuple hash, so a client's datagrams normally meet one worker, but a
//! client that roams, or a handshake from a new port, can meet any worker: sharing the peers
//! (instead of giving each worker a shard of its own and handing datagrams over) needs no
//! hand-off at all and keeps one `Tunn`, one set of counters and one limiter per peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;

use super::cookie_budget::CookieBudget;
use super::peer::{Action, DropReason, Peer, PeerSpec};
use crate::domain::{PeerIndex, PublicKey, SecretKey};

/// Size of a cookie reply.
const COOKIE_REPLY_LEN: usize = 64;

/// How long a client that moved here may be quiet before [`Router::reassert`] sends it a
/// keepalive (about one timer tick).
const REASSERT_QUIET: Duration = Duration::from_millis(100);

/// The least time before [`Router::reassert`] repeats an unanswered takeover initiation
/// (three round trips when the client's is known and longer): sooner, and the response to the
/// previous one, late on a loaded machine or a long path, would find it replaced.
const REASSERT_RETRY: Duration = Duration::from_secs(1);

/// What the device must do with the result of a call.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Routed<'a> {
    /// Nothing (more) to do.
    Done,
    /// Send `bytes` to `to`; `peer` is the peer concerned (absent for cookie replies).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        bytes: &'a [u8],
        /// The peer whose queue may need flushing.
        peer: Option<PeerIndex>,
    },
    /// A decrypted packet from `peer` for the inside of the tunnel.
    Inside {
        /// The sending peer.
        peer: PeerIndex,
        /// The IP packet.
        packet: &'a mut [u8],
    },
    /// Dropped, for this reason.
    Drop(DropReason),
}

/// All peers of one listener, and the shared handshake limiter.
pub struct Router {
    own: SecretKey,
    own_secret: x25519::StaticSecret,
    own_public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    /// What every peer's `Tunn` checks with: boringtun verifies each handshake message again
    /// inside `decapsulate` and has no public way to skip that (its `handle_verified_packet` is
    /// crate-private), so the peers share a limiter whose limit is never reached. It re-checks
    /// MAC1 only and never asks for a cookie; `limiter` is the one limit and the one cookie
    /// secret. (Handing the peers `limiter` itself would count each handshake twice and send
    /// cookie replies to the takeover responses that `awaiting` lets past the limit.)
    mac1_only: Arc<RateLimiter>,
    /// Each behind its own lock: workers decrypt for different peers at once.
    peers: HashMap<PeerIndex, Mutex<Peer>>,
    by_key: HashMap<PublicKey, PeerIndex>,
    by_ip: HashMap<IpAddr, PeerIndex>,
    /// Peer indexes in a stable order, for walking timers without allocating.
    order: Vec<PeerIndex>,
    /// Peers we sent a takeover initiation to and whose response has not come yet: that
    /// response skips the shared load limit (one each), so that taking over a thousand
    /// sessions at once is not answered with our own cookie replies.
    awaiting: Mutex<std::collections::HashSet<PeerIndex>>,
    /// Cookie replies per source address: a flood from one address is not answered in full.
    cookies: Mutex<CookieBudget>,
}

/// Locks `m`, also after a panic elsewhere while it was held: a peer's state stays usable
/// (boringtun keeps it consistent between calls), and one bad packet must not stop the others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "public_key",
                &PublicKey::from_bytes(self.own_public.to_bytes()),
            )
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for the static key `own`; handshakes beyond `handshakes_per_second` (over all
    /// peers) must carry a valid cookie (MAC2).
    pub fn new(own: SecretKey, handshakes_per_second: u64) -> Self {
        let own_secret = x25519::StaticSecret::from(*own.expose_bytes());
        let own_public = x25519::PublicKey::from(&own_secret);
        let limiter = Arc::new(RateLimiter::new(&own_public, handshakes_per_second));
        let mac1_only = Arc::new(RateLimiter::new(&own_public, u64::MAX));
        Self {
            own,
            own_secret,
            own_public,
            limiter,
            mac1_only,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            order: Vec::new(),
            awaiting: Mutex::new(std::collections::HashSet::new()),
            cookies: Mutex::new(CookieBudget::default()),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.own_public.to_bytes())
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The peer with this index, locked: drop the guard before any other call for this peer.
    pub fn peer(&self, index: PeerIndex) -> Option<MutexGuard<'_, Peer>> {
        self.peers.get(&index).map(lock)
    }

    /// Whether a peer with this index exists (without locking it).
    pub fn contains(&self, index: PeerIndex) -> bool {
        self.peers.contains_key(&index)
    }

    /// Peer indexes in a stable order.
    pub fn indexes(&self) -> &[PeerIndex] {
        &self.order
    }

    /// Adds a peer or updates it. A changed key starts a new tunnel; a changed address keeps the
    /// session. Another peer holding the same key or address is stale and removed. Returns
    /// whether anything changed.
    pub fn upsert(&mut self, spec: PeerSpec) -> bool {
        if let Some(old) = self.peers.get_mut(&spec.index) {
            let old = old.get_mut().unwrap_or_else(PoisonError::into_inner);
            if old.spec() == &spec {
                return false;
            }
            let same_key =
                old.spec().public_key == spec.public_key && old.spec().keepalive == spec.keepalive;
            if same_key {
                let old_ip = old.spec().tunnel_ip;
                self.unlink_ip(old_ip, spec.index);
                self.evict_conflicts(&spec);
                if let Some(p) = self.peers.get_mut(&spec.index) {
                    p.get_mut()
                        .unwrap_or_else(PoisonError::into_inner)
                        .set_tunnel_ip(spec.tunnel_ip);
                }
                self.by_ip.insert(spec.tunnel_ip, spec.index);
                return true;
            }
            self.remove(spec.index);
        }
        self.evict_conflicts(&spec);
        self.by_key.insert(spec.public_key, spec.index);
        self.by_ip.insert(spec.tunnel_ip, spec.index);
        self.order.push(spec.index);
        let index = spec.index;
        let peer = Peer::with_limiter(&self.own, spec, Arc::clone(&self.mac1_only));
        self.peers.insert(index, Mutex::new(peer));
        true
    }

    fn unlink_ip(&mut self, ip: IpAddr, index: PeerIndex) {
        if self.by_ip.get(&ip) == Some(&index) {
            self.by_ip.remove(&ip);
        }
    }

    fn evict_conflicts(&mut self, spec: &PeerSpec) {
        for other in [
            self.by_key.get(&spec.public_key).copied(),
            self.by_ip.get(&spec.tunnel_ip).copied(),
        ]
        .into_iter()
        .flatten()
        {
            if other != spec.index {
                self.remove(other);
            }
        }
    }

    /// Removes a peer; returns whether it existed.
    pub fn remove(&mut self, index: PeerIndex) -> bool {
        let Some(peer) = self.peers.remove(&index) else {
            return false;
        };
        let peer = peer.into_inner().unwrap_or_else(PoisonError::into_inner);
        let spec = peer.spec();
        if self.by_key.get(&spec.public_key) == Some(&index) {
            self.by_key.remove(&spec.public_key);
        }
        self.unlink_ip(spec.tunnel_ip, index);
        self.order.retain(|i| *i != index);
        self.awaiting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&index);
        true
    }

    /// Handles one datagram from `src`. `dst` must hold `datagram.len() + 32` and 148 bytes.
    pub fn handle_datagram<'a>(
        &self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> Routed<'a> {
        if let Some(index) = self.expected_response(datagram) {
            return self.deliver(index, now, src, datagram, dst);
        }
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let packet = match self
            .limiter
            .verify_packet(Some(src.ip()), datagram, &mut cookie)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(reply)) => {
                if !lock(&self.cookies).allow(now, src.ip()) {
                    return Routed::Drop(DropReason::CookieBudget);
                }
                let n = reply.len();
                let Some(out) = dst.get_mut(..n) else {
                    return Routed::Drop(DropReason::Malformed);
                };
                out.copy_from_slice(reply);
                return Routed::Send {
                    to: src,
                    bytes: out,
                    peer: None,
                };
            }
            Err(TunnResult::Err(e)) => {
                let msg = datagram.first().copied().unwrap_or(0);
                return Routed::Drop(DropReason::from_wireguard(&e, msg));
            }
            Err(_) => return Routed::Drop(DropReason::Malformed),
        };
        let index = match &packet {
            Packet::HandshakeInit(init) => {
                let Ok(half) = parse_handshake_anon(&self.own_secret, &self.own_public, init)
                else {
                    return Routed::Drop(DropReason::HandshakeFailed);
                };
                match self
                    .by_key
                    .get(&PublicKey::from_bytes(half.peer_static_public))
                {
                    Some(i) => *i,
                    None => return Routed::Drop(DropReason::UnknownPeer),
                }
            }
            Packet::HandshakeResponse(p) => match PeerIndex::from_receiver_index(p.receiver_idx) {
                Some(i) => i,
                None => return Routed::Drop(DropReason::UnknownIndex),
            },
            Packet::PacketCookieReply(p) => match PeerIndex::from_receiver_index(p.receiver_idx) {
                Some(i) => i,
                None => return Routed::Drop(DropReason::UnknownIndex),
            },
            Packet::PacketData(p) => match PeerIndex::from_receiver_index(p.receiver_idx) {
                Some(i) => i,
                None => return Routed::Drop(DropReason::UnknownIndex),
            },
        };
        self.deliver(index, now, src, datagram, dst)
    }

    /// A handshake response to an initiation of ours (by the receiver index it names).
    fn expected_response(&self, datagram: &[u8]) -> Option<PeerIndex> {
        // The lock only for what looks like a response: data never touches it.
        let index = response_peer(datagram)?;
        lock(&self.awaiting).remove(&index).then_some(index)
    }

    fn deliver<'a>(
        &self,
        index: PeerIndex,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> Routed<'a> {
        let Some(mut peer) = self.peer(index) else {
            return Routed::Drop(DropReason::UnknownIndex);
        };
        match peer.handle_datagram(now, src, datagram, dst) {
            Action::Done => Routed::Done,
            // Replies (handshake responses, cookies) go back where the datagram came from.
            Action::Send(bytes) => Routed::Send {
                to: src,
                bytes,
                peer: Some(index),
            },
            Action::Inside(packet) => Routed::Inside {
                peer: index,
                packet,
            },
            Action::Drop(r) => Routed::Drop(r),
        }
    }

    fn to_endpoint<'a>(peer: &Peer, index: PeerIndex, action: Action<'a>) -> Routed<'a> {
        match action {
            Action::Send(bytes) => match peer.endpoint() {
                Some(to) => Routed::Send {
                    to,
                    bytes,
                    peer: Some(index),
                },
                None => Routed::Drop(DropReason::NoEndpoint),
            },
            Action::Drop(r) => Routed::Drop(r),
            Action::Done | Action::Inside(_) => Routed::Done,
        }
    }

    /// Sends what `peer` queued during a handshake. Repeat until [`Routed::Done`].
    pub fn flush<'a>(&self, index: PeerIndex, dst: &'a mut [u8]) -> Routed<'a> {
        let Some(mut peer) = self.peer(index) else {
            return Routed::Done;
        };
        let action = peer.flush(dst);
        Self::to_endpoint(&peer, index, action)
    }

    /// Routes an inside packet to the peer owning its destination address.
    pub fn route_inside<'a>(&self, packet: &[u8], dst: &'a mut [u8]) -> Routed<'a> {
        let Some(ip) = super::packet::parse_ip(packet) else {
            return Routed::Drop(DropReason::Malformed);
        };
        self.send_to_peer_ip(ip.dst, packet, dst)
    }

    /// Encrypts `packet` for the peer with tunnel address `ip`.
    pub fn send_to_peer_ip<'a>(&self, ip: IpAddr, packet: &[u8], dst: &'a mut [u8]) -> Routed<'a> {
        let Some(index) = self.by_ip.get(&ip).copied() else {
            return Routed::Drop(DropReason::NoRoute);
        };
        let Some(mut peer) = self.peer(index) else {
            return Routed::Drop(DropReason::NoRoute);
        };
        let action = peer.encapsulate(packet, dst);
        Self::to_endpoint(&peer, index, action)
    }

    /// Runs the timers of the `n`-th peer (see [`Router::indexes`]).
    pub fn update_timers<'a>(&self, n: usize, dst: &'a mut [u8]) -> Routed<'a> {
        let Some(index) = self.order.get(n).copied() else {
            return Routed::Done;
        };
        let Some(mut peer) = self.peer(index) else {
            return Routed::Done;
        };
        let action = peer.update_timers(dst);
        Self::to_endpoint(&peer, index, action)
    }

    /// Takeover: points the peer at the client's last endpoint and sends it a handshake
    /// initiation (the client roams to us once the handshake completes).
    pub fn initiate<'a>(
        &self,
        index: PeerIndex,
        endpoint: SocketAddr,
        dst: &'a mut [u8],
    ) -> Routed<'a> {
        let Some(mut peer) = self.peer(index) else {
            return Routed::Drop(DropReason::UnknownPeer);
        };
        peer.set_endpoint(endpoint);
        let action = self.start_handshake(index, &mut peer, dst);
        Self::to_endpoint(&peer, index, action)
    }

    /// A handshake initiation of ours to `peer`, its response awaited (see `awaiting`).
    fn start_handshake<'a>(
        &self,
        index: PeerIndex,
        peer: &mut Peer,
        dst: &'a mut [u8],
    ) -> Action<'a> {
        let action = peer.force_handshake(dst);
        if matches!(action, Action::Send(_)) {
            lock(&self.awaiting).insert(index);
        }
        action
    }

    /// After a takeover initiation sent at `since`: what shows the client where its session
    /// is now. WireGuard clients send to the address of the last packet they authenticated,
    /// so a reply of the old holder still in flight when the client moved here takes the
    /// client back there. The old holder passes on what it cannot use (the handshake response,
    /// data on our session), but not when the two appliances cannot reach each other; then:
    /// - the initiation went unanswered: again, once a few round trips have passed;
    /// - the session is up but the client went quiet here: a keepalive.
    pub fn reassert<'a>(
        &self,
        index: PeerIndex,
        since: Instant,
        now: Instant,
        dst: &'a mut [u8],
    ) -> Routed<'a> {
        let Some(mut peer) = self.peer(index) else {
            return Routed::Done;
        };
        let action = if peer.last_handshake().is_some_and(|t| t >= since) {
            let heard = peer
                .last_data()
                .is_some_and(|t| now.saturating_duration_since(t) < REASSERT_QUIET);
            if heard {
                return Routed::Done;
            }
            peer.keepalive(now, dst)
        } else {
            let retry = peer
                .last_rtt()
                .map_or(REASSERT_RETRY, |rtt| (rtt * 3).max(REASSERT_RETRY));
            if now.saturating_duration_since(since) < retry {
                return Routed::Done;
            }
            self.start_handshake(index, &mut peer, dst)
        };
        Self::to_endpoint(&peer, index, action)
    }

    /// Restarts the shared handshake count if a second has passed since it last did (boringtun
    /// keeps that time itself). Call it every timer tick: a caller counting its own second on
    /// another clock could find the limiter a hair short of it and skip a whole second.
    pub fn reset_rate_limiter(&self) {
        self.limiter.reset_count();
    }

    /// Peers with a live session at `now`.
    pub fn active_sessions(&self, now: Instant) -> usize {
        self.peers
            .values()
            .filter(|p| lock(p).is_active(now))
            .count()
    }
}

/// WireGuard's handshake response: message type 2, 92 bytes.
const RESPONSE: (u8, usize) = (2, 92);
/// WireGuard's transport data message type.
const DATA: u8 = 4;

/// The peer a handshake response names by its receiver index; None for anything else. Cheap
/// enough to ask of every datagram before any lock.
pub(crate) fn response_peer(datagram: &[u8]) -> Option<PeerIndex> {
    if datagram.first() != Some(&RESPONSE.0) || datagram.len() != RESPONSE.1 {
        return None;
    }
    receiver_peer(datagram, 8)
}

/// The peer a handshake response or a data packet names; None for anything else.
pub(crate) fn response_or_data_peer(datagram: &[u8]) -> Option<PeerIndex> {
    match datagram.first() {
        Some(&DATA) => receiver_peer(datagram, 4),
        _ => response_peer(datagram),
    }
}

/// The peer a datagram names by the receiver index at `at` (4 in data packets and cookie
/// replies, 8 in handshake responses).
pub(crate) fn receiver_peer(datagram: &[u8], at: usize) -> Option<PeerIndex> {
    let b: [u8; 4] = datagram.get(at..at + 4)?.try_into().ok()?;
    PeerIndex::from_receiver_index(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_indexes_are_read_only_from_responses_and_data() {
        let index = PeerIndex::new(7).unwrap();
        let idx = ((index.get() << 8) | 3).to_le_bytes();
        let mut response = vec![0u8; 92];
        response[0] = 2;
        response[8..12].copy_from_slice(&idx);
        assert_eq!(response_peer(&response), Some(index));
        assert_eq!(response_or_data_peer(&response), Some(index));
        // A response of the wrong size, or an initiation, names no peer.
        assert_eq!(response_peer(&response[..91]), None);
        response[0] = 1;
        assert_eq!(response_or_data_peer(&response), None);
        let mut data = vec![0u8; 32];
        data[0] = 4;
        data[4..8].copy_from_slice(&idx);
        assert_eq!(response_or_data_peer(&data), Some(index));
        assert_eq!(response_peer(&data), None);
        // Truncated before the index: nothing, not a panic.
        assert_eq!(response_or_data_peer(&data[..6]), None);
        assert_eq!(receiver_peer(&[4], 4), None);
    }

    fn spec(key: &SecretKey, index: i64, ip: &str) -> PeerSpec {
        PeerSpec {
            index: PeerIndex::new(index).unwrap(),
            public_key: key.public_key(),
            tunnel_ip: ip.parse().unwrap(),
            keepalive: None,
        }
    }

    fn client_for(router: &Router, key: &SecretKey) -> Peer {
        Peer::new(
            key,
            PeerSpec {
                index: PeerIndex::new(99).unwrap(),
                public_key: router.public_key(),
                tunnel_ip: "10.77.0.1".parse().unwrap(),
                keepalive: None,
            },
        )
    }

    #[test]
    fn routes_initiations_by_key_and_data_by_index() {
        let mut router = Router::new(SecretKey::generate(), 100);
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        router.upsert(spec(&a, 1000, "10.77.0.2"));
        router.upsert(spec(&b, 2000, "10.77.0.3"));
        let mut client = client_for(&router, &b);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.5:1000".parse().unwrap();
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let Action::Send(init) = client.force_handshake(&mut buf) else {
            panic!()
        };
        let init = init.to_vec();
        let Routed::Send { to, bytes, peer } = router.handle_datagram(now, src, &init, &mut out)
        else {
            panic!("no response")
        };
        assert_eq!((to, peer), (src, PeerIndex::new(2000).ok()));
        let resp = bytes.to_vec();
        let server_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let Action::Send(keepalive) = client.handle_datagram(now, server_addr, &resp, &mut buf)
        else {
            panic!()
        };
        let keepalive = keepalive.to_vec();
        assert_eq!(
            router.handle_datagram(now, src, &keepalive, &mut out),
            Routed::Done
        );
        let b_peer = router.peer(PeerIndex::new(2000).unwrap()).unwrap();
        assert_eq!(b_peer.endpoint(), Some(src));
        assert_eq!(b_peer.receiver_index().map(|r| r >> 8), Some(2000));
        drop(b_peer);
        assert!(
            router
                .peer(PeerIndex::new(1000).unwrap())
                .unwrap()
                .endpoint()
                .is_none()
        );
        assert_eq!(router.active_sessions(now), 1);

        // Inside packets to the client's address go to its endpoint.
        let mut ip = [0u8; 64];
        let n = crate::tunnel::packet::build_udp(
            &mut ip,
            crate::tunnel::packet::UdpAddr {
                ip: "10.77.0.1".parse().unwrap(),
                port: 7,
            },
            crate::tunnel::packet::UdpAddr {
                ip: "10.77.0.3".parse().unwrap(),
                port: 9,
            },
            b"x",
        )
        .unwrap();
        assert!(matches!(
            router.route_inside(&ip[..n], &mut out),
            Routed::Send { to, .. } if to == src
        ));
        assert_eq!(
            router.send_to_peer_ip("10.77.0.9".parse().unwrap(), &ip[..n], &mut out),
            Routed::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn unknown_keys_and_garbage_are_dropped() {
        let mut router = Router::new(SecretKey::generate(), 100);
        router.upsert(spec(&SecretKey::generate(), 5, "10.77.0.2"));
        let stranger = SecretKey::generate();
        let mut client = client_for(&router, &stranger);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.5:1000".parse().unwrap();
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let Action::Send(init) = client.force_handshake(&mut buf) else {
            panic!()
        };
        let init = init.to_vec();
        assert_eq!(
            router.handle_datagram(now, src, &init, &mut out),
            Routed::Drop(DropReason::UnknownPeer)
        );
        // An initiation for another server's key fails MAC1.
        let other = Router::new(SecretKey::generate(), 100);
        let mut client = client_for(&other, &stranger);
        let Action::Send(init) = client.force_handshake(&mut buf) else {
            panic!()
        };
        let init = init.to_vec();
        assert_eq!(
            router.handle_datagram(now, src, &init, &mut out),
            Routed::Drop(DropReason::BadMac)
        );
        assert_eq!(
            router.handle_datagram(now, src, b"hello", &mut out),
            Routed::Drop(DropReason::Malformed)
        );
        // Data for an index nobody has.
        let mut data = vec![0u8; 48];
        data[0] = 4;
        data[4..8].copy_from_slice(&((77u32 << 8) | 1).to_le_bytes());
        assert_eq!(
            router.handle_datagram(now, src, &data, &mut out),
            Routed::Drop(DropReason::UnknownIndex)
        );
    }

    /// Under load, handshakes without a cookie get cookie replies, as many per second as the
    /// source's budget allows; the rest are dropped unanswered, and another source still gets
    /// its cookies.
    #[test]
    fn handshake_flood_gets_cookies_up_to_the_source_budget() {
        let mut router = Router::new(SecretKey::generate(), 5);
        let key = SecretKey::generate();
        router.upsert(spec(&key, 5, "10.77.0.2"));
        let mut client = client_for(&router, &key);
        let now = Instant::now();
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut flood = |router: &mut Router, src: SocketAddr, n: usize| {
            let (mut cookies, mut over_budget) = (0, 0);
            for _ in 0..n {
                let Action::Send(init) = client.force_handshake(&mut buf) else {
                    panic!()
                };
                let init = init.to_vec();
                match router.handle_datagram(now, src, &init, &mut out) {
                    Routed::Send {
                        bytes, peer: None, ..
                    } => {
                        assert_eq!(bytes.len(), COOKIE_REPLY_LEN);
                        assert_eq!(bytes[0], 3);
                        cookies += 1;
                    }
                    Routed::Drop(DropReason::CookieBudget) => over_budget += 1,
                    _ => {}
                }
            }
            (cookies, over_budget)
        };
        let flooder: SocketAddr = "192.0.2.5:1000".parse().unwrap();
        let (cookies, over) = flood(&mut router, flooder, 100);
        assert_eq!(cookies as u32, crate::tunnel::cookie_budget::PER_SECOND);
        assert!(over >= 40, "only {over} dropped over the budget");
        let other: SocketAddr = "198.51.100.9:1000".parse().unwrap();
        assert_eq!(flood(&mut router, other, 1), (1, 0));
    }

    /// Under load, one cookie lets a client through however often it handshakes: the shared
    /// limiter is the only one. (With a limiter per peer, as boringtun gives a `Tunn` by
    /// default, the peer asked for a cookie of its own after 10 handshakes in a second, and the
    /// client then bounced between two cookie secrets without ever getting a response.)
    #[test]
    fn under_load_one_cookie_is_enough() {
        let mut router = Router::new(SecretKey::generate(), 1);
        let key = SecretKey::generate();
        router.upsert(spec(&key, 5, "10.77.0.2"));
        let mut client = client_for(&router, &key);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.5:1000".parse().unwrap();
        let server: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let (mut cookies, mut responses) = (0, 0);
        for _ in 0..40 {
            let Action::Send(init) = client.force_handshake(&mut buf) else {
                panic!("no initiation")
            };
            let init = init.to_vec();
            match router.handle_datagram(now, src, &init, &mut out) {
                Routed::Send { bytes, .. } if bytes.first() == Some(&3) => {
                    cookies += 1;
                    let cookie = bytes.to_vec();
                    assert_eq!(
                        client.handle_datagram(now, server, &cookie, &mut buf),
                        Action::Done
                    );
                }
                Routed::Send { bytes, .. } if bytes.first() == Some(&2) => responses += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // The first initiation is within the limit, the second gets the cookie, the rest use it.
        assert_eq!((cookies, responses), (1, 39));
    }

    /// After a takeover, an initiation whose response went astray is repeated once a retry
    /// interval has passed, and a client that stops sending here gets keepalives, which move
    /// its endpoint back (WireGuard follows the last packet it authenticated).
    #[test]
    fn reassert_repeats_lost_initiations_and_reminds_quiet_clients() {
        let mut router = Router::new(SecretKey::generate(), 100);
        let key = SecretKey::generate();
        let index = PeerIndex::new(2000).unwrap();
        router.upsert(spec(&key, 2000, "10.77.0.3"));
        let mut client = client_for(&router, &key);
        let client_addr: SocketAddr = "192.0.2.5:1000".parse().unwrap();
        let server: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let first = match router.initiate(index, client_addr, &mut out) {
            Routed::Send { bytes, .. } => bytes.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        assert_eq!(first[0], 1);

        // The response went to the old holder: nothing before the retry interval, then again.
        assert_eq!(
            router.reassert(index, t0, t0 + ms(100), &mut out),
            Routed::Done
        );
        let second = match router.reassert(index, t0, t0 + REASSERT_RETRY, &mut out) {
            Routed::Send { to, bytes, .. } => {
                assert_eq!(to, client_addr);
                bytes.to_vec()
            }
            other => panic!("not repeated: {other:?}"),
        };
        assert_eq!(second[0], 1);
        assert_ne!(first, second);

        // This one is answered: the session is up.
        let since = t0 + REASSERT_RETRY;
        let t1 = since + ms(1);
        let Action::Send(resp) = client.handle_datagram(t1, server, &second, &mut buf) else {
            panic!("no response")
        };
        let resp = resp.to_vec();
        let keepalive = match router.handle_datagram(t1, client_addr, &resp, &mut out) {
            Routed::Send { bytes, .. } => bytes.to_vec(),
            other => panic!("handshake not completed: {other:?}"),
        };
        assert_eq!(
            client.handle_datagram(t1, server, &keepalive, &mut buf),
            Action::Done
        );

        // The client sends here: nothing to add. Quiet for longer than REASSERT_QUIET: a
        // keepalive on the new session, which the client takes.
        let Action::Send(data) = client.encapsulate(&[], &mut buf) else {
            panic!("no keepalive from the client")
        };
        let data = data.to_vec();
        let t2 = t1 + ms(5);
        assert_eq!(
            router.handle_datagram(t2, client_addr, &data, &mut out),
            Routed::Done
        );
        assert_eq!(
            router.reassert(index, since, t2 + ms(50), &mut out),
            Routed::Done
        );
        let reminder = match router.reassert(index, since, t2 + REASSERT_QUIET, &mut out) {
            Routed::Send { to, bytes, .. } => {
                assert_eq!(to, client_addr);
                bytes.to_vec()
            }
            other => panic!("no keepalive: {other:?}"),
        };
        assert_eq!(reminder[0], 4);
        let elsewhere: SocketAddr = "198.51.100.7:51820".parse().unwrap();
        assert_eq!(
            client.handle_datagram(t2, elsewhere, &reminder, &mut buf),
            Action::Done
        );
        assert_eq!(client.endpoint(), Some(elsewhere));
    }

    proptest::proptest! {
        /// Any datagram, including ones with a valid message type and size, is handled without
        /// a panic and never reaches the inside.
        #[test]
        fn arbitrary_datagrams_never_panic(
            kind in 0u8..6,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            size in proptest::sample::select(vec![0usize, 3, 4, 32, 64, 92, 148, 200]),
        ) {
            let mut router = Router::new(SecretKey::generate(), 100);
            router.upsert(spec(&SecretKey::generate(), 5, "10.77.0.2"));
            let mut d = body;
            d.resize(size, 0);
            if let Some(b) = d.first_mut() {
                *b = kind;
            }
            let mut out = vec![0u8; 2048];
            let src: SocketAddr = "192.0.2.5:1000".parse().unwrap();
            let r = router.handle_datagram(Instant::now(), src, &d, &mut out);
            let inside = matches!(r, Routed::Inside { .. });
            proptest::prop_assert!(!inside, "garbage reached the inside");
        }
    }

    #[test]
    fn upsert_keeps_maps_consistent() {
        let mut router = Router::new(SecretKey::generate(), 100);
        let a = SecretKey::generate();
        assert!(router.upsert(spec(&a, 1, "10.77.0.2")));
        assert!(!router.upsert(spec(&a, 1, "10.77.0.2")));
        // Same key, new address: kept, rerouted.
        assert!(router.upsert(spec(&a, 1, "10.77.0.9")));
        assert_eq!(router.len(), 1);
        let mut out = vec![0u8; 256];
        assert_eq!(
            router.send_to_peer_ip("10.77.0.2".parse().unwrap(), &[0x45; 20], &mut out),
            Routed::Drop(DropReason::NoRoute)
        );
        // Another index claiming the same key replaces the stale one.
        assert!(router.upsert(spec(&a, 2, "10.77.0.5")));
        assert_eq!(router.indexes(), &[PeerIndex::new(2).unwrap()]);
        assert!(router.remove(PeerIndex::new(2).unwrap()));
        assert!(router.is_empty());
    }
}
