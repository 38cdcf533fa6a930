//! Regions on one machine: one local Postgres cluster per region (wal_level = logical, from
//! `localpg`), each with a `shadowsteer` database, a non-superuser replication role
//! (`ss_repl`: LOGIN REPLICATION, SELECT on the tables) for the subscriptions, and a userspace
//! TCP relay in front of each publisher, through which every subscription connects.
//!
//! Partitions: [`Regions::partition`] cuts region R off: the relay in front of R's publisher
//! closes its connections and refuses new ones (nobody receives R's changes), and every other
//! relay closes and refuses the connections of R's subscriptions (R receives nobody's). A
//! relay tells whose subscription a connection is by the `application_name` of the Postgres
//! startup message, which an apply worker sets to its subscription's name
//! (`ss_sub_<from>_<to>`). [`Regions::heal`] lets connections through again; the subscriptions
//! reconnect by themselves.
//!
//! Used by `tests/replication.rs`, `tests/regions.rs` and `benches/replication.rs`; the
//! takeover tests can build on it: `Regions::start(&["eu", "us"])`, then `setup()`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shadowsteer::localpg::{Durability, LocalCluster, temp_cluster_dir};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Password of the replication role in the test clusters.
const REPL_PASSWORD: &str = "repl-secret-pw";

/// Which regions are cut off; shared by every relay.
#[derive(Debug)]
struct Partitions {
    cut: Mutex<HashSet<String>>,
    changed: watch::Sender<u64>,
}

impl Partitions {
    fn is_cut(&self, region: &str) -> bool {
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(region)
    }
}

/// One region: its cluster, database and relay.
pub struct Region {
    /// Region id.
    pub id: String,
    /// Superuser URL straight to the database (setup, status, the test's own reads and writes).
    pub url: String,
    /// URL of the replication role through this region's relay: what other regions'
    /// subscriptions use.
    pub replication_url: String,
    /// A pool on `url`.
    pub pool: PgPool,
    /// The relay's address.
    pub relay: SocketAddr,
    cluster: LocalCluster,
}

/// Several regions on this machine.
pub struct Regions {
    /// The regions, in the order given.
    pub regions: Vec<Region>,
    partitions: Arc<Partitions>,
}

impl Regions {
    /// Starts one cluster, database, replication role and relay per id. The databases are
    /// empty (not migrated): `setup` migrates them.
    pub async fn start(ids: &[&str]) -> Self {
        let (changed, _) = watch::channel(0);
        let partitions = Arc::new(Partitions {
            cut: Mutex::new(HashSet::new()),
            changed,
        });
        let mut regions = Vec::new();
        for id in ids {
            regions.push(start_region(id, partitions.clone()).await);
        }
        Self {
            regions,
            partitions,
        }
    }

    /// The region `id`.
    pub fn get(&self, id: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no region {id}"))
    }

    /// `--region ID=URL --replication-url ID=URL` for the regions named (all when empty).
    pub fn args(&self, ids: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.regions {
            if ids.is_empty() || ids.contains(&r.id.as_str()) {
                out.push("--region".into());
                out.push(format!("{}={}", r.id, r.url));
                out.push("--replication-url".into());
                out.push(format!("{}={}", r.id, r.replication_url));
            }
        }
        out
    }

    /// Runs `shadowsteer db replication SUBCOMMAND ...` with `extra` arguments and the
    /// regions named; returns (exit code, stdout, stderr).
    pub fn replication(&self, sub: &[&str], ids: &[&str]) -> (i32, String, String) {
        let mut args: Vec<String> = vec!["db".into(), "replication".into()];
        args.extend(sub.iter().map(|s| (*s).to_owned()));
        args.extend(self.args(ids));
        run(&args)
    }

    /// `setup` over the regions named (all when empty); panics unless it succeeds.
    pub fn setup(&self, ids: &[&str]) -> String {
        let (code, out, err) = self.replication(&["setup"], ids);
        assert_eq!(code, 0, "setup failed:\n{out}\n{err}");
        out
    }

    /// Cuts region `id` off from every other (both directions).
    pub fn partition(&self, id: &str) {
        self.partitions
            .cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        self.partitions.changed.send_modify(|g| *g += 1);
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.partitions
            .cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.partitions.changed.send_modify(|g| *g += 1);
    }

    /// Waits until every subscription of the regions named (all when empty) has finished its
    /// initial copy and runs its apply worker; panics after `timeout`.
    pub async fn wait_streaming(&self, timeout: Duration) {
        let ids: Vec<&str> = self.regions.iter().map(|r| r.id.as_str()).collect();
        self.wait_streaming_of(&ids, timeout).await;
    }

