//! The client helper's shell: one UDP socket, one [`Peer`] (the appliances' shared service
//! identity), DNS re-resolution at TTL expiry, and the inside (probe stream or TUN).
//!
//! Roaming: when the per-client name resolves to a new address, the helper points the tunnel
//! there and starts a handshake at once. The old session keeps carrying nothing new; the next
//! packets go out on the new session as soon as the handshake completes (about one round trip),
//! so the tunnel itself is never torn down. The endpoint follows DNS only: stray packets from
//! the appliance it left do not pull it back.
//!
//! Standby (make-before-break): a second session, with the same identity, is kept with the
//! appliance `standby.<id>.c.<zone>` names (the other appliance of the client's pair) and
//! renewed every `standby_refresh`. The traffic switches to it, without waiting for a
//! handshake, when DNS names that appliance, when it initiates a handshake (the shadow group
//! took the session over), or when the active appliance has answered nothing for
//! `switch_after`. The session left becomes the standby and still decrypts what the old
//! appliance sends after the switch.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::dot::{DotUpstream, Upstream};
use super::probe::{ECHO_PORT, ProbeStream, StreamReport};
use super::resolve::{self, ResolveError};
use super::standby::{MSG_INIT, Silence, Slot, route, switch_after};
use super::timeline::Timeline;
use crate::config::{ClientConfig, ClientInside, Resolver};
use crate::domain::{PeerIndex, SecretKey};
use crate::tunnel::TunnelError;
use crate::tunnel::device::{REPORT_PORT, TICK, bind_udp, is_transient};
use crate::tunnel::packet::{self, UdpAddr};
use crate::tunnel::peer::{Action, Peer, PeerEvent, PeerSpec};
use crate::tunnel::tun::Tun;

/// Local UDP port of the probe stream inside the tunnel.
const PROBE_PORT: u16 = 40_007;
/// Local UDP port reports are sent from.
const REPORT_SRC_PORT: u16 = 40_008;

/// Why the helper could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket or TUN set-up failed.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// No resolver to ask.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The socket failed while running.
    #[error("UDP socket failed: {0}")]
    Io(#[from] std::io::Error),
}

/// An endpoint the helper used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointChange {
    /// When it was adopted.
    pub at: DateTime<Utc>,
    /// Milliseconds since the helper started.
    pub at_ms: u64,
    /// The address.
    pub endpoint: SocketAddr,
    /// Why: `dns` (the answer changed; a new handshake), `standby` (the answer changed to the
    /// standby appliance: its established session), `takeover` (the shadow group initiated),
    /// `silence` (the active appliance stopped answering; the standby session).
    pub via: &'static str,
}

/// What the helper reports at exit (`--report FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// The resolved name.
    pub name: String,
    /// How long it ran, in seconds.
    pub duration_s: f64,
    /// Endpoints in the order they were used.
    pub endpoints: Vec<EndpointChange>,
    /// Completed handshakes (both sessions).
    pub handshakes: u64,
    /// Completed handshakes of the standby session.
    pub standby_handshakes: u64,
    /// The standby appliance last set up (None: the zone names none).
    pub standby: Option<SocketAddr>,
    /// Lookups that failed (the helper kept its previous endpoint).
    pub failed_lookups: u64,
    /// The probe stream's measurements (probe mode).
    pub probe: Option<StreamReport>,
}

/// Why the helper moves its traffic to another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// DNS names the standby appliance.
    Dns,
    /// The standby appliance sent a handshake initiation (the shadow group took over).
    Takeover,
    /// The active appliance stopped answering.
    Silence,
}

