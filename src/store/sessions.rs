//! What an appliance agent reads and writes: the clients it serves (its roster) and the
//! shadowed session state it records.
//!
//! Session writes carry only the fields that changed (the others keep their stored values) and
//! bump `version` once per write; a batch of writes is one statement per kind (update, insert).

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::domain::{
    ApplianceId, ClientId, PeerIndex, PublicKey, RegionId, SessionCounters, SessionRole,
};

/// A client an appliance serves, as primary or shadow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedClient {
    /// The client.
    pub id: ClientId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Its tunnel address.
    pub tunnel_ip: IpAddr,
    /// Its stable index.
    pub peer_index: PeerIndex,
    /// What this appliance is for it.
    pub role: SessionRole,
}

/// An appliance's region and the clients it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The appliance's region.
    pub region: RegionId,
    /// Its clients.
    pub clients: Vec<ServedClient>,
}

fn invalid(message: impl ToString) -> StoreError {
    StoreError::InvalidRow {
        table: "clients",
        message: message.to_string(),
    }
}

fn served(
    id: String,
    public_key: String,
    tunnel_ip: String,
    peer_index: i32,
    primary: String,
    appliance: &ApplianceId,
) -> Result<ServedClient, StoreError> {
    Ok(ServedClient {
        id: ClientId::new(id).map_err(invalid)?,
        public_key: public_key.parse().map_err(invalid)?,
        tunnel_ip: tunnel_ip.parse().map_err(invalid)?,
        peer_index: PeerIndex::new(i64::from(peer_index)).map_err(invalid)?,
        role: if primary == appliance.as_str() {
            SessionRole::Primary
        } else {
            SessionRole::Shadow
        },
    })
}

/// The roster of `appliance`; `None` when the appliance is not in the inventory.
pub async fn load_roster(
    pool: &PgPool,
    appliance: &ApplianceId,
) -> Result<Option<Roster>, StoreError> {
    let Some(region) = super::appliance_region(pool, appliance).await? else {
        return Ok(None);
    };
    let rows = sqlx::query!(
        r#"SELECT id, public_key, host(tunnel_ip) AS "tunnel_ip!", peer_index, primary_appliance
           FROM clients WHERE primary_appliance = $1 OR shadow_appliance = $1
           ORDER BY peer_index"#,
        appliance.as_str()
    )
    .fetch_all(pool)
    .await?;
    let clients = rows
        .into_iter()
        .map(|r| {
            served(
                r.id,
                r.public_key,
                r.tunnel_ip,
                r.peer_index,
                r.primary_appliance,
                appliance,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Roster { region, clients }))
}

/// One client, if `appliance` serves it.
pub async fn served_client(
    pool: &PgPool,
    appliance: &ApplianceId,
    client: &str,
) -> Result<Option<ServedClient>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT id, public_key, host(tunnel_ip) AS "tunnel_ip!", peer_index, primary_appliance
           FROM clients WHERE id = $1 AND (primary_appliance = $2 OR shadow_appliance = $2)"#,
        client,
        appliance.as_str()
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        served(
            r.id,
            r.public_key,
            r.tunnel_ip,
            r.peer_index,
            r.primary_appliance,
            appliance,
        )
    })
    .transpose()
}

/// What `shadowsteer client config` needs: the client's tunnel address and the service key of
/// its primary appliance.
pub async fn client_service(
    pool: &PgPool,
    client: &ClientId,
) -> Result<Option<(IpAddr, PublicKey)>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT host(c.tunnel_ip) AS "tunnel_ip!", a.public_key
           FROM clients c JOIN appliances a ON a.id = c.primary_appliance
           WHERE c.id = $1"#,
        client.as_str()
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok((
            r.tunnel_ip.parse().map_err(invalid)?,
            r.public_key.parse().map_err(invalid)?,
        ))
    })
    .transpose()
}

/// One session write: the full state, and which fields changed since the last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionWrite {
    /// The client.
    pub client: ClientId,
    /// Its stable index.
    pub peer_index: PeerIndex,
    /// What the holder is for it.
    pub role: SessionRole,
    /// Client endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Receiver index of the current session.
    pub receiver_index: Option<u32>,
    /// Last handshake.
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Counters.
    pub counters: SessionCounters,
    /// Which fields to write on an existing row.
    pub changed: ChangedFields,
}

/// Field groups of a session row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangedFields {
    /// `role`.
    pub role: bool,
    /// `endpoint_ip`, `endpoint_port`.
    pub endpoint: bool,
    /// `receiver_index`.
    pub receiver_index: bool,
    /// `last_handshake_at`.
    pub handshake: bool,
    /// The four counters.
    pub counters: bool,
}

impl ChangedFields {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.role || self.endpoint || self.receiver_index || self.handshake || self.counters
    }
}

