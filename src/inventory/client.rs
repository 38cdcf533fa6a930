//! Clients: input, rules and service functions shared by the CLI and the API, and the
//! wg-quick file a stock WireGuard client uses.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::InventoryError;
use super::appliance::parse_id;
use crate::domain::{ApplianceId, ClientId, PeerIndex, PublicKey, RegionId, SecretKey};
use crate::store::{inventory as db, sessions};

/// Largest page of clients one request returns.
pub const MAX_PAGE: u32 = 1000;

/// A client as listed: `client list --json` and `GET /api/v1/clients`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Client {
    /// Its id (a DNS label; its name is `<id>.c.<zone>`).
    #[schema(value_type = String, example = "alice")]
    pub id: ClientId,
    /// Owning region (its primary's).
    #[schema(value_type = String, example = "eu")]
    pub region: RegionId,
    /// WireGuard public key (base64).
    #[schema(value_type = String)]
    pub public_key: PublicKey,
    /// Address inside the tunnel.
    #[schema(value_type = String, example = "10.77.0.2")]
    pub tunnel_ip: IpAddr,
    /// Stable 24-bit index shared by all its appliances.
    #[schema(value_type = u32, minimum = 1, maximum = 16777215)]
    pub peer_index: PeerIndex,
    /// Primary appliance.
    #[schema(value_type = String, example = "eu-1")]
    pub primary: ApplianceId,
    /// Shadow appliance, in another region.
    #[schema(value_type = String, example = "us-1")]
    pub shadow: ApplianceId,
}

/// A new client before validation: the flags of `client add`, the body of
/// `POST /api/v1/clients`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientInput {
    /// Client id (a DNS label).
    #[schema(example = "alice")]
    pub id: String,
    /// The client's WireGuard public key (base64).
    pub public_key: String,
    /// The client's address inside the tunnel.
    #[schema(example = "10.77.0.2")]
    pub tunnel_ip: String,
    /// Primary appliance.
    #[schema(example = "eu-1")]
    pub primary: String,
    /// Shadow appliance, in another region.
    #[schema(example = "us-1")]
    pub shadow: String,
}

/// A validated new client.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Its id.
    pub id: ClientId,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Address inside the tunnel (a host address).
    pub tunnel_ip: IpAddr,
    /// Primary appliance.
    pub primary: ApplianceId,
    /// Shadow appliance, not the primary.
    pub shadow: ApplianceId,
}

/// Parses a client id.
pub fn parse_client_id(field: &'static str, id: &str) -> Result<ClientId, InventoryError> {
    ClientId::new(id).map_err(|e| InventoryError::invalid(field, e))
}

impl ClientInput {
    /// Validates every field and the rules between them that need no database.
    pub fn parse(&self) -> Result<NewClient, InventoryError> {
        let tunnel_ip = self.tunnel_ip.parse::<IpAddr>().map_err(|_| {
            InventoryError::invalid(
                "tunnel_ip",
                format!("invalid tunnel ip {:?}", self.tunnel_ip),
            )
        })?;
        if tunnel_ip.is_unspecified() || tunnel_ip.is_multicast() {
            return Err(InventoryError::invalid(
                "tunnel_ip",
                format!("tunnel ip {tunnel_ip} is not a host address"),
            ));
        }
        let new = NewClient {
            id: parse_client_id("id", &self.id)?,
            public_key: self
                .public_key
                .parse::<PublicKey>()
                .map_err(|e| InventoryError::invalid("public_key", e))?,
            tunnel_ip,
            primary: parse_id("primary", &self.primary)?,
            shadow: parse_id("shadow", &self.shadow)?,
        };
        if new.primary == new.shadow {
            return Err(InventoryError::SameAppliance(new.primary));
        }
        Ok(new)
    }
}

/// Which clients a page holds.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Only clients whose primary or shadow this is.
    pub appliance: Option<ApplianceId>,
    /// Only ids after this one (the previous page's `next`).
    pub after: Option<ClientId>,
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: u32,
}

/// A page of clients, ordered by id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientPage {
    /// The clients.
    pub items: Vec<Client>,
    /// Pass as `after` for the next page; absent on the last page.
    #[schema(value_type = Option<String>)]
    pub next: Option<ClientId>,
}

/// Adds a client with a newly allocated peer index, which it returns. The rules that need the
/// database (appliances exist, in different regions; unique id, key and tunnel address) are
/// checked in the same transaction as the insert.
pub async fn add(pool: &PgPool, new: &NewClient) -> Result<PeerIndex, InventoryError> {
    db::insert_client(pool, new).await
}

/// Every client, ordered by id.
pub async fn list(pool: &PgPool) -> Result<Vec<Client>, InventoryError> {
    db::list_clients(pool, None, None, None).await
}

/// One page of clients.
pub async fn page(pool: &PgPool, filter: &ClientFilter) -> Result<ClientPage, InventoryError> {
    if !(1..=MAX_PAGE).contains(&filter.limit) {
        return Err(InventoryError::invalid(
            "limit",
            format!("limit {} is outside 1..={MAX_PAGE}", filter.limit),
        ));
    }
    // One more than asked tells whether another page follows.
    let mut items = db::list_clients(
        pool,
        filter.appliance.as_ref(),
        filter.after.as_ref(),
        Some(i64::from(filter.limit) + 1),
    )
    .await?;
    let next = crate::store::page::split(&mut items, filter.limit as usize, |c| c.id.clone());
    Ok(ClientPage { items, next })
}

/// One client.
pub async fn get(pool: &PgPool, id: &ClientId) -> Result<Client, InventoryError> {
    db::get_client(pool, id).await?.ok_or_else(|| not_found(id))
}

