//! Appliances: input as the CLI and the API receive it, the rules it must meet, and the
//! service functions both call.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::InventoryError;
use crate::domain::{ApplianceId, ApplianceState, PublicKey, RegionId};
use crate::store::inventory as db;

/// Smallest and largest relative capacity.
pub const CAPACITY_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;
/// Capacity when none is given.
pub const DEFAULT_CAPACITY: u32 = 100;

/// An appliance as listed: `appliance list --json` and `GET /api/v1/appliances`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Appliance {
    /// Its id (a DNS label).
    #[schema(value_type = String, example = "eu-1")]
    pub id: ApplianceId,
    /// Owning region.
    #[schema(value_type = String, example = "eu")]
    pub region: RegionId,
    /// Public WireGuard endpoint, ip:port.
    #[schema(value_type = String, example = "203.0.113.10:51820")]
    pub endpoint: SocketAddr,
    /// WireGuard public key (base64) of the shadow group's service identity.
    #[schema(value_type = String)]
    pub public_key: PublicKey,
    /// Operational state: active, draining or down.
    #[schema(value_type = String, example = "active")]
    pub state: ApplianceState,
    /// Relative capacity.
    pub capacity: u32,
    /// Clients with this appliance as primary.
    pub primary_clients: i64,
    /// Clients with this appliance as shadow.
    pub shadow_clients: i64,
}

/// A new appliance before validation: the flags of `appliance add`, the body of
/// `POST /api/v1/appliances`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplianceInput {
    /// Appliance id (a DNS label, e.g. eu-1).
    #[schema(example = "eu-1")]
    pub id: String,
    /// Region it belongs to (created if new).
    #[schema(example = "eu")]
    pub region: String,
    /// Public WireGuard endpoint, ip:port.
    #[schema(example = "203.0.113.10:51820")]
    pub endpoint: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Relative capacity used to weight answers (1..=1000000, default 100).
    #[serde(default)]
    pub capacity: Option<i64>,
}

/// A validated new appliance.
#[derive(Debug, Clone)]
pub struct NewAppliance {
    /// Its id.
    pub id: ApplianceId,
    /// Owning region (created if new).
    pub region: RegionId,
    /// Public WireGuard endpoint (port not 0).
    pub endpoint: SocketAddr,
    /// Public key.
    pub public_key: PublicKey,
    /// Relative capacity, in [`CAPACITY_RANGE`].
    pub capacity: u32,
}

/// A change of an appliance's settings: the body of `PATCH /api/v1/appliances/{id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplianceUpdate {
    /// New public WireGuard endpoint, ip:port.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// New relative capacity (1..=1000000).
    #[serde(default)]
    pub capacity: Option<i64>,
}

/// Parses an appliance id.
pub fn parse_id(field: &'static str, id: &str) -> Result<ApplianceId, InventoryError> {
    ApplianceId::new(id).map_err(|e| InventoryError::invalid(field, e))
}

/// Parses a public endpoint: `ip:port` with a port other than 0.
pub fn parse_endpoint(text: &str) -> Result<SocketAddr, InventoryError> {
    let endpoint: SocketAddr = text.parse().map_err(|_| {
        InventoryError::invalid(
            "endpoint",
            format!("invalid endpoint {text:?}; write ip:port"),
        )
    })?;
    if endpoint.port() == 0 {
        return Err(InventoryError::invalid(
            "endpoint",
            "endpoint port must not be 0",
        ));
    }
    Ok(endpoint)
}

/// Checks a capacity against [`CAPACITY_RANGE`].
pub fn parse_capacity(capacity: i64) -> Result<u32, InventoryError> {
    if !CAPACITY_RANGE.contains(&capacity) {
        return Err(InventoryError::invalid(
            "capacity",
            format!("capacity {capacity} is outside 1..=1000000"),
        ));
    }
    u32::try_from(capacity).map_err(|e| InventoryError::invalid("capacity", e))
}

impl ApplianceInput {
    /// Validates every field; the first problem found is the error.
    pub fn parse(&self) -> Result<NewAppliance, InventoryError> {
        Ok(NewAppliance {
            id: parse_id("id", &self.id)?,
            region: RegionId::new(self.region.as_str())
                .map_err(|e| InventoryError::invalid("region", e))?,
            endpoint: parse_endpoint(&self.endpoint)?,
            public_key: self
                .public_key
                .parse::<PublicKey>()
                .map_err(|e| InventoryError::invalid("public_key", e))?,
            capacity: parse_capacity(self.capacity.unwrap_or(i64::from(DEFAULT_CAPACITY)))?,
        })
    }
}

