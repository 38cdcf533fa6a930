//! Inventory: appliances, clients and advisories, as the CLI and the admin API change them.
//!
//! Every change runs in one transaction and checks its input first, so bad input is rejected
//! with a one-line reason and nothing is written.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, foreign_key_violation, unique_violation};
use crate::domain::{
    ApplianceId, ApplianceState, ClientId, IdError, KeyError, PeerIndex, Probability, PublicKey,
    RegionId,
};

/// Why an inventory change was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A referenced appliance does not exist.
    #[error("unknown appliance {0}")]
    UnknownAppliance(String),
    /// The thing to change does not exist.
    #[error("no {what} {id}")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// Primary and shadow are the same appliance.
    #[error("primary and shadow must be different appliances (both are {0})")]
    SameAppliance(ApplianceId),
    /// Primary and shadow are in one region, which defeats the shadow.
    #[error(
        "shadow {shadow} is in region {region}, the same as primary {primary}; a shadow must be in another region"
    )]
    SameRegion {
        /// Primary appliance.
        primary: ApplianceId,
        /// Shadow appliance.
        shadow: ApplianceId,
        /// Their region.
        region: String,
    },
    /// A unique value is taken.
    #[error("{what} {value} is already in use")]
    Duplicate {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// An appliance still has clients.
    #[error(
        "appliance {appliance} is primary or shadow of {count} client(s) ({examples}); move or remove them first"
    )]
    InUse {
        /// The appliance.
        appliance: ApplianceId,
        /// How many clients reference it.
        count: i64,
        /// Some of their ids.
        examples: String,
    },
    /// An advisory id prefix matches several advisories.
    #[error("advisory id {0} is ambiguous; give more characters")]
    Ambiguous(String),
    /// A malformed id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A malformed key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Any other invalid value.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InventoryError {
    /// Whether the caller's input was at fault (exit code 2) rather than the system (exit 1).
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::Store(_))
    }
}

impl From<sqlx::Error> for InventoryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Query(e))
    }
}

/// An appliance as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Appliance {
    /// Its id.
    pub id: ApplianceId,
    /// Owning region.
    pub region: RegionId,
    /// Public WireGuard endpoint.
    pub endpoint: SocketAddr,
    /// Public key.
    pub public_key: PublicKey,
    /// Operational state.
    pub state: ApplianceState,
    /// Relative capacity.
    pub capacity: u32,
    /// Clients with this appliance as primary.
    pub primary_clients: i64,
    /// Clients with this appliance as shadow.
    pub shadow_clients: i64,
}

/// What `appliance add` needs.
#[derive(Debug, Clone)]
pub struct NewAppliance {
    /// Its id.
    pub id: ApplianceId,
    /// Owning region (created if new).
    pub region: RegionId,
    /// Public WireGuard endpoint.
    pub endpoint: SocketAddr,
    /// Public key.
    pub public_key: PublicKey,
    /// Relative capacity, 1..=1,000,000.
    pub capacity: u32,
}

fn invalid_row(table: &'static str, message: impl ToString) -> InventoryError {
    InventoryError::Store(StoreError::InvalidRow {
        table,
        message: message.to_string(),
    })
}

