//! Configuration of an appliance agent (`shadowsteer agent`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fields::{Duration, IpNet, ListenAddr};
use super::{Problems, Validate};
use crate::domain::ApplianceId;

/// The whole agent file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Identity, listener, key and database.
    pub agent: AgentSection,
    /// The clients' tunnel network.
    pub tunnel: TunnelSection,
    /// Health reporting.
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// Probes to other appliances.
    #[serde(default)]
    pub probes: ProbeSection,
    /// HAProxy agent-check responder.
    #[serde(default)]
    pub lb_check: LbCheckSection,
    /// Failure detection between the appliances of a shadow group, and takeover.
    #[serde(default)]
    pub takeover: TakeoverSection,
}

/// `[takeover]`: heartbeats between the appliances of a shadow group (on the WireGuard port,
/// authenticated with a key derived from the service key) and taking sessions over.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverSection {
    /// Whether this agent watches its group and takes sessions over.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Between two heartbeats to each group peer.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: Duration,
    /// Heartbeats missed before a peer is declared dead (detection time = interval × misses).
    #[serde(default = "default_misses")]
    pub misses: u32,
    /// Time a peer never heard from gets after this agent starts.
    #[serde(default = "default_startup_grace")]
    pub startup_grace: Duration,
    /// When a recovered primary takes its clients back: `auto` (when steering moves them back)
    /// or `manual` (on `shadowsteer session failback`).
    #[serde(default)]
    pub failback: crate::takeover::Failback,
}

fn default_true() -> bool {
    true
}

fn default_heartbeat_interval() -> Duration {
    Duration(std::time::Duration::from_millis(50))
}

fn default_misses() -> u32 {
    4
}

fn default_startup_grace() -> Duration {
    Duration(std::time::Duration::from_secs(2))
}

impl Default for TakeoverSection {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval: default_heartbeat_interval(),
            misses: default_misses(),
            startup_grace: default_startup_grace(),
            failback: crate::takeover::Failback::default(),
        }
    }
}

/// `[lb_check]`: answers HAProxy's `agent-check` with a weight that falls as the appliance's
/// risk rises, `drain` when drained and `down` when failed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LbCheckSection {
    /// TCP address to answer on; absent disables it.
    #[serde(default)]
    pub listen: Option<ListenAddr>,
    /// How often the appliance's state and risk are re-read from the database.
    #[serde(default = "default_lb_refresh")]
    pub refresh: Duration,
    /// A model score no scorer confirmed for this long is left out of the weight (advisories
    /// alone count): a scorer outage must not drain every backend of the pool at once.
    #[serde(default = "default_lb_max_score_age")]
    pub max_score_age: Duration,
}

fn default_lb_refresh() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}

fn default_lb_max_score_age() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

impl Default for LbCheckSection {
    fn default() -> Self {
        Self {
            listen: None,
            refresh: default_lb_refresh(),
            max_score_age: default_lb_max_score_age(),
        }
    }
}

/// What carries decrypted traffic inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InsideMode {
    /// A Linux TUN device to the host's network stack (real deployments).
    Tun,
    /// A built-in ICMP and UDP echo responder on the appliance's tunnel address (demo, tests).
    Echo,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The appliance this agent runs (must exist in the inventory).
    pub appliance: ApplianceId,
    /// UDP address WireGuard listens on.
    pub listen: ListenAddr,
    /// File holding the shadow group's service private key (base64, mode 0600).
    pub key_file: PathBuf,
    /// Inside-the-tunnel mode.
    #[serde(default = "default_inside")]
    pub inside: InsideMode,
    /// Postgres URL; absent means the embedded local cluster in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Data directory of the embedded cluster; absent means the default data directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Handshake messages per second (all clients together) answered without a cookie; beyond
    /// it, initiators must prove their address first (WireGuard's cookie reply).
    #[serde(default = "default_handshake_rate")]
    pub handshake_rate_limit: u64,
    /// TCP address of the agent's Prometheus `/metrics` (no authentication: keep it on
    /// loopback, e.g. `127.0.0.1:9101`, and let a local scraper or proxy reach it); absent
    /// disables it.
    #[serde(default)]
    pub metrics_listen: Option<ListenAddr>,
}

fn default_inside() -> InsideMode {
    InsideMode::Tun
}
fn default_handshake_rate() -> u64 {
    250
}

/// `[tunnel]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// The clients' tunnel network; the appliance answers on its first address.
    pub network: IpNet,
    /// Name of the TUN device in `tun` mode.
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    /// MTU of the TUN device (WireGuard adds 32 bytes plus UDP/IP headers on the wire).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Data-plane workers, each with its own `SO_REUSEPORT` socket on `agent.listen` (the
    /// kernel spreads clients over them by address and port); absent means one per CPU this
    /// process may run on, at most [`DEFAULT_MAX_THREADS`]. 1 is a single socket without
    /// `SO_REUSEPORT`.
    #[serde(default)]
    pub threads: Option<usize>,
}

/// Most data-plane workers chosen when `tunnel.threads` is absent: beyond this, one
/// appliance's clients rarely spread evenly enough to use more.
pub const DEFAULT_MAX_THREADS: usize = 8;

impl TunnelSection {
    /// Data-plane workers to run: `threads`, or one per available CPU up to
    /// [`DEFAULT_MAX_THREADS`].
    pub fn data_plane_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(DEFAULT_MAX_THREADS)
        })
    }
}

