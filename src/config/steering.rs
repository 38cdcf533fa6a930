//! Configuration of the steering server (`shadowsteer serve`).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fields::{Duration, IpNet, ListenAddr};
use super::{Problems, Validate};
use crate::domain::RegionId;

/// The whole steering-server file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringConfig {
    /// Identity, database and data directory.
    #[serde(default)]
    pub server: ServerSection,
    /// The authoritative DNS server.
    pub dns: DnsSection,
    /// The admin HTTP listener.
    #[serde(default)]
    pub admin: AdminSection,
    /// Steering thresholds.
    #[serde(default)]
    pub steering: SteeringSection,
    /// Live risk scoring.
    #[serde(default)]
    pub risk: super::risk::RiskSection,
    /// Cross-region replication watch.
    #[serde(default)]
    pub replication: ReplicationSection,
}

/// `[replication]`: what `serve` watches of cross-region replication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// Replication lag from another region past which a warning is logged.
    #[serde(default = "default_lag_warning")]
    pub lag_warning: Duration,
}

fn default_lag_warning() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}

impl Default for ReplicationSection {
    fn default() -> Self {
        Self {
            lag_warning: default_lag_warning(),
        }
    }
}

/// `[server]`: where the server runs and which database it uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The region this server belongs to.
    #[serde(default = "default_region")]
    pub region: RegionId,
    /// Name of this instance in logs and audit rows.
    #[serde(default = "default_name")]
    pub name: String,
    /// Postgres URL; absent means the embedded local cluster in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Where the embedded cluster and other state live; absent means the default data directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// How often the whole snapshot is re-read from the database, besides the change
    /// notifications (which can be lost while the listener reconnects).
    #[serde(default = "default_reconcile")]
    pub reconcile_interval: Duration,
    /// Where the last good snapshot is saved, so that a restart answers every client at once
    /// (also while the database is unreachable); absent means `last-snapshot` in the data
    /// directory.
    #[serde(default)]
    pub snapshot_file: Option<PathBuf>,
    /// A saved snapshot older than this is not served at start.
    #[serde(default = "default_snapshot_max_age")]
    pub snapshot_max_age: Duration,
}

fn default_reconcile() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

fn default_snapshot_max_age() -> Duration {
    Duration(std::time::Duration::from_secs(86_400))
}

fn default_region() -> RegionId {
    RegionId::new("local").expect("valid literal")
}

fn default_name() -> String {
    "shadowsteer".to_owned()
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            region: default_region(),
            name: default_name(),
            database_url: None,
            data_dir: None,
            reconcile_interval: default_reconcile(),
            snapshot_file: None,
            snapshot_max_age: default_snapshot_max_age(),
        }
    }
}

/// `[dns]`: listeners, zones and abuse limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Addresses to serve DNS on, UDP and TCP each.
    pub listen: Vec<ListenAddr>,
    /// Largest UDP response sent to EDNS clients (bytes).
    #[serde(default = "default_udp_payload")]
    pub udp_payload_size: u16,
    /// Simultaneous TCP connections, beyond which new ones are refused.
    #[serde(default = "default_max_tcp")]
    pub max_tcp_connections: usize,
    /// Idle TCP connections are closed after this long.
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout: Duration,
    /// The zones served.
    #[serde(default)]
    pub zones: Vec<ZoneSection>,
    /// Response rate limiting.
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// UDP worker threads, each with its own `SO_REUSEPORT` socket per listen address;
    /// absent means one per CPU this process may run on.
    #[serde(default)]
    pub udp_workers: Option<usize>,
    /// Client subnets (from EDNS Client Subnet) mapped to their nearest region: the service
    /// name answers them with that region's appliances when it has any.
    #[serde(default)]
    pub ecs_regions: Vec<EcsRegion>,
    /// DNS over TLS (RFC 7858), so that a network between a client helper and this server can
    /// neither read nor forge its steering answers; off when absent.
    #[serde(default)]
    pub tls: Option<DnsTlsSection>,
}

/// `[dns.tls]`: DNS over TLS on listeners of its own (port 853 by convention), answering
/// exactly as UDP and TCP do. Counted with TCP (slots, idle timeout, metrics).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsTlsSection {
    /// Addresses to serve DNS over TLS on.
    pub listen: Vec<ListenAddr>,
    /// PEM certificate chain, the server's own certificate first; its names must include the
    /// name clients verify (`resolver_tls.server_name` of the client helper). Reread on SIGHUP.
    pub certificate: PathBuf,
    /// PEM private key of the certificate (mode 0600). Reread on SIGHUP.
    pub private_key: PathBuf,
}