struct State {
    cfg: ClientConfig,
    socket: tokio::net::UdpSocket,
    /// The two sessions: `peers[active]` carries traffic, the other is the standby.
    peers: [Peer; 2],
    /// Their local indexes (upper 24 bits of their receiver indexes).
    indexes: [u32; 2],
    active: usize,
    started: (Instant, DateTime<Utc>),
    report: ClientReport,
    own: IpAddr,
    appliance: IpAddr,
    out: Vec<u8>,
    /// The appliance a takeover moved us away from, and when: DNS may still name it for a
    /// few seconds (until steering notices the failure); it is not followed back meanwhile.
    left: Option<(IpAddr, Instant)>,
    /// When the standby's handshake was last started.
    standby_started: Option<Instant>,
    /// After a switch on silence or a takeover, or while the zone names no standby, the
    /// standby's appliance may have failed and lost its sessions (a restart): it is trusted
    /// again only once a handshake with it completes after this time.
    standby_suspect_until_handshake: Option<Instant>,
    /// The last endpoint the per-client name answered, while it is the untrusted standby's:
    /// the move waits for the standby's fresh handshake.
    dns_wants: Option<SocketAddr>,
    /// The client's key, for a fresh session with an appliance that lost ours.
    key: SecretKey,
    silence: Silence,
    /// Where an embedding program watches the stream (the demo).
    timeline: Option<Arc<Timeline>>,
}

impl State {
    fn standby_slot(&self) -> usize {
        1 - self.active
    }

    fn send_on(&self, slot: usize, bytes: &[u8]) {
        if let Some(to) = self.peers[slot].endpoint() {
            let _ = self.socket.try_send_to(bytes, to);
        }
    }

    fn carry(&mut self, slot: usize, first: ActionOwned) {
        if let ActionOwned::Send(bytes) = first {
            self.send_on(slot, &bytes);
        }
    }

    fn drain_events(&mut self) {
        for slot in 0..2 {
            while let Some(e) = self.peers[slot].poll_event() {
                self.on_event(slot, e);
            }
        }
    }

    fn on_event(&mut self, slot: usize, e: PeerEvent) {
        let endpoint = self.peers[slot].endpoint();
        match e {
            PeerEvent::Handshake { .. } => {
                self.report.handshakes += 1;
                if slot == self.active {
                    tracing::info!(?endpoint, "handshake complete");
                } else {
                    self.report.standby_handshakes += 1;
                    self.report.standby = endpoint;
                    tracing::info!(?endpoint, "standby session ready");
                    let now = Instant::now();
                    if endpoint.is_some()
                        && self.dns_wants == endpoint
                        && self.standby_trusted()
                        && self.standby_ready(now)
                    {
                        self.dns_wants = None;
                        self.switch(now, Switch::Dns);
                    }
                }
            }
            // An appliance of the group initiated from a new address: a takeover.
            PeerEvent::Endpoint(to) if slot == self.active => {
                let now = Instant::now();
                let from = self.report.endpoints.last().map(|e| e.endpoint);
                if from == Some(to) {
                    return;
                }
                if let Some(f) = from {
                    self.left = Some((f.ip(), now));
                }
                self.record(now, to, "takeover");
                tracing::info!(?from, %to, "the shadow group moved the tunnel");
            }
            PeerEvent::Endpoint(_) | PeerEvent::Rtt(_) => {}
        }
    }

    /// Whether the standby session can carry traffic at once.
    fn standby_ready(&self, now: Instant) -> bool {
        let s = &self.peers[self.standby_slot()];
        s.endpoint().is_some()
            && s.endpoint() != self.peers[self.active].endpoint()
            && s.is_active(now)
    }

    /// Whether the standby session still exists on its appliance, as far as we can tell: not
    /// left behind by a takeover or a silence, or handshaken since.
    fn standby_trusted(&self) -> bool {
        let s = &self.peers[self.standby_slot()];
        self.standby_suspect_until_handshake
            .is_none_or(|t| s.last_handshake().is_some_and(|h| h > t))
    }

    /// Renews the standby's handshake if it is untrusted, at most once a second.
    fn revive_standby(&mut self, now: Instant) {
        let recent = self
            .standby_started
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !self.standby_trusted() && !recent {
            self.refresh_standby(now);
        }
    }

