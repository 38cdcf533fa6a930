//! The agent's roster shell: loads the clients this appliance serves from the database, keeps
//! the data plane's peers in step with notifications, and re-reads everything after a listener
//! reconnect (notifications sent meanwhile are lost) and periodically.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{ApplianceId, ClientId, PeerIndex, RegionId, SessionRole};
use crate::store::notify::{Change, ChangeOp, ChangedTable, Follower, Heard};
use crate::store::sessions::{self, ServedClient};
use crate::tunnel::device::PeerCommand;
use crate::tunnel::peer::PeerSpec;

/// How often the whole roster is re-read even without notifications.
const RECONCILE: Duration = Duration::from_secs(60);

/// Who the appliance's clients are, for the recorder and telemetry.
#[derive(Debug, Default)]
pub struct RosterView {
    /// The appliance's region, once read.
    pub region: Option<RegionId>,
    /// Clients by peer index.
    pub by_index: HashMap<PeerIndex, (ClientId, SessionRole)>,
}

/// The roster shared between tasks (never locked across an await).
pub type SharedRoster = Arc<RwLock<RosterView>>;

fn spec(c: &ServedClient) -> PeerSpec {
    PeerSpec {
        index: c.peer_index,
        public_key: c.public_key,
        tunnel_ip: c.tunnel_ip,
        keepalive: None,
    }
}

/// Keeps the data plane's peers, and the roster view, in step with the clients this
/// appliance serves.
struct PeerSync {
    pool: PgPool,
    appliance: ApplianceId,
    commands: mpsc::Sender<PeerCommand>,
    view: SharedRoster,
    by_id: HashMap<ClientId, PeerIndex>,
}

impl PeerSync {
    async fn reload(&mut self) -> Result<(), String> {
        let roster = sessions::load_roster(&self.pool, &self.appliance)
            .await
            .map_err(|e| e.to_string())?;
        let Some(roster) = roster else {
            return Err(format!(
                "appliance {} is not in the inventory; add it with `shadowsteer appliance add`",
                self.appliance
            ));
        };
        let specs = roster.clients.iter().map(spec).collect();
        self.by_id = roster
            .clients
            .iter()
            .map(|c| (c.id.clone(), c.peer_index))
            .collect();
        if let Ok(mut v) = self.view.write() {
            v.region = Some(roster.region.clone());
            v.by_index = roster
                .clients
                .iter()
                .map(|c| (c.peer_index, (c.id.clone(), c.role)))
                .collect();
        }
        let n = roster.clients.len();
        self.commands
            .send(PeerCommand::Replace(specs))
            .await
            .map_err(|_| "data plane stopped".to_owned())?;
        tracing::info!(clients = n, region = %roster.region, "roster loaded");
        Ok(())
    }

    fn forget(&mut self, id: &ClientId) -> Option<PeerIndex> {
        let index = self.by_id.remove(id)?;
        if let Ok(mut v) = self.view.write() {
            v.by_index.remove(&index);
        }
        Some(index)
    }

    async fn on_client(&mut self, change: &Change) -> Result<(), String> {
        let Ok(id) = ClientId::new(change.key.clone()) else {
            return Ok(());
        };
        let current = match change.op {
            ChangeOp::Delete => None,
            ChangeOp::Insert | ChangeOp::Update => {
                sessions::served_client(&self.pool, &self.appliance, id.as_str())
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let old = self.forget(&id);
        let send = |cmd| {
            let commands = self.commands.clone();
            async move {
                commands
                    .send(cmd)
                    .await
                    .map_err(|_| "data plane stopped".to_owned())
            }
        };
        match current {
            Some(c) => {
                if let Some(old) = old.filter(|o| *o != c.peer_index) {
                    send(PeerCommand::Remove(old)).await?;
                }
                self.by_id.insert(c.id.clone(), c.peer_index);
                if let Ok(mut v) = self.view.write() {
                    v.by_index.insert(c.peer_index, (c.id.clone(), c.role));
                }
                tracing::info!(client = %c.id, role = %c.role, "peer updated");
                send(PeerCommand::Upsert(spec(&c))).await
            }
            None => {
                if let Some(old) = old {
                    tracing::info!(client = %id, "peer removed");
                    send(PeerCommand::Remove(old)).await?;
                }
                Ok(())
            }
        }
    }
}

/// Runs until `shutdown`. `listen_url` is the database URL for LISTEN.
pub async fn run(
    pool: PgPool,
    listen_url: String,
    appliance: ApplianceId,
    commands: mpsc::Sender<PeerCommand>,
    view: SharedRoster,
    shutdown: CancellationToken,
) {
    let mut peers = PeerSync {
        pool,
        appliance,
        commands,
        view,
        by_id: HashMap::new(),
    };
    let mut follow = Follower::new(listen_url, "roster", RECONCILE);
    loop {
        follow.connect().await;
        if follow.is_stale() {
            match peers.reload().await {
                Ok(()) => follow.refreshed(),
                Err(e) => follow.report(e),
            }
        }
        let change = match follow.next(&shutdown).await {
            Heard::Shutdown => return,
            Heard::Nothing => continue,
            Heard::Change(c) => c,
        };
        match change.table {
            ChangedTable::Clients => {
                if let Err(e) = peers.on_client(&change).await {
                    follow.report(e);
                    follow.mark_stale();
                }
            }
            ChangedTable::Appliances if change.key == peers.appliance.as_str() => {
                follow.mark_stale();
            }
            _ => {}
        }
    }
}
