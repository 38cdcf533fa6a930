//! `shadowsteer serve`: the steering server (authoritative DNS + admin listener), over the
//! configured database or the embedded cluster of the data directory.
//!
//! Start-up order: configuration and zone data (bad input fails before anything is bound),
//! DNS and admin sockets (a taken port fails before the database is touched), database and
//! migrations, then the tasks. Shutdown (SIGINT/SIGTERM): one token cancels everything; UDP
//! workers finish their batch, TCP connections their query, HTTP requests get a timeout,
//! the audit writer flushes; then the database (and an embedded cluster) is closed.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use shadowsteer::admin;
use shadowsteer::config::{ListenAddr, SteeringConfig};
use shadowsteer::dns::rrl::{Limits, RateLimiter};
use shadowsteer::dns::stats::ApplianceSlots;
use shadowsteer::dns::status::DnsStatus;
use shadowsteer::dns::tcp::TcpServer;
use shadowsteer::dns::udp::{self, Worker};
use shadowsteer::dns::zone::{ServedZones, Statics};
use shadowsteer::dns::{catalog, tcp};
use shadowsteer::publish::{FollowModel, PublishStatus, Publisher, snapshot_file, snapshot_writer};
use shadowsteer::risk::{self, live::LiveScores, live::reload::ModelSource, model::Model};
use shadowsteer::steering::{Engine, Policy};
use shadowsteer::store::audit::AuditStatus;
use shadowsteer::store::replication::heartbeat::{self, LagBoard};
use shadowsteer::store::snapshot::{Loader, SyncStatus};
use shadowsteer::store::{self, Database, DatabaseTarget, default_data_dir};
use shadowsteer::tls::ServerCertificate;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{CommandError, CommandResult};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(
        long,
        env = "SHADOWSTEER_CONFIG",
        default_value = "config/steering.toml"
    )]
    config: PathBuf,
    /// DNS address to serve on, UDP and TCP (repeatable; replaces dns.listen). Port 0 picks a
    /// free port, logged at start.
    #[arg(long = "dns-listen", value_name = "ADDR")]
    dns_listen: Vec<SocketAddr>,
    /// Admin HTTP address (replaces admin.listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Postgres URL (replaces server.database_url); without any, the embedded cluster of the
    /// data directory is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Data directory of the embedded cluster (replaces server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// UDP worker threads (replaces dns.udp_workers).
    #[arg(long)]
    udp_workers: Option<usize>,
}

/// Applies the command-line overrides to the file's settings.
fn apply_overrides(cfg: &mut SteeringConfig, args: &ServeArgs) {
    if !args.dns_listen.is_empty() {
        cfg.dns.listen = args.dns_listen.iter().copied().map(ListenAddr).collect();
    }
    if let Some(a) = args.admin_listen {
        cfg.admin.listen = ListenAddr(a);
    }
    if let Some(u) = &args.database_url {
        cfg.server.database_url = Some(u.clone());
    }
    if let Some(d) = &args.data_dir {
        cfg.server.data_dir = Some(d.clone());
    }
    if let Some(n) = args.udp_workers {
        cfg.dns.udp_workers = Some(n);
    }
}

/// Sockets of one DNS listen address.
struct DnsSockets {
    addr: SocketAddr,
    udp: Vec<UdpSocket>,
    tcp: std::net::TcpListener,
}

/// Binds `workers` UDP sockets and one TCP listener on `addr`; with port 0, on one free port
/// shared by all of them.
fn bind_dns(addr: SocketAddr, workers: usize) -> std::io::Result<DnsSockets> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = (|| {
            let first = udp::bind(addr)?;
            let actual = first.local_addr()?;
            let mut socks = vec![first];
            for _ in 1..workers {
                socks.push(udp::bind(actual)?);
            }
            let tcp = tcp::bind(actual)?;
            Ok(DnsSockets {
                addr: actual,
                udp: socks,
                tcp,
            })
        })();
        match result {
            Err(_) if addr.port() == 0 && attempt < 10 => continue,
            other => return other,
        }
    }
}