    /// The per-client name answered `endpoint`.
    fn adopt(&mut self, now: Instant, endpoint: SocketAddr) {
        self.dns_wants = None;
        if self.peers[self.active].endpoint() == Some(endpoint) {
            return;
        }
        if self.left.is_some_and(|(ip, at)| {
            ip == endpoint.ip() && now.duration_since(at) < self.cfg.client.takeover_hold.0
        }) {
            tracing::debug!(%endpoint, "DNS still names the appliance a takeover left; staying");
            return;
        }
        if self.peers[self.standby_slot()].endpoint() == Some(endpoint) {
            if self.standby_trusted() && self.standby_ready(now) {
                self.switch(now, Switch::Dns);
                return;
            }
            if self.standby_ready(now) || self.peers[self.active].is_active(now) {
                // Make before break: the session we hold may be gone on that appliance
                // (it restarted); the move waits for a fresh handshake, on the current
                // session meanwhile.
                tracing::info!(%endpoint, "renewing the standby session before moving to it");
                self.dns_wants = Some(endpoint);
                self.revive_standby(now);
                return;
            }
        }
        let from = self.peers[self.active].endpoint();
        self.peers[self.active].set_endpoint(endpoint);
        self.record(now, endpoint, "dns");
        tracing::info!(?from, to = %endpoint, "moving the tunnel");
        let action = own(self.peers[self.active].force_handshake(&mut self.out));
        self.carry(self.active, action);
        self.drain_events();
    }

    /// The standby name answered `endpoint`: set up (or keep) a session with it.
    fn adopt_standby(&mut self, now: Instant, endpoint: SocketAddr) {
        let s = self.standby_slot();
        // Right after a switch DNS may still name the appliance we now use as the standby.
        if self.peers[self.active].endpoint() == Some(endpoint) {
            return;
        }
        if self.peers[s].endpoint() == Some(endpoint) {
            self.revive_standby(now);
            return;
        }
        tracing::info!(%endpoint, "setting up a standby session");
        self.peers[s].set_endpoint(endpoint);
        self.standby_suspect_until_handshake = None;
        self.refresh_standby(now);
    }

    fn refresh_standby(&mut self, now: Instant) {
        let s = self.standby_slot();
        if self.peers[s].endpoint().is_none() {
            return;
        }
        self.standby_started = Some(now);
        let action = own(self.peers[s].force_handshake(&mut self.out));
        self.carry(s, action);
        self.drain_events();
    }

    /// Moves the traffic to the standby session; the session left becomes the standby (it
    /// still decrypts what the old appliance sends after the switch).
    fn switch(&mut self, now: Instant, why: Switch) {
        let from = self.peers[self.active].endpoint();
        self.active = self.standby_slot();
        self.silence.reset();
        let Some(to) = self.peers[self.active].endpoint() else {
            return;
        };
        let via = match why {
            Switch::Dns => "standby",
            Switch::Takeover => "takeover",
            Switch::Silence => "silence",
        };
        if why != Switch::Dns
            && let Some(f) = from
        {
            self.left = Some((f.ip(), now));
        }
        if why != Switch::Dns {
            self.standby_suspect_until_handshake = Some(now);
        }
        self.dns_wants = None;
        self.record(now, to, via);
        tracing::info!(?from, %to, via, "switched to the standby session");
        // Traffic goes out on the established session at once. A fresh handshake follows
        // (not after a takeover: the appliance's own handshake is under way): an appliance
        // takes the session when traffic arrives on a session set up while another held it,
        // and the standby session may be older than the last move.
        if why != Switch::Takeover {
            let action = own(self.peers[self.active].force_handshake(&mut self.out));
            self.carry(self.active, action);
        }
        self.drain_events();
    }

    /// The active appliance was silent for too long.
    fn on_silence(&mut self, now: Instant) {
        if self.standby_ready(now) && self.standby_trusted() {
            tracing::warn!("the appliance stopped answering; switching to the standby session");
            self.switch(now, Switch::Silence);
        } else {
            self.silence.reset();
        }
    }

    fn record(&mut self, now: Instant, endpoint: SocketAddr, via: &'static str) {
        if let Some(t) = &self.timeline {
            t.moved(now, endpoint);
        }
        self.report.endpoints.push(EndpointChange {
            at: Utc::now(),
            at_ms: u64::try_from(now.saturating_duration_since(self.started.0).as_millis())
                .unwrap_or(u64::MAX),
            endpoint,
            via,
        });
    }

    fn encapsulate(&mut self, now: Instant, packet: &[u8]) {
        let action = own(self.peers[self.active].encapsulate(packet, &mut self.out));
        if matches!(action, ActionOwned::Send(_)) && !packet.is_empty() {
            self.silence.handle_sent(now);
        }
        self.carry(self.active, action);
    }

