//! The configuration files of the demo's processes and clients, as a user would write them.
//! Pure: parameters in, TOML text out; the tests parse and validate every file with the same
//! code `serve`, `agent` and `client run` use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::PublicKey;

/// The steering zone of the demo.
pub const ZONE: &str = "vpn.demo";
/// Probes per second per client.
pub const PROBE_RATE: u32 = 50;
/// A probe unanswered this long is lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// The health overrides file of an appliance in a run's directory.
pub fn overrides_file(dir: &Path, appliance: &str) -> PathBuf {
    dir.join(format!("health-{appliance}.json"))
}

/// What a region's `serve` needs.
#[derive(Debug)]
pub struct ServeParams<'a> {
    /// Region id.
    pub region: &'a str,
    /// Its database.
    pub database_url: &'a str,
    /// The run's directory (snapshot files).
    pub dir: &'a Path,
    /// DNS address.
    pub dns: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Reactive baseline: risk scoring off.
    pub reactive: bool,
}

/// `serve`'s file: one-second TTLs and a 5 s hold-down so the story fits in a minute; health
/// older than 3 s is a failure (agents report every second: the baseline's 3 × 1 s check).
pub fn serve(p: &ServeParams<'_>) -> String {
    format!(
        r#"[server]
region = "{region}"
name = "demo-{region}"
database_url = "{url}"
snapshot_file = "{dir}/snapshot-{region}"
reconcile_interval = "2s"

[dns]
listen = ["{dns}"]
udp_workers = 1

[[dns.zones]]
name = "{ZONE}"
steered_ttl = "1s"

[dns.zones.soa]
mname = "ns1"
rname = "hostmaster"

[[dns.zones.ns]]
name = "ns1"
addresses = ["127.0.0.1"]

[dns.rate_limit]
responses_per_second = 0

[admin]
listen = "{admin}"

[steering]
hold_down = "5s"
health_timeout = "3s"

[risk]
enabled = {risk}
interval = "1s"
threads = 1
"#,
        region = p.region,
        url = p.database_url,
        dir = p.dir.display(),
        dns = p.dns,
        admin = p.admin,
        risk = !p.reactive,
    )
}

/// What an appliance's agent needs.
#[derive(Debug)]
pub struct AgentParams<'a> {
    /// Appliance id.
    pub appliance: &'a str,
    /// WireGuard address.
    pub listen: SocketAddr,
    /// The service key.
    pub key_file: &'a Path,
    /// Its region's database.
    pub database_url: &'a str,
    /// Where its health signals come from.
    pub overrides_file: &'a Path,
    /// Reactive baseline: takeover off.
    pub reactive: bool,
}

/// The agent's file: echo inside, health every second, takeover with the defaults.
pub fn agent(p: &AgentParams<'_>) -> String {
    format!(
        r#"[agent]
appliance = "{id}"
listen = "{listen}"
key_file = "{key}"
inside = "echo"
database_url = "{url}"

[tunnel]
network = "10.77.0.0/16"

[telemetry]
interval = "1s"
checkpoint_interval = "1s"
overrides_file = "{overrides}"

[takeover]
enabled = {takeover}
heartbeat_interval = "50ms"
misses = 4
startup_grace = "1s"
"#,
        id = p.appliance,
        listen = p.listen,
        key = p.key_file.display(),
        url = p.database_url,
        overrides = p.overrides_file.display(),
        takeover = !p.reactive,
    )
}

/// What a client needs.
#[derive(Debug)]
pub struct ClientParams<'a> {
    /// Client id.
    pub id: &'a str,
    /// Its key file.
    pub key_file: &'a Path,
    /// The service's public key.
    pub service: &'a PublicKey,
    /// The appliances' WireGuard port.
    pub wg_port: u16,
    /// Its region's DNS server.
    pub resolver: SocketAddr,
    /// Its tunnel address.
    pub tunnel_ip: Ipv4Addr,
    /// Reactive baseline: no standby session, the helper follows DNS only.
    pub reactive: bool,
}

/// The client helper's file: probe mode, re-resolving every second; a standby session with
/// the shadow except in the baseline.
pub fn client(p: &ClientParams<'_>) -> String {
    format!(
        r#"[client]
id = "{id}"
key_file = "{key}"
service_public_key = "{service}"
zone = "{ZONE}"
port = {port}
resolver = "{resolver}"
listen = "127.0.0.1:0"
inside = "probe"
min_ttl = "1s"
max_ttl = "5s"
standby = {standby}

[tunnel]
address = "{tunnel_ip}"
network = "10.77.0.0/16"

[probe]
rate = {PROBE_RATE}
report_interval = "1s"
loss_timeout = "{loss}ms"
"#,
        id = p.id,
        key = p.key_file.display(),
        service = p.service.to_base64(),
        port = p.wg_port,
        resolver = p.resolver,
        tunnel_ip = p.tunnel_ip,
        loss = LOSS_TIMEOUT.as_millis(),
        standby = !p.reactive,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, ClientConfig, SteeringConfig, parse};
    use crate::domain::SecretKey;

    #[test]
    fn every_file_parses_and_validates() {
        let dir = Path::new("/tmp/demo");
        let addr: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        for reactive in [false, true] {
            let s = serve(&ServeParams {
                region: "eu",
                database_url: "postgres://postgres:pw@127.0.0.1:5432/shadowsteer",
                dir,
                dns: addr,
                admin: "127.0.0.1:8053".parse().unwrap(),
                reactive,
            });
            let cfg: SteeringConfig = parse(Path::new("serve.toml"), &s).unwrap();
            assert_eq!(cfg.risk.enabled, !reactive);
            let a = agent(&AgentParams {
                appliance: "eu-1",
                listen: "127.0.0.11:51820".parse().unwrap(),
                key_file: Path::new("/tmp/demo/service.key"),
                database_url: "postgres://postgres:pw@127.0.0.1:5432/shadowsteer",
                overrides_file: &overrides_file(dir, "eu-1"),
                reactive,
            });
            let cfg: AgentConfig = parse(Path::new("agent.toml"), &a).unwrap();
            assert_eq!(cfg.takeover.enabled, !reactive);
            assert!(cfg.telemetry.overrides_file.is_some());
        }
        let c = client(&ClientParams {
            id: "c001",
            key_file: Path::new("/tmp/demo/c001.key"),
            service: &SecretKey::generate().public_key(),
            wg_port: 51820,
            resolver: addr,
            tunnel_ip: Ipv4Addr::new(10, 77, 1, 2),
            reactive: true,
        });
        let cfg: ClientConfig = parse(Path::new("client.toml"), &c).unwrap();
        assert_eq!(cfg.endpoint_name(), "c001.c.vpn.demo");
        assert!(!cfg.client.standby);
    }
}
