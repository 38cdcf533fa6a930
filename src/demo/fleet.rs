//! The demo's fleet on one machine, without root: one embedded Postgres per region with
//! replication between them, one `serve` per region, appliance agents (echo inside mode) on
//! their own loopback addresses (127.0.0.11, .12, ...), all as child processes of the demo,
//! and clients (the client helper, probe mode) as tasks in the demo's own process.
//!
//! Every child process and cluster is stopped when the [`Fleet`] is dropped (and, should the
//! demo itself be killed, the children get SIGKILL from the kernel: `PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::configs::{self, LOSS_TIMEOUT, PROBE_RATE, ZONE};
use super::{ports, stock};
use crate::client::timeline::Timeline;
use crate::config::ClientConfig;
use crate::domain::{RegionId, SecretKey};
use crate::inventory::{appliance, client};
use crate::localpg::{Durability, LocalCluster};
use crate::store::replication::{RegionSpec, setup as replication};

/// What to build.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Region ids.
    pub regions: Vec<String>,
    /// Appliances per region.
    pub per_region: usize,
    /// Clients.
    pub clients: usize,
    /// Reactive baseline: no takeover, no risk scoring; steering by health checks only.
    pub reactive: bool,
    /// Where everything goes.
    pub dir: PathBuf,
    /// Keep the clusters' data (durable) for `--keep`.
    pub keep: bool,
    /// Stock `wireguard-go` clients in namespaces instead of the client helper (root).
    pub stock: bool,
}

/// One appliance of the plan.
#[derive(Debug, Clone)]
pub struct ApplianceSpec {
    /// Id, e.g. `eu-1`.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
}

impl Plan {
    /// The appliances: `<region>-<n>`, each on its own loopback address.
    pub fn appliances(&self) -> Vec<ApplianceSpec> {
        let mut out = Vec::new();
        for (r, region) in self.regions.iter().enumerate() {
            for n in 1..=self.per_region {
                let k = r * self.per_region + (n - 1);
                let ip = if self.stock {
                    stock::appliance_ip(k)
                } else {
                    Ipv4Addr::new(127, 0, 0, u8::try_from(11 + k).unwrap_or(250))
                };
                out.push(ApplianceSpec {
                    id: format!("{region}-{n}"),
                    region: region.clone(),
                    ip,
                });
            }
        }
        out
    }

    /// Client `i`'s primary and shadow: spread over every appliance, the shadow the same slot
    /// in the next region.
    pub fn pair(&self, i: usize) -> (String, String) {
        let apps = self.appliances();
        let p = i % apps.len();
        let s = (p + self.per_region) % apps.len();
        (apps[p].id.clone(), apps[s].id.clone())
    }
}

struct Region {
    id: String,
    url: String,
    pool: PgPool,
    dns: SocketAddr,
    admin: SocketAddr,
    _cluster: LocalCluster,
}

