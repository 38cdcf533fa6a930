//! Configuration of the client helper (`shadowsteer client run`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fields::{Duration, IpNet, ListenAddr};
use super::{Problems, Validate};
use crate::domain::{ClientId, PublicKey};

/// The whole client file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Identity, service name and resolver.
    pub client: ClientSection,
    /// Addresses inside the tunnel.
    pub tunnel: ClientTunnelSection,
    /// The built-in probe stream (`inside = "probe"`).
    #[serde(default)]
    pub probe: ProbeStreamSection,
}

/// What the helper does inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientInside {
    /// A Linux TUN device carrying the host's traffic.
    Tun,
    /// A stream of sequenced UDP datagrams to the appliance's echo port, measured exactly.
    Probe,
}

/// Where the per-client name is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// The first `nameserver` of `/etc/resolv.conf`.
    System,
    /// This DNS server (UDP).
    Server(std::net::SocketAddr),
}

impl<'de> Deserialize<'de> for Resolver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "system" {
            return Ok(Self::System);
        }
        s.parse::<ListenAddr>()
            .map(|a| Self::Server(a.0))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid resolver {s:?}; write \"system\" or ip:port, e.g. \"127.0.0.1:53\""
                ))
            })
    }
}

impl Serialize for Resolver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::System => s.serialize_str("system"),
            Self::Server(a) => s.collect_str(a),
        }
    }
}

/// `[client]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// The client's id; its name is `<id>.c.<zone>`.
    pub id: ClientId,
    /// File holding the client's private key (base64, mode 0600).
    pub key_file: PathBuf,
    /// The appliances' shared service public key.
    pub service_public_key: PublicKey,
    /// The steering zone, e.g. `vpn.example.net`.
    pub zone: String,
    /// Label between the client id and the zone.
    #[serde(default = "default_client_label")]
    pub client_label: String,
    /// WireGuard port of the appliances.
    #[serde(default = "default_port")]
    pub port: u16,
    /// DNS resolver for the per-client name.
    #[serde(default = "default_resolver")]
    pub resolver: Resolver,
    /// Ask `resolver` (the steering server's DNS-over-TLS address, port 853 by convention)
    /// over TLS, verifying its certificate; plain UDP when absent.
    #[serde(default)]
    pub resolver_tls: Option<ResolverTls>,
    /// Shortest time between two lookups, whatever the TTL says.
    #[serde(default = "default_min_ttl")]
    pub min_ttl: Duration,
    /// Longest time between two lookups.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Duration,
    /// Local UDP address.
    #[serde(default = "default_listen")]
    pub listen: ListenAddr,
    /// Persistent keepalive; absent disables it.
    #[serde(default)]
    pub keepalive: Option<Duration>,
    /// Inside mode.
    #[serde(default = "default_client_inside")]
    pub inside: ClientInside,
    /// Keep a standby session with the appliance `standby.<id>.<label>.<zone>` names (the
    /// other appliance of the client's pair), so that a move switches to an established
    /// session (make-before-break).
    #[serde(default = "default_standby")]
    pub standby: bool,
    /// How often the standby session's handshake is renewed (a WireGuard session is usable
    /// for 180 s; the appliance drops it after that).
    #[serde(default = "default_standby_refresh")]
    pub standby_refresh: Duration,
    /// Switch to the standby session when the active appliance has answered nothing for this
    /// long after the helper sent it traffic (at least 3 handshake round trips); `0s`: only on
    /// DNS and on the shadow group's takeover initiation.
    #[serde(default = "default_switch_after")]
    pub switch_after: Duration,
    /// After a takeover or a switch on silence, DNS naming the appliance left is not followed
    /// for this long (steering needs a few seconds to notice the failure).
    #[serde(default = "default_takeover_hold")]
    pub takeover_hold: Duration,
}

/// `[client.resolver_tls]`: how the helper verifies the steering server over TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverTls {
    /// The name the server's certificate must carry, e.g. `ns1.vpn.example.net`.
    pub server_name: String,
    /// PEM file of the certificates trusted for it: the operator's CA, or the server's own
    /// self-signed certificate. Nothing else is trusted (no system roots).
    pub ca_file: PathBuf,
}

fn default_client_label() -> String {
    "c".to_owned()
}
fn default_port() -> u16 {
    51820
}
fn default_resolver() -> Resolver {
    Resolver::System
}
fn default_min_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}
fn default_max_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(300))
}
fn default_listen() -> ListenAddr {
    ListenAddr(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
}
fn default_client_inside() -> ClientInside {
    ClientInside::Probe
}
fn default_standby() -> bool {
    true
}
fn default_standby_refresh() -> Duration {
    Duration(std::time::Duration::from_secs(90))
}
fn default_switch_after() -> Duration {
    Duration(std::time::Duration::from_millis(100))
}
fn default_takeover_hold() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

/// `[tunnel]` of the client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTunnelSection {
    /// The client's own address inside the tunnel.
    pub address: std::net::IpAddr,
    /// The tunnel network; the appliance answers on its first address.
    pub network: IpNet,
    /// TUN device name in `tun` mode.
    #[serde(default = "default_client_tun")]
    pub tun_name: String,
    /// TUN MTU.
    #[serde(default = "default_client_mtu")]
    pub mtu: u16,
}

