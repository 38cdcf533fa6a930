//! The appliance's data plane shell: UDP sockets, the inside of the tunnel (the built-in
//! echo responder or a TUN device), boringtun's timers every [`TICK`], and live peer updates.
//!
//! [`DeviceConfig::threads`] workers, each a task with its own `SO_REUSEPORT` socket on the
//! listen address and its own buffers; the kernel spreads clients over the sockets by a hash
//! of their address and port, so throughput grows with cores when there are several clients
//! (one client's datagrams meet one worker). Every socket is bound to the same address, so a
//! reply leaves from the port the client sent to whichever socket sends it. The workers share
//! one [`Router`] (see there why sharing beats sharding) behind a `RwLock` that only peer
//! updates write. Worker 0 also owns what must happen once per device, not once per worker:
//! the command channel, boringtun's timers, checkpoints, paced takeover initiations and
//! reading the TUN device (one reader; any worker writes to it). With one thread this is the
//! single-socket device it always was (and the socket goes without `SO_REUSEPORT`).
//!
//! Nothing a worker does waits on anything but its socket, the TUN device and (worker 0) the
//! command channel. What the rest of the agent needs flows out without back-pressure:
//! counters through [`DeviceStats`] atomics, session snapshots and client reports through a
//! bounded channel with `try_send` (a full channel drops the event and counts it; the next
//! checkpoint snapshot repairs the recorder's view).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::TunnelError;
use super::packet;
use super::peer::{DropReason, PeerEvent, PeerSpec};
use super::router::{Routed, Router, receiver_peer, response_or_data_peer};
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

/// How long after a takeover handshake the new holder keeps showing the client where it is
/// (see [`Router::reassert`]): longer than the old holder takes to hear of the claim.
const REASSERT_WINDOW: Duration = Duration::from_secs(3);

/// Datagrams handled per wake-up before timers and commands get a turn.
const BATCH: usize = 64;

/// Largest datagram or inside packet handled.
const MAX_PACKET: usize = 65_535;

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
    /// Workers, each with its own socket (1 to [`super::MAX_THREADS`]; values outside are
    /// clamped).
    pub threads: usize,
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
    /// Takeover: every session's other appliance (the full set), where a handshake response
    /// or data packet this appliance cannot use is passed on.
    Partners(HashMap<PeerIndex, SocketAddr>),
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

/// Misdirected datagrams passed on per second, at most: a move needs about one round trip's
/// worth per session, and the bound keeps a flood of forged packets naming a real session
/// from doubling as traffic between the appliances.
const MISDIRECTED_PER_SECOND: u32 = 4096;

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
    /// The bound UDP address (every worker's socket is bound to it).
    pub local_addr: SocketAddr,
    /// The first worker's socket, for group heartbeats (sent from the takeover task; any
    /// worker's socket sends from the same address).
    pub socket: Arc<UdpSocket>,
}

/// Sessions moving between appliances, and the ones another appliance holds. Read on every
/// datagram, written on takeover commands and rare events, so a `RwLock`.
#[derive(Debug, Default)]
struct Moves {
    /// Sessions held by another appliance (no timers here).
    withheld: HashSet<PeerIndex>,
    /// Sessions moving here: old holder, until when.
    relay_new: HashMap<PeerIndex, (SocketAddr, Instant)>,
    /// Sessions moving away: new holder, until when.
    relay_old: HashMap<PeerIndex, (SocketAddr, Instant)>,
    /// Per withheld peer, the session whose first inside packet was reported
    /// ([`GroupInput::Data`]).
    data_reported: HashMap<PeerIndex, u32>,
    /// Per session, the other appliance of its shadow group.
    partners: HashMap<PeerIndex, SocketAddr>,
    /// Sessions taken over here after a crash (no make-before-break relay): when the takeover
    /// initiation went out, and until when the client is shown where it is
    /// ([`REASSERT_WINDOW`]).
    reassert: HashMap<PeerIndex, (Instant, Instant)>,
}