/// `[[dns.ecs_regions]]`: clients in `prefix` are nearest to `region`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EcsRegion {
    /// Client network, e.g. `198.51.100.0/24`.
    pub prefix: IpNet,
    /// The region whose appliances serve it.
    pub region: RegionId,
}

fn default_udp_payload() -> u16 {
    1232
}
fn default_max_tcp() -> usize {
    1024
}
fn default_tcp_idle() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

/// `[[dns.zones]]`: one authoritative zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSection {
    /// The zone's apex, e.g. `vpn.example.net`.
    pub name: String,
    /// Label under which per-client names live: `<client>.<client_label>.<zone>`.
    #[serde(default = "default_client_label")]
    pub client_label: String,
    /// Name (relative to the zone) answering with all active appliances.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// TTL of steered answers: short, so that clients follow a change quickly.
    #[serde(default = "default_steered_ttl")]
    pub steered_ttl: Duration,
    /// TTL of static records, SOA and NS.
    #[serde(default = "default_static_ttl")]
    pub static_ttl: Duration,
    /// Start of authority values.
    #[serde(default)]
    pub soa: SoaSection,
    /// Name servers of the zone, with glue addresses for those inside it.
    #[serde(default)]
    pub ns: Vec<NsRecord>,
    /// Extra records kept in the zone.
    #[serde(default)]
    pub records: Vec<StaticRecord>,
    /// An RFC 1035 zone file with more static records.
    #[serde(default)]
    pub zone_file: Option<PathBuf>,
}

fn default_client_label() -> String {
    "c".to_owned()
}
fn default_service_name() -> String {
    "gw".to_owned()
}
fn default_steered_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_static_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}

/// `[dns.zones.soa]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SoaSection {
    /// Primary name server; relative names are completed with the zone.
    #[serde(default = "default_mname")]
    pub mname: String,
    /// Responsible mailbox in DNS form (`hostmaster.vpn.example.net`).
    #[serde(default = "default_rname")]
    pub rname: String,
    /// Refresh interval for secondaries.
    #[serde(default = "default_refresh")]
    pub refresh: Duration,
    /// Retry interval for secondaries.
    #[serde(default = "default_retry")]
    pub retry: Duration,
    /// Expiry for secondaries.
    #[serde(default = "default_expire")]
    pub expire: Duration,
    /// Negative-caching TTL (RFC 2308).
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
}

fn default_mname() -> String {
    "ns1".to_owned()
}
fn default_rname() -> String {
    "hostmaster".to_owned()
}
fn default_refresh() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}
fn default_retry() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}
fn default_expire() -> Duration {
    Duration(std::time::Duration::from_secs(604_800))
}
fn default_negative_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

impl Default for SoaSection {
    fn default() -> Self {
        Self {
            mname: default_mname(),
            rname: default_rname(),
            refresh: default_refresh(),
            retry: default_retry(),
            expire: default_expire(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

/// `[[dns.zones.ns]]`: a name server of the zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NsRecord {
    /// The server's name; relative names are completed with the zone.
    pub name: String,
    /// Glue addresses, required when the name is inside the zone.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// `[[dns.zones.records]]`: a static record in presentation form.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    /// Owner name relative to the zone (`@` for the apex).
    pub name: String,
    /// Record type, e.g. `A`, `TXT`, `CAA`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// Record data in zone-file presentation form.
    pub data: String,
    /// TTL; the zone's `static_ttl` when absent.
    #[serde(default)]
    pub ttl: Option<Duration>,
}

/// `[dns.rate_limit]`: response rate limiting per source prefix, as NSD and BIND do it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Answers (and NODATA) per second per source prefix, name and type; 0 disables limiting
    /// (of every class whose own rate is not set).
    #[serde(default = "default_rrl_rate")]
    pub responses_per_second: u32,
    /// NXDOMAIN answers per second per source prefix and zone; default: `responses_per_second`.
    #[serde(default)]
    pub nxdomains_per_second: Option<u32>,
    /// Error answers (FORMERR, REFUSED, SERVFAIL...) per second per source prefix; default:
    /// `responses_per_second`.
    #[serde(default)]
    pub errors_per_second: Option<u32>,
    /// Every `slip`-th limited response goes out truncated (TC) so real clients retry over TCP;
    /// 0 drops them all.
    #[serde(default = "default_slip")]
    pub slip: u32,
    /// IPv4 prefix length grouping sources.
    #[serde(default = "default_v4_prefix")]
    pub ipv4_prefix: u8,
    /// IPv6 prefix length grouping sources.
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
}

fn default_rrl_rate() -> u32 {
    200
}
fn default_slip() -> u32 {
    2
}
fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    56
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            responses_per_second: default_rrl_rate(),
            nxdomains_per_second: None,
            errors_per_second: None,
            slip: default_slip(),
            ipv4_prefix: default_v4_prefix(),
            ipv6_prefix: default_v6_prefix(),
        }
    }
}

