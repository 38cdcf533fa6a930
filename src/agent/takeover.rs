//! The takeover shell: heartbeats to and from the shadow group, the [`Coordinator`]'s actions
//! carried out on the data plane and in the database.
//!
//! Three tasks, so that detection and takeover never wait on the database:
//! - the main loop: sends heartbeats, judges the ones that arrive, asks the coordinator, and
//!   sends its orders to the data plane at once;
//! - the loader: reads the group from the database (at start, on notifications, every
//!   [`RELOAD`]) and hands the result to the main loop;
//! - the writer: records claims and failure events, retrying while the database is away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{ApplianceId, ClientId, PeerIndex, RegionId};
use crate::store::notify::{ChangedTable, Follower, Heard};
use crate::store::takeover::{self as store, ClaimWrite, Group};
use crate::takeover::liveness::{Arrival, Liveness, Timing, Verdict};
use crate::takeover::wire::{GroupKey, Heartbeat, MAX_LEN};
use crate::takeover::{Action, ClaimReason, Coordinator, Failback, PeerLoss, SessionView};
use crate::tunnel::device::{DeviceHandle, GroupInput, PeerCommand, RelayRole};

/// Full re-read of the group (notifications are hints and may be lost).
pub const RELOAD: Duration = Duration::from_secs(10);
/// Pause after a failed database call.
const RETRY: Duration = Duration::from_secs(1);
/// How long the two appliances of a make-before-break move relay the session's stray
/// datagrams (the client needs about one round trip to switch sessions).
const RELAY_WINDOW: Duration = Duration::from_secs(3);
/// Decisions arrive in batches; one reload per this much time at most.
const DECISION_DEBOUNCE: Duration = Duration::from_millis(20);

/// Settings of the takeover task.
#[derive(Debug, Clone)]
pub struct TakeoverSettings {
    /// Heartbeat MAC key.
    pub key: GroupKey,
    /// Detection timing.
    pub timing: Timing,
    /// Failback policy.
    pub failback: Failback,
}

/// Counters of the takeover task, for `/metrics`, logs and tests. Every heartbeat that arrives
/// is counted exactly once: accepted, or rejected for one reason.
#[derive(Debug, Default)]
pub struct TakeoverStats {
    /// Heartbeats sent.
    pub heartbeats_sent: AtomicU64,
    /// Valid heartbeats received.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats refused: wrong MAC.
    pub bad_mac: AtomicU64,
    /// Heartbeats refused: malformed.
    pub malformed: AtomicU64,
    /// Heartbeats refused: `(boot, seq)` not newer than one already accepted (a replay).
    pub replayed: AtomicU64,
    /// Heartbeats refused: sent too long ago or in the future by our clock.
    pub stale: AtomicU64,
    /// Heartbeats refused: from an appliance outside the group, or from an address that is
    /// not the claimed sender's.
    pub unknown_sender: AtomicU64,
    /// Group peers declared dead.
    pub peers_declared_dead: AtomicU64,
    /// Dead group peers heard from again.
    pub peers_revived: AtomicU64,
    /// Group peers heard from after a restart they made before counting as dead (their
    /// sessions are taken over as after a death).
    pub peers_restarted: AtomicU64,
    /// Sessions claimed, by reason ([`ClaimReason::ALL`] order).
    claims: [AtomicU64; ClaimReason::ALL.len()],
    /// Claims stored in the database.
    pub claims_written: AtomicU64,
    /// Batches of claims the database refused or could not take (retried).
    pub claim_write_failures: AtomicU64,
    /// Sessions this appliance stood down from.
    pub stood_down: AtomicU64,
    /// Sessions held here now.
    pub held: AtomicU64,
    /// Handshakes that set up a standby session (another appliance holds the session).
    pub standby_handshakes: AtomicU64,
}

