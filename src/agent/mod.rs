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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, InsideMode};
use crate::domain::ApplianceId;
use crate::keyfile::{self, KeyFileError};
use crate::localpg::DATABASE;
use crate::store::{Database, DatabaseTarget, StoreError};
use crate::tunnel::TunnelError;
use crate::tunnel::device::{Device, DeviceConfig, DeviceHandle, Inside};
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
    let public_key = key.public_key();
    let group_key = crate::takeover::wire::GroupKey::derive(&key);
    let probe_key = match &config.probes.key_file {
        Some(path) if !config.probes.peers.is_empty() || config.probes.listen.is_some() => {
            Some(keyfile::read_secret_key(path)?)
        }
        _ => None,
    };
    let (pool, url, database) = open_pool(&config).await?;
    let appliance: ApplianceId = config.agent.appliance.clone();
    let own_ip = config.tunnel.network.first_host();
    let (mut device, handle, events) = Device::bind(
        DeviceConfig {
            listen: config.agent.listen.0,
            own_ip,
            inside: inside(&config, own_ip)?,
            handshakes_per_second: config.agent.handshake_rate_limit,
            checkpoint_interval: config.telemetry.checkpoint_interval.0,
            event_capacity: 4096,
            threads: config.tunnel.data_plane_threads(),
        },
        key,
    )?;
    tracing::info!(
        appliance = %appliance,
        listen = %handle.local_addr,
        public_key = %public_key,
        inside = ?config.agent.inside,
        threads = handle.stats.workers.load(std::sync::atomic::Ordering::Relaxed),
        "data plane up"
    );
    let roster = Arc::new(RwLock::new(roster::RosterView::default()));
    let group_inputs = config.takeover.enabled.then(|| device.group_inputs(4096));

    let token = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = device.run(token.clone()).await {
            tracing::error!("data plane stopped: {e}");
            token.cancel();
        }
    });
    let takeover = match group_inputs {
        Some(inputs) => {
            let stats = Arc::new(takeover::TakeoverStats::default());
            tasks.spawn(takeover::run(
                takeover::TakeoverSettings {
                    key: group_key,
                    timing: crate::takeover::liveness::Timing {
                        interval: config.takeover.heartbeat_interval.0,
                        misses: config.takeover.misses,
                        startup_grace: config.takeover.startup_grace.0,
                    },
                    failback: config.takeover.failback,
                },
                pool.clone(),
                url.clone(),
                appliance.clone(),
                handle.clone(),
                inputs,
                Arc::clone(&stats),
                shutdown.clone(),
            ));
            Some(stats)
        }
        None => None,
    };
    tasks.spawn(roster::run(
        pool.clone(),
        url,
        appliance.clone(),
        handle.commands.clone(),
        Arc::clone(&roster),
        shutdown.clone(),
    ));
    // This region's replication heartbeat (see store::replication::heartbeat: serve and agents
    // both beat; a no-op until replication is set up).
    tasks.spawn(crate::store::replication::heartbeat::run(
        pool.clone(),
        None,
        shutdown.clone(),
    ));
    let recorder = Arc::new(sessions::RecorderStats::default());
    tasks.spawn(sessions::run(
        pool.clone(),
        appliance.clone(),
        Arc::clone(&roster),
        events,
        config.telemetry.buffer_rows,
        Arc::clone(&recorder),
        shutdown.clone(),
    ));
    let health = Arc::new(telemetry::HealthStats::default());
    tasks.spawn(telemetry::run(
        pool.clone(),
        appliance.clone(),
        Arc::clone(&roster),
        Arc::clone(&handle.stats),
        telemetry::HealthSettings {
            interval: config.telemetry.interval.0,
            buffer_rows: config.telemetry.buffer_rows,
            capacity_bps: config.telemetry.capacity_bps,
            overrides_file: config.telemetry.overrides_file.clone(),
        },
        Arc::clone(&health),
        shutdown.clone(),
    ));
    if let Some(listen) = config.lb_check.listen {
        tasks.spawn(lb_check::run(
            listen.0,
            pool.clone(),
            appliance.clone(),
            config.lb_check.refresh.0,
            config.lb_check.max_score_age.0,
            shutdown.clone(),
        ));
    }
    let probes = match (config.probes.listen, probe_key) {
        (Some(listen), Some(key)) => {
            let socket = tokio::net::UdpSocket::bind(listen.0)
                .await
                .map_err(|source| AgentError::Probe {
                    addr: listen.0,
                    source,
                })?;
            let addr = socket.local_addr().map_err(|source| AgentError::Probe {
                addr: listen.0,
                source,
            })?;
            let stats = Arc::new(prober::ProbeStats::default());
            tasks.spawn(prober::run(
                socket,
                pool.clone(),
                appliance.clone(),
                Arc::clone(&roster),
                prober::ProberSettings {
                    key: probe::ProbeKey::new(*key.expose_bytes()),
                    interval: config.probes.interval.0,
                    window: config.probes.window.0,
                    peers: config
                        .probes
                        .peers
                        .iter()
                        .map(|p| (p.appliance.clone(), p.address.0))
                        .collect(),
                    buffer_rows: config.telemetry.buffer_rows,
                },
                Arc::clone(&stats),
                shutdown.clone(),
            ));
            Some((stats, addr))
        }
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
            let bound = metrics::start(listen.0, sources, tasks, shutdown.clone())
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
