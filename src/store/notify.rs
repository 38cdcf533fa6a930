//! Change notifications sent by the schema's triggers on channel [`CHANNEL`].
//!
//! Notifications are hints, not a log: sqlx's `PgListener` reconnects by itself but loses what
//! was sent meanwhile, so a listener must re-read its state after every reconnect (and
//! periodically) rather than trust that it saw every change.

use serde::Deserialize;
use sqlx::postgres::{PgListener, PgNotification};

use super::StoreError;

/// The channel every trigger notifies on.
pub const CHANNEL: &str = "shadowsteer";

/// Tables whose changes are notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangedTable {
    /// `appliances`.
    Appliances,
    /// `clients`.
    Clients,
    /// `risk_scores`.
    RiskScores,
    /// `advisories`.
    Advisories,
    /// `session_state` (holder or epoch changes, inserts, deletes).
    SessionState,
    /// `steering_decisions` (one notification per transaction, empty key).
    SteeringDecisions,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Row inserted.
    Insert,
    /// Row updated.
    Update,
    /// Row deleted.
    Delete,
}

/// One change, as the trigger describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Change {
    /// Which table.
    pub table: ChangedTable,
    /// What happened.
    pub op: ChangeOp,
    /// The row's owning region.
    pub region: String,
    /// The row's key (appliance id, client id, advisory uuid, risk subject).
    pub key: String,
}

/// Largest payload accepted; the triggers send about 100 bytes.
const MAX_PAYLOAD: usize = 1024;

impl Change {
    /// Parses a notification payload; `None` for anything not from our triggers.
    pub fn parse(payload: &str) -> Option<Self> {
        if payload.len() > MAX_PAYLOAD {
            return None;
        }
        serde_json::from_str(payload).ok()
    }

    /// The change a notification carries, if it is one of ours.
    pub fn from_notification(n: &PgNotification) -> Option<Self> {
        (n.channel() == CHANNEL)
            .then(|| Self::parse(n.payload()))
            .flatten()
    }
}

/// A listener subscribed to [`CHANNEL`].
pub async fn listen(url: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect(url)
        .await
        .map_err(StoreError::Connect)?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trigger_payloads() {
        let c = Change::parse(r#"{"table":"appliances","op":"update","region":"eu","key":"eu-1"}"#)
            .unwrap();
        assert_eq!(c.table, ChangedTable::Appliances);
        assert_eq!(c.op, ChangeOp::Update);
        assert_eq!(c.key, "eu-1");
        assert!(
            Change::parse(r#"{"table":"nope","op":"update","region":"eu","key":"x"}"#).is_none()
        );
        assert!(Change::parse(&"x".repeat(5000)).is_none());
    }
}