impl TakeoverStats {
    fn count_claim(&self, reason: ClaimReason) {
        if let Some(c) = ClaimReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.claims.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sessions claimed for `reason`.
    pub fn claims(&self, reason: ClaimReason) -> u64 {
        ClaimReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.claims.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Sessions claimed, all reasons.
    pub fn claims_total(&self) -> u64 {
        ClaimReason::ALL.iter().map(|r| self.claims(*r)).sum()
    }
}

/// The takeover task's counters, for the agent's `/metrics` (the data plane's share, such as
/// initiations sent and relay messages rejected, is in [`crate::tunnel::stats::DeviceStats`]).
impl crate::metrics::Collector for TakeoverStats {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.counter(
            "shadowsteer_takeover_heartbeats_sent",
            "Heartbeats sent to the appliances of the shadow group.",
            get(&self.heartbeats_sent),
        )?;
        out.counter(
            "shadowsteer_takeover_heartbeats_received",
            "Valid heartbeats received from the shadow group.",
            get(&self.heartbeats_ok),
        )?;
        out.counters(
            "shadowsteer_takeover_heartbeats_rejected",
            "Heartbeats ignored, by reason: bad_mac (forged or another key), replayed (sequence not newer), stale (send time off by more than 2 s), unknown_sender (not in the group, or not from its address), malformed.",
            "reason",
            [
                ("bad_mac", get(&self.bad_mac)),
                ("replayed", get(&self.replayed)),
                ("stale", get(&self.stale)),
                ("unknown_sender", get(&self.unknown_sender)),
                ("malformed", get(&self.malformed)),
            ],
        )?;
        out.counter(
            "shadowsteer_takeover_peers_declared_dead",
            "Group peers declared dead after missing their heartbeats.",
            get(&self.peers_declared_dead),
        )?;
        out.counter(
            "shadowsteer_takeover_peers_revived",
            "Dead group peers heard from again.",
            get(&self.peers_revived),
        )?;
        out.counter(
            "shadowsteer_takeover_peers_restarted",
            "Group peers that restarted before they counted as dead; their sessions are taken over.",
            get(&self.peers_restarted),
        )?;
        out.counters(
            "shadowsteer_takeover_claims",
            "Sessions claimed by this appliance, by reason.",
            "reason",
            ClaimReason::ALL.map(|r| (r.as_str(), self.claims(r))),
        )?;
        out.counters(
            "shadowsteer_takeover_claim_writes",
            "Claims recorded in the database (written), and batches that failed and are retried (failed).",
            "outcome",
            [
                ("written", get(&self.claims_written)),
                ("failed", get(&self.claim_write_failures)),
            ],
        )?;
        out.counter(
            "shadowsteer_takeover_stood_down",
            "Sessions this appliance stood down from (another holds a higher claim).",
            get(&self.stood_down),
        )?;
        out.gauge(
            "shadowsteer_takeover_sessions_held",
            "Shadowed sessions this appliance holds now.",
            get(&self.held),
        )
    }
}

enum Loaded {
    Group(Group),
    /// Changed sessions: the clients asked for, and what the database holds for them now
    /// (a client without a view is no longer one of ours).
    Sessions(Vec<ClientId>, Vec<SessionView>),
}

/// Changed sessions collected into one read: at most this many...
const SESSION_BATCH: usize = 1000;
/// ...or for at most this long after the first notification.
const SESSION_BATCH_WAIT: Duration = Duration::from_millis(10);

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(at: Instant) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
}

enum Write {
    Claims(Vec<ClaimWrite>),
    PeerDown(ApplianceId, chrono::DateTime<Utc>, PeerLoss),
    PeerUp(ApplianceId, chrono::DateTime<Utc>),
}

/// Runs the takeover task until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: TakeoverSettings,
    pool: PgPool,
    listen_url: String,
    appliance: ApplianceId,
    device: DeviceHandle,
    mut inputs: mpsc::Receiver<GroupInput>,
    stats: Arc<TakeoverStats>,
    shutdown: CancellationToken,
) {
    let (loaded_tx, mut loaded) = mpsc::channel(64);
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    tokio::spawn(loader(
        pool.clone(),
        listen_url,
        appliance.clone(),
        loaded_tx,
        shutdown.clone(),
    ));
    let mut shell = Shell {
        settings: settings.clone(),
        appliance: appliance.clone(),
        coordinator: None,
        liveness: Liveness::new(settings.timing, Instant::now()),
        addrs: HashMap::new(),
        partners: HashMap::new(),
        device,
        writes: write_tx,
        stats: Arc::clone(&stats),
        boot: Utc::now().timestamp_millis().max(0) as u64,
        seq: 0,
        region: None,
    };
    tokio::spawn(writer(
        pool,
        appliance,
        write_rx,
        Arc::clone(&stats),
        shutdown.clone(),
    ));
    let _ = shell
        .device
        .commands
        .send(PeerCommand::GroupKey(settings.key.clone()))
        .await;
    let mut beat = tokio::time::interval(settings.timing.interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = beat.tick() => {
                shell.send_heartbeats();
                shell.check_liveness().await;
            }
            Some(input) = inputs.recv() => shell.on_input(input).await,
            Some(l) = loaded.recv() => shell.on_loaded(l).await,
        }
    }
}

