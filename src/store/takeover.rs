//! What the takeover task reads and writes: the shadow group of an appliance (its sessions with
//! their highest claim, last endpoint and latest steering decision; the group's appliances),
//! claims, failure events of group peers, and operator failback requests.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::domain::{ApplianceId, ClientId, Epoch, PeerIndex, RegionId};
use crate::takeover::{Assignment, Claim, ClaimReason, SessionView};

/// Reason text of an operator's failback decision (`steering_decisions.reason`).
pub const OPERATOR_FAILBACK: &str = "operator failback";

fn invalid(table: &'static str, e: impl ToString) -> StoreError {
    StoreError::InvalidRow {
        table,
        message: e.to_string(),
    }
}

/// The appliance's view of its shadow group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// This appliance's region.
    pub region: RegionId,
    /// The other appliances sharing a session with this one, with their WireGuard endpoints
    /// (heartbeats go there).
    pub peers: Vec<(ApplianceId, SocketAddr)>,
    /// Every session this appliance is primary or shadow of.
    pub sessions: Vec<SessionView>,
}

struct Row {
    id: String,
    peer_index: i32,
    primary_appliance: String,
    shadow_appliance: String,
    epoch: Option<i64>,
    claim_region: Option<String>,
    holder: Option<String>,
    claimed_at: Option<DateTime<Utc>>,
    claim_reason: Option<String>,
    ip: Option<String>,
    port: Option<i32>,
    to_appliance: Option<String>,
    decided_at: Option<DateTime<Utc>>,
    reason: Option<String>,
}

fn view(r: Row) -> Result<SessionView, StoreError> {
    let bad = |e: &dyn std::fmt::Display| invalid("session_state", e);
    let claim = match (r.epoch, r.claim_region, r.holder) {
        (Some(e), Some(region), Some(holder)) => Some(Claim {
            epoch: Epoch::from_db(e).map_err(|e| bad(&e))?,
            region: RegionId::new(region).map_err(|e| bad(&e))?,
            holder: ApplianceId::new(holder).map_err(|e| bad(&e))?,
            claimed_at: r.claimed_at,
            make_before_break: matches!(r.claim_reason.as_deref(), Some("predicted" | "failback")),
        }),
        _ => None,
    };
    let endpoint = match (r.ip, r.port) {
        (Some(ip), Some(port)) => Some(SocketAddr::new(
            ip.parse::<IpAddr>().map_err(|e| bad(&e))?,
            u16::try_from(port).map_err(|e| bad(&e))?,
        )),
        _ => None,
    };
    let assigned = match r.decided_at {
        Some(at) => Some(Assignment {
            to: r
                .to_appliance
                .map(ApplianceId::new)
                .transpose()
                .map_err(|e| bad(&e))?,
            at,
            manual: r.reason.as_deref() == Some(OPERATOR_FAILBACK),
        }),
        None => None,
    };
    Ok(SessionView {
        client: ClientId::new(r.id).map_err(|e| bad(&e))?,
        peer: PeerIndex::new(i64::from(r.peer_index)).map_err(|e| bad(&e))?,
        primary: ApplianceId::new(r.primary_appliance).map_err(|e| bad(&e))?,
        shadow: ApplianceId::new(r.shadow_appliance).map_err(|e| bad(&e))?,
        claim,
        endpoint,
        assigned,
    })
}

/// Sessions of `appliance`, or of some clients of it (`only`).
async fn sessions(
    pool: &PgPool,
    appliance: &ApplianceId,
    only: Option<&[String]>,
) -> Result<Vec<SessionView>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT c.id, c.peer_index, c.primary_appliance, c.shadow_appliance,
                  h.epoch AS "epoch?", h.region AS "claim_region?", h.holder AS "holder?",
                  h.claimed_at AS "claimed_at?", h.claim_reason AS "claim_reason?",
                  e.ip AS "ip?", e.port AS "port?",
                  d.to_appliance AS "to_appliance?", d.decided_at AS "decided_at?",
                  d.reason AS "reason?"
           FROM clients c
           LEFT JOIN LATERAL (
               SELECT s.epoch, s.region, s.holder, s.claimed_at, s.claim_reason FROM session_state s
               WHERE s.client_id = c.id ORDER BY s.epoch DESC, s.region DESC LIMIT 1) h ON true
           LEFT JOIN LATERAL (
               SELECT host(s.endpoint_ip) AS ip, s.endpoint_port AS port FROM session_state s
               WHERE s.client_id = c.id AND s.endpoint_ip IS NOT NULL
               ORDER BY (s.holder = h.holder) DESC, s.last_handshake_at DESC NULLS LAST,
                        s.updated_at DESC
               LIMIT 1) e ON true
           LEFT JOIN LATERAL (
               SELECT d.to_appliance, d.decided_at, d.reason FROM steering_decisions d
               WHERE d.client_id = c.id ORDER BY d.decided_at DESC, d.id DESC LIMIT 1) d ON true
           WHERE (c.primary_appliance = $1 OR c.shadow_appliance = $1)
             AND ($2::text[] IS NULL OR c.id = ANY($2))
           ORDER BY c.peer_index"#,
        appliance.as_str(),
        only,
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(view).collect()
}