    /// A datagram from the network; returns the inside packet it carried, if any.
    fn on_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        inner: &mut [u8],
    ) -> Option<Vec<u8>> {
        let slots = [0, 1].map(|i| Slot {
            index: self.indexes[i],
            endpoint: self.peers[i].endpoint(),
        });
        let slot = route(datagram, src, &slots, self.active);
        let initiation = datagram.first() == Some(&MSG_INIT);
        if slot != self.active && initiation && !self.standby_trusted() {
            // The appliance we left initiates: it takes the session back, and it may have
            // restarted since our last session with it. A responder uses a new session only
            // after the initiator's first packet; until then boringtun would keep sending on
            // the old one, which such an appliance drops. A fresh peer has no old session: it
            // queues those packets instead.
            self.peers[slot] = make_peer(&self.cfg, &self.key, self.appliance, self.indexes[slot]);
            self.peers[slot].set_endpoint(src);
        }
        let mut inside = None;
        let mut heard = false;
        let mut initiated = false;
        match self.peers[slot].handle_datagram(now, src, datagram, inner) {
            Action::Send(bytes) => {
                heard = true;
                initiated = initiation;
                let _ = self.socket.try_send_to(bytes, src);
            }
            Action::Inside(p) => {
                heard = true;
                inside = Some(p.to_vec());
            }
            Action::Done => heard = datagram.first() == Some(&4),
            Action::Drop(_) => {}
        }
        for _ in 0..512 {
            match self.peers[slot].flush(inner) {
                Action::Send(bytes) => self.send_on(slot, bytes),
                _ => break,
            }
        }
        if heard && slot == self.active {
            self.silence.handle_heard();
        }
        self.drain_events();
        // The standby appliance initiated: the shadow group is taking the session over.
        if initiated && slot != self.active {
            self.switch(now, Switch::Takeover);
        }
        inside
    }

    fn on_tick(&mut self, now: Instant, inner: &mut [u8]) {
        for slot in 0..2 {
            if let Action::Send(bytes) = self.peers[slot].update_timers(inner) {
                let b = bytes.to_vec();
                self.send_on(slot, &b);
            }
        }
        let refresh = self.cfg.client.standby_refresh.0;
        if self.cfg.client.standby
            && self
                .standby_started
                .is_some_and(|t| now.duration_since(t) >= refresh)
        {
            self.refresh_standby(now);
        }
    }

    fn silence_deadline(&self) -> Option<Instant> {
        if !self.cfg.client.standby {
            return None;
        }
        let after = switch_after(
            self.cfg.client.switch_after.0,
            self.peers[self.active].last_rtt(),
        )?;
        self.silence.deadline(after)
    }
}

/// An [`Action`] without the borrow, for the few places that need to call `self` again.
enum ActionOwned {
    Send(Vec<u8>),
    Other,
}

fn own(a: Action<'_>) -> ActionOwned {
    match a {
        Action::Send(b) => ActionOwned::Send(b.to_vec()),
        _ => ActionOwned::Other,
    }
}

/// Where lookups go: the configured server (over TLS with `resolver_tls`) or the system's.
fn upstream(cfg: &ClientConfig) -> Result<Upstream, ResolveError> {
    let server = match cfg.client.resolver {
        Resolver::Server(a) => a,
        Resolver::System => std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| resolve::system_resolver(&t))
            .ok_or(ResolveError::NoResolver)?,
    };
    Ok(match &cfg.client.resolver_tls {
        Some(tls) => Upstream::Tls(Arc::new(DotUpstream::new(server, tls)?)),
        None => Upstream::Udp(server),
    })
}

/// Chooses the endpoint from an answer: stay on the current address while it is still listed.
fn choose(addrs: &[IpAddr], current: Option<SocketAddr>, port: u16) -> Option<SocketAddr> {
    if let Some(c) = current
        && addrs.contains(&c.ip())
    {
        return Some(c);
    }
    addrs.first().map(|ip| SocketAddr::new(*ip, port))
}

/// Both sessions' peers: the same identity, distinct local indexes.
fn peers(cfg: &ClientConfig, key: &SecretKey, appliance: IpAddr) -> ([Peer; 2], [u32; 2]) {
    // The helper's own indexes only name its sessions locally; any 24-bit values work.
    let first = rand::random::<u32>() % (PeerIndex::MAX - 1) + 1;
    let indexes = [first, first + 1];
    let make = |i: u32| make_peer(cfg, key, appliance, i);
    ([make(indexes[0]), make(indexes[1])], indexes)
}

