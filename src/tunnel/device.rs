//! The appliance's data plane shell: one UDP socket, the inside of the tunnel (the built-in
//! echo responder or a TUN device), boringtun's timers every [`TICK`], and live peer updates.
//!
//! One task owns the [`Router`] and every buffer; nothing it does waits on anything but its
//! socket, its TUN device and its command channel. What the rest of the agent needs flows out
//! without back-pressure: counters through [`DeviceStats`] atomics, session snapshots and
//! client reports through a bounded channel with `try_send` (a full channel drops the event
//! and counts it; the next checkpoint snapshot repairs the recorder's view).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::TunnelError;
use super::packet;
use super::peer::{DropReason, PeerEvent, PeerSpec};
use super::router::{Routed, Router};
use super::stats::{DeviceStats, RelayRejection};
use super::tun::Tun;
use crate::domain::{PeerIndex, SecretKey, SessionCounters};
use crate::takeover::wire::{Relay, RelayDirection};

/// How often boringtun's timers run (it rounds its timers to these calls).
pub const TICK: Duration = Duration::from_millis(100);

/// UDP port on the appliance's tunnel address where client helpers send their path reports.
pub const REPORT_PORT: u16 = 7071;

/// Largest client report accepted (bytes of UDP payload).
pub const MAX_REPORT: usize = 512;

/// Datagrams handled per wake-up before timers and commands get a turn.
const BATCH: usize = 64;

/// Largest datagram or inside packet handled.
const MAX_PACKET: usize = 65_535;

/// Socket buffer size asked for; the kernel caps it at `net.core.{r,w}mem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// What carries decrypted traffic.
#[derive(Debug)]
pub enum Inside {
    /// The built-in responder: ICMP echo and UDP echo (port 7) on the appliance's address.
    Echo,
    /// A TUN device to the host's network stack.
    Tun(Tun),
}

/// Settings of a device.
#[derive(Debug)]
pub struct DeviceConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The appliance's own address inside the tunnel.
    pub own_ip: IpAddr,
    /// The inside.
    pub inside: Inside,
    /// Handshakes per second (all peers) before cookies are required.
    pub handshakes_per_second: u64,
    /// How often changed session counters are reported.
    pub checkpoint_interval: Duration,
    /// Capacity of the event channel.
    pub event_capacity: usize,
}

/// A change to the peer set.
#[derive(Debug, Clone)]
pub enum PeerCommand {
    /// The full set: peers not in it are removed.
    Replace(Vec<PeerSpec>),
    /// Add or update one peer.
    Upsert(PeerSpec),
    /// Remove one peer.
    Remove(PeerIndex),
    /// Takeover: whether this appliance holds the session. A session it does not hold gets
    /// no keepalives and no handshake initiations from it (it still answers the client).
    Hold {
        /// The peer.
        peer: PeerIndex,
        /// Held here.
        held: bool,
    },
    /// Takeover: send handshake initiations to these clients' endpoints, paced
    /// ([`INITIATIONS_PER_PACE`] every [`PACE`]).
    Initiate(Vec<(PeerIndex, SocketAddr)>),
    /// Takeover: the key that authenticates relayed datagrams between group appliances.
    GroupKey(crate::takeover::wire::GroupKey),
    /// Takeover: relay one session's stray datagrams for a while (make-before-break).
    Relay {
        /// The session.
        peer: PeerIndex,
        /// Which side of the move this appliance is on.
        role: RelayRole,
        /// The other appliance's address.
        via: SocketAddr,
        /// How long.
        window: Duration,
    },
}

/// A side of a make-before-break move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// The new holder: client datagrams it cannot decrypt (still on the old session) go to
    /// the old holder.
    NewHolder,
    /// The old holder: what it still sends the client goes out through the new holder, so
    /// that the client's endpoint stays there.
    OldHolder,
}