/// What every worker shares. Locks are held only for synchronous work, never across an
/// `.await`, and never one inside another except the order router → peer (inside
/// [`Router`]); `moves`, `group_key` and `checkpointed` are each taken alone.
struct Plane {
    /// The peers. Written only by worker 0 when a [`PeerCommand`] changes the peer set.
    router: RwLock<Router>,
    /// The appliance's own address inside the tunnel.
    own_ip: IpAddr,
    /// The inside (a TUN device is written by every worker, read by worker 0).
    inside: Inside,
    /// Session snapshots, round-trip times and client reports for the rest of the agent.
    events: mpsc::Sender<DeviceEvent>,
    /// Counters.
    stats: Arc<DeviceStats>,
    /// Wall clock at start, to turn `Instant`s into timestamps.
    epoch: (Instant, DateTime<Utc>),
    /// Where heartbeats and handshakes go when takeover runs.
    group: Option<mpsc::Sender<GroupInput>>,
    /// Relay key (set by the takeover task).
    group_key: RwLock<Option<crate::takeover::wire::GroupKey>>,
    /// Takeover state of sessions.
    moves: RwLock<Moves>,
    /// Counters last reported per peer, so checkpoints report only changes.
    checkpointed: Mutex<HashMap<PeerIndex, SessionCounters>>,
    /// Misdirected datagrams passed on in the current second, and when it began.
    misdirected: Mutex<(Instant, u32)>,
}

/// What only worker 0 owns: the command channel, the paced initiations and the periodic
/// work (timers, checkpoints), so that each runs exactly once per interval however many
/// workers there are.
struct Control {
    /// Peer updates.
    commands: mpsc::Receiver<PeerCommand>,
    /// Takeover initiations not sent yet.
    initiations: VecDeque<(PeerIndex, SocketAddr)>,
    /// How often changed session counters are reported.
    checkpoint_interval: Duration,
}

/// The data plane, ready to run.
pub struct Device {
    /// One socket per worker, all bound to the same address.
    sockets: Vec<Arc<UdpSocket>>,
    /// Shared state (wrapped in an `Arc` when the workers start).
    plane: Plane,
    /// Worker 0's own state.
    control: Control,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("workers", &self.sockets.len())
            .field("own_ip", &self.plane.own_ip)
            .field("inside", &self.plane.inside)
            .finish_non_exhaustive()
    }
}

/// Binds a UDP socket with large buffers (alone: no `SO_REUSEPORT`).
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, TunnelError> {
    bind_shared(addr, false)
}

/// Binds a nonblocking UDP socket with large buffers, with `SO_REUSEPORT` if `shared`.
fn bind_shared(addr: SocketAddr, shared: bool) -> Result<UdpSocket, TunnelError> {
    let bind = |source| TunnelError::Bind { addr, source };
    let socket = crate::reuseport::socket(addr, shared).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    UdpSocket::from_std(socket.into()).map_err(bind)
}

