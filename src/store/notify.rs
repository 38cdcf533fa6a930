//! Change notifications sent by the schema's triggers on channel [`CHANNEL`].
//!
//! Notifications are hints, not a log: sqlx's `PgListener` reconnects by itself but loses what
//! was sent meanwhile, so a listener must re-read its state after every reconnect (and
//! periodically) rather than trust that it saw every change.

use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;

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

/// A listener subscribed to [`CHANNEL`], on a connection of its own (sqlx makes a pool of one
/// for it): it never holds a connection of the caller's query pool.
pub async fn listen(url: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect(url)
        .await
        .map_err(StoreError::Connect)?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// A listener subscribed to [`CHANNEL`] on one of `pool`'s connections, held for as long as the
/// listener lives (sqlx's `connect_with` acquires it): the pool must have room for it. This is
/// the difference from [`listen`], not a twin of it.
pub async fn listen_with(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// What a listener brought: every follower of [`CHANNEL`] reads it through [`recv`], so all
/// treat a gap and a failure alike.
#[derive(Debug)]
pub enum Notice {
    /// One of our changes.
    Change(Change),
    /// The connection dropped and sqlx re-established it (and re-issued LISTEN): changes may
    /// have been missed, so the follower's copy must be re-read.
    Gap,
    /// The listener failed; it must be connected again.
    Failed(sqlx::Error),
}

/// The next notice on `listener`; notifications not from our triggers are skipped.
pub async fn recv(listener: &mut PgListener) -> Notice {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(c) = Change::from_notification(&n) {
                    return Notice::Change(c);
                }
            }
            Ok(None) => return Notice::Gap,
            Err(e) => return Notice::Failed(e),
        }
    }
}

/// Wait between attempts while the database is unreachable or a re-read failed.
const RETRY: Duration = Duration::from_secs(1);

/// Follows [`CHANNEL`] for a task that keeps a copy of database state (an agent's roster, its
/// shadow group). Notifications are hints, so the copy is *stale*, to be re-read in full, at
/// start, after every (re)connect, when sqlx reports a gap, every `resync` period, and
/// whenever the task says so. Errors are logged once per distinct message, so that a database
/// that stays away does not flood the log.
pub struct Follower {
    url: String,
    /// The task's name in log lines.
    task: &'static str,
    listener: Option<PgListener>,
    stale: bool,
    resync: tokio::time::Interval,
    last_error: String,
}

/// What [`Follower::next`] heard.
#[derive(Debug)]
pub enum Heard {
    /// One of our changes.
    Change(Change),
    /// Nothing to act on, but the loop should go round (a retry is due, or the copy became
    /// stale).
    Nothing,
    /// The task is shutting down.
    Shutdown,
}

impl Follower {
    /// A follower that is stale and not yet connected.
    pub fn new(url: String, task: &'static str, resync: Duration) -> Self {
        let first = tokio::time::Instant::now() + resync;
        Self {
            url,
            task,
            listener: None,
            stale: true,
            resync: tokio::time::interval_at(first, resync),
            last_error: String::new(),
        }
    }

    /// Connects the listener if it is not connected; a new connection makes the copy stale
    /// (whatever was sent meanwhile is lost).
    pub async fn connect(&mut self) {
        if self.listener.is_some() {
            return;
        }
        match listen(&self.url).await {
            Ok(l) => {
                self.listener = Some(l);
                self.stale = true;
            }
            Err(e) => self.report(e),
        }
    }

    /// Whether the copy must be re-read in full.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The copy was re-read in full.
    pub fn refreshed(&mut self) {
        self.stale = false;
    }

    /// The copy can no longer be trusted (a partial update failed, a change needs a full read).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Logs `e` unless it is the last error logged.
    pub fn report(&mut self, e: impl std::fmt::Display) {
        let e = e.to_string();
        if e != self.last_error {
            tracing::warn!("{}: {e}", self.task);
            self.last_error = e;
        }
    }

    /// Waits for the next change, the resync period, a retry (while stale or disconnected) or
    /// `shutdown`.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Heard {
        let retry = self.stale || self.listener.is_none();
        let notice = async {
            match self.listener.as_mut() {
                Some(l) => recv(l).await,
                None => std::future::pending().await,
            }
        };
        let notice = tokio::select! {
            () = shutdown.cancelled() => return Heard::Shutdown,
            _ = self.resync.tick() => {
                self.stale = true;
                return Heard::Nothing;
            }
            () = tokio::time::sleep(RETRY), if retry => return Heard::Nothing,
            notice = notice => notice,
        };
        self.heard(notice).map_or(Heard::Nothing, Heard::Change)
    }

    /// The next change if one arrives before `until`; None at `until`, after a gap (the copy
    /// is then stale) or when the listener failed.
    pub async fn next_until(&mut self, until: tokio::time::Instant) -> Option<Change> {
        let l = self.listener.as_mut()?;
        let notice = tokio::time::timeout_at(until, recv(l)).await.ok()?;
        self.heard(notice)
    }

    fn heard(&mut self, notice: Notice) -> Option<Change> {
        match notice {
            Notice::Change(c) => Some(c),
            Notice::Gap => {
                self.stale = true;
                None
            }
            Notice::Failed(e) => {
                self.report(format!("listener failed: {e}"));
                self.listener = None;
                None
            }
        }
    }
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
