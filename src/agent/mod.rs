//! The appliance agent (`shadowsteer agent`): the WireGuard data plane plus the tasks that feed
//! the database with what the steering server and a shadow need.
//!
//! Tasks, each with its own shutdown path through one `CancellationToken`:
//! - the data plane ([`crate::tunnel::device`]): never waits on the database;
//! - the roster ([`roster`]): peers from the database, live updates from notifications;
//! - the session recorder ([`sessions`], core in [`recorder`]): deltas at events and checkpoints;
//! - health ([`telemetry`], core in [`health`]): one row per interval, bounded buffer;
//! - path probes ([`prober`], core in [`probe`]): authenticated agent-to-agent probes;
//! - the load balancer's check ([`lb_check`]): HAProxy agent-check, weight by risk.
//!
//! - takeover ([`takeover`], core in [`crate::takeover`]): group heartbeats, claims, and
//!   handshake initiations that move a session to this appliance;
//! - `/metrics` ([`metrics`]), when `[agent] metrics_listen` is set: every task's counters.

pub mod buffer;
pub mod health;
pub mod lb_check;
pub mod metrics;
pub mod overrides;
pub mod probe;
pub mod prober;
pub mod recorder;
pub mod roster;
pub mod sessions;
pub mod takeover;
pub mod telemetry;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, InsideMode};
use crate::domain::{ApplianceId, SecretKey};
use crate::keyfile::{self, KeyFileError};
use crate::localpg::DATABASE;
use crate::store::{Database, DatabaseTarget, StoreError};
use crate::tunnel::TunnelError;
use crate::tunnel::device::{Device, DeviceConfig, DeviceEvent, DeviceHandle, GroupInput, Inside};
use crate::tunnel::tun::Tun;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A key file is missing, unsafe or malformed.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The data plane could not start.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The embedded database could not start, or the database URL is invalid.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The probe socket could not be bound.
    #[error("probe listener {addr}: {source}")]
    Probe {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running agent's handles (counters for logs and tests).
#[derive(Debug)]
pub struct AgentHandle {
    /// The data plane.
    pub device: DeviceHandle,
    /// Session recorder counters.
    pub recorder: Arc<sessions::RecorderStats>,
    /// Health writer counters.
    pub health: Arc<telemetry::HealthStats>,
    /// Prober counters and its bound address, when probing is configured.
    pub probes: Option<(Arc<prober::ProbeStats>, SocketAddr)>,
    /// Takeover counters, when takeover is enabled.
    pub takeover: Option<Arc<takeover::TakeoverStats>>,
    /// Where `/metrics` is served, when `[agent] metrics_listen` is set.
    pub metrics: Option<SocketAddr>,
    /// The embedded database this agent started, if any (stopped when dropped).
    pub database: Option<Database>,
}

/// Opens the database lazily: the agent starts and forwards traffic while Postgres is away.
async fn open_pool(config: &AgentConfig) -> Result<(PgPool, String, Option<Database>), AgentError> {
    let target = DatabaseTarget::resolve(
        config.agent.database_url.clone(),
        config.agent.data_dir.clone(),
    );
    match target {
        DatabaseTarget::Url(url) => {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy(&url)
                .map_err(StoreError::Connect)?;
            Ok((pool, url, None))
        }
        DatabaseTarget::Embedded(dir) => {
            let db = Database::open(&DatabaseTarget::Embedded(dir), 4).await?;
            crate::store::migrate(&db.pool).await?;
            let url = db.cluster().map(|c| c.url(DATABASE)).unwrap_or_default();
            Ok((db.pool.clone(), url, Some(db)))
        }
    }
}

fn inside(config: &AgentConfig, own_ip: IpAddr) -> Result<Inside, AgentError> {
    Ok(match config.agent.inside {
        InsideMode::Echo => Inside::Echo,
        InsideMode::Tun => Inside::Tun(Tun::create(
            &config.tunnel.tun_name,
            own_ip,
            config.tunnel.network.prefix(),
            config.tunnel.mtu,
        )?),
    })
}

/// Starts every task of the agent into `tasks`. Returns once the data plane is bound.
pub async fn start(
    config: AgentConfig,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> Result<AgentHandle, AgentError> {
    let key = keyfile::read_secret_key(&config.agent.key_file)?;
    let group_key = crate::takeover::wire::GroupKey::derive(&key);
    let probe_key = read_probe_key(&config)?;
    let (pool, url, database) = open_pool(&config).await?;
    let (mut device, handle, events) = bind_device(&config, key)?;
    let group_inputs = config.takeover.enabled.then(|| device.group_inputs(4096));
    let token = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = device.run(token.clone()).await {
            tracing::error!("data plane stopped: {e}");
            token.cancel();
        }
    });

    let mut agent = Spawner {
        config: &config,
        pool,
        appliance: config.agent.appliance.clone(),
        roster: Arc::new(RwLock::new(roster::RosterView::default())),
        device: &handle,
        tasks,
        shutdown,
    };
    let takeover = group_inputs.map(|inputs| agent.spawn_takeover(group_key, url.clone(), inputs));
    agent.spawn_roster(url);
    agent.spawn_replication_heartbeat();
    let recorder = agent.spawn_recorder(events);
    let health = agent.spawn_health();
    agent.spawn_lb_check();
    let probes = match (config.probes.listen, probe_key) {
        (Some(listen), Some(key)) => Some(agent.spawn_prober(listen.0, key).await?),
        _ => None,
    };
    let metrics = match config.agent.metrics_listen {
        Some(listen) => {
            let sources = metrics::Sources {
                device: Arc::clone(&handle.stats),
                health: Arc::clone(&health),
                recorder: Arc::clone(&recorder),
                probes: probes.as_ref().map(|(s, _)| Arc::clone(s)),
                takeover: takeover.clone(),
            };
            let bound = metrics::start(listen.0, sources, agent.tasks, agent.shutdown.clone())
                .await
                .map_err(|source| AgentError::Metrics {
                    addr: listen.0,
                    source,
                })?;
            Some(bound)
        }
        None => None,
    };
    Ok(AgentHandle {
        device: handle,
        recorder,
        health,
        probes,
        takeover,
        metrics,
        database,
    })
}