/// What the data plane passes to the takeover task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInput {
    /// A group heartbeat arrived on the WireGuard port.
    Heartbeat {
        /// Sender address.
        from: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A handshake with a client completed here.
    Handshake {
        /// The client.
        peer: PeerIndex,
        /// Its endpoint.
        endpoint: Option<SocketAddr>,
        /// Our receiver index of the new session.
        receiver_index: u32,
    },
    /// The first inside packet (not a keepalive) on one of our sessions of a client whose
    /// session another appliance holds (sent once per session; relayed datagrams never).
    Data {
        /// The client.
        peer: PeerIndex,
        /// Our receiver index of the session it came on.
        receiver_index: u32,
    },
}

/// How long an old holder keeps replying through the appliance that relayed a client's
/// datagram to it (the new holder).
const RELAY_IMPLIED: Duration = Duration::from_secs(3);

/// Takeover initiations are sent in groups of this many...
pub const INITIATIONS_PER_PACE: usize = 32;
/// ...one group per this interval, so that a thousand sessions resume within about 60 ms
/// without a burst that overflows socket buffers on either side.
pub const PACE: Duration = Duration::from_millis(2);

/// Why a session snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotCause {
    /// A handshake completed.
    Handshake,
    /// The client's endpoint moved.
    Endpoint,
    /// Periodic counter checkpoint.
    Checkpoint,
}

/// The recorder-relevant state of one peer at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The peer.
    pub peer: PeerIndex,
    /// What triggered it.
    pub cause: SnapshotCause,
    /// Last authenticated endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Our receiver index of the current session.
    pub receiver_index: Option<u32>,
    /// When the current session's handshake completed (wall clock).
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Traffic counters.
    pub counters: SessionCounters,
}

/// What the device tells the rest of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    /// Session state changed.
    Session(SessionSnapshot),
    /// A round-trip time to a client, from handshake timing.
    Rtt {
        /// The client.
        peer: PeerIndex,
        /// The measurement.
        rtt: Duration,
    },
    /// A report a client helper sent to [`REPORT_PORT`] (authenticated by the tunnel).
    Report {
        /// The client.
        peer: PeerIndex,
        /// The UDP payload (at most [`MAX_REPORT`] bytes).
        payload: Vec<u8>,
    },
}

/// Handles for the rest of the agent.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// Peer updates.
    pub commands: mpsc::Sender<PeerCommand>,
    /// Live counters.
    pub stats: Arc<DeviceStats>,
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    /// The socket, for group heartbeats (sent from the takeover task).
    pub socket: Arc<UdpSocket>,
}

/// The data plane, ready to run.
pub struct Device {
    socket: Arc<UdpSocket>,
    router: Router,
    config: DeviceConfig,
    commands: mpsc::Receiver<PeerCommand>,
    events: mpsc::Sender<DeviceEvent>,
    stats: Arc<DeviceStats>,
    /// Counters last reported per peer, so checkpoints report only changes.
    checkpointed: HashMap<PeerIndex, SessionCounters>,
    /// Wall clock at `started`, to turn `Instant`s into timestamps.
    epoch: (Instant, DateTime<Utc>),
    /// Where heartbeats and handshakes go when takeover runs.
    group: Option<mpsc::Sender<GroupInput>>,
    /// Sessions held by another appliance (no timers here).
    withheld: std::collections::HashSet<PeerIndex>,
    /// Takeover initiations not sent yet.
    initiations: std::collections::VecDeque<(PeerIndex, SocketAddr)>,
    /// Relay key (set by the takeover task).
    group_key: Option<crate::takeover::wire::GroupKey>,
    /// Sessions moving here: old holder, until when.
    relay_new: HashMap<PeerIndex, (SocketAddr, Instant)>,
    /// Sessions moving away: new holder, until when.
    relay_old: HashMap<PeerIndex, (SocketAddr, Instant)>,
    /// Per withheld peer, the session whose first inside packet was reported
    /// ([`GroupInput::Data`]).
    data_reported: HashMap<PeerIndex, u32>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("router", &self.router)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Binds a UDP socket with large buffers.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, TunnelError> {
    let bind = |source| TunnelError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind)?;
    // Best effort: a smaller buffer only costs throughput under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    UdpSocket::from_std(socket.into()).map_err(bind)
}