struct AgentProc {
    spec: ApplianceSpec,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A client running in this process.
pub struct DemoClient {
    /// Its id.
    pub id: String,
    /// Its primary appliance.
    pub primary: String,
    /// What its probe stream saw.
    pub timeline: Arc<Timeline>,
    task: JoinHandle<()>,
}

/// The running fleet.
pub struct Fleet {
    plan: Plan,
    regions: Vec<Region>,
    serves: Vec<Child>,
    agents: BTreeMap<String, AgentProc>,
    /// The clients.
    pub clients: Vec<DemoClient>,
    clients_stop: CancellationToken,
    /// Stock clients' namespaces and `wireguard-go` processes, and the holder poller.
    stock: Option<(stock::StockNet, JoinHandle<()>)>,
    wg_port: u16,
    /// A read token for the dashboard.
    pub token: Zeroizing<String>,
}

fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the shadowsteer binary")?;
    // Append: an agent restarted by the scenario keeps its earlier runs in the same log.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().context("starting a shadowsteer process")
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    let sql = match table {
        "appliances" => "SELECT count(*) FROM appliances",
        _ => "SELECT count(*) FROM clients",
    };
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

impl Fleet {
    /// Starts everything and returns once every client's probes flow. `progress` gets one
    /// line per step.
    pub async fn start(plan: Plan, progress: &mut dyn FnMut(String)) -> anyhow::Result<Self> {
        let regions = start_regions(&plan).await?;
        progress(format!(
            "{} Postgres clusters up (one per region)",
            regions.len()
        ));
        replicate(&regions).await?;
        progress("replication set up between every pair of regions".into());

        let service = SecretKey::generate();
        let service_key = plan.dir.join("service.key");
        crate::keyfile::write_secret_key(&service_key, &service)
            .map_err(|e| anyhow!("writing the service key: {e}"))?;
        let apps = plan.appliances();
        let ips: Vec<Ipv4Addr> = apps.iter().map(|a| a.ip).collect();
        // Stock clients reach the appliances on addresses of a dummy interface (made first:
        // the port is chosen free on every address).
        let stock_net = if plan.stock {
            Some(stock::StockNet::create(&ips)?)
        } else {
            None
        };
        let wg_port = ports::free_udp_on_all(&ips)?;
        add_appliances(&regions, &apps, wg_port, &service).await?;
        let clients = add_clients(&plan, &regions, &apps).await?;
        progress(format!(
            "inventory: {} appliances in {} regions, {} clients, each with a shadow in another region",
            apps.len(),
            regions.len(),
            plan.clients
        ));
        let region0 = RegionId::new(regions[0].id.as_str()).map_err(|e| anyhow!("{e}"))?;
        let (_, token) =
            crate::store::tokens::create(&regions[0].pool, &region0, "demo", "read", None)
                .await
                .map_err(|e| anyhow!("creating the read token: {e}"))?;

        let mut fleet = Self {
            serves: Vec::new(),
            agents: BTreeMap::new(),
            clients: Vec::new(),
            clients_stop: CancellationToken::new(),
            stock: stock_net.map(|n| (n, tokio::spawn(async {}))),
            wg_port,
            token,
            regions,
            plan,
        };
        fleet.spawn_serves()?;
        fleet.spawn_agents(apps, &service_key).await?;
        progress(format!(
            "{} steering servers and {} appliance agents running",
            fleet.serves.len(),
            fleet.agents.len()
        ));
        if let Some(first) = clients.first() {
            fleet.wait_dns(&first.id).await?;
        }
        for (k, c) in clients.into_iter().enumerate() {
            if fleet.plan.stock {
                fleet.start_stock_client(k, c, &service)?;
            } else {
                fleet.start_client(c, &service)?;
            }
        }
        fleet.follow_stock_holders();
        fleet.wait_probes().await?;
        progress(format!(
            "{} clients connected, each sending {PROBE_RATE} numbered probes/s through its tunnel",
            fleet.clients.len()
        ));
        Ok(fleet)
    }

    /// Writes a `serve` configuration per region and starts them.
    fn spawn_serves(&mut self) -> anyhow::Result<()> {
        for r in &self.regions {
            let path = self.plan.dir.join(format!("serve-{}.toml", r.id));
            write_private(
                &path,
                &configs::serve(&configs::ServeParams {
                    region: &r.id,
                    database_url: &r.url,
                    dir: &self.plan.dir,
                    dns: r.dns,
                    admin: r.admin,
                    reactive: self.plan.reactive,
                }),
            )?;
            let log = self.plan.dir.join(format!("serve-{}.log", r.id));
            self.serves.push(spawn(
                &["serve", "--config", &path.to_string_lossy()],
                &log,
            )?);
        }
        Ok(())
    }