/// The probe key, read only when probing is configured.
fn read_probe_key(config: &AgentConfig) -> Result<Option<SecretKey>, AgentError> {
    Ok(match &config.probes.key_file {
        Some(path) if !config.probes.peers.is_empty() || config.probes.listen.is_some() => {
            Some(keyfile::read_secret_key(path)?)
        }
        _ => None,
    })
}

/// Binds the data plane (not yet running) and logs where it listens.
fn bind_device(
    config: &AgentConfig,
    key: SecretKey,
) -> Result<(Device, DeviceHandle, mpsc::Receiver<DeviceEvent>), AgentError> {
    let public_key = key.public_key();
    let own_ip = config.tunnel.network.first_host();
    let (device, handle, events) = Device::bind(
        DeviceConfig {
            listen: config.agent.listen.0,
            own_ip,
            inside: inside(config, own_ip)?,
            handshakes_per_second: config.agent.handshake_rate_limit,
            checkpoint_interval: config.telemetry.checkpoint_interval.0,
            event_capacity: 4096,
            threads: config.tunnel.data_plane_threads(),
        },
        key,
    )?;
    tracing::info!(
        appliance = %config.agent.appliance,
        listen = %handle.local_addr,
        public_key = %public_key,
        inside = ?config.agent.inside,
        threads = handle.stats.workers.load(std::sync::atomic::Ordering::Relaxed),
        "data plane up"
    );
    Ok((device, handle, events))
}

/// Starts the agent's database-side tasks into the agent's `JoinSet`, with what they share.
struct Spawner<'a> {
    config: &'a AgentConfig,
    pool: PgPool,
    appliance: ApplianceId,
    roster: roster::SharedRoster,
    device: &'a DeviceHandle,
    tasks: &'a mut JoinSet<()>,
    shutdown: CancellationToken,
}