/// The whole group of `appliance`; `None` when the appliance is not in the inventory.
pub async fn load_group(
    pool: &PgPool,
    appliance: &ApplianceId,
) -> Result<Option<Group>, StoreError> {
    let Some(region) = super::appliance_region(pool, appliance).await? else {
        return Ok(None);
    };
    let sessions = sessions(pool, appliance, None).await?;
    let peers = sqlx::query!(
        r#"SELECT a.id, host(a.endpoint_ip) AS "ip!", a.endpoint_port
           FROM appliances a
           WHERE a.id <> $1 AND EXISTS (
               SELECT 1 FROM clients c
               WHERE (c.primary_appliance = $1 AND c.shadow_appliance = a.id)
                  OR (c.shadow_appliance = $1 AND c.primary_appliance = a.id))
           ORDER BY a.id"#,
        appliance.as_str()
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        let bad = |e: &dyn std::fmt::Display| invalid("appliances", e);
        Ok((
            ApplianceId::new(r.id).map_err(|e| bad(&e))?,
            SocketAddr::new(
                r.ip.parse::<IpAddr>().map_err(|e| bad(&e))?,
                u16::try_from(r.endpoint_port).map_err(|e| bad(&e))?,
            ),
        ))
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Group {
        region,
        peers,
        sessions,
    }))
}

/// Some clients' sessions as seen by `appliance`; a client missing from the result is no
/// longer one of its sessions.
pub async fn load_sessions(
    pool: &PgPool,
    appliance: &ApplianceId,
    clients: &[ClientId],
) -> Result<Vec<SessionView>, StoreError> {
    let ids: Vec<String> = clients.iter().map(|c| c.as_str().to_owned()).collect();
    sessions(pool, appliance, Some(&ids)).await
}

/// A claim to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimWrite {
    /// The client.
    pub client: ClientId,
    /// Its peer index.
    pub peer: PeerIndex,
    /// The new epoch.
    pub epoch: Epoch,
    /// Why.
    pub reason: ClaimReason,
    /// Where the client was last seen (kept in the row for the next takeover).
    pub endpoint: Option<SocketAddr>,
    /// Whether the claiming appliance is the client's primary.
    pub primary: bool,
}

