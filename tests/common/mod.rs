//! Shared test harness: one real local Postgres cluster per test binary, a migrated template
//! database, and a fresh database cloned from it for every test (about 50 ms each).
//!
//! The cluster is ephemeral (fsync off) and lives in a temporary directory; the localpg watchdog
//! stops it and removes the directory when the test binary exits.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use shadowsteer::localpg::{Durability, LocalCluster, temp_cluster_dir};
use sqlx::PgPool;

/// The migrated template database every test database is cloned from.
pub const TEMPLATE: &str = "shadowsteer_template";

struct Shared {
    cluster: LocalCluster,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        // Initialise on a thread of its own: the caller may be inside a tokio runtime.
        std::thread::spawn(|| {
            let dir = temp_cluster_dir("shadowsteer-test").expect("temp dir for test cluster");
            let cluster = LocalCluster::start(&dir, Durability::Ephemeral)
                .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
            let admin = cluster.url("postgres");
            let template = cluster.url(TEMPLATE);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                shadowsteer::store::target::create_database(&admin, TEMPLATE)
                    .await
                    .expect("create template database");
                let pool = shadowsteer::store::connect(&template, 1)
                    .await
                    .expect("connect to template");
                shadowsteer::store::migrate(&pool)
                    .await
                    .expect("migrate template");
                pool.close().await;
            });
            Shared { cluster }
        })
        .join()
        .expect("test cluster initialisation panicked")
    })
}

/// The shared cluster of this test binary.
pub fn cluster() -> &'static LocalCluster {
    &shared().cluster
}

/// A fresh, migrated database of its own for one test.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL (with password).
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

/// Creates a fresh migrated database by cloning the template.
pub async fn test_db() -> TestDb {
    let cluster = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = shadowsteer::store::connect(&cluster.url("postgres"), 1)
        .await
        .expect("connect to admin database");
    let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE {TEMPLATE}");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .expect("clone template database");
    admin.close().await;
    let url = cluster.url(&name);
    let pool = shadowsteer::store::connect(&url, 8)
        .await
        .expect("connect to test database");
    TestDb { name, url, pool }
}

/// Path of the built `shadowsteer` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shadowsteer")
}

/// Runs the binary with `args` against `db`; returns (exit code, stdout, stderr).
pub fn run_cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shadowsteer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The arguments of `shadowsteer appliance add` for an inventory set-up (every runner passes
/// the same list; only where it sends it differs).
pub fn appliance_add<'a>(
    id: &'a str,
    region: &'a str,
    endpoint: &'a str,
    public_key: &'a str,
) -> [&'a str; 10] {
    [
        "appliance",
        "add",
        "--id",
        id,
        "--region",
        region,
        "--endpoint",
        endpoint,
        "--public-key",
        public_key,
    ]
}

/// The arguments of `shadowsteer client add` for an inventory set-up.
pub fn client_add<'a>(
    id: &'a str,
    public_key: &'a str,
    tunnel_ip: &'a str,
    primary: &'a str,
    shadow: &'a str,
) -> [&'a str; 12] {
    [
        "client",
        "add",
        "--id",
        id,
        "--public-key",
        public_key,
        "--tunnel-ip",
        tunnel_ip,
        "--primary",
        primary,
        "--shadow",
        shadow,
    ]
}

/// A random WireGuard public key in base64.
pub fn random_public_key() -> String {
    shadowsteer::domain::SecretKey::generate()
        .public_key()
        .to_base64()
}

/// Appends a measurement to the file named by `SHADOWSTEER_MEASURE_OUT` (one JSON object per
/// line), for `benches/failover.sh`; does nothing without it.
pub fn record_measure(key: &str, value: f64) {
    use std::io::Write as _;
    let Ok(path) = std::env::var("SHADOWSTEER_MEASURE_OUT") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}", serde_json::json!({ key: value }));
    }
}