/// A validated settings change.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplianceChange {
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New capacity.
    pub capacity: Option<u32>,
}

impl ApplianceUpdate {
    /// Validates the change; an empty change is refused.
    pub fn parse(&self) -> Result<ApplianceChange, InventoryError> {
        if self.endpoint.is_none() && self.capacity.is_none() {
            return Err(InventoryError::invalid(
                "body",
                "give endpoint or capacity to change",
            ));
        }
        Ok(ApplianceChange {
            endpoint: self.endpoint.as_deref().map(parse_endpoint).transpose()?,
            capacity: self.capacity.map(parse_capacity).transpose()?,
        })
    }
}

/// Adds an appliance (and its region, if new).
pub async fn add(pool: &PgPool, new: &NewAppliance) -> Result<(), InventoryError> {
    db::insert_appliance(pool, new).await
}

/// Every appliance, ordered by region and id.
pub async fn list(pool: &PgPool) -> Result<Vec<Appliance>, InventoryError> {
    db::list_appliances(pool, None).await
}

/// One appliance.
pub async fn get(pool: &PgPool, id: &ApplianceId) -> Result<Appliance, InventoryError> {
    db::list_appliances(pool, Some(id))
        .await?
        .pop()
        .ok_or_else(|| not_found(id))
}

/// Changes an appliance's endpoint and/or capacity.
pub async fn update(
    pool: &PgPool,
    id: &ApplianceId,
    change: ApplianceChange,
) -> Result<Appliance, InventoryError> {
    db::update_appliance(pool, id, change).await?;
    get(pool, id).await
}

/// Sets an appliance's operational state (drain, undrain, mark down).
pub async fn set_state(
    pool: &PgPool,
    id: &ApplianceId,
    state: ApplianceState,
) -> Result<(), InventoryError> {
    db::set_appliance_state(pool, id, state).await
}

/// Removes an appliance that no client uses (refused with [`InventoryError::InUse`]).
pub async fn remove(pool: &PgPool, id: &ApplianceId) -> Result<(), InventoryError> {
    db::remove_appliance(pool, id).await
}

/// The error for an appliance that does not exist.
pub fn not_found(id: &ApplianceId) -> InventoryError {
    InventoryError::NotFound {
        what: "appliance",
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ApplianceInput {
        ApplianceInput {
            id: "eu-1".into(),
            region: "eu".into(),
            endpoint: "203.0.113.10:51820".into(),
            public_key: crate::domain::SecretKey::generate()
                .public_key()
                .to_base64(),
            capacity: None,
        }
    }

    #[test]
    fn valid_input_parses_with_default_capacity() {
        let new = input().parse().unwrap();
        assert_eq!(new.capacity, DEFAULT_CAPACITY);
        assert_eq!(new.endpoint.port(), 51820);
    }

    #[test]
    fn each_rule_names_its_field() {
        type Edit = Box<dyn Fn(&mut ApplianceInput)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (Box::new(|i| i.id = "EU_1".into()), "id", "DNS label"),
            (Box::new(|i| i.region = "".into()), "region", "empty"),
            (
                Box::new(|i| i.endpoint = "1.2.3.4".into()),
                "endpoint",
                "invalid endpoint",
            ),
            (
                Box::new(|i| i.endpoint = "1.2.3.4:0".into()),
                "endpoint",
                "port",
            ),
            (
                Box::new(|i| i.public_key = "abc".into()),
                "public_key",
                "malformed key",
            ),
            (
                Box::new(|i| i.capacity = Some(0)),
                "capacity",
                "outside 1..=1000000",
            ),
            (
                Box::new(|i| i.capacity = Some(i64::MAX)),
                "capacity",
                "outside",
            ),
        ];
        for (edit, field, reason) in cases {
            let mut i = input();
            edit(&mut i);
            let e = i.parse().unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains(reason), "{e}");
        }
    }

    #[test]
    fn empty_update_is_refused() {
        assert!(ApplianceUpdate::default().parse().is_err());
        let c = ApplianceUpdate {
            capacity: Some(5),
            endpoint: None,
        }
        .parse()
        .unwrap();
        assert_eq!(c.capacity, Some(5));
    }
}