/// One session's peer, with local index `index` (1..`PeerIndex::MAX`).
fn make_peer(cfg: &ClientConfig, key: &SecretKey, appliance: IpAddr, index: u32) -> Peer {
    let index = PeerIndex::new(i64::from(index)).expect("1..=PeerIndex::MAX is a valid peer index");
    let mut peer = Peer::new(
        key,
        PeerSpec {
            index,
            public_key: cfg.client.service_public_key,
            tunnel_ip: appliance,
            keepalive: cfg
                .client
                .keepalive
                .map(|k| u16::try_from(k.0.as_secs()).unwrap_or(u16::MAX)),
        },
    );
    peer.pin_endpoint();
    peer
}

/// One lookup round: the per-client name and, with a standby, the standby name.
struct Lookup {
    main: Result<resolve::Answer, ResolveError>,
    standby: Option<Result<resolve::Answer, ResolveError>>,
}

async fn lookup_both(resolver: Upstream, name: String, standby: Option<String>) -> Lookup {
    let main = resolver.lookup(&name).await;
    let standby = match standby {
        Some(n) => Some(resolver.lookup(&n).await),
        None => None,
    };
    Lookup { main, standby }
}

impl State {
    /// Takes in a lookup round; returns when to look up again.
    fn on_lookup(&mut self, r: Option<Lookup>) -> Instant {
        let now = Instant::now();
        let Some(r) = r else {
            return now + self.cfg.client.min_ttl.0;
        };
        let next = match r.main {
            Ok(answer) => {
                let port = self.cfg.client.port;
                if let Some(ep) = choose(&answer.addrs, self.peers[self.active].endpoint(), port) {
                    self.adopt(now, ep);
                }
                now + clamp_ttl(&self.cfg, answer.ttl)
            }
            Err(e) => {
                self.report.failed_lookups += 1;
                tracing::warn!(
                    "resolving {}: {e}; keeping the current endpoint",
                    self.report.name
                );
                now + self.cfg.client.min_ttl.0
            }
        };
        match r.standby {
            Some(Ok(answer)) => {
                let port = self.cfg.client.port;
                let current = self.peers[self.standby_slot()].endpoint();
                if let Some(ep) = choose(&answer.addrs, current, port) {
                    self.adopt_standby(now, ep);
                }
            }
            // The zone names no standby: that appliance is down or drained, and if it fails
            // it restarts without our session. Trust it again after a fresh handshake.
            Some(Err(ResolveError::NoAddress(_))) => {
                if self.peers[self.standby_slot()].endpoint().is_some() {
                    self.standby_suspect_until_handshake = Some(now);
                }
            }
            Some(Err(_)) | None => {}
        }
        next
    }

    /// Sends the next probe (probe mode).
    fn send_probe(&mut self, now: Instant, stream: &mut ProbeStream) {
        let mut payload = vec![0u8; self.cfg.probe.payload];
        if let Some(len) = stream.next_probe(now, &mut payload) {
            let mut ip = vec![0u8; len + 64];
            let src = UdpAddr {
                ip: self.own,
                port: PROBE_PORT,
            };
            let dst = UdpAddr {
                ip: self.appliance,
                port: ECHO_PORT,
            };
            if let Some(n) = packet::build_udp(&mut ip, src, dst, &payload[..len]) {
                self.encapsulate(now, &ip[..n]);
            }
            if let Some(t) = &self.timeline {
                t.sent(now);
            }
        }
    }

    /// Logs the stream and sends the window's report to the appliance.
    fn send_report(&mut self, now: Instant, stream: &mut ProbeStream) {
        stream.settle(now);
        let w = stream.take_window();
        let total = stream.report();
        tracing::info!(
            sent = total.sent, received = total.received, lost = total.lost,
            longest_gap_ms = total.longest_gap_ms,
            window_rtt_ms = ?w.rtt_ms, endpoint = ?self.peers[self.active].endpoint(),
            "probe stream"
        );
        if let Ok(json) = serde_json::to_vec(&w) {
            let mut ip = vec![0u8; json.len() + 64];
            let src = UdpAddr {
                ip: self.own,
                port: REPORT_SRC_PORT,
            };
            let dst = UdpAddr {
                ip: self.appliance,
                port: REPORT_PORT,
            };
            if let Some(n) = packet::build_udp(&mut ip, src, dst, &json) {
                self.encapsulate(now, &ip[..n]);
            }
        }
    }