    /// Writes an agent configuration per appliance, starts the agents and waits for each to
    /// have loaded its roster.
    async fn spawn_agents(
        &mut self,
        apps: Vec<ApplianceSpec>,
        service_key: &Path,
    ) -> anyhow::Result<()> {
        for a in apps {
            let region = region(&self.regions, &a.region)?;
            let config = self.plan.dir.join(format!("agent-{}.toml", a.id));
            write_private(
                &config,
                &configs::agent(&configs::AgentParams {
                    appliance: &a.id,
                    listen: SocketAddr::new(IpAddr::V4(a.ip), self.wg_port),
                    key_file: service_key,
                    database_url: &region.url,
                    overrides_file: &configs::overrides_file(&self.plan.dir, &a.id),
                    reactive: self.plan.reactive,
                }),
            )?;
            let log = self.plan.dir.join(format!("agent-{}.log", a.id));
            self.agents.insert(
                a.id.clone(),
                AgentProc {
                    spec: a,
                    config,
                    log,
                    child: None,
                },
            );
        }
        let ids = self.appliance_ids();
        for id in &ids {
            self.start_agent(id)?;
        }
        for id in &ids {
            self.wait_agent(id).await?;
        }
        Ok(())
    }

    /// Waits until every region's DNS answers for client `id`, before any client starts.
    async fn wait_dns(&self, id: &str) -> anyhow::Result<()> {
        let name = format!("{id}.c.{ZONE}");
        for r in &self.regions {
            let dns = r.dns;
            let waited = wait_until(Duration::from_secs(30), "the steering DNS", || {
                let name = name.clone();
                async move {
                    crate::client::resolve::lookup(dns, &name)
                        .await
                        .is_ok_and(|a| !a.addrs.is_empty())
                }
            })
            .await;
            if let Err(e) = waited {
                bail!("{e}: {}", self.dns_state(r, id, &name).await);
            }
        }
        Ok(())
    }