/// The risk model `serve` scores with: the configured file, else the built-in default; `None`
/// when live scoring is off.
fn load_model(
    cfg: &SteeringConfig,
    config_file: &std::path::Path,
) -> Result<Option<Arc<Model>>, CommandError> {
    if !cfg.risk.enabled {
        return Ok(None);
    }
    let model = match &cfg.risk.model {
        Some(path) => Model::load(path).map_err(|e| {
            CommandError::Input(format!(
                "{}: risk.model: cannot load {}: {e}",
                config_file.display(),
                path.display()
            ))
        })?,
        None => Model::builtin()
            .context("loading the built-in risk model")
            .map_err(CommandError::Failed)?,
    };
    Ok(Some(Arc::new(model)))
}

/// The admin listener's state: its own small pool (so API traffic and token floods never take
/// the connections the snapshot loader, audit writer and scorer need), the status counters,
/// the model and the zone names.
fn admin_state(
    cfg: &SteeringConfig,
    pool: &sqlx::PgPool,
    status: admin::ServerStatus,
    model: Option<Arc<ModelSource>>,
    scores: Option<watch::Receiver<Arc<LiveScores>>>,
) -> admin::AppState {
    // The server cancels a slow statement (a lock wait included) itself, so a request that
    // gives up never leaves a query running on a connection the pool then replaces.
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", ADMIN_STATEMENT_TIMEOUT)]);
    let api_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(ADMIN_POOL)
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy_with(options);
    let (zone, client_label) = cfg
        .dns
        .zones
        .first()
        .map(|z| (z.name.clone(), z.client_label.clone()))
        .unwrap_or_else(|| ("vpn.example.net".into(), "c".into()));
    let publish = status.publish.clone();
    let max_score_age = cfg.risk.max_score_age();
    admin::AppState {
        db: admin::ApiDb(api_pool.clone()),
        auth: Arc::new(admin::Authenticator::new(api_pool)),
        status: Arc::new(status),
        live: admin::LiveView {
            model,
            scores,
            publish,
            max_score_age,
        },
        site: Arc::new(admin::Site { zone, client_label }),
        fleet: Arc::new(admin::FleetCache::default()),
    }
}

/// Reloads the risk model and the DNS-over-TLS certificate at every SIGHUP until shutdown; a
/// refused file is logged and what is in force stays.
async fn reload_on_hangup(
    model: Option<Arc<ModelSource>>,
    certificate: Option<Arc<ServerCertificate>>,
    shutdown: CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload the model through the admin API");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        if model.is_none() && certificate.is_none() {
            tracing::info!("SIGHUP: no risk model or DNS-over-TLS certificate to reload");
        }
        if let Some(source) = &model {
            tracing::info!("SIGHUP: reloading the risk model");
            let s = Arc::clone(source);
            // Errors are logged by `reload`; the model in force stays.
            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
        }
        if let Some(cert) = &certificate {
            // File reads off the runtime's threads, as for the model.
            let c = Arc::clone(cert);
            match tokio::task::spawn_blocking(move || c.reload()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: DNS-over-TLS certificate reloaded"),
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "SIGHUP: DNS-over-TLS certificate not reloaded; the one in force stays"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: DNS-over-TLS certificate reload did not finish; the one in force stays"
                ),
            }
        }
    }
}

/// Connections of the admin API's own pool.
const ADMIN_POOL: u32 = 4;
/// Longest statement of the admin API (milliseconds); its reads take a few.
const ADMIN_STATEMENT_TIMEOUT: &str = "2000";