    /// An inside packet from the tunnel: to the TUN device, or the probe stream's reply.
    fn deliver(&self, now: Instant, p: &[u8], tun: Option<&Tun>, stream: Option<&mut ProbeStream>) {
        match (tun, stream) {
            (Some(dev), _) => {
                let _ = dev.try_send(p);
            }
            (None, Some(s)) => {
                if let Some(u) = packet::parse_udp(p)
                    && u.src.port == ECHO_PORT
                    && u.src.ip == self.appliance
                    && u.dst.port == PROBE_PORT
                {
                    let sent = s.sent_time(u.payload);
                    if s.handle_reply(now, u.payload)
                        && let (Some(t), Some(sent)) = (&self.timeline, sent)
                    {
                        t.reply(sent, now);
                    }
                }
            }
            (None, None) => {}
        }
    }
}

impl State {
    fn new(
        cfg: ClientConfig,
        key: SecretKey,
        socket: tokio::net::UdpSocket,
        timeline: Option<Arc<Timeline>>,
        now: Instant,
    ) -> Self {
        let appliance = cfg.tunnel.network.first_host();
        let (peers, indexes) = peers(&cfg, &key, appliance);
        Self {
            socket,
            peers,
            indexes,
            active: 0,
            started: (now, Utc::now()),
            report: ClientReport {
                name: cfg.endpoint_name(),
                duration_s: 0.0,
                endpoints: Vec::new(),
                handshakes: 0,
                standby_handshakes: 0,
                standby: None,
                failed_lookups: 0,
                probe: None,
            },
            own: cfg.tunnel.address,
            appliance,
            out: vec![0u8; 65_600],
            left: None,
            standby_started: None,
            standby_suspect_until_handshake: None,
            dns_wants: None,
            key,
            silence: Silence::default(),
            timeline,
            cfg,
        }
    }
}