struct Shell {
    settings: TakeoverSettings,
    appliance: ApplianceId,
    coordinator: Option<Coordinator>,
    liveness: Liveness,
    addrs: HashMap<ApplianceId, SocketAddr>,
    device: DeviceHandle,
    writes: mpsc::UnboundedSender<Write>,
    stats: Arc<TakeoverStats>,
    boot: u64,
    seq: u64,
    region: Option<RegionId>,
    /// The last [`PeerCommand::Partners`] sent.
    partners: HashMap<PeerIndex, SocketAddr>,
}

impl Shell {
    fn send_heartbeats(&mut self) {
        if self.addrs.is_empty() {
            return;
        }
        self.seq += 1;
        let hb = Heartbeat {
            from: self.appliance.clone(),
            boot: self.boot,
            seq: self.seq,
            sent_unix_ms: Utc::now().timestamp_millis().max(0) as u64,
        };
        let mut buf = [0u8; MAX_LEN];
        let n = hb.encode(&self.settings.key, &mut buf);
        for addr in self.addrs.values() {
            if self.device.socket.try_send_to(&buf[..n], *addr).is_ok() {
                self.stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn check_liveness(&mut self) {
        if self.coordinator.is_none() {
            return;
        }
        let dead = self.liveness.poll(Instant::now());
        for peer in dead {
            self.stats
                .peers_declared_dead
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %peer,
                after_ms = self.settings.timing.dead_after().as_millis() as u64,
                "group peer stopped sending heartbeats; taking over its sessions"
            );
            let last_heard = self.liveness.last_heard(&peer).map(wall_clock);
            let actions = match self.coordinator.as_mut() {
                Some(c) => c.peer_dead(&peer, Utc::now(), last_heard),
                None => Vec::new(),
            };
            self.carry_out(actions).await;
        }
    }

    async fn on_input(&mut self, input: GroupInput) {
        match input {
            GroupInput::Heartbeat { from, bytes } => {
                let hb = match Heartbeat::decode(&self.settings.key, &bytes) {
                    Ok(hb) => hb,
                    Err(crate::takeover::wire::WireError::BadMac) => {
                        self.stats.bad_mac.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                // The MAC proves the sender holds the service key; the address must still be
                // the one the inventory gives for that appliance.
                if self.addrs.get(&hb.from).is_none_or(|a| a.ip() != from.ip()) {
                    self.stats.unknown_sender.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let now_ms = Utc::now().timestamp_millis().max(0) as u64;
                match self.liveness.on_heartbeat(&hb, Instant::now(), now_ms) {
                    Verdict::Accepted(arrival) => {
                        self.stats.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                        let actions = match arrival {
                            Arrival::Steady => None,
                            Arrival::Restarted { last_heard } => {
                                self.stats.peers_restarted.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    peer = %hb.from,
                                    "group peer restarted before it counted as dead; taking over its sessions"
                                );
                                let last_heard = wall_clock(last_heard);
                                self.coordinator
                                    .as_mut()
                                    .map(|c| c.peer_restarted(&hb.from, Utc::now(), last_heard))
                            }
                            Arrival::Revived => {
                                self.stats.peers_revived.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(peer = %hb.from, "group peer sends heartbeats again");
                                self.coordinator.as_mut().map(|c| c.peer_alive(&hb.from))
                            }
                        };
                        self.carry_out(actions.unwrap_or_default()).await;
                    }
                    Verdict::Replayed => {
                        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Stale => {
                        self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Unknown => {
                        self.stats.unknown_sender.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            GroupInput::Handshake {
                peer,
                endpoint,
                receiver_index,
            } => {
                if let Some(c) = self.coordinator.as_mut() {
                    if let Some(e) = endpoint {
                        c.endpoint_seen(peer, e);
                    }
                    if c.handshake(peer, receiver_index) {
                        self.stats
                            .standby_handshakes
                            .fetch_add(1, Ordering::Relaxed);
                        let client = c.session(peer).map(|s| s.client.to_string());
                        tracing::info!(
                            client = client.as_deref().unwrap_or("?"),
                            holder = c.holder(peer).map(|h| h.as_str()).unwrap_or("?"),
                            "standby session: the client set up a session here; the holder keeps it"
                        );
                    }
                }
            }
            GroupInput::Data {
                peer,
                receiver_index,
            } => {
                let actions = match self.coordinator.as_mut() {
                    Some(c) => c.client_data(peer, receiver_index, Utc::now()),
                    None => Vec::new(),
                };
                self.carry_out(actions).await;
            }
        }
    }

    async fn on_loaded(&mut self, loaded: Loaded) {
        let now = Utc::now();
        let actions = match loaded {
            Loaded::Group(group) => {
                self.addrs = group.peers.iter().cloned().collect();
                self.liveness
                    .set_peers(group.peers.iter().map(|(id, _)| id.clone()));
                if self.region.as_ref() != Some(&group.region) {
                    self.region = Some(group.region.clone());
                    self.coordinator = Some(Coordinator::new(
                        self.appliance.clone(),
                        group.region.clone(),
                        self.settings.failback,
                    ));
                }
                match self.coordinator.as_mut() {
                    Some(c) => c.load(group.sessions, now),
                    None => Vec::new(),
                }
            }
            Loaded::Sessions(asked, views) => match self.coordinator.as_mut() {
                Some(c) => {
                    let mut out = Vec::new();
                    for client in asked {
                        if views.iter().any(|v| v.client == client) {
                            continue;
                        }
                        if let Some(p) = c.peers_of_client(&client) {
                            out.extend(c.update(p, None, now));
                        }
                    }
                    for v in views {
                        out.extend(c.update(v.peer, Some(v), now));
                    }
                    out
                }
                None => Vec::new(),
            },
        };
        self.carry_out(actions).await;
        self.tell_partners().await;
    }

    /// Tells the data plane each session's other appliance, when that changed.
    async fn tell_partners(&mut self) {
        let Some(c) = &self.coordinator else {
            return;
        };
        let partners: HashMap<PeerIndex, SocketAddr> = c
            .partners()
            .filter_map(|(peer, other)| Some((peer, *self.addrs.get(other)?)))
            .collect();
        if partners != self.partners {
            self.partners = partners.clone();
            self.command(PeerCommand::Partners(partners)).await;
        }
    }

    async fn carry_out(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let mut initiate = Vec::new();
        let mut claims = Vec::new();
        for a in actions {
            match a {
                Action::Hold { peer, held } => {
                    if held {
                        self.stats.held.fetch_add(1, Ordering::Relaxed);
                    } else if self.stats.held.load(Ordering::Relaxed) > 0 {
                        self.stats.held.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.command(PeerCommand::Hold { peer, held }).await;
                }
                Action::Initiate { peer, endpoint } => initiate.push((peer, endpoint)),
                Action::Claim {
                    client,
                    peer,
                    epoch,
                    reason,
                } => {
                    self.stats.count_claim(reason);
                    let view = self.coordinator.as_ref().and_then(|c| c.session(peer));
                    tracing::info!(client = %client, epoch = epoch.get(), reason = reason.as_str(), "session claimed");
                    claims.push(ClaimWrite {
                        client,
                        peer,
                        epoch,
                        reason,
                        endpoint: view.and_then(|v| v.endpoint),
                        primary: view.is_some_and(|v| v.primary == self.appliance),
                    });
                }
                Action::Relay {
                    peer,
                    new_holder,
                    partner,
                } => {
                    if let Some(via) = self.addrs.get(&partner).copied() {
                        let role = if new_holder {
                            RelayRole::NewHolder
                        } else {
                            RelayRole::OldHolder
                        };
                        self.command(PeerCommand::Relay {
                            peer,
                            role,
                            via,
                            window: RELAY_WINDOW,
                        })
                        .await;
                    }
                }
                Action::PeerDown {
                    appliance,
                    since,
                    loss,
                } => {
                    let _ = self.writes.send(Write::PeerDown(appliance, since, loss));
                }
                Action::PeerUp(a) => {
                    let _ = self.writes.send(Write::PeerUp(a, Utc::now()));
                }
            }
        }
        if !initiate.is_empty() {
            self.command(PeerCommand::Initiate(initiate)).await;
        }
        if let Some(c) = &self.coordinator {
            let now = c.stats().stood_down;
            let before = self.stats.stood_down.swap(now, Ordering::Relaxed);
            if now > before {
                tracing::info!(
                    sessions = now - before,
                    "stood down: another appliance holds a higher claim"
                );
            }
        }
        if !claims.is_empty() {
            let _ = self.writes.send(Write::Claims(claims));
        }
    }

    async fn command(&self, cmd: PeerCommand) {
        // The data plane drains its commands every few microseconds; a full channel only
        // delays this task, never the data plane.
        let _ = self.device.commands.send(cmd).await;
    }
}

async fn loader(
    pool: PgPool,
    listen_url: String,
    appliance: ApplianceId,
    out: mpsc::Sender<Loaded>,
    shutdown: CancellationToken,
) {
    let mut follow = Follower::new(listen_url, "takeover", RELOAD);
    loop {
        follow.connect().await;
        if follow.is_stale() {
            match store::load_group(&pool, &appliance).await {
                Ok(Some(group)) => {
                    follow.refreshed();
                    if out.send(Loaded::Group(group)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => follow.report(format!("appliance {appliance} is not in the inventory")),
                Err(e) => follow.report(e),
            }
        }
        let change = match follow.next(&shutdown).await {
            Heard::Shutdown => return,
            Heard::Nothing => continue,
            Heard::Change(c) => c,
        };
        match change.table {
            ChangedTable::SessionState => {
                let mut clients: Vec<ClientId> = ClientId::new(change.key).into_iter().collect();
                // A takeover or a thousand new sessions notify in bursts: read them together.
                let until = tokio::time::Instant::now() + SESSION_BATCH_WAIT;
                while clients.len() < SESSION_BATCH {
                    match follow.next_until(until).await {
                        Some(c) if c.table == ChangedTable::SessionState => {
                            clients.extend(ClientId::new(c.key).ok());
                        }
                        Some(_) => follow.mark_stale(),
                        None => break,
                    }
                }
                clients.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                clients.dedup();
                match store::load_sessions(&pool, &appliance, &clients).await {
                    Ok(views) => {
                        if out.send(Loaded::Sessions(clients, views)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        follow.report(e);
                        follow.mark_stale();
                    }
                }
            }
            ChangedTable::SteeringDecisions => {
                // A batch of decisions commits as one notification per region; wait a moment
                // for the other regions' batches, then re-read.
                tokio::time::sleep(DECISION_DEBOUNCE).await;
                follow.mark_stale();
            }
            ChangedTable::Clients | ChangedTable::Appliances => follow.mark_stale(),
            _ => {}
        }
    }
}

async fn writer(
    pool: PgPool,
    appliance: ApplianceId,
    mut rx: mpsc::UnboundedReceiver<Write>,
    stats: Arc<TakeoverStats>,
    shutdown: CancellationToken,
) {
    let mut region: Option<RegionId> = None;
    let mut lookup_error: Option<String> = None;
    let mut pending: Vec<Write> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                w = rx.recv() => match w {
                    Some(w) => pending.push(w),
                    None => return,
                },
            }
        }
        while let Ok(w) = rx.try_recv() {
            pending.push(w);
        }
        if region.is_none() {
            // Claims wait until the region is known; each distinct reason is logged once.
            let why = match crate::store::appliance_region(&pool, &appliance).await {
                Ok(Some(r)) => {
                    region = Some(r);
                    None
                }
                Ok(None) => Some(format!("appliance {appliance} is not in the inventory")),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why
                && lookup_error.as_ref() != Some(&why)
            {
                tracing::warn!("takeover: cannot record claims yet: {why}");
                lookup_error = Some(why);
            }
        }
        let Some(region) = region.clone() else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => continue,
            }
        };
        let mut failed = Vec::new();
        for w in pending.drain(..) {
            let ok = match &w {
                Write::Claims(claims) => {
                    match store::write_claims(&pool, &region, &appliance, claims).await {
                        Ok(stored) => {
                            stats
                                .claims_written
                                .fetch_add(stored.len() as u64, Ordering::Relaxed);
                            true
                        }
                        Err(e) => {
                            stats.claim_write_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("takeover: recording {} claims: {e}", claims.len());
                            false
                        }
                    }
                }
                Write::PeerDown(peer, at, loss) => {
                    let note = match loss {
                        PeerLoss::Silent => format!("no group heartbeat seen by {appliance}"),
                        PeerLoss::Restarted => {
                            format!("restarted before {appliance} counted it dead")
                        }
                    };
                    store::open_failure(&pool, &region, peer, *at, &note)
                        .await
                        .is_ok()
                }
                Write::PeerUp(peer, at) => store::close_failure(&pool, &region, peer, *at)
                    .await
                    .is_ok(),
            };
            if !ok {
                failed.push(w);
            }
        }
        if !failed.is_empty() {
            pending = failed;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}