/// Refuses to serve a database set up for replication as another region's: its audit rows and
/// scores would carry the configured region and be refused by the database.
async fn check_region(pool: &sqlx::PgPool, cfg: &SteeringConfig) -> Result<(), CommandError> {
    let own: Option<String> = sqlx::query_scalar("SELECT region FROM public.local_region")
        .fetch_optional(pool)
        .await
        .context("reading local_region")?;
    match own {
        Some(own) if own != cfg.server.region.as_str() => Err(CommandError::Input(format!(
            "server.region is {} but the database belongs to region {own} (local_region, set by `db replication setup`); set server.region = \"{own}\"",
            cfg.server.region
        ))),
        _ => Ok(()),
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> CommandResult {
    let setup = Setup::load(&args)?;
    let cfg = &setup.cfg;
    let listeners = Listeners::bind(cfg).await?;
    let opened = open_database(cfg).await?;
    let pool = opened.database.pool.clone();

    let mut tasks = Tasks::new(&pool, opened.reachable);
    let steering = spawn_steering(&mut tasks, &setup, &pool, opened.restored, opened.saved_at);
    let dns = spawn_dns(&mut tasks, cfg, listeners.dns, &steering)?;
    spawn_dns_over_tls(
        &mut tasks,
        cfg,
        listeners.tls,
        setup.tls.as_ref(),
        &steering,
        &dns,
    )?;
    tasks.spawn(reload_on_hangup(
        setup.model.clone(),
        setup.tls.clone(),
        tasks.shutdown.clone(),
    ));
    let risk = spawn_live_scoring(&mut tasks, cfg, &pool, setup.model.clone());
    // Heartbeats of this region and the lag of the others (a no-op until replication is set
    // up).
    let lag_board = Arc::new(LagBoard::default());
    let heartbeats = heartbeat::run(
        pool.clone(),
        Some(heartbeat::Watch {
            board: lag_board.clone(),
            warn_after: cfg.replication.lag_warning.0,
        }),
        tasks.shutdown.clone(),
    );
    tasks.after_migration(heartbeats);
    let status = admin::ServerStatus {
        replication: lag_board,
        lag_warning: cfg.replication.lag_warning.0,
        dns: dns.clone(),
        sync: steering.sync,
        publish: steering.publish,
        audit: steering.audit,
    };
    let state = admin_state(cfg, &pool, status, setup.model.clone(), risk);
    let admin_shutdown = tasks.shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = admin::serve(listeners.admin, state, admin_shutdown).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });

    tasks.until_stopped(&dns).await;
    opened.database.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// What the configuration file and the model make of the server, checked before anything is
/// bound.
struct Setup {
    cfg: SteeringConfig,
    policy: Policy,
    /// The model in force, replaceable without a restart (SIGHUP or the admin API); `None`
    /// when live scoring is off.
    model: Option<Arc<ModelSource>>,
    /// The DNS-over-TLS certificate, replaceable on SIGHUP; `None` without `[dns.tls]`.
    tls: Option<Arc<ServerCertificate>>,
    /// The zones' static data.
    statics: Arc<Statics>,
}

impl Setup {
    fn load(args: &ServeArgs) -> Result<Self, CommandError> {
        let mut cfg: SteeringConfig = super::load_config(&args.config)?;
        apply_overrides(&mut cfg, args);
        if let Some(n) = cfg.dns.udp_workers
            && !(1..=256).contains(&n)
        {
            return Err(CommandError::Input(
                "--udp-workers must be between 1 and 256".into(),
            ));
        }
        let model = load_model(&cfg, &args.config)?;
        let tls = match &cfg.dns.tls {
            Some(t) => Some(
                ServerCertificate::load(&t.certificate, &t.private_key).map_err(|e| {
                    CommandError::Input(format!("{}: dns.tls: {e}", args.config.display()))
                })?,
            ),
            None => None,
        };
        let policy = Policy::from_config(&cfg.steering, model.as_ref().map(|m| m.threshold))
            .map_err(|e| {
                CommandError::Input(format!("{}: steering: {e}", args.config.display()))
            })?;
        match &model {
            Some(m) => {
                tracing::info!(model = %m.version, horizon_s = m.horizon_s, "live risk scoring on")
            }
            None => {
                tracing::info!("live risk scoring off (risk.enabled = false): advisories only")
            }
        }
        tracing::info!(
            threshold = policy.threshold(),
            hysteresis = policy.hysteresis(),
            weight_low = policy.weight_low(),
            weight_high = policy.weight_high(),
            hold_down_s = policy.hold_down().num_seconds(),
            "steering policy"
        );
        let serial = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX);
        let statics = catalog::build(&cfg.dns, serial, &|p| std::fs::read_to_string(p))
            .map_err(|e| CommandError::Input(format!("{}: {e}", args.config.display())))?;
        for z in &cfg.dns.zones {
            tracing::info!(zone = %z.name, client_names = %format!("<client>.{}.{}", z.client_label, z.name), service = %format!("{}.{}", z.service_name, z.name), "serving zone");
        }
        let model = model.map(|m| Arc::new(ModelSource::new(cfg.risk.model.clone(), m)));
        Ok(Self {
            cfg,
            policy,
            model,
            tls,
            statics: Arc::new(statics),
        })
    }
}