fn default_tun_name() -> String {
    "shadowsteer0".to_owned()
}
fn default_mtu() -> u16 {
    1420
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// How often a health row is taken.
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    /// Rows kept while Postgres is unreachable; the oldest are dropped (and counted) beyond it.
    #[serde(default = "default_buffer_rows")]
    pub buffer_rows: usize,
    /// How often session counters are checkpointed into `session_state`.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_interval: Duration,
    /// Bandwidth (bits per second) that counts as 100% utilisation.
    #[serde(default = "default_capacity_bps")]
    pub capacity_bps: u64,
    /// A JSON file whose signals replace the measured ones, re-read every sample (drills and
    /// the demo, where appliances share one host); absent: every signal is measured.
    #[serde(default)]
    pub overrides_file: Option<PathBuf>,
}

fn default_health_interval() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}
fn default_buffer_rows() -> usize {
    3600
}
fn default_checkpoint() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn default_capacity_bps() -> u64 {
    1_000_000_000
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            buffer_rows: default_buffer_rows(),
            checkpoint_interval: default_checkpoint(),
            capacity_bps: default_capacity_bps(),
            overrides_file: None,
        }
    }
}

/// `[probes]`: authenticated UDP probes to other appliances.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// UDP address the probe responder listens on; absent disables probing.
    #[serde(default)]
    pub listen: Option<ListenAddr>,
    /// File holding the shared probe MAC key (base64, mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Time between probes to each peer.
    #[serde(default = "default_probe_interval")]
    pub interval: Duration,
    /// Window summarised into one `path_probes` row.
    #[serde(default = "default_probe_window")]
    pub window: Duration,
    /// The appliances probed.
    #[serde(default)]
    pub peers: Vec<PeerProbe>,
}

fn default_probe_interval() -> Duration {
    Duration(std::time::Duration::from_millis(200))
}
fn default_probe_window() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}

impl Default for ProbeSection {
    fn default() -> Self {
        Self {
            listen: None,
            key_file: None,
            interval: default_probe_interval(),
            window: default_probe_window(),
            peers: Vec::new(),
        }
    }
}

/// `[[probes.peers]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerProbe {
    /// The probed appliance.
    pub appliance: ApplianceId,
    /// Its probe responder's address.
    pub address: ListenAddr,
}

impl Validate for AgentConfig {
    fn validate(&self, problems: &mut Problems) {
        let t = &self.telemetry;
        if t.interval.0 < std::time::Duration::from_millis(100) {
            problems.push("telemetry.interval", "must be at least 100ms");
        }
        if t.checkpoint_interval.0 < std::time::Duration::from_millis(500) {
            problems.push("telemetry.checkpoint_interval", "must be at least 500ms");
        }
        if t.buffer_rows == 0 || t.buffer_rows > 1_000_000 {
            problems.push("telemetry.buffer_rows", "must be between 1 and 1000000");
        }
        if t.capacity_bps == 0 {
            problems.push("telemetry.capacity_bps", "must be positive");
        }
        let net = &self.tunnel.network;
        let max = if net.addr().is_ipv4() { 30 } else { 126 };
        if net.prefix() > max {
            problems.push(
                "tunnel.network",
                format!("{net} is too small to hold clients"),
            );
        }
        if self
            .tunnel
            .threads
            .is_some_and(|n| n == 0 || n > crate::tunnel::MAX_THREADS)
        {
            problems.push(
                "tunnel.threads",
                format!("must be between 1 and {}", crate::tunnel::MAX_THREADS),
            );
        }
        if !(576..=9000).contains(&self.tunnel.mtu) {
            problems.push("tunnel.mtu", "must be between 576 and 9000");
        }
        let beat = self.takeover.heartbeat_interval.0;
        if beat < std::time::Duration::from_millis(10) || beat > std::time::Duration::from_secs(10)
        {
            problems.push(
                "takeover.heartbeat_interval",
                "must be between 10ms and 10s",
            );
        }
        if !(2..=100).contains(&self.takeover.misses) {
            problems.push("takeover.misses", "must be between 2 and 100");
        }
        if self.takeover.startup_grace.0 > std::time::Duration::from_secs(600) {
            problems.push("takeover.startup_grace", "must be at most 10m");
        }
        if self.agent.handshake_rate_limit == 0 || self.agent.handshake_rate_limit > 1_000_000 {
            problems.push(
                "agent.handshake_rate_limit",
                "must be between 1 and 1000000",
            );
        }
        if self.tunnel.tun_name.is_empty() || self.tunnel.tun_name.len() > 15 {
            problems.push(
                "tunnel.tun_name",
                "must be 1 to 15 characters (Linux interface name)",
            );
        }
        if self.lb_check.refresh.0 < std::time::Duration::from_millis(100) {
            problems.push("lb_check.refresh", "must be at least 100ms");
        }
        if self.lb_check.max_score_age.0 < std::time::Duration::from_secs(1) {
            problems.push("lb_check.max_score_age", "must be at least 1s");
        }
        let p = &self.probes;
        if p.interval.0 < std::time::Duration::from_millis(10) {
            problems.push("probes.interval", "must be at least 10ms");
        }
        if p.window.0 < p.interval.0 {
            problems.push("probes.window", "must be at least probes.interval");
        }
        if !p.peers.is_empty() && (p.listen.is_none() || p.key_file.is_none()) {
            problems.push("probes", "peers need probes.listen and probes.key_file");
        }
        for (i, peer) in p.peers.iter().enumerate() {
            if peer.appliance == self.agent.appliance {
                problems.push(
                    format!("probes.peers[{i}].appliance"),
                    "an appliance does not probe itself",
                );
            }
        }
    }
}