/// Removes a client and its session rows.
pub async fn remove(pool: &PgPool, id: &ClientId) -> Result<(), InventoryError> {
    db::remove_client(pool, id).await
}

/// The error for a client that does not exist.
pub fn not_found(id: &ClientId) -> InventoryError {
    InventoryError::NotFound {
        what: "client",
        id: id.to_string(),
    }
}

/// How to write a client's wg-quick file (`client config`, `GET /clients/{id}/config`).
#[derive(Debug, Clone)]
pub struct ConfigOptions {
    /// The steering zone; the endpoint is `<id>.<client_label>.<zone>`.
    pub zone: String,
    /// Label between client id and zone.
    pub client_label: String,
    /// WireGuard port of the appliances.
    pub port: u16,
    /// AllowedIPs; default: the /24 (IPv4) or /64 (IPv6) around the tunnel address.
    pub allowed_ips: Option<String>,
    /// PersistentKeepalive in seconds (0: none).
    pub keepalive: u16,
}

impl ConfigOptions {
    /// Checks the zone, label and AllowedIPs (they end up in a file a client parses).
    pub fn validate(&self) -> Result<(), InventoryError> {
        let dns_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if !dns_name(self.zone.trim_end_matches('.')) {
            return Err(InventoryError::invalid(
                "zone",
                format!("{:?} is not a DNS name", self.zone),
            ));
        }
        if !dns_name(&self.client_label) || self.client_label.contains('.') {
            return Err(InventoryError::invalid(
                "client_label",
                format!("{:?} is not a DNS label", self.client_label),
            ));
        }
        if self.port == 0 {
            return Err(InventoryError::invalid("port", "port must not be 0"));
        }
        if let Some(a) = &self.allowed_ips {
            let ok = a.split(',').map(str::trim).all(|net| {
                net.split_once('/').is_some_and(|(ip, len)| {
                    ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
                })
            });
            if !ok || a.len() > 1000 {
                return Err(InventoryError::invalid(
                    "allowed_ips",
                    format!("{a:?} is not a comma-separated list of CIDR networks"),
                ));
            }
        }
        Ok(())
    }
}

fn default_allowed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The wg-quick file of client `id`: the private key when given, else a placeholder.
pub async fn config_file(
    pool: &PgPool,
    id: &ClientId,
    options: &ConfigOptions,
    private: Option<&SecretKey>,
) -> Result<String, InventoryError> {
    options.validate()?;
    let zone = options.zone.trim_end_matches('.');
    let (tunnel_ip, service) = sessions::client_service(pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let host_bits = if tunnel_ip.is_ipv4() { 32 } else { 128 };
    let mut out = String::new();
    let _ = writeln!(out, "# shadowsteer client {id}: wg-quick configuration");
    let _ = writeln!(out, "[Interface]");
    match private {
        Some(k) => {
            let _ = writeln!(out, "PrivateKey = {}", k.expose_base64().as_str());
        }
        None => {
            let _ = writeln!(
                out,
                "PrivateKey = REPLACE_WITH_CLIENT_PRIVATE_KEY  # the key whose public half was registered"
            );
        }
    }
    let _ = writeln!(out, "Address = {tunnel_ip}/{host_bits}");
    let _ = writeln!(out);
    let _ = writeln!(out, "[Peer]");
    let _ = writeln!(out, "PublicKey = {service}");
    let _ = writeln!(
        out,
        "Endpoint = {id}.{}.{zone}:{}",
        options.client_label, options.port
    );
    let allowed = options
        .allowed_ips
        .clone()
        .unwrap_or_else(|| default_allowed(tunnel_ip));
    let _ = writeln!(out, "AllowedIPs = {allowed}");
    if options.keepalive > 0 {
        let _ = writeln!(out, "PersistentKeepalive = {}", options.keepalive);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ClientInput {
        ClientInput {
            id: "alice".into(),
            public_key: SecretKey::generate().public_key().to_base64(),
            tunnel_ip: "10.77.0.2".into(),
            primary: "eu-1".into(),
            shadow: "us-1".into(),
        }
    }

    #[test]
    fn rules_without_database() {
        assert!(input().parse().is_ok());
        let mut same = input();
        same.shadow = "eu-1".into();
        assert_eq!(same.parse().unwrap_err().code(), "same_appliance");
        for (ip, reason) in [
            ("10.77.0.300", "invalid tunnel ip"),
            ("0.0.0.0", "not a host address"),
            ("224.0.0.1", "not a host address"),
        ] {
            let mut i = input();
            i.tunnel_ip = ip.into();
            let e = i.parse().unwrap_err();
            assert_eq!(e.field(), Some("tunnel_ip"));
            assert!(e.to_string().contains(reason), "{e}");
        }
    }

    #[test]
    fn config_options_are_checked() {
        let ok = ConfigOptions {
            zone: "vpn.example.net".into(),
            client_label: "c".into(),
            port: 51820,
            allowed_ips: Some("10.77.0.0/24, fd00::/64".into()),
            keepalive: 25,
        };
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.allowed_ips = Some("10.0.0.0/24\n[Peer]".into());
        assert_eq!(bad.validate().unwrap_err().field(), Some("allowed_ips"));
        let mut bad = ok;
        bad.zone = "a b".into();
        assert_eq!(bad.validate().unwrap_err().field(), Some("zone"));
    }

    #[test]
    fn default_allowed_networks() {
        assert_eq!(
            default_allowed("10.77.0.2".parse().unwrap()),
            "10.77.0.0/24"
        );
        assert_eq!(
            default_allowed("fd00:1:2:3::9".parse().unwrap()),
            "fd00:1:2:3::/64"
        );
    }
}