impl Device {
    /// Binds the listener. Returns the device (run it with [`Device::run`]), its handle, and
    /// the receiving end of its events.
    pub fn bind(
        config: DeviceConfig,
        key: SecretKey,
    ) -> Result<(Self, DeviceHandle, mpsc::Receiver<DeviceEvent>), TunnelError> {
        let socket = Arc::new(bind_udp(config.listen)?);
        let local_addr = socket.local_addr()?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(16));
        let stats = Arc::new(DeviceStats::default());
        let router = Router::new(key, config.handshakes_per_second);
        let device = Self {
            socket,
            router,
            config,
            commands: cmd_rx,
            events: ev_tx,
            stats: Arc::clone(&stats),
            checkpointed: HashMap::new(),
            epoch: (Instant::now(), Utc::now()),
            group: None,
            withheld: std::collections::HashSet::new(),
            initiations: std::collections::VecDeque::new(),
            group_key: None,
            relay_new: HashMap::new(),
            relay_old: HashMap::new(),
            data_reported: HashMap::new(),
        };
        let handle = DeviceHandle {
            commands: cmd_tx,
            stats,
            local_addr,
            socket: Arc::clone(&device.socket),
        };
        Ok((device, handle, ev_rx))
    }

    /// Hands group heartbeats and completed handshakes to the takeover task. Without it,
    /// heartbeats are dropped as malformed.
    pub fn group_inputs(&mut self, capacity: usize) -> mpsc::Receiver<GroupInput> {
        let (tx, rx) = mpsc::channel(capacity.max(16));
        self.group = Some(tx);
        rx
    }

    /// Runs until `shutdown` is cancelled. Only a broken socket ends it early.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TunnelError> {
        let mut rx = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + 64];
        let mut reply = vec![0u8; MAX_PACKET + 64];
        let mut inside_buf = vec![0u8; MAX_PACKET];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let tun = match &self.config.inside {
            Inside::Tun(_) => true,
            Inside::Echo => false,
        };
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    // Every sender is gone: the agent is shutting down.
                    None => break,
                },
                // Timers before the socket: a socket that stays readable (a flood) must not
                // starve keepalives, retransmits, the limiter's restart, checkpoints or
                // takeover initiations. Each is due at most once per interval and bounded, so
                // it cannot starve the socket in turn, which gets [`BATCH`] reads per turn.
                _ = tick.tick() => {
                    self.router.reset_rate_limiter();
                    self.on_timers(Instant::now(), &mut out);
                }
                _ = checkpoint.tick() => self.on_checkpoint(),
                _ = pace.tick(), if !self.initiations.is_empty() => self.on_pace(&mut out),
                r = self.socket.recv_from(&mut rx) => {
                    let (n, src) = match r {
                        Ok(r) => r,
                        Err(e) if is_transient(&e) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    self.on_datagram(src, &rx[..n], &mut out, &mut reply);
                    for _ in 1..BATCH {
                        match self.socket.try_recv_from(&mut rx) {
                            Ok((n, src)) => self.on_datagram(src, &rx[..n], &mut out, &mut reply),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if is_transient(&e) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                r = tun_recv(&self.config.inside, &mut inside_buf), if tun => {
                    match r {
                        Ok(n) => {
                            self.on_inside(&inside_buf[..n], &mut out);
                            for _ in 1..BATCH {
                                let Inside::Tun(dev) = &self.config.inside else { break };
                                match dev.try_recv(&mut inside_buf) {
                                    Ok(n) => self.on_inside(&inside_buf[..n], &mut out),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => tracing::warn!("TUN read failed: {e}"),
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, cmd: PeerCommand) {
        match cmd {
            PeerCommand::Replace(specs) => {
                let keep: std::collections::HashSet<PeerIndex> =
                    specs.iter().map(|s| s.index).collect();
                let stale: Vec<PeerIndex> = self
                    .router
                    .indexes()
                    .iter()
                    .filter(|i| !keep.contains(i))
                    .copied()
                    .collect();
                for i in stale {
                    self.router.remove(i);
                    self.checkpointed.remove(&i);
                }
                for s in specs {
                    self.router.upsert(s);
                }
            }
            PeerCommand::Upsert(s) => {
                self.router.upsert(s);
            }
            PeerCommand::Remove(i) => {
                self.router.remove(i);
                self.checkpointed.remove(&i);
                self.withheld.remove(&i);
                self.data_reported.remove(&i);
            }
            PeerCommand::Hold { peer, held } => {
                self.data_reported.remove(&peer);
                if held {
                    self.withheld.remove(&peer);
                    // Holding it now: nothing of ours goes out through another appliance.
                    self.relay_old.remove(&peer);
                } else {
                    self.relay_new.remove(&peer);
                    self.withheld.insert(peer);
                    self.initiations.retain(|(p, _)| *p != peer);
                }
            }
            PeerCommand::GroupKey(key) => self.group_key = Some(key),
            PeerCommand::Relay {
                peer,
                role,
                via,
                window,
            } => {
                let entry = (via, Instant::now() + window);
                match role {
                    RelayRole::NewHolder => {
                        self.relay_old.remove(&peer);
                        self.relay_new.insert(peer, entry);
                    }
                    RelayRole::OldHolder => {
                        self.relay_new.remove(&peer);
                        self.relay_old.insert(peer, entry);
                    }
                }
            }
            PeerCommand::Initiate(list) => {
                for (peer, endpoint) in list {
                    self.withheld.remove(&peer);
                    self.relay_old.remove(&peer);
                    self.initiations.push_back((peer, endpoint));
                }
            }
        }
        self.stats.peers.store(
            self.router.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        match self.socket.try_send_to(bytes, to) {
            Ok(n) => {
                DeviceStats::add(&self.stats.tx_datagrams, 1);
                DeviceStats::add(&self.stats.tx_bytes, n as u64);
            }
            Err(_) => DeviceStats::add(&self.stats.send_errors, 1),
        }
    }

    /// Carries out a routed action; returns the peer whose queue may need flushing.
    fn carry_out(&self, routed: Routed<'_>) -> Option<PeerIndex> {
        match routed {
            Routed::Send { to, bytes, peer } => {
                if bytes.first() == Some(&3) && peer.is_none() {
                    DeviceStats::add(&self.stats.cookie_replies, 1);
                }
                match peer.and_then(|p| relay_via(&self.relay_old, p)) {
                    Some(via) => self.relay(via, RelayDirection::ToClient, to, bytes),
                    None => self.send(to, bytes),
                }
                peer
            }
            Routed::Drop(r) => {
                self.stats.count_drop(r);
                None
            }
            Routed::Done | Routed::Inside { .. } => None,
        }
    }

    fn flush(&mut self, peer: PeerIndex, out: &mut [u8]) {
        // boringtun's queue holds at most 256 packets; the bound guards against surprises.
        for _ in 0..512 {
            match self.router.flush(peer, out) {
                Routed::Done => break,
                r => {
                    let _ = self.carry_out(r);
                }
            }
        }
    }

    fn on_datagram(&mut self, src: SocketAddr, datagram: &[u8], out: &mut [u8], reply: &mut [u8]) {
        let now = Instant::now();
        DeviceStats::add(&self.stats.rx_datagrams, 1);
        DeviceStats::add(&self.stats.rx_bytes, datagram.len() as u64);
        if crate::takeover::wire::is_heartbeat(datagram) {
            let input = GroupInput::Heartbeat {
                from: src,
                bytes: datagram[..datagram.len().min(crate::takeover::wire::MAX_LEN + 1)].to_vec(),
            };
            match &self.group {
                Some(group) if group.try_send(input).is_ok() => {}
                Some(_) => DeviceStats::add(&self.stats.events_dropped, 1),
                None => self.stats.count_drop(DropReason::Malformed),
            }
            return;
        }
        if crate::takeover::wire::is_relay(datagram) {
            self.on_relay(src, datagram, out, reply);
            return;
        }
        self.on_wireguard(now, src, datagram, out, reply, false);
    }

    /// A WireGuard datagram (from the client, or `relayed` from the new holder).
    fn on_wireguard(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut [u8],
        relayed: bool,
    ) {
        let routed = self.router.handle_datagram(now, src, datagram, out);
        // A data packet of a session moving here that we cannot decrypt is still on the old
        // holder's session: hand it over.
        if let Routed::Drop(_) = routed
            && datagram.first() == Some(&4)
            && let Some(peer) = datagram
                .get(4..8)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .and_then(|b| PeerIndex::from_receiver_index(u32::from_le_bytes(b)))
            && let Some(via) = relay_via(&self.relay_new, peer)
        {
            self.relay(via, RelayDirection::FromClient, src, datagram);
            return;
        }
        // Reported after the events: the first data packet of a session may also be what
        // completes its handshake (a client with queued packets sends no keepalive first),
        // and the takeover task must hear of the handshake before the data.
        let mut data_on_withheld = None;
        let touched = match routed {
            Routed::Inside { peer, packet } => {
                DeviceStats::add(&self.stats.inside_rx, 1);
                if !relayed && self.withheld.contains(&peer) {
                    data_on_withheld = Some(peer);
                }
                self.on_peer_packet(peer, packet, reply);
                Some(peer)
            }
            Routed::Done => None,
            other => {
                let flush = self.carry_out(other);
                if let Some(p) = flush {
                    self.flush(p, out);
                }
                flush
            }
        };
        // Events come from handshakes and roaming; the peer may not be named in the result
        // (a keepalive confirming a session returns Done), so look it up by receiver index.
        let peer = touched.or_else(|| {
            let b: [u8; 4] = datagram.get(4..8)?.try_into().ok()?;
            PeerIndex::from_receiver_index(u32::from_le_bytes(b))
        });
        if let Some(p) = peer {
            self.drain_events(p);
        }
        if let Some(p) = data_on_withheld {
            self.report_data(p, datagram);
        }
    }

    /// Tells the takeover task of the first inside packet on a session of a withheld peer:
    /// on a standby session that is the client moving here.
    fn report_data(&mut self, peer: PeerIndex, datagram: &[u8]) {
        let Some(receiver_index) = datagram
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
        else {
            return;
        };
        if self.data_reported.get(&peer) == Some(&receiver_index) {
            return;
        }
        self.data_reported.insert(peer, receiver_index);
        if let Some(group) = &self.group
            && group
                .try_send(GroupInput::Data {
                    peer,
                    receiver_index,
                })
                .is_err()
        {
            // Lost: the next session's first packet is reported again.
            self.data_reported.remove(&peer);
            DeviceStats::add(&self.stats.events_dropped, 1);
        }
    }

    /// Wraps a datagram for the other appliance of a move.
    fn relay(
        &self,
        via: SocketAddr,
        direction: RelayDirection,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        let Some(key) = &self.group_key else {
            return;
        };
        let mut msg = Vec::with_capacity(datagram.len() + 64);
        Relay {
            direction,
            client,
            datagram,
        }
        .encode(key, &mut msg);
        DeviceStats::add(&self.stats.relayed, 1);
        self.send(via, &msg);
    }

    /// A relay message from a group appliance.
    fn on_relay(&mut self, src: SocketAddr, msg: &[u8], out: &mut [u8], reply: &mut [u8]) {
        let Some(key) = &self.group_key else {
            self.stats.count_relay_rejection(RelayRejection::NoKey);
            return;
        };
        let r = match Relay::decode(key, msg) {
            Ok(r) => r,
            Err(crate::takeover::wire::WireError::BadMac) => {
                self.stats.count_relay_rejection(RelayRejection::BadMac);
                return;
            }
            Err(_) => {
                self.stats.count_relay_rejection(RelayRejection::Malformed);
                return;
            }
        };
        let now = Instant::now();
        let from_partner = |table: &HashMap<PeerIndex, (SocketAddr, Instant)>| {
            table
                .values()
                .any(|(via, until)| via.ip() == src.ip() && now < *until)
        };
        match r.direction {
            // We are the old holder: the client's datagram, as if it came from the client.
            // The relaying appliance holds the session now (its claim may not have reached
            // us yet): our replies go back through it, or the client would roam back here.
            RelayDirection::FromClient => {
                let (client, datagram) = (r.client, r.datagram.to_vec());
                if let Some(peer) = datagram
                    .get(4..8)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .and_then(|b| PeerIndex::from_receiver_index(u32::from_le_bytes(b)))
                    && self.router.peer(peer).is_some()
                {
                    let until = self
                        .relay_old
                        .get(&peer)
                        .map_or(now + RELAY_IMPLIED, |(_, u)| (*u).max(now + RELAY_IMPLIED));
                    self.relay_new.remove(&peer);
                    self.relay_old.insert(peer, (src, until));
                    self.on_wireguard(now, client, &datagram, out, reply, true);
                } else {
                    self.stats
                        .count_relay_rejection(RelayRejection::UnknownSession);
                }
            }
            // We are the new holder: the old holder's reply, sent from our address.
            RelayDirection::ToClient if from_partner(&self.relay_new) => {
                self.send(r.client, r.datagram);
            }
            _ => self.stats.count_relay_rejection(RelayRejection::NotPartner),
        }
    }

    /// A decrypted packet from a peer.
    fn on_peer_packet(&mut self, peer: PeerIndex, packet: &mut [u8], reply: &mut [u8]) {
        let own = self.config.own_ip;
        if let Some(udp) = packet::parse_udp(packet)
            && udp.dst.ip == own
            && udp.dst.port == REPORT_PORT
        {
            if udp.payload.len() <= MAX_REPORT {
                let event = DeviceEvent::Report {
                    peer,
                    payload: udp.payload.to_vec(),
                };
                if self.events.try_send(event).is_err() {
                    DeviceStats::add(&self.stats.events_dropped, 1);
                }
            } else {
                self.stats.count_drop(DropReason::Malformed);
            }
            return;
        }
        match &self.config.inside {
            Inside::Echo => {
                let Some(n) = packet::echo_in_place(packet, own) else {
                    self.stats.count_drop(DropReason::NoRoute);
                    return;
                };
                let Some(ip) = packet::parse_ip(&packet[..n]) else {
                    return;
                };
                let routed = self.router.send_to_peer_ip(ip.dst, &packet[..n], reply);
                if matches!(routed, Routed::Send { .. }) {
                    DeviceStats::add(&self.stats.inside_tx, 1);
                }
                let _ = self.carry_out(routed);
            }
            Inside::Tun(dev) => {
                if dev.try_send(packet).is_err() {
                    DeviceStats::add(&self.stats.send_errors, 1);
                }
            }
        }
    }

    /// A packet from the TUN device.
    fn on_inside(&mut self, packet: &[u8], out: &mut [u8]) {
        let routed = self.router.route_inside(packet, out);
        if matches!(routed, Routed::Send { .. }) {
            DeviceStats::add(&self.stats.inside_tx, 1);
        }
        let _ = self.carry_out(routed);
    }

    fn on_pace(&mut self, out: &mut [u8]) {
        for _ in 0..INITIATIONS_PER_PACE {
            let Some((peer, endpoint)) = self.initiations.pop_front() else {
                break;
            };
            let routed = self.router.initiate(peer, endpoint, out);
            if matches!(routed, Routed::Send { .. }) {
                DeviceStats::add(&self.stats.takeover_initiations, 1);
            }
            let _ = self.carry_out(routed);
        }
    }

    fn on_timers(&mut self, now: Instant, out: &mut [u8]) {
        for n in 0..self.router.len() {
            if !self.withheld.is_empty()
                && self
                    .router
                    .indexes()
                    .get(n)
                    .is_some_and(|p| self.withheld.contains(p))
            {
                continue;
            }
            let routed = self.router.update_timers(n, out);
            let _ = self.carry_out(routed);
        }
        self.stats.sessions.store(
            self.router.active_sessions(now) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let (i0, w0) = self.epoch;
        let since = at.saturating_duration_since(i0);
        w0 + chrono::Duration::from_std(since).unwrap_or_default()
    }

    fn snapshot(&self, peer: PeerIndex, cause: SnapshotCause) -> Option<SessionSnapshot> {
        let p = self.router.peer(peer)?;
        Some(SessionSnapshot {
            peer,
            cause,
            endpoint: p.endpoint(),
            receiver_index: p.receiver_index(),
            last_handshake_at: p.last_handshake().map(|t| self.wall(t)),
            counters: p.counters(),
        })
    }

    fn emit(&self, event: DeviceEvent) {
        if self.events.try_send(event).is_err() {
            DeviceStats::add(&self.stats.events_dropped, 1);
        }
    }

    fn drain_events(&mut self, peer: PeerIndex) {
        let mut cause = None;
        // A peer keeps at most a handful of events; the bound is belt and braces.
        for _ in 0..32 {
            let Some(event) = self.router.peer_mut(peer).and_then(|p| p.poll_event()) else {
                break;
            };
            match event {
                PeerEvent::Handshake { receiver_index, .. } => {
                    cause = Some(SnapshotCause::Handshake);
                    self.data_reported.remove(&peer);
                    if let Some(group) = &self.group {
                        let endpoint = self.router.peer(peer).and_then(|p| p.endpoint());
                        if group
                            .try_send(GroupInput::Handshake {
                                peer,
                                endpoint,
                                receiver_index,
                            })
                            .is_err()
                        {
                            DeviceStats::add(&self.stats.events_dropped, 1);
                        }
                    }
                }
                PeerEvent::Endpoint(_) => {
                    cause = cause.or(Some(SnapshotCause::Endpoint));
                }
                PeerEvent::Rtt(rtt) => self.emit(DeviceEvent::Rtt { peer, rtt }),
            }
        }
        // A session held by another appliance is that appliance's to record: a row of ours
        // (epoch 0) could outrank the holder's and make us the holder without a claim.
        if let Some(cause) = cause
            && !self.withheld.contains(&peer)
            && let Some(s) = self.snapshot(peer, cause)
        {
            self.checkpointed.insert(peer, s.counters);
            self.emit(DeviceEvent::Session(s));
        }
    }

    fn on_checkpoint(&mut self) {
        for n in 0..self.router.len() {
            let Some(peer) = self.router.indexes().get(n).copied() else {
                break;
            };
            if self.withheld.contains(&peer) {
                continue;
            }
            let Some(counters) = self.router.peer(peer).map(|p| p.counters()) else {
                continue;
            };
            if self.checkpointed.get(&peer).copied().unwrap_or_default() == counters {
                continue;
            }
            if let Some(s) = self.snapshot(peer, SnapshotCause::Checkpoint) {
                self.checkpointed.insert(peer, counters);
                self.emit(DeviceEvent::Session(s));
            }
        }
    }
}

/// The partner of a move in progress for `peer`, if its window is open.
fn relay_via(
    table: &HashMap<PeerIndex, (SocketAddr, Instant)>,
    peer: PeerIndex,
) -> Option<SocketAddr> {
    table
        .get(&peer)
        .filter(|(_, until)| Instant::now() < *until)
        .map(|(via, _)| *via)
}

/// Errors a UDP socket may report for one datagram (an ICMP error for an earlier send, a
/// signal) that say nothing about the socket itself.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

async fn tun_recv(inside: &Inside, buf: &mut [u8]) -> io::Result<usize> {
    match inside {
        Inside::Tun(dev) => dev.recv(buf).await,
        Inside::Echo => std::future::pending().await,
    }
}