/// The bound sockets: a taken port fails before the database is touched.
struct Listeners {
    dns: Vec<DnsSockets>,
    /// DNS over TLS, when `[dns.tls]` is set.
    tls: Vec<std::net::TcpListener>,
    admin: tokio::net::TcpListener,
}

impl Listeners {
    async fn bind(cfg: &SteeringConfig) -> Result<Self, CommandError> {
        let workers = cfg
            .dns
            .udp_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut dns = Vec::new();
        for l in &cfg.dns.listen {
            let s = bind_dns(l.0, workers).with_context(|| format!("binding DNS on {l}"))?;
            tracing::info!(addr = %s.addr, udp_workers = workers, "DNS listening (UDP and TCP)");
            dns.push(s);
        }
        let mut tls = Vec::new();
        for l in cfg.dns.tls.iter().flat_map(|t| &t.listen) {
            let listener =
                tcp::bind(l.0).with_context(|| format!("binding DNS over TLS on {l}"))?;
            let addr = listener.local_addr().context("DNS over TLS address")?;
            tracing::info!(%addr, "DNS over TLS listening");
            tls.push(listener);
        }
        let admin = tokio::net::TcpListener::bind(cfg.admin.listen.0)
            .await
            .with_context(|| format!("binding the admin listener on {}", cfg.admin.listen))?;
        let admin_addr = admin.local_addr().context("admin listener address")?;
        tracing::info!(addr = %admin_addr, "admin listening (dashboard /, API /api/v1 and /metrics need a token; /healthz, /readyz)");
        Ok(Self { dns, tls, admin })
    }
}

/// The database, opened and (when reachable) migrated, with the snapshot saved by the last
/// run if it belongs to this database and these zones.
struct Opened {
    database: Database,
    reachable: bool,
    restored: Option<snapshot_file::Saved>,
    /// Where the snapshot is saved, and what it belongs to.
    saved_at: snapshot_writer::WriterTarget,
}