/// Binds `n` sockets to `addr` (with `SO_REUSEPORT` when more than one). Port 0 is resolved
/// by the first bind; the others join the port it got.
fn bind_workers(addr: SocketAddr, n: usize) -> Result<Vec<Arc<UdpSocket>>, TunnelError> {
    let shared = n > 1;
    let first = bind_shared(addr, shared)?;
    let local = first.local_addr()?;
    let mut sockets = vec![Arc::new(first)];
    for _ in 1..n {
        sockets.push(Arc::new(bind_shared(local, shared)?));
    }
    Ok(sockets)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Device {
    /// Binds the listener: `config.threads` sockets on `config.listen`. Returns the device
    /// (run it with [`Device::run`]), its handle, and the receiving end of its events.
    pub fn bind(
        config: DeviceConfig,
        key: SecretKey,
    ) -> Result<(Self, DeviceHandle, mpsc::Receiver<DeviceEvent>), TunnelError> {
        let threads = config.threads.clamp(1, super::MAX_THREADS);
        let sockets = bind_workers(config.listen, threads)?;
        let local_addr = sockets[0].local_addr()?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(16));
        let stats = Arc::new(DeviceStats::default());
        stats.workers.store(threads as u64, Ordering::Relaxed);
        let router = Router::new(key, config.handshakes_per_second);
        let handle = DeviceHandle {
            commands: cmd_tx,
            stats: Arc::clone(&stats),
            local_addr,
            socket: Arc::clone(&sockets[0]),
        };
        let device = Self {
            sockets,
            plane: Plane {
                router: RwLock::new(router),
                own_ip: config.own_ip,
                inside: config.inside,
                events: ev_tx,
                stats,
                epoch: (Instant::now(), Utc::now()),
                group: None,
                group_key: RwLock::new(None),
                moves: RwLock::new(Moves::default()),
                checkpointed: Mutex::new(HashMap::new()),
                misdirected: Mutex::new((Instant::now(), 0)),
            },
            control: Control {
                commands: cmd_rx,
                initiations: VecDeque::new(),
                checkpoint_interval: config.checkpoint_interval,
            },
        };
        Ok((device, handle, ev_rx))
    }

    /// Hands group heartbeats and completed handshakes to the takeover task. Without it,
    /// heartbeats are dropped as malformed.
    pub fn group_inputs(&mut self, capacity: usize) -> mpsc::Receiver<GroupInput> {
        let (tx, rx) = mpsc::channel(capacity.max(16));
        self.plane.group = Some(tx);
        rx
    }

    /// Runs every worker until `shutdown` is cancelled. Worker 0 runs in this task and owns
    /// the commands and the periodic work; the others are tasks of their own. Only a broken
    /// socket ends it early (and stops every worker).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TunnelError> {
        let plane = Arc::new(self.plane);
        let stop = shutdown.child_token();
        let mut others = tokio::task::JoinSet::new();
        for (id, socket) in self.sockets.iter().enumerate().skip(1) {
            let worker = Worker {
                id,
                socket: Arc::clone(socket),
                plane: Arc::clone(&plane),
            };
            let stop = stop.clone();
            others.spawn(async move {
                let r = worker.run(stop.clone(), None).await;
                // One broken socket stops the device, as it did with one socket.
                stop.cancel();
                r
            });
        }
        let first = Worker {
            id: 0,
            socket: Arc::clone(&self.sockets[0]),
            plane,
        };
        let mut result = first.run(stop.clone(), Some(self.control)).await;
        stop.cancel();
        while let Some(r) = others.join_next().await {
            match r {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        result
    }
}

/// One worker: its socket, and the shared [`Plane`].
struct Worker {
    /// Index, for per-worker counters.
    id: usize,
    /// Its socket (replies to what it receives leave through it).
    socket: Arc<UdpSocket>,
    /// What all workers share.
    plane: Arc<Plane>,
}

/// The next command, or never (workers without [`Control`]).
async fn next_command(control: &mut Option<Control>) -> Option<PeerCommand> {
    match control {
        Some(c) => c.commands.recv().await,
        None => std::future::pending().await,
    }
}

impl Worker {
    /// The loop. With `control` (worker 0) it also applies commands, runs the timers,
    /// checkpoints, paced initiations and reads the TUN device.
    async fn run(
        self,
        stop: CancellationToken,
        mut control: Option<Control>,
    ) -> Result<(), TunnelError> {
        let mut rx = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + 64];
        let mut reply = vec![0u8; MAX_PACKET + 64];
        let mut inside_buf = vec![0u8; MAX_PACKET];
        let leader = control.is_some();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpoint_every = control.as_ref().map_or(TICK, |c| c.checkpoint_interval);
        let mut checkpoint = tokio::time::interval(checkpoint_every);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let tun = leader && matches!(self.plane.inside, Inside::Tun(_));
        loop {
            let pacing = control.as_ref().is_some_and(|c| !c.initiations.is_empty());
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                cmd = next_command(&mut control), if leader => match (cmd, control.as_mut()) {
                    (Some(cmd), Some(c)) => self.apply(c, cmd),
                    // Every sender is gone: the agent is shutting down.
                    _ => break,
                },
                // Timers before the socket: a socket that stays readable (a flood) must not
                // starve keepalives, retransmits, the limiter's restart, checkpoints or
                // takeover initiations. Each is due at most once per interval and bounded, so
                // it cannot starve the socket in turn, which gets [`BATCH`] reads per turn.
                // Only worker 0 runs them: once per interval for the whole device.
                _ = tick.tick(), if leader => {
                    let router = read(&self.plane.router);
                    router.reset_rate_limiter();
                    self.on_timers(&router, Instant::now(), &mut out);
                }
                _ = checkpoint.tick(), if leader => self.on_checkpoint(),
                _ = pace.tick(), if pacing => {
                    if let Some(c) = control.as_mut() {
                        self.on_pace(&mut c.initiations, &mut out);
                    }
                }
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
                r = tun_recv(&self.plane.inside, &mut inside_buf), if tun => {
                    match r {
                        Ok(n) => {
                            self.on_inside(&inside_buf[..n], &mut out);
                            for _ in 1..BATCH {
                                let Inside::Tun(dev) = &self.plane.inside else { break };
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

    fn apply(&self, control: &mut Control, cmd: PeerCommand) {
        let plane = &*self.plane;
        match cmd {
            PeerCommand::Replace(specs) => {
                let keep: HashSet<PeerIndex> = specs.iter().map(|s| s.index).collect();
                let mut router = write(&plane.router);
                let stale: Vec<PeerIndex> = router
                    .indexes()
                    .iter()
                    .filter(|i| !keep.contains(i))
                    .copied()
                    .collect();
                for i in stale {
                    router.remove(i);
                    lock(&plane.checkpointed).remove(&i);
                }
                for s in specs {
                    router.upsert(s);
                }
            }
            PeerCommand::Upsert(s) => {
                write(&plane.router).upsert(s);
            }
            PeerCommand::Remove(i) => {
                write(&plane.router).remove(i);
                lock(&plane.checkpointed).remove(&i);
                let mut moves = write(&plane.moves);
                moves.withheld.remove(&i);
                moves.data_reported.remove(&i);
                moves.reassert.remove(&i);
            }
            PeerCommand::Hold { peer, held } => {
                let mut moves = write(&plane.moves);
                moves.data_reported.remove(&peer);
                if held {
                    moves.withheld.remove(&peer);
                    // Holding it now: nothing of ours goes out through another appliance.
                    moves.relay_old.remove(&peer);
                } else {
                    moves.relay_new.remove(&peer);
                    moves.reassert.remove(&peer);
                    moves.withheld.insert(peer);
                    control.initiations.retain(|(p, _)| *p != peer);
                }
            }
            PeerCommand::GroupKey(key) => *write(&plane.group_key) = Some(key),
            PeerCommand::Relay {
                peer,
                role,
                via,
                window,
            } => {
                let entry = (via, Instant::now() + window);
                let mut moves = write(&plane.moves);
                match role {
                    RelayRole::NewHolder => {
                        moves.relay_old.remove(&peer);
                        moves.relay_new.insert(peer, entry);
                    }
                    RelayRole::OldHolder => {
                        moves.relay_new.remove(&peer);
                        moves.relay_old.insert(peer, entry);
                    }
                }
            }
            PeerCommand::Partners(map) => write(&plane.moves).partners = map,
            PeerCommand::Initiate(list) => {
                let mut moves = write(&plane.moves);
                for (peer, endpoint) in list {
                    moves.withheld.remove(&peer);
                    moves.relay_old.remove(&peer);
                    control.initiations.push_back((peer, endpoint));
                }
            }
        }
        plane
            .stats
            .peers
            .store(read(&plane.router).len() as u64, Ordering::Relaxed);
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        let stats = &self.plane.stats;
        match self.socket.try_send_to(bytes, to) {
            Ok(n) => {
                DeviceStats::add(&stats.tx_datagrams, 1);
                DeviceStats::add(&stats.tx_bytes, n as u64);
            }
            Err(_) => DeviceStats::add(&stats.send_errors, 1),
        }
    }

    /// Carries out a routed action; returns the peer whose queue may need flushing.
    fn carry_out(&self, routed: Routed<'_>) -> Option<PeerIndex> {
        match routed {
            Routed::Send { to, bytes, peer } => {
                if bytes.first() == Some(&3) && peer.is_none() {
                    DeviceStats::add(&self.plane.stats.cookie_replies, 1);
                }
                let via = peer.and_then(|p| relay_via(&read(&self.plane.moves).relay_old, p));
                match via {
                    Some(via) => self.relay(via, RelayDirection::ToClient, to, bytes),
                    None => self.send(to, bytes),
                }
                peer
            }
            Routed::Drop(r) => {
                self.plane.stats.count_drop(r);
                None
            }
            Routed::Done | Routed::Inside { .. } => None,
        }
    }

    fn flush(&self, router: &Router, peer: PeerIndex, out: &mut [u8]) {
        // boringtun's queue holds at most 256 packets; the bound guards against surprises.
        for _ in 0..512 {
            match router.flush(peer, out) {
                Routed::Done => break,
                r => {
                    let _ = self.carry_out(r);
                }
            }
        }
    }

    fn on_datagram(&self, src: SocketAddr, datagram: &[u8], out: &mut [u8], reply: &mut [u8]) {
        let now = Instant::now();
        let stats = &self.plane.stats;
        DeviceStats::add(&stats.rx_datagrams, 1);
        DeviceStats::add(&stats.rx_bytes, datagram.len() as u64);
        stats.count_worker_rx(self.id);
        if crate::takeover::wire::is_heartbeat(datagram) {
            let input = GroupInput::Heartbeat {
                from: src,
                bytes: datagram[..datagram.len().min(crate::takeover::wire::MAX_LEN + 1)].to_vec(),
            };
            match &self.plane.group {
                Some(group) if group.try_send(input).is_ok() => {}
                Some(_) => DeviceStats::add(&stats.events_dropped, 1),
                None => stats.count_drop(DropReason::Malformed),
            }
            return;
        }
        let router = read(&self.plane.router);
        if crate::takeover::wire::is_relay(datagram) {
            self.on_relay(&router, src, datagram, out, reply);
            return;
        }
        self.on_wireguard(&router, now, src, datagram, out, reply, false);
    }

    /// A WireGuard datagram (from the client, or `relayed` from the new holder).
    #[allow(clippy::too_many_arguments)]
    fn on_wireguard(
        &self,
        router: &Router,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut [u8],
        relayed: bool,
    ) {
        let routed = router.handle_datagram(now, src, datagram, out);
        // A data packet of a session moving here that we cannot decrypt is still on the old
        // holder's session: hand it over.
        if let Routed::Drop(_) = routed
            && datagram.first() == Some(&4)
            && let Some(peer) = receiver_peer(datagram, 4)
            && let Some(via) = relay_via(&read(&self.plane.moves).relay_new, peer)
        {
            self.relay(via, RelayDirection::FromClient, src, datagram);
            return;
        }
        // wireguard-go sends to the address of the last packet it authenticated, so while a
        // session moves, what the client sends can reach the wrong appliance of the pair: the
        // response to the other's takeover initiation (our data landed between initiation and
        // response), or data on the other's new session after our last direct reply. Passed
        // on, the other answers the client directly and its endpoint follows; dropped, the
        // move waits for a retry (5 s) or, for data, forever: nobody else sends to the client.
        if !relayed
            && let Routed::Drop(_) = routed
            && let Some(via) = self.misdirected_to(datagram)
        {
            self.relay(via, RelayDirection::Misdirected, src, datagram);
            return;
        }
        // Reported after the events: the first data packet of a session may also be what
        // completes its handshake (a client with queued packets sends no keepalive first),
        // and the takeover task must hear of the handshake before the data.
        let mut data_on_withheld = None;
        let touched = match routed {
            Routed::Inside { peer, packet } => {
                DeviceStats::add(&self.plane.stats.inside_rx, 1);
                if !relayed && read(&self.plane.moves).withheld.contains(&peer) {
                    data_on_withheld = Some(peer);
                }
                self.on_peer_packet(router, peer, packet, reply);
                Some(peer)
            }
            Routed::Done => None,
            other => {
                let flush = self.carry_out(other);
                if let Some(p) = flush {
                    self.flush(router, p, out);
                }
                flush
            }
        };
        // Events come from handshakes and roaming; the peer may not be named in the result
        // (a keepalive confirming a session returns Done), so look it up by receiver index.
        let peer = touched.or_else(|| receiver_peer(datagram, 4));
        if let Some(p) = peer {
            self.drain_events(router, p);
        }
        if let Some(p) = data_on_withheld {
            self.report_data(p, datagram);
        }
    }

    /// Where a handshake response or data packet we could not use belongs: the other
    /// appliance of its pair, the only other holder of the client's sessions (its initiation
    /// asked for the response; the data is on its session). Not waiting until we hear that
    /// it holds the session: the client can switch before its claim reaches us.
    fn misdirected_to(&self, datagram: &[u8]) -> Option<SocketAddr> {
        let peer = response_or_data_peer(datagram)?;
        let via = read(&self.plane.moves).partners.get(&peer).copied()?;
        let mut budget = lock(&self.plane.misdirected);
        let now = Instant::now();
        if now.duration_since(budget.0) >= Duration::from_secs(1) {
            *budget = (now, 0);
        }
        if budget.1 >= MISDIRECTED_PER_SECOND {
            return None;
        }
        budget.1 += 1;
        Some(via)
    }

    /// Tells the takeover task of the first inside packet on a session of a withheld peer:
    /// on a standby session that is the client moving here.
    fn report_data(&self, peer: PeerIndex, datagram: &[u8]) {
        let Some(receiver_index) = datagram
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
        else {
            return;
        };
        {
            let mut moves = write(&self.plane.moves);
            if moves.data_reported.get(&peer) == Some(&receiver_index) {
                return;
            }
            moves.data_reported.insert(peer, receiver_index);
        }
        if let Some(group) = &self.plane.group
            && group
                .try_send(GroupInput::Data {
                    peer,
                    receiver_index,
                })
                .is_err()
        {
            // Lost: the next session's first packet is reported again.
            write(&self.plane.moves).data_reported.remove(&peer);
            DeviceStats::add(&self.plane.stats.events_dropped, 1);
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
        let mut msg = Vec::with_capacity(datagram.len() + 64);
        {
            let key = read(&self.plane.group_key);
            let Some(key) = key.as_ref() else {
                return;
            };
            Relay {
                direction,
                client,
                datagram,
            }
            .encode(key, &mut msg);
        }
        DeviceStats::add(&self.plane.stats.relayed, 1);
        self.send(via, &msg);
    }

    /// A relay message from a group appliance.
    fn on_relay(
        &self,
        router: &Router,
        src: SocketAddr,
        msg: &[u8],
        out: &mut [u8],
        reply: &mut [u8],
    ) {
        let stats = &self.plane.stats;
        let decoded = {
            let key = read(&self.plane.group_key);
            let Some(key) = key.as_ref() else {
                stats.count_relay_rejection(RelayRejection::NoKey);
                return;
            };
            match Relay::decode(key, msg) {
                Ok(r) => (r.direction, r.client, r.datagram.to_vec()),
                Err(crate::takeover::wire::WireError::BadMac) => {
                    stats.count_relay_rejection(RelayRejection::BadMac);
                    return;
                }
                Err(_) => {
                    stats.count_relay_rejection(RelayRejection::Malformed);
                    return;
                }
            }
        };
        let (direction, client, datagram) = decoded;
        let now = Instant::now();
        match direction {
            // Ours, sent to the other appliance: handled as if it came here.
            RelayDirection::Misdirected => match response_or_data_peer(&datagram) {
                Some(peer)
                    if router.contains(peer)
                        && read(&self.plane.moves).partners.get(&peer) == Some(&src) =>
                {
                    self.on_wireguard(router, now, client, &datagram, out, reply, true);
                }
                Some(_) => stats.count_relay_rejection(RelayRejection::NotPartner),
                None => stats.count_relay_rejection(RelayRejection::UnknownSession),
            },
            // We are the old holder: the client's datagram, as if it came from the client.
            // The relaying appliance holds the session now (its claim may not have reached
            // us yet): our replies go back through it, or the client would roam back here.
            RelayDirection::FromClient => {
                if let Some(peer) = receiver_peer(&datagram, 4)
                    && router.contains(peer)
                {
                    {
                        let mut moves = write(&self.plane.moves);
                        let until = moves
                            .relay_old
                            .get(&peer)
                            .map_or(now + RELAY_IMPLIED, |(_, u)| (*u).max(now + RELAY_IMPLIED));
                        moves.relay_new.remove(&peer);
                        moves.relay_old.insert(peer, (src, until));
                    }
                    self.on_wireguard(router, now, client, &datagram, out, reply, true);
                } else {
                    stats.count_relay_rejection(RelayRejection::UnknownSession);
                }
            }
            // We are the new holder: the old holder's reply, sent from our address.
            RelayDirection::ToClient
                if from_partner(&read(&self.plane.moves).relay_new, src, now) =>
            {
                self.send(client, &datagram);
            }
            _ => stats.count_relay_rejection(RelayRejection::NotPartner),
        }
    }

    /// A decrypted packet from a peer.
    fn on_peer_packet(
        &self,
        router: &Router,
        peer: PeerIndex,
        packet: &mut [u8],
        reply: &mut [u8],
    ) {
        let plane = &*self.plane;
        let own = plane.own_ip;
        if let Some(udp) = packet::parse_udp(packet)
            && udp.dst.ip == own
            && udp.dst.port == REPORT_PORT
        {
            if udp.payload.len() <= MAX_REPORT {
                let event = DeviceEvent::Report {
                    peer,
                    payload: udp.payload.to_vec(),
                };
                if plane.events.try_send(event).is_err() {
                    DeviceStats::add(&plane.stats.events_dropped, 1);
                }
            } else {
                plane.stats.count_drop(DropReason::Malformed);
            }
            return;
        }
        match &plane.inside {
            Inside::Echo => {
                let Some(n) = packet::echo_in_place(packet, own) else {
                    plane.stats.count_drop(DropReason::NoRoute);
                    return;
                };
                let Some(ip) = packet::parse_ip(&packet[..n]) else {
                    return;
                };
                let routed = router.send_to_peer_ip(ip.dst, &packet[..n], reply);
                if matches!(routed, Routed::Send { .. }) {
                    DeviceStats::add(&plane.stats.inside_tx, 1);
                }
                let _ = self.carry_out(routed);
            }
            Inside::Tun(dev) => {
                if dev.try_send(packet).is_err() {
                    DeviceStats::add(&plane.stats.send_errors, 1);
                }
            }
        }
    }

    /// A packet from the TUN device.
    fn on_inside(&self, packet: &[u8], out: &mut [u8]) {
        let routed = read(&self.plane.router).route_inside(packet, out);
        if matches!(routed, Routed::Send { .. }) {
            DeviceStats::add(&self.plane.stats.inside_tx, 1);
        }
        let _ = self.carry_out(routed);
    }

    fn on_pace(&self, initiations: &mut VecDeque<(PeerIndex, SocketAddr)>, out: &mut [u8]) {
        let router = read(&self.plane.router);
        for _ in 0..INITIATIONS_PER_PACE {
            let Some((peer, endpoint)) = initiations.pop_front() else {
                break;
            };
            let routed = router.initiate(peer, endpoint, out);
            if matches!(routed, Routed::Send { .. }) {
                DeviceStats::add(&self.plane.stats.takeover_initiations, 1);
                // A crash takeover: nobody relays what the client sends the old holder. (A
                // make-before-break move has the old holder relay for a while instead.)
                let now = Instant::now();
                let mut moves = write(&self.plane.moves);
                if !moves.relay_new.contains_key(&peer) {
                    moves.reassert.insert(peer, (now, now + REASSERT_WINDOW));
                }
            }
            let _ = self.carry_out(routed);
        }
    }

    /// Shows the clients of recent takeovers where their sessions are (see
    /// [`Router::reassert`]).
    fn reassert(&self, router: &Router, now: Instant, out: &mut [u8]) {
        let due: Vec<(PeerIndex, Instant)> = {
            let mut guard = write(&self.plane.moves);
            let moves = &mut *guard;
            if moves.reassert.is_empty() {
                return;
            }
            moves.reassert.retain(|_, (_, until)| *until > now);
            moves
                .reassert
                .iter()
                .filter(|(p, _)| !moves.withheld.contains(p))
                .map(|(p, (since, _))| (*p, *since))
                .collect()
        };
        for (peer, since) in due {
            let routed = router.reassert(peer, since, now, out);
            if let Routed::Send { bytes, .. } = &routed {
                if bytes.first() == Some(&1) {
                    DeviceStats::add(&self.plane.stats.takeover_initiations, 1);
                    if let Some(entry) = write(&self.plane.moves).reassert.get_mut(&peer) {
                        entry.0 = now;
                    }
                } else {
                    DeviceStats::add(&self.plane.stats.takeover_keepalives, 1);
                }
            }
            let _ = self.carry_out(routed);
        }
    }

    /// boringtun's timers of every peer, once per [`TICK`] (worker 0 only).
    fn on_timers(&self, router: &Router, now: Instant, out: &mut [u8]) {
        self.reassert(router, now, out);
        // A copy (almost always empty): `carry_out` reads `moves` too.
        let withheld = read(&self.plane.moves).withheld.clone();
        for n in 0..router.len() {
            if !withheld.is_empty()
                && router
                    .indexes()
                    .get(n)
                    .is_some_and(|p| withheld.contains(p))
            {
                continue;
            }
            let routed = router.update_timers(n, out);
            let _ = self.carry_out(routed);
        }
        self.plane
            .stats
            .sessions
            .store(router.active_sessions(now) as u64, Ordering::Relaxed);
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let (i0, w0) = self.plane.epoch;
        let since = at.saturating_duration_since(i0);
        w0 + chrono::Duration::from_std(since).unwrap_or_default()
    }

    fn snapshot(
        &self,
        router: &Router,
        peer: PeerIndex,
        cause: SnapshotCause,
    ) -> Option<SessionSnapshot> {
        let p = router.peer(peer)?;
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
        if self.plane.events.try_send(event).is_err() {
            DeviceStats::add(&self.plane.stats.events_dropped, 1);
        }
    }

    fn drain_events(&self, router: &Router, peer: PeerIndex) {
        let mut cause = None;
        // A peer keeps at most a handful of events; the bound is belt and braces.
        for _ in 0..32 {
            let Some(event) = router.peer(peer).and_then(|mut p| p.poll_event()) else {
                break;
            };
            match event {
                PeerEvent::Handshake { receiver_index, .. } => {
                    cause = Some(SnapshotCause::Handshake);
                    write(&self.plane.moves).data_reported.remove(&peer);
                    if let Some(group) = &self.plane.group {
                        let endpoint = router.peer(peer).and_then(|p| p.endpoint());
                        if group
                            .try_send(GroupInput::Handshake {
                                peer,
                                endpoint,
                                receiver_index,
                            })
                            .is_err()
                        {
                            DeviceStats::add(&self.plane.stats.events_dropped, 1);
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
            && !read(&self.plane.moves).withheld.contains(&peer)
            && let Some(s) = self.snapshot(router, peer, cause)
        {
            lock(&self.plane.checkpointed).insert(peer, s.counters);
            self.emit(DeviceEvent::Session(s));
        }
    }

    /// Changed counters of every held session (worker 0 only).
    fn on_checkpoint(&self) {
        let router = read(&self.plane.router);
        let withheld = read(&self.plane.moves).withheld.clone();
        for n in 0..router.len() {
            let Some(peer) = router.indexes().get(n).copied() else {
                break;
            };
            if withheld.contains(&peer) {
                continue;
            }
            let Some(counters) = router.peer(peer).map(|p| p.counters()) else {
                continue;
            };
            if lock(&self.plane.checkpointed)
                .get(&peer)
                .copied()
                .unwrap_or_default()
                == counters
            {
                continue;
            }
            if let Some(s) = self.snapshot(&router, peer, SnapshotCause::Checkpoint) {
                lock(&self.plane.checkpointed).insert(peer, counters);
                self.emit(DeviceEvent::Session(s));
            }
        }
    }
}

/// Whether `src` is the partner of a move into this appliance whose window is open.
fn from_partner(
    table: &HashMap<PeerIndex, (SocketAddr, Instant)>,
    src: SocketAddr,
    now: Instant,
) -> bool {
    table
        .values()
        .any(|(via, until)| via.ip() == src.ip() && now < *until)
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