/// `[admin]`: the HTTP admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin HTTP listener (metrics, health, API).
    #[serde(default = "default_admin_listen")]
    pub listen: ListenAddr,
}

fn default_admin_listen() -> ListenAddr {
    ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 8053)))
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// `[steering]`: when clients move from their primary to their shadow.
///
/// Risks are probabilities of failure within the risk model's horizon, so the thresholds belong
/// to the model: left out, they follow the model's operating threshold (see
/// [`SteeringSection::resolve`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringSection {
    /// Primary risk above which clients move to the shadow (if the shadow is below it);
    /// default: the model's operating threshold, or 0.5 without a model.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Clients come back only when the risk falls this far below their trigger point;
    /// default: a third of the threshold.
    #[serde(default)]
    pub hysteresis: Option<f64>,
    /// Minimum time between two changes of one client's answer.
    #[serde(default = "default_hold_down")]
    pub hold_down: Duration,
    /// Risk from which a growing share of clients moves (dynamic weighting starts);
    /// default: half the threshold.
    #[serde(default)]
    pub weight_low: Option<f64>,
    /// Risk at which every client has moved; default: the threshold.
    #[serde(default)]
    pub weight_high: Option<f64>,
    /// An appliance whose health reports stopped this long ago counts as failed: its clients
    /// move to their shadow, whatever its last score said. Agents report every second.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Duration,
}

fn default_health_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(3))
}

/// Threshold when neither the configuration nor a model gives one: only advisories carry risk
/// then, and an operator's "more likely than not" is the natural line.
pub const THRESHOLD_WITHOUT_MODEL: f64 = 0.5;

/// The steering thresholds in force, after defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// See [`SteeringSection::threshold`].
    pub threshold: f64,
    /// See [`SteeringSection::hysteresis`].
    pub hysteresis: f64,
    /// See [`SteeringSection::weight_low`].
    pub weight_low: f64,
    /// See [`SteeringSection::weight_high`].
    pub weight_high: f64,
}

impl SteeringSection {
    /// The thresholds in force: each configured value, else one derived from the threshold,
    /// which itself defaults to `model_threshold` (the loaded model's operating threshold).
    pub fn resolve(&self, model_threshold: Option<f64>) -> Thresholds {
        let threshold = self
            .threshold
            .or(model_threshold)
            .unwrap_or(THRESHOLD_WITHOUT_MODEL);
        Thresholds {
            threshold,
            hysteresis: self.hysteresis.unwrap_or(threshold / 3.0),
            weight_low: self.weight_low.unwrap_or(threshold / 2.0),
            weight_high: self.weight_high.unwrap_or(threshold),
        }
    }
}

fn default_hold_down() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

impl Default for SteeringSection {
    fn default() -> Self {
        Self {
            threshold: None,
            hysteresis: None,
            hold_down: default_hold_down(),
            weight_low: None,
            weight_high: None,
            health_timeout: default_health_timeout(),
        }
    }
}

fn check_probability(problems: &mut Problems, key: &str, v: f64) {
    if !(0.0..=1.0).contains(&v) {
        problems.push(key, format!("{v} is not in [0, 1]"));
    }
}