async fn open_database(cfg: &SteeringConfig) -> Result<Opened, CommandError> {
    let target =
        DatabaseTarget::resolve(cfg.server.database_url.clone(), cfg.server.data_dir.clone());
    let origin = snapshot_file::Origin {
        database: snapshot_file::database_identity(&target),
        zones: cfg
            .dns
            .zones
            .iter()
            .map(|z| z.name.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
    };
    let path = cfg.server.snapshot_file.clone().unwrap_or_else(|| {
        let dir = cfg.server.data_dir.clone().unwrap_or_else(default_data_dir);
        dir.join("last-snapshot")
    });
    let restored = snapshot_file::restore_at_start(&path, &origin, cfg.server.snapshot_max_age.0);
    tracing::info!(database = %target.describe(), "opening the database");
    let (database, reachable) = Database::open_tolerant(&target, 8)
        .await
        .with_context(|| format!("opening {}", target.describe()))?;
    if !reachable {
        tracing::warn!(database = %target.describe(), "database unreachable at start; answering from the saved snapshot (or SERVFAIL for client names) until it is back");
    } else if let Err(e) = store::migrate(&database.pool).await {
        database.close().await;
        return Err(CommandError::Failed(
            anyhow::Error::new(e).context("migrating the database"),
        ));
    } else if let Err(e) = check_region(&database.pool, cfg).await {
        database.close().await;
        return Err(e);
    }
    Ok(Opened {
        database,
        reachable,
        restored,
        saved_at: snapshot_writer::WriterTarget { path, origin },
    })
}

/// The server's tasks and what they share: one shutdown token for all, and whether the
/// schema is in place (database work waits for it; migrations are retried while the database
/// is unreachable).
struct Tasks {
    set: JoinSet<()>,
    shutdown: CancellationToken,
    migrated_tx: watch::Sender<bool>,
    migrated: watch::Receiver<bool>,
}

impl Tasks {
    fn new(pool: &sqlx::PgPool, migrated: bool) -> Self {
        let (migrated_tx, rx) = watch::channel(migrated);
        let mut tasks = Self {
            set: JoinSet::new(),
            shutdown: CancellationToken::new(),
            migrated_tx,
            migrated: rx,
        };
        if !migrated {
            let retry = store::migrate_when_reachable(
                pool.clone(),
                tasks.migrated_tx.clone(),
                tasks.shutdown.clone(),
            );
            tasks.spawn(retry);
        }
        tasks
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.set.spawn(task);
    }

    /// Spawns database work that starts once the schema is in place.
    fn after_migration(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let gated = store::after_migration(self.migrated.clone(), self.shutdown.clone(), task);
        self.set.spawn(gated);
    }

    /// Runs until SIGINT/SIGTERM or until a task stops on its own, then stops every task.
    async fn until_stopped(mut self, dns: &DnsStatus) {
        tokio::select! {
            _ = super::shutdown_signal() => tracing::info!("shutting down"),
            Some(_) = self.set.join_next() => {
                tracing::error!("a server task stopped unexpectedly; shutting down");
            }
        }
        dns.set_listening(false);
        self.shutdown.cancel();
        drop(self.migrated_tx);
        while self.set.join_next().await.is_some() {}
    }
}

/// What the steering tasks share with DNS and the admin listener.
struct Steering {
    /// The answers DNS serves.
    served: Arc<ArcSwap<ServedZones>>,
    slots: Arc<Mutex<ApplianceSlots>>,
    sync: Arc<SyncStatus>,
    publish: Arc<PublishStatus>,
    audit: Arc<AuditStatus>,
}

/// Spawns the steering pipeline: the loader keeps the inputs current from the database, the
/// publisher turns them into answers (and audits and saves them).
fn spawn_steering(
    tasks: &mut Tasks,
    setup: &Setup,
    pool: &sqlx::PgPool,
    restored: Option<snapshot_file::Saved>,
    saved_at: snapshot_writer::WriterTarget,
) -> Steering {
    let cfg = &setup.cfg;
    let shutdown = tasks.shutdown.clone();
    let s = Steering {
        served: Arc::new(ArcSwap::from_pointee(ServedZones::empty(
            setup.statics.clone(),
        ))),
        slots: Arc::new(Mutex::new(ApplianceSlots::default())),
        sync: Arc::new(SyncStatus::default()),
        publish: Arc::new(PublishStatus::default()),
        audit: Arc::new(AuditStatus::default()),
    };
    s.publish.set_steering_threshold(setup.policy.threshold());
    let (inputs_tx, inputs_rx) = watch::channel(None);
    if let Some(saved) = restored {
        s.publish.mark_restored();
        s.sync.restored(saved.confirmed_at.timestamp_millis());
        inputs_tx.send_replace(Some(Arc::new(saved.inputs)));
    }
    let (saved_tx, saved_rx) = watch::channel(None);
    let confirmed = s.sync.clone();
    tasks.spawn(snapshot_writer::run_writer(
        saved_at,
        saved_rx,
        move || confirmed.last_sync_ms(),
        s.publish.clone(),
        shutdown.clone(),
    ));
    let loader = Loader {
        pool: pool.clone(),
        inputs: inputs_tx,
        status: s.sync.clone(),
        reconcile_interval: cfg.server.reconcile_interval.0,
        health_timeout: cfg.steering.health_timeout.0,
        max_score_age: cfg.risk.max_score_age(),
    };
    tasks.after_migration(loader.run(shutdown.clone()));
    let (audit_tx, audit_rx) = mpsc::channel(100_000);
    let audit = store::audit::run(
        store::audit::AuditTarget {
            pool: pool.clone(),
            region: cfg.server.region.clone(),
            server: cfg.server.name.clone(),
            max_backlog: store::audit::MAX_BACKLOG,
        },
        audit_rx,
        s.audit.clone(),
        shutdown.clone(),
    );
    tasks.after_migration(audit);
    let publisher = Publisher {
        engine: Engine::new(setup.policy),
        statics: setup.statics.clone(),
        ecs_regions: cfg.dns.ecs_regions.clone(),
        slots: s.slots.clone(),
        target: s.served.clone(),
        audit: store::audit::AuditQueue::new(audit_tx, s.audit.clone()),
        status: s.publish.clone(),
        last_table: None,
        saved: Some(saved_tx),
        follow: setup.model.as_ref().map(|model| FollowModel {
            steering: cfg.steering.clone(),
            model: Arc::clone(model),
            threshold: model.current().threshold,
        }),
    };
    tasks.spawn(publisher.run(inputs_rx, shutdown));
    s
}

/// Starts a thread per UDP socket and a TCP server per listen address, all answering from
/// the steering's served zones; returns their status, listening.
fn spawn_dns(
    tasks: &mut Tasks,
    cfg: &SteeringConfig,
    sockets: Vec<DnsSockets>,
    steering: &Steering,
) -> Result<Arc<DnsStatus>, CommandError> {
    let served = &steering.served;
    // One limiter for every worker and listener: the limit is per source prefix, whichever
    // socket its packets reach; one epoch, so the workers agree on the current second.
    let limiter = Arc::new(RateLimiter::new(
        Limits::from_config(&cfg.dns.rate_limit),
        rand::random(),
    ));
    let epoch = std::time::Instant::now();
    let status = Arc::new(DnsStatus::new(
        sockets.iter().map(|s| s.udp.len()).sum(),
        cfg.dns.max_tcp_connections,
        steering.slots.clone(),
    ));
    // One counter set per UDP socket, as counted above.
    let mut worker_stats = status.udp_stats().iter().cloned();
    for s in sockets {
        for ((i, sock), stats) in s.udp.into_iter().enumerate().zip(&mut worker_stats) {
            let worker = Worker {
                served: served.clone(),
                limiter: limiter.clone(),
                epoch,
                stats,
                shutdown: tasks.shutdown.clone(),
            };
            let name = format!("dns-udp-{}-{i}", s.addr);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    worker.run(sock);
                    let _ = done_tx.send(());
                })
                .context("starting a UDP worker thread")?;
            tasks.spawn(async move {
                let _ = done_rx.await;
            });
        }
        let listener =
            tokio::net::TcpListener::from_std(s.tcp).context("registering the TCP listener")?;
        let server = TcpServer {
            served: served.clone(),
            status: status.clone(),
            idle_timeout: cfg.dns.tcp_idle_timeout.0,
            tls: None,
        };
        tasks.spawn(server.run(listener, tasks.shutdown.clone()));
    }
    status.set_listening(true);
    Ok(status)
}

