//! The client helper's shell: one UDP socket, one [`Peer`] (the appliances' shared service
//! identity), DNS re-resolution at TTL expiry, and the inside (probe stream or TUN).
//!
//! Roaming: when the per-client name resolves to a new address, the helper points the tunnel
//! there and starts a handshake at once. The old session keeps carrying nothing new; the next
//! packets go out on the new session as soon as the handshake completes (about one round trip),
//! so the tunnel itself is never torn down. The endpoint follows DNS only: stray packets from
//! the appliance it left do not pull it back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::probe::{ProbeStream, StreamReport};
use super::resolve::{self, ResolveError};
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
/// Port of the echo responder.
const ECHO_PORT: u16 = 7;

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
    /// Completed handshakes.
    pub handshakes: u64,
    /// Lookups that failed (the helper kept its previous endpoint).
    pub failed_lookups: u64,
    /// The probe stream's measurements (probe mode).
    pub probe: Option<StreamReport>,
}

struct State {
    cfg: ClientConfig,
    socket: tokio::net::UdpSocket,
    peer: Peer,
    started: (Instant, DateTime<Utc>),
    report: ClientReport,
    own: IpAddr,
    appliance: IpAddr,
    out: Vec<u8>,
    /// The appliance a takeover moved us away from, and when: DNS may still name it for a
    /// few seconds (until steering notices the failure); it is not followed back meanwhile.
    left: Option<(IpAddr, Instant)>,
    /// Where an embedding program watches the stream (the demo).
    timeline: Option<Arc<Timeline>>,
}

/// How long a DNS answer naming the appliance a takeover moved us away from is ignored.
const TAKEOVER_HOLD: Duration = Duration::from_secs(30);

impl State {
    fn send(&self, bytes: &[u8]) {
        if let Some(to) = self.peer.endpoint() {
            let _ = self.socket.try_send_to(bytes, to);
        }
    }