impl Validate for SteeringConfig {
    fn validate(&self, problems: &mut Problems) {
        if self.server.name.is_empty() || self.server.name.len() > 200 {
            problems.push("server.name", "must be 1 to 200 characters");
        }
        if self.dns.listen.is_empty() {
            problems.push("dns.listen", "at least one address is needed");
        }
        for (i, a) in self.dns.listen.iter().enumerate() {
            if self.dns.listen[..i].contains(a) {
                problems.push(format!("dns.listen[{i}]"), format!("{a} is listed twice"));
            }
        }
        if self.dns.udp_payload_size < 512 {
            problems.push("dns.udp_payload_size", "must be at least 512");
        }
        if self.dns.udp_payload_size > 4096 {
            problems.push("dns.udp_payload_size", "must be at most 4096");
        }
        if self.dns.udp_workers.is_some_and(|n| n == 0 || n > 256) {
            problems.push("dns.udp_workers", "must be between 1 and 256");
        }
        if self.server.reconcile_interval.0 < std::time::Duration::from_millis(100) {
            problems.push("server.reconcile_interval", "must be at least 100ms");
        }
        if let Some(tls) = &self.dns.tls {
            if tls.listen.is_empty() {
                problems.push("dns.tls.listen", "at least one address is needed");
            }
            for (i, a) in tls.listen.iter().enumerate() {
                // Port 0 (any free port) is never the same twice.
                if a.0.port() != 0 && (tls.listen[..i].contains(a) || self.dns.listen.contains(a)) {
                    problems.push(
                        format!("dns.tls.listen[{i}]"),
                        format!("{a} is listed twice (DNS over TLS needs a port of its own)"),
                    );
                }
            }
        }
        if self.dns.max_tcp_connections == 0 {
            problems.push("dns.max_tcp_connections", "must be at least 1");
        }
        if self.dns.zones.is_empty() {
            problems.push("dns.zones", "at least one zone is needed");
        }
        for (i, z) in self.dns.zones.iter().enumerate() {
            let key = format!("dns.zones[{i}]");
            if let Err(e) = crate::domain::RegionId::new(z.client_label.clone()) {
                problems.push(
                    format!("{key}.client_label"),
                    format!("not a DNS label: {e}"),
                );
            }
            let name = z.name.trim_end_matches('.');
            if name.is_empty()
                || name.split('.').any(|l| l.is_empty() || l.len() > 63)
                || name.len() > 253
            {
                problems.push(
                    format!("{key}.name"),
                    format!("{:?} is not a domain name", z.name),
                );
            }
            if self.dns.zones[..i]
                .iter()
                .any(|o| o.name.trim_end_matches('.').eq_ignore_ascii_case(name))
            {
                problems.push(
                    format!("{key}.name"),
                    format!("zone {name} is listed twice"),
                );
            }
            if z.steered_ttl.0.as_secs() > 86_400 {
                problems.push(format!("{key}.steered_ttl"), "must be at most one day");
            }
        }
        if self.replication.lag_warning.0 < std::time::Duration::from_millis(100) {
            problems.push("replication.lag_warning", "must be at least 100ms");
        }
        let max_age = self.server.snapshot_max_age.0;
        if max_age.is_zero() || max_age > std::time::Duration::from_secs(30 * 86_400) {
            problems.push("server.snapshot_max_age", "must be between 1s and 30 days");
        }
        let rl = &self.dns.rate_limit;
        if !(8..=32).contains(&rl.ipv4_prefix) {
            problems.push("dns.rate_limit.ipv4_prefix", "must be between 8 and 32");
        }
        if !(16..=128).contains(&rl.ipv6_prefix) {
            problems.push("dns.rate_limit.ipv6_prefix", "must be between 16 and 128");
        }
        if rl.slip > 100 {
            problems.push("dns.rate_limit.slip", "must be between 0 and 100");
        }
        let s = &self.steering;
        for (key, v) in [
            ("steering.threshold", s.threshold),
            ("steering.hysteresis", s.hysteresis),
            ("steering.weight_low", s.weight_low),
            ("steering.weight_high", s.weight_high),
        ] {
            if let Some(v) = v {
                check_probability(problems, key, v);
            }
        }
        if let (Some(h), Some(t)) = (s.hysteresis, s.threshold)
            && h > t
        {
            problems.push("steering.hysteresis", "must not exceed steering.threshold");
        }
        if let (Some(lo), Some(hi)) = (s.weight_low, s.weight_high)
            && lo > hi
        {
            problems.push(
                "steering.weight_low",
                "must not exceed steering.weight_high",
            );
        }
        self.risk.validate(problems);
    }
}