    /// As [`wait_streaming`](Self::wait_streaming), for the regions `ids` replicating among
    /// themselves.
    pub async fn wait_streaming_of(&self, ids: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let expected = ids.len() as i64 - 1;
        for r in self.regions.iter().filter(|r| ids.contains(&r.id.as_str())) {
            loop {
                let (subs, ready): (i64, bool) = sqlx::query_as(
                    r"SELECT count(*),
                             bool_and(EXISTS (SELECT 1 FROM pg_stat_subscription st
                                              WHERE st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL)
                                      AND NOT EXISTS (SELECT 1 FROM pg_subscription_rel x
                                                      WHERE x.srsubid = s.oid AND x.srsubstate <> 'r'))
                      FROM pg_subscription s WHERE s.subname LIKE 'ss\_sub\_%'",
                )
                .fetch_one(&r.pool)
                .await
                .map(|(c, b): (i64, Option<bool>)| (c, b.unwrap_or(false)))
                .expect("read subscriptions");
                if subs == expected && ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "region {}: subscriptions not streaming after {timeout:?} ({subs} of {expected})",
                    r.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Names of disabled subscriptions anywhere.
    pub async fn disabled(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.regions {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT subname::text FROM pg_subscription WHERE NOT subenabled",
            )
            .fetch_all(&r.pool)
            .await
            .expect("read subscriptions");
            out.extend(names);
        }
        out
    }
}

/// Runs the binary with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shadowsteer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn start_region(id: &str, partitions: Arc<Partitions>) -> Region {
    let dir = temp_cluster_dir(&format!("ss-region-{id}")).expect("temp dir");
    let cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::start(&dir, Durability::Ephemeral)
            .unwrap_or_else(|e| panic!("cannot start a region cluster: {e}"))
    })
    .await
    .expect("start cluster");
    shadowsteer::store::target::create_database(&cluster.url("postgres"), "shadowsteer")
        .await
        .expect("create database");
    let url = cluster.url("shadowsteer");
    let pool = shadowsteer::store::connect(&url, 8).await.expect("connect");
    // The clusters are ephemeral (fsync off, so flushes are cheap), but commits flush WAL as
    // in production: with synchronous_commit off a walsender sends only what the WAL writer
    // has flushed, every 200 ms, which would dominate every lag figure. Apply workers retry a
    // lost publisher every second (default 5 s), so a healed partition is noticed sooner.
    for sql in [
        "ALTER SYSTEM SET synchronous_commit = on",
        "ALTER SYSTEM SET wal_retrieve_retry_interval = '1s'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql)
            .execute(&pool)
            .await
            .expect("configure cluster");
    }
    // The subscriptions' role: replication and reading the published tables, nothing more.
    for sql in [
        format!("CREATE ROLE ss_repl LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'"),
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO ss_repl".to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("create the replication role");
    }
    let relay = start_relay(id.to_owned(), cluster.port(), partitions).await;
    let replication_url = format!(
        "postgres://ss_repl:{REPL_PASSWORD}@127.0.0.1:{}/shadowsteer",
        relay.port()
    );
    Region {
        id: id.to_owned(),
        url,
        replication_url,
        pool,
        relay,
        cluster,
    }
}

/// A relay to the publisher of `owner` on `port`.
async fn start_relay(owner: String, port: u16, partitions: Arc<Partitions>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            if partitions.is_cut(&owner) {
                drop(client);
                continue;
            }
            let owner = owner.clone();
            let partitions = partitions.clone();
            tokio::spawn(async move {
                let _ = relay_one(client, port, &owner, &partitions).await;
            });
        }
    });
    addr
}

/// Relays one connection, learning whose subscription it is from the startup message, until
/// either side closes or a partition cuts it.
async fn relay_one(
    mut client: TcpStream,
    port: u16,
    owner: &str,
    partitions: &Partitions,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut changed = partitions.changed.subscribe();
    // SSLRequest / GSSENCRequest (8 bytes) are answered with one byte; then the startup
    // message. This cluster runs without TLS, so the stream stays readable.
    let mut subscriber: Option<String> = None;
    loop {
        let mut len = [0u8; 4];
        client.read_exact(&mut len).await?;
        let n = u32::from_be_bytes(len) as usize;
        if !(8..=10_000).contains(&n) {
            return Ok(());
        }
        let mut body = vec![0u8; n - 4];
        client.read_exact(&mut body).await?;
        server.write_all(&len).await?;
        server.write_all(&body).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if n == 8 && (code == 80_877_103 || code == 80_877_104) {
            let mut answer = [0u8; 1];
            server.read_exact(&mut answer).await?;
            client.write_all(&answer).await?;
            if answer[0] != b'N' {
                break;
            }
            continue;
        }
        // StartupMessage: protocol version, then NUL-terminated key/value pairs.
        let params: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
        for pair in params.chunks(2) {
            if let [k, v] = pair
                && *k == b"application_name"
            {
                let name = String::from_utf8_lossy(v);
                if let Some(rest) = name.strip_prefix("ss_sub_")
                    && let Some((_, to)) = rest.split_once('_')
                {
                    subscriber = Some(to.to_owned());
                }
            }
        }
        break;
    }
    let cut =
        |p: &Partitions| p.is_cut(owner) || subscriber.as_deref().is_some_and(|s| p.is_cut(s));
    if cut(partitions) {
        return Ok(());
    }
    // One copy future for the connection's life: dropping it mid-transfer would lose bytes.
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            r = &mut copy => {
                r?;
                return Ok(());
            }
            c = changed.changed() => {
                if c.is_err() || cut(partitions) {
                    // Dropping both sockets cuts the connection.
                    return Ok(());
                }
            }
        }
    }
}