    fn carry(&mut self, first: ActionOwned) {
        if let ActionOwned::Send(bytes) = first {
            self.send(&bytes);
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.peer.poll_event() {
            match e {
                PeerEvent::Handshake { .. } => {
                    self.report.handshakes += 1;
                    tracing::info!(endpoint = ?self.peer.endpoint(), "handshake complete");
                }
                // An appliance of the group initiated from a new address: a takeover.
                PeerEvent::Endpoint(to) => {
                    let now = Instant::now();
                    let from = self.report.endpoints.last().map(|e| e.endpoint);
                    if from == Some(to) {
                        continue;
                    }
                    if let Some(f) = from {
                        self.left = Some((f.ip(), now));
                    }
                    self.record(now, to);
                    tracing::info!(?from, %to, "the shadow group moved the tunnel");
                }
                PeerEvent::Rtt(_) => {}
            }
        }
    }

    fn adopt(&mut self, now: Instant, endpoint: SocketAddr) {
        if self.peer.endpoint() == Some(endpoint) {
            return;
        }
        if self
            .left
            .is_some_and(|(ip, at)| ip == endpoint.ip() && now.duration_since(at) < TAKEOVER_HOLD)
        {
            tracing::debug!(%endpoint, "DNS still names the appliance a takeover left; staying");
            return;
        }
        let from = self.peer.endpoint();
        self.peer.set_endpoint(endpoint);
        self.record(now, endpoint);
        tracing::info!(?from, to = %endpoint, "moving the tunnel");
        let action = own(self.peer.force_handshake(&mut self.out));
        self.carry(action);
        self.drain_events();
    }

    fn record(&mut self, now: Instant, endpoint: SocketAddr) {
        if let Some(t) = &self.timeline {
            t.moved(now, endpoint);
        }
        self.report.endpoints.push(EndpointChange {
            at: Utc::now(),
            at_ms: u64::try_from(now.saturating_duration_since(self.started.0).as_millis())
                .unwrap_or(u64::MAX),
            endpoint,
        });
    }

    fn encapsulate(&mut self, packet: &[u8]) {
        let action = own(self.peer.encapsulate(packet, &mut self.out));
        self.carry(action);
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

fn resolver_addr(r: Resolver) -> Result<SocketAddr, ResolveError> {
    match r {
        Resolver::Server(a) => Ok(a),
        Resolver::System => std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| resolve::system_resolver(&t))
            .ok_or(ResolveError::NoResolver),
    }
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
    let resolver = resolver_addr(cfg.client.resolver)?;
    let name = cfg.endpoint_name();
    let socket = bind_udp(cfg.client.listen.0)?;
    let appliance = cfg.tunnel.network.first_host();
    let own_ip = cfg.tunnel.address;
    // The helper's own index only names its sessions locally; any 24-bit value works.
    let index = PeerIndex::new(i64::from(rand::random::<u32>() % PeerIndex::MAX) + 1)
        .expect("1..=PeerIndex::MAX is a valid peer index");
    let mut peer = Peer::new(
        &key,
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
    let tun = match cfg.client.inside {
        ClientInside::Tun => Some(Tun::create(
            &cfg.tunnel.tun_name,
            own_ip,
            cfg.tunnel.network.prefix(),
            cfg.tunnel.mtu,
        )?),
        ClientInside::Probe => None,
    };
    let now = Instant::now();
    let mut stream = (cfg.client.inside == ClientInside::Probe)
        .then(|| ProbeStream::new(now, cfg.probe.payload, cfg.probe.loss_timeout.0));
    let mut st = State {
        socket,
        peer,
        started: (now, Utc::now()),
        report: ClientReport {
            name: name.clone(),
            duration_s: 0.0,
            endpoints: Vec::new(),
            handshakes: 0,
            failed_lookups: 0,
            probe: None,
        },
        own: own_ip,
        appliance,
        out: vec![0u8; 65_600],
        left: None,
        timeline,
        cfg,
    };

    // First resolution: nothing can be sent before it.
    let mut next_lookup = loop {
        match resolve::lookup(resolver, &name).await {
            Ok(answer) => {
                if let Some(ep) = choose(&answer.addrs, None, st.cfg.client.port) {
                    st.adopt(Instant::now(), ep);
                }
                break Instant::now() + clamp_ttl(&st.cfg, answer.ttl);
            }
            Err(e) => {
                st.report.failed_lookups += 1;
                tracing::warn!("resolving {name} via {resolver}: {e}; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(finish(st, stream)),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
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
    let mut lookup: Option<tokio::task::JoinHandle<Result<resolve::Answer, ResolveError>>> = None;
    loop {
        let lookup_due = lookup.is_none() && Instant::now() >= next_lookup;
        if lookup_due {
            let n = name.clone();
            lookup = Some(tokio::spawn(
                async move { resolve::lookup(resolver, &n).await },
            ));
        }
        let idle = lookup.is_none();
        let lookup_wait = async {
            match lookup.as_mut() {
                Some(h) => h.await.ok(),
                None => std::future::pending().await,
            }
        };
        let until_lookup = next_lookup.saturating_duration_since(Instant::now());
        tokio::select! {
            () = shutdown.cancelled(), if stop_sending_at.is_none() => {
                // Stop sending; give outstanding probes their loss timeout to come back.
                let grace = if probing { st.cfg.probe.loss_timeout.0 } else { Duration::ZERO };
                stop_sending_at = Some(Instant::now() + grace);
            }
            () = tokio::time::sleep_until(stop_sending_at.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if stop_sending_at.is_some() => break,
            r = lookup_wait => {
                lookup = None;
                match r {
                    Some(Ok(answer)) => {
                        if let Some(ep) = choose(&answer.addrs, st.peer.endpoint(), st.cfg.client.port) {
                            st.adopt(Instant::now(), ep);
                        }
                        next_lookup = Instant::now() + clamp_ttl(&st.cfg, answer.ttl);
                    }
                    Some(Err(e)) => {
                        st.report.failed_lookups += 1;
                        tracing::warn!("re-resolving {name}: {e}; keeping the current endpoint");
                        next_lookup = Instant::now() + st.cfg.client.min_ttl.0;
                    }
                    None => next_lookup = Instant::now() + st.cfg.client.min_ttl.0,
                }
            }
            () = tokio::time::sleep(until_lookup), if idle => {}
            r = st.socket.recv_from(&mut rx) => {
                let (n, src) = match r {
                    Ok(r) => r,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let now = Instant::now();
                let mut inside: Option<Vec<u8>> = None;
                match st.peer.handle_datagram(now, src, &rx[..n], &mut inner) {
                    Action::Send(bytes) => { let _ = st.socket.try_send_to(bytes, src); }
                    Action::Inside(p) => inside = Some(p.to_vec()),
                    Action::Done | Action::Drop(_) => {}
                }
                for _ in 0..512 {
                    match st.peer.flush(&mut inner) {
                        Action::Send(bytes) => st.send(bytes),
                        _ => break,
                    }
                }
                st.drain_events();
                if let Some(p) = inside {
                    match (&tun, stream.as_mut()) {
                        (Some(dev), _) => { let _ = dev.try_send(&p); }
                        (None, Some(s)) => {
                            if let Some(u) = packet::parse_udp(&p)
                                && u.src.port == ECHO_PORT && u.src.ip == st.appliance && u.dst.port == PROBE_PORT
                            {
                                let sent = s.sent_time(u.payload);
                                if s.handle_reply(now, u.payload)
                                    && let (Some(t), Some(sent)) = (&st.timeline, sent)
                                {
                                    t.reply(sent, now);
                                }
                            }
                        }
                        (None, None) => {}
                    }
                }
            }
            r = tun_read(tun.as_ref(), &mut tun_buf), if stop_sending_at.is_none() => {
                if let Ok(n) = r {
                    let p = tun_buf[..n].to_vec();
                    st.encapsulate(&p);
                }
            }
            _ = probe_tick.tick(), if probing && stop_sending_at.is_none() => {
                let now = Instant::now();
                if let Some(s) = stream.as_mut() {
                    let mut payload = vec![0u8; st.cfg.probe.payload];
                    if let Some(len) = s.next_probe(now, &mut payload) {
                        let mut ip = vec![0u8; len + 64];
                        let src = UdpAddr { ip: st.own, port: PROBE_PORT };
                        let dst = UdpAddr { ip: st.appliance, port: ECHO_PORT };
                        if let Some(n) = packet::build_udp(&mut ip, src, dst, &payload[..len]) {
                            st.encapsulate(&ip[..n]);
                        }
                        if let Some(t) = &st.timeline {
                            t.sent(now);
                        }
                    }
                }
            }
            _ = report_tick.tick(), if probing => {
                if let Some(s) = stream.as_mut() {
                    s.settle(Instant::now());
                    let w = s.take_window();
                    let total = s.report();
                    tracing::info!(
                        sent = total.sent, received = total.received, lost = total.lost,
                        longest_gap_ms = total.longest_gap_ms,
                        window_rtt_ms = ?w.rtt_ms, endpoint = ?st.peer.endpoint(),
                        "probe stream"
                    );
                    if let Ok(json) = serde_json::to_vec(&w) {
                        let mut ip = vec![0u8; json.len() + 64];
                        let src = UdpAddr { ip: st.own, port: REPORT_SRC_PORT };
                        let dst = UdpAddr { ip: st.appliance, port: REPORT_PORT };
                        if let Some(n) = packet::build_udp(&mut ip, src, dst, &json) {
                            st.encapsulate(&ip[..n]);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if let Action::Send(bytes) = st.peer.update_timers(&mut inner) {
                    let b = bytes.to_vec();
                    st.send(&b);
                }
                if let Some(s) = stream.as_mut() {
                    s.settle(Instant::now());
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