    /// What region `r` knows of client `id`, for an error: its DNS answer, whether the client
    /// and its appliances have reached its database, and where its server's log is.
    async fn dns_state(&self, r: &Region, id: &str, name: &str) -> String {
        let answer = match crate::client::resolve::lookup(r.dns, name).await {
            Ok(a) if a.addrs.is_empty() => "an answer without addresses".to_owned(),
            Ok(a) => format!("{:?}", a.addrs),
            Err(e) => format!("no answer ({e})"),
        };
        let rows: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM clients WHERE id = $1),
                    (SELECT count(*) FROM appliances)",
        )
        .bind(id)
        .fetch_one(&r.pool)
        .await;
        let rows = match rows {
            Ok((c, a)) => format!("{c} row(s) for the client and {a} appliance(s) in its database"),
            Err(e) => format!("its database could not be read ({e})"),
        };
        format!(
            "region {}'s DNS at {} gave {answer} for {name}; {rows}, of {} appliances in the \
             fleet; its server's log: {}",
            r.id,
            r.dns,
            self.agents.len(),
            self.plan.dir.join(format!("serve-{}.log", r.id)).display()
        )
    }

    /// Stock clients' tunnels are followed from the sessions' holders (see [`follow_holders`]).
    fn follow_stock_holders(&mut self) {
        let Some((_, poller)) = self.stock.as_mut() else {
            return;
        };
        *poller = tokio::spawn(follow_holders(
            self.regions[0].pool.clone(),
            self.clients
                .iter()
                .map(|c| (c.id.clone(), Arc::clone(&c.timeline)))
                .collect(),
            self.agents
                .values()
                .map(|a| {
                    (
                        a.spec.id.clone(),
                        SocketAddr::new(IpAddr::V4(a.spec.ip), self.wg_port),
                    )
                })
                .collect(),
        ));
    }

    /// Waits for every client's first probe reply.
    async fn wait_probes(&self) -> anyhow::Result<()> {
        let clients: Vec<Arc<Timeline>> = self
            .clients
            .iter()
            .map(|c| Arc::clone(&c.timeline))
            .collect();
        wait_until(Duration::from_secs(30), "every client's probes", || {
            let clients = clients.clone();
            async move { clients.iter().all(|t| t.now().1.is_some()) }
        })
        .await
    }

    /// Appliance ids in order.
    pub fn appliance_ids(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// The appliance at `ip`, if any.
    pub fn appliance_at(&self, ip: IpAddr) -> Option<&str> {
        self.agents
            .values()
            .find(|a| IpAddr::V4(a.spec.ip) == ip)
            .map(|a| a.spec.id.as_str())
    }

    /// A database pool of the first region (for the live view).
    pub fn pool(&self) -> &PgPool {
        &self.regions[0].pool
    }

    /// The first region's admin listener (dashboard).
    pub fn admin(&self) -> SocketAddr {
        self.regions[0].admin
    }

    /// Starts (or restarts) an appliance's agent.
    pub fn start_agent(&mut self, id: &str) -> anyhow::Result<()> {
        let a = self
            .agents
            .get_mut(id)
            .ok_or_else(|| anyhow!("no appliance {id}"))?;
        if a.child.is_some() {
            return Ok(());
        }
        a.child = Some(spawn(
            &["agent", "--config", &a.config.to_string_lossy()],
            &a.log,
        )?);
        Ok(())
    }

    /// Waits for an agent to have loaded its roster.
    pub async fn wait_agent(&self, id: &str) -> anyhow::Result<()> {
        let log = self
            .agents
            .get(id)
            .ok_or_else(|| anyhow!("no appliance {id}"))?
            .log
            .clone();
        wait_until(
            Duration::from_secs(30),
            &format!("agent {id} to load its roster (log: {})", log.display()),
            || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log).is_ok_and(|t| t.contains("roster loaded"))
                }
            },
        )
        .await
    }

    /// Kills an appliance's agent at once (`kill -9`).
    pub fn kill_agent(&mut self, id: &str) {
        if let Some(mut child) = self.agents.get_mut(id).and_then(|a| a.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether an agent process is running.
    pub fn agent_running(&self, id: &str) -> bool {
        self.agents.get(id).is_some_and(|a| a.child.is_some())
    }

    fn start_client(&mut self, c: NewClient, service: &SecretKey) -> anyhow::Result<()> {
        let NewClient {
            id,
            primary,
            key,
            tunnel_ip,
            dns,
        } = c;
        let key_file = self.plan.dir.join(format!("client-{id}.key"));
        crate::keyfile::write_secret_key(&key_file, &key)
            .map_err(|e| anyhow!("writing a client key: {e}"))?;
        let text = configs::client(&configs::ClientParams {
            id: &id,
            key_file: &key_file,
            service: &service.public_key(),
            wg_port: self.wg_port,
            resolver: dns,
            tunnel_ip,
            reactive: self.plan.reactive,
        });
        let cfg: ClientConfig = crate::config::parse(&key_file.with_extension("toml"), &text)
            .map_err(|e| {
                let first = e.first().map(ToString::to_string).unwrap_or_default();
                anyhow!("client configuration: {first}")
            })?;
        self.track_client(&id, &primary, move |t, stop, who| async move {
            if let Err(e) = crate::client::run::run_recorded(cfg, key, stop, Some(t)).await {
                tracing::error!(client = %who, "client helper stopped: {e}");
            }
        });
        Ok(())
    }

    /// Spawns a client's probe stream (`run` gets its timeline, the stop token and its id) and
    /// keeps track of it for the report.
    fn track_client<F, Fut>(&mut self, id: &str, primary: &str, run: F)
    where
        F: FnOnce(Arc<Timeline>, CancellationToken, String) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let timeline = Arc::new(Timeline::default());
        let task = tokio::spawn(run(
            Arc::clone(&timeline),
            self.clients_stop.clone(),
            id.to_owned(),
        ));
        self.clients.push(DemoClient {
            id: id.to_owned(),
            primary: primary.to_owned(),
            timeline,
            task,
        });
    }

    fn start_stock_client(
        &mut self,
        k: usize,
        c: NewClient,
        service: &SecretKey,
    ) -> anyhow::Result<()> {
        let NewClient {
            id,
            primary,
            key,
            tunnel_ip,
            ..
        } = c;
        let key_file = stock::key_file(&self.plan.dir, &id, &key)?;
        let endpoint = self
            .agents
            .get(&primary)
            .map(|a| SocketAddr::new(IpAddr::V4(a.spec.ip), self.wg_port))
            .ok_or_else(|| anyhow!("no appliance {primary}"))?;
        let Some((net, _)) = self.stock.as_mut() else {
            bail!("stock clients without their network");
        };
        let ns = net.start_client(k, &key_file, &service.public_key(), endpoint, tunnel_ip)?;
        self.track_client(&id, &primary, move |t, stop, who| async move {
            if let Err(e) = stock::probe(ns, tunnel_ip, t, stop).await {
                tracing::error!(client = %who, "probe stream stopped: {e:#}");
            }
        });
        Ok(())
    }

    /// What every client's probe stream saw so far.
    pub fn recorded(&self) -> Vec<crate::demo::report::ClientRun> {
        self.clients
            .iter()
            .map(|c| crate::demo::report::ClientRun {
                id: c.id.clone(),
                primary: c.primary.clone(),
                recorded: c.timeline.snapshot(),
            })
            .collect()
    }

    /// Stops the clients' probes and waits for their last replies (the loss timeout).
    pub async fn stop_clients(&mut self) {
        self.clients_stop.cancel();
        for c in &mut self.clients {
            let _ = tokio::time::timeout(LOSS_TIMEOUT * 3, &mut c.task).await;
        }
    }

    /// Stops every process and cluster; the data stays when the plan says keep.
    pub fn shutdown(&mut self) {
        self.clients_stop.cancel();
        for c in &self.clients {
            c.task.abort();
        }
        for a in self.agents.values_mut() {
            if let Some(mut child) = a.child.take() {
                stop(&mut child, Duration::from_secs(3));
            }
        }
        for s in &mut self.serves {
            stop(s, Duration::from_secs(5));
        }
        self.serves.clear();
        if let Some((mut net, poller)) = self.stock.take() {
            poller.abort();
            net.remove();
        }
        // Dropping the regions closes the pools and stops the clusters.
        self.regions.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client added to the inventory and not started yet.
struct NewClient {
    id: String,
    primary: String,
    key: SecretKey,
    tunnel_ip: Ipv4Addr,
    /// Its home region's steering DNS.
    dns: SocketAddr,
}

fn region<'a>(regions: &'a [Region], id: &str) -> anyhow::Result<&'a Region> {
    regions
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| anyhow!("no region {id}"))
}