fn parse_endpoint(ip: &str, port: i32) -> Result<SocketAddr, String> {
    let ip: IpAddr = ip.parse().map_err(|_| format!("bad address {ip}"))?;
    let port = u16::try_from(port).map_err(|_| format!("bad port {port}"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Adds an appliance (and its region, if new).
pub async fn add_appliance(pool: &PgPool, new: &NewAppliance) -> Result<(), InventoryError> {
    if !(1..=1_000_000).contains(&new.capacity) {
        return Err(InventoryError::Invalid(format!(
            "capacity {} is outside 1..=1000000",
            new.capacity
        )));
    }
    if new.endpoint.port() == 0 {
        return Err(InventoryError::Invalid(
            "endpoint port must not be 0".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO regions (region) VALUES ($1) ON CONFLICT DO NOTHING",
        new.region.as_str()
    )
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query!(
        "INSERT INTO appliances (region, id, endpoint_ip, endpoint_port, public_key, capacity)
         VALUES ($1, $2, $3::text::inet, $4, $5, $6)",
        new.region.as_str(),
        new.id.as_str(),
        new.endpoint.ip().to_string(),
        i32::from(new.endpoint.port()),
        new.public_key.to_base64(),
        new.capacity as i32,
    )
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) => {
            return Err(match unique_violation(&e) {
                Some("appliances_pkey" | "appliances_id_key") => InventoryError::Duplicate {
                    what: "appliance id",
                    value: new.id.to_string(),
                },
                Some("appliances_endpoint_ip_endpoint_port_key") => InventoryError::Duplicate {
                    what: "endpoint",
                    value: new.endpoint.to_string(),
                },
                _ => e.into(),
            });
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Every appliance, ordered by region and id.
pub async fn list_appliances(pool: &PgPool) -> Result<Vec<Appliance>, InventoryError> {
    let rows = sqlx::query!(
        r#"SELECT a.id, a.region, host(a.endpoint_ip) AS "endpoint_ip!", a.endpoint_port,
                  a.public_key, a.state, a.capacity,
                  (SELECT count(*) FROM clients c WHERE c.primary_appliance = a.id) AS "primary_clients!",
                  (SELECT count(*) FROM clients c WHERE c.shadow_appliance = a.id) AS "shadow_clients!"
           FROM appliances a ORDER BY a.region, a.id"#
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Appliance {
                id: ApplianceId::new(r.id).map_err(|e| invalid_row("appliances", e))?,
                region: RegionId::new(r.region).map_err(|e| invalid_row("appliances", e))?,
                endpoint: parse_endpoint(&r.endpoint_ip, r.endpoint_port)
                    .map_err(|e| invalid_row("appliances", e))?,
                public_key: r
                    .public_key
                    .parse()
                    .map_err(|e| invalid_row("appliances", e))?,
                state: r.state.parse().map_err(|e| invalid_row("appliances", e))?,
                capacity: u32::try_from(r.capacity).map_err(|e| invalid_row("appliances", e))?,
                primary_clients: r.primary_clients,
                shadow_clients: r.shadow_clients,
            })
        })
        .collect()
}

/// Sets an appliance's operational state (drain, undrain, mark down).
pub async fn set_appliance_state(
    pool: &PgPool,
    id: &ApplianceId,
    state: ApplianceState,
) -> Result<(), InventoryError> {
    let done = sqlx::query!(
        "UPDATE appliances SET state = $2, updated_at = now() WHERE id = $1",
        id.as_str(),
        state.as_str()
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(InventoryError::NotFound {
            what: "appliance",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Removes an appliance that no client uses; its session rows and advisories go with it, its
/// telemetry stays until retention prunes it.
pub async fn remove_appliance(pool: &PgPool, id: &ApplianceId) -> Result<(), InventoryError> {
    let mut tx = pool.begin().await?;
    let users = sqlx::query!(
        "SELECT id FROM clients WHERE primary_appliance = $1 OR shadow_appliance = $1 ORDER BY id FOR SHARE",
        id.as_str()
    )
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let mut examples: Vec<String> = users.iter().take(3).map(|r| r.id.clone()).collect();
        if users.len() > 3 {
            examples.push("…".into());
        }
        return Err(InventoryError::InUse {
            appliance: id.clone(),
            count: users.len() as i64,
            examples: examples.join(", "),
        });
    }
    let done = sqlx::query!("DELETE FROM appliances WHERE id = $1", id.as_str())
        .execute(&mut *tx)
        .await;
    let done = match done {
        Ok(d) => d,
        // A client added concurrently still references it.
        Err(e) if foreign_key_violation(&e).is_some() => {
            return Err(InventoryError::InUse {
                appliance: id.clone(),
                count: 1,
                examples: "added concurrently".into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if done.rows_affected() == 0 {
        return Err(InventoryError::NotFound {
            what: "appliance",
            id: id.to_string(),
        });
    }
    tx.commit().await?;
    Ok(())
}

/// A client as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// Owning region (its primary's).
    pub region: RegionId,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Address inside the tunnel.
    pub tunnel_ip: IpAddr,
    /// Stable index shared by all its appliances.
    pub peer_index: PeerIndex,
    /// Primary appliance.
    pub primary: ApplianceId,
    /// Shadow appliance.
    pub shadow: ApplianceId,
}

/// What `client add` needs.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Its id.
    pub id: ClientId,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Address inside the tunnel.
    pub tunnel_ip: IpAddr,
    /// Primary appliance.
    pub primary: ApplianceId,
    /// Shadow appliance, in another region.
    pub shadow: ApplianceId,
}

/// The region of an appliance, locked against removal until the transaction ends.
async fn appliance_region(
    tx: &mut sqlx::PgConnection,
    id: &ApplianceId,
) -> Result<String, InventoryError> {
    sqlx::query_scalar!(
        "SELECT region FROM appliances WHERE id = $1 FOR SHARE",
        id.as_str()
    )
    .fetch_optional(tx)
    .await?
    .ok_or_else(|| InventoryError::UnknownAppliance(id.to_string()))
}

/// Adds a client with a newly allocated peer index, which it returns.
pub async fn add_client(pool: &PgPool, new: &NewClient) -> Result<PeerIndex, InventoryError> {
    if new.primary == new.shadow {
        return Err(InventoryError::SameAppliance(new.primary.clone()));
    }
    if new.tunnel_ip.is_unspecified() || new.tunnel_ip.is_multicast() {
        return Err(InventoryError::Invalid(format!(
            "tunnel ip {} is not a host address",
            new.tunnel_ip
        )));
    }
    let mut tx = pool.begin().await?;
    let primary_region = appliance_region(&mut tx, &new.primary).await?;
    let shadow_region = appliance_region(&mut tx, &new.shadow).await?;
    if primary_region == shadow_region {
        return Err(InventoryError::SameRegion {
            primary: new.primary.clone(),
            shadow: new.shadow.clone(),
            region: primary_region,
        });
    }
    // A random free index: unique across regions without coordination (a collision between
    // regions needs two allocations of the same one of 16.7M values within the replication lag).
    for _ in 0..64 {
        let candidate = rand::Rng::gen_range(&mut rand::thread_rng(), 1..=PeerIndex::MAX) as i32;
        let inserted = sqlx::query_scalar!(
            "INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance)
             VALUES ($1, $2, $3, $4::text::inet, $5, $6, $7)
             ON CONFLICT (peer_index) DO NOTHING
             RETURNING peer_index",
            primary_region,
            new.id.as_str(),
            new.public_key.to_base64(),
            new.tunnel_ip.to_string(),
            candidate,
            new.primary.as_str(),
            new.shadow.as_str(),
        )
        .fetch_optional(&mut *tx)
        .await;
        match inserted {
            Ok(Some(index)) => {
                tx.commit().await?;
                return PeerIndex::new(i64::from(index)).map_err(|e| invalid_row("clients", e));
            }
            Ok(None) => continue,
            Err(e) => {
                return Err(match unique_violation(&e) {
                    Some("clients_pkey" | "clients_id_key") => InventoryError::Duplicate {
                        what: "client id",
                        value: new.id.to_string(),
                    },
                    Some("clients_public_key_key") => InventoryError::Duplicate {
                        what: "public key",
                        value: new.public_key.to_base64(),
                    },
                    Some("clients_tunnel_ip_key") => InventoryError::Duplicate {
                        what: "tunnel ip",
                        value: new.tunnel_ip.to_string(),
                    },
                    _ => match foreign_key_violation(&e) {
                        // An appliance removed between our check and the insert.
                        Some(_) => InventoryError::UnknownAppliance(format!(
                            "{} or {}",
                            new.primary, new.shadow
                        )),
                        None => e.into(),
                    },
                });
            }
        }
    }
    Err(InventoryError::Invalid(
        "no free peer index found; the 24-bit index space is nearly full".into(),
    ))
}

/// Every client, ordered by id.
pub async fn list_clients(pool: &PgPool) -> Result<Vec<Client>, InventoryError> {
    let rows = sqlx::query!(
        r#"SELECT id, region, public_key, host(tunnel_ip) AS "tunnel_ip!", peer_index,
                  primary_appliance, shadow_appliance
           FROM clients ORDER BY id"#
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let bad = |e: &dyn std::fmt::Display| invalid_row("clients", e);
            Ok(Client {
                id: ClientId::new(r.id).map_err(|e| bad(&e))?,
                region: RegionId::new(r.region).map_err(|e| bad(&e))?,
                public_key: r.public_key.parse().map_err(|e: KeyError| bad(&e))?,
                tunnel_ip: r
                    .tunnel_ip
                    .parse()
                    .map_err(|e: std::net::AddrParseError| bad(&e))?,
                peer_index: PeerIndex::new(i64::from(r.peer_index)).map_err(|e| bad(&e))?,
                primary: ApplianceId::new(r.primary_appliance).map_err(|e| bad(&e))?,
                shadow: ApplianceId::new(r.shadow_appliance).map_err(|e| bad(&e))?,
            })
        })
        .collect()
}

/// Removes a client and its session rows.
pub async fn remove_client(pool: &PgPool, id: &ClientId) -> Result<(), InventoryError> {
    let done = sqlx::query!("DELETE FROM clients WHERE id = $1", id.as_str())
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(InventoryError::NotFound {
            what: "client",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Kinds of advisory.
pub const ADVISORY_KINDS: [&str; 4] = [
    "geopolitical",
    "environmental",
    "maintenance",
    "operational",
];

/// What an advisory applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", content = "id", rename_all = "lowercase")]
pub enum AdvisoryScope {
    /// One appliance.
    Appliance(ApplianceId),
    /// Every appliance of a region.
    Region(RegionId),
}

/// An advisory as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Advisory {
    /// Its id.
    pub id: Uuid,
    /// What it says.
    #[serde(flatten)]
    pub spec: NewAdvisory,
}

/// An advisory's content: what `advisory add` needs.
#[derive(Debug, Clone, Serialize)]
pub struct NewAdvisory {
    /// What it applies to.
    pub scope: AdvisoryScope,
    /// Kind; one of [`ADVISORY_KINDS`].
    pub kind: String,
    /// Risk while active.
    pub risk: Probability,
    /// Start of its window.
    pub starts_at: DateTime<Utc>,
    /// End of its window; open-ended when absent.
    pub ends_at: Option<DateTime<Utc>>,
    /// Free text, at most 1000 characters.
    pub note: String,
}

impl NewAdvisory {
    /// Whether the advisory is in force at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && self.ends_at.is_none_or(|end| now < end)
    }
}

/// Adds an advisory and returns its id.
pub async fn add_advisory(pool: &PgPool, new: &NewAdvisory) -> Result<Uuid, InventoryError> {
    if !ADVISORY_KINDS.contains(&new.kind.as_str()) {
        return Err(InventoryError::Invalid(format!(
            "unknown advisory kind {:?}; use one of {}",
            new.kind,
            ADVISORY_KINDS.join(", ")
        )));
    }
    if new.note.chars().count() > 1000 {
        return Err(InventoryError::Invalid(
            "note is longer than 1000 characters".into(),
        ));
    }
    if new.ends_at.is_some_and(|end| end <= new.starts_at) {
        return Err(InventoryError::Invalid(
            "advisory must end after it starts".into(),
        ));
    }
    let (region, appliance, scope_region) = match &new.scope {
        AdvisoryScope::Appliance(a) => {
            let region =
                sqlx::query_scalar!("SELECT region FROM appliances WHERE id = $1", a.as_str())
                    .fetch_optional(pool)
                    .await?
                    .ok_or_else(|| InventoryError::UnknownAppliance(a.to_string()))?;
            (region, Some(a.as_str().to_owned()), None)
        }
        AdvisoryScope::Region(r) => {
            let known = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM regions WHERE region = $1) AS "known!""#,
                r.as_str()
            )
            .fetch_one(pool)
            .await?;
            if !known {
                return Err(InventoryError::NotFound {
                    what: "region",
                    id: r.to_string(),
                });
            }
            (r.to_string(), None, Some(r.to_string()))
        }
    };
    let id = sqlx::query_scalar!(
        "INSERT INTO advisories (region, appliance_id, scope_region, kind, risk, starts_at, ends_at, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        region,
        appliance,
        scope_region,
        new.kind,
        new.risk.get(),
        new.starts_at,
        new.ends_at,
        new.note,
    )
    .fetch_one(pool)
    .await;
    match id {
        Ok(id) => Ok(id),
        Err(e) if foreign_key_violation(&e).is_some() => Err(InventoryError::UnknownAppliance(
            appliance.unwrap_or_default(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Every advisory, newest start first.
pub async fn list_advisories(pool: &PgPool) -> Result<Vec<Advisory>, InventoryError> {
    let rows = sqlx::query!(
        "SELECT id, appliance_id, scope_region, kind, risk, starts_at, ends_at, note
         FROM advisories ORDER BY starts_at DESC, id"
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let bad = |e: &dyn std::fmt::Display| invalid_row("advisories", e);
            let scope = match (r.appliance_id, r.scope_region) {
                (Some(a), None) => {
                    AdvisoryScope::Appliance(ApplianceId::new(a).map_err(|e| bad(&e))?)
                }
                (None, Some(g)) => AdvisoryScope::Region(RegionId::new(g).map_err(|e| bad(&e))?),
                _ => return Err(bad(&"advisory without a single scope")),
            };
            Ok(Advisory {
                id: r.id,
                spec: NewAdvisory {
                    scope,
                    kind: r.kind,
                    risk: Probability::new(r.risk).map_err(|e| bad(&e))?,
                    starts_at: r.starts_at,
                    ends_at: r.ends_at,
                    note: r.note,
                },
            })
        })
        .collect()
}

/// Removes the advisory whose id is `id` or starts with `id` (at least 4 hex digits).
pub async fn remove_advisory(pool: &PgPool, id: &str) -> Result<Uuid, InventoryError> {
    let prefix = id.trim().to_ascii_lowercase();
    if prefix.len() < 4
        || prefix.len() > 36
        || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(InventoryError::Invalid(format!(
            "advisory id {id:?} must be a uuid or a prefix of at least 4 hex digits"
        )));
    }
    let mut tx = pool.begin().await?;
    let matches = sqlx::query_scalar!(
        "SELECT id FROM advisories WHERE id::text LIKE $1 || '%' FOR UPDATE",
        prefix
    )
    .fetch_all(&mut *tx)
    .await?;
    let target = match matches.as_slice() {
        [] => {
            return Err(InventoryError::NotFound {
                what: "advisory",
                id: id.to_owned(),
            });
        }
        [one] => *one,
        _ => return Err(InventoryError::Ambiguous(id.to_owned())),
    };
    sqlx::query!("DELETE FROM advisories WHERE id = $1", target)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(target)
}
