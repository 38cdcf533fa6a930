//! HAProxy `agent-check` responder: a load balancer in front of appliances (TCP or UDP
//! services beside WireGuard, or a fleet of gateways) asks each appliance's agent how much
//! traffic it should get.
//!
//! Protocol (HAProxy `agent-check`): HAProxy connects to `lb_check.listen`, the agent writes
//! one line and closes. The line ([`LbState::reply`]):
//! - `ready up N%` while active: the weight falls as the appliance's risk rises
//!   (`N = round(100 × (1 − risk))`, risk = the model's score combined with the advisories in
//!   force, as steering combines them), `ready` cancelling an earlier `drain`;
//! - `drain` when an operator drained it (no new connections, existing ones stay);
//! - `down` when it is marked down, has an open failure event, or is not in the inventory;
//! - `up 100%` until the first successful read of the database (an agent started during a
//!   database outage still forwards traffic).
//!
//! The state is re-read every `lb_check.refresh`; while the database is away the last known
//! answer stands. The model's score counts only if a scorer confirmed it within
//! `lb_check.max_score_age`, the highest of several regions' (as steering reads them); a stale
//! one is left out rather than counted high as steering does: steering moves each client to
//! its shadow, but a weight of zero on every backend at a scorer outage would stop the pool.
//! The core ([`LbState`]) is pure; [`run`] owns the socket and the timer.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{ApplianceId, Probability};
use crate::steering::risk::combine;
use crate::store::lb_status::{self, LbStatusRow};

/// Longest time a check connection may take to accept our line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the load balancer is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbState {
    /// Nothing read from the database yet.
    Unknown,
    /// Active, with its combined risk.
    Active {
        /// Model score combined with advisories.
        risk: Probability,
    },
    /// Drained by an operator.
    Draining,
    /// Marked down, failed, or not in the inventory.
    Down,
}

impl LbState {
    /// The state from the stored status (`None`: not in the inventory).
    pub fn from_row(row: Option<&LbStatusRow>) -> Self {
        let Some(row) = row else { return Self::Down };
        if row.failed || row.state == "down" {
            return Self::Down;
        }
        if row.state == "draining" {
            return Self::Draining;
        }
        let model = Probability::saturating(row.score.unwrap_or(0.0));
        let advisories = row.advisories.iter().map(|a| Probability::saturating(*a));
        Self::Active {
            risk: combine(model, advisories),
        }
    }

    /// The agent-check reply line.
    pub fn reply(&self) -> String {
        match self {
            Self::Unknown => "up 100%\n".to_owned(),
            Self::Active { risk } => format!("ready up {}%\n", weight_percent(*risk)),
            Self::Draining => "drain\n".to_owned(),
            Self::Down => "down\n".to_owned(),
        }
    }
}

/// Weight in percent of the configured weight: 100 at no risk, 0 at certain failure.
pub fn weight_percent(risk: Probability) -> u8 {
    ((1.0 - risk.get()) * 100.0).round().clamp(0.0, 100.0) as u8
}

/// Answers agent checks on `listen` until shutdown, re-reading `appliance`'s status every
/// `refresh` (model scores older than `max_score_age` left out). A listener that cannot be
/// bound is logged and the agent runs on without it.
pub async fn run(
    listen: SocketAddr,
    pool: PgPool,
    appliance: ApplianceId,
    refresh: Duration,
    max_score_age: Duration,
    shutdown: CancellationToken,
) {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %listen, error = %e, "cannot bind the load-balancer check; running without it");
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(addr = %addr, "load-balancer check (HAProxy agent-check) listening");
    let (tx, rx) = watch::channel(LbState::Unknown);
    tokio::join!(
        refresh_loop(
            pool,
            appliance,
            refresh,
            max_score_age,
            tx,
            shutdown.clone()
        ),
        answer_loop(listener, rx, shutdown),
    );
}

async fn refresh_loop(
    pool: PgPool,
    appliance: ApplianceId,
    refresh: Duration,
    max_score_age: Duration,
    state: watch::Sender<LbState>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match lb_status::read(&pool, appliance.as_str(), Utc::now(), max_score_age).await {
            Ok(row) => {
                let next = LbState::from_row(row.as_ref());
                state.send_if_modified(|s| {
                    let changed = *s != next;
                    *s = next;
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "load-balancer check: keeping the last state"),
        }
    }
}

async fn answer_loop(
    listener: TcpListener,
    state: watch::Receiver<LbState>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let line = state.borrow().reply();
        // One short write per connection; a client that does not read is cut off.
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, failed: bool, score: Option<f64>, advisories: &[f64]) -> LbStatusRow {
        LbStatusRow {
            state: state.into(),
            failed,
            score,
            advisories: advisories.to_vec(),
        }
    }

    #[test]
    fn replies() {
        assert_eq!(LbState::Unknown.reply(), "up 100%\n");
        assert_eq!(LbState::from_row(None).reply(), "down\n");
        assert_eq!(
            LbState::from_row(Some(&row("active", false, None, &[]))).reply(),
            "ready up 100%\n"
        );
        assert_eq!(
            LbState::from_row(Some(&row("active", false, Some(0.25), &[]))).reply(),
            "ready up 75%\n"
        );
        // Advisories combine with the model as steering combines them: 1 - 0.5 * 0.5.
        assert_eq!(
            LbState::from_row(Some(&row("active", false, Some(0.5), &[0.5]))).reply(),
            "ready up 25%\n"
        );
        assert_eq!(
            LbState::from_row(Some(&row("draining", false, Some(0.9), &[]))).reply(),
            "drain\n"
        );
        assert_eq!(
            LbState::from_row(Some(&row("down", false, None, &[]))).reply(),
            "down\n"
        );
        assert_eq!(
            LbState::from_row(Some(&row("active", true, None, &[]))).reply(),
            "down\n"
        );
    }

    #[test]
    fn weight_falls_with_risk() {
        let mut last = 101u8;
        for i in 0..=100 {
            let w = weight_percent(Probability::saturating(f64::from(i) / 100.0));
            assert!(w < last || (w == last && w == 0) || i == 0);
            last = w;
        }
        assert_eq!(weight_percent(Probability::saturating(1.0)), 0);
    }
}