/// The first resolution, retried every second: nothing can be sent before it. Returns when
/// the next lookup is due, or `None` on shutdown.
async fn first_lookup(
    st: &mut State,
    resolver: &Upstream,
    name: &str,
    standby_name: Option<&str>,
    shutdown: &CancellationToken,
) -> Option<Instant> {
    loop {
        let r = lookup_both(
            resolver.clone(),
            name.to_owned(),
            standby_name.map(str::to_owned),
        )
        .await;
        if r.main.is_ok() {
            return Some(st.on_lookup(Some(r)));
        }
        st.report.failed_lookups += 1;
        if let Err(e) = &r.main {
            tracing::warn!("resolving {name} via {resolver}: {e}; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs the helper until `shutdown`; returns the final report.
pub async fn run(
    cfg: ClientConfig,
    key: SecretKey,
    shutdown: CancellationToken,
) -> Result<ClientReport, ClientError> {
    run_recorded(cfg, key, shutdown, None).await
}

/// [`run`], recording every probe, reply and move into `timeline` as it happens.
pub async fn run_recorded(
    cfg: ClientConfig,
    key: SecretKey,
    shutdown: CancellationToken,
    timeline: Option<Arc<Timeline>>,
) -> Result<ClientReport, ClientError> {
    let resolver = upstream(&cfg)?;
    let name = cfg.endpoint_name();
    let standby_name = cfg.client.standby.then(|| cfg.standby_name());
    let socket = bind_udp(cfg.client.listen.0)?;
    let tun = match cfg.client.inside {
        ClientInside::Tun => Some(Tun::create(
            &cfg.tunnel.tun_name,
            cfg.tunnel.address,
            cfg.tunnel.network.prefix(),
            cfg.tunnel.mtu,
        )?),
        ClientInside::Probe => None,
    };
    let now = Instant::now();
    let mut stream = (cfg.client.inside == ClientInside::Probe)
        .then(|| ProbeStream::new(now, cfg.probe.payload, cfg.probe.loss_timeout.0));
    let mut st = State::new(cfg, key, socket, timeline, now);
    let Some(mut next_lookup) = first_lookup(
        &mut st,
        &resolver,
        &name,
        standby_name.as_deref(),
        &shutdown,
    )
    .await
    else {
        return Ok(finish(st, stream));
    };

    let mut rx = vec![0u8; 65_600];
    let mut inner = vec![0u8; 65_600];
    let mut tun_buf = vec![0u8; 65_600];
    let mut tick = tokio::time::interval(TICK);
    let rate = st.cfg.probe.rate.max(1);
    let mut probe_tick = tokio::time::interval(Duration::from_secs(1) / rate);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report_tick = tokio::time::interval(st.cfg.probe.report_interval.0);
    report_tick.tick().await;
    let probing = stream.is_some();
    let mut stop_sending_at: Option<Instant> = None;
    let mut lookup: Option<tokio::task::JoinHandle<Lookup>> = None;
    loop {
        if lookup.is_none() && Instant::now() >= next_lookup {
            lookup = Some(tokio::spawn(lookup_both(
                resolver.clone(),
                name.clone(),
                standby_name.clone(),
            )));
        }
        let idle = lookup.is_none();
        let lookup_wait = async {
            match lookup.as_mut() {
                Some(h) => h.await.ok(),
                None => std::future::pending().await,
            }
        };
        let until_lookup = next_lookup.saturating_duration_since(Instant::now());
        let silence = st.silence_deadline();
        let at = |i: Option<Instant>| {
            i.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)
        };
        tokio::select! {
            () = shutdown.cancelled(), if stop_sending_at.is_none() => {
                // Stop sending; give outstanding probes their loss timeout to come back.
                let grace = if probing { st.cfg.probe.loss_timeout.0 } else { Duration::ZERO };
                stop_sending_at = Some(Instant::now() + grace);
            }
            () = tokio::time::sleep_until(at(stop_sending_at)), if stop_sending_at.is_some() => break,
            r = lookup_wait => {
                lookup = None;
                next_lookup = st.on_lookup(r);
            }
            () = tokio::time::sleep(until_lookup), if idle => {}
            () = tokio::time::sleep_until(at(silence)), if silence.is_some() && stop_sending_at.is_none() => {
                st.on_silence(Instant::now());
            }
            r = st.socket.recv_from(&mut rx) => {
                let (n, src) = match r {
                    Ok(r) => r,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let now = Instant::now();
                if let Some(p) = st.on_datagram(now, src, &rx[..n], &mut inner) {
                    st.deliver(now, &p, tun.as_ref(), stream.as_mut());
                }
            }
            r = tun_read(tun.as_ref(), &mut tun_buf), if stop_sending_at.is_none() => {
                if let Ok(n) = r {
                    let p = tun_buf[..n].to_vec();
                    st.encapsulate(Instant::now(), &p);
                }
            }
            _ = probe_tick.tick(), if probing && stop_sending_at.is_none() => {
                if let Some(s) = stream.as_mut() {
                    st.send_probe(Instant::now(), s);
                }
            }
            _ = report_tick.tick(), if probing => {
                if let Some(s) = stream.as_mut() {
                    st.send_report(Instant::now(), s);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                st.on_tick(now, &mut inner);
                if let Some(s) = stream.as_mut() {
                    s.settle(now);
                }
            }
        }
    }
    Ok(finish(st, stream))
}

fn finish(mut st: State, stream: Option<ProbeStream>) -> ClientReport {
    st.report.duration_s = st.started.0.elapsed().as_secs_f64();
    st.report.probe = stream.map(|mut s| {
        s.settle_all();
        s.report()
    });
    st.report
}

fn clamp_ttl(cfg: &ClientConfig, ttl: Duration) -> Duration {
    ttl.clamp(cfg.client.min_ttl.0, cfg.client.max_ttl.0)
}

async fn tun_read(tun: Option<&Tun>, buf: &mut [u8]) -> std::io::Result<usize> {
    match tun {
        Some(t) => t.recv(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_on_a_listed_endpoint() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let cur = Some(SocketAddr::new(b, 51820));
        assert_eq!(choose(&[a, b], cur, 51820), cur);
        assert_eq!(choose(&[a], cur, 51820), Some(SocketAddr::new(a, 51820)));
        assert_eq!(choose(&[], cur, 51820), None);
    }
}