impl Spawner<'_> {
    fn spawn_takeover(
        &mut self,
        key: crate::takeover::wire::GroupKey,
        url: String,
        inputs: mpsc::Receiver<GroupInput>,
    ) -> Arc<takeover::TakeoverStats> {
        let t = &self.config.takeover;
        let stats = Arc::new(takeover::TakeoverStats::default());
        self.tasks.spawn(takeover::run(
            takeover::TakeoverSettings {
                key,
                timing: crate::takeover::liveness::Timing {
                    interval: t.heartbeat_interval.0,
                    misses: t.misses,
                    startup_grace: t.startup_grace.0,
                },
                failback: t.failback,
            },
            self.pool.clone(),
            url,
            self.appliance.clone(),
            self.device.clone(),
            inputs,
            Arc::clone(&stats),
            self.shutdown.clone(),
        ));
        stats
    }

    fn spawn_roster(&mut self, url: String) {
        self.tasks.spawn(roster::run(
            self.pool.clone(),
            url,
            self.appliance.clone(),
            self.device.commands.clone(),
            Arc::clone(&self.roster),
            self.shutdown.clone(),
        ));
    }

    /// This region's replication heartbeat (see store::replication::heartbeat: serve and
    /// agents both beat; a no-op until replication is set up).
    fn spawn_replication_heartbeat(&mut self) {
        self.tasks.spawn(crate::store::replication::heartbeat::run(
            self.pool.clone(),
            None,
            self.shutdown.clone(),
        ));
    }

    fn spawn_recorder(
        &mut self,
        events: mpsc::Receiver<DeviceEvent>,
    ) -> Arc<sessions::RecorderStats> {
        let stats = Arc::new(sessions::RecorderStats::default());
        self.tasks.spawn(sessions::run(
            self.pool.clone(),
            self.appliance.clone(),
            Arc::clone(&self.roster),
            events,
            self.config.telemetry.buffer_rows,
            Arc::clone(&stats),
            self.shutdown.clone(),
        ));
        stats
    }

    fn spawn_health(&mut self) -> Arc<telemetry::HealthStats> {
        let t = &self.config.telemetry;
        let stats = Arc::new(telemetry::HealthStats::default());
        self.tasks.spawn(telemetry::run(
            self.pool.clone(),
            self.appliance.clone(),
            Arc::clone(&self.roster),
            Arc::clone(&self.device.stats),
            telemetry::HealthSettings {
                interval: t.interval.0,
                buffer_rows: t.buffer_rows,
                capacity_bps: t.capacity_bps,
                overrides_file: t.overrides_file.clone(),
            },
            Arc::clone(&stats),
            self.shutdown.clone(),
        ));
        stats
    }

    /// The load balancer's agent-check, when `[lb_check] listen` is set.
    fn spawn_lb_check(&mut self) {
        let c = &self.config.lb_check;
        if let Some(listen) = c.listen {
            self.tasks.spawn(lb_check::run(
                listen.0,
                self.pool.clone(),
                self.appliance.clone(),
                c.refresh.0,
                c.max_score_age.0,
                self.shutdown.clone(),
            ));
        }
    }

    /// Binds the probe socket and starts the prober; returns its counters and address.
    async fn spawn_prober(
        &mut self,
        listen: SocketAddr,
        key: SecretKey,
    ) -> Result<(Arc<prober::ProbeStats>, SocketAddr), AgentError> {
        let probe_error = |source| AgentError::Probe {
            addr: listen,
            source,
        };
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(probe_error)?;
        let addr = socket.local_addr().map_err(probe_error)?;
        let p = &self.config.probes;
        let stats = Arc::new(prober::ProbeStats::default());
        self.tasks.spawn(prober::run(
            socket,
            self.pool.clone(),
            self.appliance.clone(),
            Arc::clone(&self.roster),
            prober::ProberSettings {
                key: probe::ProbeKey::new(*key.expose_bytes()),
                interval: p.interval.0,
                window: p.window.0,
                peers: p
                    .peers
                    .iter()
                    .map(|p| (p.appliance.clone(), p.address.0))
                    .collect(),
                buffer_rows: self.config.telemetry.buffer_rows,
            },
            Arc::clone(&stats),
            self.shutdown.clone(),
        ));
        Ok((stats, addr))
    }
}

/// Overrides given on the command line (they win over the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--appliance`.
    pub appliance: Option<ApplianceId>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--inside`.
    pub inside: Option<InsideMode>,
}

impl Overrides {
    /// Applies the overrides to `config`.
    pub fn apply(self, config: &mut AgentConfig) {
        if let Some(a) = self.appliance {
            config.agent.appliance = a;
        }
        if let Some(l) = self.listen {
            config.agent.listen = crate::config::ListenAddr(l);
        }
        if let Some(u) = self.database_url {
            config.agent.database_url = Some(u);
        }
        if let Some(k) = self.key_file {
            config.agent.key_file = k;
        }
        if let Some(i) = self.inside {
            config.agent.inside = i;
        }
    }
}
