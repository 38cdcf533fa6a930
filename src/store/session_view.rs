//! Read-only views of `session_state` for the admin API: who holds each shadowed session, at
//! which epoch, with its endpoint, last handshake and counters. (The agents' writes live in
//! `sessions`; this module only reads.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::StoreError;

/// One row of `session_state` as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    /// Region that owns (wrote) the row.
    pub region: String,
    /// The client.
    pub client: String,
    /// Appliance holding the session.
    pub holder: String,
    /// What the holder is for the client: primary or shadow.
    pub role: String,
    /// Fencing epoch (highest wins).
    pub epoch: i64,
    /// The client's last endpoint (ip:port), if known.
    pub endpoint: Option<String>,
    /// The client's stable peer index.
    pub peer_index: i32,
    /// Last receiver index the holder chose.
    pub receiver_index: Option<i64>,
    /// Last completed handshake.
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Packets sent to the client (last checkpoint).
    pub tx_packets: i64,
    /// Packets received from the client.
    pub rx_packets: i64,
    /// Bytes sent.
    pub tx_bytes: i64,
    /// Bytes received.
    pub rx_bytes: i64,
    /// Row version (+1 per write).
    pub version: i64,
    /// Last write.
    pub updated_at: DateTime<Utc>,
}

/// Sessions ordered by client and region: of one `holder` and/or `client` when given, with
/// clients after `after`, at most `limit`.
pub async fn list(
    pool: &PgPool,
    holder: Option<&str>,
    client: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SessionView>, StoreError> {
    Ok(sqlx::query_as!(
        SessionView,
        r#"SELECT region, client_id AS client, holder, role, epoch,
                  CASE WHEN endpoint_ip IS NULL THEN NULL
                       WHEN family(endpoint_ip) = 6 THEN '[' || host(endpoint_ip) || ']:' || endpoint_port
                       ELSE host(endpoint_ip) || ':' || endpoint_port END AS endpoint,
                  peer_index, receiver_index, last_handshake_at,
                  tx_packets, rx_packets, tx_bytes, rx_bytes, version, updated_at
           FROM session_state
           WHERE ($1::text IS NULL OR holder = $1)
             AND ($2::text IS NULL OR client_id = $2)
             AND ($3::text IS NULL OR client_id > $3)
           ORDER BY client_id, region LIMIT $4"#,
        holder,
        client,
        after,
        limit
    )
    .fetch_all(pool)
    .await?)
}