fn i64_sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes a batch of session changes held by `holder` in `region`. Returns the clients written
/// (a row held by another appliance of the region is left alone: it is not ours to change).
pub async fn write_sessions(
    pool: &PgPool,
    region: &RegionId,
    holder: &ApplianceId,
    writes: &[SessionWrite],
) -> Result<Vec<ClientId>, StoreError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let n = writes.len();
    let mut client = Vec::with_capacity(n);
    let mut role = Vec::with_capacity(n);
    let mut ip: Vec<Option<String>> = Vec::with_capacity(n);
    let mut port: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut peer_index = Vec::with_capacity(n);
    let mut receiver: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut handshake: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let (mut txp, mut rxp, mut txb, mut rxb) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut c_role, mut c_ep, mut c_ri, mut c_hs, mut c_ctr) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for w in writes {
        client.push(w.client.as_str());
        role.push(w.role.as_str());
        ip.push(w.endpoint.map(|e| e.ip().to_string()));
        port.push(w.endpoint.map(|e| i32::from(e.port())));
        peer_index.push(w.peer_index.get() as i32);
        receiver.push(w.receiver_index.map(i64::from));
        handshake.push(w.last_handshake_at);
        txp.push(i64_sat(w.counters.tx_packets));
        rxp.push(i64_sat(w.counters.rx_packets));
        txb.push(i64_sat(w.counters.tx_bytes));
        rxb.push(i64_sat(w.counters.rx_bytes));
        c_role.push(w.changed.role);
        c_ep.push(w.changed.endpoint);
        c_ri.push(w.changed.receiver_index);
        c_hs.push(w.changed.handshake);
        c_ctr.push(w.changed.counters);
    }
    let mut tx = pool.begin().await?;
    let updated = sqlx::query_scalar!(
        r#"UPDATE session_state s SET
               role = CASE WHEN u.c_role THEN u.role ELSE s.role END,
               endpoint_ip = CASE WHEN u.c_ep THEN u.ip::inet ELSE s.endpoint_ip END,
               endpoint_port = CASE WHEN u.c_ep THEN u.port ELSE s.endpoint_port END,
               receiver_index = CASE WHEN u.c_ri THEN u.ri ELSE s.receiver_index END,
               last_handshake_at = CASE WHEN u.c_hs THEN u.hs ELSE s.last_handshake_at END,
               tx_packets = CASE WHEN u.c_ctr THEN u.txp ELSE s.tx_packets END,
               rx_packets = CASE WHEN u.c_ctr THEN u.rxp ELSE s.rx_packets END,
               tx_bytes = CASE WHEN u.c_ctr THEN u.txb ELSE s.tx_bytes END,
               rx_bytes = CASE WHEN u.c_ctr THEN u.rxb ELSE s.rx_bytes END,
               version = s.version + 1,
               updated_at = now()
           FROM UNNEST($3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[],
                       $8::timestamptz[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
                       $13::bool[], $14::bool[], $15::bool[], $16::bool[], $17::bool[])
                AS u(client_id, role, ip, port, ri, hs, txp, rxp, txb, rxb,
                     c_role, c_ep, c_ri, c_hs, c_ctr)
           WHERE s.region = $1 AND s.client_id = u.client_id AND s.holder = $2
           RETURNING s.client_id"#,
        region.as_str(),
        holder.as_str(),
        &client as &[&str],
        &role as &[&str],
        &ip as &[Option<String>],
        &port as &[Option<i32>],
        &receiver as &[Option<i64>],
        &handshake as &[Option<DateTime<Utc>>],
        &txp,
        &rxp,
        &txb,
        &rxb,
        &c_role,
        &c_ep,
        &c_ri,
        &c_hs,
        &c_ctr,
    )
    .fetch_all(&mut *tx)
    .await?;
    // Rows just updated exist, so their insert conflicts and does nothing (one index probe
    // each: linear in the batch, where filtering them out with `<> ALL(updated)` was
    // quadratic).
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO session_state
               (region, client_id, holder, role, endpoint_ip, endpoint_port, peer_index,
                receiver_index, last_handshake_at, tx_packets, rx_packets, tx_bytes, rx_bytes)
           SELECT $1, u.client_id, $2, u.role, u.ip::inet, u.port, u.peer_index, u.ri, u.hs,
                  u.txp, u.rxp, u.txb, u.rxb
           FROM UNNEST($3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[], $8::int8[],
                       $9::timestamptz[], $10::int8[], $11::int8[], $12::int8[], $13::int8[])
                AS u(client_id, role, ip, port, peer_index, ri, hs, txp, rxp, txb, rxb)
           WHERE EXISTS (SELECT 1 FROM clients c WHERE c.id = u.client_id)
           ON CONFLICT (region, client_id) DO NOTHING
           RETURNING client_id"#,
        region.as_str(),
        holder.as_str(),
        &client as &[&str],
        &role as &[&str],
        &ip as &[Option<String>],
        &port as &[Option<i32>],
        &peer_index,
        &receiver as &[Option<i64>],
        &handshake as &[Option<DateTime<Utc>>],
        &txp,
        &rxp,
        &txb,
        &rxb,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    updated
        .into_iter()
        .chain(inserted)
        .map(|id| ClientId::new(id).map_err(invalid))
        .collect()
}