/// Starts a DNS-over-TLS server per TLS listener, answering from the same zones and counted
/// with TCP.
fn spawn_dns_over_tls(
    tasks: &mut Tasks,
    cfg: &SteeringConfig,
    listeners: Vec<std::net::TcpListener>,
    certificate: Option<&Arc<ServerCertificate>>,
    steering: &Steering,
    status: &Arc<DnsStatus>,
) -> Result<(), CommandError> {
    let Some(certificate) = certificate else {
        return Ok(());
    };
    let config = certificate
        .server_config()
        .context("building the DNS-over-TLS server configuration")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    for l in listeners {
        let listener = tokio::net::TcpListener::from_std(l)
            .context("registering the DNS-over-TLS listener")?;
        let server = TcpServer {
            served: steering.served.clone(),
            status: status.clone(),
            idle_timeout: cfg.dns.tcp_idle_timeout.0,
            tls: Some(acceptor.clone()),
        };
        tasks.spawn(server.run(listener, tasks.shutdown.clone()));
    }
    Ok(())
}

/// Live scoring, when a model is in force: it writes risk_scores, whose NOTIFY trigger carries
/// its writes to DNS like any other change; its snapshot feeds the metrics.
fn spawn_live_scoring(
    tasks: &mut Tasks,
    cfg: &SteeringConfig,
    pool: &sqlx::PgPool,
    model: Option<Arc<ModelSource>>,
) -> Option<watch::Receiver<Arc<LiveScores>>> {
    let source = model?;
    let (tx, rx) = watch::channel(Arc::new(LiveScores::default()));
    let scorer = risk::live::run(
        pool.clone(),
        source,
        cfg.risk.clone(),
        cfg.server.region.clone(),
        tx,
        tasks.shutdown.clone(),
    );
    tasks.after_migration(scorer);
    Some(rx)
}