/// Records claims in `region`'s rows, held by `holder`. A row whose epoch is already at or
/// above the claim's is left alone (the database's fence would refuse a lower one anyway).
/// Returns the clients whose claim was stored.
pub async fn write_claims(
    pool: &PgPool,
    region: &RegionId,
    holder: &ApplianceId,
    claims: &[ClaimWrite],
) -> Result<Vec<ClientId>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let client: Vec<&str> = claims.iter().map(|c| c.client.as_str()).collect();
    let peer: Vec<i32> = claims.iter().map(|c| c.peer.get() as i32).collect();
    let epoch: Vec<i64> = claims.iter().map(|c| c.epoch.to_db()).collect();
    let reason: Vec<&str> = claims.iter().map(|c| c.reason.as_str()).collect();
    let role: Vec<&str> = claims
        .iter()
        .map(|c| if c.primary { "primary" } else { "shadow" })
        .collect();
    let ip: Vec<Option<String>> = claims
        .iter()
        .map(|c| c.endpoint.map(|e| e.ip().to_string()))
        .collect();
    let port: Vec<Option<i32>> = claims
        .iter()
        .map(|c| c.endpoint.map(|e| i32::from(e.port())))
        .collect();
    let stored = sqlx::query_scalar!(
        r#"INSERT INTO session_state
               (region, client_id, holder, role, epoch, peer_index, endpoint_ip, endpoint_port,
                claimed_at, claim_reason)
           SELECT $1, u.client, $2, u.role, u.epoch, u.peer, u.ip::inet, u.port, now(), u.reason
           FROM UNNEST($3::text[], $4::int4[], $5::int8[], $6::text[], $7::text[], $8::text[],
                       $9::int4[]) AS u(client, peer, epoch, reason, role, ip, port)
           WHERE EXISTS (SELECT 1 FROM clients c WHERE c.id = u.client)
           ON CONFLICT (region, client_id) DO UPDATE SET
               holder = EXCLUDED.holder,
               role = EXCLUDED.role,
               epoch = EXCLUDED.epoch,
               endpoint_ip = COALESCE(EXCLUDED.endpoint_ip, session_state.endpoint_ip),
               endpoint_port = CASE WHEN EXCLUDED.endpoint_ip IS NULL
                                    THEN session_state.endpoint_port
                                    ELSE EXCLUDED.endpoint_port END,
               claimed_at = EXCLUDED.claimed_at,
               claim_reason = EXCLUDED.claim_reason,
               version = session_state.version + 1,
               updated_at = now()
           WHERE session_state.epoch < EXCLUDED.epoch
           RETURNING client_id"#,
        region.as_str(),
        holder.as_str(),
        &client as &[&str],
        &peer,
        &epoch,
        &reason as &[&str],
        &role as &[&str],
        &ip as &[Option<String>],
        &port as &[Option<i32>],
    )
    .fetch_all(pool)
    .await?;
    stored
        .into_iter()
        .map(|id| ClientId::new(id).map_err(|e| invalid("session_state", e)))
        .collect()
}

/// Records that `region`'s agent lost heartbeats of `appliance` (an open failure event).
pub async fn open_failure(
    pool: &PgPool,
    region: &RegionId,
    appliance: &ApplianceId,
    started_at: DateTime<Utc>,
    note: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO failure_events (region, appliance_id, started_at, kind, note)
         SELECT $1, $2, $3, 'unreachable', $4
         WHERE NOT EXISTS (SELECT 1 FROM failure_events
                           WHERE region = $1 AND appliance_id = $2 AND ended_at IS NULL)
         ON CONFLICT DO NOTHING",
        region.as_str(),
        appliance.as_str(),
        started_at,
        note,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Closes `region`'s open failure event of `appliance` (heartbeats are back).
pub async fn close_failure(
    pool: &PgPool,
    region: &RegionId,
    appliance: &ApplianceId,
    ended_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE failure_events SET ended_at = GREATEST($3, started_at)
         WHERE region = $1 AND appliance_id = $2 AND ended_at IS NULL",
        region.as_str(),
        appliance.as_str(),
        ended_at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What `session failback` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailbackRequest {
    /// Clients asked to move back to their primary.
    pub clients: Vec<ClientId>,
}

/// An operator's failback: a steering decision naming the primary, for one client or for every
/// client of `primary`, written as a row of this database's own region (any region's database
/// will do: the decision replicates). The primary's agent claims them back by the
/// make-before-break path (also with `failback = "manual"`).
pub async fn request_failback(
    pool: &PgPool,
    client: Option<&ClientId>,
    primary: Option<&ApplianceId>,
) -> Result<FailbackRequest, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"INSERT INTO steering_decisions (region, client_id, from_appliance, to_appliance, reason, server)
           SELECT COALESCE((SELECT l.region FROM local_region l), a.region), c.id, h.holder,
                  c.primary_appliance, $3, 'cli'
           FROM clients c
           JOIN appliances a ON a.id = c.primary_appliance
           LEFT JOIN LATERAL (
               SELECT s.holder FROM session_state s WHERE s.client_id = c.id
               ORDER BY s.epoch DESC, s.region DESC LIMIT 1) h ON true
           WHERE ($1::text IS NULL OR c.id = $1)
             AND ($2::text IS NULL OR c.primary_appliance = $2)
           ORDER BY c.id
           RETURNING client_id"#,
        client.map(ClientId::as_str),
        primary.map(ApplianceId::as_str),
        OPERATOR_FAILBACK,
    )
    .fetch_all(pool)
    .await?;
    Ok(FailbackRequest {
        clients: rows
            .into_iter()
            .map(|id| ClientId::new(id).map_err(|e| invalid("steering_decisions", e)))
            .collect::<Result<_, _>>()?,
    })
}