async fn start_regions(plan: &Plan) -> anyhow::Result<Vec<Region>> {
    let durability = if plan.keep {
        Durability::Durable
    } else {
        Durability::Ephemeral
    };
    let mut regions = Vec::new();
    for id in &plan.regions {
        regions.push(start_region(&plan.dir, id, durability).await?);
    }
    Ok(regions)
}

/// Logical replication between every pair of regions.
async fn replicate(regions: &[Region]) -> anyhow::Result<()> {
    let specs: Vec<RegionSpec> = regions
        .iter()
        .map(|r| {
            Ok(RegionSpec {
                id: RegionId::new(r.id.as_str()).map_err(|e| anyhow!("{e}"))?,
                url: r.url.clone(),
                replication_url: r.url.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    replication::setup(&specs, &mut |_| {})
        .await
        .map_err(|e| anyhow!("replication setup: {e}"))?;
    Ok(())
}

/// Waits until every region holds `n` rows of `table` (written in their home regions).
async fn wait_replicated(regions: &[Region], table: &str, n: usize) -> anyhow::Result<()> {
    let n = i64::try_from(n)?;
    for r in regions {
        wait_until(
            Duration::from_secs(30),
            &format!("{table} to replicate"),
            || async { count(&r.pool, table).await == n },
        )
        .await?;
    }
    Ok(())
}

/// Adds each appliance in its home region, on `wg_port` of its address, with the service key.
async fn add_appliances(
    regions: &[Region],
    apps: &[ApplianceSpec],
    wg_port: u16,
    service: &SecretKey,
) -> anyhow::Result<()> {
    for a in apps {
        let new = appliance::ApplianceInput {
            id: a.id.clone(),
            region: a.region.clone(),
            endpoint: format!("{}:{wg_port}", a.ip),
            public_key: service.public_key().to_base64(),
            capacity: None,
        }
        .parse()
        .map_err(|e| anyhow!("{}", e.cli_message()))?;
        appliance::add(&region(regions, &a.region)?.pool, &new)
            .await
            .map_err(|e| anyhow!("adding {}: {}", a.id, e.cli_message()))?;
    }
    wait_replicated(regions, "appliances", apps.len()).await
}

/// Adds the plan's clients in their primaries' regions, each with a new key.
async fn add_clients(
    plan: &Plan,
    regions: &[Region],
    apps: &[ApplianceSpec],
) -> anyhow::Result<Vec<NewClient>> {
    let mut out = Vec::new();
    for i in 0..plan.clients {
        let key = SecretKey::generate();
        let (primary, shadow) = plan.pair(i);
        let home = &apps
            .iter()
            .find(|a| a.id == primary)
            .ok_or_else(|| anyhow!("no appliance {primary}"))?
            .region;
        let region = region(regions, home)?;
        let tunnel_ip = Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 2 + (i % 250) as u8);
        let new = client::ClientInput {
            id: format!("c{:03}", i + 1),
            public_key: key.public_key().to_base64(),
            tunnel_ip: tunnel_ip.to_string(),
            primary,
            shadow,
        }
        .parse()
        .map_err(|e| anyhow!("{}", e.cli_message()))?;
        client::add(&region.pool, &new)
            .await
            .map_err(|e| anyhow!("adding a client: {}", e.cli_message()))?;
        out.push(NewClient {
            id: new.id.to_string(),
            primary: new.primary.to_string(),
            key,
            tunnel_ip,
            dns: region.dns,
        });
    }
    wait_replicated(regions, "clients", plan.clients).await?;
    Ok(out)
}

async fn start_region(dir: &Path, id: &str, durability: Durability) -> anyhow::Result<Region> {
    let cdir = dir.join(format!("pg-{id}"));
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&cdir, durability))
        .await
        .context("starting a cluster")?
        .map_err(|e| anyhow!("starting the {id} cluster: {e}"))?;
    crate::store::target::create_database(&cluster.url("postgres"), crate::localpg::DATABASE)
        .await
        .map_err(|e| anyhow!("creating the {id} database: {e}"))?;
    let url = cluster.url(crate::localpg::DATABASE);
    let pool = crate::store::connect(&url, 4)
        .await
        .map_err(|e| anyhow!("connecting to the {id} cluster: {e}"))?;
    // Commits flush WAL so walsenders send at once (lag in milliseconds, not the WAL writer's
    // 200 ms); apply workers retry a lost publisher every second.
    for sql in [
        "ALTER SYSTEM SET synchronous_commit = on",
        "ALTER SYSTEM SET wal_retrieve_retry_interval = '1s'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql)
            .execute(&pool)
            .await
            .map_err(|e| anyhow!("configuring the {id} cluster: {e}"))?;
    }
    let dns = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports::free_tcp_udp(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
    );
    let admin = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports::free_tcp_udp(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
    );
    Ok(Region {
        id: id.to_owned(),
        url,
        pool,
        dns,
        admin,
        _cluster: cluster,
    })
}

/// Stock clients do not say where their tunnel goes: record it from the sessions' holders
/// (the highest epoch of each client) twice a second.
async fn follow_holders(
    pool: PgPool,
    clients: Vec<(String, Arc<Timeline>)>,
    endpoints: BTreeMap<String, SocketAddr>,
) {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(rows) = crate::store::session_view::list(&pool, None, None, None, 100_000).await
        else {
            continue;
        };
        let mut best: BTreeMap<&str, (i64, &str, &str)> = BTreeMap::new();
        for r in &rows {
            let e = best.entry(r.client.as_str()).or_insert((
                r.epoch,
                r.region.as_str(),
                r.holder.as_str(),
            ));
            if (r.epoch, r.region.as_str()) > (e.0, e.1) {
                *e = (r.epoch, r.region.as_str(), r.holder.as_str());
            }
        }
        let now = Instant::now();
        for (id, timeline) in &clients {
            if let Some((_, _, holder)) = best.get(id.as_str())
                && last.get(id).is_none_or(|h| h != holder)
                && let Some(ep) = endpoints.get(*holder)
            {
                timeline.moved(now, *ep);
                last.insert(id.clone(), (*holder).to_owned());
            }
        }
    }
}