fn default_client_tun() -> String {
    "shadowsteer-c0".to_owned()
}
fn default_client_mtu() -> u16 {
    1420
}

/// `[probe]`: the probe stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStreamSection {
    /// Datagrams per second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// UDP payload bytes per datagram (at least the 20-byte header).
    #[serde(default = "default_payload")]
    pub payload: usize,
    /// How often a report is logged and sent to the appliance.
    #[serde(default = "default_report_interval")]
    pub report_interval: Duration,
    /// A probe not answered within this time counts as lost.
    #[serde(default = "default_loss_timeout")]
    pub loss_timeout: Duration,
}

fn default_rate() -> u32 {
    50
}
fn default_payload() -> usize {
    64
}
fn default_report_interval() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn default_loss_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(2))
}

impl Default for ProbeStreamSection {
    fn default() -> Self {
        Self {
            rate: default_rate(),
            payload: default_payload(),
            report_interval: default_report_interval(),
            loss_timeout: default_loss_timeout(),
        }
    }
}

impl ClientConfig {
    /// The per-client name, `<id>.<label>.<zone>`.
    pub fn endpoint_name(&self) -> String {
        format!(
            "{}.{}.{}",
            self.client.id,
            self.client.client_label,
            self.client.zone.trim_end_matches('.')
        )
    }

    /// The name of the client's standby appliance, `standby.<id>.<label>.<zone>`.
    pub fn standby_name(&self) -> String {
        format!("standby.{}", self.endpoint_name())
    }
}

impl Validate for ClientConfig {
    fn validate(&self, problems: &mut Problems) {
        let c = &self.client;
        let zone = c.zone.trim_end_matches('.');
        let labels_ok = !zone.is_empty()
            && zone.len() <= 200
            && zone.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            problems.push("client.zone", format!("{:?} is not a DNS name", c.zone));
        }
        if crate::domain::ClientId::new(c.client_label.clone()).is_err() {
            problems.push("client.client_label", "must be a DNS label");
        }
        if c.port == 0 {
            problems.push("client.port", "must not be 0");
        }
        if let Some(tls) = &c.resolver_tls {
            if c.resolver == Resolver::System {
                problems.push(
                    "client.resolver_tls",
                    "needs client.resolver set to the server's DNS-over-TLS ip:port (port 853 by convention), not \"system\"",
                );
            }
            if rustls::pki_types::ServerName::try_from(tls.server_name.as_str()).is_err() {
                problems.push(
                    "client.resolver_tls.server_name",
                    format!("{:?} is not a DNS name or IP address", tls.server_name),
                );
            }
        }
        if c.min_ttl.0 > c.max_ttl.0 {
            problems.push("client.min_ttl", "must not exceed client.max_ttl");
        }
        if c.keepalive
            .is_some_and(|k| k.0.as_secs() == 0 || k.0.as_secs() > 65535)
        {
            problems.push("client.keepalive", "must be between 1s and 65535s");
        }
        let refresh = c.standby_refresh.0;
        if refresh < std::time::Duration::from_secs(5)
            || refresh > std::time::Duration::from_secs(170)
        {
            problems.push(
                "client.standby_refresh",
                "must be between 5s and 170s (a session is usable for 180s)",
            );
        }
        if c.switch_after.0 > std::time::Duration::from_secs(60) {
            problems.push("client.switch_after", "must be at most 60s");
        }
        if c.takeover_hold.0 > std::time::Duration::from_secs(3600) {
            problems.push("client.takeover_hold", "must be at most 1h");
        }
        let t = &self.tunnel;
        if !t.network.contains(t.address) {
            problems.push(
                "tunnel.address",
                format!("{} is outside tunnel.network {}", t.address, t.network),
            );
        }
        if t.address == t.network.first_host() {
            problems.push("tunnel.address", "is the appliance's own address");
        }
        if t.tun_name.is_empty() || t.tun_name.len() > 15 {
            problems.push("tunnel.tun_name", "must be 1 to 15 characters");
        }
        if !(576..=9000).contains(&t.mtu) {
            problems.push("tunnel.mtu", "must be between 576 and 9000");
        }
        let p = &self.probe;
        if p.rate == 0 || p.rate > 100_000 {
            problems.push("probe.rate", "must be between 1 and 100000 per second");
        }
        if p.payload < crate::client::probe::HEADER_LEN || p.payload > 1400 {
            problems.push(
                "probe.payload",
                format!(
                    "must be between {} and 1400 bytes",
                    crate::client::probe::HEADER_LEN
                ),
            );
        }
        if p.report_interval.0 < std::time::Duration::from_millis(100) {
            problems.push("probe.report_interval", "must be at least 100ms");
        }
        if p.loss_timeout.0 < std::time::Duration::from_millis(10) {
            problems.push("probe.loss_timeout", "must be at least 10ms");
        }
    }
}
